//! The acceptor: slot → `accept(2)` → classify → [`Connection`].
//!
//! [`Acceptor::accept`] is the whole of a correct accept loop's inner step:
//! 1. take a slot under the connection cap first, so the server never holds more than the cap (at the cap,
//!    clients wait in the kernel backlog);
//! 2. accept;
//! 3. on error, act by errno ([`classify()`]): retry a per-connection error at once, back off from a shortage
//!    (waking early when one of our connections frees a descriptor, optionally shedding with a reserved
//!    descriptor), and end on a fatal error, never spinning.
//!
//! The [`Server`](crate::Server) runs it in a loop and spawns a task per connection; the axum adapter calls
//! it from `axum::serve`.

pub(crate) mod backoff;
pub(crate) mod classify;
pub(crate) mod fan_in;
pub(crate) mod limit;
mod shed;

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::accept::backoff::{Backoff, BackoffPolicy};
use crate::accept::classify::{classify, ErrorClass};
use crate::accept::shed::Reserve;
use crate::net::listener::ListenAddr;
use crate::net::source::AcceptSource;
use crate::server::state::ServerState;
use crate::server::stats::Stats;
use crate::Connection;

/// What to do with clients queued in the kernel while the process is out of descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExhaustion {
    /// Leave them queued; they are served as soon as a descriptor frees (the acceptor wakes the moment one
    /// of its connections closes). Nothing is lost, and the kernel backlog bounds the wait. The default,
    /// because lariat's promise is not to lose connections.
    #[default]
    Wait,
    /// Accept and close them at once with a reserved descriptor, so they fail fast and can go elsewhere.
    /// Counted in `shed`.
    Shed,
}

/// The accept loop ended because the listening socket is unusable.
#[derive(Debug, thiserror::Error)]
#[error("accept on {addr} failed for good: {source}")]
pub struct AcceptError {
    /// The listener.
    pub addr: ListenAddr,
    /// The OS error (EBADF, EINVAL, ENOTSOCK, …).
    #[source]
    pub source: io::Error,
}

/// How often an acceptor waiting at the cap looks at the listen queue (one `TCP_INFO` call).
const PRESSURE_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// After this many per-connection errors in a row, with no success and no empty backlog, the errno is
/// not about a connection after all (an LSM hook refusing every accept, `EOPNOTSUPP` on an inherited
/// socket of the wrong type): back off instead of retrying at once.
const MAX_CONSECUTIVE_CONNECTION_ERRORS: u32 = 256;

/// Takes connections from one [`AcceptSource`] under the server's cap.
///
/// [`accept`](Self::accept) is the whole of a correct accept loop's inner step:
/// 1. take a slot under the connection cap first, so the server never holds more than the cap (at the
///    cap, clients wait in the kernel backlog);
/// 2. accept;
/// 3. on error, act by errno ([`classify()`](crate::classify)): retry a per-connection error at once,
///    back off from a shortage (waking early when one of our connections frees a descriptor,
///    optionally shedding with a reserved descriptor), and end on a fatal error, never spinning.
///
/// The [`Server`](crate::Server) runs it in a loop and spawns a task per connection; the axum adapter
/// calls it from `axum::serve`; [`ServerBuilder::acceptor`](crate::ServerBuilder::acceptor) hands one
/// out for a loop of your own.
pub struct Acceptor<S> {
    source: S,
    addr: ListenAddr,
    shared: Arc<ServerState>,
    /// A slot under the cap taken for the next connection. Kept across cancelled `accept` calls.
    holding_slot: bool,
    backoff: Backoff,
    reserve: Option<Reserve>,
    /// A backoff pause in progress: when it ends, since when it runs, and the release count at the failed
    /// accept (a release after that point frees a descriptor and ends the pause early). Kept across
    /// cancelled `accept` calls, so a caller's `select!` cannot shorten the backoff.
    pause: Option<Pause>,
    /// Per-connection errors since the last success or empty backlog.
    connection_errors_in_a_row: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pause {
    until: Instant,
    since: Instant,
    releases: u64,
}

impl<S> std::fmt::Debug for Acceptor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("addr", &self.addr)
            .field("holding_slot", &self.holding_slot)
            .finish_non_exhaustive()
    }
}

impl<S: AcceptSource> Acceptor<S> {
    pub(crate) fn new(
        source: S,
        shared: Arc<ServerState>,
        policy: BackoffPolicy,
        on_exhaustion: OnExhaustion,
    ) -> io::Result<Self> {
        let addr = source.local_addr()?;
        Ok(Acceptor {
            source,
            addr,
            shared,
            holding_slot: false,
            backoff: Backoff::new(policy),
            reserve: (on_exhaustion == OnExhaustion::Shed).then(Reserve::new),
            pause: None,
            connection_errors_in_a_row: 0,
        })
    }

    /// Where this acceptor listens (the first listener, for a server with several).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    pub(crate) fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    pub(crate) fn source(&self) -> &S {
        &self.source
    }

    /// True when the next `accept` would go straight to the listener: a slot is held and no backoff pause
    /// runs. A drain uses it to tell an empty queue from a wait on the cap or on descriptors.
    pub(crate) fn is_ready_to_accept(&self) -> bool {
        self.holding_slot && self.pause.is_none()
    }

    /// Waits for a slot at the cap and takes it. While it waits with clients in the listen queue, the
    /// connections still in their handshake are asked to make room (see `pressure.rs`). Cancel-safe.
    async fn wait_at_the_cap(&mut self) {
        let shared = &self.shared;
        let acquire = shared.limit.acquire();
        tokio::pin!(acquire);
        let mut raised = None;
        // The first tick is at once: a queue already waiting raises the pressure without delay. Later
        // ticks lower it again once the queue is empty (another accept loop, or another process on the
        // same socket, took the clients).
        let mut check = tokio::time::interval(PRESSURE_CHECK);
        loop {
            tokio::select! {
                biased;
                _ = &mut acquire => return,
                _ = check.tick() => {
                    let queued = self.source.queued().is_some_and(|queued| queued > 0);
                    if queued && raised.is_none() {
                        raised = Some(shared.pressure.raise());
                    } else if !queued {
                        raised = None;
                    }
                }
            }
        }
    }

    /// Waits for the next connection. Returns an error only when the listener can no longer accept.
    ///
    /// Cancel-safe: dropping the future loses no connection, keeps any slot already taken, and keeps a
    /// backoff pause in progress.
    pub async fn accept(&mut self) -> Result<Connection, AcceptError> {
        loop {
            if self.pause.is_some() {
                self.wait_out_pause().await;
            }
            if !self.holding_slot {
                if !self.shared.limit.try_acquire() {
                    self.wait_at_the_cap().await;
                }
                self.holding_slot = true;
            }
            let limit = &self.shared.limit;
            if limit.held() > limit.max() {
                // The cap was lowered while this slot waited for a connection: give it back and queue.
                limit.release();
                self.holding_slot = false;
                continue;
            }
            let releases = limit.releases();
            let result = poll_fn(|cx| {
                let poll = self.source.poll_accept(cx);
                // Pending from an exhausted coop budget says nothing about the backlog.
                if poll.is_pending() && tokio::task::coop::has_budget_remaining() {
                    self.connection_errors_in_a_row = 0;
                    if self.backoff.in_episode() {
                        self.backoff.caught_up(&self.addr);
                    }
                }
                poll
            })
            .await;
            let err = match result {
                Ok((stream, peer)) => {
                    self.connection_errors_in_a_row = 0;
                    self.backoff.succeeded();
                    self.holding_slot = false;
                    return Ok(Connection::new(stream, peer, self.shared.clone()));
                }
                Err(err) => err,
            };
            match classify(&err) {
                ErrorClass::PerConnection
                    if self.connection_errors_in_a_row < MAX_CONSECUTIVE_CONNECTION_ERRORS =>
                {
                    self.connection_errors_in_a_row += 1;
                    Stats::add(&self.shared.stats.connection_errors, 1);
                    tracing::debug!(listener = %self.addr, error = %err, "accept: connection failed before it was taken; next");
                    // Retry at once, but yield to the runtime when this task has had its share.
                    tokio::task::coop::consume_budget().await;
                }
                ErrorClass::PerConnection => {
                    self.connection_errors_in_a_row = 0;
                    Stats::add(&self.shared.stats.connection_errors, 1);
                    self.start_pause(None, &err, releases);
                }
                ErrorClass::Fatal => {
                    return Err(AcceptError {
                        addr: self.addr.clone(),
                        source: err,
                    })
                }
                ErrorClass::Shortage(cause) => {
                    if let (true, Some(reserve)) = (cause.is_fds(), self.reserve.as_mut()) {
                        reserve.shed(&mut self.source, &self.shared.stats);
                    }
                    self.start_pause(Some(cause), &err, releases);
                }
                ErrorClass::Unexpected => self.start_pause(None, &err, releases),
            }
        }
    }

    fn start_pause(&mut self, cause: Option<classify::Shortage>, err: &io::Error, releases: u64) {
        let delay = self
            .backoff
            .failed(cause, err, &self.addr, &self.shared.stats);
        let now = Instant::now();
        self.pause = Some(Pause {
            until: now + delay,
            since: now,
            releases,
        });
    }

    /// Sleeps until the pause ends, or less if one of our connections closed since the failed accept.
    async fn wait_out_pause(&mut self) {
        let Some(pause) = self.pause else { return };
        let limit = &self.shared.limit;
        let released = limit.released();
        tokio::pin!(released);
        released.as_mut().enable();
        // A connection that closed between the failed accept and now has already freed a descriptor.
        if limit.releases() == pause.releases {
            tokio::select! {
                _ = tokio::time::sleep_until(pause.until.into()) => {}
                _ = released => {}
            }
        }
        self.pause = None;
        Stats::add(
            &self.shared.stats.paused_nanos,
            pause.since.elapsed().as_nanos() as u64,
        );
    }
}

impl<S> Drop for Acceptor<S> {
    fn drop(&mut self) {
        if self.holding_slot {
            self.shared.limit.release();
        }
    }
}
