//! What the child does between `fork` and `exec`: the listening sockets onto descriptors 3, 4, …,
//! `LISTEN_PID` written with its own pid, then `execve`, all prepared before the fork.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use super::{PassOn, RestartOptions};
use crate::activation::{escape_name, HANDOFF_ENV, LISTEN_FDS_START, UPSTREAM_NOTIFY_ENV};

/// Opens `/dev/null` (close-on-exec) on every free descriptor below `end`, so nothing else can take one
/// of those numbers until the returned descriptors are dropped.
pub(super) fn fill_free_descriptors(end: RawFd) -> io::Result<Vec<OwnedFd>> {
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
pub(super) struct ExecPlan {
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
    pub(super) fn new(
        listeners: &[PassOn],
        opts: &RestartOptions,
        notify_path: &std::path::Path,
        handover_path: &std::path::Path,
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
        const REPLACED: [&str; 7] = [
            crate::handover::HANDOVER_ENV,
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
        let names: Vec<String> = listeners.iter().map(|p| escape_name(&p.name)).collect();
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
        let mut handover = format!("{}=", crate::handover::HANDOVER_ENV).into_bytes();
        handover.extend_from_slice(handover_path.as_os_str().as_bytes());
        handover.push(0);
        env.push(handover);
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
    pub(super) fn exec(&mut self) -> io::Result<()> {
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
