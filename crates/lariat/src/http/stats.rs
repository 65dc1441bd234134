//! What the HTTP layer counts: requests, and why connections ended early.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Counters shared by every connection one [`Http`](super::Http) handler serves.
#[derive(Debug, Default)]
pub(crate) struct HttpStats {
    pub(crate) connections: AtomicU64,
    /// Requests handed to the service, added by each connection's [`Requests`].
    requests: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    pub(crate) drain_closed_idle: AtomicU64,
    pub(crate) drain_closed_after_answer: AtomicU64,
    pub(crate) goaway_sent: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) linger_timeouts: AtomicU64,
    pub(crate) handed_over: AtomicU64,
    pub(crate) hibernated: AtomicU64,
    pub(crate) slept: AtomicU64,
    pub(crate) woken: AtomicU64,
}

impl HttpStats {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HttpStatsSnapshot {
        let requests = self.requests.load(Relaxed);
        HttpStatsSnapshot {
            connections: self.connections.load(Relaxed),
            requests,
            header_timeouts: self.header_timeouts.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
            drain_closed_idle: self.drain_closed_idle.load(Relaxed),
            drain_closed_after_answer: self.drain_closed_after_answer.load(Relaxed),
            goaway_sent: self.goaway_sent.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            linger_timeouts: self.linger_timeouts.load(Relaxed),
            handed_over: self.handed_over.load(Relaxed),
            hibernated: self.hibernated.load(Relaxed),
            slept: self.slept.load(Relaxed),
            woken: self.woken.load(Relaxed),
        }
    }
}

/// One connection's way to the request counter of its handler's [`HttpStats`].
///
/// One locked add per request on a counter every connection shares. A counter per connection,
/// registered with the handler and summed when read, was measured: it saved no measurable CPU per
/// request (one uncontended locked add is about 20 cycles of several microseconds), and its
/// allocation, kept by every sleeping connection, raised their resident memory.
#[derive(Debug)]
pub(crate) struct Requests {
    stats: Arc<HttpStats>,
}

impl Requests {
    pub(crate) fn new(stats: Arc<HttpStats>) -> Requests {
        Requests { stats }
    }

    /// The handler's counters.
    pub(crate) fn stats(&self) -> &Arc<HttpStats> {
        &self.stats
    }

    /// One more request handed to the service.
    #[inline]
    pub(crate) fn add_one(&self) {
        self.stats.requests.fetch_add(1, Relaxed);
    }
}

/// A copy of an [`Http`](super::Http) handler's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpStatsSnapshot {
    /// Connections served.
    pub connections: u64,
    /// Requests handed to the service (HTTP/1 requests and HTTP/2 streams).
    pub requests: u64,
    /// HTTP/1 connections closed because a request head was not complete within the header timeout
    /// (slow or stalled header senders).
    pub header_timeouts: u64,
    /// Connections closed after the keep-alive timeout with no request in progress.
    pub idle_closed: u64,
    /// HTTP/1 connections closed by a drain while idle between requests (after the drain's quiet
    /// period, with nothing waiting in the socket).
    pub drain_closed_idle: u64,
    /// HTTP/1 answers sent with `Connection: close` because the server was draining.
    pub drain_closed_after_answer: u64,
    /// HTTP/2 connections sent a graceful GOAWAY (drain or keep-alive timeout).
    pub goaway_sent: u64,
    /// Connections that ended with a protocol error (malformed request, oversized head, bad frames).
    pub protocol_errors: u64,
    /// Closed connections whose peer kept sending past the linger time (the socket was then closed with
    /// bytes unread).
    pub linger_timeouts: u64,
    /// HTTP/1 connections moved to a restart's successor while idle between requests (they are not
    /// closed: the successor answers their next request).
    pub handed_over: u64,
    /// Times an idle HTTP/1 connection hibernated (hyper's connection dropped until its next bytes; see
    /// [`HttpOptions::hibernate_after`](super::HttpOptions::hibernate_after)).
    pub hibernated: u64,
    /// Of those, times the connection slept in the server's parking lot (no task, no tokio
    /// registration) rather than in its task (TLS connections, or during a drain or a restart).
    pub slept: u64,
    /// Times a sleeping connection woke (bytes, its deadline, a forced close, the drain, a restart).
    pub woken: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_live_and_ended_connections_count_once() {
        let stats = Arc::new(HttpStats::default());
        let a = Requests::new(stats.clone());
        let b = Requests::new(stats.clone());
        a.add_one();
        a.add_one();
        b.add_one();
        assert_eq!(stats.snapshot().requests, 3);
        drop(a);
        assert_eq!(stats.snapshot().requests, 3);
        b.add_one();
        drop(b);
        assert_eq!(stats.snapshot().requests, 4);
    }

    #[test]
    fn a_read_while_connections_end_never_loses_or_doubles_a_request() {
        let stats = Arc::new(HttpStats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let conn = Requests::new(stats.clone());
                        for _ in 0..3 {
                            conn.add_one();
                        }
                    }
                })
            })
            .collect();
        let mut last = 0;
        while !threads.iter().all(|t| t.is_finished()) {
            let now = stats.snapshot().requests;
            assert!(now >= last, "the count went back from {last} to {now}");
            last = now;
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(stats.snapshot().requests, 4 * 500 * 3);
    }
}
