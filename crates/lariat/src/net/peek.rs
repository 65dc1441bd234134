//! Looking at a connection's first bytes without taking them (`MSG_PEEK`): what the PROXY header reader
//! and the protocol router do before the handler runs. The bytes stay in the socket, so the handler (or
//! the TLS layer) still reads every one of them: nothing read ahead can be lost. Over TLS (a router
//! behind `ServerBuilder::tls`, or inside a TLS route) the plaintext is peeked: the session holds on
//! to what it showed until the handler reads it.

use std::io;

use crate::Stream;

/// Why a peek ended short.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Peeked {
    /// The peer closed (or shut down its sending side) with this many bytes in the socket.
    #[error("the peer closed after {0} bytes")]
    Closed(usize),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Peeks until at least `want` bytes (at most `buf.len()`) are in the socket; returns how many were seen.
/// Waits for more data between peeks rather than spinning: a peek that saw too little reports
/// `WouldBlock` to the runtime, which clears the readiness until new bytes arrive.
pub(crate) async fn peek_at_least(
    stream: &Stream,
    buf: &mut [u8],
    want: usize,
) -> Result<usize, Peeked> {
    let want = want.min(buf.len());
    if let Stream::Tls(tls) = stream {
        // The plaintext, not the records: the session keeps what it showed for the next reads.
        loop {
            let peek = tls.peek(buf)?;
            if peek.seen >= want {
                return Ok(peek.seen);
            }
            if peek.closed {
                return Err(Peeked::Closed(peek.seen));
            }
            // The peek read the socket until it would block, so this waits for new records.
            tls.get_ref().readable().await?;
        }
    }
    let mut seen = 0;
    let mut eof = false;
    let mut wakes = 0u32;
    stream
        .read_io(|fd| {
            wakes += 1;
            let before = seen;
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            seen = n as usize;
            if n == 0 {
                eof = true;
                return Ok(());
            }
            if seen < want {
                // The unread bytes stay in the socket, so a peek after the peer's FIN still sees them,
                // not EOF: ask whether the peer closed, or this would wait for data that never comes.
                // Where the OS cannot say, a wake-up with no new byte is taken as the close: the
                // runtime keeps reporting a closed socket as readable, and waiting would spin.
                if peer_closed(fd) || (!cfg!(target_os = "linux") && wakes > 1 && seen == before) {
                    eof = true;
                    return Ok(());
                }
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        })
        .await?;
    if eof || seen < want {
        return Err(Peeked::Closed(seen));
    }
    Ok(seen)
}

/// Has the peer shut down its sending side? (`POLLRDHUP`, Linux only.)
fn peer_closed(fd: std::os::fd::RawFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        false
    }
}
