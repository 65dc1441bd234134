//! [`TlsStream`]: a rustls server session over an accepted socket, usable through `&self` (so the two
//! halves of a split connection can share it, and waiting for readiness needs no buffer).

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::server::UnbufferedServerConnection;

use super::session::Session;
use super::TlsInfo;
use crate::Stream;

/// How long a dropped stream's last records may take to reach the peer (see `Drop`).
const LINGER: Duration = Duration::from_secs(5);

/// A TLS session and its socket. Plaintext in, plaintext out; records are moved between the session and
/// the socket with non-blocking calls under an uncontended lock.
///
/// Writes are bounded: a write first drains the records already queued (waiting for the socket if it is
/// full), then encrypts at most 64 KiB, so a peer that stops reading holds up its writer instead of
/// growing a buffer. As with tokio-rustls, `flush` (or `shutdown`) after the last write is the way to
/// know the records left; a stream dropped with records still queued hands them to a short-lived task
/// (see `Drop`) rather than losing them.
///
/// An idle TLS connection holds no buffer: lariat drives rustls' unbuffered API and frees its
/// ciphertext and plaintext buffers whenever they drain, so what stays is the session's state and keys.
#[derive(Debug)]
pub struct TlsStream {
    io: Stream,
    /// Inline: the stream itself is boxed in `Stream::Tls` (the handshake boxes the session only while
    /// it runs, so its future holds a pointer).
    session: Mutex<Session>,
}

/// What a peek found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peek {
    /// Plaintext bytes visible now (at most what was asked).
    pub(crate) seen: usize,
    /// The peer closed: no more will come.
    pub(crate) closed: bool,
}

impl TlsStream {
    pub(crate) fn new(io: Stream, session: Box<Session>) -> TlsStream {
        TlsStream {
            io,
            session: Mutex::new(*session),
        }
    }

    /// The socket under the session. Reading or writing it directly corrupts the session.
    pub fn get_ref(&self) -> &Stream {
        &self.io
    }

    /// What the handshake negotiated.
    pub fn info(&self) -> TlsInfo {
        let session = self.session();
        let conn = session.conn();
        TlsInfo {
            server_name: session.server_name().map(str::to_owned),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version().map(|v| format!("{v:?}")),
        }
    }

    /// Runs `f` on the rustls session: client certificates (`peer_certificates`), the cipher suite,
    /// the key exchange. `f` must not block: the session's lock is held.
    pub fn with_session<R>(&self, f: impl FnOnce(&UnbufferedServerConnection) -> R) -> R {
        f(self.session().conn())
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        // The lock is never held across an await or a user callback; a poisoned one means a panic inside
        // rustls, after which the session is still a value and will report its own errors.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads decrypted bytes available now, or fails with `WouldBlock` once the socket has nothing more
    /// (which clears the socket's readiness, as a plain `try_read` does). `Ok(0)`: the peer closed
    /// cleanly (close_notify); a close without it is `UnexpectedEof`. A TLS error is returned again on
    /// every later read, as a socket error would be.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len();
        self.read_with(max, |plain| buf[..plain.len()].copy_from_slice(plain))
    }

    /// The reads' one loop: hands up to `max` decrypted bytes to `put` (straight from the session's
    /// buffer: no intermediate copy, nothing zeroed).
    fn read_with(&self, max: usize, put: impl FnOnce(&[u8])) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let mut session = self.session();
        loop {
            if !session.plaintext().is_empty() {
                return Ok(session.read_plaintext(max, put));
            }
            if let Some(end) = session.read_end() {
                return end;
            }
            // No plaintext: take records from the socket (`WouldBlock` once it has none).
            session.receive(&self.io)?;
        }
    }

    /// Like [`try_read`](Self::try_read), into the spare capacity of `buf` (one record's worth, 16 KiB,
    /// at most per call).
    pub fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        let room = buf.remaining_mut().min(16 * 1024);
        self.read_with(room, |plain| buf.put_slice(plain))
    }

    /// Ready when decrypted bytes (or the end of the stream, or an error) are waiting in the session,
    /// or the socket is readable.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let session = self.session();
            if !session.plaintext().is_empty() || session.read_ended() {
                return Poll::Ready(Ok(()));
            }
        }
        self.io.poll_read_ready(cx)
    }

    /// Makes the first `buf.len()` plaintext bytes visible without consuming them (they stay for the
    /// next reads), taking what records the socket has now. The caller waits for the socket to be
    /// readable before asking again when `seen` is short and `closed` is false.
    pub(crate) fn peek(&self, buf: &mut [u8]) -> io::Result<Peek> {
        let mut session = self.session();
        loop {
            let waiting = session.plaintext();
            let seen = waiting.len().min(buf.len());
            let closed = session.read_ended();
            if seen == buf.len() || closed {
                buf[..seen].copy_from_slice(&waiting[..seen]);
                if let (true, Some(Err(e))) = (seen < buf.len(), session.read_end()) {
                    if e.kind() == io::ErrorKind::InvalidData {
                        return Err(e);
                    }
                }
                return Ok(Peek { seen, closed });
            }
            match session.receive(&self.io) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let waiting = session.plaintext();
                    let seen = waiting.len().min(buf.len());
                    buf[..seen].copy_from_slice(&waiting[..seen]);
                    return Ok(Peek {
                        seen,
                        closed: false,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let room = buf.remaining();
            match self.read_with(room, |plain| buf.put_slice(plain)) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut session = self.session();
        ready!(self.poll_send(&mut session, cx))?;
        // Sends what the socket takes now; the rest goes out with the next write or flush.
        Poll::Ready(session.encrypt(buf, &self.io))
    }

    /// TLS has no vectored writes: the first non-empty buffer is written.
    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
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

    /// Without waiting: close_notify, the queued records the socket takes now, and the rest handed to
    /// a task (see `Drop`); then the socket's write side is shut down (a dropped write half).
    pub(crate) fn close_write(&self) {
        let mut session = self.session();
        session.send_close_notify();
        match session.send(&self.io) {
            Ok(()) => {
                let _ = self.io.shutdown_write();
            }
            Err(_) if session.wants_write() => linger(session.take_outgoing(), &self.io),
            Err(_) => {}
        }
    }

    /// Writes queued records until none is left (`Ready`) or the socket is full (`Pending`).
    fn poll_send(&self, session: &mut Session, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match session.send(&self.io) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Drop for TlsStream {
    /// A stream dropped without `flush` or `shutdown` (a handler written for plain sockets) may still
    /// hold records the socket had no room for: they, and a close_notify, go to a task that keeps a
    /// duplicate of the socket for at most 5 s to send them, so the peer reads everything the handler
    /// wrote and a clean close. The connection's slot is free at once.
    fn drop(&mut self) {
        self.close_write();
    }
}

/// Hands the session's queued records to a task that writes them on a duplicate of the socket, then
/// shuts its write side (bounded by [`LINGER`]). Without a runtime, or if the socket cannot be
/// duplicated, they are dropped (logged).
fn linger(pending: Vec<u8>, io: &Stream) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(
            bytes = pending.len(),
            "TLS records dropped with their stream (no runtime)"
        );
        return;
    };
    let dup = match io {
        Stream::Tcp(s) => std::os::fd::AsFd::as_fd(s).try_clone_to_owned(),
        Stream::Unix(s) => std::os::fd::AsFd::as_fd(s).try_clone_to_owned(),
        Stream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
    };
    let is_tcp = matches!(io, Stream::Tcp(_));
    let fd = match dup {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(bytes = pending.len(), error = %e, "TLS records dropped with their stream");
            return;
        }
    };
    runtime.spawn(async move {
        let send = async {
            use tokio::io::AsyncWriteExt;
            if is_tcp {
                let mut s = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
                s.write_all(&pending).await?;
                s.shutdown().await
            } else {
                let mut s =
                    tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
                s.write_all(&pending).await?;
                s.shutdown().await
            }
        };
        match tokio::time::timeout(LINGER, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "the last TLS records of a closed connection were not sent"),
            Err(_) => tracing::debug!("the peer did not take the last TLS records within 5 s"),
        }
    });
}
