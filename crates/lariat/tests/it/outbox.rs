//! `Outbox`: many tasks write frames to one connection through a bounded queue; a client that does not
//! read fills it (and no more); a forced close ends the writer even while it waits for messages.

use crate::common;

use std::time::Duration;

use common::{bind_loopback, eventually};
use lariat::delivery::{Framing, Outbox, SendError};
use lariat::{Connection, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Hands each connection's outbox to the test, and keeps its read half until the peer closes.
fn serve_outboxes(
    capacity: usize,
) -> (
    Server,
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Outbox>,
) {
    let (listener, addr) = bind_loopback();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .serve([listener], move |conn: Connection| {
            let tx = tx.clone();
            async move {
                let (mut read, write) = conn.into_split();
                let _ = tx.send(Outbox::new(write, Framing::lines(), capacity));
                let mut buf = [0u8; 64];
                while read.read(&mut buf).await? > 0 {}
                Ok::<_, std::io::Error>(())
            }
        })
        .unwrap();
    (server, addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_write_whole_lines_in_order_per_sender() {
    const SENDERS: usize = 8;
    const LINES: usize = 500;
    let (_server, addr, mut outboxes) = serve_outboxes(16);
    let client = TcpStream::connect(addr).await.unwrap();
    let outbox = outboxes.recv().await.unwrap();
    assert_eq!(
        outbox.meta().peer_addr().to_string(),
        client.local_addr().unwrap().to_string()
    );
    for s in 0..SENDERS {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            for i in 0..LINES {
                outbox.send(format!("{s} {i}")).await.unwrap();
            }
        });
    }
    // A line holding a newline would break the stream for the peer: refused, to the sender.
    assert!(matches!(
        outbox.send("two\nlines").await,
        Err(SendError::Encode(_))
    ));
    drop(outbox);

    let mut next = [0usize; SENDERS];
    let mut lines = BufReader::new(client).lines();
    // Every sender's handle dropped: the writer flushes and shuts down, so the lines end.
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("lines in time")
        .unwrap()
    {
        let (s, i) = line.split_once(' ').unwrap();
        let (s, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[s], "sender {s}'s lines in order");
        next[s] += 1;
    }
    assert_eq!(next, [LINES; SENDERS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_fills_the_queue_and_no_more() {
    const CAPACITY: usize = 8;
    let (_server, addr, mut outboxes) = serve_outboxes(CAPACITY);
    let _client = TcpStream::connect(addr).await.unwrap();
    let outbox = outboxes.recv().await.unwrap();
    let line = "x".repeat(16 * 1024);
    // The socket buffers take a few MiB at most (and grow as they fill); then the queue fills and
    // stays full: nothing moves for 200 ms.
    let mut sent = 0usize;
    let mut stalled = false;
    while !stalled && sent < 100_000 {
        loop {
            match outbox.try_send(line.as_str()) {
                Ok(()) => sent += 1,
                Err(SendError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        stalled = matches!(outbox.try_send(line.as_str()), Err(SendError::Full));
        if !stalled {
            sent += 1;
        }
    }
    assert!(stalled, "the queue never stayed full after {sent} lines");
    assert_eq!(outbox.queued(), CAPACITY);
    // `send` waits instead.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), outbox.send(line.as_str()))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_close_ends_a_waiting_writer_and_frees_the_slot() {
    let (server, addr, mut outboxes) = serve_outboxes(4);
    let handle = server.handle().clone();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let outbox = outboxes.recv().await.unwrap();
    outbox.send("hello").await.unwrap();
    let mut hello = [0u8; 6];
    client.read_exact(&mut hello).await.unwrap();

    // The test keeps a handle: the writer waits for messages that never come.
    outbox.meta().close();
    tokio::time::timeout(Duration::from_secs(5), outbox.closed())
        .await
        .expect("the writer ends");
    assert_eq!(client.read(&mut hello).await.unwrap(), 0);
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 0).await);
    assert!(matches!(outbox.try_send("late"), Err(SendError::Closed)));
}
