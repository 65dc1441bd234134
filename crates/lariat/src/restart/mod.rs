//! Hitless restart: start a successor process, hand it the listening sockets, and wait until it serves.
//!
//! The successor gets the very same sockets (descriptor inheritance, not new binds), so the kernel's
//! accept queues are never closed: a client connecting at any instant of the restart is queued and
//! served by one process or the other. The hand-over speaks systemd's protocols, so the successor uses
//! the code path it would use under systemd: the sockets arrive as `LISTEN_FDS`/`LISTEN_FDNAMES`/
//! `LISTEN_PID` (see [`activation`](crate::activation)), and the successor says it is serving with
//! `READY=1` on `NOTIFY_SOCKET` ([`notify_ready`](crate::activation::notify_ready)).
//!
//! The old process keeps accepting until the successor is ready, then releases its listeners (they stay
//! open in the successor: no filter, no unlink) and drains its own connections. If the successor exits or
//! is not ready in time, it is stopped and the old process goes on serving: a failed restart costs nothing.
//!
//! Giving up on a successor is race-free: the notify socket is shut for reading first (a `READY=1` sent
//! after that fails, and a lariat successor then exits without serving), then read once more: a `READY=1`
//! that arrived just before counts, and the successor takes over. Otherwise it has accepted nothing, and is
//! sent its stop signal (SIGTERM unless set), then SIGKILL after a grace.
//!
//! The notify socket lives in a fresh directory only this user can enter, and only a message carrying
//! the successor's pid counts. `LISTEN_PID` is set in the child between `fork` and `exec`
//! (the child's pid is not known before), with a pre-built environment and `execve`, so nothing
//! allocates after `fork`.

mod exec;
mod notify;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use exec::{fill_free_descriptors, ExecPlan};
use notify::{is_ready, NotifySocket};

use crate::activation::LISTEN_FDS_START;
use crate::Listener;

/// The default time a successor gets to say it is serving.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a successor given up on gets to exit after its stop signal before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// What to start as the successor.
#[derive(Debug, Clone)]
pub struct RestartOptions {
    /// The program: by default this process's own executable.
    pub program: PathBuf,
    /// Its arguments (without the program name): by default this process's own.
    pub args: Vec<OsString>,
    /// How long the successor gets to say it is serving. Default 30 s.
    pub ready_timeout: Duration,
    /// The signal that stops a successor given up on before it said it is serving (SIGKILL follows
    /// after [`STOP_GRACE`]). Default SIGTERM; a program whose successors ignore SIGTERM names the one
    /// they obey.
    pub stop_signal: i32,
    /// Where the successor connects to take live connections over (see
    /// [`handover`](crate::handover)). `None` (the default): from this process, through a socket
    /// [`spawn_successor`] makes. A supervisor replacing a worker names the worker's
    /// [`HandOverSocket`](crate::handover::HandOverSocket) instead.
    pub hand_over_from: Option<PathBuf>,
}

impl RestartOptions {
    /// The executable at this process's path, with the same arguments. If the file was replaced since
    /// this process started (an upgrade installed over it), the new file is what starts.
    pub fn same_process() -> io::Result<RestartOptions> {
        let mut program = std::env::current_exe()?;
        // Linux names a replaced executable "PATH (deleted)".
        if let Some(path) = program.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            program = PathBuf::from(path);
        }
        Ok(RestartOptions {
            program,
            args: std::env::args_os().skip(1).collect(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            stop_signal: libc::SIGTERM,
            hand_over_from: None,
        })
    }
}

/// Why a restart did not happen. The old process is still serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// Preparing the hand-over or starting the successor failed.
    #[error("cannot start the successor {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The successor exited before it was ready.
    #[error("the successor (pid {pid}) exited before it was ready: {status}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// The successor was not ready in time and was stopped.
    #[error("the successor (pid {pid}) was not ready within {timeout:?}; stopped it")]
    NotReady {
        /// Its pid.
        pid: u32,
        /// The time it had.
        timeout: Duration,
    },
    /// Waiting for the successor failed.
    #[error("waiting for the successor (pid {pid}): {source}")]
    Wait {
        /// Its pid.
        pid: u32,
        /// The error.
        source: io::Error,
    },
}

/// A listening socket a restart passes on to the successor, under the name the successor finds it by
/// (`LISTEN_FDNAMES`, see [`activation::inherited`](crate::activation::inherited)).
///
/// It holds a duplicate of the socket, made when it is created: a listener the accept loop drops
/// (failed for good) then cannot leave a stale descriptor number behind. A [`Lifecycle`](crate::lifecycle::Lifecycle)
/// closes its duplicates as soon as no restart can follow (a stop), so a drained socket is not kept
/// listening.
#[derive(Debug)]
pub struct PassOn {
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
    /// The socket also belongs to a supervisor (systemd, or the process passing it on) that keeps its
    /// own descriptor: the successor must leave it alone in a drain too (no filter, no unlink).
    pub(crate) supervised: bool,
}

impl PassOn {
    /// `listener`, passed on as `name`. Fails only if the descriptor cannot be duplicated (the
    /// process's descriptor limit).
    pub fn new(name: impl Into<String>, listener: &Listener) -> io::Result<PassOn> {
        Ok(PassOn {
            name: name.into(),
            fd: listener.as_fd().try_clone_to_owned()?,
            supervised: listener.is_supervised(),
        })
    }

    /// A socket this process keeps listening for as long as the successor runs (a supervisor passing
    /// its sockets to workers): the successor's drain leaves it alone, since the queue stays with the
    /// others that accept from it. Fails only if the descriptor cannot be duplicated.
    pub fn supervised(name: impl Into<String>, socket: impl AsFd) -> io::Result<PassOn> {
        Ok(PassOn {
            name: name.into(),
            fd: socket.as_fd().try_clone_to_owned()?,
            supervised: true,
        })
    }
}

/// A started successor, not yet known to be serving.
#[derive(Debug)]
pub struct Successor {
    /// `None` only once handed to the caller by `ready_child`.
    child: Option<Child>,
    pid: u32,
    notify: NotifySocket,
    /// Where a successor that takes live connections connects, before it says it is ready.
    handover: Option<socket2::Socket>,
    ready_timeout: Duration,
    stop_signal: i32,
    /// Set once it said it is ready (or was reaped); until then dropping the successor stops it.
    settled: bool,
}

impl Drop for Successor {
    /// Given up on while not known to be ready (the caller stopped waiting): stopped as at the deadline,
    /// the grace and the reaping on a thread of their own, so a drop never blocks. If its `READY=1` had
    /// arrived unread, it may have accepted clients: it is told to stop (it drains them) and is not
    /// killed.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let said_ready = self.notify.close_and_find(&self.expected());
        signal(self.pid, self.stop_signal);
        let pid = self.pid;
        let reaper = std::thread::Builder::new()
            .name("lariat-successor-reaper".into())
            .spawn(move || {
                if said_ready {
                    tracing::warn!(pid, "restart: the successor said READY as it was given up on; told to stop, it drains what it accepted");
                } else {
                    let deadline = std::time::Instant::now() + STOP_GRACE;
                    while matches!(child.try_wait(), Ok(None))
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = child.kill();
                }
                let _ = child.wait();
            });
        if let Err(e) = reaper {
            tracing::warn!(pid, error = %e, "restart: cannot start a thread to reap the successor");
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child, not reaped yet (its pid cannot have been reused).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Starts a successor with `listeners` passed as descriptors 3, 4, …, and a notify socket to say it is
/// ready. Must be called inside a tokio runtime.
pub fn spawn_successor(
    listeners: &[PassOn],
    opts: &RestartOptions,
) -> Result<Successor, RestartError> {
    let spawn_err = |source| RestartError::Spawn {
        program: opts.program.clone(),
        source,
    };
    let notify = NotifySocket::new().map_err(spawn_err)?;
    let (handover, handover_path) = match &opts.hand_over_from {
        Some(path) => (None, path.clone()),
        None => (
            Some(notify.handover_listener().map_err(spawn_err)?),
            notify.handover_path(),
        ),
    };
    let plan = ExecPlan::new(listeners, opts, &notify.path, &handover_path).map_err(spawn_err)?;
    // Descriptors 3, 4, … are the targets of the child's dup2s: none of them may be a descriptor std
    // uses across the fork (its exec-error pipe), so any free one is filled until `spawn` returns.
    let _placeholders =
        fill_free_descriptors(LISTEN_FDS_START + listeners.len() as RawFd).map_err(spawn_err)?;
    let mut command = Command::new(&opts.program);
    // SAFETY: the closure only calls async-signal-safe functions (dup2, getpid, execve) and writes into
    // memory prepared before the fork; see `ExecPlan::exec`.
    unsafe {
        let mut plan = plan;
        command.pre_exec(move || plan.exec());
    }
    let child = command.spawn().map_err(spawn_err)?;
    tracing::info!(pid = child.id(), program = %opts.program.display(), "restart: successor started");
    Ok(Successor {
        pid: child.id(),
        child: Some(child),
        notify,
        handover,
        ready_timeout: opts.ready_timeout,
        stop_signal: opts.stop_signal,
        settled: false,
    })
}

impl Successor {
    /// The successor's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The socket a successor that takes live connections connects to before it says `READY=1` (see
    /// [`handover`](crate::handover)); taken once. Accept from it after the successor is ready: no
    /// pending connection means the successor does not take connections.
    pub fn take_handover_listener(&mut self) -> Option<socket2::Socket> {
        self.handover.take()
    }

    /// Waits until the successor says it is serving. On failure (it exited, or the time ran out: then it
    /// is killed) the caller keeps serving. Returns the successor's pid.
    pub async fn ready(self) -> Result<u32, RestartError> {
        let pid = self.pid;
        // The handle is dropped, not the process: a successor outlives its predecessor.
        self.ready_child().await.map(|_| pid)
    }

    /// Like [`ready`](Self::ready), and hands over the process handle, for a supervisor that waits on
    /// its children (`lariat serve --workers`).
    pub async fn ready_child(mut self) -> Result<Child, RestartError> {
        let pid = self.pid;
        let deadline = crate::deadline::after(tokio::time::Instant::now(), self.ready_timeout);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut buf = [0u8; 512];
        let expected = self.expected();
        loop {
            tokio::select! {
                // A READY that arrives with the deadline wins: the successor is serving.
                biased;
                received = self.notify.socket.recv(&mut buf) => {
                    let message = match received {
                        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                        Err(source) => return Err(self.give_up(RestartError::Wait { pid, source })),
                    };
                    if is_ready(&message, &expected) {
                        return self.take_ready();
                    }
                    tracing::debug!(message, "restart: ignored a notification");
                }
                _ = tick.tick() => match self.try_wait() {
                    Ok(Some(status)) => {
                        self.settled = true; // reaped: nothing left to kill
                        return Err(RestartError::Exited { pid, status });
                    }
                    Ok(None) => {}
                    Err(source) => return Err(self.give_up(RestartError::Wait { pid, source })),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    // A READY sent from now on fails; one that came in just now still counts.
                    if self.notify.close_and_find(&expected) {
                        return self.take_ready();
                    }
                    self.stop().await;
                    let timeout = self.ready_timeout;
                    return Err(RestartError::NotReady { pid, timeout });
                }
            }
        }
    }

    /// The `MAINPID=` line a notification from this successor carries.
    fn expected(&self) -> String {
        format!("MAINPID={}", self.pid)
    }

    /// It said it is ready: only if it is still alive may the caller let go of the listeners.
    fn take_ready(&mut self) -> Result<Child, RestartError> {
        let pid = self.pid;
        match self.try_wait() {
            Ok(None) => {
                self.settled = true;
                self.child.take().ok_or(RestartError::Wait {
                    pid,
                    source: io::Error::other("the successor's handle was taken already"),
                })
            }
            Ok(Some(status)) => {
                self.settled = true;
                Err(RestartError::Exited { pid, status })
            }
            Err(source) => Err(self.give_up(RestartError::Wait { pid, source })),
        }
    }

    /// Stops a successor that never said it is ready: its stop signal, then SIGKILL after the grace.
    async fn stop(&mut self) {
        signal(self.pid, self.stop_signal);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while matches!(self.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill_and_reap();
    }

    fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    fn give_up(&mut self, err: RestartError) -> RestartError {
        self.kill_and_reap();
        err
    }

    /// Kills and reaps it (a no-op on one already reaped).
    fn kill_and_reap(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.settled = true; // reaped
    }
}
