//! The hand-over channel's messages and the `SCM_RIGHTS` calls that carry a socket with one.
//!
//! The channel is a `SOCK_SEQPACKET` Unix socket: each message arrives whole and alone, so a socket
//! passed with a message can never be attached to the wrong one. Three messages:
//!
//! | message | from | body |
//! |---|---|---|
//! | `Conn` | the old process | id, state, read-ahead bytes; the socket attached |
//! | `Taken` | the successor | id: it holds the socket and waits for `Commit` |
//! | `Commit` | the old process | id: the old process has let go; the successor serves it |
//!
//! The successor serves a connection only after `Commit`, and the old process forgets it only once
//! `Commit` is sent, so the connection is never served by two processes. A channel closed before
//! `Commit` leaves the connection with the old process (the successor closes its copy of the
//! descriptor, which the peer never notices: the old one stays open).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The most state a handler may carry.
pub const MAX_STATE: usize = 32 * 1024;
/// The most read-ahead bytes a connection may carry.
pub const MAX_READ_AHEAD: usize = 128 * 1024;
/// The largest message on the channel (a `Conn` with both at their limits, plus its header).
pub(crate) const MAX_MESSAGE: usize = MAX_STATE + MAX_READ_AHEAD + 64;

const CONN: u8 = b'C';
const TAKEN: u8 = b'T';
const COMMIT: u8 = b'K';

/// One message on the channel (the socket travels beside a `Conn`, not in it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Conn {
        id: u64,
        state: &'a [u8],
        read_ahead: &'a [u8],
    },
    Taken(u64),
    Commit(u64),
}

impl Message<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Message::Conn {
                id,
                state,
                read_ahead,
            } => {
                let mut out = Vec::with_capacity(13 + state.len() + read_ahead.len());
                out.push(CONN);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&(state.len() as u32).to_le_bytes());
                out.extend_from_slice(state);
                out.extend_from_slice(read_ahead);
                out
            }
            Message::Taken(id) => [&[TAKEN][..], &id.to_le_bytes()].concat(),
            Message::Commit(id) => [&[COMMIT][..], &id.to_le_bytes()].concat(),
        }
    }

    /// Parses one message; `None` for anything malformed (the channel is then closed).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Message<'_>> {
        let (&kind, rest) = bytes.split_first()?;
        let id = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let rest = &rest[8..];
        match kind {
            TAKEN if rest.is_empty() => Some(Message::Taken(id)),
            COMMIT if rest.is_empty() => Some(Message::Commit(id)),
            CONN => {
                let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let rest = &rest[4..];
                if len > MAX_STATE || len > rest.len() || rest.len() - len > MAX_READ_AHEAD {
                    return None;
                }
                let (state, read_ahead) = rest.split_at(len);
                Some(Message::Conn {
                    id,
                    state,
                    read_ahead,
                })
            }
            _ => None,
        }
    }
}

/// A `SOCK_SEQPACKET` Unix socket, non-blocking and close-on-exec.
pub(crate) fn seqpacket() -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Registers the channel's socket with tokio.
pub(crate) fn register(sock: socket2::Socket) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its descriptor open, and always the same one, until it is dropped,
    // which happens only with the `AsyncFd`.
    unsafe { tokio::io::unix::AsyncFd::register(OwnedFd::from(sock)) }.map_err(io::Error::from)
}

/// Sends one message, with `fd` attached if given. Non-blocking: `WouldBlock` when the channel is full.
pub(crate) fn send(sock: RawFd, message: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // Room for one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes we own (<= size_of_val(&control)), so the
        // first header is inside it; the data written is one RawFd, as CMSG_LEN says.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: sendmsg on a descriptor the caller holds, with a fully initialised msghdr.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short hand-over message",
        ));
    }
    Ok(())
}

/// Receives one message into `buf`: its length (0 at the end of the channel) and the socket attached
/// to it, if any (close-on-exec). Non-blocking.
pub(crate) fn recv(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
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
    // SAFETY: recvmsg into buffers we own, of the lengths given.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`, as the CMSG macros do.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        // Dropping `fds` closes whatever arrived.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "hand-over message truncated",
        ));
    }
    if fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "several sockets on one message",
        ));
    }
    Ok((n as usize, fds.pop()))
}

/// The pid of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_pid(sock: &impl AsRawFd) -> io::Result<u32> {
    Ok(peer_cred(sock)?.pid as u32)
}

/// The user of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(sock: &impl AsRawFd) -> io::Result<u32> {
    Ok(peer_cred(sock)?.uid)
}

fn peer_cred(sock: &impl AsRawFd) -> io::Result<libc::ucred> {
    // SAFETY: a zeroed ucred is valid; getsockopt writes at most `len` bytes into it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred we own, with its length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for m in [
            Message::Conn {
                id: 7,
                state: b"mode=1",
                read_ahead: b"hello",
            },
            Message::Taken(u64::MAX),
            Message::Commit(0),
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(Message::decode(b""), None);
        assert_eq!(Message::decode(b"T1234567"), None);
        assert_eq!(Message::decode(b"X12345678"), None);
        let mut lying = Message::Conn {
            id: 1,
            state: b"ab",
            read_ahead: b"",
        }
        .encode();
        lying[9] = 200; // a state longer than the message
        assert_eq!(Message::decode(&lying), None);
    }

    #[test]
    fn a_socket_travels_with_its_message() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let pair =
            socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        send(pair.0.as_raw_fd(), b"one", Some(a.as_raw_fd())).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv(pair.1.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        let passed = std::os::unix::net::UnixDatagram::from(fd.unwrap());
        passed.send(b"via the copy").unwrap();
        let mut got = [0u8; 32];
        let n = b.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"via the copy");
    }
}
