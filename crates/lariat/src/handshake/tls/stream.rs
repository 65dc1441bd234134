//! [`TlsStream`]: a rustls server session over an accepted socket, usable through `&self` (so the two
//! halves of a split connection can share it, and waiting for readiness needs no buffer).

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::server::UnbufferedServerConnection;

use super::records::Records;
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
/// ciphertext and plaintext buffers whenever they drain, so what stays is the session's state and keys;
/// a TLS 1.3 session on lariat's record layer keeps only the keys while it waits for readiness.
#[derive(Debug)]
pub struct TlsStream {
    io: Stream,
    /// Inline: the stream itself is boxed in `Stream::Tls` (the handshake boxes the session only while
    /// it runs, so its future holds a pointer).
    session: Mutex<Session>,
    /// What the handshake negotiated: one copy, shared with the connection's registry entry.
    info: Arc<TlsInfo>,
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
    pub(crate) fn new(io: Stream, session: Box<Session>, info: Arc<TlsInfo>) -> TlsStream {
        TlsStream {
            io,
            session: Mutex::new(*session),
            info,
        }
    }

    /// A stream over a session's record layer alone (a connection waking from the parking lot).
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    pub(crate) fn from_records(io: Stream, records: Records, info: Arc<TlsInfo>) -> TlsStream {
        TlsStream::new(io, Box::new(Session::from_records(records)), info)
    }

    /// Takes the stream apart for a connection going to sleep: the socket, the record layer at rest
    /// and the negotiated info, when the session is on lariat's record layer with nothing buffered
    /// either way; otherwise the stream is given back. Nothing is sent (no close_notify: the
    /// connection goes on).
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    pub(crate) fn into_records(
        self: Box<Self>,
    ) -> Result<(Stream, Records, Arc<TlsInfo>), Box<TlsStream>> {
        if !self.session().can_sleep() {
            return Err(self);
        }
        let this = std::mem::ManuallyDrop::new(*self);
        // SAFETY: `this` is never used or dropped again (its `Drop` would send a close_notify), and
        // each field is read out exactly once; whatever is not returned is put back in a new stream.
        let (io, session, info) = unsafe {
            (
                std::ptr::read(&this.io),
                std::ptr::read(&this.session),
                std::ptr::read(&this.info),
            )
        };
        let session = session.into_inner().unwrap_or_else(|p| p.into_inner());
        match session.into_records() {
            Ok(records) => Ok((io, records, info)),
            Err(session) => Err(Box::new(TlsStream::new(io, session, info))),
        }
    }

    /// What the handshake negotiated, shared.
    pub(crate) fn shared_info(&self) -> Arc<TlsInfo> {
        self.info.clone()
    }

    /// The socket under the session. Reading or writing it directly corrupts the session.
    pub fn get_ref(&self) -> &Stream {
        &self.io
    }

    /// What the handshake negotiated.
    pub fn info(&self) -> TlsInfo {
        (*self.info).clone()
    }

    /// Runs `f` on the rustls session (client certificates (`peer_certificates`), the cipher suite,
    /// the key exchange) while the session is in rustls: `None` once a TLS 1.3 session's record layer
    /// moved to lariat after the handshake (the default; see
    /// [`TlsConfig::with_session_in_rustls`](super::TlsConfig::with_session_in_rustls) to keep it).
    /// `f` must not block: the session's lock is held.
    pub fn with_session<R>(&self, f: impl FnOnce(&UnbufferedServerConnection) -> R) -> Option<R> {
        self.session().conn().map(f)
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
    /// or the socket is readable. A connection that waits here is idle: its record layer drops its
    /// AEAD objects until the next bytes (rebuilt then).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ready = self.poll_session_ready(cx);
        if ready.is_pending() {
            self.session().rest();
        }
        ready
    }

    /// [`poll_read_ready`](Self::poll_read_ready) within a read (no rest: more records are expected).
    fn poll_session_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
                    ready!(self.poll_session_ready(cx))?;
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
