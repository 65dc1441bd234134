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
//! is not ready in time, it is killed and the old process goes on serving: a failed restart costs nothing.
//!
//! The notify socket lives in a fresh directory only this user can enter, and only a message carrying
//! the successor's pid counts. `LISTEN_PID` is set in the child between `fork` and `exec`
//! (the child's pid is not known before), with a pre-built environment and `execve`, so nothing
//! allocates after `fork`.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use tokio::net::UnixDatagram;

use crate::activation::{escape_name, HANDOFF_ENV, LISTEN_FDS_START, UPSTREAM_NOTIFY_ENV};

/// The default time a successor gets to say it is serving.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start as the successor.
#[derive(Debug, Clone)]
pub struct RestartOptions {
    /// The program: by default this process's own executable.
    pub program: PathBuf,
    /// Its arguments (without the program name): by default this process's own.
    pub args: Vec<OsString>,
    /// How long the successor gets to say it is serving. Default 30 s.
    pub ready_timeout: Duration,
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
    /// The successor was not ready in time and was killed.
    #[error("the successor (pid {pid}) was not ready within {timeout:?}; killed it")]
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

/// A listening socket to pass on.
#[derive(Debug, Clone, Copy)]
pub struct Passed<'a> {
    /// The name it is passed under (`LISTEN_FDNAMES`); the successor finds it by this name.
    pub name: &'a str,
    /// The socket.
    pub fd: BorrowedFd<'a>,
    /// The socket also belongs to a supervisor (systemd) that keeps its own descriptor: the successor
    /// must leave it alone in a drain too (no filter, no unlink).
    pub supervised: bool,
}

/// A started successor, not yet known to be serving.
#[derive(Debug)]
pub struct Successor {
    /// `None` only once handed to the caller by `ready_child`.
    child: Option<Child>,
    pid: u32,
    notify: NotifySocket,
    ready_timeout: Duration,
    /// Set once it said it is ready (or was reaped); until then dropping the successor kills it.
    settled: bool,
}

impl Drop for Successor {
    fn drop(&mut self) {
        if let (false, Some(child)) = (self.settled, &mut self.child) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a successor with `listeners` passed as descriptors 3, 4, …, and a notify socket to say it is
/// ready. Must be called inside a tokio runtime.
pub fn spawn_successor(
    listeners: &[Passed<'_>],
    opts: &RestartOptions,
) -> Result<Successor, RestartError> {
    let spawn_err = |source| RestartError::Spawn {
        program: opts.program.clone(),
        source,
    };
    let notify = NotifySocket::new().map_err(spawn_err)?;
    let plan = ExecPlan::new(listeners, opts, &notify.path).map_err(spawn_err)?;
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
        ready_timeout: opts.ready_timeout,
        settled: false,
    })
}

impl Successor {
    /// The successor's pid.
    pub fn pid(&self) -> u32 {
        self.pid
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
        let expected = format!("MAINPID={pid}");
        loop {
            tokio::select! {
                // A READY that arrives with the deadline wins: the successor is serving.
                biased;
                received = self.notify.socket.recv(&mut buf) => {
                    let message = match received {
                        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                        Err(source) => return Err(self.give_up(RestartError::Wait { pid, source })),
                    };
                    let lines: Vec<&str> = message.lines().collect();
                    if lines.contains(&"READY=1") && lines.contains(&expected.as_str()) {
                        // Ready, and still alive: only then may the caller let go of the listeners.
                        match self.try_wait() {
                            Ok(None) => {
                                self.settled = true;
                                if let Some(child) = self.child.take() {
                                    return Ok(child);
                                }
                            }
                            Ok(Some(status)) => {
                                self.settled = true;
                                return Err(RestartError::Exited { pid, status });
                            }
                            Err(source) => return Err(self.give_up(RestartError::Wait { pid, source })),
                        }
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
                    let timeout = self.ready_timeout;
                    return Err(self.give_up(RestartError::NotReady { pid, timeout }));
                }
            }
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    fn give_up(&mut self, err: RestartError) -> RestartError {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.settled = true; // reaped
        err
    }
}

/// The socket the successor sends `READY=1` to: a datagram socket in a fresh directory only this user can
/// enter (mode 0700), so no other user can forge the message. Removed when dropped.
#[derive(Debug)]
struct NotifySocket {
    socket: UnixDatagram,
    dir: PathBuf,
    path: PathBuf,
}

impl NotifySocket {
    fn new() -> io::Result<NotifySocket> {
        use std::os::unix::fs::DirBuilderExt;
        let mut nonce = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut nonce))?;
        let dir = std::env::temp_dir().join(format!(
            "lariat-restart-{}-{:016x}",
            std::process::id(),
            u64::from_ne_bytes(nonce)
        ));
        // Fails if it exists: a directory someone else prepared is never used.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("notify");
        let socket = match UnixDatagram::bind(&path) {
            Ok(socket) => socket,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(NotifySocket { socket, dir, path })
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Opens `/dev/null` (close-on-exec) on every free descriptor below `end`, so nothing else can take one
/// of those numbers until the returned descriptors are dropped.
fn fill_free_descriptors(end: RawFd) -> io::Result<Vec<OwnedFd>> {
    let mut held = Vec::new();
    loop {
        let fd: OwnedFd = std::fs::File::open("/dev/null")?.into();
        if fd.as_raw_fd() >= end {
            return Ok(held);
        }
        held.push(fd);
    }
}

/// Everything the child needs between `fork` and `exec`, prepared before the fork.
struct ExecPlan {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<Vec<u8>>,
    /// Raw pointers into `env`'s buffers (made once, from mutable borrows); the `LISTEN_PID` digits are
    /// written through them in the child.
    env_ptrs: Vec<*mut libc::c_char>,
    /// Index in `env` of `LISTEN_PID=` followed by room for the digits.
    pid_entry: usize,
    /// Close-on-exec duplicates of the listeners, numbered above the targets so `dup2` cannot clobber.
    sources: Vec<std::os::fd::OwnedFd>,
}

// SAFETY: the raw pointers point into buffers the plan owns and never changes after construction; the
// plan is used by one thread (the forked child) at a time.
unsafe impl Send for ExecPlan {}
// SAFETY: as above; `exec` runs only in the forked child, which has its own copy of the memory.
unsafe impl Sync for ExecPlan {}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
const PID_DIGITS: usize = 20;

impl ExecPlan {
    fn new(
        listeners: &[Passed<'_>],
        opts: &RestartOptions,
        notify_path: &std::path::Path,
    ) -> io::Result<ExecPlan> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
        };
        let program = cstring(opts.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in &opts.args {
            argv.push(cstring(arg.as_bytes())?);
        }
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        let first_free = LISTEN_FDS_START + listeners.len() as RawFd;
        let sources = listeners
            .iter()
            .map(|passed| {
                // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller keeps open; the result is new.
                let dup = unsafe {
                    libc::fcntl(passed.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, first_free)
                };
                if dup < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `dup` is a fresh descriptor we own.
                Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) })
            })
            .collect::<io::Result<Vec<_>>>()?;

        let upstream = crate::activation::upstream_notify_socket();
        const REPLACED: [&str; 6] = [
            UPSTREAM_NOTIFY_ENV,
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
            HANDOFF_ENV,
        ];
        let mut env: Vec<Vec<u8>> = std::env::vars_os()
            .filter(|(k, _)| !REPLACED.iter().any(|r| k.as_bytes() == r.as_bytes()))
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes(), b"\0"].concat())
            .filter(|entry| !entry[..entry.len() - 1].contains(&0))
            .collect();
        let names: Vec<String> = listeners.iter().map(|p| escape_name(p.name)).collect();
        let ownership: Vec<&str> = listeners
            .iter()
            .map(|p| if p.supervised { "supervised" } else { "owned" })
            .collect();
        env.push(format!("LISTEN_FDS={}\0", listeners.len()).into_bytes());
        env.push(format!("LISTEN_FDNAMES={}\0", names.join(":")).into_bytes());
        let mut notify = b"NOTIFY_SOCKET=".to_vec();
        notify.extend_from_slice(notify_path.as_os_str().as_bytes());
        notify.push(0);
        env.push(notify);
        env.push(format!("{HANDOFF_ENV}={}\0", ownership.join(",")).into_bytes());
        if let Some(upstream) = upstream {
            let mut entry = format!("{UPSTREAM_NOTIFY_ENV}=").into_bytes();
            entry.extend_from_slice(upstream.as_bytes());
            entry.push(0);
            if !entry[..entry.len() - 1].contains(&0) {
                env.push(entry);
            }
        }
        let pid_entry = env.len();
        let mut pid = LISTEN_PID_PREFIX.to_vec();
        pid.resize(LISTEN_PID_PREFIX.len() + PID_DIGITS + 1, 0);
        env.push(pid);
        let mut env_ptrs: Vec<*mut libc::c_char> =
            env.iter_mut().map(|e| e.as_mut_ptr().cast()).collect();
        env_ptrs.push(std::ptr::null_mut());
        Ok(ExecPlan {
            program,
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            pid_entry,
            sources,
        })
    }

    /// Runs in the child after `fork`: moves the sockets to 3, 4, …, writes `LISTEN_PID`, and execs.
    /// Returns only on failure.
    fn exec(&mut self) -> io::Result<()> {
        for (i, source) in self.sources.iter().enumerate() {
            // dup2 to another number clears close-on-exec on the target, so the successor inherits it.
            // SAFETY: dup2 is async-signal-safe; both descriptors are valid in the child.
            if unsafe { libc::dup2(source.as_raw_fd(), LISTEN_FDS_START + i as RawFd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: getpid is async-signal-safe.
        let pid = unsafe { libc::getpid() } as u64;
        let entry: *mut u8 = self.env_ptrs[self.pid_entry].cast();
        // Digits into the room after the prefix, then a NUL. The child owns its copy of this memory.
        let mut digits = [0u8; PID_DIGITS];
        let mut n = pid;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            // SAFETY: the entry has PID_DIGITS + 1 bytes of room after the prefix; len <= PID_DIGITS.
            unsafe { *entry.add(LISTEN_PID_PREFIX.len() + i) = digits[len - 1 - i] };
        }
        // SAFETY: as above; the terminating NUL.
        unsafe { *entry.add(LISTEN_PID_PREFIX.len() + len) = 0 };
        // SAFETY: all pointers are NUL-terminated strings in NULL-terminated arrays owned by `self`.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr().cast(),
            )
        };
        Err(io::Error::last_os_error())
    }
}
