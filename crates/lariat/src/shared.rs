//! The state one server's accept loops and connections share: the cap, the registry, the counters and
//! the drain's state.

use crate::admission::Gate;
use crate::drain::Control;
use crate::limit::ConnectionLimit;
use crate::registry::Registry;
use crate::stats::Stats;

/// Shared by every acceptor and every live connection of one server (one `Arc`).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) limit: ConnectionLimit,
    pub(crate) registry: Registry,
    pub(crate) stats: Stats,
    pub(crate) drain: Control,
    /// Admission rules, when the server has any.
    pub(crate) gate: Option<Gate>,
}

impl Shared {
    pub(crate) fn new(max_connections: usize) -> Self {
        Shared {
            limit: ConnectionLimit::new(max_connections),
            registry: Registry::default(),
            stats: Stats::default(),
            drain: Control::default(),
            gate: None,
        }
    }
}
