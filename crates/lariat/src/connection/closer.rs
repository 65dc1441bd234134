//! Closing a connection from outside the tasks that hold it (close by id, the idle sweep, a drain's
//! deadline): `shutdown(2)` both ways on its socket, so every holder at once — the handler, a write half
//! moved into a task of its own, a duplicate of the descriptor — sees the end (reads get EOF, writes
//! fail) and drops it. Aborting the handler's task alone would leave such holders with an open socket.
//!
//! The registry keeps the socket's descriptor *number*, not a duplicate: a duplicate would double the
//! descriptors per connection and keep the socket open after its owner is done with it. A bare number
//! could name another connection's socket once the owner closed it and `accept` reused the number, so
//! the owner withdraws it before closing the descriptor, waiting out a shutdown in progress: a shutdown either runs
//! while the owner still holds the descriptor open, or finds nothing to shut.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire};

/// A connection's socket as the registry can reach it: one word (it sits in every registry entry), a
/// state in the high half and the descriptor number in the low one. `Busy` is a lock held for one
/// system call on the descriptor; whoever finds it waits (yielding) for that call to end.
#[derive(Debug)]
pub(crate) struct Closer(AtomicU64);

/// No descriptor is known: the owner took the raw stream (`Connection::into_parts`) or closed it.
const WITHDRAWN: u64 = 0;
/// The owner holds the descriptor open.
const OPEN: u64 = 1;
/// A call on the descriptor is in progress; the owner holds it open meanwhile.
const BUSY: u64 = 2;
/// Shut down by [`Closer::shut_down`]; stays so (a connection is closed once).
const SHUT: u64 = 3;

/// Flags beside the state, kept by every transition. They live here because the registry entry sits
/// at an allocation step and the connection's task at a task-cell step: one more field in either
/// costs every idle connection 16 or 128 bytes.
///
/// The admission rules counted this connection under its peer's address, so closing it uncounts it
/// (see `Connection::admit`).
pub(crate) const COUNTED: u64 = 1 << 63;
/// The connection's task waits in `Connection::readable_or_offer`, its waker in the server's
/// hand-over table, so closing it removes that.
pub(crate) const PARKED: u64 = 1 << 62;

fn word(state: u64, fd: RawFd) -> u64 {
    (state << 32) | u64::from(fd as u32)
}

/// The state and the descriptor, without the flags.
fn split(word: u64) -> (u64, RawFd) {
    ((word >> 32) & 0b11, word as u32 as RawFd)
}

fn flags(word: u64) -> u64 {
    word & (COUNTED | PARKED)
}

/// What [`Closer::shut_down`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// The socket was shut down now.
    Done,
    /// It had been shut down before.
    Already,
    /// No descriptor is registered.
    NoSocket,
}

impl Closer {
    pub(crate) fn new(fd: Option<RawFd>) -> Closer {
        Closer(AtomicU64::new(fd.map_or(WITHDRAWN, |fd| word(OPEN, fd))))
    }

    /// Moves from `OPEN` to `to` and returns the descriptor, waiting out a
    /// `BUSY` holder; `Err(state)` when the state is neither.
    fn take_open(&self, to: u64) -> Result<RawFd, u64> {
        loop {
            let current = self.0.load(Acquire);
            match split(current) {
                (OPEN, fd) => {
                    // Only `BUSY` keeps the number: a withdrawn one is forgotten.
                    let next = flags(current)
                        | if to == BUSY {
                            word(BUSY, fd)
                        } else {
                            word(to, 0)
                        };
                    if self
                        .0
                        .compare_exchange(current, next, AcqRel, Acquire)
                        .is_ok()
                    {
                        return Ok(fd);
                    }
                }
                (BUSY, _) => std::thread::yield_now(),
                (state, _) => return Err(state),
            }
        }
    }

    /// The owner will close (or give away) the descriptor: forget its number, after any call on it
    /// in progress. A shut socket stays marked shut.
    pub(crate) fn withdraw(&self) {
        let _ = self.take_open(WITHDRAWN);
    }

    /// The owner holds `fd` open again (a stream rebuilt around the same socket, say after TLS).
    pub(crate) fn register(&self, fd: RawFd) {
        let _ = self.0.fetch_update(AcqRel, Acquire, |current| {
            (split(current).0 == WITHDRAWN).then(|| flags(current) | word(OPEN, fd))
        });
    }

    /// Sets `flag` ([`COUNTED`] or [`PARKED`]); it stays set.
    pub(crate) fn set_flag(&self, flag: u64) {
        self.0.fetch_or(flag, AcqRel);
    }

    /// Whether `flag` was set.
    pub(crate) fn has_flag(&self, flag: u64) -> bool {
        self.0.load(Acquire) & flag == flag
    }

    /// Sets the state and descriptor, keeping the flags (another thread may set one meanwhile).
    fn set(&self, state: u64, fd: RawFd) {
        let _ = self.0.fetch_update(AcqRel, Acquire, |current| {
            Some(flags(current) | word(state, fd))
        });
    }

    /// Shuts the socket down both ways, once. With no descriptor registered, `other_way` says the
    /// caller closes the connection by other means (aborting its task): it is then marked closed too,
    /// so it is counted once.
    pub(crate) fn shut_down(&self, other_way: bool) -> Shutdown {
        match self.take_open(BUSY) {
            Ok(fd) => {
                // `BUSY` keeps the owner from closing `fd` until this returns. An error (the peer
                // already gone: ENOTCONN) leaves nothing to shut either way.
                // SAFETY: shutdown(2) on a descriptor the owner holds open; no memory is touched.
                let _ = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                self.set(SHUT, 0);
                Shutdown::Done
            }
            Err(SHUT) => Shutdown::Already,
            Err(_) => {
                if other_way
                    && self
                        .0
                        .fetch_update(AcqRel, Acquire, |current| {
                            (split(current).0 == WITHDRAWN).then(|| flags(current) | word(SHUT, 0))
                        })
                        .is_err()
                {
                    // Shut (or registered) in between: ask again.
                    return self.shut_down(other_way);
                }
                Shutdown::NoSocket
            }
        }
    }

    /// True once [`shut_down`](Self::shut_down) shut the socket.
    pub(crate) fn is_shut(&self) -> bool {
        split(self.0.load(Acquire)).0 == SHUT
    }

    /// Runs `f` on the descriptor while the owner holds it open (`BUSY` keeps it so); `None` when no
    /// descriptor is registered or it was shut down. `f` must be one short system call.
    pub(crate) fn with_fd<R>(&self, f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> R) -> Option<R> {
        let fd = self.take_open(BUSY).ok()?;
        /// Puts the descriptor back however `f` ends, so the owner never waits on a `BUSY` left behind.
        struct Reopen<'a>(&'a Closer, RawFd);
        impl Drop for Reopen<'_> {
            fn drop(&mut self) {
                self.0.set(OPEN, self.1);
            }
        }
        let _reopen = Reopen(self, fd);
        // SAFETY: the owner holds `fd` open, and cannot close it while the state is `BUSY`.
        Some(f(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn shuts_once_and_never_after_withdraw() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let closer = Closer::new(Some(a.as_raw_fd()));
        assert_eq!(closer.shut_down(false), Shutdown::Done);
        let mut buf = [0u8; 1];
        assert_eq!(b.read(&mut buf).unwrap(), 0, "the peer reads EOF");
        assert_eq!(closer.shut_down(false), Shutdown::Already);
        closer.withdraw();
        assert!(closer.is_shut());

        let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
        let closer = Closer::new(Some(c.as_raw_fd()));
        closer.withdraw();
        assert_eq!(closer.shut_down(false), Shutdown::NoSocket);
        assert!(closer.with_fd(|_| ()).is_none());
        closer.register(c.as_raw_fd());
        assert!(closer.with_fd(|_| ()).is_some());
        closer.withdraw();
        assert_eq!(closer.shut_down(true), Shutdown::NoSocket);
        assert_eq!(closer.shut_down(true), Shutdown::Already, "counted once");
    }

    #[test]
    fn the_counted_flag_survives_every_transition() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let closer = Closer::new(Some(a.as_raw_fd()));
        assert!(!closer.has_flag(COUNTED));
        closer.set_flag(COUNTED);
        assert!(
            closer.with_fd(|_| ()).is_some(),
            "still open with the flag set"
        );
        closer.withdraw();
        closer.register(a.as_raw_fd());
        assert!(closer.has_flag(COUNTED));
        assert_eq!(closer.shut_down(false), Shutdown::Done);
        let mut buf = [0u8; 1];
        assert_eq!(b.read(&mut buf).unwrap(), 0, "the peer reads EOF");
        assert!(closer.is_shut() && closer.has_flag(COUNTED));
        assert_eq!(closer.shut_down(false), Shutdown::Already);
    }
}
