//! Raising the open-file soft limit to the hard limit at start, as Go's runtime does since 1.19.
//!
//! The soft limit is often 1024 for historical reasons (select(2)); a server that never calls select gains
//! nothing from it and runs out of descriptors early. The hard limit is the operator's real decision.

// rlim_t is u64 on Linux but not on every Unix.
#[allow(clippy::unnecessary_cast)]
/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit. Returns `(before, after)` when it changed.
pub fn raise_nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return None;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return None;
        }
        Some((before as u64, lim.rlim_max as u64))
    }
}
