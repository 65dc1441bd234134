//! Each connection's task: admission on the socket's peer, the listener's handshake if it has one, then
//! the handler, with panics caught and counted.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::registry::Entry;
use super::stats::Stats;
use crate::handler::{Handler, Outcome};
use crate::handshake::Handshake;
use crate::Connection;

/// Starts each connection's task: the handler, after the listener's set-up steps if it has any.
pub(super) struct Dispatch<H> {
    pub(super) handler: Arc<H>,
    /// By listener position.
    pub(super) handshakes: Vec<Option<Arc<Handshake>>>,
}

impl<H: Handler> Dispatch<H> {
    /// `from`: the position of the listener that accepted `conn`.
    pub(super) fn spawn(&self, conn: Connection, from: usize) {
        let handshake = self.handshakes.get(from).and_then(Option::as_ref);
        // Behind a PROXY header the socket's peer is the balancer: the handshake judges the client the
        // header names instead. Elsewhere the peer is judged here, before a task exists.
        let refused = crate::admission::judge_socket(conn.entry(), conn.stream()).is_err()
            || (handshake.is_none_or(|f| f.proxy.is_none()) && conn.admit().is_err());
        if refused {
            // Dropping it closes the socket and frees its slot.
            return;
        }
        match handshake {
            None => spawn_connection(conn, &*self.handler),
            Some(handshake) => spawn_after_handshake(conn, self.handler.clone(), handshake.clone()),
        }
    }
}

/// Like [`spawn_connection`], with the set-up steps (PROXY header, TLS, admission hook, greeting) first,
/// in the task: a slow or hostile client holds up only itself. A failed set-up closes the connection
/// (counted by cause); the handler never runs.
fn spawn_after_handshake<H: Handler>(conn: Connection, handler: Arc<H>, handshake: Arc<Handshake>) {
    let entry = conn.entry().clone();
    spawn_caught(&entry, async move {
        let conn = handshake.open(conn).await?;
        Some(handler.call(conn).await)
    });
}

/// Spawns a connection's task: `serve` ends with the handler's outcome (`None`: the handler never
/// ran), counted by [`account`] with a panic caught, so it harms no other connection. The task is
/// recorded in the entry, for a forced close to abort.
fn spawn_caught<O: Outcome>(
    entry: &Arc<Entry>,
    serve: impl Future<Output = Option<O>> + Send + 'static,
) {
    spawn_task(entry, serve, std::convert::identity);
}

/// [`spawn_caught`] for a future whose output `outcome` turns into the handler's outcome.
fn spawn_task<F, O, M>(entry: &Arc<Entry>, serve: F, outcome: M)
where
    F: Future + Send + 'static,
    O: Outcome,
    M: Fn(F::Output) -> Option<O> + Send + 'static,
{
    let task = tokio::spawn(Caught {
        serve,
        entry: entry.clone(),
        outcome,
    });
    // If the task already finished, the entry is gone from the registry and this is harmless.
    entry.set_task(task.abort_handle());
}

pin_project_lite::pin_project! {
    /// A connection's task: the handler's future, each poll under `catch_unwind`, and its outcome
    /// counted when it ends. One future written out rather than combinators (`catch_unwind`, `map`):
    /// it is polled at every wake-up of every connection, and each combinator added a level of
    /// polls; the task of an idle connection keeps only the handler's future and one pointer (the
    /// entry).
    struct Caught<F, M> {
        #[pin]
        serve: F,
        entry: Arc<Entry>,
        // A function item (no bytes): the handler's output as its outcome.
        outcome: M,
    }
}

impl<F, O, M> Future for Caught<F, M>
where
    F: Future,
    O: Outcome,
    M: Fn(F::Output) -> Option<O>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let serve = this.serve;
        match std::panic::catch_unwind(AssertUnwindSafe(|| serve.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                if let Some(outcome) = (this.outcome)(output) {
                    account(this.entry, Ok(outcome));
                }
                Poll::Ready(())
            }
            Err(panic) => {
                account::<O>(this.entry, Err(panic));
                Poll::Ready(())
            }
        }
    }
}

/// Counts and logs how a handler ended.
fn account<O: Outcome>(entry: &Entry, result: std::thread::Result<O>) {
    match result {
        Ok(outcome) => {
            if let Some(err) = outcome.failure() {
                Stats::add(&entry.shared.stats.handler_errors, 1);
                tracing::debug!(conn = entry.id, error = %err, "handler returned an error");
            }
        }
        Err(panic) => {
            Stats::add(&entry.shared.stats.handler_panics, 1);
            tracing::error!(
                conn = entry.id,
                panic = panic_message(&*panic),
                "handler panicked; its connection is closed, the others are unaffected"
            );
        }
    }
}

/// Runs the handler in a task of its own (see [`spawn_caught`]).
pub(super) fn spawn_connection<H: Handler>(conn: Connection, handler: &H) {
    let entry = conn.entry().clone();
    // `call` runs here, on the accept loop: a panic in it must not end the loop either.
    let serve = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(conn))) {
        Ok(serve) => serve,
        Err(panic) => {
            Stats::add(&entry.shared.stats.handler_panics, 1);
            tracing::error!(
                conn = entry.id,
                panic = panic_message(&*panic),
                "handler panicked before its future started; its connection is closed"
            );
            return;
        }
    };
    spawn_task(&entry, serve, Some);
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
