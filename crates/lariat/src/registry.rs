//! The live connection registry (seed 002's "children list"): who is connected, since when, how much they
//! sent, and a way to close one by id.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::task::AbortHandle;

use crate::shared::Shared;
use crate::PeerAddr;

/// What the registry keeps per live connection. Shared (one `Arc`) between the registry and the
/// [`Connection`](crate::Connection), which counts its bytes here.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// The server this connection belongs to: the guard reaches the cap, the registry and the counters
    /// through it, so a `Connection` carries one pointer instead of two (smaller task per idle connection).
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: PeerAddr,
    /// Milliseconds from the registry's epoch to the accept: half the size of an `Instant`, and the
    /// entry is allocated once per connection.
    pub(crate) started_ms: u64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// The task serving the connection, when lariat spawned it; closing aborts it, which drops the socket.
    pub(crate) task: OnceLock<AbortHandle>,
    /// Kept by the idle sweep only (see `idle.rs`): bytes in + out at the last sweep, and since when
    /// they have not moved (ms from the registry's epoch).
    pub(crate) swept_bytes: AtomicU64,
    pub(crate) quiet_since_ms: AtomicU64,
    /// The PROXY header, when one was read (boxed: most connections have none).
    pub(crate) proxy: OnceLock<Box<ProxyInfo>>,
    /// The admission gate counted this connection under its peer (the reported one: see
    /// `admission::judge`), so closing it must uncount it.
    pub(crate) gate_counted: AtomicBool,
}

/// A connection's PROXY header and the peer it reports.
#[derive(Debug)]
pub(crate) struct ProxyInfo {
    pub(crate) header: crate::proxy::ProxyHeader,
    /// The client the header names, when it names one (not for `LOCAL`/`UNKNOWN`).
    pub(crate) peer: Option<PeerAddr>,
}

impl Entry {
    /// The peer to report: the client a PROXY header named, else the socket's peer.
    pub(crate) fn reported_peer(&self) -> &PeerAddr {
        self.proxy
            .get()
            .and_then(|p| p.peer.as_ref())
            .unwrap_or(&self.peer)
    }
}

/// A snapshot of one live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id, unique within its server.
    pub id: u64,
    /// The peer's address.
    pub peer: PeerAddr,
    /// Time since it was accepted.
    pub age: Duration,
    /// Bytes read from the peer so far.
    pub bytes_in: u64,
    /// Bytes written to the peer so far.
    pub bytes_out: u64,
}

/// Why [`Registry::close`] did not close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    /// No live connection has this id (it may have closed already).
    #[error("no live connection with id {0}")]
    NotFound(u64),
    /// The connection is served by a task lariat did not spawn (for example under `axum::serve`).
    #[error(
        "connection {0} is served by a task lariat does not own, so it cannot be closed from here"
    )]
    NotOwned(u64),
}

/// The live connections of one server, sharded so accept loops on different threads rarely contend.
#[derive(Debug)]
pub struct Registry {
    map: DashMap<u64, Arc<Entry>>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            map: DashMap::new(),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Registry {
    /// Registers a new connection of `shared`'s server and returns its entry.
    pub(crate) fn insert(&self, peer: PeerAddr, shared: Arc<Shared>) -> Arc<Entry> {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let now = self.now_ms();
        let entry = Arc::new(Entry {
            id,
            shared,
            peer,
            started_ms: now,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            task: OnceLock::new(),
            swept_bytes: AtomicU64::new(0),
            quiet_since_ms: AtomicU64::new(now),
            proxy: OnceLock::new(),
            gate_counted: AtomicBool::new(false),
        });
        self.map.insert(id, entry.clone());
        entry
    }

    /// The connections whose byte counters have not moved for more than `timeout_ms` (by the sweeps'
    /// account: a connection that moved since the last sweep starts a new quiet period now).
    pub(crate) fn idle_longer_than(&self, now_ms: u64, timeout_ms: u64) -> Vec<u64> {
        let mut idle = Vec::new();
        for e in self.map.iter() {
            let bytes = e.bytes_in.load(Relaxed) + e.bytes_out.load(Relaxed);
            if e.swept_bytes.swap(bytes, Relaxed) != bytes {
                e.quiet_since_ms.store(now_ms, Relaxed);
            } else if now_ms.saturating_sub(e.quiet_since_ms.load(Relaxed)) > timeout_ms {
                idle.push(*e.key());
            }
        }
        idle
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// How long ago `entry` was accepted (millisecond resolution).
    pub(crate) fn age(&self, entry: &Entry) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(entry.started_ms))
    }

    pub(crate) fn remove(&self, id: u64) {
        self.map.remove(&id);
    }

    /// The number of live connections.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no connection is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes read and written so far by the live connections, summed in one pass.
    #[cfg(feature = "metrics")]
    pub(crate) fn live_bytes(&self) -> (u64, u64) {
        self.map.iter().fold((0, 0), |(i, o), e| {
            (
                i.saturating_add(e.bytes_in.load(Relaxed)),
                o.saturating_add(e.bytes_out.load(Relaxed)),
            )
        })
    }

    /// A snapshot of every live connection, oldest first.
    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut list: Vec<ConnectionInfo> = self
            .map
            .iter()
            .map(|e| ConnectionInfo {
                id: *e.key(),
                peer: e.reported_peer().clone(),
                age: self.age(e.value()),
                bytes_in: e.bytes_in.load(Relaxed),
                bytes_out: e.bytes_out.load(Relaxed),
            })
            .collect();
        list.sort_unstable_by_key(|c| c.id);
        list
    }

    /// Closes a live connection: its task is aborted, which drops the socket (the peer sees the close) and
    /// returns its slot under the cap.
    ///
    /// Aborting reaches the task lariat spawned for the connection: a handler that moved its `Connection`
    /// into a task of its own must watch for that itself. In the instant between accept and spawn a
    /// connection answers `NotOwned`; ask again.
    pub fn close(&self, id: u64) -> Result<(), CloseError> {
        let entry = self
            .map
            .get(&id)
            .map(|e| e.value().clone())
            .ok_or(CloseError::NotFound(id))?;
        let task = entry.task.get().ok_or(CloseError::NotOwned(id))?;
        task.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_removes() {
        let shared = Arc::new(Shared::new(10));
        let registry = &shared.registry;
        let a = registry.insert(PeerAddr::Unix, shared.clone());
        let b = registry.insert(
            PeerAddr::Tcp("127.0.0.1:9".parse().unwrap()),
            shared.clone(),
        );
        let (a_id, b_id) = (a.id, b.id);
        a.bytes_in.fetch_add(5, Relaxed);
        let list = registry.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].id, a_id);
        assert_eq!(list[0].bytes_in, 5);
        assert_eq!(list[1].peer, b.peer);
        registry.remove(a_id);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.close(a_id), Err(CloseError::NotFound(a_id)));
        assert_eq!(registry.close(b_id), Err(CloseError::NotOwned(b_id)));
    }
}
