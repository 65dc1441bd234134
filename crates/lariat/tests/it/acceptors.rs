//! Several accept loops on one listener (`ServerBuilder::acceptors`): every client served byte-exact,
//! the cap exact, and a drain that waits for every loop (queued clients served, then a clean close).

use crate::common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{bind_loopback, echo, eventually, seed_000_clients};
use lariat::{DrainOptions, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accept_loops_serve_every_client() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .acceptors(3)
        .serve([listener], echo)
        .unwrap();
    let done = seed_000_clients(addr, b"a fast client's first bytes", 3_000, 64).await;
    assert_eq!(done, 3_000);
    let stats = server.handle().stats();
    assert_eq!(stats.accepted, 3_000);
    server.handle().stop();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_and_a_drain_waits_for_every_loop() {
    const CAP: usize = 4;
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .acceptors(2)
        .max_connections(CAP)
        .serve([listener], echo)
        .unwrap();
    let handle = server.handle().clone();
    let mut live = Vec::new();
    for _ in 0..CAP {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        live.push(c);
    }
    // More clients queue in the kernel: neither loop may take them past the cap.
    let mut queued = Vec::new();
    for i in 0..10u8 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[b'a' + i]).await.unwrap();
        queued.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(handle.stats().accepted, CAP as u64);
    assert_eq!(handle.stats().active, CAP as u64);

    let drain = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .drain(DrainOptions {
                    timeout: Duration::from_secs(10),
                    ..DrainOptions::default()
                })
                .await
        }
    });
    assert!(eventually(Duration::from_secs(5), || handle.is_draining()).await);
    drop(live);
    for (i, mut c) in queued.into_iter().enumerate() {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], b'a' + i as u8);
    }
    let report = drain.await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.accepted_from_queue, 10);
    server.wait().await.unwrap();
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}
