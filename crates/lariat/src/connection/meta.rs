//! [`ConnectionMeta`]: what is known about a connection (id, peer, TLS, age, bytes, the drain signal),
//! shared by every view of it — the [`Connection`](crate::Connection), its split halves, its
//! [`Messages`](crate::delivery::Messages) — without copies.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::drain::DrainSignal;
use crate::server::registry::Entry;
use crate::{LocalAddr, PeerAddr};

/// A connection's metadata, reachable from the connection and from whatever it was split into.
///
/// Cloning it is one reference count, and a clone does not keep the socket open: keep one in a
/// broadcast list, a log context or a task of its own. It reads the counters the connection updates,
/// so byte counts and age are live.
#[derive(Debug, Clone)]
pub struct ConnectionMeta(pub(crate) Arc<Entry>);

impl ConnectionMeta {
    /// The connection's id, unique within its server; the registry lists and closes by it.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The peer's address: the client a PROXY header named, when the server reads PROXY headers and this
    /// connection sent one with an address; otherwise the socket's peer.
    pub fn peer_addr(&self) -> &PeerAddr {
        self.0.reported_peer()
    }

    /// The socket's own peer: with a PROXY header, the load balancer (the original hop).
    pub fn hop_addr(&self) -> &PeerAddr {
        &self.0.peer
    }

    /// The PROXY header this connection sent, if the server reads them and it sent one.
    pub fn proxy_header(&self) -> Option<&crate::proxy::ProxyHeader> {
        self.0.proxy().map(|p| &p.header)
    }

    /// What TLS negotiated (SNI name, ALPN protocol, version), for a connection that came through a
    /// TLS handshake.
    pub fn tls(&self) -> Option<&crate::tls::TlsInfo> {
        self.0.tls()
    }

    /// The local address of the connection (a `getsockname` call, made only when asked). Fails with
    /// `NotConnected` once the connection was closed (or its raw stream taken out with
    /// [`Connection::into_parts`](crate::Connection::into_parts)).
    pub fn local_addr(&self) -> io::Result<LocalAddr> {
        let addr = self
            .0
            .closer
            .with_fd(|fd| socket2::SockRef::from(&fd).local_addr())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))??;
        Ok(match addr.as_socket() {
            Some(tcp) => LocalAddr::Tcp(tcp),
            None => LocalAddr::Unix(addr.as_pathname().map(Into::into)),
        })
    }

    /// Time since the connection was accepted.
    pub fn age(&self) -> Duration {
        self.0.shared.registry.age(&self.0)
    }

    /// Bytes read so far (through the counted paths: the connection, its halves, its messages).
    pub fn bytes_in(&self) -> u64 {
        self.0.bytes_in.load(Relaxed)
    }

    /// Bytes written so far.
    pub fn bytes_out(&self) -> u64 {
        self.0.bytes_out.load(Relaxed)
    }

    /// The server's drain signal, owned: see [`DrainSignal`].
    pub fn drain_signal(&self) -> DrainSignal {
        DrainSignal::new(self.0.shared.drain.draining.clone())
    }

    /// True once the server has begun to drain.
    pub fn is_draining(&self) -> bool {
        self.0.shared.drain.draining.is_cancelled()
    }

    /// Closes the connection from anywhere, as
    /// [`ServerHandle::close_connection`](crate::ServerHandle::close_connection) does: the socket is
    /// shut down both ways (the peer reads EOF; every half sees the end at once) and the task lariat
    /// spawned for it is aborted (called from that handler itself, it ends at its next await). For a
    /// broadcaster that gives up on a client that does not keep up. Closing a closed connection does
    /// nothing.
    pub fn close(&self) {
        let _ = self.0.shared.registry.close(self.0.id);
    }
}
