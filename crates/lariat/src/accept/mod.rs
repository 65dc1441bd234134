//! The acceptor: slot → `accept(2)` → classify → [`Connection`].
//!
//! [`Acceptor::accept`] is the whole of a correct accept loop's inner step:
//! 1. take a slot under the connection cap first, so the server never holds more than the cap (at the cap,
//!    clients wait in the kernel backlog);
//! 2. accept;
//! 3. on error, act by errno ([`classify`]): retry a per-connection error at once, back off from a shortage
//!    (waking early when one of our connections frees a descriptor, optionally shedding with a reserved
//!    descriptor), and end on a fatal error, never spinning.
//!
//! The [`Server`](crate::Server) runs it in a loop and spawns a task per connection; the axum adapter calls
//! it from `axum::serve`.

pub mod backoff;
pub mod classify;
mod shed;

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::accept::backoff::{Backoff, BackoffPolicy};
use crate::accept::classify::{classify, ErrorClass};
use crate::accept::shed::Reserve;
use crate::listener::{AcceptSource, ListenAddr};
use crate::shared::Shared;
use crate::stats::Stats;
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

/// Takes connections from one [`AcceptSource`] under the server's cap.
pub struct Acceptor<S> {
    source: S,
    addr: ListenAddr,
    shared: Arc<Shared>,
    /// A slot under the cap taken for the next connection. Kept across cancelled `accept` calls.
    holding_slot: bool,
    backoff: Backoff,
    reserve: Option<Reserve>,
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
        shared: Arc<Shared>,
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
        })
    }

    /// Where this acceptor listens.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// Waits for the next connection. Returns an error only when the listener can no longer accept.
    ///
    /// Cancel-safe: dropping the future loses no connection and keeps any slot already taken.
    pub async fn accept(&mut self) -> Result<Connection, AcceptError> {
        loop {
            if !self.holding_slot {
                self.shared.limit.acquire().await;
                self.holding_slot = true;
            }
            let result = poll_fn(|cx| {
                let poll = self.source.poll_accept(cx);
                if poll.is_pending() && self.backoff.in_episode() {
                    self.backoff.caught_up(&self.addr);
                }
                poll
            })
            .await;
            let err = match result {
                Ok((stream, peer)) => {
                    self.backoff.succeeded();
                    self.holding_slot = false;
                    return Ok(Connection::new(stream, peer, self.shared.clone()));
                }
                Err(err) => err,
            };
            match classify(&err) {
                ErrorClass::PerConnection => {
                    Stats::add(&self.shared.stats.connection_errors, 1);
                    tracing::debug!(listener = %self.addr, error = %err, "accept: connection failed before it was taken; next");
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
                    self.pause(Some(cause), &err).await;
                }
                ErrorClass::Unexpected => self.pause(None, &err).await,
            }
        }
    }

    /// Sleeps for the backoff delay, or less if one of our connections closes meanwhile.
    async fn pause(&mut self, cause: Option<classify::Shortage>, err: &io::Error) {
        let delay = self
            .backoff
            .failed(cause, err, &self.addr, &self.shared.stats);
        let released = self.shared.limit.released();
        tokio::pin!(released);
        released.as_mut().enable();
        let started = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = released => {}
        }
        Stats::add(
            &self.shared.stats.paused_nanos,
            started.elapsed().as_nanos() as u64,
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
