//! The connection as hyper's transport, handed back when hyper is done so it can be closed without a
//! reset (the lingering close), and a non-blocking look at what waits in the socket.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

use super::service::ConnState;
use crate::{Connection, Stream};

/// Owns the [`Connection`] while hyper serves it; when hyper drops its transport, the connection goes
/// back through `back` instead of being closed.
///
/// Reads give `prefix` first (bytes a previous process or a previous hyper connection read and did
/// not consume). Once the connection state's `keep_open` is set (the connection is about to move to a
/// successor or to hibernate), hyper's
/// shutdown at the end only flushes: the socket stays open for [`Returned::into_parts`].
pub(crate) struct Returned {
    conn: Option<Connection>,
    back: Option<oneshot::Sender<Connection>>,
    prefix: Bytes,
    state: Arc<ConnState>,
}

impl Returned {
    pub(crate) fn new(
        conn: Connection,
        prefix: Bytes,
        state: Arc<ConnState>,
    ) -> (Returned, oneshot::Receiver<Connection>) {
        let (tx, rx) = oneshot::channel();
        let io = Returned {
            conn: Some(conn),
            back: Some(tx),
            prefix,
            state,
        };
        (io, rx)
    }

    /// Takes the connection out (it does not go back through `back`), with the prefix hyper did not
    /// read yet.
    pub(crate) fn into_parts(mut self) -> (Option<Connection>, Bytes) {
        (self.conn.take(), std::mem::take(&mut self.prefix))
    }

    fn conn(&mut self) -> io::Result<Pin<&mut Connection>> {
        match self.conn.as_mut() {
            Some(c) => Ok(Pin::new(c)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) {
            // If the receiver is gone (the serving task was aborted), the connection is dropped here.
            let _ = back.send(conn);
        }
    }
}

impl AsyncRead for Returned {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        match this.conn() {
            Ok(c) => c.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Returned {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().conn() {
            Ok(c) => c.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().conn() {
            Ok(c) => c.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().conn() {
            Ok(c) => c.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let keep_open = self.state.keep_open.load(Relaxed);
        match self.get_mut().conn() {
            Ok(c) if keep_open => c.poll_flush(cx),
            Ok(c) => c.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Whether bytes (or an end of stream) wait unread in the socket: a `MSG_PEEK` of one byte that does not
/// block. Errors count as "something is there", so the caller does not close on a guess.
///
/// `fd` must be the socket of a connection the caller keeps open for the duration of the call.
pub(crate) fn pending(fd: RawFd) -> bool {
    // SAFETY: the caller keeps the connection (and so the descriptor) open during this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&fd);
    let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match sock.peek(&mut one) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// How a lingering close ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Linger {
    /// The peer closed (or the socket failed): nothing was left unread.
    Clean,
    /// The peer kept the connection open or kept sending past the linger time.
    TimedOut,
}

/// [`linger`] with the options' bound, a timeout counted: how every HTTP connection ends.
pub(crate) async fn close(conn: Connection, http: &super::Shared) {
    if linger(conn, http.options.linger).await == Linger::TimedOut {
        super::stats::HttpStats::add(&http.stats.linger_timeouts);
    }
}

/// Closes the way that loses no answer: sends our end of stream (FIN, or TLS `close_notify` then FIN),
/// then reads and discards until the peer closes too, at most `within`. Closing a socket with unread
/// bytes makes the kernel send a reset, which can destroy the answer the peer has not read yet.
pub(crate) async fn linger(mut conn: Connection, within: Duration) -> Linger {
    let _ = conn.shutdown().await;
    if within.is_zero() {
        return Linger::TimedOut;
    }
    // No buffer while waiting: a wave of connections closed at their keep-alive timeout lingers
    // together, and a peer that never answers keeps each for the whole `within`. Bytes that do come
    // are read into a buffer of the moment.
    let drained = tokio::time::timeout(within, async {
        loop {
            if conn.readable().await.is_err() {
                return;
            }
            let mut buf = Vec::with_capacity(4096);
            loop {
                buf.clear();
                match conn.try_read_buf(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
        }
    })
    .await;
    match drained {
        Ok(()) => Linger::Clean,
        Err(_) => Linger::TimedOut,
    }
}

/// HTTP/2's connection preface, which a client with prior knowledge (h2c) sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstBytes {
    /// They cannot begin HTTP/2's preface: HTTP/1.
    Http1,
    /// HTTP/2's preface, the beginning of it or an end of stream: let hyper-util tell.
    Undecided,
}

/// Tells HTTP/1 from HTTP/2's preface by the plaintext seen (under TLS).
fn first_bytes_say(seen: &[u8]) -> FirstBytes {
    if seen.iter().zip(H2_PREFACE).any(|(b, p)| b != p) {
        FirstBytes::Http1
    } else {
        FirstBytes::Undecided
    }
}

/// Waits until the connection is readable, then looks at what waits without reading it (`MSG_PEEK`;
/// under TLS, the plaintext, which the session keeps for the reads).
pub(crate) async fn first_bytes(stream: &Stream) -> io::Result<FirstBytes> {
    if let Stream::Tls(tls) = stream {
        let mut head = [0u8; H2_PREFACE.len()];
        loop {
            let peek = tls.peek(&mut head)?;
            if peek.seen > 0 || peek.closed {
                return Ok(first_bytes_say(&head[..peek.seen]));
            }
            // The peek read the socket until it would block: this waits for new records.
            tls.get_ref().readable().await?;
        }
    }
    loop {
        let mut head = [std::mem::MaybeUninit::<u8>::uninit(); H2_PREFACE.len()];
        let peeked = match stream {
            Stream::Tcp(s) => {
                s.readable().await?;
                s.try_io(tokio::io::Interest::READABLE, || {
                    socket2::SockRef::from(s).peek(&mut head)
                })
            }
            Stream::Unix(s) => {
                s.readable().await?;
                s.try_io(tokio::io::Interest::READABLE, || {
                    socket2::SockRef::from(s).peek(&mut head)
                })
            }
            Stream::Tls(_) => unreachable!("TLS streams are peeked above"),
        };
        let n = match peeked {
            Ok(n) => n.min(head.len()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: `peek` initialised the first `n` bytes.
        let differs = head[..n]
            .iter()
            .zip(H2_PREFACE)
            .any(|(b, p)| unsafe { b.assume_init() } != *p);
        return Ok(if differs {
            FirstBytes::Http1
        } else {
            FirstBytes::Undecided
        });
    }
}
