//! What one idle TLS connection costs the server in heap, counted by a global allocator (its own test
//! binary, because the allocator is global).
//!
//! Each client completes a handshake (ECDSA P-256, TLS 1.3) and one echo exchange, so the session's read
//! and write paths have both run, then stays silent, as an idle HTTP keep-alive or WebSocket connection
//! does. Only allocations made on the server's runtime threads are counted (the clients run on a runtime
//! of their own), so the figure is the server's alone. Besides what a plain idle connection holds (see
//! `idle_memory.rs`), an idle TLS connection keeps only the rustls session: its state machine after the
//! handshake (traffic secrets, the record layer's two AEAD keys) and lariat's `TlsStream`; lariat frees
//! its ciphertext and plaintext buffers whenever they drain.
//!
//! With the `aws-lc-rs` feature on (as under `--all-features`), the two AEAD key contexts are allocated
//! by AWS-LC's C code with `malloc`, which a Rust global allocator never sees: the figure is then about
//! 1.1 KB short of the truth. The budget holds for the ring build, where every byte is counted
//! (`cargo test -p lariat --test tls_idle_memory`, default features).

#[path = "it/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use common::tls::{connect, exchange, temp_dir, TestCert};
use common::{bind_loopback, eventually};
use lariat::tls::TlsConfig;
use lariat::{Connection, Server};
use tokio::io::AsyncWriteExt;

/// Counts the bytes live in allocations made on server threads while `COUNTING` is on, by size class.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live bytes by allocation size class: `[0, 64)`, `[64, 128)`, `[128, 256)`, … `[2^17, ∞)`.
static BY_SIZE: [AtomicIsize; 12] = [const { AtomicIsize::new(0) }; 12];

thread_local! {
    /// Set on the server runtime's threads.
    static SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn counted(size: usize, delta: isize) {
    if COUNTING.load(Relaxed) && SERVER_THREAD.with(Cell::get) {
        LIVE.fetch_add(delta, Relaxed);
        let class = (usize::BITS - (size >> 6).leading_zeros()).min(11) as usize;
        BY_SIZE[class].fetch_add(delta, Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size(), layout.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        counted(layout.size(), -(layout.size() as isize));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(layout.size(), -(layout.size() as isize));
        counted(new_size, new_size as isize);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The CLI's echo: between bursts it waits for readiness holding no buffer, flushing after writes.
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` stores its argument twice
fn echo(mut conn: Connection) -> impl Future<Output = io::Result<()>> {
    async move {
        loop {
            conn.readable().await?;
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                buf.clear();
                match conn.try_read_buf(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        conn.write_all(&buf).await?;
                        conn.flush().await?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Enough to fill rustls' session cache (256 entries, two TLS 1.3 tickets per connection), which is
/// shared, not per connection.
const WARM_UP: usize = 150;
const IDLE: usize = 500;
/// Measured on x86_64 with the ring provider, 5.1 KB in all:
/// - the connection's task cell, 0.8 KB: the handler's future and the set-up's timer (the handshake's
///   future is boxed and freed when the handler starts; held inline, it cost 2 KB more);
/// - lariat's `Session` (rustls' unbuffered connection inline), 1.3 KB;
/// - the record layer's two AES-GCM keys, 2 × 560 B, and rustls' state after the handshake (traffic
///   secrets), 650 B;
/// - a plain idle connection's registration and registry entry, and the `TlsInfo` strings.
///
/// A session that keeps a 4 KiB read buffer (rustls' buffered API did, 12.4 KB in all) fails it.
const BUDGET_PER_CONNECTION: isize = 5_632;

#[test]
fn an_idle_tls_connection_keeps_no_tls_buffer() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| SERVER_THREAD.with(|s| s.set(true)))
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let cert = TestCert::write(&temp_dir("tls-idle-memory"));
    let config = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (server, addr) = server_rt.block_on(async {
        let (listener, addr) = bind_loopback();
        let server = Server::builder()
            .tls(Some(config))
            .serve([listener], echo)
            .unwrap();
        (server, addr)
    });
    let handle = server.handle().clone();
    let connector = cert.client(&[]);

    // Opens `n` connections, each with one echo exchange, and keeps them.
    let open = |n: usize| {
        client_rt.block_on(async {
            let mut kept = Vec::with_capacity(n);
            for i in 0..n {
                let mut tls = connect(&connector, addr).await.unwrap();
                let line = format!("hello {i}\n");
                let back = exchange(&mut tls, line.as_bytes(), line.len()).await;
                assert_eq!(back, line.as_bytes());
                kept.push(tls);
            }
            kept
        })
    };
    let wait_active = |n: u64| {
        server_rt.block_on(eventually(Duration::from_secs(20), || {
            handle.stats().active == n
        }))
    };

    // Warm up: the runtime's and the registry's first allocations are not per connection.
    let warm = open(WARM_UP);
    assert!(wait_active(WARM_UP as u64));
    client_rt.block_on(async {
        for mut tls in warm {
            let _ = tls.shutdown().await;
        }
    });
    assert!(wait_active(0));
    std::thread::sleep(Duration::from_millis(100));

    LIVE.store(0, Relaxed);
    BY_SIZE.iter().for_each(|b| b.store(0, Relaxed));
    COUNTING.store(true, Relaxed);
    let idle = open(IDLE);
    assert!(
        wait_active(IDLE as u64),
        "only {} of {IDLE} connections were accepted",
        handle.stats().active
    );
    std::thread::sleep(Duration::from_millis(200));
    COUNTING.store(false, Relaxed);
    let per_connection = LIVE.load(Relaxed) / IDLE as isize;
    let classes: Vec<String> = BY_SIZE
        .iter()
        .enumerate()
        .filter(|(_, b)| b.load(Relaxed) / IDLE as isize != 0)
        .map(|(class, b)| {
            let low = if class == 0 { 0 } else { 32 << class };
            format!("≥{low} B: {}", b.load(Relaxed) / IDLE as isize)
        })
        .collect();
    eprintln!(
        "idle TLS connection: {per_connection} heap bytes ({})",
        classes.join(", ")
    );

    client_rt.block_on(async {
        for mut tls in idle {
            let _ = tls.shutdown().await;
        }
    });
    assert!(wait_active(0));
    handle.stop();

    assert!(
        per_connection >= 1_024,
        "the count missed the connections ({per_connection} B)"
    );
    assert!(
        per_connection <= BUDGET_PER_CONNECTION,
        "an idle TLS connection costs {per_connection} heap bytes (budget {BUDGET_PER_CONNECTION})"
    );
}
