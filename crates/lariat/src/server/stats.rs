//! Server-wide counters. Relaxed atomics: each is an independent tally, read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Live counters, shared by the accept loops and connections of one server.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) accepted: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) connection_errors: AtomicU64,
    pub(crate) shortage_episodes: AtomicU64,
    pub(crate) shortage_errors: AtomicU64,
    pub(crate) paused_nanos: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) drain_forced: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    pub(crate) proxy_refused: AtomicU64,
    pub(crate) admission_refused: AtomicU64,
    pub(crate) tls_failed: AtomicU64,
    pub(crate) sniff_failed: AtomicU64,
    pub(crate) hook_refused: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) handshake_evicted: AtomicU64,
}

/// A point-in-time copy of a server's counters ([`ServerHandle::stats`](crate::ServerHandle::stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now (accepted minus closed).
    pub active: u64,
    /// Connections closed (by the handler, the peer, or [`close`](crate::ServerHandle::close_connection)).
    pub closed: u64,
    /// `accept(2)` errors that concerned one connection and were retried at once.
    pub connection_errors: u64,
    /// Resource-shortage episodes (a run of EMFILE/ENFILE/ENOBUFS/ENOMEM ended by a successful accept).
    pub shortage_episodes: u64,
    /// `accept(2)` calls that failed for a shortage (or an undocumented error) and were backed off.
    pub shortage_errors: u64,
    /// Time the accept loops spent paused for shortage.
    pub paused: Duration,
    /// Connections shed at descriptor exhaustion (accepted with the reserved descriptor and closed).
    pub shed: u64,
    /// Handlers that panicked.
    pub handler_panics: u64,
    /// Handlers that returned an error.
    pub handler_errors: u64,
    /// Bytes read from closed connections (live ones report theirs in the registry).
    pub bytes_in: u64,
    /// Bytes written to closed connections.
    pub bytes_out: u64,
    /// Connections a drain closed at its deadline (or when forced).
    pub drain_forced: u64,
    /// Connections closed for staying silent past the idle timeout.
    pub idle_closed: u64,
    /// Connections closed for a missing, slow, malformed or untrusted PROXY header.
    pub proxy_refused: u64,
    /// Connections refused by the admission rules (deny, allow, per-address limit).
    pub admission_refused: u64,
    /// TLS handshakes that failed (bad or no ClientHello, protocol error, peer closed).
    pub tls_failed: u64,
    /// Connections the protocol router could not place (no route matched and no fallback, or the peer
    /// closed before its first bytes told).
    pub sniff_failed: u64,
    /// Connections refused by the admission hook.
    pub hook_refused: u64,
    /// Connections closed because the handshake (PROXY header, protocol sniffing and TLS together) did
    /// not finish within the handshake timeout. Each is counted here only, not under its step.
    pub handshake_timeouts: u64,
    /// Connections closed in their handshake, past the grace period, to make room for queued clients
    /// while the cap was full (see [`ServerBuilder::handshake_grace`](crate::ServerBuilder::handshake_grace)).
    pub handshake_evicted: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        // Read `closed` before `accepted` so `active` never underflows.
        let closed = self.closed.load(Relaxed);
        let accepted = self.accepted.load(Relaxed);
        StatsSnapshot {
            accepted,
            active: accepted.saturating_sub(closed),
            closed,
            connection_errors: self.connection_errors.load(Relaxed),
            shortage_episodes: self.shortage_episodes.load(Relaxed),
            shortage_errors: self.shortage_errors.load(Relaxed),
            paused: Duration::from_nanos(self.paused_nanos.load(Relaxed)),
            shed: self.shed.load(Relaxed),
            handler_panics: self.handler_panics.load(Relaxed),
            handler_errors: self.handler_errors.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            drain_forced: self.drain_forced.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
            proxy_refused: self.proxy_refused.load(Relaxed),
            admission_refused: self.admission_refused.load(Relaxed),
            tls_failed: self.tls_failed.load(Relaxed),
            sniff_failed: self.sniff_failed.load(Relaxed),
            hook_refused: self.hook_refused.load(Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Relaxed),
            handshake_evicted: self.handshake_evicted.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
