//! Two-stage drain: stop taking new clients without losing the ones already queued, then let the live
//! connections finish, up to a deadline.
//!
//! Stage one runs in the accept loop (`drain_queue`): each listener refuses new clients while keeping its
//! queue ([`AcceptSource::refuse_new`](crate::AcceptSource::refuse_new): a SYN-dropping filter on Linux TCP, unlinking the path for Unix
//! sockets), the loop keeps accepting — under the cap, waiting for slots as connections end — until the
//! queue has stayed empty for a settle time, and only then closes the listeners. Closing first, as most
//! servers do, resets every client the kernel had already accepted.
//!
//! Handlers are told as the drain begins, when stage one starts (not after it), so they have the whole deadline to end
//! their conversations: each can await [`Connection::draining`](crate::Connection::draining), or a
//! [`DrainSignal`] kept past a split, to say goodbye in its protocol.
//!
//! Stage two runs in [`ServerHandle::drain`](crate::ServerHandle::drain): the live connections get until
//! the deadline, and what is left is then closed — each socket shut down both ways, so a connection
//! whose halves live in tasks of their own is closed too — and counted once.
//!
//! What each platform guarantees:
//! - Linux, TCP: no client that completed a handshake is reset. Clients whose SYN arrives after the drain
//!   began are not answered; their kernel retries and then sees a refusal once the listener is closed.
//! - Unix path sockets: new `connect`s fail with `ENOENT` once the path is unlinked; queued ones are served.
//! - Abstract Unix sockets and TCP elsewhere: nothing can stop new clients from queueing while the
//!   listener is open, so a client that connects in the last instant before the close can be reset.
//! - Sockets inherited from a supervisor that keeps its own descriptor (systemd socket activation): the
//!   listener is left untouched; closing ours loses nothing because the supervisor's keeps the queue.

mod signal;
pub(crate) mod syn_filter;

pub use signal::DrainSignal;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The default time live connections get to finish after a drain begins.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default time the accept queue must stay empty before the listeners close.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(200);

/// How a drain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOptions {
    /// From the start of the drain to the forced close of whatever is still open. Default 30 s.
    pub timeout: Duration,
    /// How long the accept queue must stay empty before the listeners close. A handshake whose SYN came
    /// just before the drain completes one round trip later; this covers it. Default 200 ms; set it
    /// above the clients' round-trip time.
    pub settle: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            timeout: DEFAULT_DRAIN_TIMEOUT,
            settle: DEFAULT_SETTLE,
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections live when the drain began.
    pub in_flight: u64,
    /// Connections accepted from the listeners' queues after the drain began.
    pub accepted_from_queue: u64,
    /// Connections that ended on their own before the deadline.
    pub finished: u64,
    /// Connections still open at the deadline (or at [`ServerHandle::force`](crate::ServerHandle::force)),
    /// closed by lariat.
    pub forced: u64,
    /// Clients still in a listener's queue when it was closed (the kernel resets them), where the OS
    /// reports it (Linux TCP; a Unix socket reports only whether any were: 1 for "some"). Non-zero only
    /// after a forced end.
    pub left_in_queue: u64,
    /// From the start of the drain to its end.
    pub elapsed: Duration,
}

impl DrainReport {
    /// True when nothing was cut off: every connection finished and no queued client was left.
    pub fn is_complete(&self) -> bool {
        self.forced == 0 && self.left_in_queue == 0
    }
}

/// The drain's shared state: one per server, in `ServerState`.
#[derive(Debug, Default)]
pub(crate) struct DrainState {
    /// Cancelled when a drain begins; handlers await it.
    pub(crate) draining: CancellationToken,
    /// Cancelled to end the drain at once.
    pub(crate) force: CancellationToken,
    /// Cancelled to end the accept loop leaving the listeners to a successor that shares them.
    pub(crate) release: CancellationToken,
    /// Cancelled when the accept loops have all ended and dropped their listeners.
    pub(crate) listeners_closed: CancellationToken,
    /// Accept loops still running (`ServerBuilder::acceptors`); the last one to end cancels
    /// `listeners_closed`.
    pub(crate) accept_loops: std::sync::atomic::AtomicUsize,
    /// Notified, while draining, each time a connection ends.
    pub(crate) connection_closed: Notify,
    /// The drain's deadline and settle time, set once when it begins.
    plan: OnceLock<Plan>,
    accepted_from_queue: AtomicU64,
    left_in_queue: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    deadline: Instant,
    settle: Duration,
}

impl DrainState {
    /// Begins a drain (once; later calls keep the first plan). Returns the deadline.
    pub(crate) fn begin(&self, opts: DrainOptions) -> Instant {
        let plan = self.plan.get_or_init(|| Plan {
            deadline: crate::deadline::after(Instant::now(), opts.timeout),
            settle: opts.settle,
        });
        self.draining.cancel();
        plan.deadline
    }

    pub(crate) fn accepted_from_queue(&self) -> u64 {
        self.accepted_from_queue.load(Relaxed)
    }

    pub(crate) fn left_in_queue(&self) -> u64 {
        self.left_in_queue.load(Relaxed)
    }

    /// The drain's deadline and settle time, once begun (the defaults otherwise).
    pub(crate) fn plan(&self) -> (Instant, Duration) {
        match self.plan.get() {
            Some(plan) => (plan.deadline, plan.settle),
            None => {
                let opts = DrainOptions::default();
                (Instant::now() + opts.timeout, opts.settle)
            }
        }
    }

    /// Counts a client accepted from the queue after the drain began.
    pub(crate) fn accepted_one_from_queue(&self) {
        self.accepted_from_queue.fetch_add(1, Relaxed);
    }

    /// Records how many clients were still queued when the listeners closed.
    pub(crate) fn set_left_in_queue(&self, left: u64) {
        self.left_in_queue.store(left, Relaxed);
    }
}
