//! Making room under pressure, found in review: with two accept loops, the pressure one loop raised
//! must fall again once the queue is empty (its sibling took the queued client); otherwise that very
//! client would be evicted after its grace with nobody waiting behind it.
use crate::common;

use std::time::Duration;

use common::bind_loopback;
use lariat::proxy::{ProxyConfig, ProxyMode};
use lariat::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pressure_falls_when_the_queue_empties() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .acceptors(2)
        .max_connections(2)
        .handshake_timeout(Duration::from_secs(10))
        .handshake_grace(Duration::from_millis(300))
        .proxy_protocol(Some(ProxyConfig::new(ProxyMode::V1)))
        .serve([listener], common::echo)
        .unwrap();
    let handle = server.handle().clone();
    let mut live = Vec::new();
    for i in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("PROXY TCP4 192.0.2.{i} 192.0.2.200 {i} 80\r\nx").as_bytes())
            .await
            .unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        live.push(c);
    }
    // One client queues: both loops, waiting at the cap, raise the pressure.
    let mut q = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A slot frees: one loop takes Q; the queue is empty again.
    drop(live.remove(0));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Q is slow but well within the 10 s handshake timeout, and nobody is queued behind it.
    let _ = q
        .write_all(b"PROXY TCP4 192.0.2.9 192.0.2.200 9 80\r\nhello")
        .await;
    let mut back = [0u8; 5];
    let r = tokio::time::timeout(Duration::from_secs(3), q.read_exact(&mut back)).await;
    let stats = handle.stats();
    eprintln!("{r:?} {stats:?}");
    assert_eq!(
        stats.handshake_evicted, 0,
        "evicted with nobody queued: {stats:?}"
    );
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
}

/// A handler waiting for a first request can give way too (`Connection::crowded`): with the cap full of
/// idle connections, a queued client gets a slot after the grace instead of waiting for them, and a
/// connection that is talking is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_waiting_for_its_first_bytes_makes_room_when_crowded() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .max_connections(4)
        .handshake_grace(Duration::from_millis(100))
        .serve([listener], |conn: lariat::Connection| async move {
            let mut conn = conn;
            let mut first = [0u8; 1];
            let crowded = conn.crowded();
            tokio::select! {
                read = conn.read(&mut first) => {
                    if !matches!(read, Ok(1)) {
                        return;
                    }
                }
                _ = crowded => return,
            }
            // Past its first byte it is served to the end, crowded or not.
            let _ = conn.write_all(&first).await;
            let mut buf = [0u8; 64];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let _handle = server.handle().clone();
    let mut talking = TcpStream::connect(addr).await.unwrap();
    talking.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    talking.read_exact(&mut b).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let mut queued = TcpStream::connect(addr).await.unwrap();
    queued.write_all(b"q").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), queued.read_exact(&mut b))
        .await
        .expect("the queued client was never served")
        .unwrap();
    eprintln!("queued client served after {:?}", started.elapsed());
    // The talking connection is still served.
    talking.write_all(b"b").await.unwrap();
    talking.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"b");
}
