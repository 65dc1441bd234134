//! Closing connections that stay silent too long (slowloris, half-open peers that never send a FIN),
//! without a timer per connection.
//!
//! A per-connection `tokio::time::timeout` would add a timer entry (about 100 bytes) to every idle
//! connection's task and a timer reset to every read. Instead one task per server sweeps the registry
//! once per [`sweep interval`](sweep_interval): a connection whose byte counters (in + out) have not moved
//! since the last sweep that saw them move is idle since then; past the timeout its socket is shut down
//! and its task aborted, which closes it wherever its halves are. The cost on the I/O path is nil; the
//! precision is one sweep interval.

use std::sync::Weak;
use std::time::Duration;

use crate::server::state::ServerState;
use crate::server::stats::Stats;

/// How often the registry is swept for a given timeout: a tenth of it, between 100 ms and 1 s.
pub(crate) fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Sweeps until the server is gone. Runs as its own task.
pub(crate) async fn reap(shared: Weak<ServerState>, timeout: Duration) {
    let mut tick = tokio::time::interval(sweep_interval(timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most what the sweep's record holds (see `MAX_IDLE_TIMEOUT`); a huge timeout must not wrap
    // around to a short one.
    let timeout_ms = timeout.min(crate::MAX_IDLE_TIMEOUT).as_millis() as u64;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.drain.listeners_closed.is_cancelled() && shared.registry.is_empty() {
            return;
        }
        let now = shared.registry.now_ms();
        let mut closed = 0;
        for id in shared.registry.idle_longer_than(now, timeout_ms) {
            // Counted once: a connection already closed (its holders have yet to drop it) is not again.
            if let Ok(true) = shared.registry.close_once(id) {
                closed += 1;
            }
        }
        if closed > 0 {
            shared.forced_closes.notify_waiters();
            Stats::add(&shared.stats.idle_closed, closed);
            tracing::debug!(closed, timeout_ms, "closed idle connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_is_a_tenth_of_the_timeout_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(5)),
            Duration::from_millis(500)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }
}
