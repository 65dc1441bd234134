//! Idle HTTP/1.1 connections over TLS 1.3 sleep in the server's parking lot like plain ones: after the
//! handshake lariat's record layer holds the session, which shrinks to its keys, so the connection can
//! leave its task. The lot wakes them for their next request (the session goes on: sequence numbers,
//! a key update while asleep), for a forced close and at the keep-alive timeout; a configuration that
//! keeps sessions in rustls still hibernates, in the connection's task.
#![cfg(feature = "http")]

use crate::common;
use common::http::read_answer;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{connect, temp_dir, TestCert};
use common::{bind_loopback, eventually};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use lariat::http::{Http, HttpOptions};
use lariat::tls::TlsConfig;
use lariat::{Handler, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(10);
const HIBERNATE_AFTER: Duration = Duration::from_millis(30);

fn hello() -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    hyper::service::service_fn(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_owned();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
            "hello {path}"
        )))))
    })
}

/// A TLS server (ALPN `http/1.1`) running `handler`; sessions kept in rustls if `in_rustls`.
fn serve(
    tag: &str,
    handler: impl Handler,
    in_rustls: bool,
) -> (Server, TestCert, std::net::SocketAddr) {
    serve_with(tag, handler, in_rustls, &["http/1.1"])
}

/// As [`serve`], offering `alpn`.
fn serve_with(
    tag: &str,
    handler: impl Handler,
    in_rustls: bool,
    alpn: &[&str],
) -> (Server, TestCert, std::net::SocketAddr) {
    let cert = TestCert::write(&temp_dir(tag));
    let config = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path)
        .unwrap()
        .with_alpn(alpn.iter().copied())
        .with_session_in_rustls(in_rustls);
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .tls(Some(config))
        .serve([listener], handler)
        .unwrap();
    (server, cert, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_sleeps_in_the_lot_and_wakes_for_each_request() {
    let http = Http::with_options(
        hello(),
        HttpOptions::default().hibernate_after(Some(HIBERNATE_AFTER)),
    );
    let (server, cert, addr) = serve("tls-sleep", http.clone(), false);
    let mut c = connect(&cert.client(&[b"http/1.1"]), addr).await.unwrap();
    let mut rest = Vec::new();
    for round in 0..4u64 {
        if round == 2 {
            // A key update asked for while the connection sleeps: answered after the wake-up, and
            // both sides go on under new keys.
            c.get_mut().1.refresh_traffic_keys().unwrap();
        }
        let path = format!("/{round}");
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let a = read_answer(&mut c, &mut rest).await.expect("an answer");
        assert!(
            a.starts_with("HTTP/1.1 200 OK\r\n") && a.ends_with(&format!("hello {path}")),
            "{a}"
        );
        assert!(
            eventually(PATIENCE, || http.stats().slept > round).await,
            "never slept: {:?}",
            http.stats()
        );
        // Asleep: no task, and the connection is still listed.
        assert_eq!(server.handle().connections().len(), 1);
    }
    // Pipelined requests wake it once and are all answered.
    c.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    for want in ["hello /a", "hello /b"] {
        let a = read_answer(&mut c, &mut rest).await.expect("an answer");
        assert!(a.ends_with(want), "{a}");
    }
    let stats = http.stats();
    assert_eq!(stats.requests, 6, "{stats:?}");
    assert!(stats.woken >= 4, "{stats:?}");
    assert_eq!(stats.connections, 1, "{stats:?}");
    server.handle().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_tls_connection_closes_by_force_and_at_its_keep_alive_timeout() {
    let keep_alive = Duration::from_millis(400);
    let options = HttpOptions::default()
        .hibernate_after(Some(HIBERNATE_AFTER))
        .keep_alive_timeout(Some(keep_alive));
    let http = Http::with_options(hello(), options);
    let (server, cert, addr) = serve("tls-sleep-close", http.clone(), false);
    let handle = server.handle().clone();
    let client = cert.client(&[b"http/1.1"]);

    // The keep-alive timeout: a clean close (close_notify, then end of stream).
    let mut c = connect(&client, addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut c, &mut Vec::new())
        .await
        .expect("an answer");
    assert!(eventually(PATIENCE, || http.stats().slept == 1).await);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, c.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(n.unwrap(), 0, "a clean end of stream");
    assert!(eventually(PATIENCE, || handle.stats().active == 0).await);

    // A forced close reaches a sleeping connection at once.
    let mut c = connect(&client, addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut c, &mut Vec::new())
        .await
        .expect("an answer");
    assert!(eventually(PATIENCE, || http.stats().slept == 2).await);
    let listed = handle.connections();
    assert_eq!(listed.len(), 1, "{listed:?}");
    handle.close_connection(listed[0].id).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(!matches!(ended, Ok(Ok(n)) if n > 0), "{ended:?}");
    assert!(eventually(PATIENCE, || handle.stats().active == 0).await);
    server.handle().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_kept_in_rustls_hibernate_in_their_task() {
    let http = Http::with_options(
        hello(),
        HttpOptions::default().hibernate_after(Some(HIBERNATE_AFTER)),
    );
    let (server, cert, addr) = serve("tls-sleep-rustls", http.clone(), true);
    let mut c = connect(&cert.client(&[b"http/1.1"]), addr).await.unwrap();
    let mut rest = Vec::new();
    for round in 0..2u64 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let a = read_answer(&mut c, &mut rest).await.expect("an answer");
        assert!(a.ends_with("hello /"), "{a}");
        assert!(eventually(PATIENCE, || http.stats().hibernated > round).await);
    }
    assert_eq!(http.stats().slept, 0, "{:?}", http.stats());
    server.handle().stop();
}

/// Without ALPN (the server offers none, as `lariat serve` without `--alpn`), the first plaintext bytes
/// tell HTTP/1, whose idle connections sleep too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_alpn_the_first_bytes_tell_http1_and_it_sleeps() {
    let http = Http::with_options(
        hello(),
        HttpOptions::default().hibernate_after(Some(HIBERNATE_AFTER)),
    );
    let (server, cert, addr) = serve_with("tls-sleep-no-alpn", http.clone(), false, &[]);
    let mut c = connect(&cert.client(&[]), addr).await.unwrap();
    assert_eq!(c.get_ref().1.alpn_protocol(), None);
    let mut rest = Vec::new();
    for round in 0..2u64 {
        c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let a = read_answer(&mut c, &mut rest).await.expect("an answer");
        assert!(a.ends_with("hello /x"), "{a}");
        assert!(
            eventually(PATIENCE, || http.stats().slept > round).await,
            "never slept: {:?}",
            http.stats()
        );
    }
    server.handle().stop();
}
