//! A server-wide parking lot for idle connections (Erlang's `hibernate`, one step further than
//! keeping a task that waits): a parked connection keeps no task and no tokio registration, only its
//! descriptor, lariat's registry entry and a small resume state. One epoll instance, watched by one
//! tokio task through [`AsyncFd`], holds every parked descriptor (`EPOLLIN | EPOLLRDHUP |
//! EPOLLONESHOT`); one sorted set holds their deadlines, so no connection has a timer of its own.
//!
//! A connection leaves the lot when bytes (or an end of stream, or a forced close's `shutdown(2)`,
//! which makes the socket readable) arrive, when its deadline passes, or when the server wakes every
//! parked connection at once (a drain, a restart's hand-over offer); the lot then gives its state to
//! the `resume` function it was built with, which spawns a task to serve it on.
//!
//! The lot sees descriptors only: what a connection keeps besides (a TLS 1.3 session's record layer at
//! rest) is its item's business, and the bytes that wake it are read by the task the item spawns.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a parked connection left the lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Its socket became readable: bytes, an end of stream, an error or a forced close.
    Readable,
    /// Its deadline passed (a keep-alive or header timeout).
    Deadline,
    /// The server woke every parked connection (a drain, a hand-over offer).
    Signal,
}

/// Counters of the lot, for the server's statistics.
#[derive(Debug, Default)]
pub(crate) struct LotStats {
    /// Connections parked now.
    pub(crate) parked: AtomicU64,
    /// Connections parked since the lot began.
    pub(crate) parks: AtomicU64,
    /// Connections resumed since the lot began.
    pub(crate) resumed: AtomicU64,
}

/// Events taken from the epoll instance per system call.
const BATCH: usize = 64;

/// One parked connection: 24 bytes besides the item (a slab slot of 32 with a boxed item), one per
/// idle connection.
struct Slot<T> {
    /// Tells a stale event (of an earlier connection in the same slot) from this one's.
    generation: u32,
    fd: RawFd,
    /// Its deadline in [`Clock`] ticks, [`NO_DEADLINE`] for none.
    deadline: u64,
    item: T,
}

/// A slot's deadline when it has none.
const NO_DEADLINE: u64 = u64::MAX;

/// Bits of a slot's key in a [`Parked::deadlines`] entry; the lot parks at most 2^24 (16.7 million)
/// connections at once, and a connection beyond that waits in its task instead.
const KEY_BITS: u32 = 24;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;

/// Deadlines as whole milliseconds since the lot began, rounded up (a connection never resumes
/// early), so that one fits in 40 bits beside a slot's key: 34 years of uptime.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    const MAX_TICKS: u64 = (1 << (64 - KEY_BITS)) - 1;

    fn ticks(self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        let ms = since.as_millis() + u128::from(since.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(ms).unwrap_or(u64::MAX).min(Self::MAX_TICKS)
    }

    /// The ticks that have wholly passed at `now` (rounded down): a deadline of at most this many
    /// ticks is due.
    fn passed(self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    fn instant(self, ticks: u64) -> Instant {
        self.epoch + Duration::from_millis(ticks)
    }
}

struct Parked<T> {
    slots: Slab<Slot<T>>,
    /// Every parked connection with a deadline, as `ticks << KEY_BITS | key`: one word each, in
    /// deadline order (8 bytes in the B-tree, not the 24 of an `(Instant, usize)` pair).
    deadlines: BTreeSet<u64>,
    generation: u32,
}

/// A [`Parked::deadlines`] entry: `ticks` in the high bits, so entries sort by deadline.
fn deadline_entry(ticks: u64, key: usize) -> u64 {
    ticks << KEY_BITS | key as u64
}

/// Slots the slab grows by at least, when full.
const GROWTH_STEP: usize = 256;

impl<T> Parked<T> {
    /// Grows a full slab by an eighth (at least [`GROWTH_STEP`] slots) rather than doubling it: the
    /// slab is one block per lot, kept as long as connections sleep, and a doubled one left up to half
    /// of it (16 bytes per sleeping connection) unused. Reallocating an eighth more at a time copies
    /// each slot about eight times over the slab's growth, under the lot's lock, once per 256 or more
    /// parks.
    fn make_room(&mut self) {
        if self.slots.len() == self.slots.capacity() {
            let step = (self.slots.capacity() / 8).max(GROWTH_STEP);
            self.slots.reserve_exact(step);
        }
    }

    /// The earliest deadline, in ticks.
    fn earliest(&self) -> Option<u64> {
        self.deadlines.first().map(|&d| d >> KEY_BITS)
    }
}

struct Inner<T> {
    epoll: AsyncFd<OwnedFd>,
    clock: Clock,
    parked: Mutex<Parked<T>>,
    /// Wakes the lot's task: an earlier deadline than it sleeps towards, or a server-wide wake.
    changed: Notify,
    /// Set by [`ParkingLot::wake_all`]; taken by the lot's task.
    wake_all: std::sync::atomic::AtomicBool,
    /// Server-wide signals that resume every parked connection (the drain, the hand-over offer);
    /// once one fired, nothing parks.
    signals: Vec<CancellationToken>,
    stats: LotStats,
}

/// The lot: park connections, and a task that resumes them. Dropping it stops the task and drops
/// (closes) whatever is still parked.
///
/// The task owns the parked connections; the handle reaches them weakly, so a parked connection that
/// holds its server's state (which holds this handle) makes no reference cycle: like a connection's
/// task, the lot's task lives until the runtime ends, and what is parked closes with it.
pub(crate) struct ParkingLot<T: Send + 'static> {
    inner: Weak<Inner<T>>,
    task: AbortHandle,
}

impl<T: Send + 'static> std::fmt::Debug for ParkingLot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkingLot")
            .field(
                "parked",
                &self.inner.upgrade().map(|i| i.stats.parked.load(Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Drop for ParkingLot<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Send + 'static> ParkingLot<T> {
    /// Opens the epoll instance and spawns the lot's task on the current tokio runtime; `resume` is
    /// called (on that task) with each connection that leaves the lot, why, and the deadline it was
    /// parked with (so the item need not keep it too), and should spawn its task.
    /// Each of `signals`, when cancelled, resumes every parked connection.
    pub(crate) fn new<F>(resume: F, signals: Vec<CancellationToken>) -> io::Result<Self>
    where
        F: Fn(T, Wake, Option<Instant>) + Send + Sync + 'static,
    {
        // SAFETY: plain system call; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns; the `OwnedFd` keeps it open (and the
        // same) for the `AsyncFd`'s life.
        let epoll = unsafe {
            AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let inner = Arc::new(Inner {
            epoll,
            clock: Clock {
                epoch: Instant::now(),
            },
            parked: Mutex::new(Parked {
                slots: Slab::new(),
                deadlines: BTreeSet::new(),
                generation: 0,
            }),
            changed: Notify::new(),
            wake_all: std::sync::atomic::AtomicBool::new(false),
            signals,
            stats: LotStats::default(),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(drive(inner, resume)).abort_handle();
        Ok(ParkingLot { inner: weak, task })
    }

    /// The lot's counters: `(parked now, parked in all, resumed in all)`.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64, u64) {
        self.inner.upgrade().map_or((0, 0, 0), |i| {
            let s = &i.stats;
            (
                s.parked.load(Relaxed),
                s.parks.load(Relaxed),
                s.resumed.load(Relaxed),
            )
        })
    }

    /// Parks `item`, whose socket is `fd`, until `fd` is readable, `deadline` passes or
    /// [`wake_all`](Self::wake_all). `item` must keep `fd` open while parked (it owns the socket).
    /// On an error, or once one of the lot's signals fired, the item is given back: serve it on as if
    /// it had woken.
    pub(crate) fn park(&self, fd: RawFd, item: T, deadline: Option<Instant>) -> Result<(), T> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(item);
        };
        // Under the lock the lot's task also takes to resume everything: a signal either fired before
        // this look (nothing parks) or the task's sweep, which follows it, finds this connection.
        let mut parked = inner.lock();
        if inner.signals.iter().any(CancellationToken::is_cancelled) {
            return Err(item);
        }
        parked.generation = parked.generation.wrapping_add(1);
        let generation = parked.generation;
        parked.make_room();
        let entry = parked.slots.vacant_entry();
        let key = entry.key();
        if key as u64 > KEY_MASK {
            return Err(item);
        }
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: (u64::from(generation) << 32) | key as u64,
        };
        // SAFETY: both descriptors are open (the caller's item owns `fd`), `event` is valid.
        let r = unsafe {
            libc::epoll_ctl(inner.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        };
        if r < 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "parking lot: not parked");
            return Err(item);
        }
        let ticks = deadline.map(|at| inner.clock.ticks(at));
        entry.insert(Slot {
            generation,
            fd,
            deadline: ticks.unwrap_or(NO_DEADLINE),
            item,
        });
        let earliest = parked.earliest();
        if let Some(ticks) = ticks {
            parked.deadlines.insert(deadline_entry(ticks, key));
        }
        inner.stats.parked.fetch_add(1, Relaxed);
        inner.stats.parks.fetch_add(1, Relaxed);
        drop(parked);
        if ticks.is_some_and(|at| earliest.is_none_or(|e| at < e)) {
            inner.changed.notify_one();
        }
        Ok(())
    }

    /// Resumes every parked connection (with [`Wake::Signal`]), on the lot's task.
    #[cfg(test)]
    fn wake_all(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.wake_all.store(true, Relaxed);
            inner.changed.notify_one();
        }
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, Parked<T>> {
        // A panic while holding the lock leaves the slab consistent (no step spans an await).
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the connection in `key` out of the lot (its descriptor out of the epoll instance, its
    /// deadline out of the set), with its deadline.
    fn take(&self, parked: &mut Parked<T>, key: usize) -> (T, Option<Instant>) {
        let slot = parked.slots.remove(key);
        let deadline = (slot.deadline != NO_DEADLINE).then(|| {
            parked.deadlines.remove(&deadline_entry(slot.deadline, key));
            self.clock.instant(slot.deadline)
        });
        // SAFETY: the item still owns `slot.fd`, so the descriptor is open and is the one registered.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                slot.fd,
                std::ptr::null_mut(),
            );
        }
        self.stats.parked.fetch_sub(1, Relaxed);
        self.stats.resumed.fetch_add(1, Relaxed);
        (slot.item, deadline)
    }
}

/// The lot's task: waits for readiness of the epoll instance, the next deadline or a change, and
/// resumes what is due.
async fn drive<T, F>(inner: Arc<Inner<T>>, resume: F)
where
    F: Fn(T, Wake, Option<Instant>),
{
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    let mut due: Vec<((T, Option<Instant>), Wake)> = Vec::new();
    // Built once (not per pass: each build allocates and registers a waiter with every token). After
    // the first signal nothing parks any more (`park` refuses), so it is not armed again.
    let signal = any_cancelled(inner.signals.clone());
    tokio::pin!(signal);
    let mut signal_seen = false;
    // One timer, moved to the earliest deadline on each pass.
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let mut signalled = false;
        let next = inner.lock().earliest().map(|t| inner.clock.instant(t));
        if let Some(at) = next {
            sleep.as_mut().reset(at);
        }
        tokio::select! {
            ready = inner.epoll.readable() => match ready {
                Ok(mut guard) => {
                    // SAFETY: the buffer holds `BATCH` events; a zero timeout never blocks.
                    let n = unsafe {
                        libc::epoll_wait(
                            inner.epoll.as_raw_fd(),
                            events.as_mut_ptr(),
                            BATCH as libc::c_int,
                            0,
                        )
                    };
                    if n <= 0 {
                        guard.clear_ready();
                    } else {
                        let mut parked = inner.lock();
                        for event in &events[..n as usize] {
                            let data = event.u64;
                            let key = (data & u64::from(u32::MAX)) as usize;
                            let generation = (data >> 32) as u32;
                            if parked.slots.get(key).is_some_and(|s| s.generation == generation) {
                                due.push((inner.take(&mut parked, key), Wake::Readable));
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "parking lot: epoll failed; waking every parked connection");
                    inner.wake_all.store(true, Relaxed);
                }
            },
            () = &mut sleep, if next.is_some() => {}
            () = inner.changed.notified() => {}
            () = &mut signal, if !signal_seen => signalled = true,
        }
        if signalled {
            signal_seen = true;
            inner.wake_all.store(true, Relaxed);
        }
        {
            let mut parked = inner.lock();
            if inner.wake_all.swap(false, Relaxed) {
                let keys: Vec<usize> = parked.slots.iter().map(|(k, _)| k).collect();
                for key in keys {
                    due.push((inner.take(&mut parked, key), Wake::Signal));
                }
            }
            let now = inner.clock.passed(Instant::now());
            while let Some(&first) = parked.deadlines.first() {
                if first >> KEY_BITS > now {
                    break;
                }
                let key = (first & KEY_MASK) as usize;
                due.push((inner.take(&mut parked, key), Wake::Deadline));
            }
        }
        for ((item, deadline), why) in due.drain(..) {
            resume(item, why, deadline);
        }
    }
}

/// Resolves when one of `signals` is cancelled; never if there are none.
async fn any_cancelled(signals: Vec<CancellationToken>) {
    if signals.is_empty() {
        std::future::pending::<()>().await;
    }
    futures_util::future::select_all(signals.into_iter().map(|s| Box::pin(s.cancelled_owned())))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// A lot whose resumed connections arrive on a channel: `(name, why, deadline)`.
    type Resumed = mpsc::UnboundedReceiver<(u32, Wake, Option<Instant>)>;

    fn lot() -> (ParkingLot<(u32, UnixStream)>, Resumed) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lot = ParkingLot::new(
            move |(name, _socket): (u32, UnixStream), why, deadline| {
                let _ = tx.send((name, why, deadline));
            },
            Vec::new(),
        )
        .unwrap();
        (lot, rx)
    }

    async fn next(rx: &mut Resumed) -> (u32, Wake) {
        let (name, why, _) = next_with_deadline(rx).await;
        (name, why)
    }

    async fn next_with_deadline(rx: &mut Resumed) -> (u32, Wake, Option<Instant>) {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("resumed in time")
            .expect("lot alive")
    }

    fn park(lot: &ParkingLot<(u32, UnixStream)>, name: u32, s: UnixStream, at: Option<Instant>) {
        let fd = s.as_raw_fd();
        assert!(lot.park(fd, (name, s), at).is_ok());
    }

    #[test]
    fn the_slab_grows_by_an_eighth_not_by_doubling() {
        let mut parked: Parked<u64> = Parked {
            slots: Slab::new(),
            deadlines: BTreeSet::new(),
            generation: 0,
        };
        for n in 0..20_000u64 {
            parked.make_room();
            assert!(
                parked.slots.capacity() > parked.slots.len(),
                "room was made"
            );
            parked.slots.insert(Slot {
                generation: 0,
                fd: -1,
                deadline: NO_DEADLINE,
                item: n,
            });
            let len = parked.slots.len();
            assert!(
                parked.slots.capacity() <= len + (len / 8).max(GROWTH_STEP),
                "{len} slots in a slab of {}",
                parked.slots.capacity()
            );
        }
        // A freed slot is reused before the slab grows.
        let cap = parked.slots.capacity();
        parked.slots.remove(7);
        parked.make_room();
        assert_eq!(parked.slots.capacity(), cap);
    }

    #[test]
    fn deadlines_round_up_to_the_millisecond_and_sort_with_their_keys() {
        let clock = Clock {
            epoch: Instant::now(),
        };
        let at = clock.epoch + Duration::from_micros(2_500);
        assert_eq!(clock.ticks(at), 3, "rounded up: never resumed early");
        assert_eq!(clock.ticks(clock.epoch + Duration::from_millis(7)), 7);
        assert_eq!(clock.passed(at), 2, "only whole milliseconds have passed");
        assert_eq!(clock.ticks(clock.epoch), 0);
        assert!(clock.instant(clock.ticks(at)) >= at);
        // Far deadlines stay the latest, whatever their key.
        let far = clock.ticks(clock.epoch + Duration::from_secs(u64::from(u32::MAX) * 1_000));
        assert_eq!(far, Clock::MAX_TICKS);
        let mut set = BTreeSet::new();
        for (ticks, key) in [(far, 0), (5, KEY_MASK as usize), (5, 1), (4, 9)] {
            set.insert(deadline_entry(ticks, key));
        }
        let order: Vec<(u64, u64)> = set.iter().map(|d| (d >> KEY_BITS, d & KEY_MASK)).collect();
        assert_eq!(order, [(4, 9), (5, 1), (5, KEY_MASK), (far, 0)]);
    }

    #[tokio::test]
    async fn bytes_resume_only_their_connection() {
        let (lot, mut rx) = lot();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, _b_peer) = UnixStream::pair().unwrap();
        park(&lot, 1, a, None);
        park(&lot, 2, b, None);
        assert_eq!(lot.counts().0, 2);
        a_peer.write_all(b"x").unwrap();
        assert_eq!(next(&mut rx).await, (1, Wake::Readable));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "the quiet one stays parked");
        assert_eq!(lot.counts().0, 1);
        assert_eq!(lot.counts().2, 1);
    }

    #[tokio::test]
    async fn wake_all_resumes_every_connection() {
        let (lot, mut rx) = lot();
        let mut peers = Vec::new();
        for name in 0..3 {
            let (s, peer) = UnixStream::pair().unwrap();
            peers.push(peer);
            park(&lot, name, s, None);
        }
        lot.wake_all();
        let mut names = Vec::new();
        for _ in 0..3 {
            let (name, why) = next(&mut rx).await;
            assert_eq!(why, Wake::Signal);
            names.push(name);
        }
        names.sort_unstable();
        assert_eq!(names, [0, 1, 2]);
        assert_eq!(lot.counts().0, 0);
    }

    #[tokio::test]
    async fn a_signal_resumes_every_connection_and_nothing_parks_after_it() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let drain = CancellationToken::new();
        let lot = ParkingLot::new(
            move |(name, _socket): (u32, UnixStream), why, deadline| {
                let _ = tx.send((name, why, deadline));
            },
            vec![drain.clone()],
        )
        .unwrap();
        let (a, _pa) = UnixStream::pair().unwrap();
        park(&lot, 1, a, None);
        drain.cancel();
        assert_eq!(next(&mut rx).await, (1, Wake::Signal));
        let (b, _pb) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        assert!(lot.park(fd, (2, b), None).is_err(), "refused once draining");
        assert_eq!(lot.counts(), (0, 1, 1));
    }

    #[tokio::test]
    async fn deadlines_resume_in_order_without_a_timer_each() {
        let (lot, mut rx) = lot();
        let (late, _p1) = UnixStream::pair().unwrap();
        let (soon, _p2) = UnixStream::pair().unwrap();
        let (never, _p3) = UnixStream::pair().unwrap();
        let now = Instant::now();
        park(&lot, 1, late, Some(now + Duration::from_millis(300)));
        park(&lot, 2, soon, Some(now + Duration::from_millis(50)));
        park(&lot, 3, never, None);
        assert_eq!(next(&mut rx).await, (2, Wake::Deadline));
        assert_eq!(next(&mut rx).await, (1, Wake::Deadline));
        assert!(Instant::now() >= now + Duration::from_millis(300));
        assert_eq!(lot.counts().0, 1);
    }

    /// The item need not keep its deadline: the lot gives it back on resume, whatever woke it.
    #[tokio::test]
    async fn a_resumed_connection_gets_its_deadline_back() {
        let (lot, mut rx) = lot();
        let (s, mut peer) = UnixStream::pair().unwrap();
        let at = Instant::now() + Duration::from_secs(60);
        park(&lot, 4, s, Some(at));
        peer.write_all(b"x").unwrap();
        let (name, why, back) = next_with_deadline(&mut rx).await;
        assert_eq!((name, why), (4, Wake::Readable));
        // Kept to the millisecond, rounded up: never earlier than asked.
        let back = back.expect("its deadline");
        assert!(
            back >= at && back - at < Duration::from_millis(1),
            "{at:?} came back as {back:?}"
        );
        let (t, mut peer2) = UnixStream::pair().unwrap();
        park(&lot, 5, t, None);
        peer2.write_all(b"x").unwrap();
        assert_eq!(next_with_deadline(&mut rx).await, (5, Wake::Readable, None));
    }

    #[tokio::test]
    async fn a_forced_close_resumes_the_connection() {
        let (lot, mut rx) = lot();
        let (s, _peer) = UnixStream::pair().unwrap();
        let fd = s.as_raw_fd();
        park(&lot, 7, s, None);
        // What the registry's closer does to a connection closed by force.
        // SAFETY: the parked item keeps `fd` open.
        assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
        assert_eq!(next(&mut rx).await, (7, Wake::Readable));
    }

    #[tokio::test]
    async fn a_peer_closing_resumes_the_connection() {
        let (lot, mut rx) = lot();
        let (s, peer) = UnixStream::pair().unwrap();
        park(&lot, 9, s, None);
        drop(peer);
        assert_eq!(next(&mut rx).await, (9, Wake::Readable));
    }

    #[tokio::test]
    async fn a_tcp_connection_parks_without_its_tokio_registration() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let lot = ParkingLot::new(
            move |s: std::net::TcpStream, why, _deadline| {
                let _ = tx.send((tokio::net::TcpStream::from_std(s), why));
            },
            Vec::new(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server = server.into_std().unwrap();
        let fd = server.as_raw_fd();
        assert!(lot.park(fd, server, None).is_ok());
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping")
            .await
            .unwrap();
        let (server, why) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(why, Wake::Readable);
        let mut server = server.unwrap();
        let mut buf = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"ping");
    }
}
