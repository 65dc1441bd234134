//! Seed 000's test (Vinoski's): a client connects and at once sends 14 bytes; the handler receives exactly
//! them. 10,000 connections, 64 at a time, none lost.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bind_loopback, eventually, seed_000_clients};
use lariat::{Connection, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAYLOAD: &[u8; 14] = b"Hello, lariat!";
const CONNECTIONS: usize = 10_000;
const CONCURRENCY: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_first_bytes_reach_the_handler_10k_connections() {
    let (listener, addr) = bind_loopback();
    let exact = Arc::new(AtomicU64::new(0));
    let handler = {
        let exact = exact.clone();
        move |mut conn: Connection| {
            let exact = exact.clone();
            async move {
                // The handler reads everything the client sent, then answers with it.
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await?;
                if got == PAYLOAD {
                    exact.fetch_add(1, Ordering::Relaxed);
                }
                conn.write_all(&got).await
            }
        }
    };
    let server = Server::builder().serve([listener], handler).unwrap();

    let total = seed_000_clients(addr, PAYLOAD, CONNECTIONS, CONCURRENCY).await;
    assert_eq!(total, CONNECTIONS);
    assert_eq!(exact.load(Ordering::Relaxed), CONNECTIONS as u64);
    let handle = server.handle();
    assert!(
        eventually(Duration::from_secs(5), || handle.stats().closed
            == CONNECTIONS as u64)
        .await
    );
    let stats = handle.stats();
    assert_eq!(stats.accepted, CONNECTIONS as u64);
    assert_eq!(stats.bytes_in, (CONNECTIONS * PAYLOAD.len()) as u64);
    assert_eq!(stats.bytes_out, (CONNECTIONS * PAYLOAD.len()) as u64);
    assert_eq!(stats.handler_errors, 0);
}

#[tokio::test]
async fn unix_socket_first_bytes_reach_the_handler() {
    let dir = std::env::temp_dir().join(format!("lariat-handoff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("h.sock");
    let listener = lariat::Listener::bind(&lariat::Endpoint::Unix(path.clone())).unwrap();
    let server = Server::builder().serve([listener], common::echo).unwrap();
    for _ in 0..200 {
        let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
        c.write_all(PAYLOAD).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, PAYLOAD);
    }
    assert_eq!(server.handle().stats().accepted, 200);
    server.handle().stop();
    server.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
