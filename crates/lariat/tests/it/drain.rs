//! Two-stage drain: queued clients are served, not reset; live ones finish; the deadline closes the rest.

use crate::common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::{bind_loopback, echo, eventually};
use lariat::{Connection, DrainOptions, Endpoint, Listener, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

fn opts(timeout_ms: u64) -> DrainOptions {
    DrainOptions {
        timeout: Duration::from_millis(timeout_ms),
        settle: Duration::from_millis(100),
    }
}

/// Writes `msg` and reads it back.
async fn round_trip<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_clients_are_served_and_live_ones_finish() {
    const CAP: usize = 5;
    const QUEUED: usize = 20;
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .max_connections(CAP)
        .serve([listener], echo)
        .unwrap();
    let handle = server.handle().clone();

    // CAP clients in the middle of a conversation...
    let mut live = Vec::new();
    for _ in 0..CAP {
        let mut c = TcpStream::connect(addr).await.unwrap();
        round_trip(&mut c, b"first half").await;
        live.push(c);
    }
    // ...and QUEUED more that the kernel accepted but lariat cannot take yet (the cap is reached). They
    // send their request at once.
    let mut queued = Vec::new();
    for i in 0..QUEUED {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("queued {i:02}").as_bytes())
            .await
            .unwrap();
        queued.push(c);
    }
    assert_eq!(handle.stats().accepted, CAP as u64);

    let drain = tokio::spawn({
        let handle = handle.clone();
        async move { handle.drain(opts(10_000)).await }
    });
    assert!(eventually(Duration::from_secs(5), || handle.is_draining()).await);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The live ones finish their conversation after the signal, then leave.
    for mut c in live {
        round_trip(&mut c, b"second half").await;
    }
    // Each queued client is accepted and answered: none was reset.
    for (i, mut c) in queued.into_iter().enumerate() {
        let want = format!("queued {i:02}");
        let mut back = vec![0u8; want.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, want.as_bytes());
    }

    let report = drain.await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.in_flight, CAP as u64);
    assert_eq!(report.accepted_from_queue, QUEUED as u64);
    assert_eq!(report.finished, (CAP + QUEUED) as u64);
    assert_eq!(report.forced, 0);
    server.wait().await.unwrap();

    // The listener is closed now: a new client is refused, not left hanging.
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_clients_are_not_admitted_while_the_queue_drains() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .max_connections(1)
        .serve([listener], echo)
        .unwrap();
    let handle = server.handle().clone();
    // One live connection keeps the drain in stage one (its slot is the only one).
    let mut live = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut live, b"x").await;
    let queued = TcpStream::connect(addr).await.unwrap();

    let drain = tokio::spawn({
        let handle = handle.clone();
        async move { handle.drain(opts(10_000)).await }
    });
    assert!(eventually(Duration::from_secs(5), || handle.is_draining()).await);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Linux: the new client's SYN is dropped, so its connect neither completes nor is reset.
    if cfg!(target_os = "linux") {
        let late = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        assert!(late.is_err(), "a client was admitted after the drain began");
    }
    drop(live);
    drop(queued);
    let report = drain.await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.accepted_from_queue, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_are_told_and_can_say_goodbye() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .serve([listener], |mut conn: Connection| async move {
            conn.draining().await;
            assert!(conn.is_draining());
            conn.write_all(b"bye\n").await
        })
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    let handle = server.handle().clone();
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 10).await);
    let report = handle.drain(opts(5_000)).await;
    for mut c in clients {
        let mut got = String::new();
        c.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "bye\n");
    }
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.finished, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_closes_the_rest_and_counts_them() {
    let (listener, addr) = bind_loopback();
    // Handlers that never finish on their own.
    let server = Server::builder()
        .serve([listener], |conn: Connection| async move {
            std::future::pending::<()>().await;
            drop(conn);
        })
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    let handle = server.handle().clone();
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 8).await);

    let started = Instant::now();
    let report = handle.drain(opts(400)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "ended before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!report.is_complete());
    assert_eq!(report.forced, 8);
    assert_eq!(report.finished, 0);
    assert_eq!(handle.stats().drain_forced, 8);
    assert_eq!(handle.stats().active, 0);
    // The clients see the close.
    for mut c in clients {
        let mut buf = [0u8; 1];
        let n = c.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_ends_the_drain_at_once() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .serve([listener], |conn: Connection| async move {
            std::future::pending::<()>().await;
            drop(conn);
        })
        .unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let handle = server.handle().clone();
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 1).await);
    let drain = tokio::spawn({
        let handle = handle.clone();
        async move { handle.drain(opts(60_000)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    handle.force();
    let report = drain.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(report.forced, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_unlinks_first_then_serves_its_queue() {
    let path = std::env::temp_dir().join(format!("lariat-drain-{}.sock", std::process::id()));
    let listener = Listener::bind(&Endpoint::Unix(path.clone())).unwrap();
    let server = Server::builder()
        .max_connections(1)
        .serve([listener], echo)
        .unwrap();
    let handle = server.handle().clone();
    let mut live = UnixStream::connect(&path).await.unwrap();
    round_trip(&mut live, b"live").await;
    let mut queued = UnixStream::connect(&path).await.unwrap();
    queued.write_all(b"queued").await.unwrap();

    let drain = tokio::spawn({
        let handle = handle.clone();
        async move { handle.drain(opts(10_000)).await }
    });
    assert!(eventually(Duration::from_secs(5), || !path.exists()).await);
    // New connects fail with ENOENT while the queued client is still waiting.
    let err = UnixStream::connect(&path).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    drop(live);
    let mut back = [0u8; 6];
    queued.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"queued");
    drop(queued);
    let report = drain.await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.accepted_from_queue, 1);
}

/// The drain reaches a connection after it was split: `Messages` delivers `Event::Draining` in the same
/// loop as its data, and a `DrainSignal` taken from the write half fires in a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_connection_learns_of_the_drain_in_its_message_loop_and_its_write_task() {
    use futures_util::StreamExt;
    use lariat::delivery::{Event, Framing, Messages, Mode};

    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .serve([listener], |conn: Connection| async move {
            let (messages, write) = Messages::new(conn, Framing::lines(), Mode::Push);
            let mut messages = messages.with_drain_event();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static [u8]>(4);
            // The write half lives in its own task, with its own copy of the signal.
            let signal = write.meta().drain_signal();
            let writer = tokio::spawn(async move {
                let mut write = write;
                let mut told = false;
                loop {
                    // Biased, the signal first: the loop's last line and the end of the channel
                    // may be ready at the same time as the signal, and the writer must see it.
                    tokio::select! {
                        biased;
                        _ = signal.wait(), if !told => {
                            told = true;
                            write.write_all(b"writer: draining\n").await?;
                        }
                        line = rx.recv() => match line {
                            Some(line) => write.write_all(line).await?,
                            None => return write.shutdown().await,
                        },
                    }
                }
            });
            while let Some(event) = messages.next().await {
                match event {
                    Event::Data(_) => {
                        let _ = tx.send(b"echo\n").await;
                    }
                    Event::Draining => {
                        assert!(messages.meta().is_draining());
                        let _ = tx.send(b"loop: draining\n").await;
                        break;
                    }
                    Event::Closed | Event::Error(_) => break,
                    Event::Passive => {}
                }
            }
            drop(tx);
            writer.await.map_err(std::io::Error::other)?
        })
        .unwrap();
    let handle = server.handle().clone();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"hello\n").await.unwrap();
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"echo\n");

    let report = tokio::spawn(async move { handle.drain(opts(10_000)).await });
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut rest))
        .await
        .expect("the connection ends by itself")
        .unwrap();
    let mut lines: Vec<&str> = rest.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["loop: draining", "writer: draining"]);
    let report = report.await.unwrap();
    assert_eq!((report.finished, report.forced), (1, 0), "{report:?}");
}
