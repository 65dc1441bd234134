//! Panics are contained and counted; the registry lists and closes live connections; stop ends the loop.

use crate::common;

use std::time::Duration;

use common::{bind_loopback, eventually};
use lariat::{CloseError, Connection, PeerAddr, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Echoes, but panics on a `!`.
async fn fragile(mut conn: Connection) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].contains(&b'!') {
            panic!("handler bug triggered by connection {}", conn.id());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

async fn ping(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_harms_no_other_connection() {
    let logs = common::LogCapture::default();
    let _guard = logs.install();
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], fragile).unwrap();
    let mut bystanders = Vec::new();
    for _ in 0..10 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        ping(&mut c, b"hello").await;
        bystanders.push(c);
    }
    let mut victim = TcpStream::connect(addr).await.unwrap();
    victim.write_all(b"boom!").await.unwrap();
    let mut rest = Vec::new();
    // The panicking connection is closed (EOF or reset), not left hanging.
    let _ = tokio::time::timeout(Duration::from_secs(5), victim.read_to_end(&mut rest))
        .await
        .expect("the panicking connection was left open");
    assert!(
        eventually(Duration::from_secs(5), || server
            .handle()
            .stats()
            .handler_panics
            == 1)
        .await
    );
    for c in &mut bystanders {
        ping(c, b"still here").await;
    }
    // A new connection is served too.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    ping(&mut fresh, b"fresh").await;
    let stats = server.handle().stats();
    assert_eq!(stats.handler_panics, 1);
    assert_eq!(stats.active, 11);
    assert_eq!(server.handle().connections().len(), 11);
}

#[tokio::test]
async fn registry_lists_and_closes_by_id() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], common::echo).unwrap();
    let handle = server.handle().clone();
    let mut a = TcpStream::connect(addr).await.unwrap();
    ping(&mut a, b"0123456789").await;
    let mut b = TcpStream::connect(addr).await.unwrap();
    ping(&mut b, b"x").await;

    let list = handle.connections();
    assert_eq!(list.len(), 2);
    let first = &list[0];
    assert_eq!(first.peer, PeerAddr::Tcp(a.local_addr().unwrap()));
    assert_eq!(first.bytes_in, 10);
    assert_eq!(first.bytes_out, 10);
    assert!(first.age < Duration::from_secs(60));

    handle.close_connection(first.id).unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), a.read_to_end(&mut rest))
        .await
        .expect("closed connection still open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(eventually(Duration::from_secs(5), || handle.connections().len() == 1).await);
    assert_eq!(
        handle.close_connection(first.id),
        Err(CloseError::NotFound(first.id))
    );
    ping(&mut b, b"unaffected").await;
    assert_eq!(handle.stats().closed, 1);
}

#[tokio::test]
async fn stop_ends_the_loop_and_closes_the_listener() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], common::echo).unwrap();
    let mut live = TcpStream::connect(addr).await.unwrap();
    ping(&mut live, b"before").await;
    server.handle().stop();
    let handle = server.handle().clone();
    tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .expect("accept loop did not end")
        .unwrap();
    assert!(handle.is_stopped());
    // The listener is gone: new connects are refused, not queued forever.
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Stopping accepting does not cut live connections.
    ping(&mut live, b"after").await;
}

#[tokio::test]
async fn several_listeners_share_one_cap_and_registry() {
    let (l1, a1) = bind_loopback();
    let (l2, a2) = bind_loopback();
    let server = Server::builder()
        .max_connections(3)
        .serve([l1, l2], common::echo)
        .unwrap();
    assert_eq!(server.local_addrs().len(), 2);
    let mut held = Vec::new();
    for addr in [a1, a2, a1, a2, a1] {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(5), || server.handle().stats().active
            == 3)
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.handle().stats().active, 3);
    drop(held);
    assert!(
        eventually(Duration::from_secs(5), || server.handle().stats().closed
            == 5)
        .await
    );
}

#[tokio::test]
async fn an_idle_listener_does_not_hold_a_slot_the_busy_one_needs() {
    let (busy, busy_addr) = bind_loopback();
    let (idle, _idle_addr) = bind_loopback();
    let server = Server::builder()
        .max_connections(2)
        .serve([busy, idle], common::echo)
        .unwrap();
    let mut first = TcpStream::connect(busy_addr).await.unwrap();
    ping(&mut first, b"one").await;
    // One live connection, cap 2: the next client on the same listener must be served.
    let mut second = TcpStream::connect(busy_addr).await.unwrap();
    ping(&mut second, b"two").await;
    assert_eq!(server.handle().stats().active, 2);
}

#[tokio::test]
async fn a_panic_while_building_the_handler_future_is_contained() {
    let (listener, addr) = bind_loopback();
    let handler = |conn: Connection| {
        assert!(conn.id() != 1, "setup bug for connection 1");
        common::echo(conn)
    };
    let server = Server::builder().serve([listener], handler).unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("the connection whose handler panicked was left open");
    let mut second = TcpStream::connect(addr).await.unwrap();
    ping(&mut second, b"the loop survived").await;
    assert_eq!(server.handle().stats().handler_panics, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_idle_timeout_busy_ones_are_not() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .idle_timeout(Some(Duration::from_millis(400)))
        .serve([listener], common::echo)
        .unwrap();
    let handle = server.handle().clone();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    // The busy one talks every 100 ms for 1.2 s: three timeouts' worth.
    for _ in 0..12 {
        busy.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        busy.read_exact(&mut one).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The silent one was closed, within the timeout plus a sweep or two.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf))
        .await
        .expect("the silent connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(handle.stats().idle_closed, 1);
    assert_eq!(handle.stats().active, 1);
}
