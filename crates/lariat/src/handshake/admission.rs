//! Admission: which peers may connect at all (allow and deny lists by network) and how many connections
//! one address may hold. Checked in the accept loop right after `accept`, before any task or buffer
//! exists for the connection: a refused one is closed at once and counted, and the log says so at most
//! once a second, so a flood of refusals cannot flood the log.
//!
//! It judges the client: the socket's peer, or, on a listener that reads PROXY headers, the client the
//! header names (judged in the connection's task right after the header, since the socket's peer is
//! only the load balancer there). IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), in rules and in
//! peers alike, are their IPv4 address. The per-address limit keys an IPv6 client by its network
//! ([`Admission::ipv6_prefix`], /64 by default): one host usually holds a whole /64, so counting /128s
//! would let it open 2^64 times the limit.
//!
//! An admission hook ([`ServerBuilder::admission_hook`](crate::ServerBuilder::admission_hook)) is the
//! application's own check (application-level acceptance): it
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// If not empty, only peers in these networks are admitted.
    pub allow: Vec<IpNet>,
    /// Peers in these networks are refused (deny wins over allow).
    pub deny: Vec<IpNet>,
    /// The most connections one peer address (an IPv6 peer: its network, see `ipv6_prefix`) may hold
    /// at once.
    pub max_per_ip: Option<u32>,
    /// For the per-address limit, IPv6 peers in one network of this prefix length count as one
    /// address. Default [`DEFAULT_IPV6_PREFIX`] (64); 128 counts each address apart.
    pub ipv6_prefix: u8,
    /// If not empty, only processes running as these users (uids, from `SO_PEERCRED`) may connect to
    /// the Unix listeners. An abstract socket (`unix:@name`) has no file permissions, so this is the
    /// only way to keep other local users out of one. Default: empty (anyone the file's mode admits).
    pub unix_uids: Vec<u32>,
}

/// The default [`Admission::ipv6_prefix`]: a /64, the usual allocation to one host or one home.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl Default for Admission {
    fn default() -> Self {
        Admission {
            allow: Vec::new(),
            deny: Vec::new(),
            max_per_ip: None,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            unix_uids: Vec::new(),
        }
    }
}

impl Admission {
    /// True when these rules admit everyone without counting (nothing to check).
    pub(crate) fn is_open(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.max_per_ip.is_none()
            && self.unix_uids.is_empty()
    }
}

/// A network as peers are compared with it: an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the
/// IPv4 network it maps (`10.0.0.0/8`), since peers are compared by their IPv4 address.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
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
    /// A Unix peer running as a user not in [`Admission::unix_uids`] (or whose user is unknown).
    #[error("the connecting process's user is not allowed")]
    UnixUser,
}

/// The application's admission check: `Ok` admits the connection, `Err` closes it (counted as
/// `hook_refused`, logged at most once a second) before the handler runs. Runs in the connection's task,
/// within the handshake timeout; it should decide quickly and must not block.
pub(crate) type AdmissionHook = Arc<dyn Fn(&Connection) -> Result<(), Reject> + Send + Sync>;

/// A refusal by an admission hook ([`ServerBuilder::admission_hook`](crate::ServerBuilder::admission_hook)).
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
    pub(crate) fn new(mut rules: Admission) -> Gate {
        for net in rules.allow.iter_mut().chain(rules.deny.iter_mut()) {
            *net = canonical_net(*net);
        }
        rules.ipv6_prefix = rules.ipv6_prefix.min(128);
        Gate {
            rules,
            per_ip: DashMap::new(),
            log: LogLimit::default(),
        }
    }

    /// The key a peer is counted under: IPv4 as is (mapped ones too), IPv6 by its network.
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.rules.ipv6_prefix)
                .map(|net| IpAddr::V6(net.network()))
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        }
    }

    /// Judges a peer. `Ok(true)` when it was counted under the per-address limit, so that
    /// [`release`](Self::release) must uncount it when its connection closes; a refused peer is never
    /// left counted.
    pub(crate) fn admit(&self, peer: &PeerAddr) -> Result<bool, Refusal> {
        let PeerAddr::Tcp(addr) = peer else {
            return Ok(false);
        };
        // IPv4-mapped IPv6 addresses count as their IPv4 address.
        let ip = addr.ip().to_canonical();
        if self.rules.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Refusal::Denied);
        }
        if !self.rules.allow.is_empty() && !self.rules.allow.iter().any(|n| n.contains(&ip)) {
            return Err(Refusal::NotAllowed);
        }
        let Some(max) = self.rules.max_per_ip else {
            return Ok(false);
        };
        let mut count = self.per_ip.entry(self.key(ip)).or_insert(0);
        if *count >= max {
            drop(count);
            self.uncount(ip, 0);
            return Err(Refusal::PerIpLimit);
        }
        *count += 1;
        Ok(true)
    }

    /// Judges a Unix peer by the user its process runs as (`None`: unknown).
    pub(crate) fn admit_unix_user(&self, uid: Option<u32>) -> Result<(), Refusal> {
        if self.rules.unix_uids.is_empty() {
            return Ok(());
        }
        match uid {
            Some(uid) if self.rules.unix_uids.contains(&uid) => Ok(()),
            _ => Err(Refusal::UnixUser),
        }
    }

    /// A connection counted by [`admit`](Self::admit) closed.
    pub(crate) fn release(&self, peer: &PeerAddr) {
        if let PeerAddr::Tcp(addr) = peer {
            self.uncount(addr.ip(), 1);
        }
    }

    /// Takes `n` off `ip`'s count, forgetting the key at 0 (so the map holds only live addresses).
    fn uncount(&self, ip: IpAddr, n: u32) {
        self.per_ip.remove_if_mut(&self.key(ip), |_, count| {
            *count = count.saturating_sub(n);
            *count == 0
        });
    }

    /// True at most once per second: whether to log this refusal.
    pub(crate) fn should_log(&self, now_ms: u64) -> bool {
        self.log.allow(now_ms)
    }
}

/// Judges `peer` for the connection `entry` by the server's admission rules, if it has any: counts a
/// refusal (logged at most once a second). `Ok(true)`: the connection was counted under `peer`, so
/// closing it must uncount it (the caller marks its guard: see `Connection::mark_gate_counted`).
pub(crate) fn judge(
    entry: &crate::server::registry::Entry,
    peer: &PeerAddr,
) -> Result<bool, Refusal> {
    let Some(gate) = &entry.shared.gate else {
        return Ok(false);
    };
    gate.admit(peer)
        .map_err(|refusal| refused(gate, entry, peer, refusal))
}

/// Judges the process at the other end of a Unix socket by its user, if the rules name users: the
/// socket's own peer, before any PROXY header (which names a network client, not a process).
pub(crate) fn judge_socket(
    entry: &crate::server::registry::Entry,
    stream: &crate::Stream,
) -> Result<(), Refusal> {
    let (Some(gate), crate::Stream::Unix(unix)) = (&entry.shared.gate, stream) else {
        return Ok(());
    };
    if gate.rules.unix_uids.is_empty() {
        return Ok(());
    }
    let uid = unix.peer_cred().ok().map(|cred| cred.uid());
    gate.admit_unix_user(uid)
        .map_err(|refusal| refused(gate, entry, &entry.peer, refusal))
}

/// Counts a refusal and logs it (at most once a second).
fn refused(
    gate: &Gate,
    entry: &crate::server::registry::Entry,
    peer: &PeerAddr,
    refusal: Refusal,
) -> Refusal {
    crate::server::stats::Stats::add(&entry.shared.stats.admission_refused, 1);
    if gate.should_log(entry.shared.registry.now_ms()) {
        tracing::info!(peer = %peer, hop = %entry.peer, why = %refusal, "connection refused (logged at most once a second)");
    }
    refusal
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
            ..Admission::default()
        });
        assert_eq!(gate.admit(&peer("10.1.2.3:1")), Ok(false));
        assert_eq!(gate.admit(&peer("10.0.0.66:1")), Err(Refusal::Denied));
        assert_eq!(gate.admit(&peer("192.0.2.1:1")), Err(Refusal::NotAllowed));
        assert_eq!(gate.admit(&PeerAddr::Unix), Ok(false));
    }

    #[test]
    fn per_ip_counts_and_releases() {
        let gate = Gate::new(Admission {
            max_per_ip: Some(2),
            ..Admission::default()
        });
        let a = peer("192.0.2.1:1");
        assert_eq!(gate.admit(&a), Ok(true));
        assert_eq!(gate.admit(&peer("[::ffff:192.0.2.1]:2")), Ok(true));
        assert_eq!(gate.admit(&a), Err(Refusal::PerIpLimit));
        assert_eq!(gate.admit(&peer("192.0.2.2:1")), Ok(true));
        // A refused peer is not left counted: one of the first two closing makes room for one more.
        gate.release(&a);
        assert_eq!(gate.admit(&a), Ok(true));
        assert_eq!(gate.admit(&a), Err(Refusal::PerIpLimit));
        for _ in 0..10 {
            gate.release(&a);
        }
        assert!(gate
            .per_ip
            .get(&"192.0.2.1".parse::<IpAddr>().unwrap())
            .is_none());
    }

    #[test]
    fn ipv4_mapped_rules_match_ipv4_peers() {
        let gate = Gate::new(Admission {
            deny: vec![
                "::ffff:192.0.2.7/128".parse().unwrap(),
                "::ffff:198.51.100.0/120".parse().unwrap(),
            ],
            ..Admission::default()
        });
        assert_eq!(gate.admit(&peer("192.0.2.7:1")), Err(Refusal::Denied));
        assert_eq!(
            gate.admit(&peer("[::ffff:192.0.2.7]:1")),
            Err(Refusal::Denied)
        );
        assert_eq!(gate.admit(&peer("198.51.100.9:1")), Err(Refusal::Denied));
        assert_eq!(gate.admit(&peer("192.0.2.8:1")), Ok(false));
        // A plain IPv6 network is left as it is.
        assert_eq!(
            canonical_net("2001:db8::/32".parse().unwrap()),
            "2001:db8::/32".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn unix_peers_are_judged_by_their_user_when_users_are_named() {
        let open = Gate::new(Admission::default());
        assert_eq!(open.admit_unix_user(None), Ok(()));
        let gate = Gate::new(Admission {
            unix_uids: vec![1000, 0],
            ..Admission::default()
        });
        assert_eq!(gate.admit_unix_user(Some(1000)), Ok(()));
        assert_eq!(gate.admit_unix_user(Some(1001)), Err(Refusal::UnixUser));
        assert_eq!(gate.admit_unix_user(None), Err(Refusal::UnixUser));
    }

    #[test]
    fn ipv6_peers_count_by_their_network() {
        let gate = Gate::new(Admission {
            max_per_ip: Some(2),
            ..Admission::default()
        });
        assert_eq!(gate.admit(&peer("[2001:db8:1:2::1]:1")), Ok(true));
        assert_eq!(gate.admit(&peer("[2001:db8:1:2::ffff]:1")), Ok(true));
        assert_eq!(
            gate.admit(&peer("[2001:db8:1:2:dead:beef::9]:1")),
            Err(Refusal::PerIpLimit),
            "a third address in the same /64 counts against the same limit"
        );
        assert_eq!(gate.admit(&peer("[2001:db8:1:3::1]:1")), Ok(true));
        let per_address = Gate::new(Admission {
            max_per_ip: Some(1),
            ipv6_prefix: 128,
            ..Admission::default()
        });
        assert_eq!(per_address.admit(&peer("[2001:db8::1]:1")), Ok(true));
        assert_eq!(per_address.admit(&peer("[2001:db8::2]:1")), Ok(true));
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
