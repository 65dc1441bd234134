//! Shedding at descriptor exhaustion with a reserved descriptor (libuv's trick).
//!
//! When `accept(2)` fails with EMFILE/ENFILE the kernel keeps the connection queued, and by default lariat
//! leaves it there: it is served as soon as a descriptor frees, and nothing is lost. Some services prefer
//! to fail fast instead: the client learns at once that the server is full and can try another. For them,
//! the acceptor keeps one spare descriptor open (`/dev/null`); at exhaustion it closes the spare, accepts
//! queued connections one at a time into the freed slot and closes each cleanly (unread bytes are drained
//! first so the peer sees FIN, not RST), then reopens the spare.

use std::fs::File;
use std::task::{Context, Poll, Waker};

use crate::net::source::AcceptSource;
use crate::server::stats::Stats;
use crate::Stream;

/// At most this many connections are shed per exhaustion event, so shedding never starves the runtime.
const MAX_SHED_PER_ROUND: u64 = 256;
/// Unread bytes drained from a shed connection before closing it (beyond this, the peer may see RST).
const DRAIN_LIMIT: usize = 64 * 1024;

/// The spare descriptor.
#[derive(Debug)]
pub(crate) struct Reserve {
    spare: Option<File>,
}

impl Reserve {
    pub(crate) fn new() -> Self {
        Reserve {
            spare: open_spare(),
        }
    }

    /// Sheds what is queued on `source` using the spare descriptor. Returns how many were shed.
    pub(crate) fn shed<S: AcceptSource>(&mut self, source: &mut S, stats: &Stats) -> u64 {
        let Some(spare) = self.spare.take() else {
            // Lost the spare to a race earlier; try to get it back for next time.
            self.spare = open_spare();
            return 0;
        };
        drop(spare);
        let mut cx = Context::from_waker(Waker::noop());
        let mut shed = 0;
        while shed < MAX_SHED_PER_ROUND {
            match source.poll_accept(&mut cx) {
                Poll::Ready(Ok((stream, _peer))) => {
                    close_cleanly(stream);
                    shed += 1;
                }
                // Empty backlog, or the freed descriptor was taken by another thread.
                _ => break,
            }
        }
        self.spare = open_spare();
        if shed > 0 {
            Stats::add(&stats.shed, shed);
            tracing::debug!(shed, "shed queued connections at descriptor exhaustion");
        }
        shed
    }
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

fn close_cleanly(stream: Stream) {
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match stream.try_read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    drop(stream);
}
