//! [`AcceptSource`], the seam the acceptor pulls connections from, and the [`Listener`]'s side of it:
//! accepting, refusing new clients in a drain, the queue's length.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{ready, Context, Poll};

use super::bind::UnixFile;
use super::listener::{ListenAddr, Listener, Socket};
use crate::handshake::ListenerHandshake;
use crate::{PeerAddr, Stream};

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

    /// This source's own handshake settings, replacing the server-wide PROXY and TLS ones (see
    /// [`ListenerHandshake`]). Default: none.
    fn handshake(&self) -> Option<&ListenerHandshake> {
        None
    }

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

    fn handshake(&self) -> Option<&ListenerHandshake> {
        self.handshake.as_ref()
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
pub(super) fn refuse_new(
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
