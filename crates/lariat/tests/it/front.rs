//! The set-up before a handler: the admission hook and greeting (seed 003), per-listener PROXY settings,
//! and slowloris: with a cap of 100, a thousand silent connections cannot keep fresh clients out.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bind_loopback, eventually};
use lariat::admission::Reject;
use lariat::proxy::{ProxyConfig, ProxyMode};
use lariat::{Connection, PeerAddr, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PATIENCE: Duration = Duration::from_secs(10);

async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn the_hook_refuses_with_a_reply_and_admitted_clients_are_greeted() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .admission_hook(|conn: &Connection| match conn.peer_addr() {
            PeerAddr::Tcp(a) if a.ip().to_string() == "127.0.0.3" => {
                Err(Reject::new("127.0.0.3 is banned").with_reply("-ERR banned\r\n"))
            }
            _ => Ok(()),
        })
        .greeting(Some(Bytes::from_static(b"+OK welcome\r\n")))
        .serve([listener], common::echo)
        .unwrap();
    // Admitted: the greeting comes first, before the client says anything, then the echo.
    let mut ok = connect_from("127.0.0.2", addr).await;
    let mut greeting = [0u8; 13];
    ok.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"+OK welcome\r\n");
    ok.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    ok.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    // Refused: the reply, then the close; never the greeting.
    let mut banned = connect_from("127.0.0.3", addr).await;
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, banned.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"-ERR banned\r\n");
    let handle = server.handle().clone();
    assert!(eventually(PATIENCE, || handle.stats().hook_refused == 1).await);
    assert_eq!(handle.stats().active, 1);
}

#[tokio::test]
async fn proxy_protocol_on_one_listener_only() {
    let (balancer_port, balancer) = bind_loopback();
    let (internal_port, internal) = bind_loopback();
    let balancer_port = balancer_port.with_handshake(lariat::ListenerHandshake {
        proxy: Some(ProxyConfig::new(ProxyMode::V1)),
        tls: None,
    });
    let server = Server::builder()
        .serve(
            [balancer_port, internal_port],
            |mut conn: Connection| async move {
                let line = format!("{}\n", conn.peer_addr());
                conn.write_all(line.as_bytes()).await
            },
        )
        .unwrap();
    let mut via_balancer = TcpStream::connect(balancer).await.unwrap();
    via_balancer
        .write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 80\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    via_balancer.read_to_string(&mut line).await.unwrap();
    assert_eq!(line, "192.0.2.1:1111\n");
    // The internal port reads no header: its client is served as it connected.
    let mut direct = TcpStream::connect(internal).await.unwrap();
    let mut line = String::new();
    direct.read_to_string(&mut line).await.unwrap();
    assert!(line.starts_with("127.0.0.1:"), "{line}");
    assert_eq!(server.handle().stats().proxy_refused, 0);
}

/// 20 fresh clients, each with a PROXY header and a greeting it expects echoed; returns how long until
/// every one was served.
async fn fresh_clients_served(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut fresh = Vec::new();
    for i in 0..20u32 {
        fresh.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let msg = format!("PROXY TCP4 192.0.2.{i} 192.0.2.200 {i} 80\r\nhello {i}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let want = format!("hello {i}");
            let mut back = vec![0u8; want.len()];
            tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back))
                .await
                .expect("a fresh client is served")
                .unwrap();
            assert_eq!(back, want.as_bytes());
        }));
    }
    for f in fresh {
        f.await.unwrap();
    }
    started.elapsed()
}

/// Slowloris: 1,000 clients connect and say nothing, against a cap of 100 and a PROXY front with a
/// 250 ms handshake timeout. Each batch of 100 holds the cap for one timeout, then is closed; fresh
/// clients, queued behind them in the backlog, are all served, and none of their bytes is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connections_do_not_keep_fresh_clients_out() {
    let (listener, addr) = bind_loopback();
    let timeout = Duration::from_millis(250);
    let server = Server::builder()
        .max_connections(100)
        .handshake_timeout(timeout)
        .proxy_protocol(Some(ProxyConfig::new(ProxyMode::V1)))
        .serve([listener], common::echo)
        .unwrap();
    let handle = server.handle().clone();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(eventually(PATIENCE, || handle.stats().active == 100).await);
    let waited = fresh_clients_served(addr).await;
    // 1,000 silent clients at 100 per timeout: about ten timeouts (2.5 s) in the queue, never more.
    assert!(
        waited < timeout * 10 + Duration::from_secs(15),
        "fresh clients waited {waited:?}"
    );
    let stats = handle.stats();
    assert!(
        stats.handshake_timeouts + stats.handshake_evicted + stats.proxy_refused >= 900,
        "silent connections closed: {stats:?}"
    );
    assert!(stats.accepted >= 1020);
    drop(silent);
    eprintln!("fresh clients served after {waited:?}; {stats:?}");
}

/// The same crowd against a long (10 s) handshake timeout: without making room, the fresh clients would
/// wait ten timeouts (100 s) behind the silent ones. With a 100 ms grace, every silent connection still
/// in its handshake when the cap is full and clients are queued is closed (`handshake_evicted`) once its
/// grace is over, so the queue moves at a grace per cap's worth of silent clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_pressure_silent_handshakes_give_way_after_their_grace() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .max_connections(100)
        .handshake_timeout(Duration::from_secs(10))
        .handshake_grace(Duration::from_millis(100))
        .proxy_protocol(Some(ProxyConfig::new(ProxyMode::V1)))
        .serve([listener], common::echo)
        .unwrap();
    let handle = server.handle().clone();
    // A client past its handshake, in its handler, before the crowd comes.
    let mut live = TcpStream::connect(addr).await.unwrap();
    live.write_all(b"PROXY TCP4 192.0.2.99 192.0.2.200 99 80\r\nfirst")
        .await
        .unwrap();
    let mut first = [0u8; 5];
    live.read_exact(&mut first).await.unwrap();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let waited = fresh_clients_served(addr).await;
    let stats = handle.stats();
    eprintln!("fresh clients served after {waited:?}; {stats:?}");
    assert!(
        waited < Duration::from_secs(8),
        "fresh clients waited {waited:?}, as if no handshake gave way"
    );
    assert!(stats.handshake_evicted >= 800, "{stats:?}");
    assert_eq!(stats.handshake_timeouts, 0, "{stats:?}");
    // The connection that had reached its handler was never evicted: its echo goes on.
    live.write_all(b"second").await.unwrap();
    let mut second = [0u8; 6];
    live.read_exact(&mut second).await.unwrap();
    assert_eq!(&second, b"second");
    drop(silent);
}
