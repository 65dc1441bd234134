//! [`Server`]: accept loops over one or more listeners, a task per connection, and a handle to observe
//! and steer them (counters, registry, cap, stop).
//!
//! - `settings.rs`: the settings in typed groups ([`Limits`](settings::Limits),
//!   [`HandshakeSettings`](settings::HandshakeSettings)), each group's defaults in its `Default`, and
//!   the refusal of values that cannot work;
//! - `builder.rs`: [`ServerBuilder`], taking the settings and starting the loops;
//! - `handle.rs`: [`ServerHandle`], observing and steering, the drain's second stage;
//! - `accept_loop.rs`: one accept loop, and the drain's first stage in it;
//! - `dispatch.rs`: each connection's task (the handshake if its listener has one, then the handler);
//! - `state.rs`: what the loops and connections share; `registry.rs`, `stats.rs`, `idle.rs`.

mod accept_loop;
mod builder;
mod dispatch;
mod handle;
pub(crate) mod idle;
pub(crate) mod registry;
pub(crate) mod settings;
pub(crate) mod state;
pub(crate) mod stats;

pub use builder::ServerBuilder;
pub use handle::ServerHandle;

use tokio::task::JoinHandle;

use crate::accept::AcceptError;
use crate::net::listener::ListenAddr;

/// What [`ServerBuilder::run`] returns besides the accept loop: the handle and the bound addresses.
#[derive(Debug, Clone)]
pub struct Running {
    /// Observes and steers the server.
    pub handle: ServerHandle,
    /// The addresses the listeners are bound to, in the order given.
    pub addrs: Vec<ListenAddr>,
}

/// A running server: accept loops on its listeners, each connection in its own task.
#[derive(Debug)]
pub struct Server {
    running: Running,
    accept_loop: JoinHandle<Result<(), ServerError>>,
}

/// Why a server stopped accepting other than by [`ServerHandle::stop`]: every listener failed for good.
#[derive(Debug, thiserror::Error)]
#[error("{} listener(s) failed for good; first: {}", failures.len(), failures.first().map(ToString::to_string).unwrap_or_default())]
pub struct ServerError {
    /// One entry per failed listener.
    pub failures: Vec<AcceptError>,
}

impl Server {
    /// A server with default settings; see [`ServerBuilder`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The handle that observes and steers this server.
    pub fn handle(&self) -> &ServerHandle {
        &self.running.handle
    }

    /// The addresses the listeners are bound to (real ports for port 0), in the order given.
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.running.addrs
    }

    /// Waits until every accept loop has ended: after [`ServerHandle::stop`] (`Ok`), or because a listener
    /// failed for good (`Err`, with why). Live connections may still be running.
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.accept_loop.await {
            Ok(result) => result,
            // A panic is a bug in lariat, not in a handler (those are caught per connection): surface it.
            // A cancelled loop means the runtime is shutting down, which is a stop too.
            Err(join) => match join.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Ok(()),
            },
        }
    }
}
