//! One port, several protocols: TLS, HTTP/1, a custom protocol and a fallback, each reaching its handler
//! with every byte (the router only peeks), many clients at once; a silent client is closed at the
//! handshake timeout, an unroutable one is counted.

use crate::common;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::tls::{connect, echo_flush, exchange, temp_dir, TestCert};
use common::{bind_loopback, eventually};
use lariat::route::{Matcher, Router, Verdict};
use lariat::tls::TlsConfig;
use lariat::{Connection, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);

/// Writes `tag`, then echoes everything (the sniffed bytes included), flushing each write.
fn tagged_echo(
    tag: &'static str,
) -> impl Fn(Connection) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>
       + Send
       + Sync
       + 'static {
    move |mut conn: Connection| {
        Box::pin(async move {
            conn.write_all(tag.as_bytes()).await?;
            conn.flush().await?;
            echo_flush(conn).await
        })
    }
}

fn router(tls: TlsConfig) -> Router {
    Router::new()
        .tls("tls", tls, tagged_echo("[tls]"))
        .route("http", Matcher::Http1, tagged_echo("[http]"))
        .route("h2", Matcher::Http2, tagged_echo("[h2]"))
        .route(
            "game",
            Matcher::Prefix(Arc::from(&b"GAME/1 "[..])),
            tagged_echo("[game]"),
        )
        .route(
            "json",
            Matcher::Custom(Arc::new(|seen: &[u8]| {
                if seen[0] == b'{' {
                    Verdict::Match
                } else {
                    Verdict::NoMatch
                }
            })),
            tagged_echo("[json]"),
        )
        .fallback(tagged_echo("[other]"))
}

/// Sends `data` at once (half-closing after it), expects `tag` + `data` back.
async fn plain_client(addr: std::net::SocketAddr, data: Vec<u8>, tag: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let mut back = Vec::new();
    let (_, read) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        tokio::time::timeout(PATIENCE, r.read_to_end(&mut back))
    );
    read.expect("answer in time").unwrap();
    assert_eq!(&back[..tag.len()], tag.as_bytes(), "wrong route");
    assert!(
        back[tag.len()..] == data[..],
        "bytes lost or changed for {tag}"
    );
}

fn body(prefix: &[u8], len: usize, seed: usize) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend((0..len).map(|i| b'a' + ((i * 7 + seed) % 26) as u8));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_serves_tls_http_and_custom_protocols_byte_exact() {
    let dir = temp_dir("route");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let server = Server::builder().serve([listener], router(tls)).unwrap();
    let connector = cert.client(&[]);
    let mut clients = Vec::new();
    for i in 0..40usize {
        let connector = connector.clone();
        clients.push(tokio::spawn(async move {
            match i % 6 {
                0 => {
                    plain_client(addr, body(b"GET /x HTTP/1.1\r\n\r\n", 50_000, i), "[http]").await
                }
                1 => {
                    plain_client(
                        addr,
                        body(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 10_000, i),
                        "[h2]",
                    )
                    .await
                }
                2 => plain_client(addr, body(b"GAME/1 hello ", 70_000, i), "[game]").await,
                3 => plain_client(addr, body(b"{\"op\":1}", 3_000, i), "[json]").await,
                4 => plain_client(addr, body(b"SSH-2.0-x ", 5_000, i), "[other]").await,
                _ => {
                    let mut s = connect(&connector, addr).await.unwrap();
                    let data = body(b"secret ", 100_000, i);
                    let back = exchange(&mut s, &data, 5 + data.len()).await;
                    assert_eq!(&back[..5], b"[tls]");
                    assert!(back[5..] == data[..], "tls bytes lost");
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let stats = server.handle().stats();
    assert_eq!(
        stats.sniff_failed + stats.tls_failed + stats.handshake_timeouts,
        0
    );
}

#[tokio::test]
async fn a_request_split_across_packets_waits_for_the_bytes_that_decide() {
    let (listener, addr) = bind_loopback();
    let _server = Server::builder()
        .serve(
            [listener],
            Router::new()
                .route("h2", Matcher::Http2, tagged_echo("[h2]"))
                .route("http", Matcher::Http1, tagged_echo("[http]")),
        )
        .unwrap();
    // "P" could start POST or the HTTP/2 preface: the router waits, byte by byte.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for b in b"POST / HTTP/1.1\r\n\r\n" {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"[http]POST / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn silent_unroutable_and_server_speaks_first_clients() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .handshake_timeout(Duration::from_millis(300))
        .serve(
            [listener],
            Router::new().route("http", Matcher::Http1, tagged_echo("[http]")),
        )
        .unwrap();
    let handle = server.handle().clone();
    // Silent: closed at the handshake timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(handle.stats().handshake_timeouts, 1);
    // Unroutable, no fallback: closed and counted.
    let mut odd = TcpStream::connect(addr).await.unwrap();
    odd.write_all(b"HELO there\r\n").await.unwrap();
    let r = tokio::time::timeout(PATIENCE, odd.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(eventually(PATIENCE, || handle.stats().sniff_failed == 1).await);

    // A client that waits for the server to speak goes to the fallback after the sniff timeout.
    let (listener, addr) = bind_loopback();
    let _server = Server::builder()
        .serve(
            [listener],
            Router::new()
                .route("http", Matcher::Http1, tagged_echo("[http]"))
                .fallback(tagged_echo("220 hello\r\n"))
                .sniff_timeout(Duration::from_millis(100)),
        )
        .unwrap();
    let mut smtp = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(PATIENCE, smtp.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    smtp.write_all(b"EHLO x\r\n").await.unwrap();
    let mut back = [0u8; 8];
    smtp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"EHLO x\r\n");
}

#[tokio::test]
async fn the_router_behind_a_proxy_header_sees_the_bytes_after_it() {
    let (listener, addr) = bind_loopback();
    let _server = Server::builder()
        .proxy_protocol(Some(lariat::proxy::ProxyConfig::new(
            lariat::proxy::ProxyMode::V1,
        )))
        .serve(
            [listener],
            Router::new().route("http", Matcher::Http1, |mut conn: Connection| async move {
                let line = format!("{}\n", conn.peer_addr());
                conn.write_all(line.as_bytes()).await?;
                let mut rest = Vec::new();
                conn.read_to_end(&mut rest).await?;
                conn.write_all(&rest).await
            }),
        )
        .unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 4242 80\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&back),
        "192.0.2.9:4242\nGET / HTTP/1.1\r\n\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_greets_inside_a_tls_route_and_after_routing_a_plain_one() {
    let dir = temp_dir("route-greeting");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let router = Router::new()
        .tls("tls", tls, echo_flush)
        .fallback(echo_flush)
        .greeting(Some(bytes::Bytes::from_static(b"+OK\r\n")));
    let server = Server::builder().serve([listener], router).unwrap();
    let mut s = connect(&cert.client(&[]), addr)
        .await
        .expect("the handshake must come before the greeting");
    let back = exchange(&mut s, b"hello", 5 + 5).await;
    assert_eq!(&back, b"+OK\r\nhello");
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let back = exchange(&mut plain, b"x", 5 + 1).await;
    assert_eq!(&back, b"+OK\r\nx");
    assert_eq!(server.handle().stats().tls_failed, 0);
}
