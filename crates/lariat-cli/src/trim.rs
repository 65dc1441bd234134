//! Gives the heap that hibernated connections freed back to the OS.
//!
//! An HTTP/1.1 keep-alive connection that hibernates frees hyper's buffers (about 20 KiB of heap), but
//! an allocator keeps freed memory resident for its next allocations: after a burst of connections the
//! process would stay as large as at the burst's peak. So once connections hibernated (or were closed
//! at a deadline, which frees what their wake-up touched; `http-hello` counts both), one thread for
//! the whole process asks the allocator to hand its free pages back, at most once per [`PERIOD`]: under
//! jemalloc (the `jemalloc` feature, the default) it purges every arena's unused pages; under glibc's
//! malloc, `malloc_trim(0)` hands back the whole free pages inside the heap. A busy server whose
//! connections never go quiet never purges.

use std::sync::{Mutex, Once};
use std::time::Duration;

/// The longest a hibernation's freed memory stays resident.
pub const PERIOD: Duration = Duration::from_millis(500);

/// A running count of hibernations (one per `http-hello` handler: each route has its own).
type Count = Box<dyn Fn() -> u64 + Send>;

/// The counts the thread watches.
static COUNTS: Mutex<Vec<Count>> = Mutex::new(Vec::new());
/// The one thread, started with the first count.
static THREAD: Once = Once::new();

/// Watches `hibernated` (a running count): every [`PERIOD`], if any count grew, the freed memory goes
/// back to the OS. Each call adds a count; one thread watches them all.
pub fn after_hibernation(hibernated: impl Fn() -> u64 + Send + 'static) {
    if !CAN_RELEASE {
        return;
    }
    COUNTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(Box::new(hibernated));
    THREAD.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("lariat-trim".into())
            .spawn(|| {
                let mut seen = total();
                loop {
                    std::thread::sleep(PERIOD);
                    let now = total();
                    if now != seen {
                        seen = now;
                        release();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the heap trim thread; freed memory stays resident");
        }
    });
}

/// The sum of the counts (which only grow, so any hibernation changes it).
fn total() -> u64 {
    COUNTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .fold(0, |sum, count| sum.wrapping_add(count()))
}

/// Whether this build's allocator can be asked to give memory back.
const CAN_RELEASE: bool = cfg!(any(
    feature = "jemalloc",
    all(target_os = "linux", target_env = "gnu")
));

/// jemalloc: purges the unused pages of every arena (`MALLCTL_ARENAS_ALL`).
#[cfg(feature = "jemalloc")]
fn release() {
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: a mallctl with no old or new value; the name is NUL-terminated.
    let failed = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if failed != 0 {
        tracing::debug!(error = failed, "jemalloc's arena purge failed");
    }
}

/// glibc: `malloc_trim(0)` walks the allocator's free lists under their locks (hence the thread of
/// its own) and hands the whole free pages back (`MADV_DONTNEED`).
#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
fn release() {
    // SAFETY: malloc_trim(3) only releases free memory; it takes the allocator's own locks.
    unsafe { libc::malloc_trim(0) };
}

/// Other allocators give freed pages back on their own.
#[cfg(not(any(feature = "jemalloc", all(target_os = "linux", target_env = "gnu"))))]
fn release() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threads of this process named `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|comm| comm.trim_end() == name)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// Two `http-hello` handlers (two routes) share one trim thread, which watches both counts.
    #[test]
    #[cfg(target_os = "linux")]
    fn two_handlers_start_one_thread_that_watches_both() {
        if !CAN_RELEASE {
            return;
        }
        after_hibernation(|| 3);
        after_hibernation(|| 4);
        // A thread names itself once it runs: wait for the first, then give a second time to show.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while threads_named("lariat-trim") == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(threads_named("lariat-trim"), 1);
        assert_eq!(total(), 7);
    }
}
