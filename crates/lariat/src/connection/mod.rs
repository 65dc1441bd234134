//! [`Connection`]: what a handler receives. It owns the socket, so no other task can read its bytes.

#[cfg(feature = "http")]
pub(crate) mod asleep;
pub(crate) mod closer;
// Used by `lariat::http`'s hibernation only, so far.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) mod lot;
pub(crate) mod meta;
pub(crate) mod split;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::WaitForCancellationFuture;

use crate::connection::meta::ConnectionMeta;
use crate::server::registry::Entry;
use crate::server::state::ServerState;
use crate::server::stats::Stats;
use crate::{LocalAddr, PeerAddr, Stream};

/// An accepted connection, handed to exactly one handler.
///
/// **Ownership is the hand-off guarantee.** The accept loop moves the socket into the `Connection` and the
/// `Connection` into the handler's task; nothing else holds the socket, and lariat reads nothing from it
/// before the handler does. So every byte a client sends, even the ones it sends the instant it connects
/// (a fast client's first packet), is read by the handler and by no one else.
///
/// It implements tokio's `AsyncRead` and `AsyncWrite` and counts bytes both ways for the registry.
/// Dropping it closes the socket, removes it from the registry and returns its slot under the cap, in that
/// order, so an acceptor waiting on the cap or on descriptor exhaustion finds the descriptor already free.
/// After [`into_split`](Self::into_split) that happens when the last half is dropped.
///
/// A forced close ([`ServerHandle::close_connection`](crate::ServerHandle::close_connection), the idle
/// timeout, a drain's deadline) shuts the socket down both ways, so the connection and whatever it was
/// split into, in any task, see the end at once (reads get EOF, writes fail).
#[derive(Debug)]
pub struct Connection {
    // Field order matters: the socket is closed before the guard releases the slot.
    stream: Stream,
    guard: ConnectionGuard,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Before the descriptor closes (the fields drop after this): a forced close must never reach
        // a descriptor number `accept` may hand out again.
        self.guard.meta.0.closer.withdraw();
    }
}

/// Keeps a connection's place in its server: its slot under the cap and its registry entry. Dropped
/// (with the stream, or on its own after [`Connection::into_parts`]) it gives both back.
#[derive(Debug)]
pub struct ConnectionGuard {
    // One pointer: the entry holds the id and the server's shared state. Every idle connection's task
    // carries this, and tokio sizes task cells in steps of 128 bytes.
    meta: ConnectionMeta,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let entry = &self.meta.0;
        let shared = &entry.shared;
        let stats = &shared.stats;
        shared.registry.remove(entry.id);
        if entry.closer.has_flag(crate::connection::closer::PARKED) {
            shared.handover.unpark(entry.id);
        }
        Stats::add(&stats.bytes_in, entry.bytes_in.load(Relaxed));
        Stats::add(&stats.bytes_out, entry.bytes_out.load(Relaxed));
        Stats::add(&stats.closed, 1);
        if let Some(gate) = &shared.gate {
            if entry.closer.has_flag(crate::connection::closer::COUNTED) {
                gate.release(entry.reported_peer());
            }
        }
        shared.limit.release();
        if shared.drain.draining.is_cancelled() {
            shared.drain.connection_closed.notify_waiters();
        }
    }
}

impl ConnectionGuard {
    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.meta.0.id
    }

    /// The connection's metadata.
    pub fn meta(&self) -> &ConnectionMeta {
        &self.meta
    }

    pub(crate) fn entry(&self) -> &Entry {
        &self.meta.0
    }
}

impl Connection {
    /// Wraps a freshly accepted socket. The caller holds a slot under the cap, which passes to the guard.
    pub(crate) fn new(stream: Stream, peer: PeerAddr, shared: Arc<ServerState>) -> Connection {
        Stats::add(&shared.stats.accepted, 1);
        let entry = shared
            .registry
            .insert(peer, Some(stream.raw_fd()), shared.clone());
        Connection {
            stream,
            guard: ConnectionGuard {
                meta: ConnectionMeta(entry),
            },
        }
    }

    pub(crate) fn entry(&self) -> &Arc<Entry> {
        &self.guard.meta.0
    }

    /// Judges the connection's reported peer (the client a PROXY header named, else the socket's peer)
    /// by the admission rules (see `admission::judge`), remembering whether it was counted so that
    /// closing it uncounts it.
    pub(crate) fn admit(&self) -> Result<(), crate::admission::Refusal> {
        let entry = &self.guard.meta.0;
        if crate::admission::judge(entry, entry.reported_peer())? {
            entry.closer.set_flag(crate::connection::closer::COUNTED);
        }
        Ok(())
    }

    /// What is known about the connection (peer, TLS, age, bytes, the drain signal), as a value every
    /// view of it shares: the halves after [`into_split`](Self::into_split) and
    /// [`Messages`](crate::delivery::Messages) hand out the same one. Clone it to keep it.
    pub fn meta(&self) -> &ConnectionMeta {
        &self.guard.meta
    }

    /// The server's drain signal as an owned, cloneable value that outlives a split (see
    /// [`DrainSignal`](crate::drain::DrainSignal)).
    pub fn drain_signal(&self) -> crate::drain::DrainSignal {
        self.guard.meta.drain_signal()
    }

    /// The connection's id, unique within its server; the registry lists and closes by it.
    pub fn id(&self) -> u64 {
        self.guard.meta.0.id
    }

    /// The peer's address: the client a PROXY header named, when the server reads PROXY headers and this
    /// connection sent one with an address; otherwise the socket's peer.
    pub fn peer_addr(&self) -> &PeerAddr {
        self.guard.meta.0.reported_peer()
    }

    /// The socket's own peer: with a PROXY header, the load balancer (the original hop).
    pub fn hop_addr(&self) -> &PeerAddr {
        &self.guard.meta.0.peer
    }

    /// The PROXY header this connection sent, if the server reads them and it sent one.
    pub fn proxy_header(&self) -> Option<&crate::proxy::ProxyHeader> {
        self.guard.meta.proxy_header()
    }

    pub(crate) fn set_proxy_header(&self, header: crate::proxy::ProxyHeader) {
        let peer = header.source.map(PeerAddr::Tcp);
        let _ = self
            .guard
            .meta
            .0
            .extras()
            .proxy
            .set(crate::server::registry::ProxyInfo { header, peer });
    }

    /// What TLS negotiated (SNI name, ALPN protocol, version), for a connection that came through a TLS
    /// handshake ([`ServerBuilder::tls`](crate::ServerBuilder::tls) or a TLS route).
    pub fn tls(&self) -> Option<crate::tls::TlsInfo> {
        self.guard.meta.tls().cloned()
    }

    /// The local address of this connection (a `getsockname` call, made only when asked).
    pub fn local_addr(&self) -> io::Result<LocalAddr> {
        self.stream.local_addr()
    }

    /// Completes when the server begins to drain ([`ServerHandle::drain`](crate::ServerHandle::drain)):
    /// a handler that can end its conversation early (an HTTP server closing an idle keep-alive, a
    /// protocol with a goodbye message) awaits this alongside its reads. Connections that ignore it still
    /// get until the drain's deadline. It borrows the connection; to keep the signal past a split, take
    /// [`drain_signal`](Self::drain_signal).
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.guard.meta.0.shared.drain.draining.cancelled()
    }

    /// True once the server has begun to drain.
    pub fn is_draining(&self) -> bool {
        self.guard.meta.0.shared.drain.draining.is_cancelled()
    }

    /// Completes when clients wait behind the full cap (an acceptor waits at it with clients in the
    /// queue: Linux TCP, Unix sockets) and this connection has lived past the handshake grace
    /// ([`ServerBuilder::handshake_grace`](crate::ServerBuilder::handshake_grace)). A handler in a phase
    /// it can give up without loss, such as waiting for a request that has not begun, awaits this
    /// alongside its read and closes, so a crowd of idle connections cannot keep queued clients out (handshakes
    /// give way the same way). The future does not borrow the connection, so it
    /// can race the connection's own reads.
    pub fn crowded(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.guard.meta.0.shared.clone();
        let accepted = tokio::time::Instant::now()
            .checked_sub(self.age())
            .unwrap_or_else(tokio::time::Instant::now);
        let grace_ends = crate::deadline::after(accepted, shared.handshake_grace);
        async move { shared.pressure.gives_way(grace_ends).await }
    }

    /// Time since the connection was accepted.
    pub fn age(&self) -> Duration {
        self.guard.meta.0.shared.registry.age(&self.guard.meta.0)
    }

    /// Bytes read so far.
    pub fn bytes_in(&self) -> u64 {
        self.guard.meta.0.bytes_in.load(Relaxed)
    }

    /// Bytes written so far.
    pub fn bytes_out(&self) -> u64 {
        self.guard.meta.0.bytes_out.load(Relaxed)
    }

    /// The underlying socket, for socket options (keepalive, buffer sizes, …). Reading or writing through
    /// it is not counted.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Waits until there is something to read, without a buffer. A handler that parks here between
    /// messages holds no read buffer, which is what keeps idle connections cheap.
    ///
    /// # Idling cheaply (hibernation)
    /// What an idle connection costs is what its handler keeps across the wait: its future (whose size
    /// is that of its largest await point, paid all the time) and whatever that future owns on the
    /// heap. To idle with almost nothing, as Erlang's `hibernate` does:
    /// * wait here, not in a read into a buffer: allocate the buffer after this returns and drop it
    ///   once a read would block (a 64 KiB buffer held by 10,000 idle connections is 640 MB);
    /// * keep state that is only needed while busy (parsers, protocol state, a boxed inner future)
    ///   in a `Box` or an `Option` that is dropped before the wait and rebuilt after it;
    /// * box rarely taken paths (`Box::pin(conn.hand_over(..)).await`, a timer used once) so their
    ///   state is not part of every connection's future;
    /// * wait here for the drain and a hand-over offer too
    ///   ([`readable_or_offer`](Self::readable_or_offer) adds nothing to the future).
    ///
    /// ```no_run
    /// # async fn handler(mut conn: lariat::Connection) -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// loop {
    ///     conn.readable().await?; // idle: no buffer held here
    ///     let mut buf = Vec::with_capacity(16 * 1024);
    ///     loop {
    ///         buf.clear();
    ///         match conn.try_read_buf(&mut buf) {
    ///             Ok(0) => return Ok(()),
    ///             Ok(_) => conn.write_all(&buf).await?,
    ///             Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break, // buffer dropped
    ///             Err(e) => return Err(e),
    ///         }
    ///     }
    /// }
    /// # }
    /// ```
    /// `lariat::http` does the same for a keep-alive HTTP/1 connection (`HttpOptions::hibernate_after`
    /// with the `http` feature): hyper's whole connection is dropped between requests and rebuilt when
    /// the next bytes arrive.
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        // A plain future, not an `async fn` around one: each async layer adds its own state to every
        // idle connection's task.
        self.stream.readable()
    }

    /// Reads what is available now, or fails with [`io::ErrorKind::WouldBlock`]. Counted.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.try_read(buf)?;
        self.guard.meta.0.bytes_in.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// Reads what is available now into the spare capacity of `buf`, or fails with
    /// [`io::ErrorKind::WouldBlock`]. Counted.
    pub fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        let n = self.stream.try_read_buf(buf)?;
        self.guard.meta.0.bytes_in.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// Splits off the raw stream, for code that needs the concrete socket type. The guard must live as long
    /// as the stream: dropping it early frees the slot under the cap while the socket is still open. Bytes
    /// moved through the raw stream are not counted, and a forced close can no longer shut the socket
    /// down (lariat no longer knows when it is closed): it only aborts the task lariat spawned.
    pub fn into_parts(self) -> (Stream, ConnectionGuard) {
        self.guard.meta.0.closer.withdraw();
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, and each field is read out exactly once, so
        // each is owned by exactly one place (`Connection`'s own `Drop` is skipped; its only job,
        // withdrawing the descriptor, is done above).
        unsafe { (std::ptr::read(&this.stream), std::ptr::read(&this.guard)) }
    }

    pub(crate) fn from_parts(stream: Stream, guard: ConnectionGuard) -> Connection {
        guard.meta.0.closer.register(stream.raw_fd());
        Connection { stream, guard }
    }

    /// Reads through `&self`, for the halves of a split connection (which share it). Counted.
    pub(crate) fn poll_read_shared(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(self.stream.poll_read_ref(cx, buf))?;
        let n = buf.filled().len() - before;
        self.guard.meta.0.bytes_in.fetch_add(n as u64, Relaxed);
        Poll::Ready(Ok(()))
    }

    /// Writes through `&self` (see [`poll_read_shared`](Self::poll_read_shared)). Counted.
    pub(crate) fn poll_write_shared(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.stream.poll_write_ref(cx, bufs))?;
        self.guard.meta.0.bytes_out.fetch_add(n as u64, Relaxed);
        Poll::Ready(Ok(n))
    }
}

/// Adds `n` to one of the connection's byte counters from a path that holds the connection
/// exclusively (`&mut`): nothing else can write that counter meanwhile (the `&self` readers, such as
/// `try_read`, need a shared borrow; a split connection has no `&mut` path), so a plain load and
/// store replace a locked read-modify-write on every read and write. Readers elsewhere (the registry,
/// the idle checks, the metrics) only load.
fn count_exclusive(counter: &std::sync::atomic::AtomicU64, n: usize) {
    counter.store(counter.load(Relaxed).wrapping_add(n as u64), Relaxed);
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        count_exclusive(&this.guard.meta.0.bytes_in, n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        count_exclusive(&this.guard.meta.0.bytes_out, n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))?;
        count_exclusive(&this.guard.meta.0.bytes_out, n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
