//! Whether the process takes traffic, as a health endpoint (`/readyz`) reports it to load balancers.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

/// Where a serving process is in its life. It only moves forward: serving → lame duck → stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Taking traffic.
    Serving,
    /// Still accepting and serving, but telling load balancers to stop sending: they see it before the
    /// drain stops admitting, so no client is sent to a socket that refuses it.
    LameDuck,
    /// Draining, or handed over to a successor: taking no new traffic.
    Stopping,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Serving,
            1 => State::LameDuck,
            _ => State::Stopping,
        }
    }
}

/// A shared, cloneable view of the process's [`State`]: the [`Lifecycle`](super::Lifecycle) moves it,
/// a health endpoint reads it (an atomic load, no lock). Starts at [`State::Serving`].
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// A fresh one, serving.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.0.load(Relaxed))
    }

    /// Whether a load balancer should send traffic: only while [`State::Serving`].
    pub fn is_ready(&self) -> bool {
        self.state() == State::Serving
    }

    /// Moves to `state`, never back: a later call with an earlier state changes nothing (a lame duck
    /// that ends after a drain began leaves it stopping). The lifecycle calls this; a program with a
    /// loop of its own (a process supervisor) calls it too.
    pub fn set(&self, state: State) {
        self.0.fetch_max(state as u8, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_only_and_is_shared_by_clones() {
        let readiness = Readiness::new();
        assert_eq!(readiness.state(), State::Serving);
        assert!(readiness.is_ready());
        readiness.clone().set(State::LameDuck);
        assert_eq!(readiness.state(), State::LameDuck);
        assert!(!readiness.is_ready());
        readiness.set(State::Stopping);
        readiness.set(State::LameDuck);
        assert_eq!(readiness.state(), State::Stopping);
    }
}
