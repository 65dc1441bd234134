//! Stops a TCP listener from completing new handshakes while it keeps the ones it already has (Linux).
//!
//! Closing a listening socket resets every connection the kernel already completed and queued for
//! `accept`, and `shutdown(SHUT_RD)` does the same. So a drain first makes the kernel stop adding
//! to the queue, then accepts until the queue is empty, and only then closes. A classic BPF socket filter
//! on the listener that drops bare SYNs does the first part: new clients' SYNs are dropped (their kernels
//! retransmit, and after the close they see a refusal, never a reset after a successful connect), while
//! the final ACKs of handshakes already under way still pass, so those connections complete and are
//! accepted too.
//!
//! The filter belongs to the socket, not to the descriptor: it must only go on a socket no other process
//! still accepts from (not one systemd holds, not one handed to a successor).

use std::io;
use std::os::fd::AsRawFd;

/// Attaches the SYN-dropping filter to a TCP listening socket.
#[cfg(target_os = "linux")]
pub(crate) fn drop_new_syns(socket: &impl AsRawFd) -> io::Result<()> {
    use libc::{sock_filter, sock_fprog};

    // On a TCP socket the filter sees the packet from the TCP header on; byte 13 holds the flags.
    const FLAGS: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let program = [
        // A = tcp flags
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, FLAGS),
        // no SYN → keep (jump to the last instruction)
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 2, SYN),
        // SYN with ACK → keep; a bare SYN falls through to drop
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 1, 0, ACK),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ];
    let prog = sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut sock_filter,
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const sock_fprog).cast(),
            std::mem::size_of::<sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is no portable way to refuse new handshakes on a listener that stays open.
#[cfg(not(target_os = "linux"))]
pub(crate) fn drop_new_syns(_socket: &impl AsRawFd) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// How many completed connections wait in a TCP listener's accept queue (Linux reports it in
/// `TCP_INFO.tcpi_unacked` for listening sockets).
#[cfg(target_os = "linux")]
pub(crate) fn accept_queue_len(socket: &impl AsRawFd) -> io::Result<usize> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info.tcpi_unacked as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Not reported elsewhere.
#[cfg(not(target_os = "linux"))]
pub(crate) fn accept_queue_len(_socket: &impl AsRawFd) -> io::Result<usize> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn queued_connections_survive_and_new_syns_are_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let queued: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        assert_eq!(accept_queue_len(&listener).unwrap(), 3);

        drop_new_syns(&listener).unwrap();
        // A new client's SYN is dropped: its connect neither succeeds nor is refused; it times out.
        let err = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

        // The queued ones are still there and work.
        for mut client in queued {
            let (mut server, _) = listener.accept().unwrap();
            std::io::Write::write_all(&mut client, b"hi").unwrap();
            let mut buf = [0u8; 2];
            std::io::Read::read_exact(&mut server, &mut buf).unwrap();
            assert_eq!(&buf, b"hi");
        }
        assert_eq!(accept_queue_len(&listener).unwrap(), 0);
    }
}
