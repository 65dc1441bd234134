//! The byte stream of one accepted connection, TCP or Unix, and the address of its peer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::tls::TlsStream;

/// An accepted socket, or a TLS session over one. An enum rather than a trait object so that reads and
/// writes are direct calls and a plain connection costs no extra allocation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain stream connection.
    Unix(UnixStream),
    /// A TLS session (over a `Tcp` or `Unix` stream): reads and writes are plaintext.
    Tls(Box<TlsStream>),
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// The TCP peer's address and port.
    Tcp(SocketAddr),
    /// A Unix-domain peer. Clients almost never bind a name, so none is kept: this keeps the registry entry
    /// small (a `sockaddr_un` is 110 bytes).
    Unix,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => addr.fmt(f),
            PeerAddr::Unix => f.write_str("unix"),
        }
    }
}

/// The local end of a connection, as `getsockname(2)` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    /// A TCP address (the real one, even when the listener is bound to a wildcard).
    Tcp(SocketAddr),
    /// A Unix-domain socket path, if it has one.
    Unix(Option<std::path::PathBuf>),
}

impl Stream {
    /// Waits until the socket is readable, without reading and without a buffer: an idle connection parked
    /// here holds no read buffer.
    ///
    /// Built on `poll_read_ready`, which parks the task in the socket's own reader slot, so the wait adds
    /// no waiter node to the connection's future (about 100 bytes per idle connection). As with
    /// `AsyncRead`, one task reads a connection at a time.
    pub fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(|cx| self.poll_read_ready(cx))
    }

    /// Runs `f` on the raw descriptor when the socket is readable, until it succeeds or fails with
    /// something other than `WouldBlock` (which clears the readiness and waits for the next event).
    pub(crate) async fn read_io<R>(
        &self,
        mut f: impl FnMut(std::os::fd::RawFd) -> io::Result<R>,
    ) -> io::Result<R> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;
        match self {
            Stream::Tcp(s) => {
                let fd = s.as_raw_fd();
                s.async_io(Interest::READABLE, || f(fd)).await
            }
            Stream::Unix(s) => {
                let fd = s.as_raw_fd();
                s.async_io(Interest::READABLE, || f(fd)).await
            }
            // The socket's bytes are records, not the stream's: raw reads would corrupt the session.
            Stream::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "raw reads are not possible under TLS",
            )),
        }
    }

    /// Polls for read readiness (see [`readable`](Self::readable)).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.poll_read_ready(cx),
        }
    }

    /// Reads what is available now, or fails with [`io::ErrorKind::WouldBlock`].
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
            Stream::Tls(s) => s.try_read(buf),
        }
    }

    /// Reads what is available now into the spare capacity of `buf` (no zeroing), or fails with
    /// [`io::ErrorKind::WouldBlock`].
    pub fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Unix(s) => s.try_read_buf(buf),
            Stream::Tls(s) => s.try_read_buf(buf),
        }
    }

    /// Writes what the socket takes now, or fails with [`io::ErrorKind::WouldBlock`]. Raw sockets only
    /// (it moves TLS records for the session).
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            Stream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write_vectored(bufs),
            Stream::Unix(s) => s.try_write_vectored(bufs),
            Stream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            Stream::Unix(s) => s.poll_write_ready(cx),
            Stream::Tls(s) => s.get_ref().poll_write_ready(cx),
        }
    }

    pub(crate) fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(|cx| self.poll_write_ready(cx))
    }

    /// The socket's descriptor (under TLS, the socket the session runs over).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.get_ref().raw_fd(),
        }
    }

    /// Reads through `&self`, as tokio's owned read halves do (readiness, then a non-blocking read that
    /// clears it on `WouldBlock`), so the halves of a split connection can share one `Stream`. One task
    /// reads at a time.
    pub(crate) fn poll_read_ref(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Stream::Tls(s) = self {
            return s.poll_read(cx, buf);
        }
        loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            match self.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes through `&self` (see [`poll_read_ref`](Self::poll_read_ref)); TLS writes the first
    /// non-empty buffer.
    pub(crate) fn poll_write_ref(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Stream::Tls(s) = self {
            return s.poll_write_vectored(cx, bufs);
        }
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            let written = match bufs {
                [one] => self.try_write(one),
                _ => self.try_write_vectored(bufs),
            };
            match written {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    /// Flushes through `&self`: a TLS session's queued records; nothing for a plain socket.
    pub(crate) fn poll_flush_ref(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tls(s) => s.poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Shuts the write side through `&self` (TLS: close_notify first).
    pub(crate) fn poll_shutdown_ref(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tls(s) => s.poll_shutdown(cx),
            _ => Poll::Ready(self.shutdown_write()),
        }
    }

    /// Without waiting, as a dropped write half does: TLS sends close_notify and what records the socket
    /// takes (the rest linger in a task); then the write direction is shut down.
    pub(crate) fn close_write(&self) {
        match self {
            Stream::Tls(s) => s.close_write(),
            _ => {
                let _ = self.shutdown_write();
            }
        }
    }

    /// Shuts the write direction down (the peer reads EOF), through `&self`.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        use std::os::fd::AsFd;
        let fd = match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            Stream::Tls(s) => return s.get_ref().shutdown_write(),
        };
        socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
    }

    /// What the TLS handshake negotiated, for a TLS stream.
    pub fn tls_info(&self) -> Option<crate::tls::TlsInfo> {
        match self {
            Stream::Tls(s) => Some(s.info()),
            _ => None,
        }
    }

    /// The local address of this connection (a `getsockname` call: done on demand, not per accept).
    pub fn local_addr(&self) -> io::Result<LocalAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().map(LocalAddr::Tcp),
            Stream::Unix(s) => s
                .local_addr()
                .map(|a| LocalAddr::Unix(a.as_pathname().map(Into::into))),
            Stream::Tls(s) => s.get_ref().local_addr(),
        }
    }

    /// Sets `TCP_NODELAY`; a no-op on Unix sockets.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(nodelay),
            Stream::Unix(_) => Ok(()),
            Stream::Tls(s) => s.get_ref().set_nodelay(nodelay),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => s.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => s.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => s.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => s.poll_shutdown(cx),
        }
    }
}
