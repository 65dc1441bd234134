//! A bound listening socket, and [`AcceptSource`], the seam the acceptor pulls connections from.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::task::{ready, Context, Poll};

use tokio::net::{TcpListener, UnixListener};

use crate::net::bind::{self, BindError, BindOptions, UnixFile};
use crate::{Endpoint, PeerAddr, Stream};

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

/// Where the acceptor gets connections from. [`Listener`] is the real one; tests implement it to inject
/// faults (an `accept(2)` that fails with a chosen errno), and other sources (inherited sockets, in-memory
/// pipes) can plug in the same way.
///
/// Errors must carry the raw OS error (`io::Error::from_raw_os_error`), because the acceptor classifies by
/// errno: `io::ErrorKind` folds many distinct errors (EPROTO, ENONET, …) into `Uncategorized`.
pub trait AcceptSource: Send + 'static {
    /// Polls for the next connection, as `accept(2)` would return it.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, PeerAddr)>>;

    /// The address this source listens on.
    fn local_addr(&self) -> io::Result<ListenAddr>;

    /// Drain stage one: stop new clients from reaching the queue, keeping the clients already in it
    /// (see [`drain`](crate::drain)). Best effort; the default does nothing.
    fn refuse_new(&mut self) {}

    /// How many clients wait in the queue, where the OS reports it (a Unix socket: 1 for "some").
    fn queued(&self) -> Option<usize> {
        None
    }

    /// The socket now belongs to another process too (a restart's successor): leave it as it is when
    /// this source is dropped. The default does nothing.
    fn release(&mut self) {}

    /// Another source on the same socket (the same queue), for a second accept loop
    /// ([`ServerBuilder::acceptors`](crate::ServerBuilder::acceptors)). The default: unsupported.
    fn try_clone_source(&self) -> io::Result<Self>
    where
        Self: Sized,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this accept source cannot be cloned",
        ))
    }
}

/// A bound, listening socket (TCP or Unix), registered with the tokio runtime.
pub struct Listener {
    socket: Socket,
    addr: ListenAddr,
    /// Set `TCP_NODELAY` on each accepted socket (only where the OS does not inherit it from the listener).
    nodelay_per_accept: bool,
    /// Removes our socket file on drop. Declared after `socket` so the socket closes first.
    unix_file: Option<UnixFile>,
    /// Another process (a supervisor such as systemd) keeps its own descriptor for this socket and its
    /// queue: a drain leaves the socket alone, since closing ours loses nothing.
    supervised: bool,
}

enum Socket {
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
        })
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

impl AcceptSource for Listener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, PeerAddr)>> {
        match &self.socket {
            Socket::Tcp(l) => {
                let (stream, peer) = ready!(l.poll_accept(cx))?;
                if self.nodelay_per_accept {
                    // Best effort: a failure here is no reason to drop the connection.
                    let _ = stream.set_nodelay(true);
                }
                Poll::Ready(Ok((Stream::Tcp(stream), PeerAddr::Tcp(peer))))
            }
            Socket::Unix(l) => {
                let (stream, _peer) = ready!(l.poll_accept(cx))?;
                Poll::Ready(Ok((Stream::Unix(stream), PeerAddr::Unix)))
            }
        }
    }

    fn local_addr(&self) -> io::Result<ListenAddr> {
        Ok(self.addr.clone())
    }

    fn try_clone_source(&self) -> io::Result<Self> {
        self.try_clone()
    }

    fn refuse_new(&mut self) {
        let tcp = matches!(self.socket, Socket::Tcp(_));
        let fd = self.as_raw_fd();
        refuse_new(fd, tcp, &mut self.unix_file, &self.addr, self.supervised);
    }

    fn release(&mut self) {
        Listener::release(self);
    }

    fn queued(&self) -> Option<usize> {
        match &self.socket {
            Socket::Tcp(l) => crate::drain::syn_filter::accept_queue_len(l).ok(),
            Socket::Unix(l) => any_pending(l).ok().map(usize::from),
        }
    }
}

/// Whether a client waits in a listener's queue: the listening socket polls readable then. (The length
/// of a Unix socket's queue is not reported; whether it is empty is all the pressure and the drain need.)
fn any_pending(listener: &impl AsRawFd) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, a zero timeout: poll(2) only reports the readiness.
    match unsafe { libc::poll(&mut poll, 1, 0) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Ok(poll.revents & libc::POLLIN != 0),
    }
}

/// Drain stage one on a listening socket (see [`AcceptSource::refuse_new`]): TCP drops bare SYNs, a Unix
/// path is unlinked; a supervisor's socket is left as it is.
fn refuse_new(
    fd: RawFd,
    tcp: bool,
    unix_file: &mut Option<UnixFile>,
    addr: &ListenAddr,
    supervised: bool,
) {
    if supervised {
        tracing::debug!(listener = %addr, "drain: socket kept by its supervisor, left as is");
        return;
    }
    let refused = match (tcp, unix_file, addr) {
        (true, _, _) => crate::drain::syn_filter::drop_new_syns(&fd),
        // Unlinked, the path refuses new clients (ENOENT); the socket and its queue stay.
        // Only if the path still names the file bound (or adopted): never another process's socket.
        (false, Some(file), _) => file.remove_now(),
        (false, None, ListenAddr::Unix(_)) => Err(io::Error::other(
            "the path named no socket file when this process took the socket; left alone",
        )),
        (false, None, _) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an abstract socket has no path to remove",
        )),
    };
    match refused {
        Ok(()) => tracing::debug!(listener = %addr, "drain: refusing new clients"),
        Err(e) => tracing::info!(
            listener = %addr,
            error = %e,
            "drain: cannot refuse new clients while the queue drains; a client arriving just before the close may be reset"
        ),
    }
}

/// A listening socket kept out of the runtime, for a process that holds it (to pass it on, and to
/// refuse new clients when draining) but never accepts from it: `lariat serve --workers`' supervisor.
/// Registered with the runtime, every new connection would wake that process for nothing (measured:
/// about a fifth of the server's CPU under churn).
pub struct ParkedListener {
    fd: OwnedFd,
    tcp: bool,
    addr: ListenAddr,
    /// Declared after `fd`: the socket closes before its file is removed.
    unix_file: Option<UnixFile>,
    supervised: bool,
}

impl fmt::Debug for ParkedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParkedListener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Listener {
    /// Takes the socket out of the runtime (see [`ParkedListener`]).
    pub fn park(self) -> io::Result<ParkedListener> {
        let Listener {
            socket,
            addr,
            unix_file,
            supervised,
            ..
        } = self;
        let (fd, tcp) = match socket {
            Socket::Tcp(l) => (OwnedFd::from(l.into_std()?), true),
            Socket::Unix(l) => (OwnedFd::from(l.into_std()?), false),
        };
        Ok(ParkedListener {
            fd,
            tcp,
            addr,
            unix_file,
            supervised,
        })
    }
}

impl ParkedListener {
    /// Where it listens.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// Whether another process (systemd) keeps the socket too.
    pub fn is_supervised(&self) -> bool {
        self.supervised
    }

    /// Drain stage one, as [`AcceptSource::refuse_new`] does for a listener: the clients already
    /// queued stay for the processes that accept from the socket.
    pub fn refuse_new(&mut self) {
        let fd = self.fd.as_raw_fd();
        refuse_new(
            fd,
            self.tcp,
            &mut self.unix_file,
            &self.addr,
            self.supervised,
        );
    }
}

impl AsFd for ParkedListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
