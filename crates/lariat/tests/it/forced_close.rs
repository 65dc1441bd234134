//! A forced close closes the connection itself, wherever its halves are: a write half moved into a task
//! of its own (a ticker, a broadcast relay) gets an error at once, the peer reads the end, the slot and
//! registry entry come back when that task drops the half, and the close is counted once.

use crate::common;

use std::time::{Duration, Instant};

use common::tls::{connect, temp_dir, TestCert};
use common::{bind_loopback, eventually};
use lariat::tls::TlsConfig;
use lariat::{Connection, DrainOptions, Server, ServerHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How soon after a forced close the peer must read the end. The close itself is one `shutdown(2)`;
/// the bound is generous for a loaded machine, and far below the "never" of a socket left open.
const CLOSE_BOUND: Duration = Duration::from_millis(500);

/// A handler whose write half outlives it: a ticker task writes a line every 10 ms until a write
/// fails, while the handler reads until the end. Neither watches for a forced close.
async fn ticker(conn: Connection) -> std::io::Result<()> {
    let (mut read, mut write) = conn.into_split();
    tokio::spawn(async move {
        while write.write_all(b"tick\n").await.is_ok() && write.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut buf = [0u8; 64];
    while read.read(&mut buf).await? > 0 {}
    Ok(())
}

/// A handler that returns at once, leaving both halves to a task that reads until the end and never
/// writes (a silent relay): the connection is idle, and lariat's own task is long gone.
async fn silent_relay(conn: Connection) {
    let (mut read, write) = conn.into_split();
    tokio::spawn(async move {
        let _write = write;
        let mut buf = [0u8; 64];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    });
}

/// Reads until the end of the stream (EOF or a reset); panics if it does not come within `limit`.
/// Returns when it came.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Instant {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection is still open {limit:?} later"),
        }
    }
}

/// Waits until ticks arrive, so the ticker task runs.
async fn first_tick<S: AsyncRead + Unpin>(s: &mut S) {
    let mut line = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut line))
        .await
        .expect("ticks in time")
        .unwrap();
    assert_eq!(&line, b"tick\n");
}

async fn released(handle: &ServerHandle) {
    assert!(
        eventually(Duration::from_secs(5), || handle.stats().active == 0
            && handle.connections().is_empty())
        .await,
        "the slot and registry entry come back once the ticker drops its half: {:?}",
        handle.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_connection_closes_a_write_half_in_another_task() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], ticker).unwrap();
    let handle = server.handle().clone();
    let mut client = TcpStream::connect(addr).await.unwrap();
    first_tick(&mut client).await;

    let id = handle.connections()[0].id;
    let closed_at = Instant::now();
    handle.close_connection(id).unwrap();
    let ended = read_until_closed(&mut client, Duration::from_secs(3)).await;
    let took = ended - closed_at;
    eprintln!("close_connection -> peer saw the end after {took:?}");
    assert!(took < CLOSE_BOUND, "the peer saw the close after {took:?}");
    released(&handle).await;
    assert_eq!(handle.stats().closed, 1);
    // Closing again finds nothing: the connection is gone.
    assert!(handle.close_connection(id).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_drain_closes_and_counts_a_write_half_in_another_task_once() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], ticker).unwrap();
    let handle = server.handle().clone();
    let mut client = TcpStream::connect(addr).await.unwrap();
    first_tick(&mut client).await;

    const TIMEOUT: Duration = Duration::from_millis(300);
    let started = Instant::now();
    let drain = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .drain(DrainOptions {
                    timeout: TIMEOUT,
                    settle: Duration::from_millis(50),
                })
                .await
        }
    });
    let ended = read_until_closed(&mut client, Duration::from_secs(3)).await;
    let took = ended - (started + TIMEOUT);
    eprintln!("drain deadline -> peer saw the end {took:?} after it");
    assert!(
        took < CLOSE_BOUND,
        "the peer saw the close {took:?} after the deadline"
    );
    let report = drain.await.unwrap();
    assert_eq!(report.in_flight, 1);
    assert_eq!(report.finished, 0);
    assert_eq!(report.forced, 1, "{report:?}");
    // The drain does not wait out its grace for a socket that is already gone.
    assert!(
        report.elapsed < TIMEOUT + Duration::from_millis(900),
        "{report:?}"
    );
    released(&handle).await;
    let stats = handle.stats();
    assert_eq!(stats.drain_forced, 1);
    assert_eq!(stats.closed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_a_connection_whose_halves_outlived_their_handler() {
    const IDLE: Duration = Duration::from_millis(300);
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .idle_timeout(Some(IDLE))
        .serve([listener], silent_relay)
        .unwrap();
    let handle = server.handle().clone();
    let connected = Instant::now();
    let mut client = TcpStream::connect(addr).await.unwrap();
    // Past the timeout, one sweep (100 ms for this timeout) closes it; the rest is margin.
    let ended = read_until_closed(&mut client, Duration::from_secs(3)).await;
    let took = ended - connected;
    eprintln!("idle timeout {IDLE:?} -> peer saw the end after {took:?}");
    assert!(
        took >= IDLE && took < IDLE + Duration::from_millis(200) + CLOSE_BOUND,
        "closed after {took:?}"
    );
    released(&handle).await;
    // More sweeps go by: still counted once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = handle.stats();
    assert_eq!(stats.idle_closed, 1);
    assert_eq!(stats.closed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_connection_closes_a_tls_write_half_in_another_task() {
    let dir = temp_dir("forced-close");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .tls(Some(tls))
        .serve([listener], ticker)
        .unwrap();
    let handle = server.handle().clone();
    let mut client = connect(&cert.client(&[]), addr).await.unwrap();
    first_tick(&mut client).await;

    let closed_at = Instant::now();
    handle.close_connection(handle.connections()[0].id).unwrap();
    let ended = read_until_closed(&mut client, Duration::from_secs(3)).await;
    let took = ended - closed_at;
    eprintln!("close_connection -> peer saw the end after {took:?}");
    assert!(took < CLOSE_BOUND, "the peer saw the close after {took:?}");
    released(&handle).await;
    assert_eq!(handle.stats().closed, 1);
    let _ = std::fs::remove_dir_all(dir);
}
