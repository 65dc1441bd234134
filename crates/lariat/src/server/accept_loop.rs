//! One accept loop: accept, hand each connection to its task, until stopped, released, drained or failed;
//! and the drain's first stage, which runs in it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatch;
use super::state::ServerState;
use super::ServerError;
use crate::accept::fan_in::FanIn;
use crate::accept::Acceptor;
use crate::drain::DrainState;
use crate::handler::Handler;
use crate::net::source::AcceptSource;

pub(super) async fn accept_loop<S: AcceptSource, H: Handler>(
    mut acceptor: Acceptor<FanIn<S>>,
    spawner: Dispatch<H>,
    stop: CancellationToken,
    shared: Arc<ServerState>,
) -> Result<(), ServerError> {
    // However the loop ends (even cancelled), a drain waiting for the listeners to close must learn it
    // (once every loop has ended).
    let _closed = LoopEnded(shared.clone());
    let control = &shared.drain;
    // Created once: a fresh `cancelled()` per iteration would register a waiter under the token's mutex
    // for every accepted connection.
    let stopped = stop.cancelled();
    let draining = control.draining.cancelled();
    let released = control.release.cancelled();
    tokio::pin!(stopped, draining, released);
    loop {
        let conn = tokio::select! {
            biased;
            _ = &mut stopped => {
                tracing::debug!("accept loop stopped");
                return Ok(());
            }
            _ = &mut released => {
                // Another process accepts from the same sockets now: close our descriptors only.
                acceptor.source_mut().release();
                tracing::info!("accept loop ended: listeners handed over");
                return Ok(());
            }
            _ = &mut draining => {
                drain_queue(&mut acceptor, control, &stop, |conn, from| spawner.spawn(conn, from)).await;
                return Ok(());
            }
            conn = acceptor.accept() => match conn {
                Ok(conn) => conn,
                Err(last) => {
                    tracing::error!(listener = %last.addr, error = %last.source, "accept loop ended: no listener can accept any more");
                    let mut failures = acceptor.source_mut().take_failures();
                    failures.push(last);
                    return Err(ServerError { failures });
                }
            },
        };
        spawner.spawn(conn, acceptor.source().last_position());
    }
}

/// Counts an accept loop out when dropped; the last one tells the drain its listeners are closed.
struct LoopEnded(Arc<ServerState>);

impl Drop for LoopEnded {
    fn drop(&mut self) {
        let drain = &self.0.drain;
        if drain
            .accept_loops
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            <= 1
        {
            drain.listeners_closed.cancel();
        }
    }
}

/// How often stage one checks whether the queue has gone quiet.
const TICK: Duration = Duration::from_millis(10);

/// The drain's stage one (see [`drain`](crate::drain)), run by the accept loop once `control.draining` fires: refuse new clients, accept the queued
/// ones (each passed to `spawn`), close when the queue has been empty for the settle time, at the deadline,
/// or when forced or stopped.
pub(super) async fn drain_queue<S: AcceptSource>(
    acceptor: &mut Acceptor<FanIn<S>>,
    control: &DrainState,
    stop: &CancellationToken,
    mut spawn: impl FnMut(crate::Connection, usize),
) {
    let (deadline, settle) = control.plan();
    acceptor.source_mut().refuse_new();
    let mut quiet_since = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Created once, as in the accept loop: not a waiter and a timer per connection taken from the queue.
    let stopped = stop.cancelled();
    let forced = control.force.cancelled();
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(stopped, forced, deadline);
    let ended = loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break "stopped",
            _ = &mut forced => break "forced",
            _ = &mut deadline => break "deadline",
            accepted = acceptor.accept() => match accepted {
                Ok(conn) => {
                    control.accepted_one_from_queue();
                    quiet_since = Instant::now();
                    spawn(conn, acceptor.source().last_position());
                }
                Err(err) => {
                    tracing::warn!(listener = %err.addr, error = %err.source, "a listener failed while draining its queue");
                    break "failed";
                }
            },
            _ = tick.tick() => {
                // Waiting on the cap or on descriptors is not an empty queue; neither is a queue the OS
                // says is not empty.
                let now = Instant::now();
                if !acceptor.is_ready_to_accept() || acceptor.source().queued().unwrap_or(0) > 0 {
                    quiet_since = now;
                } else if now.duration_since(quiet_since) >= settle {
                    break "queue empty";
                }
            }
        }
    };
    let left = acceptor.source().queued().unwrap_or(0) as u64;
    control.set_left_in_queue(left);
    if left > 0 {
        tracing::warn!(
            left,
            why = ended,
            "closing the listeners with clients still queued: the kernel resets them"
        );
    } else {
        tracing::info!(
            accepted = control.accepted_from_queue(),
            why = ended,
            "listeners closed after draining their queues"
        );
    }
}
