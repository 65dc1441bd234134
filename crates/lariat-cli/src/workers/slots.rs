//! The supervisor's worker slots, one per `--workers` worker: what each holds, and how a start, a
//! failed start, a death and a SIGHUP change it.
//!
//! A slot never gets two workers: each state holds at most one serving worker, a replacement being
//! started is not in the slot until it is ready, and the step that puts it there hands the worker it
//! replaces back to the caller (to hand over). A slot has at most one start in progress too: starts
//! begin only from [`Slot::Due`] (to [`Slot::Starting`]) and [`Slot::Serving`] (to
//! [`Slot::Replacing`]), and neither of those has a start in progress.
//!
//! Generic over the worker (`W`), so the transitions are tested without processes.

use std::time::Duration;

use tokio::time::Instant;

/// The first delay before restarting a worker that died; doubled (up to [`RESTART_MAX`]) while they
/// keep dying.
pub const RESTART_MIN: Duration = Duration::from_millis(100);
/// The longest delay before restarting a worker that died.
pub const RESTART_MAX: Duration = Duration::from_secs(5);
/// A worker that lives this long counts as started well: its death restarts it after the shortest
/// delay. One that dies sooner counts as a failed start, so a crash loop does not become a fork loop.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What one slot holds.
#[derive(Debug, PartialEq)]
pub enum Slot<W> {
    /// Its worker exited unasked; another one starts at this instant.
    Due(Instant),
    /// A worker is being started and none serves (the one before it exited).
    Starting,
    /// This worker serves.
    Serving(W),
    /// This worker serves while its replacement is being started (SIGHUP); it hands over once the
    /// replacement is ready.
    Replacing(W),
}

/// What a failed start leaves.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// A replacement did not start: the worker it was to replace goes on.
    OldGoesOn,
    /// A restart did not start: it is tried again after this long.
    RetryIn(Duration),
}

/// A worker that exited unasked, out of its slot.
#[derive(Debug, PartialEq)]
pub struct Exited<W, S> {
    pub slot: usize,
    pub worker: W,
    /// How it exited.
    pub status: S,
    /// When its restart starts; `None` when its replacement was already being started.
    pub retry_in: Option<Duration>,
}

/// Every slot, and the restart backoff they share.
#[derive(Debug)]
pub struct Slots<W> {
    slots: Vec<Slot<W>>,
    backoff: Duration,
}

impl<W> Slots<W> {
    /// Slots served by `workers`, one each.
    pub fn serving(workers: impl IntoIterator<Item = W>) -> Slots<W> {
        Slots {
            slots: workers.into_iter().map(Slot::Serving).collect(),
            backoff: RESTART_MIN,
        }
    }

    /// The worker serving `slot`, if one does.
    pub fn worker(&self, slot: usize) -> Option<&W> {
        match self.slots.get(slot)? {
            Slot::Serving(w) | Slot::Replacing(w) => Some(w),
            Slot::Due(_) | Slot::Starting => None,
        }
    }

    /// Every serving worker (not the ones handing over, which have left their slots).
    pub fn workers(&self) -> impl Iterator<Item = &W> {
        (0..self.slots.len()).filter_map(|slot| self.worker(slot))
    }

    /// SIGHUP: every slot starts a replacement for its worker. Returns the slots to start one for, or
    /// `None` (and changes nothing) while a slot has no worker or a start in progress already.
    pub fn replace_all(&mut self) -> Option<Vec<usize>> {
        if !self.slots.iter().all(|s| matches!(s, Slot::Serving(_))) {
            return None;
        }
        for slot in &mut self.slots {
            if let Slot::Serving(w) = std::mem::replace(slot, Slot::Starting) {
                *slot = Slot::Replacing(w);
            }
        }
        Some((0..self.slots.len()).collect())
    }

    /// A start for `slot` is ready: `worker` serves it now. Returns the worker it replaces, which has
    /// left the slot and must be told to hand over (or, for a slot that does not exist, `worker`
    /// itself).
    pub fn ready(&mut self, slot: usize, worker: W) -> Option<W> {
        let Some(state) = self.slots.get_mut(slot) else {
            return Some(worker);
        };
        match std::mem::replace(state, Slot::Serving(worker)) {
            Slot::Replacing(old) | Slot::Serving(old) => Some(old),
            Slot::Due(_) | Slot::Starting => None,
        }
    }

    /// A start for `slot` failed, at `now`.
    pub fn failed(&mut self, slot: usize, now: Instant) -> Failed {
        let Some(state) = self.slots.get_mut(slot) else {
            return Failed::OldGoesOn;
        };
        match std::mem::replace(state, Slot::Starting) {
            Slot::Replacing(old) | Slot::Serving(old) => {
                *state = Slot::Serving(old);
                Failed::OldGoesOn
            }
            Slot::Starting => {
                self.backoff = (self.backoff * 2).min(RESTART_MAX);
                *state = Slot::Due(now + self.backoff);
                Failed::RetryIn(self.backoff)
            }
            Slot::Due(at) => {
                *state = Slot::Due(at);
                Failed::RetryIn(at.saturating_duration_since(now))
            }
        }
    }

    /// When the next restart is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Due(at) => Some(*at),
                _ => None,
            })
            .min()
    }

    /// The slots whose restart is due at `now`: they are starting; the caller starts a worker for each.
    pub fn take_due(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if matches!(slot, Slot::Due(at) if *at <= now) {
                *slot = Slot::Starting;
                due.push(i);
            }
        }
        due
    }

    /// Takes out the workers that exited: `exited` says whether one did (and how), `lived` how long it
    /// ran. Each one's slot restarts it after the backoff, which doubles when it died young and resets
    /// when it had lived [`STABLE_AFTER`]; a slot whose replacement is starting just waits for it.
    pub fn reap<S>(
        &mut self,
        now: Instant,
        mut exited: impl FnMut(&mut W) -> Option<S>,
        lived: impl Fn(&W) -> Duration,
    ) -> Vec<Exited<W, S>> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let (Slot::Serving(w) | Slot::Replacing(w)) = slot else {
                continue;
            };
            let Some(status) = exited(w) else { continue };
            self.backoff = if lived(w) < STABLE_AFTER {
                (self.backoff * 2).min(RESTART_MAX)
            } else {
                RESTART_MIN
            };
            let (next, retry_in) = match slot {
                Slot::Replacing(_) => (Slot::Starting, None),
                _ => (Slot::Due(now + self.backoff), Some(self.backoff)),
            };
            if let Slot::Serving(worker) | Slot::Replacing(worker) = std::mem::replace(slot, next) {
                out.push(Exited {
                    slot: i,
                    worker,
                    status,
                    retry_in,
                });
            }
        }
        out
    }

    /// The serving workers, out of their slots (at shutdown).
    pub fn into_workers(self) -> Vec<W> {
        self.slots
            .into_iter()
            .filter_map(|s| match s {
                Slot::Serving(w) | Slot::Replacing(w) => Some(w),
                Slot::Due(_) | Slot::Starting => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YOUNG: Duration = Duration::from_secs(1);

    fn dies(pid: u32) -> impl FnMut(&mut u32) -> Option<&'static str> {
        move |w| (*w == pid).then_some("killed")
    }

    #[test]
    fn a_replacement_takes_the_slot_and_hands_back_the_old_worker() {
        let mut slots = Slots::serving([1, 2]);
        assert_eq!(slots.replace_all(), Some(vec![0, 1]));
        assert_eq!(
            slots.replace_all(),
            None,
            "replacements are starting already"
        );
        assert_eq!(slots.workers().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(slots.ready(0, 11), Some(1));
        assert_eq!(slots.replace_all(), None, "slot 1 is still being replaced");
        assert_eq!(slots.ready(1, 12), Some(2));
        assert_eq!(slots.workers().copied().collect::<Vec<_>>(), [11, 12]);
        assert_eq!(
            slots.replace_all(),
            Some(vec![0, 1]),
            "settled: SIGHUP works again"
        );
    }

    #[test]
    fn a_failed_replacement_leaves_the_old_worker_serving() {
        let mut slots = Slots::serving([1]);
        slots.replace_all();
        assert_eq!(slots.failed(0, Instant::now()), Failed::OldGoesOn);
        assert_eq!(slots.slots[0], Slot::Serving(1));
        assert_eq!(slots.next_due(), None);
    }

    #[test]
    fn a_dead_worker_is_restarted_after_the_backoff() {
        let mut slots = Slots::serving([1, 2]);
        let now = Instant::now();
        let exited = slots.reap(now, dies(1), |_| YOUNG);
        assert_eq!(
            exited,
            [Exited {
                slot: 0,
                worker: 1,
                status: "killed",
                retry_in: Some(RESTART_MIN * 2)
            }]
        );
        assert_eq!(slots.worker(0), None);
        assert_eq!(slots.next_due(), Some(now + RESTART_MIN * 2));
        assert_eq!(slots.replace_all(), None, "a slot has no worker");
        assert!(slots.take_due(now).is_empty(), "not yet");
        assert_eq!(slots.take_due(now + RESTART_MIN * 2), [0]);
        assert_eq!(slots.slots[0], Slot::Starting);
        assert!(
            slots.take_due(now + RESTART_MAX).is_empty(),
            "one start at a time"
        );
        assert_eq!(slots.ready(0, 3), None, "nothing to hand over");
        assert_eq!(slots.workers().copied().collect::<Vec<_>>(), [3, 2]);
    }

    #[test]
    fn failed_restarts_back_off_up_to_the_most() {
        let mut slots = Slots::serving([1]);
        let now = Instant::now();
        slots.reap(now, dies(1), |_| YOUNG);
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert_eq!(slots.take_due(now + RESTART_MAX * 2), [0]);
            match slots.failed(0, now) {
                Failed::RetryIn(d) => delays.push(d),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays[0], RESTART_MIN * 4);
        assert!(delays
            .windows(2)
            .all(|w| w[1] == (w[0] * 2).min(RESTART_MAX)));
        assert_eq!(*delays.last().unwrap(), RESTART_MAX);
    }

    #[test]
    fn a_worker_that_lived_long_is_restarted_soon() {
        let mut slots = Slots::serving([1, 2]);
        let now = Instant::now();
        slots.reap(now, dies(1), |_| YOUNG);
        let exited = slots.reap(now, dies(2), |_| STABLE_AFTER);
        assert_eq!(exited[0].retry_in, Some(RESTART_MIN));
    }

    #[test]
    fn a_worker_dying_while_replaced_leaves_the_slot_to_its_replacement() {
        let mut slots = Slots::serving([1]);
        slots.replace_all();
        let now = Instant::now();
        let exited = slots.reap(now, dies(1), |_| YOUNG);
        assert_eq!(exited[0].retry_in, None, "its replacement is starting");
        assert_eq!(slots.next_due(), None, "no second start");
        assert_eq!(slots.ready(0, 11), None);
        assert_eq!(slots.workers().copied().collect::<Vec<_>>(), [11]);
    }

    #[test]
    fn a_replacement_that_fails_after_its_old_worker_died_is_retried() {
        let mut slots = Slots::serving([1]);
        slots.replace_all();
        let now = Instant::now();
        slots.reap(now, dies(1), |_| YOUNG);
        assert!(matches!(slots.failed(0, now), Failed::RetryIn(_)));
        assert!(slots.next_due().is_some());
    }

    #[test]
    fn shutdown_takes_every_serving_worker() {
        let mut slots = Slots::serving([1, 2, 3]);
        slots.replace_all();
        slots.ready(0, 11);
        slots.reap(Instant::now(), dies(3), |_| YOUNG);
        assert_eq!(slots.into_workers(), [11, 2]);
    }

    #[test]
    fn a_start_for_an_unknown_slot_is_handed_back() {
        let mut slots = Slots::serving([1]);
        assert_eq!(slots.ready(5, 9), Some(9));
        assert_eq!(slots.failed(5, Instant::now()), Failed::OldGoesOn);
        assert_eq!(slots.workers().copied().collect::<Vec<_>>(), [1]);
    }
}
