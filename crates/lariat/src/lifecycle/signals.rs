//! The signals a serving process obeys, and what each asks of it (Unix; the instructions ride on
//! real-time signals on Linux).
//!
//! A standalone server and a supervisor obey the operator's signals: SIGTERM and SIGINT stop (drain),
//! SIGHUP restarts, SIGUSR1 reloads; SIGUSR2 is handled (its default action would kill the process) and
//! ignored.
//!
//! A worker of a supervisor obeys its supervisor only. The operator's signals often reach every process
//! of the group at once (Ctrl-C in a terminal, systemd's default `KillMode=control-group`, `systemctl
//! kill`): a worker that acted on its own SIGTERM would stop accepting while the supervisor is still in
//! its lame duck, and then take the supervisor's forwarded signal as a second one and close every
//! connection. So a worker ignores SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2, and the supervisor
//! instructs it on real-time signals of its own ([`Instruction`]), which nothing sends to a whole group.
//! The parent-death signal is the drain instruction, so a worker whose supervisor died drains.

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Why the signal handlers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Registering the handler of a signal failed (outside a tokio runtime, or a signal the OS forbids).
    #[error("installing the handler of signal {signal}: {source}")]
    Install {
        /// The signal number.
        signal: i32,
        /// The error.
        source: io::Error,
    },
    /// A worker could not ignore one of the operator's signals.
    #[error("ignoring signal {signal} in a worker: {source}")]
    Ignore {
        /// The signal number.
        signal: i32,
        /// The error.
        source: io::Error,
    },
}

/// What a signal asks of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The operator's stop signal (its name): stop taking clients and drain (after the lame duck, where
    /// there is one). While a drain the operator asked for is under way, a further one closes every
    /// connection.
    Stop(&'static str),
    /// Drain, told by the process that started this one: begins a drain if none is under way (lame duck
    /// first, where there is one), and never forces one, so a stop both passed on and received directly
    /// drains once.
    Drain,
    /// Close every connection now (a worker, told by its supervisor after a second signal).
    Force,
    /// Restart: start a successor and hand over (a supervisor: replace the workers).
    Restart,
    /// Reload (a certificate, a configuration): SIGUSR1.
    Reload,
    /// A worker: leave the shared sockets to the others and finish the connections it has.
    Retire,
    /// A signal handled so that it does not kill the process, with nothing to do; its name.
    Ignored(&'static str),
}

/// An instruction from the process that started this one: a supervisor to its worker (all four), or a
/// restart's predecessor to its successor (drain: a stop signal that reached the predecessor alone, as
/// the successor took over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// Drain: serve the queue and the connections, then exit. Also a worker's parent-death signal.
    Drain,
    /// Close every connection now.
    Force,
    /// Leave the sockets to the other workers (a replacement serves) and finish.
    Retire,
    /// Reload.
    Reload,
}

impl Instruction {
    const ALL: [Instruction; 4] = [
        Instruction::Drain,
        Instruction::Force,
        Instruction::Retire,
        Instruction::Reload,
    ];

    /// The signal that carries it: a real-time one (Linux), which no terminal, init system or `kill`
    /// without a number sends to a whole group.
    #[cfg(target_os = "linux")]
    pub fn signal(self) -> i32 {
        // The first real-time signal the C library leaves to programs, and the next three.
        libc::SIGRTMIN()
            + match self {
                Instruction::Drain => 0,
                Instruction::Force => 1,
                Instruction::Retire => 2,
                Instruction::Reload => 3,
            }
    }

    /// Elsewhere the instructions travel on the usual signals, so a signal to the whole group reaches the
    /// workers directly too.
    #[cfg(not(target_os = "linux"))]
    pub fn signal(self) -> i32 {
        match self {
            Instruction::Drain => libc::SIGTERM,
            Instruction::Force => libc::SIGINT,
            Instruction::Retire => libc::SIGUSR2,
            Instruction::Reload => libc::SIGUSR1,
        }
    }

    /// What the receiving process does on it.
    fn order(self) -> Order {
        match self {
            Instruction::Drain => Order::Drain,
            Instruction::Force => Order::Force,
            Instruction::Retire => Order::Retire,
            Instruction::Reload => Order::Reload,
        }
    }

    /// Sends it to the process `pid`: a child the caller has not reaped (so the pid cannot have been
    /// reused).
    pub fn send(self, pid: u32) {
        // SAFETY: kill(2) has no memory effects; the caller names its own unreaped child.
        unsafe {
            libc::kill(pid as libc::pid_t, self.signal());
        }
    }
}

/// The signals this process listens to, each with what it means. Create it before telling anyone the
/// process serves (a `listening on` line, `READY=1`): a signal sent before its handler is installed
/// takes its default action, which for SIGTERM is to end the process at once.
#[derive(Debug)]
pub struct Signals {
    streams: Vec<(Signal, Order)>,
}

impl Signals {
    /// A standalone server or a supervisor: the operator's signals, and the drain instruction (from a
    /// restart's predecessor). Must be called inside a tokio runtime.
    pub fn operator() -> Result<Signals, SignalError> {
        Signals::listen(&[
            (libc::SIGTERM, Order::Stop("SIGTERM")),
            (libc::SIGINT, Order::Stop("SIGINT")),
            (libc::SIGHUP, Order::Restart),
            (libc::SIGUSR1, Order::Reload),
            (libc::SIGUSR2, Order::Ignored("SIGUSR2")),
            (Instruction::Drain.signal(), Order::Drain),
        ])
    }

    /// A worker of the supervisor `supervisor` (a pid): its instructions; the operator's signals are
    /// ignored (the supervisor gets them and instructs). On Linux, the supervisor's death (even by
    /// SIGKILL) sends the drain instruction, so a worker never serves on unsupervised. Must be called
    /// inside a tokio runtime.
    pub fn worker(supervisor: u32) -> Result<Signals, SignalError> {
        let orders: Vec<(i32, Order)> = Instruction::ALL
            .iter()
            .map(|w| (w.signal(), w.order()))
            .collect();
        let signals = Signals::listen(&orders)?;
        let carriers: Vec<i32> = orders.iter().map(|(sig, _)| *sig).collect();
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ]
        .into_iter()
        .filter(|sig| !carriers.contains(sig))
        {
            // SAFETY: setting a signal's disposition to "ignore"; no handler runs.
            if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
                return Err(SignalError::Ignore {
                    signal: sig,
                    source: io::Error::last_os_error(),
                });
            }
        }
        // After the drain instruction's handler is installed: the supervisor's death then drains.
        tie_to_supervisor(supervisor);
        Ok(signals)
    }

    fn listen(orders: &[(i32, Order)]) -> Result<Signals, SignalError> {
        let streams = orders
            .iter()
            .map(|(sig, order)| {
                signal(SignalKind::from_raw(*sig))
                    .map_err(|source| SignalError::Install {
                        signal: *sig,
                        source,
                    })
                    .map(|s| (s, *order))
            })
            .collect::<Result<_, _>>()?;
        Ok(Signals { streams })
    }

    /// The next order. Cancel-safe: a signal that arrives while this is not polled waits for the next
    /// call.
    pub async fn recv(&mut self) -> Order {
        poll_fn(|cx| {
            for (stream, order) in &mut self.streams {
                if let Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    return Poll::Ready(*order);
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// In a worker: when the supervisor dies (even by SIGKILL), this process gets the drain instruction and
/// drains, rather than serving on unsupervised (Linux; elsewhere a worker outlives a killed supervisor).
fn tie_to_supervisor(supervisor: u32) {
    #[cfg(target_os = "linux")]
    {
        let drain = Instruction::Drain.signal();
        // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
        let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, drain) };
        if set != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot ask for a signal when the supervisor dies");
        }
        // The supervisor may have died before the call: then we were re-parented already. (Compared with
        // its pid, not with 1: a supervisor in a container is pid 1 itself.)
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } as u32 != supervisor {
            // SAFETY: raise on ourselves.
            unsafe { libc::raise(drain) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = supervisor;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn instructions_are_distinct_real_time_signals() {
        let signals: Vec<i32> = Instruction::ALL.iter().map(|w| w.signal()).collect();
        for (i, s) in signals.iter().enumerate() {
            assert!(*s >= libc::SIGRTMIN() && *s <= libc::SIGRTMAX(), "{s}");
            assert!(!signals[..i].contains(s));
        }
    }
}
