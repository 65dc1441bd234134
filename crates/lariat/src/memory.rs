//! Which allocations live as long as a connection: a hint a global allocator can read.
//!
//! A server with many idle connections keeps a few hundred bytes per connection for a long time (its
//! registry entry, the state it sleeps with) while each connection, awake, allocates and frees tens of
//! KiB (protocol buffers, its task). When both come from the same pages, the long-lived blocks pin
//! pages the short-lived ones freed: after a burst of connections that then go idle, resident memory
//! stays several times the heap the idle connections hold.
//!
//! lariat marks the allocations it makes for a connection's whole life (the registry entry, what a
//! hibernated HTTP connection sleeps with, its place in the parking lot): while
//! [`long_lived`] returns `true` on a thread, the allocation being made is one of them. A global
//! allocator that can place blocks apart (jemalloc's explicit arenas, for example; the `lariat`
//! binary does so) can put them on pages of their own, so the pages the awake connections free hold
//! nothing else and can go back to the OS. Any other allocator ignores the hint and nothing changes.

use std::cell::Cell;

thread_local! {
    /// Set while lariat allocates something that lives as long as a connection. A `const` thread
    /// local without a destructor: reading it from inside an allocator allocates nothing.
    static LONG_LIVED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the allocation this thread is making now will live as long as a connection (see the
/// [module](self)). Cheap (a thread-local read) and safe to call from a `GlobalAlloc`: it never
/// allocates. `false` on a thread that is being torn down.
#[inline]
pub fn long_lived() -> bool {
    LONG_LIVED.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f` with the hint set: what it allocates is expected to live as long as a connection.
/// Nested calls keep the hint until the outermost one returns (or unwinds).
///
/// lariat calls it for its own per-connection state; a handler may call it for what it keeps per
/// connection for long (a session's state), and only for that: a block allocated under the hint and
/// freed soon after leaves a hole among the long-lived ones.
pub fn keep<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the previous value, even when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = LONG_LIVED.try_with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(LONG_LIVED.try_with(|c| c.replace(true)).unwrap_or(false));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_holds_inside_and_is_restored_after() {
        assert!(!long_lived());
        let inside = keep(|| {
            let nested = keep(long_lived);
            (long_lived(), nested)
        });
        assert_eq!(inside, (true, true));
        assert!(!long_lived());
    }

    #[test]
    fn a_panic_inside_restores_the_hint() {
        let r = std::panic::catch_unwind(|| keep(|| panic!("inside")));
        assert!(r.is_err());
        assert!(!long_lived());
    }

    #[test]
    fn other_threads_do_not_see_it() {
        keep(|| {
            let elsewhere = std::thread::spawn(long_lived).join().expect("thread");
            assert!(!elsewhere);
        });
    }
}
