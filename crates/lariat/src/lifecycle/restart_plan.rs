//! What a restart passes on, and how a successor is started with it.

use std::os::fd::AsFd;

use crate::restart::{spawn_successor, PassOn, RestartError, RestartOptions, Successor};

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
        spawn_successor(&self.sockets, &self.opts)
    }
}
