//! A server's life as a process, run until signalled: what `lariat serve` does, in a few lines.
//!
//! A process that serves behind a load balancer and under an init system has to stop and restart
//! without losing a client. [`Lifecycle::run`] does it, on Unix signals (`tokio::signal::unix`; the
//! instructions between processes ride on real-time signals on Linux):
//!
//! | signal | what happens |
//! |---|---|
//! | SIGTERM, SIGINT | lame duck (if set): [`Readiness`] turns unready while the server still accepts and serves, so a load balancer stops sending first; then the two-stage drain (the queued clients are served, no new ones admitted, the live connections get until the deadline). A second signal skips the lame duck or closes every connection. |
//! | SIGHUP | with [`restart`](Lifecycle::restart): start a successor with the listening sockets, wait for its `READY=1`, hand the sockets over and drain; a successor that exits or is not ready in time is stopped and this process goes on serving (rollback). |
//! | SIGUSR1 | the [`on_reload`](Lifecycle::on_reload) hook (a certificate, a configuration). |
//! | SIGUSR2 | ignored (its default action would kill the process). |
//!
//! A drain this process began without the operator's signal (after a hand-over, or told by the process
//! that started it) takes the first SIGTERM as a reminder (`systemctl stop` reaches every process of
//! the unit); only a second one forces. The result is an [`Exit`]: 0 when every connection ended on its
//! own, 3 when the drain had to close some.
//!
//! ```no_run
//! use std::time::Duration;
//! use lariat::lifecycle::Lifecycle;
//!
//! # async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
//! let listener = lariat::Listener::bind(&"127.0.0.1:8080".parse()?)?;
//! let (running, accept_loop) = lariat::Server::builder()
//!     .run([listener], |conn: lariat::Connection| async move { drop(conn) })?;
//! let exit = Lifecycle::new(running.handle, accept_loop)
//!     .lame_duck(Duration::from_secs(5))
//!     .drain_timeout(Duration::from_secs(30))
//!     .run()
//!     .await?;
//! Ok(exit.into()) // 0, or 3 if the drain had to close connections
//! # }
//! ```
//!
//! A `--workers`-style supervisor runs each worker with [`Signals::worker`]: the worker ignores the
//! group's signals and obeys its supervisor's [`Instruction`]s.

mod exit;
mod readiness;
mod restart_plan;
mod serving;
mod signals;
mod stopping;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use exit::Exit;
pub use readiness::{Readiness, State};
pub use signals::{Instruction, Order, SignalError, Signals};

use crate::activation;
use crate::restart::{PassOn, RestartError, RestartOptions};
use crate::{DrainOptions, Server, ServerError, ServerHandle};
use restart_plan::RestartPlan;

#[cfg(feature = "metrics")]
use crate::metrics::{record_restart, RestartEvent};

/// Without the `metrics` feature, restart events are not counted.
#[cfg(not(feature = "metrics"))]
enum RestartEvent {
    Started,
    HandedOver,
    Failed,
}

#[cfg(not(feature = "metrics"))]
fn record_restart(_event: RestartEvent) {}

/// Why a lifecycle ended other than by a drain.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The signal handlers could not be set up.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// The server stopped accepting on its own: every listener failed for good.
    #[error("the server stopped accepting: {0}")]
    Accept(#[from] ServerError),
    /// A lariat process that started this one (a restart's predecessor, a supervisor) gave up waiting
    /// for its `READY=1`: it goes on serving (or is stopping), so this one must not. Nothing was
    /// accepted and the sockets are left as they are.
    #[error(
        "the process that started us no longer waits for our READY; exiting without serving: {0}"
    )]
    Abandoned(std::io::Error),
}

/// The accept loop, as [`ServerBuilder::run`](crate::ServerBuilder::run) hands it back.
type AcceptLoop = Pin<Box<dyn Future<Output = Result<(), ServerError>> + Send>>;

/// A started successor being waited for; resolves to its pid once it serves, with the socket it
/// connects to if it takes live connections.
type PendingRestart =
    Pin<Box<dyn Future<Output = Result<(u32, Option<socket2::Socket>), RestartError>> + Send>>;

/// The default time handlers get to hand their connections over to a successor.
pub const DEFAULT_HAND_OVER_WINDOW: Duration = Duration::from_secs(10);

/// Runs a server until it is signalled to stop, and drains it: see the [module docs](self).
pub struct Lifecycle {
    handle: ServerHandle,
    accept_loop: AcceptLoop,
    signals: Option<Signals>,
    readiness: Readiness,
    lame_duck: Duration,
    drain: DrainOptions,
    restart: Option<RestartPlan>,
    on_reload: Option<Box<dyn FnMut() + Send>>,
    on_hand_over: Option<Box<dyn FnOnce() + Send>>,
    hand_over_window: Duration,
    hand_over_socket: Option<crate::handover::HandOverSocket>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("readiness", &self.readiness.state())
            .field("lame_duck", &self.lame_duck)
            .field("drain", &self.drain)
            .field("restart", &self.restart.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the serving loop ended.
enum Ending {
    /// Asked to stop: drain. `why` names the signal; `by_operator`: the operator's signal (a further one
    /// forces the drain), not the drain instruction of the process that started this one.
    Stop {
        why: &'static str,
        by_operator: bool,
    },
    /// A successor took the listeners over: drain our own connections.
    HandedOver {
        successor: u32,
        /// The socket the successor connected to if it takes live connections.
        channel: Option<socket2::Socket>,
    },
    /// A worker told by its supervisor to leave the shared sockets to the others and finish.
    Retired,
}

impl Lifecycle {
    /// The lifecycle of the server `handle` steers, whose accept loop `accept_loop` is (both from
    /// [`ServerBuilder::run`](crate::ServerBuilder::run)): [`run`](Self::run) drives the loop itself,
    /// on the caller's thread, so accepting and serving proceed in parallel even on one worker thread.
    pub fn new(
        handle: ServerHandle,
        accept_loop: impl Future<Output = Result<(), ServerError>> + Send + 'static,
    ) -> Lifecycle {
        Lifecycle {
            handle,
            accept_loop: Box::pin(accept_loop),
            signals: None,
            readiness: Readiness::new(),
            lame_duck: Duration::ZERO,
            drain: DrainOptions::default(),
            restart: None,
            on_reload: None,
            on_hand_over: None,
            hand_over_window: DEFAULT_HAND_OVER_WINDOW,
            hand_over_socket: None,
        }
    }

    /// The lifecycle of a server started with [`ServerBuilder::serve`](crate::ServerBuilder::serve).
    pub fn for_server(server: Server) -> Lifecycle {
        let handle = server.handle().clone();
        Lifecycle::new(handle, server.wait())
    }

    /// The signals to obey (default: [`Signals::operator`], installed when [`run`](Self::run) starts).
    /// Create them yourself before announcing that the process serves, so that a signal sent right
    /// after the announcement is not lost; or [`Signals::worker`] for a supervisor's worker.
    pub fn signals(mut self, signals: Signals) -> Lifecycle {
        self.signals = Some(signals);
        self
    }

    /// How long, after the first stop signal, the process stays unready while still accepting and
    /// serving: long enough for the load balancer's health checks to see it (a few check intervals).
    /// Default zero: the drain begins at once.
    pub fn lame_duck(mut self, period: Duration) -> Lifecycle {
        self.lame_duck = period;
        self
    }

    /// How long the drain lets the live connections finish before closing the rest (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Lifecycle {
        self.drain.timeout = timeout;
        self
    }

    /// The drain's options in full (the deadline and the settle time of the queue).
    pub fn drain_options(mut self, opts: DrainOptions) -> Lifecycle {
        self.drain = opts;
        self
    }

    /// Restart on SIGHUP: start `opts`' program with `sockets`, and hand over once it says it is ready.
    /// Without this, SIGHUP is logged and ignored.
    pub fn restart(mut self, opts: RestartOptions, sockets: Vec<PassOn>) -> Lifecycle {
        self.restart = Some(RestartPlan { opts, sockets });
        self
    }

    /// What SIGUSR1 (or a supervisor's reload instruction) does: reload a certificate, a configuration.
    /// The hook runs on the lifecycle's task, so it should not block for long; it logs its own outcome.
    pub fn on_reload(mut self, hook: impl FnMut() + Send + 'static) -> Lifecycle {
        self.on_reload = Some(Box::new(hook));
        self
    }

    /// What to do when the listeners go to a successor (or a retiring worker leaves them to the
    /// others): release other sockets the successor holds too (an admin endpoint's).
    pub fn on_hand_over(mut self, hook: impl FnOnce() + Send + 'static) -> Lifecycle {
        self.on_hand_over = Some(Box::new(hook));
        self
    }

    /// How long, after a restart's successor is ready, handlers may hand their live connections over to
    /// it (see [`handover`](crate::handover)); a connection not handed over by then drains as usual.
    /// Never longer than the drain timeout. Default 10 s; zero offers no connection (all drain).
    pub fn hand_over_window(mut self, window: Duration) -> Lifecycle {
        self.hand_over_window = window;
        self
    }

    /// Where a replacement connects to take the live connections when this process retires (a
    /// supervisor's worker told to [`Retire`](Instruction::Retire)); see
    /// [`HandOverSocket`](crate::handover::HandOverSocket).
    pub fn hand_over_socket(mut self, socket: crate::handover::HandOverSocket) -> Lifecycle {
        self.hand_over_socket = Some(socket);
        self
    }

    /// The readiness to move (a clone of one your health endpoint reads, created before the server so
    /// that its handlers can hold it too). Default: a fresh one nobody else reads.
    pub fn readiness(mut self, readiness: Readiness) -> Lifecycle {
        self.readiness = readiness;
        self
    }

    /// The handle of the server it runs.
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// Tells the process that started this one that it serves (`READY=1` on `NOTIFY_SOCKET`, if set),
    /// then serves until a stop signal, a hand-over or a supervisor's instruction, and drains. Returns
    /// how the drain ended; an error if the signal handlers cannot be installed, if every listener
    /// failed for good, or if the process that started this one no longer waits for it.
    pub async fn run(mut self) -> Result<Exit, LifecycleError> {
        let mut signals = match self.signals.take() {
            Some(signals) => signals,
            None => Signals::operator()?,
        };
        // A successor started by a predecessor that hands connections over: be ready to take them
        // before saying READY (the predecessor looks for us right after).
        match crate::handover::connect_from_env(&self.handle.shared) {
            Ok(true) => tracing::debug!("taking live connections from the predecessor"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot take live connections from the predecessor; they drain there")
            }
        }
        match activation::notify_ready() {
            Ok(true) => tracing::debug!("told NOTIFY_SOCKET we are ready"),
            Ok(false) => {}
            Err(e) if std::env::var_os(activation::HANDOFF_ENV).is_some() => {
                return Err(LifecycleError::Abandoned(e))
            }
            Err(e) => tracing::warn!(error = %e, "cannot notify NOTIFY_SOCKET that we are ready"),
        }
        if let Some(plan) = &self.restart {
            plan.store();
        }
        let Some((ending, force_at_once)) = self.serve(&mut signals).await? else {
            return Ok(Exit::Clean);
        };
        self.drain(ending, force_at_once, &mut signals).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lifecycle runs on any task: `tokio::spawn(lifecycle.run())` compiles.
    #[allow(dead_code)]
    fn runs_on_any_task(lifecycle: Lifecycle) {
        fn send<T: Send + 'static>(_: T) {}
        send(lifecycle.run());
    }
}
