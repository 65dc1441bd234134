//! # lariat
//!
//! TCP and Unix-socket listeners that never lose a connection or a byte.
//!
//! Every server starts with an accept loop, and the idiomatic one is subtly broken: it dies on EMFILE, or
//! spins at 100% CPU when `?` becomes `continue`, over-admits past its cap, and (in actor-style runtimes)
//! can deliver a fast client's first bytes to the wrong owner. lariat gets each part right:
//!
//! * **Binding** ([`Listener::bind`]): backlog from `somaxconn`, `SO_REUSEADDR`, optional `SO_REUSEPORT`,
//!   `TCP_NODELAY`, real port for port 0, Unix sockets that replace stale files and never clobber live ones.
//! * **Accepting** ([`Acceptor`]): errors classified by errno; per-connection errors retried at once;
//!   shortage (EMFILE, ENFILE, ENOBUFS, ENOMEM) logged once per episode with a hint and backed off, waking
//!   early when a connection frees a descriptor; fatal errors end the loop cleanly.
//! * **An exact cap** ([`ServerBuilder::max_connections`]): a slot is taken *before* `accept`, so at the cap
//!   clients wait in the kernel backlog; changeable at run time.
//! * **Hand-off** ([`Connection`]): the socket moves to its handler, in its own task; nothing else reads it.
//!   A panicking handler is caught and counted.
//! * **Observing** ([`ServerHandle`]): live connection registry, close by id, counters; with feature
//!   `metrics`, the counters published to the `metrics` facade at scrape time (`metrics` module).
//! * **Push delivery** ([`delivery`]): a connection as a stream of framed messages in Erlang's active
//!   modes, with bounded memory and back-pressure; frames written through the same framings, or an
//!   [`Outbox`](delivery::Outbox) (a cloneable writer with a bounded queue) for fan-out.
//! * **Draining** ([`ServerHandle::drain`], [`drain`]): stop new clients without resetting queued ones,
//!   tell handlers, let live connections finish up to a deadline, then close and count the rest.
//! * **Living on signals** ([`lifecycle`], Unix): what `lariat serve` does, for any program: a lame duck
//!   that health checks see, the drain, a second signal that forces, a hitless restart on SIGHUP that
//!   rolls back when the successor fails, a reload hook, exit codes.
//! * **Moving connections** ([`handover`], Linux): at that restart, live connections move to the
//!   successor (the socket, the bytes read ahead, a state the handler chooses) instead of draining; a
//!   handler that ignores it drains as before.
//!
//! ```no_run
//! use tokio::io::AsyncWriteExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = lariat::Listener::bind(&"127.0.0.1:0".parse()?)?;
//! let server = lariat::Server::builder()
//!     .max_connections(1_000)
//!     .serve([listener], |mut conn: lariat::Connection| async move {
//!         conn.write_all(b"hello\n").await
//!     })?;
//! println!("listening on {}", server.local_addrs()[0]);
//! server.wait().await?;
//! # Ok(()) }
//! ```
//!
//! Platform: Linux first. Everything builds on Unix; the Linux-only parts are said where they are
//! (abstract sockets, `somaxconn`, `TCP_NODELAY` inheritance, `ENONET`).

#![warn(missing_docs)]

mod accept;
mod connection;
mod deadline;
pub mod delivery;
pub mod drain;
mod handler;
pub mod handover;
mod handshake;
pub mod lifecycle;
pub mod memory;
#[cfg(feature = "metrics")]
pub mod metrics;
mod net;
pub mod restart;
mod server;

pub use handshake::{admission, proxy, route, tls};
pub use net::activation;

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "http")]
pub mod http;

/// The README's code blocks, compiled as doctests so that what users copy compiles. Under the `axum`
/// feature, which one block needs (`cargo test --all-features`, as CI runs).
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use accept::backoff::BackoffPolicy;
pub use accept::classify::{classify, ErrorClass, Shortage};
pub use accept::{AcceptError, Acceptor, OnExhaustion};
pub use connection::meta::ConnectionMeta;
pub use connection::split::{ReadHalf, ReuniteError, WriteHalf};
pub use connection::{Connection, ConnectionGuard};
pub use drain::{DrainOptions, DrainReport, DrainSignal};
pub use handler::{BoxError, Handler, Outcome};
pub use handshake::ListenerHandshake;
pub use net::bind::{default_backlog, BindError, BindOptions};
pub use net::endpoint::{Endpoint, ParseEndpointError};
pub use net::listener::{ListenAddr, Listener};
pub use net::parked::ParkedListener;
pub use net::source::AcceptSource;
pub use net::stream::{LocalAddr, PeerAddr, Stream};
pub use server::registry::{CloseError, ConnectionInfo};
pub use server::settings::{
    HandshakeSettings, Limits, SettingsError, DEFAULT_HANDSHAKE_GRACE, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, MAX_IDLE_TIMEOUT,
};
pub use server::stats::StatsSnapshot;
pub use server::{Running, Server, ServerBuilder, ServerError, ServerHandle};
