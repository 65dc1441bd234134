//! A [`Connection`] split into a read half and a write half that can live in different tasks (a
//! message stream on one side, writers from elsewhere on the other). Both halves count bytes; the
//! connection's slot and registry entry are given back when the second half is dropped, after the
//! socket is closed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix};

use crate::connection::ConnectionGuard;
use crate::tls::TlsStream;
use crate::{Connection, Stream};

/// The read half of a split [`Connection`].
#[derive(Debug)]
pub struct ReadHalf {
    // Field order: the socket half goes before the guard.
    inner: ReadInner,
    guard: Arc<ConnectionGuard>,
}

/// The write half of a split [`Connection`]. Dropping it shuts the write direction down (the peer reads
/// EOF), as tokio's owned write halves do.
#[derive(Debug)]
pub struct WriteHalf {
    inner: WriteInner,
    guard: Arc<ConnectionGuard>,
}

#[derive(Debug)]
enum ReadInner {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Tls(Arc<TlsStream>),
}

#[derive(Debug)]
enum WriteInner {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    Tls(TlsWriteHalf),
}

/// The write side of a shared TLS session. Dropped (not reunited), it sends close_notify and shuts the
/// socket's write direction, as tokio's owned write halves do.
#[derive(Debug)]
struct TlsWriteHalf(Option<Arc<TlsStream>>);

impl TlsWriteHalf {
    fn get(&self) -> &TlsStream {
        // `None` only inside `reunite`, after which the half is gone.
        self.0
            .as_deref()
            .expect("a TLS write half holds its session until reunited")
    }
}

impl Drop for TlsWriteHalf {
    fn drop(&mut self) {
        if let Some(tls) = self.0.take() {
            tls.close_write();
        }
    }
}

/// [`ReadHalf::reunite`] was given a write half of another connection.
#[derive(Debug, thiserror::Error)]
#[error("the halves belong to different connections")]
pub struct ReuniteError(pub ReadHalf, pub WriteHalf);

impl Connection {
    /// Splits the connection into halves that can be used from different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        let (stream, guard) = self.into_parts();
        let guard = Arc::new(guard);
        let (read, write) = match stream {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadInner::Tcp(r), WriteInner::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadInner::Unix(r), WriteInner::Unix(w))
            }
            Stream::Tls(s) => {
                let s: Arc<TlsStream> = Arc::from(s);
                (
                    ReadInner::Tls(s.clone()),
                    WriteInner::Tls(TlsWriteHalf(Some(s))),
                )
            }
        };
        (
            ReadHalf {
                inner: read,
                guard: guard.clone(),
            },
            WriteHalf {
                inner: write,
                guard,
            },
        )
    }
}

impl ReadHalf {
    /// Joins the halves back into the connection.
    pub fn reunite(self, write: WriteHalf) -> Result<Connection, ReuniteError> {
        if !Arc::ptr_eq(&self.guard, &write.guard) {
            return Err(ReuniteError(self, write));
        }
        let ReadHalf { inner, guard } = self;
        let WriteHalf {
            inner: write_inner,
            guard: write_guard,
        } = write;
        drop(write_guard);
        let stream = match (inner, write_inner) {
            (ReadInner::Tcp(r), WriteInner::Tcp(w)) => r.reunite(w).map(Stream::Tcp).ok(),
            (ReadInner::Unix(r), WriteInner::Unix(w)) => r.reunite(w).map(Stream::Unix).ok(),
            (ReadInner::Tls(r), WriteInner::Tls(mut w)) => {
                drop(w.0.take());
                Arc::try_unwrap(r).ok().map(|s| Stream::Tls(Box::new(s)))
            }
            _ => None,
        };
        let guard = Arc::try_unwrap(guard).ok();
        match (stream, guard) {
            (Some(stream), Some(guard)) => Ok(Connection::from_parts(stream, guard)),
            // Same guard means same connection, so tokio's halves match and no other holder exists.
            _ => unreachable!("halves of one connection always reunite"),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.guard.id()
    }

    /// Polls for read readiness without a buffer (see [`Connection::readable`]).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.inner {
            ReadInner::Tcp(r) => AsRef::<tokio::net::TcpStream>::as_ref(r).poll_read_ready(cx),
            ReadInner::Unix(r) => AsRef::<tokio::net::UnixStream>::as_ref(r).poll_read_ready(cx),
            ReadInner::Tls(s) => s.poll_read_ready(cx),
        }
    }

    /// Reads what is available now into the spare capacity of `buf`, or fails with
    /// [`io::ErrorKind::WouldBlock`]. Counted.
    pub fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        let n = match &self.inner {
            ReadInner::Tcp(r) => AsRef::<tokio::net::TcpStream>::as_ref(r).try_read_buf(buf)?,
            ReadInner::Unix(r) => AsRef::<tokio::net::UnixStream>::as_ref(r).try_read_buf(buf)?,
            ReadInner::Tls(s) => s.try_read_buf(buf)?,
        };
        self.guard.entry().bytes_in.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

impl WriteHalf {
    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.guard.id()
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match &mut this.inner {
            ReadInner::Tcp(r) => ready!(Pin::new(r).poll_read(cx, buf))?,
            ReadInner::Unix(r) => ready!(Pin::new(r).poll_read(cx, buf))?,
            ReadInner::Tls(s) => ready!(s.poll_read(cx, buf))?,
        }
        let n = buf.filled().len() - before;
        this.guard.entry().bytes_in.fetch_add(n as u64, Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = match &mut this.inner {
            WriteInner::Tcp(w) => ready!(Pin::new(w).poll_write(cx, buf))?,
            WriteInner::Unix(w) => ready!(Pin::new(w).poll_write(cx, buf))?,
            WriteInner::Tls(w) => ready!(w.get().poll_write(cx, buf))?,
        };
        this.guard.entry().bytes_out.fetch_add(n as u64, Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = match &mut this.inner {
            WriteInner::Tcp(w) => ready!(Pin::new(w).poll_write_vectored(cx, bufs))?,
            WriteInner::Unix(w) => ready!(Pin::new(w).poll_write_vectored(cx, bufs))?,
            WriteInner::Tls(w) => ready!(w.get().poll_write_vectored(cx, bufs))?,
        };
        this.guard.entry().bytes_out.fetch_add(n as u64, Relaxed);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            WriteInner::Tcp(w) => w.is_write_vectored(),
            WriteInner::Unix(w) => w.is_write_vectored(),
            WriteInner::Tls(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            WriteInner::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteInner::Unix(w) => Pin::new(w).poll_flush(cx),
            WriteInner::Tls(w) => w.get().poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            WriteInner::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteInner::Unix(w) => Pin::new(w).poll_shutdown(cx),
            WriteInner::Tls(w) => w.get().poll_shutdown(cx),
        }
    }
}
