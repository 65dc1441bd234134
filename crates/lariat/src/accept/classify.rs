//! Sorting `accept(2)` errors into what to do about them, by errno.
//!
//! `io::ErrorKind` is not enough: std maps EPROTO, ENONET, EHOSTDOWN and others to `Uncategorized`, and
//! groups EMFILE with unrelated errors. The lists follow accept(2) on Linux ("ERRORS" and "Error handling").

use std::io;

/// What the accept loop should do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The error concerns one queued connection (the peer went away, a pending network error). The next
    /// connection may already be queued: retry at once.
    PerConnection,
    /// The process or system is short of a resource. Accepting again at once would fail again: back off.
    Shortage(Shortage),
    /// The listening socket itself is unusable (closed, not a socket, not listening). The loop must end.
    Fatal,
    /// An error accept(2) does not document. Neither spin on it nor give up: back off as for a shortage.
    Unexpected,
}

/// Which resource ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// EMFILE: this process's open-file limit.
    ProcessFds,
    /// ENFILE: the system-wide open-file limit.
    SystemFds,
    /// ENOBUFS: socket buffer memory.
    Buffers,
    /// ENOMEM: kernel memory.
    Memory,
}

impl Shortage {
    /// Is the shortage about file descriptors (so that shedding with a reserved descriptor can help)?
    pub fn is_fds(self) -> bool {
        matches!(self, Shortage::ProcessFds | Shortage::SystemFds)
    }

    /// A hint for the operator naming the limit and how to raise it.
    pub fn hint(self) -> String {
        match self {
            Shortage::ProcessFds => {
                let limits = nofile_limits()
                    .map(|(soft, hard)| format!(" (RLIMIT_NOFILE soft {soft}, hard {hard})"))
                    .unwrap_or_default();
                format!(
                    "the process open-file limit is reached{limits}: raise it with `ulimit -n`, \
                     systemd `LimitNOFILE=`, or lower max_connections below it"
                )
            }
            Shortage::SystemFds => "the system-wide open-file table is full: raise `fs.file-max` \
                 (sysctl -w fs.file-max=N) or find the process holding descriptors"
                .to_owned(),
            Shortage::Buffers => "the kernel is out of socket buffer memory: check \
                 `net.ipv4.tcp_mem`, `net.core.rmem_max`/`wmem_max` and free memory"
                .to_owned(),
            Shortage::Memory => "the kernel is out of memory for new sockets: check free memory \
                 and `net.ipv4.tcp_mem`"
                .to_owned(),
        }
    }
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub fn nofile_limits() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    // rlim_t is u64 on Linux but not on every Unix.
    #[allow(clippy::unnecessary_cast)]
    (rc == 0).then_some((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Classifies an error returned by `accept(2)`.
pub fn classify(err: &io::Error) -> ErrorClass {
    let Some(code) = err.raw_os_error() else {
        // Not from the OS. tokio reports no such errors from accept; treat as unexpected rather than fatal.
        return match err.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {
                ErrorClass::PerConnection
            }
            _ => ErrorClass::Unexpected,
        };
    };
    classify_errno(code)
}

/// Classifies a raw errno value returned by `accept(2)`.
pub fn classify_errno(code: i32) -> ErrorClass {
    match code {
        // The connection went away before we took it, or a signal interrupted the call.
        libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::ETIMEDOUT => {
            ErrorClass::PerConnection
        }
        // A firewall (or LSM) refused this one connection.
        libc::EPERM => ErrorClass::PerConnection,
        // "Linux accept() passes already-pending network errors on the new socket as an error code from
        // accept()": these concern that connection, not the listener.
        libc::ENETDOWN
        | libc::EPROTO
        | libc::ENOPROTOOPT
        | libc::EHOSTDOWN
        | libc::EHOSTUNREACH
        | libc::EOPNOTSUPP
        | libc::ENETUNREACH => ErrorClass::PerConnection,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        libc::ENONET => ErrorClass::PerConnection,
        libc::EMFILE => ErrorClass::Shortage(Shortage::ProcessFds),
        libc::ENFILE => ErrorClass::Shortage(Shortage::SystemFds),
        libc::ENOBUFS => ErrorClass::Shortage(Shortage::Buffers),
        libc::ENOMEM => ErrorClass::Shortage(Shortage::Memory),
        libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT => ErrorClass::Fatal,
        _ => ErrorClass::Unexpected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_errno_has_its_class() {
        let per_connection = [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EPERM,
            libc::EINTR,
            libc::ETIMEDOUT,
            libc::ENETDOWN,
            libc::EPROTO,
            libc::ENOPROTOOPT,
            libc::EHOSTDOWN,
            libc::ENONET,
            libc::EHOSTUNREACH,
            libc::EOPNOTSUPP,
            libc::ENETUNREACH,
        ];
        for code in per_connection {
            let err = io::Error::from_raw_os_error(code);
            assert_eq!(classify(&err), ErrorClass::PerConnection, "{err}");
        }
        let shortage = [
            (libc::EMFILE, Shortage::ProcessFds),
            (libc::ENFILE, Shortage::SystemFds),
            (libc::ENOBUFS, Shortage::Buffers),
            (libc::ENOMEM, Shortage::Memory),
        ];
        for (code, kind) in shortage {
            let err = io::Error::from_raw_os_error(code);
            assert_eq!(classify(&err), ErrorClass::Shortage(kind), "{err}");
        }
        for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
            let err = io::Error::from_raw_os_error(code);
            assert_eq!(classify(&err), ErrorClass::Fatal, "{err}");
        }
        assert_eq!(classify_errno(libc::EDOM), ErrorClass::Unexpected);
    }

    #[test]
    fn io_error_kind_alone_would_lose_eproto() {
        // The reason this module classifies by errno: std gives EPROTO none of the kinds a kind-based
        // classifier would treat as per-connection, so such a loop would treat it as fatal or spin.
        let err = io::Error::from_raw_os_error(libc::EPROTO);
        assert!(!matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
                | io::ErrorKind::TimedOut
                | io::ErrorKind::PermissionDenied
        ));
        assert_eq!(classify(&err), ErrorClass::PerConnection);
    }

    #[test]
    fn hints_name_the_limit_and_the_fix() {
        let hint = Shortage::ProcessFds.hint();
        assert!(
            hint.contains("ulimit -n") && hint.contains("LimitNOFILE="),
            "{hint}"
        );
        assert!(hint.contains("RLIMIT_NOFILE soft"), "{hint}");
        assert!(Shortage::SystemFds.hint().contains("fs.file-max"));
    }
}
