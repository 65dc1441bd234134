//! Stopping: the lame duck, the hand-over to a successor, then the drain and how it ended.

use super::*;

impl Lifecycle {
    /// The lame duck (after a stop), the hand-over (after a restart or a retirement), then the drain.
    pub(super) async fn drain(
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
pub(super) fn reload(hook: &mut Option<Box<dyn FnMut() + Send>>) {
    match hook {
        Some(hook) => hook(),
        None => tracing::info!("SIGUSR1: nothing to reload"),
    }
}

pub(super) fn force(handle: &ServerHandle, signal: &str) {
    tracing::warn!(signal, "second signal: closing every connection now");
    handle.force();
}
