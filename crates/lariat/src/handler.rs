//! What serves a connection: any `async fn(Connection)`.

use std::error::Error;
use std::future::Future;

use crate::Connection;

/// A boxed error a handler may return.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Serves one connection. Implemented for every `Fn(Connection) -> impl Future` that is `Send + Sync`,
/// so an `async fn handle(conn: Connection)` or a closure is a handler.
///
/// `call` runs on the accept loop and should only build the future; the future runs in the connection's own
/// task, so a slow handler never holds up accepting.
///
/// The future must be `Send` (it runs on any of the runtime's threads): a handler that holds an `Rc`, a
/// `RefCell` borrow or a `std::sync::MutexGuard` across an `.await` is not a handler. The compiler's
/// note then names the handler rather than only `serve`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a lariat connection handler",
    label = "not a handler: expected an `Fn(Connection) -> impl Future + Send` that is `Send + Sync + 'static`",
    note = "a handler is any `Fn(Connection) -> Fut` (`Send + Sync + 'static`) whose future is `Send + 'static` and returns `()` or `Result<(), E>`",
    note = "if this is an `async fn` or closure, check that its future is `Send`: nothing that is not `Send` (an `Rc`, a `RefCell` borrow, a `std::sync::MutexGuard`) may be held across an `.await`"
)]
pub trait Handler: Send + Sync + 'static {
    /// What the handler's future returns: `()` or `Result<(), E>`.
    type Outcome: Outcome;
    /// The future serving one connection.
    type Future: Future<Output = Self::Outcome> + Send + 'static;

    /// Builds the future that serves `conn`.
    fn call(&self, conn: Connection) -> Self::Future;
}

impl<F, Fut> Handler for F
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    type Outcome = Fut::Output;
    type Future = Fut;

    fn call(&self, conn: Connection) -> Fut {
        self(conn)
    }
}

/// How a handler reports failure. A failure is logged at debug (the peer's misbehaviour is not the
/// operator's problem) and counted in `handler_errors`.
#[diagnostic::on_unimplemented(
    message = "a lariat handler's future must return `()` or `Result<(), E>`, not `{Self}`",
    label = "the handler's future returns `{Self}`"
)]
pub trait Outcome: Send + 'static {
    /// The error, if the handler failed.
    fn failure(self) -> Option<BoxError>;
}

impl Outcome for () {
    fn failure(self) -> Option<BoxError> {
        None
    }
}

impl<E> Outcome for Result<(), E>
where
    E: Into<BoxError> + Send + 'static,
{
    fn failure(self) -> Option<BoxError> {
        self.err().map(Into::into)
    }
}
