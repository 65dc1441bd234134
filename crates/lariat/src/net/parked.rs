//! [`ParkedListener`]: a listening socket held outside the runtime.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::bind::UnixFile;
use super::listener::{ListenAddr, Listener, Socket};
use super::source::refuse_new;

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

    /// Drain stage one, as [`AcceptSource::refuse_new`](crate::AcceptSource::refuse_new) does for a listener: the clients already
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
