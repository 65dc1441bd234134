//! A plain connection taken apart to wait in the server's [parking lot](super::lot): its socket as a
//! std stream (no tokio registration: tokio's `ScheduledIo` and the task that would poll it are gone)
//! and its guard (registry entry, cap slot). The socket's descriptor number never changes, so the
//! registry's closer can still shut it down by force while it sleeps; that makes it readable, which
//! wakes it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::lot::{ParkingLot, Wake};
use super::{Connection, ConnectionGuard};
use crate::server::state::ServerState;
use crate::Stream;

/// The socket of a sleeping connection.
#[derive(Debug)]
enum StdSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// A connection asleep: a socket and its place in the server. Dropped, it closes like a `Connection`
/// (the closer withdrawn before the descriptor closes).
#[derive(Debug)]
pub(crate) struct Asleep {
    // Field order: the socket closes before the guard releases the slot.
    socket: StdSocket,
    guard: ConnectionGuard,
}

impl Drop for Asleep {
    fn drop(&mut self) {
        self.guard.meta.0.closer.withdraw();
    }
}

impl Connection {
    /// Takes a plain connection apart to sleep (`Ok(None)`: tokio could not let go of the socket, which
    /// is closed); a TLS one (whose session lives in user space) is given back. The descriptor does
    /// not change, so the closer keeps it.
    pub(crate) fn fall_asleep(self) -> Result<Option<Asleep>, Connection> {
        if matches!(self.stream, Stream::Tls(_)) {
            return Err(self);
        }
        // Withdrawn (by `into_parts`) while tokio lets go, which closes the socket if it fails.
        let (stream, guard) = self.into_parts();
        let fd = stream.raw_fd();
        let socket = match stream {
            Stream::Tcp(s) => s.into_std().map(StdSocket::Tcp),
            Stream::Unix(s) => s.into_std().map(StdSocket::Unix),
            Stream::Tls(_) => unreachable!("TLS connections were given back above"),
        };
        match socket {
            Ok(socket) => {
                guard.meta.0.closer.register(fd);
                // Its task ends: a handle kept on it would keep the task's memory while it sleeps.
                guard.meta.0.forget_task();
                Ok(Some(Asleep { socket, guard }))
            }
            Err(error) => {
                tracing::debug!(%error, "connection: could not fall asleep; closed");
                Ok(None)
            }
        }
    }
}

impl Asleep {
    /// The socket's descriptor, for the lot's epoll instance.
    pub(crate) fn fd(&self) -> RawFd {
        match &self.socket {
            StdSocket::Tcp(s) => s.as_raw_fd(),
            StdSocket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// The connection's registry entry (the task that wakes it records itself there).
    pub(crate) fn entry(&self) -> &std::sync::Arc<crate::server::registry::Entry> {
        &self.guard.meta.0
    }

    /// Rebuilds the connection (its socket registered with tokio again). Must run inside the runtime.
    pub(crate) fn wake(self) -> io::Result<Connection> {
        self.guard.meta.0.closer.withdraw();
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again (its `Drop`, withdrawing, was done above), and
        // each field is read out exactly once.
        let (socket, guard) =
            unsafe { (std::ptr::read(&this.socket), std::ptr::read(&this.guard)) };
        let stream = match socket {
            StdSocket::Tcp(s) => tokio::net::TcpStream::from_std(s).map(Stream::Tcp),
            StdSocket::Unix(s) => tokio::net::UnixStream::from_std(s).map(Stream::Unix),
        };
        stream.map(|stream| Connection::from_parts(stream, guard))
    }
}

/// A sleeping connection with what it needs to go on: the lot resumes it (on the lot's task; it
/// spawns its own).
pub(crate) trait Sleeper: Send {
    /// Called once: when it leaves the lot (`from_lot`), or at once when the lot refused it.
    fn resume(self: Box<Self>, why: Wake, from_lot: bool);
}

/// A server's parking lot (see [`lot`](super::lot)).
pub(crate) type Lot = ParkingLot<Box<dyn Sleeper>>;

impl ServerState {
    /// The server's parking lot, opened by the first connection that falls asleep (inside the
    /// runtime); `None` if the system refused an epoll instance (connections then hibernate in their
    /// tasks). The drain and the hand-over offer wake everything in it.
    pub(crate) fn lot(&self) -> Option<&Lot> {
        self.lot
            .get_or_init(|| {
                let signals = vec![self.drain.draining.clone(), self.handover.offer_token()];
                ParkingLot::new(
                    |sleeper: Box<dyn Sleeper>, why| sleeper.resume(why, true),
                    signals,
                )
                .map_err(|error| tracing::warn!(%error, "no parking lot for idle connections"))
                .ok()
            })
            .as_ref()
    }
}
