//! Adopting listening sockets passed by the process that started us: systemd socket activation
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), and a lariat predecessor handing over its sockets in a
//! hitless restart (the same variables, see [`restart`](crate::restart)).
//!
//! The passed descriptors are 3, 4, … `3 + LISTEN_FDS - 1`. They are ours only when `LISTEN_PID` is our
//! pid: the variables are inherited by every child, and a grandchild must not take descriptors it merely
//! inherited by accident. Each one is checked (a listening stream socket, TCP or Unix), made non-blocking
//! and close-on-exec, then wrapped as a [`Listener`].

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::net::listener::Listener;

/// The first passed descriptor (after stdin, stdout, stderr).
pub const LISTEN_FDS_START: RawFd = 3;
/// Set by a lariat predecessor next to the `LISTEN_*` variables: for each passed socket, `owned` (the
/// predecessor bound it, and this process now owns it outright: a drain may filter it and unlink its
/// path) or `supervised` (a supervisor such as systemd keeps its own descriptor: leave it alone).
/// Without the variable every socket is taken as supervised.
pub(crate) const HANDOFF_ENV: &str = "LARIAT_HANDOFF";

/// A listening socket passed to this process.
#[derive(Debug)]
pub struct Inherited {
    /// Its name from `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`), if one was given.
    pub name: Option<String>,
    /// The socket, ready to serve.
    pub listener: Listener,
}

/// Why passed sockets could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A variable is malformed.
    #[error("{var}={value:?} is malformed: {why}")]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A passed descriptor is not a listening stream socket lariat can serve.
    #[error("passed descriptor {fd} is not usable: {why}")]
    BadDescriptor {
        /// The descriptor.
        fd: RawFd,
        /// Why.
        why: String,
    },
    /// The sockets were already taken by an earlier call.
    #[error("the passed sockets were already adopted")]
    AlreadyTaken,
    /// Registering a socket with the runtime failed (no tokio runtime?).
    #[error("cannot register passed descriptor {fd} with the runtime: {source}")]
    Register {
        /// The descriptor.
        fd: RawFd,
        /// The error.
        source: std::io::Error,
    },
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The sockets passed to this process, in order; empty when none were (no `LISTEN_FDS`, or `LISTEN_PID`
/// names another process). Must be called inside a tokio runtime, once: the descriptors are owned by the
/// returned listeners, and a second call fails with [`ActivationError::AlreadyTaken`].
pub fn inherited() -> Result<Vec<Inherited>, ActivationError> {
    let vars = |name| std::env::var(name).ok();
    let Some(count) = passed_count(vars("LISTEN_PID"), vars("LISTEN_FDS"), std::process::id())?
    else {
        return Ok(Vec::new());
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ActivationError::AlreadyTaken);
    }
    let names = parse_names(vars("LISTEN_FDNAMES").as_deref(), count);
    let ownership = parse_ownership(vars(HANDOFF_ENV).as_deref(), count);
    let mut adopted = Vec::with_capacity(count);
    for (i, (name, supervised)) in names.into_iter().zip(ownership).enumerate() {
        let fd = LISTEN_FDS_START + i as RawFd;
        check_listening_socket(fd)?;
        // SAFETY: `LISTEN_PID` names this process, so descriptors 3.. were passed to it for it to own,
        // and `TAKEN` ensures they are wrapped only once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = Listener::adopt(owned, supervised)
            .map_err(|source| ActivationError::Register { fd, source })?;
        tracing::info!(fd, name = name.as_deref().unwrap_or(""), listener = %listener.local_addr(), supervised, "adopted a passed socket");
        adopted.push(Inherited { name, listener });
    }
    Ok(adopted)
}

/// `Some(n)` when `n` descriptors were passed to `pid`; `None` when nothing was passed to it.
fn passed_count(
    listen_pid: Option<String>,
    listen_fds: Option<String>,
    pid: u32,
) -> Result<Option<usize>, ActivationError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let target: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable {
            var: "LISTEN_PID",
            value: listen_pid.clone(),
            why: "not a pid",
        })?;
    if target != pid {
        return Ok(None);
    }
    let count: usize = listen_fds
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable {
            var: "LISTEN_FDS",
            value: listen_fds.clone(),
            why: "not a count",
        })?;
    // Far above any real use, far below the descriptor limit: a garbage count must not make us wrap
    // thousands of descriptors we do not own.
    if count > 1024 {
        return Err(ActivationError::BadVariable {
            var: "LISTEN_FDS",
            value: listen_fds,
            why: "more than 1024 descriptors",
        });
    }
    Ok((count > 0).then_some(count))
}

/// Names from `LISTEN_FDNAMES` (colon-separated), one per descriptor; missing or empty names are `None`.
fn parse_names(value: Option<&str>, count: usize) -> Vec<Option<String>> {
    let mut names: Vec<Option<String>> = value
        .map(|v| {
            v.split(':')
                .map(|n| (!n.is_empty()).then(|| unescape_name(n)))
                .collect()
        })
        .unwrap_or_default();
    names.resize(count, None);
    names
}

/// Whether each passed socket is supervised (see [`HANDOFF_ENV`]); anything but `owned` is supervised,
/// the safe reading.
fn parse_ownership(value: Option<&str>, count: usize) -> Vec<bool> {
    let mut supervised: Vec<bool> = value
        .map(|v| v.split(',').map(|o| o.trim() != "owned").collect())
        .unwrap_or_default();
    supervised.resize(count, true);
    supervised
}

/// Names may not contain `:` (the separator); lariat escapes `%` and `:` in the names it passes.
pub(crate) fn escape_name(name: &str) -> String {
    name.replace('%', "%25").replace(':', "%3A")
}

fn unescape_name(name: &str) -> String {
    name.replace("%3A", ":").replace("%25", "%")
}

/// A listening stream socket of a family lariat serves; made non-blocking and close-on-exec.
fn check_listening_socket(fd: RawFd) -> Result<(), ActivationError> {
    let bad = |why: String| ActivationError::BadDescriptor { fd, why };
    let opt = |level, name| -> Result<libc::c_int, ActivationError> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(bad(format!(
                "not an open socket ({})",
                std::io::Error::last_os_error()
            )))
        }
    };
    if opt(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(bad("not a stream socket".into()));
    }
    #[cfg(target_os = "linux")]
    {
        if opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
            return Err(bad("not listening".into()));
        }
        let domain = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        if ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&domain) {
            return Err(bad(format!("unsupported address family {domain}")));
        }
    }
    // SAFETY: plain fcntl calls on a descriptor just checked to be an open socket.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
            && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
    };
    if !ok {
        return Err(bad(format!("fcntl: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Tells the process that started us that we are serving (`sd_notify`'s `READY=1`), if it asked
/// (`NOTIFY_SOCKET` is set): systemd with `Type=notify`, or a lariat predecessor waiting to hand over.
/// Returns whether a notification was sent.
pub fn notify_ready() -> std::io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    send_notification(&socket, message.as_bytes())?;
    Ok(true)
}

/// Tells our own supervisor, if it asked (`NOTIFY_SOCKET`), that `pid` is the service's main process now:
/// after a hitless restart the successor serves and this process exits. systemd needs
/// `NotifyAccess=all` for the successor's own notifications. Returns whether a notification was sent.
pub fn notify_main_pid(pid: u32) -> std::io::Result<bool> {
    let Some(socket) = upstream_notify_socket() else {
        return Ok(false);
    };
    send_notification(&socket, format!("MAINPID={pid}\nREADY=1\n").as_bytes())?;
    Ok(true)
}

/// Keeps `sockets` (each with its name) in the service manager's descriptor store (`FDSTORE=1`,
/// `FDNAME=`), when it offers one: systemd sets `$FDSTORE` to `FileDescriptorStoreMax=` when that is
/// above zero. After a crash, systemd restarts the service with them as `LISTEN_FDS`/`LISTEN_FDNAMES`,
/// so clients that connect meanwhile wait in the accept queue instead of being refused. systemd keeps
/// one copy of a socket stored twice, so every generation of a restart may store the same ones.
/// Returns how many were stored (0 without a store).
pub fn store_descriptors(
    sockets: &[(&str, std::os::fd::BorrowedFd<'_>)],
) -> std::io::Result<usize> {
    let offered = std::env::var("FDSTORE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0);
    let Some(address) = upstream_notify_socket().filter(|_| offered) else {
        return Ok(0);
    };
    let socket = connect_notify(&address)?;
    for (name, fd) in sockets {
        let message = format!("FDSTORE=1\nFDNAME={}\n", escape_name(name));
        crate::handover::wire::send(socket.as_raw_fd(), message.as_bytes(), Some(fd.as_raw_fd()))?;
    }
    Ok(sockets.len())
}

/// A datagram socket connected to a `NOTIFY_SOCKET` address (a path, or `@name`).
fn connect_notify(address: &std::ffi::OsStr) -> std::io::Result<std::os::unix::net::UnixDatagram> {
    use std::os::unix::ffi::OsStrExt;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = address.as_bytes().strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            socket.connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)?;
            return Ok(socket);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
        }
    }
    socket.connect(std::path::Path::new(address))?;
    Ok(socket)
}

/// Set by a lariat predecessor to its own supervisor's `NOTIFY_SOCKET` (the successor's `NOTIFY_SOCKET`
/// is the predecessor's, for `READY=1`), so every generation can tell the supervisor its new main pid.
pub(crate) const UPSTREAM_NOTIFY_ENV: &str = "LARIAT_UPSTREAM_NOTIFY_SOCKET";

/// Our supervisor's notify socket: the one a predecessor passed on, else our own `NOTIFY_SOCKET`.
pub(crate) fn upstream_notify_socket() -> Option<std::ffi::OsString> {
    match std::env::var_os(HANDOFF_ENV) {
        Some(_) => std::env::var_os(UPSTREAM_NOTIFY_ENV),
        None => std::env::var_os("NOTIFY_SOCKET"),
    }
}

/// Sends one datagram to a `NOTIFY_SOCKET` address: a path, or `@name` for an abstract socket (Linux).
pub(crate) fn send_notification(address: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = address.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
        }
    }
    socket.send_to(message, std::path::Path::new(address))?;
    Ok(())
}

impl AsRawFd for Inherited {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_for_another_process_are_ignored() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(passed_count(some("42"), some("2"), 42).unwrap(), Some(2));
        assert_eq!(passed_count(some("41"), some("2"), 42).unwrap(), None);
        assert_eq!(passed_count(None, some("2"), 42).unwrap(), None);
        assert_eq!(passed_count(some("42"), None, 42).unwrap(), None);
        assert_eq!(passed_count(some("42"), some("0"), 42).unwrap(), None);
        assert!(passed_count(some("x"), some("2"), 42).is_err());
        assert!(passed_count(some("42"), some("-1"), 42).is_err());
        assert!(passed_count(some("42"), some("100000"), 42).is_err());
    }

    #[test]
    fn ownership_defaults_to_supervised() {
        assert_eq!(parse_ownership(None, 2), vec![true, true]);
        assert_eq!(
            parse_ownership(Some("owned,supervised"), 3),
            vec![false, true, true]
        );
        assert_eq!(parse_ownership(Some("bogus"), 1), vec![true]);
    }

    #[test]
    fn names_are_split_padded_and_unescaped() {
        assert_eq!(
            parse_names(Some("web:admin"), 3),
            vec![Some("web".into()), Some("admin".into()), None]
        );
        assert_eq!(parse_names(None, 1), vec![None]);
        assert_eq!(parse_names(Some(":b"), 2), vec![None, Some("b".into())]);
        let name = "127.0.0.1:0%x";
        let escaped = escape_name(name);
        assert!(!escaped.contains(':'));
        assert_eq!(parse_names(Some(&escaped), 1), vec![Some(name.into())]);
    }
}
