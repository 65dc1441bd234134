//! Raising the open-file soft limit to the hard limit: scenarios such as slowloris and cap hold
//! thousands of connections, more than the usual soft limit of 1024.

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; a failure leaves the limit as it was (the
/// scenarios that need more then report what they could not open).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}
