//! The state one server's accept loops and connections share: the cap, the registry, the counters and
//! the drain's state.

use std::time::Duration;

use crate::accept::limit::ConnectionLimit;
use crate::admission::{Gate, LogLimit};
use crate::drain::Control;
use crate::handshake::pressure::Pressure;
use crate::server::registry::Registry;
use crate::server::stats::Stats;

/// Shared by every acceptor and every live connection of one server (one `Arc`).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) limit: ConnectionLimit,
    pub(crate) registry: Registry,
    pub(crate) stats: Stats,
    pub(crate) drain: Control,
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
}

impl Shared {
    pub(crate) fn new(max_connections: usize) -> Self {
        Shared {
            limit: ConnectionLimit::new(max_connections),
            registry: Registry::default(),
            stats: Stats::default(),
            drain: Control::default(),
            gate: None,
            handshake_timeout: crate::handshake::DEFAULT_HANDSHAKE_TIMEOUT,
            handshake_grace: crate::handshake::DEFAULT_HANDSHAKE_GRACE,
            pressure: Pressure::default(),
            handshake_log: LogLimit::default(),
            forced_closes: tokio::sync::Notify::new(),
            handover: Default::default(),
        }
    }
}
