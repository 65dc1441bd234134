//! Making room for queued clients. When every slot under the cap is taken and clients wait in a
//! listener's queue, the connections still in their handshake (PROXY header, protocol sniffing, TLS)
//! that have had their grace period are closed, so a crowd of silent clients (slowloris) cannot keep the
//! queue waiting for a whole handshake timeout per cap's worth of them. Connections that reached their
//! handler are never touched.
//!
//! The acceptor raises the pressure while it waits at the cap and the queue is not empty (the queue
//! length comes from `TCP_INFO` on Linux TCP, and a Unix listener polls readable while clients wait;
//! elsewhere the pressure is never raised and the handshake timeout alone applies).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Whether some acceptor waits at the cap with clients queued.
#[derive(Debug, Default)]
pub(crate) struct Pressure {
    /// Acceptors waiting at the cap with a queue (with several accept loops, more than one).
    raised_by: AtomicUsize,
    raised: Notify,
}

/// Lowers the pressure again when dropped (the acceptor got a slot, or stopped waiting).
#[derive(Debug)]
pub(crate) struct Raised<'a>(&'a Pressure);

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.raised_by.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pressure {
    /// Raises the pressure until the guard is dropped, and wakes every connection in its handshake.
    pub(crate) fn raise(&self) -> Raised<'_> {
        self.raised_by.fetch_add(1, Ordering::SeqCst);
        self.raised.notify_waiters();
        Raised(self)
    }

    fn is_on(&self) -> bool {
        self.raised_by.load(Ordering::SeqCst) > 0
    }

    /// Completes when the pressure is on at or after `grace_ends`: the handshake in progress should
    /// give way.
    pub(crate) async fn gives_way(&self, grace_ends: Instant) {
        loop {
            let raised = self.raised.notified();
            tokio::pin!(raised);
            // Registered before the check, so a raise in between is not missed.
            raised.as_mut().enable();
            if self.is_on() {
                tokio::time::sleep_until(grace_ends).await;
                if self.is_on() {
                    return;
                }
                continue;
            }
            raised.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_handshake_gives_way_only_under_pressure_and_after_its_grace() {
        let pressure = Pressure::default();
        let grace_ends = Instant::now() + Duration::from_millis(100);
        let gives_way = pressure.gives_way(grace_ends);
        tokio::pin!(gives_way);
        // No pressure: it waits on.
        assert!(tokio::time::timeout(Duration::from_secs(5), &mut gives_way)
            .await
            .is_err());
        // Raised: past its grace, it gives way at once.
        let raised = pressure.raise();
        tokio::time::timeout(Duration::from_millis(1), &mut gives_way)
            .await
            .expect("gave way");
        drop(raised);
        // Raised, then lowered before the grace ended: a young handshake goes on.
        let young = pressure.gives_way(Instant::now() + Duration::from_millis(100));
        tokio::pin!(young);
        let raised = pressure.raise();
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut young)
            .await
            .is_err());
        drop(raised);
        assert!(tokio::time::timeout(Duration::from_secs(5), &mut young)
            .await
            .is_err());
    }
}
