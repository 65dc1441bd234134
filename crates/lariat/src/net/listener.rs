//! A bound listening socket, registered with the runtime.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use crate::handshake::ListenerHandshake;
use crate::net::bind::{self, BindError, BindOptions, UnixFile};
use crate::Endpoint;

/// Where a listener actually listens: for TCP the real port, even when port 0 was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
    /// A Linux abstract Unix socket name.
    UnixAbstract(String),
}

impl fmt::Display for ListenAddr {
    /// `tcp://127.0.0.1:7878`, `unix:/run/app.sock`, `unix:@name`: the same text [`Endpoint`] parses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::UnixAbstract(name) => write!(f, "unix:@{name}"),
        }
    }
}

impl ListenAddr {
    /// The TCP address, if this is a TCP listener.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            _ => None,
        }
    }
}

/// A bound, listening socket (TCP or Unix), registered with the tokio runtime.
pub struct Listener {
    pub(super) socket: Socket,
    pub(super) addr: ListenAddr,
    /// Set `TCP_NODELAY` on each accepted socket (only where the OS does not inherit it from the listener).
    pub(super) nodelay_per_accept: bool,
    /// Removes our socket file on drop. Declared after `socket` so the socket closes first.
    pub(super) unix_file: Option<UnixFile>,
    /// Another process (a supervisor such as systemd) keeps its own descriptor for this socket and its
    /// queue: a drain leaves the socket alone, since closing ours loses nothing.
    pub(super) supervised: bool,
    /// This listener's own handshake settings, if it has any.
    pub(super) handshake: Option<ListenerHandshake>,
}

pub(super) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Listener {
    /// Another descriptor for this listening socket (same queue), registered with the runtime on its
    /// own, for a second accept loop. The clone leaves the socket to the original: it never removes
    /// the socket file and a drain's `refuse_new` on it does nothing (the original's does it for
    /// both). Must be called inside a tokio runtime.
    pub fn try_clone(&self) -> io::Result<Listener> {
        let socket = match &self.socket {
            Socket::Tcp(l) => {
                let std = std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?);
                std.set_nonblocking(true)?;
                Socket::Tcp(TcpListener::from_std(std)?)
            }
            Socket::Unix(l) => {
                let std = std::os::unix::net::UnixListener::from(l.as_fd().try_clone_to_owned()?);
                std.set_nonblocking(true)?;
                Socket::Unix(UnixListener::from_std(std)?)
            }
        };
        Ok(Listener {
            socket,
            addr: self.addr.clone(),
            nodelay_per_accept: self.nodelay_per_accept,
            unix_file: None,
            supervised: true,
            handshake: self.handshake.clone(),
        })
    }

    /// This listener with its own handshake settings (see [`ListenerHandshake`]): its connections get
    /// these instead of the server-wide PROXY and TLS settings. Clones made by
    /// [`try_clone`](Self::try_clone) carry them too.
    pub fn with_handshake(mut self, settings: ListenerHandshake) -> Listener {
        self.handshake = Some(settings);
        self
    }

    /// Binds with [`BindOptions::default`]. Must be called inside a tokio runtime.
    pub fn bind(endpoint: &Endpoint) -> Result<Listener, BindError> {
        Listener::bind_with(endpoint, &BindOptions::default())
    }

    /// Binds with the given options. Must be called inside a tokio runtime.
    pub fn bind_with(endpoint: &Endpoint, opts: &BindOptions) -> Result<Listener, BindError> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let std = bind::bind_tcp(*addr, opts, endpoint)?;
                let tokio = TcpListener::from_std(std).map_err(BindError::NoRuntime)?;
                let local = tokio.local_addr().map_err(|source| BindError::Io {
                    op: "read the address of",
                    endpoint: endpoint.clone(),
                    source,
                })?;
                Ok(Listener {
                    socket: Socket::Tcp(tokio),
                    addr: ListenAddr::Tcp(local),
                    nodelay_per_accept: opts.nodelay && !cfg!(target_os = "linux"),
                    unix_file: None,
                    supervised: false,
                    handshake: None,
                })
            }
            Endpoint::Unix(path) => {
                let (std, file) = bind::bind_unix_path(path, opts, endpoint)?;
                let tokio = UnixListener::from_std(std).map_err(BindError::NoRuntime)?;
                Ok(Listener {
                    socket: Socket::Unix(tokio),
                    addr: ListenAddr::Unix(path.clone()),
                    nodelay_per_accept: false,
                    unix_file: Some(file),
                    supervised: false,
                    handshake: None,
                })
            }
            Endpoint::UnixAbstract(name) => {
                let std = bind::bind_unix_abstract(name, opts, endpoint)?;
                let tokio = UnixListener::from_std(std).map_err(BindError::NoRuntime)?;
                Ok(Listener {
                    socket: Socket::Unix(tokio),
                    addr: ListenAddr::UnixAbstract(name.clone()),
                    nodelay_per_accept: false,
                    unix_file: None,
                    supervised: false,
                    handshake: None,
                })
            }
        }
    }

    /// The address this listener is bound to; for TCP port 0, the port the kernel chose.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// True when another process (a supervisor such as systemd) keeps its own descriptor for this
    /// socket; a drain then leaves the socket alone, and a restart passes that on.
    pub fn is_supervised(&self) -> bool {
        self.supervised
    }

    /// Wraps a listening socket passed by another process (see [`activation`](crate::activation)); it
    /// must already be non-blocking. `supervised`: the passer keeps its own descriptor (systemd), so a
    /// drain leaves the socket and its path alone. Otherwise (a lariat predecessor that handed over and
    /// exits) the socket is ours like one we bound: a drain may filter it and unlink its path.
    pub(crate) fn adopt(fd: OwnedFd, supervised: bool) -> io::Result<Listener> {
        let socket = socket2::Socket::from(fd);
        let local = socket.local_addr()?;
        if let Some(addr) = local.as_socket() {
            let tokio = TcpListener::from_std(socket.into())?;
            return Ok(Listener {
                socket: Socket::Tcp(tokio),
                addr: ListenAddr::Tcp(addr),
                nodelay_per_accept: !cfg!(target_os = "linux"),
                unix_file: None,
                supervised,
                handshake: None,
            });
        }
        let addr = if let Some(path) = local.as_pathname() {
            ListenAddr::Unix(path.to_owned())
        } else {
            #[cfg(target_os = "linux")]
            let name = local
                .as_abstract_namespace()
                .map(|name| String::from_utf8_lossy(name).into_owned());
            #[cfg(not(target_os = "linux"))]
            let name: Option<String> = None;
            ListenAddr::UnixAbstract(name.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "an unnamed Unix socket")
            })?)
        };
        // The path's file as it is now, so a drain removes that file and not one bound there later.
        // No claim on the path yet: if this process fails before it serves (a restart that does not
        // happen), the predecessor still serves on that path, so dropping must not remove it. A file
        // left by a crash is stale and the next bind replaces it.
        let unix_file = match &addr {
            ListenAddr::Unix(path) if !supervised => match UnixFile::adopted(path) {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::warn!(listener = %addr, error = %e, "adopted a socket whose path names no socket file; a drain will leave the path alone");
                    None
                }
            },
            _ => None,
        };
        let tokio = UnixListener::from_std(socket.into())?;
        Ok(Listener {
            socket: Socket::Unix(tokio),
            addr,
            nodelay_per_accept: false,
            unix_file,
            supervised,
            handshake: None,
        })
    }

    /// Gives the socket up to another process that shares it (a successor in a hitless restart): from
    /// now on dropping or draining this listener leaves the socket's path and filters alone.
    pub(crate) fn release(&mut self) {
        self.supervised = true;
        if let Some(file) = &mut self.unix_file {
            file.disarm();
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match &self.socket {
            Socket::Tcp(l) => l.as_raw_fd(),
            Socket::Unix(l) => l.as_raw_fd(),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::source::AcceptSource;
    use crate::Stream;
    use std::future::poll_fn;

    #[tokio::test]
    async fn a_drain_leaves_another_process_socket_at_an_adopted_path() {
        let dir = std::env::temp_dir().join(format!("lariat-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        // A predecessor's socket, passed on and adopted as owned (not supervised).
        let passed = std::os::unix::net::UnixListener::bind(&path).unwrap();
        passed.set_nonblocking(true).unwrap();
        let mut adopted = Listener::adopt(OwnedFd::from(passed), false).unwrap();
        // Since then, another process has bound its own socket at the path.
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        AcceptSource::refuse_new(&mut adopted);
        assert!(
            path.exists(),
            "the drain unlinked a socket this process never had"
        );
        drop(adopted);
        assert!(path.exists());
        // The adopted socket's own file is removed by a drain, as before.
        std::fs::remove_file(&path).unwrap();
        let passed = std::os::unix::net::UnixListener::bind(&path).unwrap();
        passed.set_nonblocking(true).unwrap();
        let mut adopted = Listener::adopt(OwnedFd::from(passed), false).unwrap();
        AcceptSource::refuse_new(&mut adopted);
        assert!(!path.exists(), "the drain left the adopted socket's path");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn port_zero_reports_the_real_port() {
        let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().tcp().unwrap();
        assert_ne!(addr.port(), 0);
        assert!(listener
            .local_addr()
            .to_string()
            .starts_with("tcp://127.0.0.1:"));
        std::net::TcpStream::connect(addr).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_on_linux() {
        let mut listener = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().tcp().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (stream, _) = poll_fn(|cx| listener.poll_accept(cx)).await.unwrap();
        match stream {
            Stream::Tcp(s) => assert!(s.nodelay().unwrap(), "TCP_NODELAY not inherited"),
            _ => unreachable!("a TCP listener accepts TCP streams"),
        }
    }

    #[tokio::test]
    async fn ipv6_loopback_with_port_zero() {
        // Skip quietly where the machine has no IPv6 loopback.
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            return;
        }
        let listener = Listener::bind(&"[::1]:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().tcp().unwrap();
        assert!(addr.is_ipv6());
        assert_ne!(addr.port(), 0);
    }

    #[tokio::test]
    async fn unix_stale_file_is_replaced_and_live_one_refused() {
        let dir = std::env::temp_dir().join(format!("lariat-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);

        // A stale file: std leaves the socket file behind when the listener is dropped.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let endpoint = Endpoint::Unix(path.clone());
        let listener = Listener::bind(&endpoint).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();

        // A live one: binding again must fail and leave the first listener working.
        let err = Listener::bind(&endpoint).unwrap_err();
        assert!(matches!(err, BindError::UnixInUse { .. }), "{err}");
        std::os::unix::net::UnixStream::connect(&path).unwrap();

        // Dropping our listener removes our file.
        drop(listener);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_successors_socket_file_is_never_removed() {
        let dir = std::env::temp_dir().join(format!("lariat-successor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let ours = Listener::bind(&Endpoint::Unix(path.clone())).unwrap();
        // Someone else takes the path over (a restart that unlinked and rebound it).
        std::fs::remove_file(&path).unwrap();
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(path.exists(), "dropping our listener removed their socket");
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(theirs);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unix_mode_is_applied() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lariat-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.sock");
        let opts = BindOptions {
            unix_mode: Some(0o600),
            ..BindOptions::default()
        };
        let _listener = Listener::bind_with(&Endpoint::Unix(path.clone()), &opts).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(_listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn unix_abstract_binds_without_a_file() {
        let name = format!("lariat-test-{}", std::process::id());
        let listener = Listener::bind(&Endpoint::UnixAbstract(name.clone())).unwrap();
        assert_eq!(listener.local_addr().to_string(), format!("unix:@{name}"));
    }
}
