//! systemd's descriptor store: `lariat serve` keeps its listening sockets there (`FDSTORE=1`), so a crash
//! and the automatic restart keep the accept queue. The test plays systemd: a notify socket that keeps
//! the descriptors and passes them back as `LISTEN_FDS` to the next process.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Lariat;

/// One notification: its text and the descriptor it carried, if any.
fn receive(notify: &UnixDatagram) -> Option<(String, Option<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg into buffers we own; the socket has a read timeout.
    let n = unsafe { libc::recvmsg(notify.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote, as the CMSG macros do.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
    }
    Some((String::from_utf8_lossy(&buf[..n as usize]).into_owned(), fd))
}

/// `lariat serve ARGS` as systemd restarts it: `fd` as descriptor 3, `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=name`, and `LISTEN_PID` set to lariat's own pid (a shell sets it, then execs).
fn restarted_with(fd: &OwnedFd, name: &str, args: &[&str]) -> Command {
    // Above 3, so dup2 into 3 always makes a new, inheritable descriptor.
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor; the duplicate lives as long as the test.
    let source = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(source >= 100);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" serve \"$@\"")
        .arg(env!("CARGO_BIN_EXE_lariat"))
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", name)
        .env_remove("LARIAT_HANDOFF")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("FDSTORE");
    // SAFETY: dup2 is async-signal-safe; the source is open in the parent, numbered above 3.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(source, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn a_crash_keeps_the_accept_queue_through_the_descriptor_store() {
    let dir = std::env::temp_dir().join(format!("lariat-fdstore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("notify");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lariat"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .env("FDSTORE", "8")
        .env_remove("LARIAT_HANDOFF");
    let mut first = Lariat::from_command(cmd, 1);
    let addr = first.tcp_addr();

    // What the service manager receives: READY=1, then the socket with its name.
    let mut ready = false;
    let mut stored = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (!ready || stored.is_none()) && Instant::now() < deadline {
        let Some((text, fd)) = receive(&notify) else {
            continue;
        };
        ready |= text.lines().any(|l| l == "READY=1");
        if text.lines().any(|l| l == "FDSTORE=1") {
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .expect("FDSTORE=1 without FDNAME")
                .to_owned();
            stored = Some((name, fd.expect("FDSTORE=1 without a descriptor")));
        }
    }
    assert!(ready, "no READY=1:\n{}", first.stderr());
    let (name, fd) = stored.unwrap_or_else(|| panic!("nothing stored:\n{}", first.stderr()));
    assert_eq!(name, "127.0.0.1%3A0", "the name --listen finds it by");

    // The crash. A client connecting now waits in the accept queue the store keeps open.
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    let mut queued = TcpStream::connect(addr).expect("refused during the crash");
    queued
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    queued.write_all(b"queued during the crash").unwrap();

    // The automatic restart, with the stored socket.
    let second = Lariat::from_command(restarted_with(&fd, &name, &["--listen", "127.0.0.1:0"]), 1);
    assert_eq!(second.tcp_addr(), addr, "{}", second.stderr());
    let mut back = [0u8; 23];
    queued.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"queued during the crash");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}
