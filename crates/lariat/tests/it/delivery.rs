//! Push delivery ([`lariat::delivery`]): seed 000 in every mode, the modes' semantics, the framings'
//! limits against a hostile peer, and a property test that no byte is lost, duplicated or reordered
//! whatever the framing, the peer's chunking, the mode switches and the way back to plain reads.

use crate::common;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{bind_loopback, eventually, seed_000_clients};
use futures_util::{FutureExt as _, StreamExt as _};
use lariat::delivery::{Event, FlowControl, FrameError, Framing, Messages, Mode, Prefixed};
use lariat::{Connection, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const PAYLOAD: &[u8; 14] = b"Hello, lariat!";
const CONNECTIONS: usize = 10_000;
const CONCURRENCY: usize = 64;

/// How long a `next()` that must stay pending is given.
const PENDING: Duration = Duration::from_millis(100);
/// Upper bound on any wait that should succeed.
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------
// Seed 000 in every mode
// ---------------------------------------------------------------------------------------------------

/// Reads everything the peer sent through `Messages` in `mode`, re-arming `Once` after each message and
/// `Count` on each `Passive`, until `Closed`; answers with what it got. Returns the bytes and the number
/// of `Passive` events seen.
async fn collect(conn: Connection, framing: Framing, mode: Mode) -> io::Result<(Vec<u8>, u32)> {
    let (mut messages, mut writer) = Messages::new(conn, framing, mode);
    let mut got = Vec::new();
    let mut passives = 0;
    loop {
        let event = match mode {
            Mode::Passive => messages.recv().await,
            _ => messages.next().await,
        };
        match event {
            Some(Event::Data(chunk)) => {
                got.extend_from_slice(&chunk);
                if mode == Mode::Once {
                    assert_eq!(
                        messages.mode(),
                        Mode::Passive,
                        "Once is spent after one message"
                    );
                    messages.set_mode(Mode::Once);
                }
            }
            Some(Event::Draining) => panic!("Draining was not asked for"),
            Some(Event::Passive) => {
                assert!(matches!(mode, Mode::Count(_)), "Passive event in {mode:?}");
                passives += 1;
                messages.set_mode(mode);
            }
            Some(Event::Closed) => break,
            Some(Event::Error(e)) => return Err(io::Error::other(e)),
            None => return Err(io::Error::other("the stream ended without Closed")),
        }
    }
    writer.write_all(&got).await?;
    Ok((got, passives))
}

/// Seed 000 with the handler on `Messages`: `connections` clients, `CONCURRENCY` at a time, each sending
/// [`PAYLOAD`] the instant it is connected, then closing its write side. Returns (exact matches, passive
/// events per connection as seen by every connection, or `None` if they differed).
async fn seed_000(mode: Mode, framing: Framing, connections: usize) -> (u64, Option<u32>) {
    let started = Instant::now();
    let (listener, addr) = bind_loopback();
    let exact = Arc::new(AtomicU64::new(0));
    // The passive count of the first connection, and whether all agreed (u64::MAX = disagreement).
    let passives = Arc::new(AtomicU64::new(u64::MAX - 1));
    let handler = {
        let exact = exact.clone();
        let passives = passives.clone();
        move |conn: Connection| {
            let exact = exact.clone();
            let passives = passives.clone();
            async move {
                let (got, p) = collect(conn, framing, mode).await?;
                if got == PAYLOAD {
                    exact.fetch_add(1, Ordering::Relaxed);
                }
                let p = u64::from(p);
                if let Err(prev) =
                    passives.compare_exchange(u64::MAX - 1, p, Ordering::Relaxed, Ordering::Relaxed)
                {
                    if prev != p {
                        passives.store(u64::MAX, Ordering::Relaxed);
                    }
                }
                io::Result::Ok(())
            }
        }
    };
    let server = Server::builder().serve([listener], handler).unwrap();

    let total = seed_000_clients(addr, PAYLOAD, connections, CONCURRENCY).await;
    assert_eq!(total, connections);
    let handle = server.handle();
    assert!(
        eventually(LIMIT, || handle.stats().closed == connections as u64).await,
        "{:?}",
        handle.stats()
    );
    // A connection counts as closed when its halves are dropped, which the handler does before it
    // records its match: wait for the last records too.
    eventually(LIMIT, || {
        exact.load(Ordering::Relaxed) == connections as u64
    })
    .await;
    let stats = handle.stats();
    assert_eq!(stats.accepted, connections as u64);
    assert_eq!(stats.bytes_in, (connections * PAYLOAD.len()) as u64);
    assert_eq!(stats.bytes_out, (connections * PAYLOAD.len()) as u64);
    assert_eq!(stats.handler_errors, 0);
    assert_eq!(stats.handler_panics, 0);
    handle.stop();
    server.wait().await.unwrap();
    eprintln!(
        "seed 000, {mode:?}, {framing:?}: {connections} connections in {:?}",
        started.elapsed()
    );
    let p = passives.load(Ordering::Relaxed);
    (
        exact.load(Ordering::Relaxed),
        (p < u64::MAX - 1).then_some(p as u32),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_passive_recv_10k() {
    let (exact, _) = seed_000(Mode::Passive, Framing::raw(), CONNECTIONS).await;
    assert_eq!(exact, CONNECTIONS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_once_rearmed_10k() {
    let (exact, _) = seed_000(Mode::Once, Framing::raw(), CONNECTIONS).await;
    assert_eq!(exact, CONNECTIONS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_count_3_rearmed_10k() {
    let (exact, _) = seed_000(Mode::Count(3), Framing::raw(), CONNECTIONS).await;
    assert_eq!(exact, CONNECTIONS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_push_10k() {
    let (exact, _) = seed_000(Mode::Push, Framing::raw(), CONNECTIONS).await;
    assert_eq!(exact, CONNECTIONS as u64);
}

/// With one-byte messages the budgets really run out: 14 messages in `Count(3)` are exactly 4 `Passive`
/// events (after 3, 6, 9 and 12), and `Once` is re-armed 14 times, whatever the arrival timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_one_byte_messages_spend_the_budgets() {
    let one = Framing::Raw { max: 1 };
    let (exact, passives) = seed_000(Mode::Count(3), one, 1_000).await;
    assert_eq!(exact, 1_000);
    assert_eq!(passives, Some(4));
    let (exact, passives) = seed_000(Mode::Once, one, 1_000).await;
    assert_eq!(exact, 1_000);
    assert_eq!(passives, Some(0));
}

// ---------------------------------------------------------------------------------------------------
// A connected pair: the server's side handed to the test
// ---------------------------------------------------------------------------------------------------

/// A server whose handler hands every connection to the test.
struct Pairs {
    server: Server,
    addr: std::net::SocketAddr,
    conns: mpsc::UnboundedReceiver<Connection>,
}

impl Pairs {
    fn start() -> Pairs {
        let (listener, addr) = bind_loopback();
        let (tx, conns) = mpsc::unbounded_channel();
        let server = Server::builder()
            .serve([listener], move |conn: Connection| {
                let _ = tx.send(conn);
                std::future::ready(())
            })
            .unwrap();
        Pairs {
            server,
            addr,
            conns,
        }
    }

    /// A client socket and the server's side of it.
    async fn pair(&mut self) -> (TcpStream, Connection) {
        let client = TcpStream::connect(self.addr).await.unwrap();
        let conn = tokio::time::timeout(LIMIT, self.conns.recv())
            .await
            .expect("no connection handed over")
            .unwrap();
        (client, conn)
    }
}

/// Asserts `next()` stays pending for [`PENDING`].
async fn assert_pending<D>(messages: &mut Messages<D>, what: &str)
where
    D: tokio_util::codec::Decoder + Unpin,
    D::Error: From<io::Error> + std::fmt::Debug,
    D::Item: std::fmt::Debug,
{
    match tokio::time::timeout(PENDING, messages.next()).await {
        Err(_) => {}
        Ok(event) => panic!("{what}: expected nothing, got {event:?}"),
    }
}

fn data(event: Option<Event<bytes::Bytes>>) -> bytes::Bytes {
    match event {
        Some(Event::Data(b)) => b,
        other => panic!("expected Data, got {other:?}"),
    }
}

async fn next_data(messages: &mut Messages) -> bytes::Bytes {
    data(
        tokio::time::timeout(LIMIT, messages.next())
            .await
            .expect("no event"),
    )
}

async fn recv_data(messages: &mut Messages) -> bytes::Bytes {
    data(
        tokio::time::timeout(LIMIT, messages.recv())
            .await
            .expect("no event"),
    )
}

/// A pair where the client has already sent `bytes` (and they have arrived).
async fn pair_with(pairs: &mut Pairs, bytes: &[u8]) -> (TcpStream, Connection) {
    let (mut client, conn) = pairs.pair().await;
    client.write_all(bytes).await.unwrap();
    tokio::time::timeout(LIMIT, conn.readable())
        .await
        .unwrap()
        .unwrap();
    (client, conn)
}

// ---------------------------------------------------------------------------------------------------
// Mode semantics
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_delivers_one_message_then_nothing_until_rearmed() {
    let mut pairs = Pairs::start();
    let (mut client, conn) = pair_with(&mut pairs, b"one\ntwo\nthree\nfour\n").await;
    let (mut messages, _writer) = Messages::new(conn, Framing::lines(), Mode::Once);
    assert_eq!(next_data(&mut messages).await, "one");
    assert_eq!(messages.mode(), Mode::Passive);
    // The rest is already read and buffered, and still not delivered.
    assert!(messages.buffered_len() > 0);
    assert_pending(&mut messages, "Once, spent").await;
    messages.set_mode(Mode::Once);
    assert_eq!(next_data(&mut messages).await, "two");
    assert_pending(&mut messages, "Once, spent again").await;
    // Pulling works whatever the mode, and does not re-arm.
    assert_eq!(recv_data(&mut messages).await, "three");
    assert_eq!(messages.mode(), Mode::Passive);
    assert_pending(&mut messages, "after a pull").await;
    messages.set_mode(Mode::Once);
    assert_eq!(next_data(&mut messages).await, "four");
    // Once, re-armed, with nothing buffered: waits for the peer, then delivers its close.
    messages.set_mode(Mode::Once);
    assert_pending(&mut messages, "Once, nothing sent").await;
    client.shutdown().await.unwrap();
    let event = tokio::time::timeout(LIMIT, messages.next()).await.unwrap();
    assert!(matches!(event, Some(Event::Closed)), "{event:?}");
    assert!(messages.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_2_delivers_two_messages_then_passive() {
    let mut pairs = Pairs::start();
    let (_client, conn) = pair_with(&mut pairs, b"a\nb\nc\nd\ne\n").await;
    let (mut messages, _writer) = Messages::new(conn, Framing::lines(), Mode::Count(2));
    assert_eq!(next_data(&mut messages).await, "a");
    assert_eq!(messages.mode(), Mode::Count(1));
    assert_eq!(next_data(&mut messages).await, "b");
    assert_eq!(messages.mode(), Mode::Passive);
    let event = messages.next().now_or_never();
    assert!(
        matches!(event, Some(Some(Event::Passive))),
        "Passive at once, got {event:?}"
    );
    assert_pending(&mut messages, "Count(2), spent").await;
    assert_eq!(recv_data(&mut messages).await, "c");
    messages.set_mode(Mode::Count(2));
    assert_eq!(next_data(&mut messages).await, "d");
    assert_eq!(next_data(&mut messages).await, "e");
    let event = tokio::time::timeout(LIMIT, messages.next()).await.unwrap();
    assert!(matches!(event, Some(Event::Passive)), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_delivers_nothing_and_recv_pulls() {
    let mut pairs = Pairs::start();
    let (mut client, conn) = pair_with(&mut pairs, b"x\ny\n").await;
    let (mut messages, _writer) = Messages::new(conn, Framing::lines(), Mode::Passive);
    assert_pending(&mut messages, "Passive").await;
    // Passive reads nothing until pulled.
    assert_eq!(messages.buffered_len(), 0);
    assert_eq!(recv_data(&mut messages).await, "x");
    assert_pending(&mut messages, "Passive after a pull").await;
    assert_eq!(recv_data(&mut messages).await, "y");
    client.shutdown().await.unwrap();
    let event = tokio::time::timeout(LIMIT, messages.recv()).await.unwrap();
    assert!(matches!(event, Some(Event::Closed)), "{event:?}");
    assert!(messages.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_0_is_passive_at_once() {
    let mut pairs = Pairs::start();
    let (_client, conn) = pair_with(&mut pairs, b"m\n").await;
    let (mut messages, _writer) = Messages::new(conn, Framing::lines(), Mode::Push);
    messages.set_mode(Mode::Count(0));
    assert_eq!(messages.mode(), Mode::Passive);
    let event = messages.next().now_or_never();
    assert!(
        matches!(event, Some(Some(Event::Passive))),
        "Passive at once, got {event:?}"
    );
    assert_pending(&mut messages, "after Count(0)").await;
    assert_eq!(recv_data(&mut messages).await, "m");
    // Also straight from the constructor.
    let (_client, conn) = pair_with(&mut pairs, b"n\n").await;
    let (mut messages, _writer) = Messages::new(conn, Framing::lines(), Mode::Count(0));
    let event = messages.next().now_or_never();
    assert!(matches!(event, Some(Some(Event::Passive))), "{event:?}");
    assert_pending(&mut messages, "constructed with Count(0)").await;
}

// ---------------------------------------------------------------------------------------------------
// Frame limits against a hostile peer
// ---------------------------------------------------------------------------------------------------

/// The client sees the connection closed (read returns 0 or fails) within [`LIMIT`].
async fn assert_closed_by_server(client: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(LIMIT, client.read(&mut buf)).await {
        Err(_) => panic!("the server did not close the connection"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the server sent {n} unexpected bytes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_packet_header_is_an_error_then_the_end() {
    let mut pairs = Pairs::start();
    let (mut client, conn) = pair_with(&mut pairs, b"\xff\xff\xff\xffsome payload").await;
    let framing = Framing::Packet {
        header: 4,
        max: 1024,
    };
    let (mut messages, writer) = Messages::new(conn, framing, Mode::Push);
    let event = tokio::time::timeout(LIMIT, messages.next()).await.unwrap();
    assert!(
        matches!(
            event,
            Some(Event::Error(FrameError::FrameTooLarge {
                len: 0xFFFF_FFFF,
                max: 1024
            }))
        ),
        "{event:?}"
    );
    assert_eq!(
        messages.buffered_len(),
        0,
        "the buffer is dropped with the error"
    );
    assert!(messages.next().await.is_none(), "the stream ends");
    assert!(messages.recv().await.is_none(), "for pulls too");
    drop((messages, writer));
    assert_closed_by_server(&mut client).await;
    let handle = pairs.server.handle();
    assert!(eventually(LIMIT, || handle.stats().closed == 1).await);
    assert_eq!(handle.stats().active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_packet_is_an_error() {
    let mut pairs = Pairs::start();
    let (mut client, conn) = pair_with(&mut pairs, b"\x00\x0aabc").await;
    client.shutdown().await.unwrap();
    let (mut messages, writer) = Messages::new(conn, Framing::packet(2), Mode::Push);
    let event = tokio::time::timeout(LIMIT, messages.next()).await.unwrap();
    assert!(
        matches!(
            event,
            Some(Event::Error(FrameError::Truncated { buffered: 5 }))
        ),
        "{event:?}"
    );
    assert!(messages.next().await.is_none());
    drop((messages, writer));
    assert_closed_by_server(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_is_an_error_with_bounded_buffering() {
    const MAX: usize = 1024;
    const SENT: usize = 1024 * 1024;
    let mut pairs = Pairs::start();
    let (client, conn) = pairs.pair().await;
    client.set_nodelay(true).unwrap();
    let (mut client_read, mut client_write) = client.into_split();
    // The peer sends 1 MiB without a terminator: 100-byte pieces at first (so the server waits for more
    // several times before the limit), then as fast as the server lets it.
    let peer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < SENT {
            let size = if sent < 2 * MAX { 100 } else { 64 * 1024 };
            let size = size.min(SENT - sent);
            match client_write.write_all(&vec![b'x'; size]).await {
                Ok(()) => sent += size,
                // The server closed in its face: expected.
                Err(_) => break,
            }
            if size == 100 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        sent
    });
    let (mut messages, writer) = Messages::new(conn, Framing::Lines { max: MAX }, Mode::Push);
    // Watch the buffer at every poll that waits for more.
    let mut most_buffered = 0;
    let mut polls = 0;
    let event = tokio::time::timeout(
        LIMIT,
        std::future::poll_fn(|cx| {
            polls += 1;
            let poll = messages.poll_next_unpin(cx);
            if poll.is_pending() {
                most_buffered = most_buffered.max(messages.buffered_len());
            }
            poll
        }),
    )
    .await
    .expect("no error for an endless line");
    assert!(
        matches!(
            event,
            Some(Event::Error(FrameError::LineTooLong { max: MAX }))
        ),
        "{event:?}"
    );
    assert!(
        most_buffered <= MAX,
        "{most_buffered} bytes buffered while waiting"
    );
    assert!(messages.next().await.is_none(), "the stream ends");
    drop((messages, writer));
    assert_closed_by_server(&mut client_read).await;
    let sent = tokio::time::timeout(LIMIT, peer).await.unwrap().unwrap();
    let handle = pairs.server.handle();
    assert!(eventually(LIMIT, || handle.stats().closed == 1).await);
    // What the server took off the socket before giving up: at most a read-ahead (64 KiB high
    // watermark) plus one read (16 KiB) past the limit, not the megabyte.
    let read = handle.stats().bytes_in;
    eprintln!(
        "endless line: peer wrote {sent} bytes, server read {read}, most buffered while waiting \
         {most_buffered}, {polls} polls"
    );
    assert!(read > MAX as u64);
    assert!(read <= (MAX + 64 * 1024 + 16 * 1024) as u64, "read {read}");
}

// ---------------------------------------------------------------------------------------------------
// Property: nothing lost, duplicated or reordered
// ---------------------------------------------------------------------------------------------------

mod property {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// `recv()`.
        Recv,
        /// `next()` (checked not to deliver where the model says it must not).
        Next,
        SetMode(Mode),
    }

    #[derive(Debug, Clone)]
    struct Case {
        framing: Framing,
        messages: Vec<Vec<u8>>,
        /// The peer's write sizes, cycled; each with a pause: 0 none, 1 yield, 2 a 1 ms sleep.
        chunks: Vec<(usize, u8)>,
        initial: Mode,
        ops: Vec<Op>,
        /// Leave the message view before this op (at the end if past them); never if `None`.
        leave_at: Option<usize>,
        /// Small flow-control bounds (high watermark, low watermark, read size, slack of `max_buffer`
        /// over the framing's own bound), or the defaults.
        flow: Option<(usize, usize, usize, usize)>,
    }

    fn encode(framing: Framing, messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(&reencode(framing, m));
        }
        out
    }

    fn reencode(framing: Framing, m: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match framing {
            Framing::Raw { .. } => out.extend_from_slice(m),
            Framing::Lines { .. } => {
                out.extend_from_slice(m);
                out.push(b'\n');
            }
            Framing::Packet { header, .. } => {
                let len = m.len() as u32;
                out.extend_from_slice(&len.to_be_bytes()[4 - header as usize..]);
                out.extend_from_slice(m);
            }
        }
        out
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![
            Just(Mode::Passive),
            Just(Mode::Once),
            (0u32..4).prop_map(Mode::Count),
            Just(Mode::Push),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Recv),
            4 => Just(Op::Next),
            2 => mode().prop_map(Op::SetMode),
        ]
    }

    fn framing_and_messages() -> impl Strategy<Value = (Framing, Vec<Vec<u8>>)> {
        let raw = (1usize..64).prop_flat_map(|max| {
            (
                Just(Framing::Raw { max }),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..12),
            )
        });
        let lines = (1usize..300).prop_flat_map(|max| {
            let byte = any::<u8>().prop_map(|b| if b == b'\n' { b'.' } else { b });
            (
                Just(Framing::Lines { max }),
                prop::collection::vec(prop::collection::vec(byte, 0..=max), 0..12),
            )
        });
        let packet = (prop_oneof![Just(1u8), Just(2), Just(4)], 0usize..400).prop_flat_map(
            |(header, max)| {
                let largest = if header == 1 { max.min(255) } else { max };
                (
                    Just(Framing::Packet { header, max }),
                    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=largest), 0..12),
                )
            },
        );
        prop_oneof![raw, lines, packet]
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            framing_and_messages(),
            prop::collection::vec((1usize..300, 0u8..3), 1..16),
            mode(),
            prop::collection::vec(op(), 0..40),
            prop::option::of(0usize..45),
            prop::option::of(
                (0usize..128, 0usize..128, 1usize..64, 0usize..3)
                    .prop_map(|(high, low, read, slack)| (high, low.min(high), read, slack)),
            ),
        )
            .prop_map(
                |((framing, messages), chunks, initial, ops, leave_at, flow)| Case {
                    framing,
                    messages,
                    chunks,
                    initial,
                    ops,
                    leave_at,
                    flow,
                },
            )
    }

    /// What the stream must do next, as the module docs say.
    #[derive(Debug)]
    struct Model {
        mode: Mode,
        passive_due: bool,
        done: bool,
    }

    impl Model {
        fn set_mode(&mut self, mode: Mode) {
            if mode == Mode::Count(0) {
                self.mode = Mode::Passive;
                self.passive_due = true;
            } else {
                self.mode = mode;
            }
        }

        fn delivered(&mut self) {
            match self.mode {
                Mode::Once => self.mode = Mode::Passive,
                Mode::Count(n) if n <= 1 => {
                    self.mode = Mode::Passive;
                    self.passive_due = true;
                }
                Mode::Count(n) => self.mode = Mode::Count(n - 1),
                Mode::Passive | Mode::Push => {}
            }
        }
    }

    fn fail(msg: String) -> TestCaseError {
        TestCaseError::fail(msg)
    }

    async fn run_case(pairs: &mut Pairs, case: Case) -> Result<(), TestCaseError> {
        let sent = encode(case.framing, &case.messages);
        let (client, conn) = pairs.pair().await;
        client.set_nodelay(true).unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let peer = {
            let sent = sent.clone();
            let chunks = case.chunks.clone();
            tokio::spawn(async move {
                let mut at = 0;
                for (size, pause) in chunks.iter().cycle() {
                    if at == sent.len() {
                        break;
                    }
                    let end = (at + size).min(sent.len());
                    client_write.write_all(&sent[at..end]).await.unwrap();
                    client_write.flush().await.unwrap();
                    at = end;
                    match pause {
                        1 => tokio::task::yield_now().await,
                        2 => tokio::time::sleep(Duration::from_millis(1)).await,
                        _ => {}
                    }
                }
                client_write.shutdown().await.unwrap();
                // Keep the write half (and so the socket) until the case is over.
                client_write
            })
        };

        let (mut messages, writer) = Messages::new(conn, case.framing, case.initial);
        if let Some((high_watermark, low_watermark, read_size, slack)) = case.flow {
            // The smallest `max_buffer` that holds any unfinished frame the framing allows, or a bit more.
            let max_buffer = case.framing.max_buffered() + slack;
            messages = messages.with_flow_control(FlowControl {
                high_watermark,
                low_watermark,
                read_size,
                max_buffer,
            });
        }
        let mut model = Model {
            mode: Mode::Passive,
            passive_due: false,
            done: false,
        };
        model.set_mode(case.initial);
        let mut frames: Vec<bytes::Bytes> = Vec::new();
        let mut left = false;
        let mut rest = Vec::new();

        let on_event = |event: Option<Event<bytes::Bytes>>,
                        pulled: bool,
                        model: &mut Model,
                        frames: &mut Vec<bytes::Bytes>|
         -> Result<(), TestCaseError> {
            match event {
                Some(Event::Data(frame)) => {
                    if model.done {
                        return Err(fail("Data after the end".into()));
                    }
                    if let Framing::Raw { max } = case.framing {
                        if frame.is_empty() || frame.len() > max {
                            return Err(fail(format!("raw chunk of {} (max {max})", frame.len())));
                        }
                    }
                    if !pulled {
                        model.delivered();
                    }
                    frames.push(frame);
                }
                Some(Event::Closed) => {
                    if model.done {
                        return Err(fail("Closed after the end".into()));
                    }
                    model.done = true;
                }
                Some(Event::Passive) => return Err(fail("unexpected Passive".into())),
                Some(Event::Draining) => return Err(fail("Draining was not asked for".into())),
                Some(Event::Error(e)) => return Err(fail(format!("error: {e}"))),
                None => {
                    if !model.done {
                        return Err(fail("the stream ended without Closed".into()));
                    }
                }
            }
            Ok(())
        };

        let leave = |messages: Messages, writer: lariat::WriteHalf| async move {
            let (read, buf): (lariat::ReadHalf, BytesMut) = messages.into_inner();
            let conn = read.reunite(writer).expect("halves of one connection");
            let mut plain = Prefixed::new(buf, conn);
            let mut rest = Vec::new();
            tokio::time::timeout(LIMIT, plain.read_to_end(&mut rest))
                .await
                .expect("plain reads stalled")
                .unwrap();
            rest
        };

        let mut messages = Some(messages);
        let mut writer = Some(writer);
        for (i, op) in case.ops.iter().enumerate() {
            if case.leave_at == Some(i) {
                rest = leave(messages.take().unwrap(), writer.take().unwrap()).await;
                left = true;
                break;
            }
            let m = messages.as_mut().unwrap();
            match *op {
                Op::SetMode(mode) => {
                    m.set_mode(mode);
                    model.set_mode(mode);
                }
                Op::Recv => {
                    let event = tokio::time::timeout(LIMIT, m.recv())
                        .await
                        .map_err(|_| fail("recv stalled".into()))?;
                    on_event(event, true, &mut model, &mut frames)?;
                }
                Op::Next => {
                    if model.done {
                        let event = m.next().now_or_never();
                        if !matches!(event, Some(None)) {
                            return Err(fail(format!("after the end: {event:?}")));
                        }
                    } else if model.passive_due {
                        let event = m.next().now_or_never();
                        if !matches!(event, Some(Some(Event::Passive))) {
                            return Err(fail(format!("owed Passive, got {event:?}")));
                        }
                        model.passive_due = false;
                    } else if model.mode == Mode::Passive {
                        let event = m.next().now_or_never();
                        if event.is_some() {
                            return Err(fail(format!("Passive delivered {event:?}")));
                        }
                    } else {
                        let event = tokio::time::timeout(LIMIT, m.next())
                            .await
                            .map_err(|_| fail("next stalled".into()))?;
                        on_event(event, false, &mut model, &mut frames)?;
                    }
                }
            }
            if m.mode() != model.mode {
                return Err(fail(format!("mode {:?}, model {model:?}", m.mode())));
            }
        }
        if !left {
            if case.leave_at.is_some() {
                rest = leave(messages.take().unwrap(), writer.take().unwrap()).await;
            } else {
                let m = messages.as_mut().unwrap();
                while !model.done {
                    let event = tokio::time::timeout(LIMIT, m.recv())
                        .await
                        .map_err(|_| fail("recv stalled".into()))?;
                    on_event(event, true, &mut model, &mut frames)?;
                }
                if m.recv().await.is_some() {
                    return Err(fail("recv after the end".into()));
                }
            }
        }

        let mut got = Vec::new();
        for f in &frames {
            got.extend_from_slice(&reencode(case.framing, f));
        }
        got.extend_from_slice(&rest);
        prop_assert_eq!(got.len(), sent.len());
        prop_assert!(got == sent, "bytes differ");
        if !matches!(case.framing, Framing::Raw { .. }) {
            prop_assert!(frames.len() <= case.messages.len());
            for (f, m) in frames.iter().zip(&case.messages) {
                prop_assert_eq!(&f[..], &m[..]);
            }
        }
        drop((messages, writer));
        let client_write = tokio::time::timeout(LIMIT, peer)
            .await
            .map_err(|_| fail("peer stalled".into()))?
            .unwrap();
        // The server side is gone: the client reads its close.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(LIMIT, client_read.read(&mut buf))
            .await
            .map_err(|_| fail("the server side did not close".into()))?
            .unwrap_or(0);
        prop_assert_eq!(n, 0);
        drop(client_write);
        Ok(())
    }

    #[test]
    fn no_byte_lost_duplicated_or_reordered() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pairs = std::cell::RefCell::new(rt.block_on(async { Pairs::start() }));
        let started = Instant::now();
        // 64 cases by default; PROPTEST_CASES=N for a longer hunt.
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let ran = std::cell::Cell::new(0u64);
        let result = runner.run(&case(), |case| {
            ran.set(ran.get() + 1);
            rt.block_on(run_case(&mut pairs.borrow_mut(), case))
        });
        let ran = ran.get();
        eprintln!("{ran} cases (with shrinking) in {:?}", started.elapsed());
        if let Err(e) = result {
            panic!("{e}");
        }
        let accepted = pairs.borrow().server.handle().stats().accepted;
        assert_eq!(accepted, ran);
    }
}

/// `Framing::Packet { max }` promises frames up to `max`, even above `FlowControl::max_buffer` (1 MiB by
/// default, the guard for decoders without limits) and even when the frame arrives slowly enough to be
/// seen unfinished at that size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_within_the_framing_limit_is_delivered_whatever_its_size() {
    const FRAME: usize = 1024 * 1024 + 1;
    let mut pairs = Pairs::start();
    let (client, conn) = pairs.pair().await;
    let (_client_read, mut client_write) = client.into_split();
    let peer = tokio::spawn(async move {
        let mut frame = (FRAME as u32).to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(7u8, FRAME));
        // All but the last byte, then a pause (a slow network), then the last byte.
        client_write
            .write_all(&frame[..frame.len() - 1])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        client_write
            .write_all(&frame[frame.len() - 1..])
            .await
            .unwrap();
        client_write.shutdown().await.unwrap();
        client_write
    });
    let framing = Framing::Packet {
        header: 4,
        max: 2 * 1024 * 1024,
    };
    let (mut messages, _writer) = Messages::new(conn, framing, Mode::Push);
    let event = tokio::time::timeout(LIMIT, messages.next()).await.unwrap();
    match event {
        Some(Event::Data(frame)) => assert_eq!(frame.len(), FRAME),
        other => panic!("a {FRAME}-byte frame within a 2 MiB limit: {other:?}"),
    }
    let event = tokio::time::timeout(LIMIT, messages.next()).await.unwrap();
    assert!(matches!(event, Some(Event::Closed)), "{event:?}");
    drop(peer.await.unwrap());
}

/// `next()` and `recv()` are cancel-safe: in a `select!` that a timer wins again and again (every
/// millisecond, mid-message as often as not), no line is lost, duplicated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_and_recv_lose_nothing_when_a_select_drops_them() {
    const LINES: usize = 20_000;
    for pull in [false, true] {
        let (listener, addr) = bind_loopback();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _server = Server::builder()
            .serve([listener], move |conn: Connection| {
                let tx = tx.clone();
                async move {
                    let mode = if pull { Mode::Passive } else { Mode::Push };
                    let (mut messages, _writer) = Messages::new(conn, Framing::lines(), mode);
                    let mut lines = Vec::new();
                    let mut cancelled = 0u32;
                    loop {
                        let event = tokio::select! {
                            event = async {
                                if pull { messages.recv().await } else { messages.next().await }
                            } => event,
                            _ = tokio::time::sleep(Duration::from_millis(1)) => {
                                cancelled += 1;
                                continue;
                            }
                        };
                        match event {
                            Some(Event::Data(line)) => lines.push(line),
                            _ => break,
                        }
                    }
                    let _ = tx.send((lines, cancelled));
                }
            })
            .unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        // Sent in small pieces with pauses, so reads end mid-line and the timer fires between them.
        let text: Vec<u8> = (0..LINES)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for (i, piece) in text.chunks(997).enumerate() {
            client.write_all(piece).await.unwrap();
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        client.shutdown().await.unwrap();
        let (lines, cancelled) = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .expect("the handler ends")
            .unwrap();
        assert_eq!(lines.len(), LINES, "pull={pull}");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(&line[..], format!("line {i}").as_bytes(), "pull={pull}");
        }
        eprintln!("pull={pull}: {cancelled} polls dropped by the timer");
    }
}
