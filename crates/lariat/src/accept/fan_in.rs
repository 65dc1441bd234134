//! Several listeners behind one acceptor.
//!
//! An acceptor holds one slot under the cap while it waits in `accept(2)`. With one acceptor per listener,
//! an idle listener would sit on a slot that a busy one needs: with a cap of 2, two listeners and one live
//! connection, the busy listener's next client would wait forever. So a server polls all its listeners
//! from one acceptor, which holds at most one pending slot in all.

use std::io;
use std::task::{Context, Poll};

use crate::accept::classify::{classify, ErrorClass};
use crate::accept::AcceptError;
use crate::handshake::ListenerHandshake;
use crate::net::listener::ListenAddr;
use crate::net::source::AcceptSource;
use crate::{PeerAddr, Stream};

/// Polls each source in turn (starting after the last one that produced, for fairness). A source that
/// fails for good is dropped and remembered; the fan-in fails only when none is left.
pub(crate) struct FanIn<S> {
    sources: Vec<(S, ListenAddr)>,
    /// Each source's position in the list the server was given (sources that fail are removed).
    positions: Vec<usize>,
    next: usize,
    last: usize,
    failed: Vec<AcceptError>,
}

impl<S: AcceptSource> FanIn<S> {
    pub(crate) fn new(sources: Vec<S>) -> io::Result<Self> {
        let sources = sources
            .into_iter()
            .map(|s| s.local_addr().map(|addr| (s, addr)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(FanIn {
            positions: (0..sources.len()).collect(),
            sources,
            next: 0,
            last: 0,
            failed: Vec::new(),
        })
    }

    pub(crate) fn addrs(&self) -> Vec<ListenAddr> {
        self.sources.iter().map(|(_, a)| a.clone()).collect()
    }

    /// Each source's own handshake settings, by position.
    pub(crate) fn own_handshakes(&self) -> Vec<Option<ListenerHandshake>> {
        self.sources
            .iter()
            .map(|(s, _)| s.handshake().cloned())
            .collect()
    }

    /// The position (in the list the server was given) of the listener that produced the last
    /// connection: per-listener settings are looked up by it.
    pub(crate) fn last_position(&self) -> usize {
        self.last
    }

    /// The listeners that failed for good, with why.
    pub(crate) fn take_failures(&mut self) -> Vec<AcceptError> {
        std::mem::take(&mut self.failed)
    }
}

impl<S: AcceptSource> AcceptSource for FanIn<S> {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, PeerAddr)>> {
        let mut k = 0;
        while k < self.sources.len() {
            let i = (self.next + k) % self.sources.len();
            match self.sources[i].0.poll_accept(cx) {
                Poll::Pending => k += 1,
                Poll::Ready(Ok(accepted)) => {
                    self.next = i + 1;
                    self.last = self.positions[i];
                    return Poll::Ready(Ok(accepted));
                }
                Poll::Ready(Err(err)) if classify(&err) == ErrorClass::Fatal => {
                    let (_, addr) = self.sources.remove(i);
                    self.positions.remove(i);
                    if self.sources.is_empty() {
                        return Poll::Ready(Err(err));
                    }
                    tracing::error!(listener = %addr, error = %err, "listener failed for good; the others go on");
                    self.failed.push(AcceptError { addr, source: err });
                    // Index i now holds the next source: poll it without advancing k.
                }
                Poll::Ready(Err(err)) => {
                    self.next = i + 1;
                    return Poll::Ready(Err(err));
                }
            }
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<ListenAddr> {
        self.sources
            .first()
            .map(|(_, a)| a.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no listener left"))
    }

    fn refuse_new(&mut self) {
        for (source, _) in &mut self.sources {
            source.refuse_new();
        }
    }

    fn release(&mut self) {
        for (source, _) in &mut self.sources {
            source.release();
        }
    }

    /// The sum over the sources that report their queue; `None` when none does.
    fn queued(&self) -> Option<usize> {
        self.sources
            .iter()
            .filter_map(|(source, _)| source.queued())
            .reduce(|a, b| a + b)
    }
}
