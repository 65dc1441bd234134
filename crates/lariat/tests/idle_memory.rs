//! What one idle connection costs the server in heap, counted by a global allocator.
//!
//! The benchmark measures resident memory per idle connection against a 1 KiB budget; this test pins the
//! parts lariat controls so a regression shows up in `cargo test`, not only in a benchmark run. On x86_64
//! an idle connection holds three allocations:
//! - tokio's task cell: about 104 bytes plus the connection's future, rounded up to 128 (256 when the
//!   future stays under about 150 bytes, 384 above);
//! - tokio's `ScheduledIo` for the socket's registration (256: it is cache-line aligned);
//! - lariat's registry entry (136: counters, the idle sweep's marks, a PROXY header slot), plus its slot in
//!   the registry's hash map.
//!
//! With the `metrics` feature it also checks issue 7's goal that metrics cost an idle connection under
//! 5%: `lariat::metrics::publish` copies the counters into the facade at scrape time, so a connection
//! carries nothing for it; measured here with a Prometheus recorder installed and a scrape every 10 ms.

#[path = "it/common/mod.rs"]
mod common;
mod counting;

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::{bind_loopback, eventually};
use counting::{COUNTING, LIVE};
use lariat::{Connection, Server, ServerHandle};
use tokio::io::AsyncWriteExt;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// An echo handler shaped like `lariat serve --handler echo`: between bursts it waits for readiness
/// holding no buffer. A `fn` returning `async move` because an `async fn` stores its argument twice.
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

const WARM_UP: usize = 100;
const IDLE: usize = 2_000;
/// Task 256 + `ScheduledIo` 256 + entry 136 + hash-map share, with room for the map's growth. A task
/// cell of 384 (a future grown past about 150 bytes) fails it.
const BUDGET_PER_CONNECTION: isize = 700;

/// The allocator's count is global: one measurement at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes and renders a server's metrics, as a scrape would.
type Scrape = Arc<dyn Fn(&ServerHandle) + Send + Sync>;

/// Heap bytes per idle connection of a fresh server; `scrape`, if given, runs every 10 ms meanwhile.
async fn per_idle_connection(scrape: Option<Scrape>) -> isize {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], echo).unwrap();
    let handle = server.handle().clone();
    // Clients are blocking std sockets on a plain thread: they allocate nothing on the heap per connection.
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

    // Warm up: the runtime's, the registry's and a recorder's first allocations are not per connection.
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
async fn an_idle_connection_costs_the_server_under_700_heap_bytes() {
    let per_connection = per_idle_connection(None).await;
    eprintln!("idle connection: {per_connection} heap bytes");
    assert!(
        per_connection <= BUDGET_PER_CONNECTION,
        "an idle connection costs {per_connection} heap bytes (budget {BUDGET_PER_CONNECTION})"
    );
    assert!(
        per_connection >= 256,
        "the count missed the connections ({per_connection} B)"
    );
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_cost_an_idle_connection_within_5_percent_of_off() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    let off = per_idle_connection(None).await;

    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let rendered = Arc::new(std::sync::atomic::AtomicIsize::new(0));
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
