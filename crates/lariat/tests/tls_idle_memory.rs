//! What one idle TLS connection costs the server in heap, counted by a global allocator (its own test
//! binary, because the allocator is global).
//!
//! Each client completes a handshake (ECDSA P-256, TLS 1.3) and one exchange, so the session's read and
//! write paths have both run, then stays silent, as an idle HTTP keep-alive or WebSocket connection
//! does. Only allocations made on the server's runtime threads are counted (the clients run on a runtime
//! of their own), so the figure is the server's alone. Two idle connections are measured:
//! - an echo handler waiting for readiness in its task (the TLS layer on its own): besides what a plain
//!   idle connection holds (see `idle_memory.rs`), lariat's `TlsStream` with its session on lariat's
//!   record layer at rest (keys, IVs, sequence numbers, rustls' key schedule for key updates; no AEAD
//!   object, no buffer);
//! - with feature `http`, a `lariat::http` hello service: the connection sleeps in the server's parking
//!   lot (no task, no tokio registration) with its record layer.
//!
//! With the `aws-lc-rs` feature on (as under `--all-features`), AEAD key contexts are allocated by
//! AWS-LC's C code with `malloc`, which a Rust global allocator never sees, and an idle connection in its
//! task keeps its sealer (see `handshake/tls/records.rs`). The budgets hold for the ring build, where
//! every byte is counted (`cargo test -p lariat --features http --test tls_idle_memory`).

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
/// Measured on x86_64 with the ring provider, 2.8 KB in all (5.1 KB before lariat's record layer,
/// 12.4 KB with rustls' buffered API):
/// - lariat's `TlsStream` (socket, the session with its record layer inline: rustls'
///   `KernelConnection` 560 B, the two directions' keys and sequence numbers), 976 B;
/// - rustls' key schedule after the handshake (traffic secrets, for key updates), boxed in the
///   `KernelConnection`;
/// - the connection's task cell (the handler's future) and a plain idle connection's registration and
///   registry entry, and the one `TlsInfo`.
///
/// A session that keeps its AEAD objects while idle (2 × 560 B with ring) fails it.
const ECHO_BUDGET: isize = 3_072;
/// The same connection asleep in the parking lot under `lariat::http` (measured 2.5 KB, x86_64, ring):
/// no task, no tokio registration, no `TlsStream`: the socket, the registry entry, the service's state
/// and the record layer at rest.
#[cfg(feature = "http")]
const HTTP_BUDGET: isize = 2_688;

/// One measurement at a time: the counters are global.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What one client does before it goes quiet.
#[derive(Clone, Copy)]
enum Exchange {
    /// An echoed line.
    Echo,
    /// One HTTP/1.1 request and its whole answer (ending with `hi`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Http,
}

/// Heap bytes per idle TLS connection of a server running `handler`, once `settled(n)` says the `n`
/// connections opened are idle.
fn measure<H: lariat::Handler>(
    name: &str,
    handler: H,
    exchange_kind: Exchange,
    settled: impl Fn(usize) -> bool,
) -> isize {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
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

    let cert = TestCert::write(&temp_dir(&format!("tls-idle-memory-{name}")));
    let config = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path)
        .unwrap()
        .with_alpn(["http/1.1"]);
    let (server, addr) = server_rt.block_on(async {
        let (listener, addr) = bind_loopback();
        let server = Server::builder()
            .tls(Some(config))
            .serve([listener], handler)
            .unwrap();
        (server, addr)
    });
    let handle = server.handle().clone();
    let connector = cert.client(&[b"http/1.1"]);

    // Opens `n` connections, each with one exchange, and keeps them.
    let open = |n: usize| {
        client_rt.block_on(async {
            let mut kept = Vec::with_capacity(n);
            for i in 0..n {
                let mut tls = connect(&connector, addr).await.unwrap();
                match exchange_kind {
                    Exchange::Echo => {
                        let line = format!("hello {i}\n");
                        let back = exchange(&mut tls, line.as_bytes(), line.len()).await;
                        assert_eq!(back, line.as_bytes());
                    }
                    Exchange::Http => {
                        tls.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                            .await
                            .unwrap();
                        let mut got = Vec::new();
                        while !got.ends_with(b"\r\n\r\nhi") {
                            let mut buf = [0u8; 1024];
                            let n = tokio::io::AsyncReadExt::read(&mut tls, &mut buf)
                                .await
                                .unwrap();
                            assert!(n > 0, "closed before the answer");
                            got.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                kept.push(tls);
            }
            kept
        })
    };
    let wait = |ok: &dyn Fn() -> bool| server_rt.block_on(eventually(Duration::from_secs(20), ok));

    // Warm up: the runtime's, the registry's and the lot's first allocations are not per connection.
    let warm = open(WARM_UP);
    assert!(wait(&|| handle.stats().active == WARM_UP as u64));
    assert!(wait(&|| settled(WARM_UP)));
    client_rt.block_on(async {
        for mut tls in warm {
            let _ = tls.shutdown().await;
        }
    });
    assert!(wait(&|| handle.stats().active == 0));
    std::thread::sleep(Duration::from_millis(100));

    LIVE.store(0, Relaxed);
    BY_SIZE.iter().for_each(|b| b.store(0, Relaxed));
    COUNTING.store(true, Relaxed);
    let idle = open(IDLE);
    assert!(
        wait(&|| handle.stats().active == IDLE as u64),
        "only {} of {IDLE} connections were accepted",
        handle.stats().active
    );
    assert!(
        wait(&|| settled(WARM_UP + IDLE)),
        "{name}: not idle in time"
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
        "idle TLS connection ({name}): {per_connection} heap bytes ({})",
        classes.join(", ")
    );

    client_rt.block_on(async {
        for mut tls in idle {
            let _ = tls.shutdown().await;
        }
    });
    assert!(wait(&|| handle.stats().active == 0));
    handle.stop();

    assert!(
        per_connection >= 1_024,
        "the count missed the connections ({per_connection} B)"
    );
    per_connection
}

#[test]
fn an_idle_tls_connection_keeps_only_its_keys() {
    let per_connection = measure("echo", echo, Exchange::Echo, |_| true);
    assert!(
        per_connection <= ECHO_BUDGET,
        "an idle TLS connection costs {per_connection} heap bytes (budget {ECHO_BUDGET})"
    );
}

#[cfg(feature = "http")]
#[test]
fn an_idle_tls_http_connection_sleeps_in_the_lot_with_its_keys() {
    use http_body_util::Full;
    let hello = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
            bytes::Bytes::from_static(b"hi"),
        )))
    });
    let http = lariat::http::Http::with_options(
        hello,
        lariat::http::HttpOptions::default().hibernate_after(Some(Duration::from_millis(50))),
    );
    let stats = http.clone();
    let per_connection = measure("http", http, Exchange::Http, move |n| {
        stats.stats().slept >= n as u64
    });
    assert!(
        per_connection <= HTTP_BUDGET,
        "an idle TLS HTTP connection costs {per_connection} heap bytes (budget {HTTP_BUDGET})"
    );
}
