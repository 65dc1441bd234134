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
mod handover;
mod readiness;
mod signals;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use exit::Exit;
pub use handover::PassOn;
pub use readiness::{Readiness, State};
pub use signals::{Instruction, Order, SignalError, Signals};

use crate::activation;
use crate::restart::{RestartError, RestartOptions};
use crate::{DrainOptions, Server, ServerError, ServerHandle};
use handover::RestartPlan;

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

    /// Serves until told to stop: `None` if the server was stopped from elsewhere; else why, and whether
    /// the drain must close every connection at once (a supervisor's force instruction).
    async fn serve(
        &mut self,
        signals: &mut Signals,
    ) -> Result<Option<(Ending, bool)>, LifecycleError> {
        // At most one restart at a time: the successor being waited for.
        let mut restart: Option<PendingRestart> = None;
        // Told to close every connection without a drain first (a worker's supervisor).
        let mut force_at_once = false;
        let ending = loop {
            tokio::select! {
                result = &mut self.accept_loop => {
                    // The accept loop ended on its own: every listener failed for good (or stopped).
                    result?;
                    return Ok(None);
                }
                order = signals.recv() => match order {
                    Order::Stop(why) => break Ending::Stop { why, by_operator: true },
                    Order::Drain => break Ending::Stop { why: "drain instruction", by_operator: false },
                    // Only a worker is told this, by its supervisor, after a drain instruction: drain and
                    // close at once.
                    Order::Force => {
                        force_at_once = true;
                        break Ending::Stop { why: "force instruction", by_operator: false };
                    }
                    Order::Reload => reload(&mut self.on_reload),
                    Order::Retire => break Ending::Retired,
                    Order::Ignored(signal) => tracing::info!(signal, "nothing to do on this signal; ignored"),
                    Order::Restart => {
                        if restart.is_some() {
                            tracing::warn!("SIGHUP: a restart is already in progress; ignored");
                            continue;
                        }
                        let Some(plan) = &self.restart else {
                            tracing::warn!("SIGHUP: no restart configured; ignored");
                            continue;
                        };
                        match plan.start() {
                            Ok(mut successor) => {
                                record_restart(RestartEvent::Started);
                                let channel = successor.take_handover_listener();
                                restart = Some(Box::pin(async move {
                                    successor.ready().await.map(|pid| (pid, channel))
                                }));
                            }
                            Err(e) => {
                                record_restart(RestartEvent::Failed);
                                tracing::error!(error = %e, "restart failed; still serving");
                            }
                        }
                    }
                },
                result = async { restart.as_mut().expect("guarded").await }, if restart.is_some() => {
                    restart = None;
                    match result {
                        Ok((successor, channel)) => break Ending::HandedOver { successor, channel },
                        Err(e) => {
                            record_restart(RestartEvent::Failed);
                            tracing::error!(error = %e, "restart failed; still serving");
                        }
                    }
                }
            }
        };
        // A signal that raced a successor's READY: if it is serving already, it takes over and is told to
        // drain (an instruction, not the signal: if the signal reached the whole group, the successor got
        // it too, and two would force its drain); otherwise the restart is abandoned (dropping it stops
        // the successor, which accepts nothing before it says READY).
        let ending = match (ending, restart.take()) {
            (
                Ending::Stop {
                    why: signal,
                    by_operator,
                },
                Some(pending),
            ) => match tokio::time::timeout(Duration::ZERO, pending).await {
                Ok(Ok((successor, _))) => {
                    tracing::info!(
                        successor_pid = successor,
                        signal,
                        "a signal arrived as the successor became ready; passing it on"
                    );
                    Instruction::Drain.send(successor);
                    Ending::HandedOver {
                        successor,
                        channel: None,
                    }
                }
                _ => Ending::Stop {
                    why: signal,
                    by_operator,
                },
            },
            (ending, _) => ending,
        };
        if matches!(ending, Ending::Stop { .. }) {
            // No restart will follow: holding duplicates would keep the sockets listening after the drain
            // closes them, leaving new clients unanswered instead of refused.
            self.restart = None;
        }
        Ok(Some((ending, force_at_once)))
    }

    /// The lame duck (after a stop), the hand-over (after a restart or a retirement), then the drain.
    async fn drain(
        mut self,
        ending: Ending,
        mut force_at_once: bool,
        signals: &mut Signals,
    ) -> Result<Exit, LifecycleError> {
        let handle = self.handle.clone();
        let mut accept_loop_done = false;
        // A stop signal skips the lame duck, or forces the drain, when one already began it. After a
        // hand-over (a restart, or a worker's retirement) or a drain instruction it began without one:
        // the first stop signal (`systemctl stop` reaches every process of the unit) lets it go on, and
        // only a second one acts.
        let mut stop_seen = matches!(
            ending,
            Ending::Stop {
                by_operator: true,
                ..
            }
        );
        match ending {
            Ending::Stop { why: signal, .. } => {
                if !self.lame_duck.is_zero() {
                    // Unready now, while the listeners keep accepting: a load balancer checking it stops
                    // sending before the drain stops admitting.
                    self.readiness.set(State::LameDuck);
                    tracing::info!(
                        signal,
                        lame_duck_ms = self.lame_duck.as_millis() as u64,
                        active = handle.stats().active,
                        "lame duck: /readyz answers 503; still accepting and serving until the period ends"
                    );
                    let lame_duck = tokio::time::sleep(self.lame_duck);
                    tokio::pin!(lame_duck);
                    let why = loop {
                        tokio::select! {
                            _ = &mut lame_duck => break "the period is over",
                            result = &mut self.accept_loop => {
                                accept_loop_done = true;
                                if let Err(e) = result {
                                    tracing::warn!(error = %e, "the server stopped accepting during the lame duck");
                                }
                                break "the server stopped accepting";
                            }
                            order = signals.recv() => match order {
                                Order::Stop(signal) if !stop_seen => {
                                    stop_seen = true;
                                    tracing::info!(signal, "already in the lame duck; a second signal skips it");
                                }
                                Order::Stop("SIGINT") => break "a second signal (SIGINT) skips it",
                                Order::Stop(_) => break "a second signal (SIGTERM) skips it",
                                Order::Force => {
                                    force_at_once = true;
                                    break "told to close every connection";
                                }
                                Order::Reload => reload(&mut self.on_reload),
                                Order::Restart => tracing::warn!("SIGHUP during the lame duck: ignored, shutting down"),
                                Order::Drain | Order::Retire | Order::Ignored(_) => {}
                            },
                        }
                    };
                    tracing::info!(why, "lame duck over");
                }
                self.readiness.set(State::Stopping);
                tracing::info!(
                    signal,
                    active = handle.stats().active,
                    deadline_ms = self.drain.timeout.as_millis() as u64,
                    "draining: serving the queued clients and the live connections, admitting no new ones"
                );
            }
            Ending::HandedOver { successor, channel } => {
                record_restart(RestartEvent::HandedOver);
                self.readiness.set(State::Stopping);
                match activation::notify_main_pid(successor) {
                    Ok(true) => tracing::debug!(
                        successor_pid = successor,
                        "told our supervisor the new main pid"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot tell our supervisor the new main pid")
                    }
                }
                tracing::info!(
                    successor_pid = successor,
                    active = handle.stats().active,
                    "restart: successor ready; handing over the listeners and draining"
                );
                self.hand_over();
                if let Some(listener) = channel.filter(|_| !self.hand_over_window.is_zero()) {
                    let window = self.hand_over_window.min(self.drain.timeout);
                    if let Some(out) =
                        crate::handover::accept_successor(&listener, Some(successor), window)
                    {
                        // No `successor_pid` field here: the line above names it once per restart.
                        tracing::info!(
                            window_ms = window.as_millis() as u64,
                            "offering the live connections to the successor"
                        );
                        handle.shared.handover.offer(out);
                    }
                }
            }
            Ending::Retired => {
                self.readiness.set(State::Stopping);
                tracing::info!(
                    active = handle.stats().active,
                    "worker retiring: leaving the sockets to the other workers and draining"
                );
                self.hand_over();
                if let Some(socket) = self
                    .hand_over_socket
                    .take()
                    .filter(|_| !self.hand_over_window.is_zero())
                {
                    let window = self.hand_over_window.min(self.drain.timeout);
                    if let Some(out) =
                        crate::handover::accept_successor(socket.socket(), None, window)
                    {
                        tracing::info!(
                            window_ms = window.as_millis() as u64,
                            "offering the live connections to the replacement"
                        );
                        handle.shared.handover.offer(out);
                    }
                }
            }
        }
        // The drain needs the accept loop driven (it empties the queues), so both run here.
        let drain = handle.drain(self.drain);
        tokio::pin!(drain);
        if force_at_once {
            force(&handle, "force instruction");
        }
        let report = loop {
            tokio::select! {
                result = &mut self.accept_loop, if !accept_loop_done => {
                    accept_loop_done = true;
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "a listener failed while draining");
                    }
                }
                report = &mut drain => break report,
                order = signals.recv() => match order {
                    Order::Stop(signal) if stop_seen => force(&handle, signal),
                    Order::Stop(signal) => {
                        stop_seen = true;
                        tracing::info!(signal, "already draining; a second signal closes every connection");
                    }
                    Order::Force => force(&handle, "force instruction"),
                    Order::Reload => reload(&mut self.on_reload),
                    Order::Restart => tracing::warn!("SIGHUP while draining: ignored"),
                    Order::Drain | Order::Retire | Order::Ignored(_) => {}
                },
            }
        };
        Ok(if report.is_complete() {
            Exit::Clean
        } else {
            Exit::Forced
        })
    }

    /// Ends the accept loop without touching the sockets (a successor or the sibling workers accept
    /// from them now), and runs the hook.
    fn hand_over(&mut self) {
        self.handle.release_listeners();
        if let Some(hook) = self.on_hand_over.take() {
            hook();
        }
    }
}

/// SIGUSR1 (a worker: its supervisor's reload instruction).
fn reload(hook: &mut Option<Box<dyn FnMut() + Send>>) {
    match hook {
        Some(hook) => hook(),
        None => tracing::info!("SIGUSR1: nothing to reload"),
    }
}

fn force(handle: &ServerHandle, signal: &str) {
    tracing::warn!(signal, "second signal: closing every connection now");
    handle.force();
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
