//! [`TlsStream`]: a rustls server session over an accepted socket, usable through `&self` (so the two
//! halves of a split connection can share it, and waiting for readiness needs no buffer).

use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::ServerConnection;

use super::TlsInfo;
use crate::Stream;

/// How long a dropped stream's last records may take to reach the peer (see `Drop`).
const LINGER: Duration = Duration::from_secs(5);

/// A TLS session and its socket. Plaintext in, plaintext out; records are moved between the session and
/// the socket with non-blocking calls under an uncontended lock.
///
/// Writes are bounded: a write first drains the records already queued (waiting for the socket if it is
/// full), then queues at most rustls' buffer limit (64 KiB), so a peer that stops reading holds up its
/// writer instead of growing a buffer. As with tokio-rustls, `flush` (or `shutdown`) after the last
/// write is the way to know the records left; a stream dropped with records still queued hands them
/// to a short-lived task (see `Drop`) rather than losing them.
///
/// An idle TLS connection holds rustls' buffers (a few KiB), unlike a plain one.
#[derive(Debug)]
pub struct TlsStream {
    io: Stream,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    session: ServerConnection,
    /// Plaintext taken out of the session by a peek (the protocol router), read before the session's.
    peeked: Vec<u8>,
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
    pub(crate) fn new(io: Stream, session: ServerConnection) -> TlsStream {
        TlsStream {
            io,
            state: Mutex::new(State {
                session,
                peeked: Vec::new(),
            }),
        }
    }

    /// The socket under the session. Reading or writing it directly corrupts the session.
    pub fn get_ref(&self) -> &Stream {
        &self.io
    }

    /// What the handshake negotiated.
    pub fn info(&self) -> TlsInfo {
        self.with_session(|session| TlsInfo {
            server_name: session.server_name().map(str::to_owned),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            version: session.protocol_version().map(|v| format!("{v:?}")),
        })
    }

    /// Runs `f` on the rustls session: client certificates (`peer_certificates`), keying material
    /// exporters, the cipher suite. `f` must not block: the session's lock is held.
    pub fn with_session<R>(&self, f: impl FnOnce(&ServerConnection) -> R) -> R {
        f(&self.state().session)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or a user callback; a poisoned one means a panic inside
        // rustls, after which the session is still a value and will report its own errors.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads decrypted bytes available now, or fails with `WouldBlock` once the socket has nothing more
    /// (which clears the socket's readiness, as a plain `try_read` does). `Ok(0)`: the peer closed
    /// cleanly (close_notify); a close without it is `UnexpectedEof`. A TLS error is returned again on
    /// every later read, as a socket error would be.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.state();
        if !state.peeked.is_empty() {
            let n = buf.len().min(state.peeked.len());
            buf[..n].copy_from_slice(&state.peeked[..n]);
            state.peeked.drain(..n);
            return Ok(n);
        }
        let session = &mut state.session;
        loop {
            match session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext buffered: take records from the socket (`WouldBlock` once it has none).
            self.take_records(session)?;
        }
    }

    /// Reads what records the socket has now into the session and processes them. `WouldBlock` (which
    /// clears the socket's readiness) when it has none; EOF leaves it to the session's reader to say
    /// how the stream ended. A failure rustls keeps is reported again rather than waited on.
    fn take_records(&self, session: &mut ServerConnection) -> io::Result<()> {
        session.process_new_packets().map_err(invalid_data)?;
        match session.read_tls(&mut SocketReader(&self.io))? {
            0 => Ok(()),
            _ => process(session, &self.io).map_err(invalid_data),
        }
    }

    /// Like [`try_read`](Self::try_read), into the spare capacity of `buf` (one record's worth, 16 KiB,
    /// at most per call).
    pub fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let room = buf.remaining_mut().min(chunk.len());
        let n = self.try_read(&mut chunk[..room])?;
        buf.put_slice(&chunk[..n]);
        Ok(n)
    }

    /// Ready when decrypted bytes (or the end of the stream, or an error) are waiting in the session,
    /// or the socket is readable.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut state = self.state();
            if !state.peeked.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match state.session.process_new_packets() {
                Ok(io) if io.plaintext_bytes_to_read() > 0 || io.peer_has_closed() => {
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => {}
                // `try_read` reports it, every time.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
        self.io.poll_read_ready(cx)
    }

    /// Makes the first `buf.len()` plaintext bytes visible without consuming them (they stay for the
    /// next reads), taking what records the socket has now. The caller waits for the socket to be
    /// readable before asking again when `seen` is short and `closed` is false.
    pub(crate) fn peek(&self, buf: &mut [u8]) -> io::Result<Peek> {
        let mut state = self.state();
        let mut closed = false;
        loop {
            let State { session, peeked } = &mut *state;
            while peeked.len() < buf.len() {
                let mut chunk = [0u8; 256];
                let room = (buf.len() - peeked.len()).min(chunk.len());
                match session.reader().read(&mut chunk[..room]) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => peeked.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        closed = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let seen = peeked.len().min(buf.len());
            if seen == buf.len() || closed {
                buf[..seen].copy_from_slice(&peeked[..seen]);
                return Ok(Peek { seen, closed });
            }
            match self.take_records(session) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf[..seen].copy_from_slice(&peeked[..seen]);
                    return Ok(Peek { seen, closed });
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
        let mut state = self.state();
        let session = &mut state.session;
        ready!(self.poll_send(session, cx))?;
        let n = session.writer().write(buf)?;
        // Send what the socket takes now; the rest goes out with the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(session, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
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
        let mut state = self.state();
        self.poll_send(&mut state.session, cx)
    }

    /// Sends close_notify, flushes, then shuts the socket's write side down.
    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state();
        state.session.send_close_notify();
        ready!(self.poll_send(&mut state.session, cx))?;
        Poll::Ready(self.io.shutdown_write())
    }

    /// Without waiting: close_notify, the queued records the socket takes now, and the rest handed to
    /// a task (see `Drop`); then the socket's write side is shut down (a dropped write half).
    pub(crate) fn close_write(&self) {
        let mut state = self.state();
        let session = &mut state.session;
        session.send_close_notify();
        while session.wants_write() {
            if session.write_tls(&mut SocketWriter(&self.io)).is_err() {
                break;
            }
        }
        if session.wants_write() {
            linger(session, &self.io);
        } else {
            let _ = self.io.shutdown_write();
        }
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
    /// A stream dropped without `flush` or `shutdown` (a handler written for plain sockets) may still
    /// hold records the socket had no room for: they, and a close_notify, go to a task that keeps a
    /// duplicate of the socket for at most 5 s to send them, so the peer reads everything the handler
    /// wrote and a clean close. The connection's slot is free at once.
    fn drop(&mut self) {
        self.close_write();
    }
}

/// Moves the session's queued records to a task that writes them on a duplicate of the socket, then
/// shuts its write side (bounded by [`LINGER`]). Without a runtime, or if the socket cannot be
/// duplicated, they are dropped (logged).
fn linger(session: &mut ServerConnection, io: &Stream) {
    let mut pending = Vec::new();
    while session.wants_write() {
        if session.write_tls(&mut pending).is_err() {
            break;
        }
    }
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

/// Processes records just read; on a protocol error, sends rustls' alert if the socket takes it now.
pub(super) fn process(session: &mut ServerConnection, io: &Stream) -> Result<(), rustls::Error> {
    if let Err(e) = session.process_new_packets() {
        let _ = session.write_tls(&mut SocketWriter(io));
        return Err(e);
    }
    // Post-handshake messages (key updates) may want an answer.
    if session.wants_write() {
        let _ = session.write_tls(&mut SocketWriter(io));
    }
    Ok(())
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
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
