//! The exact connection cap.
//!
//! A slot is taken *before* `accept(2)` is called, so the server never holds more connections than the cap:
//! at the cap, clients wait in the kernel's backlog (their handshake is done, their bytes are buffered by
//! the kernel) until a connection closes. Accepting first and then refusing (as actix does) over-admits and
//! turns waiting clients into failed ones.
//!
//! The cap can be changed at run time. Raising it wakes the acceptor at once; lowering it below the number
//! of live connections takes effect as they close (nothing is cut off).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::Notify;

/// A resizable counting limit with a wake-up on every release.
///
/// The same wake-up serves two waiters: an acceptor waiting for a slot at the cap, and an acceptor backing
/// off from descriptor exhaustion, which retries the moment one of our connections closes and frees a
/// descriptor.
#[derive(Debug)]
pub struct ConnectionLimit {
    max: AtomicUsize,
    held: AtomicUsize,
    /// Tasks registered on `released`. Lets `release` skip the `Notify` (a mutex) when nobody waits, which
    /// is the common case: it runs once per closed connection.
    waiting: AtomicUsize,
    /// How many slots were ever released: lets a waiter that registers late tell whether it missed one.
    releases: AtomicU64,
    released: Notify,
}

impl ConnectionLimit {
    /// A limit of `max` slots (`usize::MAX` for no limit).
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            max: AtomicUsize::new(max),
            held: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            releases: AtomicU64::new(0),
            released: Notify::new(),
        }
    }

    /// The current cap.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// Slots held now: live connections plus at most one per acceptor waiting in `accept(2)`.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Changes the cap. Raising it admits waiting clients at once.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
        self.released.notify_waiters();
    }

    /// Takes a slot if one is free.
    pub(crate) fn try_acquire(&self) -> bool {
        // SeqCst: this load is the waiter's half of the store-then-load pairing with `release`.
        let mut held = self.held.load(Ordering::SeqCst);
        loop {
            if held >= self.max.load(Ordering::SeqCst) {
                return false;
            }
            match self.held.compare_exchange_weak(
                held,
                held + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    /// Takes a slot even past the cap: for a connection handed over by a restart's predecessor, which
    /// was being served already and must not be refused. Released like any other.
    pub(crate) fn acquire_over_cap(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits for a slot and takes it. The caller must [`release`](Self::release) it exactly once.
    /// Cancel-safe: if the future is dropped, no slot was taken.
    pub(crate) async fn acquire(&self) {
        // Fast path: a free slot, no registration.
        if self.try_acquire() {
            return;
        }
        loop {
            // Register for the wake-up before checking again, so a release in between is seen.
            let released = self.released();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.try_acquire() {
                return;
            }
            released.await;
        }
    }

    /// Returns a slot and wakes whoever waits for one.
    pub(crate) fn release(&self) {
        // SeqCst pairs with `Released::enable`: either this load sees the waiter, or the waiter's check
        // after registering sees the slot returned.
        let before = self.held.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "released a slot that was not held");
        self.releases.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    /// How many slots have been released so far. Read it before an operation, and compare after
    /// registering with [`released`](Self::released), to learn whether a release happened in between.
    pub(crate) fn releases(&self) -> u64 {
        self.releases.load(Ordering::SeqCst)
    }

    /// Completes at the next [`release`](Self::release) (or cap change). Call `enable` on the pinned
    /// future before checking the condition it waits for, as [`acquire`](Self::acquire) does.
    pub(crate) fn released(&self) -> Released<'_> {
        Released {
            notified: self.released.notified(),
            limit: self,
            counted: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// A wait for the next release, counted in `waiting` from `enable` until dropped.
    pub(crate) struct Released<'a> {
        #[pin]
        notified: tokio::sync::futures::Notified<'a>,
        limit: &'a ConnectionLimit,
        counted: bool,
    }

    impl<'a> PinnedDrop for Released<'a> {
        fn drop(this: Pin<&mut Self>) {
            if this.counted {
                this.limit.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Released<'_> {
    /// Registers for the wake-up now, so a release from here on is not missed.
    pub(crate) fn enable(self: Pin<&mut Self>) {
        let this = self.project();
        if !*this.counted {
            this.limit.waiting.fetch_add(1, Ordering::SeqCst);
            *this.counted = true;
        }
        this.notified.enable();
    }
}

impl Future for Released<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self;
        this.as_mut().enable();
        this.project().notified.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn never_more_than_max() {
        let limit = ConnectionLimit::new(3);
        assert!(limit.try_acquire());
        assert!(limit.try_acquire());
        assert!(limit.try_acquire());
        assert!(!limit.try_acquire());
        assert_eq!(limit.held(), 3);
        limit.release();
        assert!(limit.try_acquire());
        assert!(!limit.try_acquire());
    }

    #[test]
    fn lowering_the_cap_takes_effect_as_slots_return() {
        let limit = ConnectionLimit::new(4);
        for _ in 0..4 {
            assert!(limit.try_acquire());
        }
        limit.set_max(2);
        limit.release();
        assert!(!limit.try_acquire(), "3 held, cap 2");
        limit.release();
        limit.release();
        assert!(limit.try_acquire(), "1 held, cap 2");
    }

    #[tokio::test]
    async fn raising_the_cap_wakes_a_waiter_at_once() {
        let limit = Arc::new(ConnectionLimit::new(1));
        limit.acquire().await;
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        limit.set_max(2);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter not woken by the raised cap")
            .unwrap();
        assert_eq!(limit.held(), 2);
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiter() {
        let limit = Arc::new(ConnectionLimit::new(1));
        limit.acquire().await;
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        limit.release();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter not woken by the release")
            .unwrap();
        assert_eq!(limit.held(), 1);
    }

    /// Two tasks on two threads pass one slot back and forth 20,000 times: a lost wake-up would hang.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_lost_wakeups_under_contention() {
        let limit = Arc::new(ConnectionLimit::new(1));
        let rounds = 10_000;
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        limit.acquire().await;
                        tokio::task::yield_now().await;
                        limit.release();
                    }
                })
            })
            .collect();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("lost wake-up")
                .unwrap();
        }
        assert_eq!(limit.held(), 0);
        assert_eq!(limit.waiting.load(Ordering::SeqCst), 0);
    }
}
