//! Serving: the accept loop driven until a stop signal, a successor's take-over or a supervisor's
//! instruction; SIGHUP starts a successor and waits for it (or rolls back).

use super::stopping::reload;
use super::*;

impl Lifecycle {
    /// Serves until told to stop: `None` if the server was stopped from elsewhere; else why, and whether
    /// the drain must close every connection at once (a supervisor's force instruction).
    pub(super) async fn serve(
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
}
