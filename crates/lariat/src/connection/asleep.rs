//! A connection taken apart to wait in the server's [parking lot](super::lot): its socket as a std
//! stream (no tokio registration: tokio's `ScheduledIo` and the task that would poll it are gone), its
//! guard (registry entry, cap slot) and, for a TLS 1.3 connection on lariat's record layer, that layer
//! at rest (keys, IVs, sequence numbers and rustls' key schedule: no AEAD object, no buffer). The socket's descriptor number never changes, so the
//! registry's closer can still shut it down by force while it sleeps; that makes it readable, which
//! wakes it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::lot::{ParkingLot, Wake};
use super::{Connection, ConnectionGuard};
use crate::server::state::ServerState;
use crate::tls::{Records, TlsInfo, TlsStream};
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
    /// A TLS connection's record layer (boxed: plain sleepers carry a pointer's worth).
    tls: Option<Box<TlsAsleep>>,
}

/// The TLS session of a sleeping connection.
#[derive(Debug)]
struct TlsAsleep {
    records: Records,
    info: Arc<TlsInfo>,
}

impl Drop for Asleep {
    fn drop(&mut self) {
        self.guard.meta.0.closer.withdraw();
    }
}

impl Connection {
    /// Takes a connection apart to sleep (`Ok(None)`: tokio could not let go of the socket, which is
    /// closed); a TLS one is given back unless its session is on lariat's record layer with nothing
    /// buffered (a TLS 1.2 session, or one kept in rustls, waits in its task). The descriptor does not
    /// change, so the closer keeps it.
    pub(crate) fn fall_asleep(self) -> Result<Option<Asleep>, Connection> {
        // Withdrawn (by `into_parts`) while tokio lets go, which closes the socket if it fails.
        let (stream, guard) = self.into_parts();
        let (stream, tls) = match stream {
            Stream::Tls(tls) => match tls.into_records() {
                Ok((io, records, info)) => (io, Some(Box::new(TlsAsleep { records, info }))),
                Err(tls) => return Err(Connection::from_parts(Stream::Tls(tls), guard)),
            },
            stream => (stream, None),
        };
        let fd = stream.raw_fd();
        let socket = match stream {
            Stream::Tcp(s) => s.into_std().map(StdSocket::Tcp),
            Stream::Unix(s) => s.into_std().map(StdSocket::Unix),
            Stream::Tls(_) => Err(io::Error::other("TLS over TLS")),
        };
        match socket {
            Ok(socket) => {
                guard.meta.0.closer.register(fd);
                // Its task ends: a handle kept on it would keep the task's memory while it sleeps.
                guard.meta.0.forget_task();
                Ok(Some(Asleep { socket, guard, tls }))
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
        let (socket, guard, tls) = unsafe {
            (
                std::ptr::read(&this.socket),
                std::ptr::read(&this.guard),
                std::ptr::read(&this.tls),
            )
        };
        let stream = match socket {
            StdSocket::Tcp(s) => tokio::net::TcpStream::from_std(s).map(Stream::Tcp),
            StdSocket::Unix(s) => tokio::net::UnixStream::from_std(s).map(Stream::Unix),
        };
        let stream = match (stream, tls) {
            (Ok(io), Some(tls)) => {
                let TlsAsleep { records, info } = *tls;
                Ok(Stream::Tls(Box::new(TlsStream::from_records(
                    io, records, info,
                ))))
            }
            (stream, _) => stream,
        };
        stream.map(|stream| Connection::from_parts(stream, guard))
    }
}

/// A sleeping connection with what it needs to go on: the lot resumes it (on the lot's task; it
/// spawns its own).
pub(crate) trait Sleeper: Send {
    /// Called once: when it leaves the lot (`from_lot`), or at once when the lot refused it; with
    /// the deadline it was parked with.
    fn resume(self: Box<Self>, why: Wake, from_lot: bool, deadline: Option<tokio::time::Instant>);
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
                    |sleeper: Box<dyn Sleeper>, why, deadline| sleeper.resume(why, true, deadline),
                    signals,
                )
                .map_err(|error| tracing::warn!(%error, "no parking lot for idle connections"))
                .ok()
            })
            .as_ref()
    }
}
