//! Metrics cost an idle connection nothing (issue 7's benchmark: memory per idle connection with metrics
//! on within 5% of off).
//!
//! `lariat::metrics::publish` copies the server's counters into the `metrics` facade at scrape time, so
//! a connection carries nothing for it. This measures it the way `idle_memory.rs` does, with a counting
//! allocator: the heap bytes per idle connection of a server with no recorder, then of a server whose
//! counters are published to an installed Prometheus recorder and rendered every 10 ms throughout.
#![cfg(feature = "metrics")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::{bind_loopback, eventually};
use lariat::{Connection, Server, ServerHandle};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::AsyncWriteExt;

/// Counts the bytes live in allocations made while `COUNTING` is on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The CLI's echo: idle, it waits for readiness holding no buffer.
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` stores its argument twice
fn echo(mut conn: Connection) -> impl Future<Output = io::Result<()>> {
    async move {
        loop {
            conn.readable().await?;
            let mut buf = Vec::with_capacity(64 * 1024);
            loop {
                buf.clear();
                match conn.try_read_buf(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(_) => conn.write_all(&buf).await?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Publishes and renders a server's metrics, as a scrape would.
type Scrape = Arc<dyn Fn(&ServerHandle) + Send + Sync>;

const WARM_UP: usize = 100;
const IDLE: usize = 2_000;

/// Heap bytes per idle connection of a fresh server; `scrape`, if given, runs every 10 ms meanwhile.
async fn per_idle_connection(scrape: Option<Scrape>) -> isize {
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], echo).unwrap();
    let handle = server.handle().clone();
    let connect = move |n: usize| {
        std::thread::spawn(move || {
            (0..n)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let scraper = scrape.map(|scrape| {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                scrape(&handle);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });

    // Warm up: the runtime's, the registry's and the recorder's first allocations are not per connection.
    let warm = connect(WARM_UP).join().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || handle.stats().active
            == WARM_UP as u64)
        .await
    );
    drop(warm);
    assert!(eventually(Duration::from_secs(10), || handle.stats().active == 0).await);
    tokio::time::sleep(Duration::from_millis(50)).await;

    LIVE.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let idle = connect(IDLE).join().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || handle.stats().active
            == IDLE as u64)
        .await,
        "only {} of {IDLE} connections were accepted",
        handle.stats().active
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    COUNTING.store(false, Relaxed);
    let per_connection = LIVE.load(Relaxed) / IDLE as isize;
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    drop(idle);
    assert!(eventually(Duration::from_secs(10), || handle.stats().active == 0).await);
    handle.stop();
    per_connection
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_cost_an_idle_connection_within_5_percent_of_off() {
    let off = per_idle_connection(None).await;

    let prometheus: PrometheusHandle = PrometheusBuilder::new().install_recorder().unwrap();
    let rendered = Arc::new(AtomicIsize::new(0));
    let scrape: Scrape = Arc::new({
        let rendered = rendered.clone();
        move |handle: &ServerHandle| {
            handle.publish_metrics();
            let text = prometheus.render();
            assert!(text.contains("lariat_active"));
            rendered.fetch_add(1, Relaxed);
        }
    });
    let on = per_idle_connection(Some(scrape)).await;
    eprintln!(
        "heap per idle connection: metrics off {off} B, on {on} B ({:+.1}%), {} scrapes",
        (on - off) as f64 * 100.0 / off as f64,
        rendered.load(Relaxed)
    );
    assert!(rendered.load(Relaxed) > 0, "never scraped");
    assert!(off >= 256, "the count missed the connections ({off} B)");
    assert!(
        on * 100 <= off * 105,
        "metrics on: {on} B per idle connection, off: {off} B (more than 5%)"
    );
}
