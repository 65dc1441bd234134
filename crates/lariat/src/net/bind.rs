//! Turning an [`Endpoint`] into a listening socket, with the options a production server wants.
//!
//! * The backlog defaults to the system's `net.core.somaxconn` (Linux; `SOMAXCONN` elsewhere), not the 128
//!   that tokio and std use: with 128, a burst of 1,000 connects leaves most clients in SYN retries.
//! * `SO_REUSEADDR` always (restart without waiting out TIME_WAIT), `SO_REUSEPORT` on request.
//! * `TCP_NODELAY` is set on the listening socket. Linux copies it to every accepted socket (the child is a
//!   clone of the listener), which saves one `setsockopt` per connection; elsewhere it is set per accept.
//! * Unix sockets: a stale file (nothing listening) is replaced, a live one is an error and never clobbered,
//!   a path that is not a socket is an error, and the file is removed when the listener is dropped if it is
//!   still ours.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::Endpoint;

/// How to bind. The defaults suit a public server; every field is documented with its default.
#[derive(Debug, Clone)]
pub struct BindOptions {
    /// The `listen(2)` backlog. Default: `None`, meaning the system maximum (`net.core.somaxconn`).
    pub backlog: Option<u32>,
    /// Set `SO_REUSEPORT` so several sockets (or processes) can share the port. Default: false.
    pub reuse_port: bool,
    /// For IPv6 addresses: `Some(true)` accepts IPv6 only, `Some(false)` IPv4-mapped too, `None` leaves the
    /// system default (`net.ipv6.bindv6only`). Default: `None`.
    pub only_v6: Option<bool>,
    /// `TCP_NODELAY` on accepted connections. Default: true (servers answer small requests; Nagle delays them).
    pub nodelay: bool,
    /// Permission bits for a Unix socket file, e.g. `0o660`. Default: `None` (the umask decides).
    pub unix_mode: Option<u32>,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            backlog: None,
            reuse_port: false,
            only_v6: None,
            nodelay: true,
            unix_mode: None,
        }
    }
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A system call failed; `op` says which step.
    #[error("cannot {op} {endpoint}: {source}")]
    Io {
        /// The step that failed (`create a socket for`, `bind`, `listen on`, …).
        op: &'static str,
        /// The endpoint being bound.
        endpoint: Endpoint,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process is listening on this Unix socket path; lariat never replaces a live socket.
    #[error("{} is in use: a live server is listening on it (stop it, or choose another path)", path.display())]
    UnixInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; lariat never deletes it.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another process replaced the socket file while this one was binding it (two servers starting on one
    /// path at once); the other one is serving it.
    #[error("{} was replaced by another server while binding; it is serving the path now", path.display())]
    UnixReplaced {
        /// The socket path.
        path: PathBuf,
    },
    /// `unix:@name` was asked for on a system without abstract sockets.
    #[error("abstract Unix sockets (unix:@{name}) exist only on Linux and Android")]
    AbstractUnsupported {
        /// The abstract name.
        name: String,
    },
    /// A file mode was asked for an abstract socket, which has no file and so no permission bits:
    /// every local user (in the network namespace) may connect to it.
    #[error("unix:@{name} is an abstract socket: it has no file mode, and any local user may connect to it")]
    ModeOnAbstract {
        /// The abstract name.
        name: String,
    },
    /// Binding needs a tokio runtime to register the socket with.
    #[error("binding must happen inside a tokio runtime: {0}")]
    NoRuntime(#[source] io::Error),
}

/// The backlog used when none is given: `net.core.somaxconn` on Linux, else `SOMAXCONN`.
pub fn default_backlog() -> u32 {
    #[cfg(target_os = "linux")]
    if let Some(n) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        return n.max(1);
    }
    libc::SOMAXCONN as u32
}

fn io_err<'a>(
    op: &'static str,
    endpoint: &'a Endpoint,
) -> impl FnOnce(io::Error) -> BindError + 'a {
    move |source| BindError::Io {
        op,
        endpoint: endpoint.clone(),
        source,
    }
}

/// Creates, configures, binds and starts listening on a TCP socket. Returns a non-blocking std listener.
pub(crate) fn bind_tcp(
    addr: SocketAddr,
    opts: &BindOptions,
    endpoint: &Endpoint,
) -> Result<std::net::TcpListener, BindError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(io_err("create a socket for", endpoint))?;
    socket
        .set_reuse_address(true)
        .map_err(io_err("set SO_REUSEADDR on", endpoint))?;
    if opts.reuse_port {
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        socket
            .set_reuse_port(true)
            .map_err(io_err("set SO_REUSEPORT on", endpoint))?;
    }
    if let (SocketAddr::V6(_), Some(only)) = (addr, opts.only_v6) {
        socket
            .set_only_v6(only)
            .map_err(io_err("set IPV6_V6ONLY on", endpoint))?;
    }
    if opts.nodelay {
        // Inherited by accepted sockets on Linux; see the module docs.
        socket
            .set_nodelay(true)
            .map_err(io_err("set TCP_NODELAY on", endpoint))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(io_err("set non-blocking mode on", endpoint))?;
    socket
        .bind(&addr.into())
        .map_err(io_err("bind", endpoint))?;
    listen(&socket, opts, endpoint)?;
    Ok(socket.into())
}

/// Identity of the socket file we created (or adopted), so that dropping or draining the listener removes
/// our file and never one another process has put in its place.
#[derive(Debug)]
pub(crate) struct UnixFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// False once the path was removed or given up: drop and drain leave it alone.
    armed: bool,
    /// Whether dropping removes the file. Not for an adopted socket: if this process fails before it
    /// serves (a restart that does not happen), its predecessor still serves on the path.
    remove_on_drop: bool,
}

impl UnixFile {
    /// Removes the path now, if it still names our socket (a drain: new clients get `ENOENT` while the
    /// socket's queue is served). Nothing is left to remove on drop.
    pub(crate) fn remove_now(&mut self) -> io::Result<()> {
        let result = if self.is_ours() {
            std::fs::remove_file(&self.path)
        } else {
            Ok(())
        };
        self.disarm();
        result
    }

    /// The socket file at `path` as it is when a passed socket is adopted (from a predecessor, which
    /// disarmed its own record of it): a drain later removes the path only if it still names this
    /// file, never a socket another process bound there since. Dropping leaves it alone.
    pub(crate) fn adopted(path: &Path) -> io::Result<UnixFile> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a socket file", path.display()),
            ));
        }
        Ok(UnixFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            armed: true,
            remove_on_drop: false,
        })
    }

    /// Forgets the path: it belongs to another process now (a successor took the socket over).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Does the path still name the file we created?
    fn is_ours(&self) -> bool {
        self.armed
            && std::fs::symlink_metadata(&self.path)
                .map(|meta| meta.dev() == self.dev && meta.ino() == self.ino)
                .unwrap_or(false)
    }
}

impl Drop for UnixFile {
    fn drop(&mut self) {
        if self.remove_on_drop && self.is_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a Unix stream socket at `path`, replacing a stale socket file but never a live one.
///
/// The file's identity is recorded right after `bind` and the mode applied before `listen`, so the socket
/// is never reachable with looser permissions than asked. After `listen` the path must still be ours: two
/// servers starting on one path at once can both see it stale (a socket bound but not yet listening
/// refuses connections), and the loser would otherwise listen on an unlinked file. It fails instead.
/// A narrow window remains between `bind` and the first `stat`; closing it needs a lock file.
pub(crate) fn bind_unix_path(
    path: &Path,
    opts: &BindOptions,
    endpoint: &Endpoint,
) -> Result<(std::os::unix::net::UnixListener, UnixFile), BindError> {
    remove_if_stale(path, endpoint)?;
    let addr = SockAddr::unix(path).map_err(io_err("use the path", endpoint))?;
    let socket = unix_socket(endpoint)?;
    socket.bind(&addr).map_err(io_err("bind", endpoint))?;
    let meta = std::fs::symlink_metadata(path).map_err(io_err("stat", endpoint))?;
    // From here on, dropping `file` (also on error) removes the socket file if it is still ours.
    let file = UnixFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
        armed: true,
        remove_on_drop: true,
    };
    if let Some(mode) = opts.unix_mode {
        set_mode(&file, mode).map_err(io_err("set the mode of", endpoint))?;
    }
    listen(&socket, opts, endpoint)?;
    if !file.is_ours() {
        return Err(BindError::UnixReplaced {
            path: path.to_owned(),
        });
    }
    Ok((socket.into(), file))
}

/// Sets the mode of our socket file without following a link: a path swapped for a symlink after `bind`
/// must not lend our permissions to the file it points at. On Linux the path is opened with
/// `O_PATH | O_NOFOLLOW`, checked to be the socket file recorded at bind, and changed through that
/// descriptor (`/proc/self/fd`), so what is checked is what is changed.
fn set_mode(file: &UnixFile, mode: u32) -> io::Result<()> {
    let replaced = || {
        io::Error::other(format!(
            "{} is no longer the socket this process bound",
            file.path.display()
        ))
    };
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(file.path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid NUL-terminated path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))?;
        if !meta.file_type().is_socket() || meta.dev() != file.dev || meta.ino() != file.ino {
            return Err(replaced());
        }
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
            std::fs::Permissions::from_mode(mode),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Without O_PATH: check, then change; a swap in between remains possible.
        if !file.is_ours() {
            return Err(replaced());
        }
        std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(mode))
    }
}

/// Binds a Linux abstract Unix socket (no file).
pub(crate) fn bind_unix_abstract(
    name: &str,
    opts: &BindOptions,
    endpoint: &Endpoint,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    if opts.unix_mode.is_some() {
        return Err(BindError::ModeOnAbstract {
            name: name.to_owned(),
        });
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut raw = Vec::with_capacity(name.len() + 1);
        raw.push(0u8);
        raw.extend_from_slice(name.as_bytes());
        use std::os::unix::ffi::OsStrExt;
        let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&raw))
            .map_err(io_err("use the name", endpoint))?;
        listen_unix(&addr, opts, endpoint)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (opts, endpoint);
        Err(BindError::AbstractUnsupported {
            name: name.to_owned(),
        })
    }
}

fn listen_unix(
    addr: &SockAddr,
    opts: &BindOptions,
    endpoint: &Endpoint,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    let socket = unix_socket(endpoint)?;
    socket.bind(addr).map_err(io_err("bind", endpoint))?;
    listen(&socket, opts, endpoint)?;
    Ok(socket.into())
}

fn unix_socket(endpoint: &Endpoint) -> Result<Socket, BindError> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(io_err("create a socket for", endpoint))?;
    socket
        .set_nonblocking(true)
        .map_err(io_err("set non-blocking mode on", endpoint))?;
    Ok(socket)
}

fn listen(socket: &Socket, opts: &BindOptions, endpoint: &Endpoint) -> Result<(), BindError> {
    let backlog = opts.backlog.unwrap_or_else(default_backlog);
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(io_err("listen on", endpoint))
}

/// If `path` is a socket file nobody listens on, removes it. A live socket, or anything that is not a
/// socket, is an error.
fn remove_if_stale(path: &Path, endpoint: &Endpoint) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", endpoint)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    // Probe with a non-blocking connect: a blocking one would hang on a live server whose backlog is full.
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(io_err("probe", endpoint))?;
    probe
        .set_nonblocking(true)
        .map_err(io_err("probe", endpoint))?;
    let addr = SockAddr::unix(path).map_err(io_err("use the path", endpoint))?;
    match probe.connect(&addr) {
        Ok(()) => Err(BindError::UnixInUse {
            path: path.to_owned(),
        }),
        // Full backlog: somebody is listening.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Err(BindError::UnixInUse {
            path: path.to_owned(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!(path = %path.display(), "replacing stale unix socket file");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove the stale socket", endpoint)(e)),
            }
        }
        Err(e) => Err(io_err("probe the existing socket", endpoint)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backlog_reads_somaxconn() {
        let backlog = default_backlog();
        #[cfg(target_os = "linux")]
        {
            let sys: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(backlog, sys);
        }
        assert!(backlog >= 1);
    }

    #[test]
    fn the_mode_is_never_set_through_a_swapped_in_symlink() {
        let dir = std::env::temp_dir().join(format!("lariat-bind-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let endpoint = Endpoint::Unix(path.clone());
        let (_listener, file) = bind_unix_path(&path, &BindOptions::default(), &endpoint).unwrap();
        // Someone swaps the socket file for a link to a file of theirs before the mode is set.
        let target = dir.join("victim");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(set_mode(&file, 0o666).is_err());
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the link's target was changed");
        // And a different socket bound at the path is not ours either.
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(set_mode(&file, 0o666).is_err());
        drop(file);
        assert!(path.exists(), "another process's socket was removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_mode_for_an_abstract_socket_is_refused() {
        let opts = BindOptions {
            unix_mode: Some(0o600),
            ..BindOptions::default()
        };
        let endpoint = Endpoint::UnixAbstract("lariat-mode-test".into());
        let err = bind_unix_abstract("lariat-mode-test", &opts, &endpoint).unwrap_err();
        assert!(matches!(err, BindError::ModeOnAbstract { .. }), "{err}");
    }

    #[test]
    fn unix_non_socket_is_never_clobbered() {
        let dir = std::env::temp_dir().join(format!("lariat-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plain-file");
        std::fs::write(&path, b"precious").unwrap();
        let endpoint = Endpoint::Unix(path.clone());
        let err = bind_unix_path(&path, &BindOptions::default(), &endpoint).unwrap_err();
        assert!(matches!(err, BindError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
