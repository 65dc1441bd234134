//! Backing off from resource shortage without spinning and without flooding the log.
//!
//! An *episode* starts with the first shortage error and ends when the acceptor has caught up (an accept
//! would block: the backlog is empty). One warning per episode, with a hint; one info line when it ends,
//! with how long it lasted and how many accepts failed. Episodes are counted, and logged at most once a
//! second: a peer that keeps the server at its descriptor limit ends and starts one each time the queue
//! empties, and must not flood the log (the next logged episode says how many went unlogged). Between retries the acceptor sleeps with an
//! exponential delay (5 ms doubling to 1 s, as Go's net/http does), but wakes the moment one of this
//! server's connections closes, because that closed a descriptor and the next accept can succeed.

use std::io;
use std::time::{Duration, Instant};

use crate::accept::classify::Shortage;
use crate::admission::LogLimit;
use crate::server::stats::Stats;
use crate::ListenAddr;

/// The delays between retries while short of resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first delay. Default 5 ms.
    pub initial: Duration,
    /// The longest delay. Default 1 s.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(5),
            max: Duration::from_secs(1),
        }
    }
}

/// The shortest delay used, whatever the policy says: a zero delay would be a busy loop.
const MIN_DELAY: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Episode {
    started: Instant,
    failed: u64,
    cause: Option<Shortage>,
    /// Whether its start was logged (then its end is too).
    logged: bool,
}

/// Tracks the current shortage episode and the next delay for one acceptor.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
    episode: Option<Episode>,
    /// At most one logged episode a second.
    log: LogLimit,
    epoch: Instant,
    /// Episodes since the last logged one that were not logged.
    unlogged: u64,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Self {
        // A zero delay would spin; an initial delay above the cap makes no sense.
        let max = policy.max.max(MIN_DELAY);
        let policy = BackoffPolicy {
            initial: policy.initial.clamp(MIN_DELAY, max),
            max,
        };
        Backoff {
            policy,
            next: policy.initial,
            episode: None,
            log: LogLimit::default(),
            epoch: Instant::now(),
            unlogged: 0,
        }
    }

    /// Records a failed accept (`cause` is `None` for an undocumented errno) and returns how long to wait.
    pub(crate) fn failed(
        &mut self,
        cause: Option<Shortage>,
        err: &io::Error,
        addr: &ListenAddr,
        stats: &Stats,
    ) -> Duration {
        Stats::add(&stats.shortage_errors, 1);
        let new_cause = self.episode.as_ref().is_none_or(|e| e.cause != cause);
        let starts = self.episode.is_none();
        let logged = starts && {
            Stats::add(&stats.shortage_episodes, 1);
            let allowed = self.log.allow(self.epoch.elapsed().as_millis() as u64);
            if !allowed {
                self.unlogged += 1;
            }
            allowed
        };
        let episode = self.episode.get_or_insert_with(|| Episode {
            started: Instant::now(),
            failed: 0,
            cause,
            logged,
        });
        if new_cause && episode.logged {
            let hint = cause.map_or_else(
                || "accept(2) returned an undocumented error; retrying with backoff".to_owned(),
                Shortage::hint,
            );
            tracing::warn!(
                listener = %addr,
                error = %err,
                hint = %hint,
                unlogged_episodes = std::mem::take(&mut self.unlogged),
                "accept paused: {}; queued clients wait in the backlog and are served when it clears \
                 (logged at most once a second; all are counted)",
                cause.map_or("unexpected error", describe),
            );
        } else if new_cause {
            tracing::debug!(listener = %addr, error = %err, "accept paused");
        }
        episode.failed += 1;
        episode.cause = cause;
        let delay = self.next;
        self.next = self
            .next
            .checked_mul(2)
            .unwrap_or(self.policy.max)
            .min(self.policy.max);
        delay
    }

    /// An accept succeeded: the next failure starts from the shortest delay again.
    pub(crate) fn succeeded(&mut self) {
        self.next = self.policy.initial;
    }

    /// The backlog is empty: the episode, if any, is over.
    pub(crate) fn caught_up(&mut self, addr: &ListenAddr) {
        if let Some(episode) = self.episode.take() {
            let lasted_ms = episode.started.elapsed().as_millis() as u64;
            if episode.logged {
                tracing::info!(
                    listener = %addr,
                    lasted_ms,
                    failed_accepts = episode.failed,
                    "accept resumed: shortage over, backlog drained",
                );
            } else {
                tracing::debug!(listener = %addr, lasted_ms, failed_accepts = episode.failed, "accept resumed");
            }
        }
        self.next = self.policy.initial;
    }

    pub(crate) fn in_episode(&self) -> bool {
        self.episode.is_some()
    }
}

fn describe(cause: Shortage) -> &'static str {
    match cause {
        Shortage::ProcessFds => "out of file descriptors (EMFILE)",
        Shortage::SystemFds => "system file table full (ENFILE)",
        Shortage::Buffers => "out of socket buffers (ENOBUFS)",
        Shortage::Memory => "out of kernel memory (ENOMEM)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let stats = Stats::default();
        let addr = ListenAddr::Unix("/x".into());
        let mut b = Backoff::new(BackoffPolicy::default());
        let delays: Vec<_> = (0..10)
            .map(|_| b.failed(Some(Shortage::ProcessFds), &emfile(), &addr, &stats))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        let d = b.failed(Some(Shortage::ProcessFds), &emfile(), &addr, &stats);
        assert_eq!(d, Duration::from_millis(5));
    }

    #[test]
    fn extreme_policies_neither_spin_nor_overflow() {
        let stats = Stats::default();
        let addr = ListenAddr::Unix("/x".into());
        let mut zero = Backoff::new(BackoffPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        });
        assert_eq!(zero.failed(None, &emfile(), &addr, &stats), MIN_DELAY);
        let mut unbounded = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(5),
            max: Duration::MAX,
        });
        for _ in 0..200 {
            unbounded.failed(Some(Shortage::ProcessFds), &emfile(), &addr, &stats);
        }
    }

    #[test]
    fn one_episode_until_caught_up() {
        let stats = Stats::default();
        let addr = ListenAddr::Unix("/x".into());
        let mut b = Backoff::new(BackoffPolicy::default());
        for _ in 0..100 {
            b.failed(Some(Shortage::ProcessFds), &emfile(), &addr, &stats);
            b.succeeded(); // a freed descriptor lets one accept through, the next fails again
        }
        assert!(b.in_episode());
        assert_eq!(stats.snapshot().shortage_episodes, 1);
        assert_eq!(stats.snapshot().shortage_errors, 100);
        b.caught_up(&addr);
        assert!(!b.in_episode());
        b.failed(Some(Shortage::ProcessFds), &emfile(), &addr, &stats);
        assert_eq!(stats.snapshot().shortage_episodes, 2);
    }

    #[test]
    fn back_to_back_episodes_are_counted_but_logged_once_a_second() {
        let stats = Stats::default();
        let addr = ListenAddr::Unix("/x".into());
        let mut b = Backoff::new(BackoffPolicy::default());
        let mut logged = 0;
        // A peer that keeps the server at its limit: an episode each time the queue empties.
        for _ in 0..1000 {
            b.failed(Some(Shortage::ProcessFds), &emfile(), &addr, &stats);
            logged += u64::from(b.episode.as_ref().is_some_and(|e| e.logged));
            b.caught_up(&addr);
        }
        assert_eq!(stats.snapshot().shortage_episodes, 1000);
        assert_eq!(
            logged, 1,
            "a thousand episodes within a second logged {logged} times"
        );
        assert_eq!(b.unlogged, 999, "the next logged episode reports the rest");
    }
}
