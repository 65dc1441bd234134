//! [`ServerHandle`]: observes and steers a running server; the drain's second stage.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::registry::{CloseError, ConnectionInfo};
use super::state::ServerState;
use super::stats::{Stats, StatsSnapshot};
use crate::drain::{DrainOptions, DrainReport};

/// How long a forced close waits for the tasks holding the closed connections to drop them.
const FORCED_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Observes and steers a running server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<ServerState>,
    pub(super) stop: CancellationToken,
}

impl ServerHandle {
    /// The counters, now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Every live connection.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.registry.list()
    }

    /// Bytes read and written so far by the live connections (closed ones are in [`stats`](Self::stats)).
    /// One pass over the registry, for a scrape; allocates nothing.
    #[cfg(feature = "metrics")]
    pub(crate) fn live_bytes(&self) -> (u64, u64) {
        self.shared.registry.live_bytes()
    }

    /// Closes a live connection by id: its socket is shut down both ways, so the handler and any half
    /// it moved into a task of its own see the end at once (the peer reads EOF), and its task is
    /// aborted. It leaves the registry, and frees its slot, when the last holder drops it.
    pub fn close_connection(&self, id: u64) -> Result<(), CloseError> {
        self.shared.registry.close(id)
    }

    /// The connection cap.
    pub fn max_connections(&self) -> usize {
        self.shared.limit.max()
    }

    /// Changes the connection cap. Raising it admits clients waiting in the backlog at once; lowering it
    /// closes nothing and takes effect as connections end.
    pub fn set_max_connections(&self, max: usize) {
        self.shared.limit.set_max(max);
    }

    /// Stops accepting at once. The accept loop ends and drops its listeners; live connections are not
    /// touched. Clients already queued in the kernel are reset by the close: to lose none, use
    /// [`drain`](Self::drain).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Drains the server and reports what happened (see [`drain`](crate::drain)): handlers are told at
    /// once ([`Connection::draining`](crate::Connection::draining), [`DrainSignal`](crate::DrainSignal)), the listeners refuse new
    /// clients, the queued ones are accepted and served, the listeners close once their queues stay
    /// empty, and live connections get until `opts.timeout`; the rest are then closed (their sockets
    /// shut down, wherever their halves are) and counted. [`force`](Self::force) ends it at once.
    ///
    /// The accept loop must still be running (driven by [`Server`](super::Server) or by the caller of
    /// [`ServerBuilder::run`](super::ServerBuilder::run)): it does the first stage. Calling `drain` again joins the same drain.
    pub async fn drain(&self, opts: DrainOptions) -> DrainReport {
        let control = &self.shared.drain;
        let started = tokio::time::Instant::now();
        let in_flight = self.shared.stats.snapshot().active;
        let closed_before = self.shared.stats.snapshot().closed;
        let deadline = control.begin(opts);

        // Stage one ends when the accept loop has closed the listeners (it obeys the same deadline).
        tokio::select! {
            _ = control.listeners_closed.cancelled() => {}
            _ = control.force.cancelled() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // Stage two: wait for the live connections.
        self.until_no_connections(async {
            tokio::select! {
                _ = control.force.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        })
        .await;
        // Counted before the forced close, so the two never overlap.
        let finished = self.shared.stats.snapshot().closed - closed_before;
        let forced = self.close_all().await;
        let report = DrainReport {
            in_flight,
            accepted_from_queue: control.accepted_from_queue(),
            finished,
            forced,
            left_in_queue: control.left_in_queue(),
            elapsed: started.elapsed(),
        };
        if report.is_complete() {
            tracing::info!(
                finished = report.finished,
                accepted_from_queue = report.accepted_from_queue,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "drained"
            );
        } else {
            tracing::warn!(
                finished = report.finished,
                forced = report.forced,
                left_in_queue = report.left_in_queue,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "drain ended by force"
            );
        }
        report
    }

    /// Stops accepting and leaves the listening sockets to another process that shares them (the
    /// successor of a hitless restart, see [`restart`](crate::restart)): the accept loop ends and closes
    /// its descriptors without filtering the sockets or unlinking their paths, so the successor keeps
    /// every queued client. Follow with [`drain`](Self::drain) to let the live connections finish.
    pub fn release_listeners(&self) {
        self.shared.drain.release.cancel();
    }

    /// Ends a drain at once: the listeners close and every live connection is closed.
    pub fn force(&self) {
        self.shared.drain.force.cancel();
    }

    /// True once a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.drain.draining.is_cancelled()
    }

    /// Waits until no connection is live (woken by each close during a drain), or until `give_up`
    /// completes.
    async fn until_no_connections(&self, give_up: impl Future<Output = ()>) {
        let control = &self.shared.drain;
        tokio::pin!(give_up);
        loop {
            let closed = control.connection_closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so a close between the two is not missed.
            closed.as_mut().enable();
            // A predecessor still handing connections over may yet commit one here: wait for its
            // channel to end too (the channel winds down as the drain begins; see `handover`).
            let incoming = self.shared.handover.incoming_open();
            if self.shared.registry.is_empty() && incoming.is_none() {
                return;
            }
            let incoming_ended = async {
                match &incoming {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut closed => {}
                _ = incoming_ended => {}
                _ = &mut give_up => return,
            }
        }
    }

    /// Closes every live connection and waits (briefly) for their holders to drop them. Returns how
    /// many were cut off: the ones this call closed, plus any whose raw stream a task lariat does not
    /// own took out (it cannot close those; they stay open and the drain is not complete). A
    /// connection closed earlier (by id, or the idle sweep) was counted then and is not again.
    async fn close_all(&self) -> u64 {
        let mut closed = 0;
        let mut not_owned = 0;
        for info in self.shared.registry.list() {
            match self.shared.registry.close_once(info.id) {
                Ok(true) => closed += 1,
                Ok(false) => {}
                Err(CloseError::NotOwned(_)) => not_owned += 1,
                Err(CloseError::NotFound(_)) => {}
            }
        }
        if not_owned > 0 {
            tracing::warn!(
                not_owned,
                "drain deadline: connections served by tasks lariat does not own stay open"
            );
        }
        if closed > 0 {
            self.shared.forced_closes.notify_waiters();
            Stats::add(&self.shared.stats.drain_forced, closed);
            // Their sockets are shut down: every holder's next read or write fails, and aborted tasks
            // drop theirs when next polled. Give them a moment.
            self.until_no_connections(tokio::time::sleep(FORCED_CLOSE_GRACE))
                .await;
            let held = self.shared.registry.len();
            if held > 0 {
                tracing::warn!(
                    held,
                    "drain deadline: closed connections still held by tasks that do not drop them \
                     (their peers saw the close; their slots stay taken until they are dropped)"
                );
            }
        }
        closed + not_owned
    }

    /// True once [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}
