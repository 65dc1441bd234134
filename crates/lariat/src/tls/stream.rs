//! [`TlsStream`]: a rustls server session over an accepted socket, usable through `&self` (so the two
//! halves of a split connection can share it, and waiting for readiness needs no buffer).

use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use rustls::ServerConnection;

use super::TlsInfo;
use crate::Stream;

/// A TLS session and its socket. Plaintext in, plaintext out; records are moved between the session and
/// the socket with non-blocking calls under an uncontended lock.
///
/// Writes are bounded: a write first drains the records already queued (waiting for the socket if it is
/// full), then queues at most rustls' buffer limit (64 KiB), so a peer that stops reading holds up its
/// writer instead of growing a buffer. As with tokio-rustls, call `flush` after the last write before
/// waiting on something else: records that did not fit in the socket wait in the session until then.
#[derive(Debug)]
pub struct TlsStream {
    io: Stream,
    session: Mutex<ServerConnection>,
}

impl TlsStream {
    pub(crate) fn new(io: Stream, session: ServerConnection) -> TlsStream {
        TlsStream {
            io,
            session: Mutex::new(session),
        }
    }

    /// The socket under the session. Reading or writing it directly corrupts the session.
    pub fn get_ref(&self) -> &Stream {
        &self.io
    }

    /// What the handshake negotiated.
    pub fn info(&self) -> TlsInfo {
        let session = self.session();
        TlsInfo {
            server_name: session.server_name().map(str::to_owned),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            version: session.protocol_version().map(|v| format!("{v:?}")),
        }
    }

    fn session(&self) -> MutexGuard<'_, ServerConnection> {
        // The lock is never held across an await or a user callback; a poisoned one means a panic inside
        // rustls, after which the session is still a value and will report its own errors.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads decrypted bytes available now, or fails with `WouldBlock` once the socket has nothing more
    /// (which clears the socket's readiness, as a plain `try_read` does). `Ok(0)`: the peer closed
    /// cleanly (close_notify); a close without it is `UnexpectedEof`.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut session = self.session();
        loop {
            match session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext buffered: take records from the socket.
            match session.read_tls(&mut SocketReader(&self.io)) {
                // EOF: the session now knows; the next `reader().read` says how it ended.
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // rustls queued an alert saying why; send it if the socket takes it now.
                        let _ = session.write_tls(&mut SocketWriter(&self.io));
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    // Post-handshake messages (key updates) may want an answer.
                    if session.wants_write() {
                        let _ = session.write_tls(&mut SocketWriter(&self.io));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Like [`try_read`](Self::try_read), into the spare capacity of `buf`.
    pub fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let room = buf.remaining_mut().min(chunk.len());
        let n = self.try_read(&mut chunk[..room])?;
        buf.put_slice(&chunk[..n]);
        Ok(n)
    }

    /// Ready when decrypted bytes (or the end of the stream) are waiting in the session, or the socket
    /// is readable.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut session = self.session();
            match session.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => {}
                // `try_read` reports it.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
        self.io.poll_read_ready(cx)
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut session = self.session();
        ready!(self.poll_send(&mut session, cx))?;
        let n = session.writer().write(buf)?;
        // Send what the socket takes now; the rest goes out with the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(&mut session, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut session = self.session();
        self.poll_send(&mut session, cx)
    }

    /// Sends close_notify, flushes, then shuts the socket's write side down.
    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut session = self.session();
        session.send_close_notify();
        ready!(self.poll_send(&mut session, cx))?;
        Poll::Ready(self.io.shutdown_write())
    }

    /// Best effort, without waiting: close_notify and the socket's write side shut down (a dropped write
    /// half).
    pub(crate) fn close_write(&self) {
        let mut session = self.session();
        session.send_close_notify();
        while session.wants_write() {
            if session.write_tls(&mut SocketWriter(&self.io)).is_err() {
                break;
            }
        }
        let _ = self.io.shutdown_write();
    }

    /// Writes queued records until none is left (`Ready`) or the socket is full (`Pending`).
    fn poll_send(
        &self,
        session: &mut ServerConnection,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while session.wants_write() {
            match session.write_tls(&mut SocketWriter(&self.io)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TlsStream {
    /// Best effort, without waiting: records still queued and a close_notify, so a peer reading to the
    /// end sees a clean close rather than a truncation.
    fn drop(&mut self) {
        self.close_write();
    }
}

/// `io::Read` over the socket's non-blocking `try_read`, for rustls.
pub(super) struct SocketReader<'a>(pub(super) &'a Stream);

impl Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// `io::Write` over the socket's non-blocking `try_write`, for rustls.
pub(super) struct SocketWriter<'a>(pub(super) &'a Stream);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
