//! The state one server's accept loops and connections share: the cap, the registry, the counters and
//! the drain's state.
//!
//! The one import circle the crate keeps: this struct holds a piece of state from each phase (the cap from
//! `accept`, the drain's tokens from `drain`, the pressure and admission gate from `handshake`, the
//! hand-over channel from `handover`), and each phase takes `&ServerState` back to reach the others'. Splitting
//! it into one `Arc` per phase would cost every connection more pointers and buy no independence: a
//! connection's guard must reach the cap, the registry, the counters and the drain in one place when it
//! drops. The leaves it holds (`accept/limit.rs`, `handshake/pressure.rs`, `drain/`) import nothing of
//! the server's back.

use std::time::Duration;

use crate::accept::limit::ConnectionLimit;
use crate::admission::{Gate, LogLimit};
use crate::drain::DrainState;
use crate::handshake::pressure::Pressure;
use crate::server::registry::Registry;
use crate::server::stats::Stats;

/// ServerState by every acceptor and every live connection of one server (one `Arc`).
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) limit: ConnectionLimit,
    pub(crate) registry: Registry,
    pub(crate) stats: Stats,
    pub(crate) drain: DrainState,
    /// Admission rules, when the server has any.
    pub(crate) gate: Option<Gate>,
    /// How long a connection's set-up (PROXY header, protocol sniffing, TLS, admission hook) may take,
    /// counted from `accept`.
    pub(crate) handshake_timeout: Duration,
    /// How long a handshake may go on before it gives way to queued clients when the cap is full.
    pub(crate) handshake_grace: Duration,
    /// Raised while an acceptor waits at the cap with clients queued.
    pub(crate) pressure: Pressure,
    /// Rate limit for the log lines of failed handshakes.
    pub(crate) handshake_log: LogLimit,
    /// Notified after connections were closed by force (by id, the idle sweep, a drain's deadline), so
    /// tasks that hold a connection without reading it (an `Outbox` writer waiting for messages) learn
    /// it at once. Server-wide, so a connection carries nothing for it.
    pub(crate) forced_closes: tokio::sync::Notify,
    /// Connection hand-over at a restart: the channel to the successor, and how to resume here.
    pub(crate) handover: crate::handover::HandOverState,
    /// Where idle connections sleep without a task (opened by the first, see `ServerState::lot`).
    #[cfg(feature = "http")]
    pub(crate) lot: std::sync::OnceLock<Option<crate::connection::asleep::Lot>>,
}

impl ServerState {
    /// The handshake's timeout and grace come from the builder, which owns their defaults.
    pub(crate) fn new(
        max_connections: usize,
        handshake_timeout: Duration,
        handshake_grace: Duration,
    ) -> Self {
        ServerState {
            limit: ConnectionLimit::new(max_connections),
            registry: Registry::default(),
            stats: Stats::default(),
            drain: DrainState::default(),
            gate: None,
            handshake_timeout,
            handshake_grace,
            pressure: Pressure::default(),
            handshake_log: LogLimit::default(),
            forced_closes: tokio::sync::Notify::new(),
            handover: Default::default(),
            #[cfg(feature = "http")]
            lot: Default::default(),
        }
    }
}
