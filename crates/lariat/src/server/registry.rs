//! The live connection registry (the acceptor's list of its children): who is connected, since when, how much they
//! sent, and a way to close one by id.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use once_cell::race::OnceBox;
use std::time::{Duration, Instant};

use dashmap::DashSet;
use tokio::task::AbortHandle;

use crate::connection::closer::{Closer, Shutdown};
use crate::server::state::ServerState;
use crate::PeerAddr;

/// What the registry keeps per live connection. ServerState (one `Arc`) between the registry and the
/// [`Connection`](crate::Connection), which counts its bytes here.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// The server this connection belongs to: the guard reaches the cap, the registry and the counters
    /// through it, so a `Connection` carries one pointer instead of two (smaller task per idle connection).
    pub(crate) shared: Arc<ServerState>,
    pub(crate) peer: PeerAddr,
    /// Milliseconds from the registry's epoch to the accept: half the size of an `Instant`, and the
    /// entry is allocated once per connection.
    pub(crate) started_ms: u64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// The task serving the connection, when lariat spawned it; closing aborts it, which drops the socket.
    /// Emptied when the connection falls asleep in the parking lot: a handle keeps its task's memory
    /// allocated after the task ends (no larger than the `OnceLock` it replaced).
    task: Mutex<Option<AbortHandle>>,
    /// Kept by the idle sweep only (see `idle.rs`), packed in one word (see [`Sweep`]): what bytes
    /// in + out were at the last sweep, and since when they have not moved.
    sweep: AtomicU64,
    /// The PROXY header and the TLS handshake's outcome, when there were any (boxed: most connections
    /// have neither, and every idle connection carries an entry; a pointer-sized once-cell, where
    /// `OnceLock` would add a word and move the entry up a size class).
    pub(crate) extras: OnceBox<Extras>,
    /// The socket, as a forced close reaches it (see `closer.rs`).
    pub(crate) closer: Closer,
}

/// What a connection's set-up learned, each set once.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    pub(crate) proxy: OnceLock<ProxyInfo>,
    /// What the TLS handshake negotiated (kept here so every view of the connection, split or not,
    /// can report it; one copy, shared with the `TlsStream`).
    pub(crate) tls: OnceLock<std::sync::Arc<crate::tls::TlsInfo>>,
    /// What a connection handed over by a restart's predecessor brought with it.
    pub(crate) resumed: OnceLock<crate::handover::Resumed>,
    /// The name of the `Router` route serving it. A routed connection is not handed over at a
    /// restart (the successor's router would wait to sniff it again).
    pub(crate) routed: OnceLock<Arc<str>>,
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
        self.proxy()
            .and_then(|p| p.peer.as_ref())
            .unwrap_or(&self.peer)
    }

    pub(crate) fn proxy(&self) -> Option<&ProxyInfo> {
        self.extras.get()?.proxy.get()
    }

    /// Completes once the connection was closed by force (see `ServerState::forced_closes`).
    pub(crate) async fn closed_by_force(&self) {
        loop {
            let notified = self.shared.forced_closes.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the two is not missed.
            notified.as_mut().enable();
            if self.closer.is_shut() {
                return;
            }
            notified.await;
        }
    }

    /// Records the task lariat spawned to serve the connection (a forced close aborts it).
    pub(crate) fn set_task(&self, task: AbortHandle) {
        *self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
    }

    /// Forgets the task: it ends, and the connection sleeps with no task (its socket shut down by a
    /// forced close wakes it).
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    pub(crate) fn forget_task(&self) {
        self.task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }

    pub(crate) fn tls(&self) -> Option<&crate::tls::TlsInfo> {
        self.extras.get()?.tls.get().map(|info| &**info)
    }

    pub(crate) fn extras(&self) -> &Extras {
        self.extras
            .get_or_init(|| crate::memory::keep(Box::default))
    }
}

/// The idle sweep's record of a connection, in one word so the registry entry stays in jemalloc's
/// 128-byte size class: the low 32 bits of bytes in + out at the last sweep that saw them move, and
/// the low 32 bits of when that was (ms from the registry's epoch).
///
/// Both wrap. Bytes that moved by an exact multiple of 4 GiB between two sweeps look unmoved: for a
/// busy connection one chance in 2^32 per sweep of being taken for quiet since the last time it was
/// seen to move. The quiet time is computed modulo 2^32 ms and read as signed (up to 24.8 days), far
/// beyond any idle timeout the sweep serves (it caps them at `MAX_IDLE_TIMEOUT`): a connection is closed long
/// before its quiet time could wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sweep(u64);

impl Sweep {
    fn new(bytes: u64, now_ms: u64) -> Sweep {
        Sweep(((bytes as u32 as u64) << 32) | (now_ms as u32 as u64))
    }

    fn same_bytes(self, bytes: u64) -> bool {
        (self.0 >> 32) as u32 == bytes as u32
    }

    /// Milliseconds since the bytes last moved; 0 for a record newer than `now_ms` (a connection
    /// registered after the sweep read its clock, while the sweep walks the registry).
    ///
    /// The difference is taken modulo 2^32 ms and read as signed: a record up to 24.8 days old comes out
    /// right across the wrap, and one "from the future" is never taken for one 49 days old.
    fn quiet_for(self, now_ms: u64) -> u64 {
        let elapsed = (now_ms as u32).wrapping_sub(self.0 as u32) as i32;
        u64::try_from(elapsed).unwrap_or(0)
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
    /// The name of the [`Router`](crate::route::Router) route serving it: `None` without a router
    /// and while the router is still looking at the first bytes; the fallback route is named
    /// [`FALLBACK`](crate::route::FALLBACK).
    pub route: Option<Arc<str>>,
}

/// Why [`ServerHandle::close_connection`](crate::ServerHandle::close_connection) did not close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    /// No live connection has this id (it may have closed already).
    #[error("no live connection with id {0}")]
    NotFound(u64),
    /// The connection's raw stream was taken out ([`Connection::into_parts`](crate::Connection::into_parts))
    /// in a task lariat did not spawn, so lariat can neither shut its socket down nor abort its task.
    #[error(
        "connection {0} is served by a task lariat does not own, so it cannot be closed from here"
    )]
    NotOwned(u64),
}

/// A registry slot: the entry, found by its id (the key is the entry's own `id`: a slot is one pointer,
/// where a map would keep the id twice, 8 bytes more per connection in the table).
#[derive(Debug, Clone)]
struct ById(Arc<Entry>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    // As the id itself hashes: lookups by `&u64` go through `Borrow`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl std::borrow::Borrow<u64> for ById {
    fn borrow(&self) -> &u64 {
        &self.0.id
    }
}

/// The live connections of one server, sharded so accept loops on different threads rarely contend.
#[derive(Debug)]
pub(crate) struct Registry {
    map: DashSet<ById>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            map: DashSet::new(),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Registry {
    /// Registers a new connection of `shared`'s server, whose socket is `fd` (held open by the
    /// caller's `Connection`), and returns its entry.
    pub(crate) fn insert(
        &self,
        peer: PeerAddr,
        fd: Option<std::os::fd::RawFd>,
        shared: Arc<ServerState>,
    ) -> Arc<Entry> {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let now = self.now_ms();
        // The entry and its slot in the set live as long as the connection (see `memory`).
        crate::memory::keep(|| {
            let entry = Arc::new(Entry {
                id,
                shared,
                peer,
                started_ms: now,
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                task: Mutex::new(None),
                sweep: AtomicU64::new(Sweep::new(0, now).0),
                extras: OnceBox::new(),
                closer: Closer::new(fd),
            });
            self.map.insert(ById(entry.clone()));
            entry
        })
    }

    /// The connections whose byte counters have not moved for more than `timeout_ms` (by the sweeps'
    /// account: a connection that moved since the last sweep starts a new quiet period now).
    pub(crate) fn idle_longer_than(&self, now_ms: u64, timeout_ms: u64) -> Vec<u64> {
        let mut idle = Vec::new();
        for e in self.map.iter() {
            let e = &e.0;
            if e.closer.is_shut() {
                // Closed already, and counted then; its holders have yet to drop it.
                continue;
            }
            let bytes = e.bytes_in.load(Relaxed) + e.bytes_out.load(Relaxed);
            // One sweep task writes it: a load and a store.
            let last = Sweep(e.sweep.load(Relaxed));
            if !last.same_bytes(bytes) {
                e.sweep.store(Sweep::new(bytes, now_ms).0, Relaxed);
            } else if last.quiet_for(now_ms) > timeout_ms {
                idle.push(e.id);
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
            let e = &e.0;
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
            .map(|slot| {
                let e = &slot.0;
                ConnectionInfo {
                    id: e.id,
                    peer: e.reported_peer().clone(),
                    age: self.age(e),
                    bytes_in: e.bytes_in.load(Relaxed),
                    bytes_out: e.bytes_out.load(Relaxed),
                    route: e.extras.get().and_then(|x| x.routed.get().cloned()),
                }
            })
            .collect();
        list.sort_unstable_by_key(|c| c.id);
        list
    }

    /// Closes a live connection: its socket is shut down both ways, so every task holding it (the
    /// handler, a write half moved elsewhere) sees the end at once (reads get EOF, writes fail; the peer
    /// reads EOF), and the task lariat spawned for it is aborted. Its registry entry and slot under the
    /// cap are given back when the last holder drops the socket, which the holders do on those errors.
    ///
    /// Closing a connection that is already being closed does nothing more. A connection whose raw
    /// stream was taken out ([`Connection::into_parts`](crate::Connection::into_parts)) by a task lariat
    /// does not own answers `NotOwned`.
    pub fn close(&self, id: u64) -> Result<(), CloseError> {
        let entry = self.get(id)?;
        if Self::close_entry(&entry)? {
            entry.shared.forced_closes.notify_waiters();
        }
        Ok(())
    }

    /// Like [`close`](Self::close); `Ok(true)` when this call closed it, `Ok(false)` when an earlier
    /// one had (so callers count each connection once). The caller notifies `forced_closes` (once for
    /// a batch).
    pub(crate) fn close_once(&self, id: u64) -> Result<bool, CloseError> {
        Self::close_entry(&*self.get(id)?)
    }

    fn get(&self, id: u64) -> Result<Arc<Entry>, CloseError> {
        self.map
            .get(&id)
            .map(|e| e.0.clone())
            .ok_or(CloseError::NotFound(id))
    }

    fn close_entry(entry: &Entry) -> Result<bool, CloseError> {
        let task = entry
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = match entry.closer.shut_down(task.is_some()) {
            Shutdown::Done => true,
            Shutdown::Already => false,
            Shutdown::NoSocket if task.is_none() => return Err(CloseError::NotOwned(entry.id)),
            Shutdown::NoSocket => true,
        };
        if let Some(task) = &*task {
            task.abort();
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection, idle ones included, keeps an entry: with `Arc`'s two counts it must fit
    /// jemalloc's (and most allocators') 128-byte size class, not the 160-byte one.
    #[test]
    fn an_entry_fits_128_bytes_with_its_counts() {
        assert!(
            std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>() <= 128,
            "Entry is {} bytes",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn the_sweep_record_tells_moved_bytes_and_quiet_time() {
        let s = Sweep::new(1_000, 5_000);
        assert!(s.same_bytes(1_000));
        assert!(!s.same_bytes(1_001));
        assert_eq!(s.quiet_for(5_000), 0);
        assert_eq!(s.quiet_for(65_000), 60_000);
        // The clock past 2^32 ms since the epoch: the difference still comes out right.
        let late = Sweep::new(7, (1u64 << 32) - 10);
        assert_eq!(late.quiet_for((1u64 << 32) + 90), 100);
        // A connection registered while the sweep walks the registry (its record is newer than the
        // sweep's clock reading) has been quiet for no time, not for 49 days.
        let newer = Sweep::new(0, 5_010);
        assert_eq!(newer.quiet_for(5_000), 0);
        let newer_across_the_wrap = Sweep::new(0, 3);
        assert_eq!(newer_across_the_wrap.quiet_for((1u64 << 32) - 2), 0);
        // Bytes past 4 GiB: the low bits still change when bytes move.
        let big = Sweep::new((5u64 << 32) + 3, 0);
        assert!(big.same_bytes((5u64 << 32) + 3));
        assert!(!big.same_bytes((5u64 << 32) + 4));
    }

    #[test]
    fn lists_and_removes() {
        let shared = Arc::new(ServerState::new(
            10,
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(1),
        ));
        let registry = &shared.registry;
        let a = registry.insert(PeerAddr::Unix, None, shared.clone());
        let b = registry.insert(
            PeerAddr::Tcp("127.0.0.1:9".parse().unwrap()),
            None,
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
