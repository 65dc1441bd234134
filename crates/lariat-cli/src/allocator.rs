//! The `lariat` binary's global allocator: jemalloc (the library never sets one; its users choose).
//!
//! Under glibc's malloc an idle keep-alive connection costs several times its heap in resident memory:
//! each connection's ~20 KiB of hyper state lives its first 50 ms among the small long-lived blocks of
//! the connections already asleep, and the pages it frees stay pinned by them. jemalloc keeps blocks
//! of one size class on pages of their own and hands freed pages back when asked
//! (`crate::trim`). lariat-bench's baselines include this file, so they run on the same allocator.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation (its `_RJEM_MALLOC_CONF` environment variable
/// overrides them). No thread cache: blocks come straight from their size class's fullest page, so the few that a
/// sleeping connection keeps are packed together instead of scattered over the pages of blocks freed
/// at hibernation.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 13] = b"tcache:false\0";
