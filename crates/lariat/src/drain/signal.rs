//! [`DrainSignal`]: "the server is draining", as a value a handler can keep after splitting its
//! connection and hand to any task of its own.

use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// Fires when the server begins to drain ([`ServerHandle::drain`](crate::ServerHandle::drain)).
///
/// [`Connection::draining`](crate::Connection::draining) borrows the connection, so it is gone once the
/// connection is split or turned into [`Messages`](crate::delivery::Messages). This is the same signal
/// as an owned, cloneable value (one reference count), from
/// [`ConnectionMeta::drain_signal`](crate::ConnectionMeta::drain_signal): a write task, a broadcast
/// relay or a message loop can each hold one and say goodbye in their protocol. Handlers are told when
/// the drain begins, so they have the whole drain timeout to finish.
#[derive(Debug, Clone)]
pub struct DrainSignal(CancellationToken);

impl DrainSignal {
    pub(crate) fn new(token: CancellationToken) -> DrainSignal {
        DrainSignal(token)
    }

    /// True once the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when the drain begins (at once if it has). Cancel-safe: use it in `select!`
    /// alongside reads, in a loop.
    pub fn wait(&self) -> WaitForCancellationFuture<'_> {
        self.0.cancelled()
    }

    /// Like [`wait`](Self::wait), as a future that owns the signal (`'static`, to move into a task).
    pub fn wait_owned(self) -> WaitForCancellationFutureOwned {
        self.0.cancelled_owned()
    }
}
