//! `lariat::http`'s hibernation: an HTTP/1.1 keep-alive connection quiet for `hibernate_after` drops
//! hyper's connection and waits holding only the socket. Hibernated connections serve their next
//! requests (pipelined, with bodies), and the keep-alive timeout, the header timeout (without a
//! keep-alive timeout) and the drain still close them, cleanly and counted.
#![cfg(feature = "http")]

use crate::common;
use common::http::read_answer;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bind_loopback, eventually};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use lariat::http::{Http, HttpOptions};
use lariat::{DrainOptions, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);
const HIBERNATE_AFTER: Duration = Duration::from_millis(30);

/// Answers `got N` with the request body's length in bytes.
fn body_length() -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    hyper::service::service_fn(|req: Request<Incoming>| async move {
        let n = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => 0,
        };
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("got {n}")))))
    })
}

fn options() -> HttpOptions {
    HttpOptions::default().hibernate_after(Some(HIBERNATE_AFTER))
}

/// Waits for the server's end of stream (a reset fails the test); returns how long it took.
async fn read_eof(c: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, c.read(&mut buf)).await {
        Ok(Ok(0)) => started.elapsed(),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Ok(Err(e)) => panic!("not a clean close: {e}"),
        Err(_) => panic!("no close within {PATIENCE:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernated_connections_serve_pipelined_requests_and_bodies() {
    let (listener, addr) = bind_loopback();
    let http = Http::with_options(body_length(), options());
    let server = Server::builder().serve([listener], http.clone()).unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    for round in 0..3 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let a = read_answer(&mut c, &mut rest).await.expect("an answer");
        assert!(a.ends_with("got 0"), "{a}");
        // Quiet: the connection hibernates.
        let want = round + 1;
        assert!(
            eventually(PATIENCE, || http.stats().hibernated >= want).await,
            "never hibernated: {:?}",
            http.stats()
        );
        // Three pipelined requests in one write, one with a body, then a body split over two writes.
        c.write_all(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              GET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
        for want in ["got 0", "got 5", "got 0"] {
            let a = read_answer(&mut c, &mut rest).await.expect("an answer");
            assert!(
                a.starts_with("HTTP/1.1 200 OK\r\n") && a.ends_with(want),
                "{a}"
            );
        }
        c.write_all(b"POST /4 HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
            .await
            .unwrap();
        tokio::time::sleep(HIBERNATE_AFTER * 4).await;
        c.write_all(b"cdef").await.unwrap();
        let a = read_answer(&mut c, &mut rest).await.expect("an answer");
        assert!(a.ends_with("got 6"), "{a}");
        assert!(rest.is_empty());
    }
    let stats = http.stats();
    assert_eq!(stats.requests, 15, "{stats:?}");
    assert_eq!(stats.connections, 1, "{stats:?}");
    server.handle().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_timeout_closes_a_hibernated_connection() {
    let (listener, addr) = bind_loopback();
    let keep_alive = Duration::from_millis(400);
    let http = Http::with_options(
        body_length(),
        options().keep_alive_timeout(Some(keep_alive)),
    );
    let server = Server::builder().serve([listener], http.clone()).unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut c, &mut Vec::new())
        .await
        .expect("an answer");
    assert!(a.ends_with("got 0"), "{a}");
    let answered = Instant::now();
    read_eof(&mut c).await;
    let waited = answered.elapsed();
    assert!(waited >= keep_alive, "closed after {waited:?}");
    let stats = http.stats();
    assert_eq!(stats.hibernated, 1, "{stats:?}");
    assert_eq!(stats.idle_closed, 1, "{stats:?}");
    server.handle().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keep_alive_timeout_the_header_timeout_closes_a_hibernated_connection() {
    let (listener, addr) = bind_loopback();
    let header = Duration::from_millis(400);
    let http = Http::with_options(
        body_length(),
        options()
            .keep_alive_timeout(None)
            .header_timeout(Some(header)),
    );
    let server = Server::builder().serve([listener], http.clone()).unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut c, &mut Vec::new())
        .await
        .expect("an answer");
    let answered = Instant::now();
    read_eof(&mut c).await;
    assert!(
        answered.elapsed() >= header,
        "closed after {:?}",
        answered.elapsed()
    );
    let stats = http.stats();
    assert_eq!(stats.hibernated, 1, "{stats:?}");
    assert_eq!(stats.header_timeouts, 1, "{stats:?}");
    server.handle().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_hibernated_connections_and_answers_a_late_request() {
    let (listener, addr) = bind_loopback();
    let quiet = Duration::from_millis(300);
    let http = Http::with_options(body_length(), options().drain_quiet(quiet));
    let server = Server::builder().serve([listener], http.clone()).unwrap();

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut late = TcpStream::connect(addr).await.unwrap();
    for c in [&mut idle, &mut late] {
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        read_answer(c, &mut Vec::new()).await.expect("an answer");
    }
    assert!(eventually(PATIENCE, || http.stats().hibernated == 2).await);

    let handle = server.handle().clone();
    let drain = tokio::spawn(async move {
        handle
            .drain(DrainOptions {
                timeout: PATIENCE,
                settle: Duration::from_millis(50),
            })
            .await
    });
    // A request arriving during the quiet period is answered, with `Connection: close`, then closed.
    tokio::time::sleep(quiet / 3).await;
    late.write_all(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut late, &mut Vec::new())
        .await
        .expect("an answer");
    assert!(
        a.ends_with("got 0") && a.contains("connection: close"),
        "{a}"
    );
    read_eof(&mut late).await;
    // The idle one is closed cleanly after the quiet period.
    read_eof(&mut idle).await;
    let report = drain.await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    let stats = http.stats();
    assert_eq!(stats.drain_closed_idle, 1, "{stats:?}");
    assert_eq!(stats.requests, 3, "{stats:?}");
}

/// Half a request head after an answer: hyper holds it, so the connection must not hibernate and
/// come back with a fresh header timer each time (a slowloris that never finishes its head would then
/// never be closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_request_head_is_still_closed_at_the_header_timeout() {
    let (listener, addr) = bind_loopback();
    let header = Duration::from_millis(500);
    let http = Http::with_options(body_length(), options().header_timeout(Some(header)));
    let server = Server::builder().serve([listener], http.clone()).unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut c, &mut Vec::new())
        .await
        .expect("an answer");
    c.write_all(b"GET /2 HTTP/1.1\r\nHo").await.unwrap();
    let waited = read_eof(&mut c).await;
    assert!(
        waited >= header && waited < header * 6,
        "closed after {waited:?}"
    );
    assert_eq!(http.stats().header_timeouts, 1, "{:?}", http.stats());
    server.handle().stop();
}

/// A request head that arrives in two parts far apart: hyper holds the first part, so the connection
/// stays awake, and the answer keeps the connection alive (stopping hyper then would have turned its
/// keep-alive off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_two_parts_is_answered_without_closing() {
    let (listener, addr) = bind_loopback();
    let http = Http::with_options(body_length(), options());
    let server = Server::builder().serve([listener], http.clone()).unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut c, &mut rest).await.expect("an answer");
    c.write_all(b"GET /2 HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(HIBERNATE_AFTER * 10).await;
    assert_eq!(http.stats().hibernated, 0, "{:?}", http.stats());
    c.write_all(b"st: a\r\n\r\n").await.unwrap();
    let a = read_answer(&mut c, &mut rest).await.expect("an answer");
    assert!(a.ends_with("got 0"), "{a}");
    assert!(!a.contains("connection: close"), "{a}");
    // Quiet after the answer: now it hibernates.
    assert!(eventually(PATIENCE, || http.stats().hibernated == 1).await);
    server.handle().stop();
}

/// A hibernated connection sleeps without a task: it is still listed with its bytes, a forced close
/// ends it at once, and the cap slot it held comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_connection_is_listed_and_closes_by_force() {
    let (listener, addr) = bind_loopback();
    let http = Http::with_options(body_length(), options());
    let server = Server::builder().serve([listener], http.clone()).unwrap();
    let handle = server.handle().clone();

    let mut c = TcpStream::connect(addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    c.write_all(request).await.unwrap();
    let a = read_answer(&mut c, &mut Vec::new())
        .await
        .expect("an answer");
    assert!(a.ends_with("got 0"), "{a}");
    assert!(eventually(Duration::from_secs(10), || http.stats().slept == 1).await);
    let listed = handle.connections();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].bytes_in, request.len() as u64, "{listed:?}");
    assert!(listed[0].bytes_out > 0, "{listed:?}");

    handle.close_connection(listed[0].id).unwrap();
    let closed_at = Instant::now();
    read_eof(&mut c).await;
    assert!(
        closed_at.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        closed_at.elapsed()
    );
    assert!(eventually(Duration::from_secs(10), || handle.stats().active == 0).await);
    assert_eq!(http.stats().woken, 1, "{:?}", http.stats());
    server.handle().stop();
}
