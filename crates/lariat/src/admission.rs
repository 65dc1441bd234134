//! Admission: which peers may connect at all (allow and deny lists by network) and how many connections
//! one address may hold. Checked in the accept loop right after `accept`, before any task or buffer
//! exists for the connection: a refused one is closed at once and counted, and the log says so at most
//! once a second, so a flood of refusals cannot flood the log.
//!
//! It judges the socket's peer (for a connection behind a load balancer, the balancer).
//!
//! An [`AdmissionHook`] is the application's own check (seed 003's "application-level acceptance"): it
//! runs later, in the connection's task after the PROXY header and the TLS handshake, so it sees the real
//! client and the SNI name, and it may answer a refused client before closing.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use ipnet::IpNet;

use crate::{Connection, PeerAddr};

/// Who may connect, and how many connections per address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// If not empty, only peers in these networks are admitted.
    pub allow: Vec<IpNet>,
    /// Peers in these networks are refused (deny wins over allow).
    pub deny: Vec<IpNet>,
    /// The most connections one peer address may hold at once.
    pub max_per_ip: Option<u32>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its address is in a denied network.
    #[error("address denied")]
    Denied,
    /// Its address is in no allowed network.
    #[error("address not allowed")]
    NotAllowed,
    /// Its address already holds the most connections allowed.
    #[error("too many connections from this address")]
    PerIpLimit,
}

/// The application's admission check: `Ok` admits the connection, `Err` closes it (counted as
/// `hook_refused`, logged at most once a second) before the handler runs. Runs in the connection's task,
/// within the handshake timeout; it should decide quickly and must not block.
pub type AdmissionHook = Arc<dyn Fn(&Connection) -> Result<(), Reject> + Send + Sync>;

/// A refusal by an [`AdmissionHook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Why, for the log.
    pub reason: String,
    /// Written to the client before the close (e.g. `"-ERR busy\r\n"`), if set.
    pub reply: Option<Bytes>,
}

impl Reject {
    /// A refusal with this reason and no reply.
    pub fn new(reason: impl Into<String>) -> Reject {
        Reject {
            reason: reason.into(),
            reply: None,
        }
    }

    /// Also tells the client, with these bytes, before closing.
    pub fn with_reply(mut self, reply: impl Into<Bytes>) -> Reject {
        self.reply = Some(reply.into());
        self
    }
}

/// Lets a kind of log line through at most once a second, whatever the rate of events.
#[derive(Debug)]
pub(crate) struct LogLimit {
    last_ms: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit {
            last_ms: AtomicU64::new(NEVER),
        }
    }
}

impl LogLimit {
    /// True at most once per second.
    pub(crate) fn allow(&self, now_ms: u64) -> bool {
        let last = self.last_ms.load(Relaxed);
        (last == NEVER || now_ms >= last.saturating_add(1000))
            && self
                .last_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
    }
}

/// The admission rules and the per-address counts of one server.
#[derive(Debug)]
pub(crate) struct Gate {
    rules: Admission,
    per_ip: DashMap<IpAddr, u32>,
    log: LogLimit,
}

impl Gate {
    pub(crate) fn new(rules: Admission) -> Gate {
        Gate {
            rules,
            per_ip: DashMap::new(),
            log: LogLimit::default(),
        }
    }

    /// Judges a freshly accepted peer. With a per-address limit, every judged TCP peer is counted
    /// (refused ones too) and [`release`](Self::release) uncounts it when its connection closes.
    pub(crate) fn admit(&self, peer: &PeerAddr) -> Result<(), Refusal> {
        let PeerAddr::Tcp(addr) = peer else {
            return Ok(());
        };
        // IPv4-mapped IPv6 addresses count as their IPv4 address.
        let ip = addr.ip().to_canonical();
        if self.rules.max_per_ip.is_some() {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        if self.rules.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Refusal::Denied);
        }
        if !self.rules.allow.is_empty() && !self.rules.allow.iter().any(|n| n.contains(&ip)) {
            return Err(Refusal::NotAllowed);
        }
        if let Some(max) = self.rules.max_per_ip {
            if self.per_ip.get(&ip).is_some_and(|n| *n > max) {
                return Err(Refusal::PerIpLimit);
            }
        }
        Ok(())
    }

    /// A connection judged by [`admit`](Self::admit) closed.
    pub(crate) fn release(&self, peer: &PeerAddr) {
        if self.rules.max_per_ip.is_none() {
            return;
        }
        if let PeerAddr::Tcp(addr) = peer {
            let ip = addr.ip().to_canonical();
            self.per_ip.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    /// True at most once per second: whether to log this refusal.
    pub(crate) fn should_log(&self, now_ms: u64) -> bool {
        self.log.allow(now_ms)
    }
}

/// `LogLimit::last_ms` before the first event.
const NEVER: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerAddr {
        PeerAddr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn deny_wins_allow_restricts() {
        let gate = Gate::new(Admission {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.0.0.66/32".parse().unwrap()],
            max_per_ip: None,
        });
        assert_eq!(gate.admit(&peer("10.1.2.3:1")), Ok(()));
        assert_eq!(gate.admit(&peer("10.0.0.66:1")), Err(Refusal::Denied));
        assert_eq!(gate.admit(&peer("192.0.2.1:1")), Err(Refusal::NotAllowed));
        assert_eq!(gate.admit(&PeerAddr::Unix), Ok(()));
    }

    #[test]
    fn per_ip_counts_and_releases() {
        let gate = Gate::new(Admission {
            max_per_ip: Some(2),
            ..Admission::default()
        });
        let a = peer("192.0.2.1:1");
        assert_eq!(gate.admit(&a), Ok(()));
        assert_eq!(gate.admit(&peer("[::ffff:192.0.2.1]:2")), Ok(()));
        assert_eq!(gate.admit(&a), Err(Refusal::PerIpLimit));
        assert_eq!(gate.admit(&peer("192.0.2.2:1")), Ok(()));
        // The refused one closes, then one of the first two: room for one more.
        gate.release(&a);
        gate.release(&a);
        assert_eq!(gate.admit(&a), Ok(()));
        for _ in 0..10 {
            gate.release(&a);
        }
        assert!(gate
            .per_ip
            .get(&"192.0.2.1".parse::<IpAddr>().unwrap())
            .is_none());
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let gate = Gate::new(Admission::default());
        assert!(
            gate.should_log(0),
            "the first refusal is logged, even in the first second"
        );
        assert!(!gate.should_log(999));
        assert!(gate.should_log(5_000));
        assert!(!gate.should_log(5_500));
        assert!(gate.should_log(6_000));
    }
}
