//! axum integration (feature `axum`): lariat's accept loop under `axum::serve`.
//!
//! Change one line:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
//! // let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let listener = lariat::axum::Listener::bind("127.0.0.1:3000")?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The app then gets the exact cap, errno classification, shortage backoff with early wake, the registry and
//! the counters ([`Listener::handle`]). Connections are served by tasks axum spawns, so
//! [`ServerHandle::close_connection`] cannot close them (it says so); everything else works.

use std::io;

use crate::{AcceptSource, Acceptor, Connection, Endpoint, PeerAddr, ServerBuilder, ServerHandle};

/// Why [`Listener::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address did not parse.
    #[error(transparent)]
    Parse(#[from] crate::ParseEndpointError),
    /// Binding failed.
    #[error(transparent)]
    Bind(#[from] crate::BindError),
    /// The listener's address could not be read.
    #[error("cannot read the listener's address: {0}")]
    Addr(#[from] io::Error),
}

/// An `axum::serve::Listener` backed by a lariat [`Acceptor`].
#[derive(Debug)]
pub struct Listener<S = crate::Listener> {
    acceptor: Acceptor<S>,
    handle: ServerHandle,
}

impl Listener {
    /// Binds `addr` (any [`Endpoint`] text) with default settings.
    pub fn bind(addr: &str) -> Result<Self, BindError> {
        let endpoint: Endpoint = addr.parse()?;
        let listener = crate::Listener::bind(&endpoint)?;
        Ok(Listener::new(ServerBuilder::default(), listener)?)
    }
}

impl<S: AcceptSource> Listener<S> {
    /// Wraps a source with the given settings.
    pub fn new(builder: ServerBuilder, source: S) -> io::Result<Self> {
        let (acceptor, handle) = builder.acceptor(source)?;
        Ok(Listener { acceptor, handle })
    }

    /// Counters, registry and cap of this listener.
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }
}

impl<S: AcceptSource> axum::serve::Listener for Listener<S> {
    type Io = Connection;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Connection, PeerAddr) {
        match self.acceptor.accept().await {
            Ok(conn) => {
                let peer = conn.peer_addr().clone();
                (conn, peer)
            }
            Err(err) => {
                // axum's accept cannot fail: stop accepting for good, loudly, rather than spin.
                tracing::error!(error = %err, "listener failed for good; no longer accepting");
                std::future::pending().await
            }
        }
    }

    /// The listening address, as a [`PeerAddr`] (axum uses one type for both ends).
    fn local_addr(&self) -> io::Result<PeerAddr> {
        Ok(match self.acceptor.local_addr() {
            crate::ListenAddr::Tcp(addr) => PeerAddr::Tcp(*addr),
            _ => PeerAddr::Unix,
        })
    }
}
