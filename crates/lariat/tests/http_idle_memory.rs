//! What one idle HTTP/1.1 keep-alive connection of `lariat::http` costs the server in heap, counted by
//! a global allocator (its own test binary: the allocator is global).
//!
//! Each connection sends one request, reads the answer and then stays open, as a browser's or a load
//! balancer's keep-alive connection does. Once it has been quiet for `HttpOptions::hibernate_after`, the
//! connection hibernates: hyper's connection (its read and write buffers, the dispatcher, the header
//! timer) is dropped, and the connection sleeps in the server's parking lot: its task ends and its
//! socket leaves tokio's reactor (one epoll instance of the lot watches it), so what is left is its
//! registry entry, its slot in the lot and the small state its next hyper connection is rebuilt from.
#![cfg(feature = "http")]

#[path = "it/common/mod.rs"]
mod common;
mod counting;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{bind_loopback, eventually};
use counting::{COUNTING, LIVE};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use lariat::http::{Http, HttpOptions};
use lariat::Server;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

const WARM_UP: usize = 100;
const IDLE: usize = 1_000;
/// A hibernated connection sleeps in the server's parking lot: no task (nor a handle that would keep
/// the ended task's memory), no tokio registration, no timer. What is left (about 250 B): its registry
/// entry (128) and its slot in the registry's set, its place in the lot (a 32-byte slab slot and an
/// 8-byte deadline in a sorted set, shared structures that grow in steps) and one boxed state its next
/// hyper connection is rebuilt from (the socket, the guard, the service itself). Awake, a connection
/// holds about 20 KiB.
const BUDGET_PER_CONNECTION: isize = 280;
/// The handler's future: the wait for the first bytes; serving (every hyper connection and the
/// hibernation in the task of a connection that cannot sleep in the lot) is boxed.
const FUTURE_BUDGET: usize = 300;
/// How long a connection must be quiet before it hibernates, in these tests.
const HIBERNATE_AFTER: Duration = Duration::from_millis(100);

/// The allocator's count is global: one measurement at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens `n` connections, each with one request answered, on a plain thread (blocking std sockets
/// allocate nothing on the heap per connection).
fn keep_alive_clients(
    addr: std::net::SocketAddr,
    n: usize,
) -> std::thread::JoinHandle<Vec<std::net::TcpStream>> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut got = 0;
                while !buf[..got].ends_with(b"hello\n") {
                    let n = s.read(&mut buf[got..]).unwrap();
                    assert!(n > 0, "closed before the answer");
                    got += n;
                }
                s
            })
            .collect()
    })
}

/// Heap bytes per idle keep-alive connection of a fresh server with `options`, counted `settle` after
/// the last answer, and the size of the serving future.
async fn per_idle_connection(options: HttpOptions, settle: Duration) -> (isize, usize) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (listener, addr) = bind_loopback();
    let hello = hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
    });
    let http = Http::with_options(hello, options);
    let size = Arc::new(AtomicUsize::new(0));
    let handler = {
        let size = size.clone();
        move |conn: lariat::Connection| {
            let fut = lariat::Handler::call(&http, conn);
            size.store(std::mem::size_of_val(&*fut), Relaxed);
            fut
        }
    };
    let server = Server::builder().serve([listener], handler).unwrap();
    let handle = server.handle().clone();

    // Warm up: the runtime's, the registry's and hyper's first allocations are not per connection.
    let warm = keep_alive_clients(addr, WARM_UP).join().unwrap();
    tokio::time::sleep(settle).await;
    drop(warm);
    assert!(eventually(Duration::from_secs(10), || handle.stats().active == 0).await);
    tokio::time::sleep(Duration::from_millis(50)).await;

    LIVE.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let idle = keep_alive_clients(addr, IDLE).join().unwrap();
    assert_eq!(handle.stats().active, IDLE as u64);
    tokio::time::sleep(settle).await;
    COUNTING.store(false, Relaxed);
    let per_connection = LIVE.load(Relaxed) / IDLE as isize;
    drop(idle);
    assert!(eventually(Duration::from_secs(10), || handle.stats().active == 0).await);
    handle.stop();
    (per_connection, size.load(Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_keep_alive_connection_costs_under_the_budget() {
    let (awake, _) = per_idle_connection(
        HttpOptions::default().hibernate_after(None),
        Duration::from_millis(500),
    )
    .await;
    let (hibernated, future) = per_idle_connection(
        HttpOptions::default().hibernate_after(Some(HIBERNATE_AFTER)),
        HIBERNATE_AFTER * 5,
    )
    .await;
    eprintln!(
        "idle keep-alive connection: {awake} heap bytes awake, {hibernated} hibernated \
         (serving future {future} B)"
    );
    assert!(
        future <= FUTURE_BUDGET,
        "the serving future is {future} bytes (budget {FUTURE_BUDGET})"
    );
    assert!(
        hibernated <= BUDGET_PER_CONNECTION,
        "a hibernated connection costs {hibernated} heap bytes (budget {BUDGET_PER_CONNECTION})"
    );
    assert!(
        hibernated >= 224,
        "the count missed the connections ({hibernated} B: less than an entry, a lot slot and a sleeper)"
    );
    assert!(
        hibernated < awake,
        "hibernating saved nothing ({hibernated} B against {awake} B awake)"
    );
}
