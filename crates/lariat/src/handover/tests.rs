//! Two servers in one process, joined by a hand-over channel as a restart joins two processes.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{incoming, wire, Outgoing};
use crate::delivery::{Event, Framing, Messages, Mode};
use crate::{Connection, Listener, Server};

fn framing() -> Framing {
    Framing::Lines { max: 1024 }
}

/// What a handler saw, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Data(String),
    Passive,
    Resumed(Option<Bytes>),
    HandedOver,
}

fn server(
    handler: impl Fn(Connection) -> tokio::task::JoinHandle<()> + Send + Sync + 'static,
) -> (Server, std::net::SocketAddr) {
    let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().tcp().unwrap();
    let server = Server::builder()
        .serve([listener], move |conn| {
            let task = handler(conn);
            async move {
                let _ = task.await;
            }
        })
        .unwrap();
    (server, addr)
}

/// A hand-over channel into `new`, as a restart opens one: `new` takes connections from it; offer the
/// returned end to the old server.
fn channel_into(new: &Server) -> std::sync::Arc<Outgoing> {
    let (a, b) =
        socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
    b.set_nonblocking(true).unwrap();
    tokio::spawn(incoming::take_connections(
        wire::register(b).unwrap(),
        new.handle().shared.clone(),
    ));
    Outgoing::start(a, Duration::from_secs(5)).unwrap()
}

/// Old and new joined: connections the old one's handlers hand over start in the new one's.
fn join(old: &Server, new: &Server) {
    old.handle().shared.handover.offer(channel_into(new));
}

#[tokio::test]
async fn a_count_stream_moves_mid_way_with_its_budget_and_its_unfinished_line() {
    let (tx, mut seen) = mpsc::unbounded_channel::<(char, Seen)>();
    let old_tx = tx.clone();
    let (old, addr) = server(move |conn| {
        let tx = old_tx.clone();
        tokio::spawn(async move {
            let mut offer = conn.meta().hand_over_signal();
            let (mut messages, writer) = Messages::new(conn, framing(), Mode::Count(5));
            loop {
                tokio::select! {
                    _ = &mut offer => {
                        messages.hand_over(writer, b"mine").await.unwrap();
                        tx.send(('A', Seen::HandedOver)).unwrap();
                        return;
                    }
                    event = messages.next() => match event {
                        Some(Event::Data(line)) => {
                            tx.send(('A', Seen::Data(String::from_utf8_lossy(&line).into_owned()))).unwrap();
                        }
                        other => panic!("old: {other:?}"),
                    },
                }
            }
        })
    });
    let (new, _) = server(move |conn| {
        let tx = tx.clone();
        tokio::spawn(async move {
            // A fresh connection would be pushed everything; the resumed one keeps its budget.
            let (mut messages, _writer) = Messages::new(conn, framing(), Mode::Push);
            tx.send(('B', Seen::Resumed(messages.resumed_state())))
                .unwrap();
            // Pushed until the budget's Passive, then pulled.
            let mut pulling = false;
            loop {
                let event = match pulling {
                    true => messages.recv().await,
                    false => messages.next().await,
                };
                match event {
                    Some(Event::Data(line)) => {
                        tx.send(('B', Seen::Data(String::from_utf8_lossy(&line).into_owned())))
                            .unwrap();
                    }
                    Some(Event::Passive) => {
                        pulling = true;
                        tx.send(('B', Seen::Passive)).unwrap();
                    }
                    Some(Event::Closed) | None => return,
                    other => panic!("new: {other:?}"),
                }
            }
        })
    });

    let mut client = TcpStream::connect(addr).await.unwrap();
    // Two lines delivered, and half of a third read ahead.
    client.write_all(b"1\n2\n3").await.unwrap();
    for want in ["1", "2"] {
        assert_eq!(seen.recv().await.unwrap(), ('A', Seen::Data(want.into())));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    join(&old, &new);
    assert_eq!(seen.recv().await.unwrap(), ('A', Seen::HandedOver));
    assert_eq!(
        seen.recv().await.unwrap(),
        ('B', Seen::Resumed(Some(Bytes::from_static(b"mine"))))
    );
    client.write_all(b"\n4\n5\n6\n").await.unwrap();
    // Count(5) had 3 left: three lines, the Passive it owes, then the pulled one.
    for want in [
        Seen::Data("3".into()),
        Seen::Data("4".into()),
        Seen::Data("5".into()),
        Seen::Passive,
        Seen::Data("6".into()),
    ] {
        assert_eq!(seen.recv().await.unwrap(), ('B', want));
    }
    assert_eq!(old.handle().stats().active, 0, "the old server let go");
    assert_eq!(new.handle().stats().active, 1);
}

#[tokio::test]
async fn a_channel_that_closes_leaves_the_connection_where_it_was() {
    let (old, addr) = server(|mut conn| {
        tokio::spawn(async move {
            let mut listening = true;
            loop {
                if conn.readable_or_offer(&mut listening).await.unwrap() == super::Wake::HandOver {
                    match conn.hand_over(b"").await {
                        Ok(()) => panic!("handed over to a successor that is gone"),
                        Err(refused) => {
                            assert!(
                                matches!(refused.reason, super::Refusal::SuccessorGone),
                                "{}",
                                refused.reason
                            );
                            conn = refused.connection;
                        }
                    }
                    continue;
                }
                let mut buf = [0u8; 64];
                match conn.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => conn.write_all(&buf[..n]).await.unwrap(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"before").await.unwrap();
    let mut back = [0u8; 6];
    client.read_exact(&mut back).await.unwrap();
    // A successor that dies before answering: its end of the channel closes.
    let (a, b) =
        socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
    drop(b);
    let out = Outgoing::start(a, Duration::from_secs(5)).unwrap();
    old.handle().shared.handover.offer(out);
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.write_all(b"after!").await.unwrap();
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"after!");
    assert_eq!(old.handle().stats().active, 1);
}

/// An echo handler that hands its connection over at the offer; records where each byte was echoed.
fn echo_moving(
    name: char,
    tx: mpsc::UnboundedSender<(char, Seen)>,
) -> impl Fn(Connection) -> tokio::task::JoinHandle<()> + Send + Sync + 'static {
    move |mut conn| {
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(state) = conn.resumed_state() {
                tx.send((name, Seen::Resumed(Some(state)))).unwrap();
            }
            let mut listening = true;
            loop {
                if conn.readable_or_offer(&mut listening).await.unwrap() == super::Wake::HandOver {
                    match conn.hand_over(b"").await {
                        Ok(()) => {
                            tx.send((name, Seen::HandedOver)).unwrap();
                            return;
                        }
                        Err(refused) => conn = refused.connection,
                    }
                    continue;
                }
                let mut buf = [0u8; 64];
                match conn.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        conn.write_all(&buf[..n]).await.unwrap();
                        let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                        tx.send((name, Seen::Data(data))).unwrap();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    }
}

/// A successor that begins its own drain (stopped, or replaced in turn) while its predecessor still
/// hands connections over takes no more: a connection reaching its safe point later stays with the
/// predecessor and is served there, and the successor's drain ends only once the channel has (a
/// process that exited while its predecessor committed a connection to it would lose that connection).
#[tokio::test]
async fn a_successor_that_begins_its_drain_takes_no_more_and_its_drain_waits_for_the_channel() {
    let (tx, mut seen) = mpsc::unbounded_channel::<(char, Seen)>();
    let (old, addr) = server(echo_moving('A', tx.clone()));
    let (new, _) = server(echo_moving('B', tx));

    // A first client moves while the successor serves normally.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"one").await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), ('A', Seen::Data("one".into())));
    let mut back = [0u8; 3];
    first.read_exact(&mut back).await.unwrap();
    let out = channel_into(&new);
    assert!(new.handle().shared.handover.incoming_open().is_some());
    // The second client is connected, and waits in its handler, before the offer.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(b"two").await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), ('A', Seen::Data("two".into())));
    let mut back = [0u8; 3];
    second.read_exact(&mut back).await.unwrap();

    // The successor begins its drain before the offer reaches the handlers.
    let drain = tokio::spawn({
        let handle = new.handle().clone();
        async move {
            handle
                .drain(crate::drain::DrainOptions {
                    timeout: Duration::from_secs(5),
                    settle: Duration::from_millis(10),
                })
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while new.handle().shared.handover.incoming_open().is_some() {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the successor's end of the channel closes once its drain begins");
    let report = tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("the successor's drain ends with its channel")
        .unwrap();
    assert!(report.is_complete(), "{report:?}");

    // Offered now, every connection stays with the old server and is served there.
    old.handle().shared.handover.offer(out);
    for (client, word) in [(&mut first, "three"), (&mut second, "four")] {
        client.write_all(word.as_bytes()).await.unwrap();
        let mut back = vec![0u8; word.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back))
            .await
            .expect("echoed")
            .unwrap();
        assert_eq!(back, word.as_bytes());
    }
    let mut served_by_old = Vec::new();
    while let Ok(event) = seen.try_recv() {
        served_by_old.push(event);
    }
    assert!(
        served_by_old.contains(&('A', Seen::Data("three".into())))
            && served_by_old.contains(&('A', Seen::Data("four".into()))),
        "{served_by_old:?}"
    );
    assert!(
        !served_by_old.iter().any(|(who, _)| *who == 'B'),
        "{served_by_old:?}"
    );
    assert_eq!(old.handle().stats().active, 2);
    assert_eq!(new.handle().stats().active, 0);
}
