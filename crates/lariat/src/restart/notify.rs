//! The socket a successor says `READY=1` on, in a directory only this user can enter.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use tokio::net::UnixDatagram;

/// Whether a notification says `READY=1` for the expected `MAINPID=` line.
pub(super) fn is_ready(message: &str, expected: &str) -> bool {
    let lines: Vec<&str> = message.lines().collect();
    lines.contains(&"READY=1") && lines.contains(&expected)
}

/// The socket the successor sends `READY=1` to: a datagram socket in a fresh directory only this user can
/// enter (mode 0700), so no other user can forge the message. Removed when dropped.
#[derive(Debug)]
pub(super) struct NotifySocket {
    pub(super) socket: UnixDatagram,
    dir: PathBuf,
    pub(super) path: PathBuf,
}

impl NotifySocket {
    pub(super) fn new() -> io::Result<NotifySocket> {
        use std::os::unix::fs::DirBuilderExt;
        let mut nonce = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut nonce))?;
        let dir = std::env::temp_dir().join(format!(
            "lariat-restart-{}-{:016x}",
            std::process::id(),
            u64::from_ne_bytes(nonce)
        ));
        // Fails if it exists: a directory someone else prepared is never used.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("notify");
        let socket = match UnixDatagram::bind(&path) {
            Ok(socket) => socket,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(NotifySocket { socket, dir, path })
    }
}

impl NotifySocket {
    /// The path of the hand-over socket, beside the notify socket (so only this user can reach it).
    pub(super) fn handover_path(&self) -> PathBuf {
        self.dir.join("handover")
    }

    /// A listening `SOCK_SEQPACKET` socket at [`handover_path`](Self::handover_path), non-blocking.
    pub(super) fn handover_listener(&self) -> io::Result<socket2::Socket> {
        let socket = crate::handover::listening_socket()?;
        socket.bind(&socket2::SockAddr::unix(self.handover_path())?)?;
        socket.listen(64)?;
        Ok(socket)
    }

    /// Shuts the socket for reading, so a `READY=1` sent from now on fails (`EPIPE`), then reads what
    /// arrived before: whether one of those says `READY=1` with `expected`.
    pub(super) fn close_and_find(&self, expected: &str) -> bool {
        if let Err(e) = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Read) {
            tracing::warn!(error = %e, "restart: cannot shut the notify socket");
        }
        let mut buf = [0u8; 512];
        let mut found = false;
        loop {
            // Straight from the socket: tokio's `try_recv` trusts a readiness it may never have seen.
            // SAFETY: recv(2) into a buffer we own, of the length given.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return found;
            }
            found |= is_ready(&String::from_utf8_lossy(&buf[..n as usize]), expected);
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.handover_path());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::send_notification;

    #[tokio::test]
    async fn giving_up_finds_a_ready_that_came_before_and_fails_one_after() {
        let notify = NotifySocket::new().unwrap();
        let path = notify.path.as_os_str().to_owned();
        send_notification(&path, b"STATUS=starting\n").unwrap();
        send_notification(&path, b"READY=1\nMAINPID=42\n").unwrap();
        assert!(notify.close_and_find("MAINPID=42"));
        // The successor learns it came too late, and does not serve.
        let late = send_notification(&path, b"READY=1\nMAINPID=42\n").unwrap_err();
        assert_eq!(late.kind(), io::ErrorKind::BrokenPipe, "{late}");

        let other = NotifySocket::new().unwrap();
        send_notification(other.path.as_os_str(), b"READY=1\nMAINPID=7\n").unwrap();
        assert!(
            !other.close_and_find("MAINPID=42"),
            "another pid's READY counted"
        );
    }
}
