//! What a restart passes on, and how a successor is started with it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::restart::{spawn_successor, Passed, RestartError, RestartOptions, Successor};
use crate::Listener;

/// A listening socket a restart passes on to the successor, under the name the successor finds it by
/// (`LISTEN_FDNAMES`, see [`activation::inherited`](crate::activation::inherited)).
///
/// It holds a duplicate of the socket, made when the lifecycle is set up: a listener the accept loop
/// drops (failed for good) then cannot leave a stale descriptor number behind. The duplicates are
/// closed as soon as no restart can follow (a stop), so a drained socket is not kept listening.
#[derive(Debug)]
pub struct PassOn {
    name: String,
    fd: OwnedFd,
    supervised: bool,
}

impl PassOn {
    /// `listener`, passed on as `name`. Fails only if the descriptor cannot be duplicated (the
    /// process's descriptor limit).
    pub fn new(name: impl Into<String>, listener: &Listener) -> io::Result<PassOn> {
        Ok(PassOn {
            name: name.into(),
            fd: listener.as_fd().try_clone_to_owned()?,
            supervised: listener.is_supervised(),
        })
    }
}

/// The successor to start on SIGHUP, and the sockets it gets.
#[derive(Debug)]
pub(super) struct RestartPlan {
    pub(super) opts: RestartOptions,
    pub(super) sockets: Vec<PassOn>,
}

impl RestartPlan {
    /// Keeps the sockets in the service manager's descriptor store, if it offers one (see
    /// [`activation::store_descriptors`](crate::activation::store_descriptors)).
    pub(super) fn store(&self) {
        let sockets: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = self
            .sockets
            .iter()
            .map(|p| (p.name.as_str(), p.fd.as_fd()))
            .collect();
        match crate::activation::store_descriptors(&sockets) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sockets = n,
                "listening sockets kept in the service manager's descriptor store (a crash keeps the accept queues)"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot keep the listening sockets in the descriptor store"),
        }
    }

    /// Starts the successor; it is not serving yet.
    pub(super) fn start(&self) -> Result<Successor, RestartError> {
        tracing::info!(program = %self.opts.program.display(), "SIGHUP: restarting");
        let passed: Vec<Passed<'_>> = self
            .sockets
            .iter()
            .map(|p| Passed {
                name: &p.name,
                fd: p.fd.as_fd(),
                supervised: p.supervised,
            })
            .collect();
        spawn_successor(&passed, &self.opts)
    }
}
