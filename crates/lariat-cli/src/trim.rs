//! Gives the heap that hibernated connections freed back to the OS.
//!
//! An HTTP/1.1 keep-alive connection that hibernates frees hyper's buffers (about 20 KiB of heap), but
//! glibc's allocator keeps freed memory in its free lists, resident: after a burst of connections the
//! process stays as large as at the burst's peak. `malloc_trim(0)` hands the whole free pages inside
//! the heap back (`MADV_DONTNEED`). It walks the allocator's free lists under their locks, so it runs
//! on a thread of its own, at most once per [`PERIOD`], and only after connections hibernated: a busy
//! server whose connections never go quiet never trims.

use std::time::Duration;

/// The longest a hibernation's freed memory stays resident.
pub const PERIOD: Duration = Duration::from_millis(500);

/// Starts the thread: every [`PERIOD`], if `hibernated` (a running count) grew, trims the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn after_hibernation(hibernated: impl Fn() -> u64 + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("lariat-trim".into())
        .spawn(move || {
            let mut seen = hibernated();
            loop {
                std::thread::sleep(PERIOD);
                let now = hibernated();
                if now != seen {
                    seen = now;
                    // SAFETY: malloc_trim(3) only releases free memory; it takes the allocator's
                    // own locks.
                    unsafe { libc::malloc_trim(0) };
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the heap trim thread; freed memory stays resident");
    }
}

/// Other allocators give freed pages back on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn after_hibernation(_hibernated: impl Fn() -> u64 + Send + 'static) {}
