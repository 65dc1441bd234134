//! The exact connection cap: never more than the cap held at once, everyone served in the end, and a
//! raised cap admitting the waiting clients at once.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bind_loopback, eventually};
use lariat::{Connection, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_the_cap_and_all_served() {
    let (listener, addr) = bind_loopback();
    let gauge = Arc::new(Gauge::default());
    let handler = {
        let gauge = gauge.clone();
        move |mut conn: Connection| {
            let gauge = gauge.clone();
            async move {
                gauge.enter();
                // Hold the slot a while so the 200 clients pile up behind the cap.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut byte = [0u8; 1];
                let result = conn.read_exact(&mut byte).await.map(|_| ());
                let result = match result {
                    Ok(()) => conn.write_all(&byte).await,
                    Err(e) => Err(e),
                };
                gauge.leave();
                result
            }
        }
    };
    let server = Server::builder()
        .max_connections(50)
        .serve([listener], handler)
        .unwrap();

    let clients: Vec<_> = (0..200u8)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(&[i]).await.unwrap();
                let mut back = [0u8; 1];
                c.read_exact(&mut back).await.unwrap();
                assert_eq!(back[0], i);
            })
        })
        .collect();
    // Sample the server's own view while the clients pile up.
    let sampler = {
        let handle = server.handle().clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..400 {
                peak = peak.max(handle.stats().active);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            peak
        })
    };
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a client was never served")
            .unwrap();
    }
    let sampled_peak = sampler.await.unwrap();
    assert!(sampled_peak <= 50, "server held {sampled_peak} connections");
    assert!(gauge.peak.load(Ordering::SeqCst) <= 50);
    assert_eq!(
        gauge.peak.load(Ordering::SeqCst),
        50,
        "the cap was never reached?"
    );
    assert!(
        eventually(Duration::from_secs(5), || server.handle().stats().closed
            == 200)
        .await
    );
    assert_eq!(server.handle().stats().accepted, 200);
}

/// A handler that holds its connection until the test adds a permit; each permit lets exactly one go.
fn held_until_released(release: Arc<Semaphore>) -> impl lariat::Handler {
    move |conn: Connection| {
        let release = release.clone();
        async move {
            if let Ok(permit) = release.acquire().await {
                permit.forget();
            }
            drop(conn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_cap_admits_the_waiting_at_once() {
    let (listener, addr) = bind_loopback();
    // Handlers hold their connection until the test lets them go.
    let release = Arc::new(Semaphore::new(0));
    let handler = held_until_released(release.clone());
    let server = Server::builder()
        .max_connections(50)
        .serve([listener], handler)
        .unwrap();
    let handle = server.handle().clone();

    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 50).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(handle.stats().active, 50, "over-admitted past the cap");
    assert_eq!(handle.connections().len(), 50);

    // No connection closes; only the cap changes.
    handle.set_max_connections(200);
    assert!(
        eventually(Duration::from_secs(2), || handle.stats().active == 200).await,
        "waiting clients not admitted: {}",
        handle.stats().active
    );
    assert_eq!(handle.stats().closed, 0);

    release.add_permits(200);
    assert!(eventually(Duration::from_secs(5), || handle.stats().closed == 200).await);
    drop(clients);
}

#[tokio::test]
async fn lowering_the_cap_closes_nothing_and_applies_as_connections_end() {
    let (listener, addr) = bind_loopback();
    let release = Arc::new(Semaphore::new(0));
    let handler = held_until_released(release.clone());
    let server = Server::builder()
        .max_connections(10)
        .serve([listener], handler)
        .unwrap();
    let handle = server.handle().clone();
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 10).await);
    handle.set_max_connections(5);
    assert_eq!(
        handle.stats().active,
        10,
        "lowering the cap must not cut anyone off"
    );
    release.add_permits(8);
    // 8 closed; 2 live + newly admitted must stay within the new cap of 5.
    assert!(eventually(Duration::from_secs(5), || handle.stats().closed == 8).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(handle.stats().active <= 5, "{}", handle.stats().active);
    release.add_permits(100);
    assert!(eventually(Duration::from_secs(5), || handle.stats().closed == 20).await);
}
