//! Deadlines from durations a user chose. `Instant + Duration` panics when the sum does not fit, so a
//! timeout of "forever" written as a huge number (`--drain-timeout 10000000000000000000`) would crash
//! the server at the moment it needs the timeout; here it means "far in the future" instead.

use std::time::Duration;

use tokio::time::Instant;

/// About thirty years: later than any deadline a running server will reach.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `start + timeout`, or a far-future instant when that does not fit.
pub(crate) fn after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_timeout_is_far_away_not_a_panic() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = after(now, Duration::from_secs(10_000_000_000_000_000_000));
        assert!(far >= now + FAR, "a huge timeout lands in the far future");
        assert!(after(now, Duration::MAX) > now);
    }
}
