//! The `lariat` binary's global allocator: jemalloc (the library never sets one; its users choose),
//! with what lives as long as a connection on pages of its own.
//!
//! Under glibc's malloc an idle keep-alive connection costs several times its heap in resident memory:
//! each connection's ~20 KiB of hyper state lives its first 50 ms among the small long-lived blocks of
//! the connections already asleep, and the pages it frees stay pinned by them. jemalloc keeps blocks
//! of one size class on pages of their own and hands freed pages back when asked
//! (`crate::trim`). What still mixes is blocks of one size class: an idle connection's registry
//! entry lands in a page among blocks of the same size that awake connections free a moment later.
//! So the blocks the library marks as living as long as a connection ([`lariat::memory`]) come from
//! an arena of their own, created on the first of them: the pages awake connections use and free
//! hold nothing else, and go back to the OS whole.
//!
//! lariat-bench's baselines include this file, so they run on the same allocator (they never mark a
//! block, so they only pay the look at the mark).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU32, Ordering};

use tikv_jemalloc_sys as ffi;
use tikv_jemallocator::Jemalloc;

#[global_allocator]
static GLOBAL: Placed = Placed;

/// jemalloc's settings, read at its first allocation (its `_RJEM_MALLOC_CONF` environment variable
/// overrides them).
/// - `tcache:false`, no thread cache: blocks come straight from their size class's fullest page, so
///   the few that a sleeping connection keeps are packed together instead of scattered over the pages
///   of blocks freed at hibernation.
/// - `slab_sizes:4097-14336:16`: blocks of 4 to 14 KiB (hyper's 8 KiB read and write buffers, a few
///   per awake connection) come eight to a 64 KiB slab instead of one to a slab of their own. jemalloc
///   keeps a descriptor per slab (and per free range between them) and never gives its metadata back,
///   so each burst of connections left metadata for its peak of slabs behind: one slab per 8 KiB
///   block left about 200 KiB more for 3,000 connections opened 256 at a time than four to a slab,
///   and eight to a slab about 90 KiB less again (docs/performance.md).
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 38] = b"tcache:false,slab_sizes:4097-14336:16\0";

/// The long-lived arena's index + 1; [`UNSET`] before its creation, [`FAILED`] if it could not be
/// created (every block then comes from the default arenas, as without the mark).
static ARENA: AtomicU32 = AtomicU32::new(UNSET);
const UNSET: u32 = 0;
const CREATING: u32 = u32::MAX - 1;
const FAILED: u32 = u32::MAX;

/// jemalloc, with the blocks marked long-lived placed in their own arena.
struct Placed;

impl Placed {
    /// The `mallocx` flags that place a block in the long-lived arena, if this block is marked and
    /// the arena exists (or can be made now).
    #[inline]
    fn long_lived_flags(align: usize, size: usize) -> Option<i32> {
        if !lariat::memory::long_lived() {
            return None;
        }
        let arena = long_lived_arena()?;
        let align = if align <= 16 && align <= size {
            0
        } else {
            ffi::MALLOCX_ALIGN(align)
        };
        Some(align | ffi::MALLOCX_ARENA(arena as usize) | ffi::MALLOCX_TCACHE_NONE)
    }
}

/// The long-lived arena's index, created by the first marked block (a thread that finds another
/// creating it waits the few microseconds that takes). `None` if jemalloc could not create it.
#[cold]
fn long_lived_arena() -> Option<u32> {
    match ARENA.load(Ordering::Acquire) {
        FAILED => None,
        CREATING => {
            while ARENA.load(Ordering::Acquire) == CREATING {
                std::thread::yield_now();
            }
            long_lived_arena()
        }
        UNSET => {
            if ARENA
                .compare_exchange(UNSET, CREATING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return long_lived_arena();
            }
            let mut index: u32 = 0;
            let mut len = std::mem::size_of::<u32>();
            // SAFETY: `arenas.create` writes the new arena's index (an unsigned) into `index`, whose
            // size is passed; it allocates through jemalloc's own metadata allocator, not through
            // this global allocator, so nothing recurses.
            let r = unsafe {
                ffi::mallctl(
                    c"arenas.create".as_ptr(),
                    (&mut index as *mut u32).cast(),
                    &mut len,
                    std::ptr::null_mut(),
                    0,
                )
            };
            if r != 0 || index >= CREATING - 1 {
                ARENA.store(FAILED, Ordering::Release);
                return None;
            }
            ARENA.store(index + 1, Ordering::Release);
            Some(index)
        }
        set => Some(set - 1),
    }
}

// SAFETY: every path is jemalloc's: a block from any arena is freed and resized by jemalloc whatever
// arena it came from, and the flags keep the layout's alignment.
unsafe impl GlobalAlloc for Placed {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Placed::long_lived_flags(layout.align(), layout.size()) {
            // SAFETY: `layout.size()` is not zero (GlobalAlloc's contract).
            Some(flags) => unsafe { ffi::mallocx(layout.size(), flags).cast() },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { Jemalloc.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Placed::long_lived_flags(layout.align(), layout.size()) {
            // SAFETY: as in `alloc`.
            Some(flags) => unsafe { ffi::mallocx(layout.size(), flags | ffi::MALLOCX_ZERO).cast() },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { Jemalloc.alloc_zeroed(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees; `sdallocx` finds the block's arena itself.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match Placed::long_lived_flags(layout.align(), new_size) {
            // SAFETY: `ptr` came from this allocator with `layout`; `new_size` is not zero.
            Some(flags) => unsafe { ffi::rallocx(ptr.cast(), new_size, flags).cast() },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { Jemalloc.realloc(ptr, layout, new_size) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena jemalloc says a block belongs to.
    fn arena_of(ptr: *const u8) -> u32 {
        let mut arena: u32 = u32::MAX;
        let mut len = std::mem::size_of::<u32>();
        let mut p = ptr;
        // SAFETY: `arenas.lookup` reads a pointer and writes an unsigned; sizes are passed.
        let r = unsafe {
            ffi::mallctl(
                c"arenas.lookup".as_ptr(),
                (&mut arena as *mut u32).cast(),
                &mut len,
                (&mut p as *mut *const u8).cast(),
                std::mem::size_of::<*const u8>(),
            )
        };
        assert_eq!(r, 0, "arenas.lookup");
        arena
    }

    #[test]
    fn marked_blocks_live_in_their_own_arena_and_others_do_not() {
        let kept = lariat::memory::keep(|| Box::new([7u8; 144]));
        let plain = Box::new([7u8; 144]);
        let Some(arena) = long_lived_arena() else {
            panic!("the long-lived arena was not created");
        };
        assert_eq!(arena_of(kept.as_ptr()), arena);
        assert_ne!(arena_of(plain.as_ptr()), arena);
        // Grown under the mark, a vector stays there; freed anywhere, blocks go back to their arena.
        let grown = lariat::memory::keep(|| {
            let mut v: Vec<u64> = Vec::with_capacity(4);
            v.extend(0..1000);
            v
        });
        assert_eq!(arena_of(grown.as_ptr().cast()), arena);
        assert_eq!(grown.iter().sum::<u64>(), 499_500);
        assert!(kept.iter().all(|&b| b == 7));
    }

    #[test]
    fn aligned_marked_blocks_keep_their_alignment() {
        #[repr(align(4096))]
        struct Page([u8; 4096]);
        let page = lariat::memory::keep(|| Box::new(Page([1; 4096])));
        assert_eq!((&*page as *const Page as usize) % 4096, 0);
        assert_eq!(page.0[4095], 1);
    }
}
