//! `lariat::http`: hyper on lariat connections. HTTP/1.1 and h2c on one port; drains that end every
//! connection after an answer (HTTP/1: `Connection: close`, idle ones closed without a reset; HTTP/2:
//! GOAWAY with the open streams finishing); the header and keep-alive timeouts; unread bodies.
#![cfg(feature = "http")]

use crate::common;
use common::http::read_answer;

use common::http::refused_unprocessed;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::bind_loopback;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lariat::http::{Http, HttpOptions};
use lariat::{DrainOptions, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);

fn drain_opts() -> DrainOptions {
    DrainOptions {
        timeout: Duration::from_secs(10),
        settle: Duration::from_millis(100),
    }
}

/// A service that answers `hello` after `delay`, counting the requests it began.
#[derive(Clone)]
struct Hello {
    delay: Duration,
    began: Arc<AtomicU64>,
}

impl Hello {
    fn new(delay: Duration) -> Hello {
        Hello {
            delay,
            began: Arc::default(),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Hello {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, _req: Request<Incoming>) -> Self::Future {
        self.began.fetch_add(1, Relaxed);
        let delay = self.delay;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
        })
    }
}

/// Waits for the server's end of stream; a reset is an error.
async fn read_eof(c: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, c.read(&mut buf)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Ok(Err(e)) => Err(e),
        Err(_) => panic!("no close within {PATIENCE:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_pipelining_and_h2c_share_a_port() {
    let (listener, addr) = bind_loopback();
    let http = Http::new(Hello::new(Duration::ZERO));
    let server = Server::builder().serve([listener], http.clone()).unwrap();

    // HTTP/1.1: two pipelined requests, two answers, the connection stays.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    for _ in 0..2 {
        let a = read_answer(&mut c, &mut rest).await.unwrap();
        assert!(
            a.starts_with("HTTP/1.1 200 OK\r\n") && a.ends_with("hello"),
            "{a}"
        );
        assert!(!a.contains("connection: close"), "{a}");
    }

    // HTTP/2 with prior knowledge on the same port.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let res = send
            .send_request(
                Request::get("http://a/")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
    }
    let s = http.stats();
    assert_eq!((s.connections, s.requests), (2, 5), "{s:?}");
    drop(c);
    let report = server.handle().drain(drain_opts()).await;
    assert_eq!(report.forced, 0, "{report:?}");
}

/// Busy keep-alive clients: each gets its answers, the last one with `Connection: close`, then the
/// close; no error; the drain ends long before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_busy_http1_connections_after_an_answer() {
    const CLIENTS: usize = 20;
    let (listener, addr) = bind_loopback();
    let http = Http::new(Hello::new(Duration::from_millis(2)));
    let server = Server::builder().serve([listener], http.clone()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            let conn = tokio::spawn(conn);
            let mut answers = 0u32;
            loop {
                let req = Request::get("/")
                    .header("host", "a")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let res = send.send_request(req).await.expect("request failed");
                assert_eq!(res.status(), StatusCode::OK);
                let close = res
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v == "close");
                res.into_body().collect().await.expect("body failed");
                answers += 1;
                if close {
                    break;
                }
            }
            conn.await.unwrap().expect("connection ended with an error");
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let report = server.handle().drain(drain_opts()).await;
    assert_eq!(report.forced, 0, "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{report:?}");
    for c in clients {
        assert!(c.await.unwrap() > 0);
    }
    let s = http.stats();
    assert_eq!(s.drain_closed_after_answer, CLIENTS as u64, "{s:?}");
}

/// An idle keep-alive connection is closed by the drain with an end of stream (no reset), after the
/// quiet period; a request that arrives within the quiet period is answered first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_http1_connections_cleanly_and_answers_late_requests() {
    let (listener, addr) = bind_loopback();
    let opts = HttpOptions::default().drain_quiet(Duration::from_millis(500));
    let http = Http::with_options(Hello::new(Duration::ZERO), opts);
    let server = Server::builder().serve([listener], http.clone()).unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut late = TcpStream::connect(addr).await.unwrap();
    let (mut r1, mut r2) = (Vec::new(), Vec::new());
    for (c, r) in [(&mut idle, &mut r1), (&mut late, &mut r2)] {
        c.write_all(req).await.unwrap();
        read_answer(c, r).await.unwrap();
    }
    let handle = server.handle().clone();
    let drain = tokio::spawn(async move { handle.drain(drain_opts()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Within the quiet period: answered, with `Connection: close`, then closed.
    late.write_all(req).await.unwrap();
    let a = read_answer(&mut late, &mut r2).await.unwrap();
    assert!(
        a.starts_with("HTTP/1.1 200") && a.contains("connection: close"),
        "{a}"
    );
    read_eof(&mut late).await.unwrap();
    // The idle one: a clean end of stream, no reset.
    let started = Instant::now();
    read_eof(&mut idle).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let report = drain.await.unwrap();
    assert_eq!(report.forced, 0, "{report:?}");
    let s = http.stats();
    assert_eq!(
        (s.drain_closed_idle, s.drain_closed_after_answer),
        (1, 1),
        "{s:?}"
    );
}

/// A client that sends a byte of its head every 200 ms is closed at the header timeout and counted;
/// an idle connection is closed at the keep-alive timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_and_counted() {
    let (listener, addr) = bind_loopback();
    let opts = HttpOptions::default()
        .header_timeout(Some(Duration::from_secs(1)))
        .keep_alive_timeout(Some(Duration::from_millis(400)));
    let http = Http::with_options(Hello::new(Duration::ZERO), opts);
    let _server = Server::builder().serve([listener], http.clone()).unwrap();

    let slow = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ".iter().cycle() {
            if c.write_all(&[*b]).await.is_err() {
                break;
            }
            let mut one = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(200), c.read(&mut one)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {}
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the slow sender was never closed"
            );
        }
        started.elapsed()
    });
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut idle, &mut Vec::new()).await.unwrap();
    let started = Instant::now();
    read_eof(&mut idle).await.unwrap();
    let idle_for = started.elapsed();
    assert!(idle_for >= Duration::from_millis(350), "{idle_for:?}");

    let slow_for = slow.await.unwrap();
    assert!(
        slow_for >= Duration::from_millis(900) && slow_for < Duration::from_secs(4),
        "{slow_for:?}"
    );
    let s = http.stats();
    assert_eq!((s.header_timeouts, s.idle_closed), (1, 1), "{s:?}");
}

/// The service never reads a large upload: the answer still arrives whole and the connection ends with an
/// end of stream, not a reset; the server reads the rest only to discard it (hyper's buffer stays at
/// its bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_costs_no_buffer_and_no_reset() {
    const BODY: usize = 8 << 20;
    let (listener, addr) = bind_loopback();
    let http = Http::new(Hello::new(Duration::ZERO));
    let _server = Server::builder().serve([listener], http.clone()).unwrap();
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\n\r\n").as_bytes(),
        )
        .await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..BODY / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await
    });
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, rd.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("hello"),
        "{text}"
    );
    // The server read the rest of the upload only to discard it, so the uploader saw no reset (closing
    // with the upload unread would have failed its writes).
    writer.await.unwrap().expect("the upload was reset");
}

/// HTTP/2: 20 streams in flight when the drain begins all finish; the drain sends a GOAWAY; nothing
/// is forced; a request sent after the GOAWAY is refused without being processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_in_flight_finish_across_a_drain() {
    const STREAMS: usize = 20;
    let (listener, addr) = bind_loopback();
    let hello = Hello::new(Duration::from_millis(500));
    let began = hello.began.clone();
    let http = Http::new(hello);
    let server = Server::builder().serve([listener], http.clone()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut send = send.clone();
        streams.push(tokio::spawn(async move {
            let res = send
                .send_request(
                    Request::get("http://a/")
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await?;
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(body)
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(began.load(Relaxed), STREAMS as u64);
    let handle = server.handle().clone();
    let drain = tokio::spawn(async move { handle.drain(drain_opts()).await });
    for s in streams {
        assert_eq!(s.await.unwrap().expect("stream failed"), "hello");
    }
    let report = drain.await.unwrap();
    assert_eq!(report.forced, 0, "{report:?}");
    // The connection ended cleanly.
    conn.await.unwrap().expect("h2 connection error");
    let mut send = send;
    let late = send
        .send_request(
            Request::get("http://a/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
    assert!(late.is_err());
    assert_eq!(
        began.load(Relaxed),
        STREAMS as u64,
        "a request after the GOAWAY was processed"
    );
    assert_eq!(http.stats().goaway_sent, 1);
}

/// Under lariat's TLS, ALPN picks the protocol: `h2` gets HTTP/2, `http/1.1` gets HTTP/1.1; a drain
/// then closes the idle HTTP/1.1 connection with TLS `close_notify` and an end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_http2_or_http1_under_tls() {
    use common::tls::{connect, temp_dir, TestCert};
    let cert = TestCert::write(&temp_dir("http-alpn"));
    let tls = lariat::tls::TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path)
        .unwrap()
        .with_alpn(["h2", "http/1.1"]);
    let (listener, addr) = bind_loopback();
    let http = Http::new(Hello::new(Duration::ZERO));
    let server = Server::builder()
        .tls(Some(tls))
        .serve([listener], http.clone())
        .unwrap();

    let h2 = connect(&cert.client(&[b"h2"]), addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
            .await
            .unwrap();
    let h2_conn = tokio::spawn(conn);
    let res = send
        .send_request(
            Request::get("https://localhost/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (res.version(), res.status()),
        (Version::HTTP_2, StatusCode::OK)
    );
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");

    let h1 = connect(&cert.client(&[b"http/1.1"]), addr).await.unwrap();
    let (mut send1, conn1) = hyper::client::conn::http1::handshake(TokioIo::new(h1))
        .await
        .unwrap();
    let h1_conn = tokio::spawn(conn1);
    let res = send1
        .send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (res.version(), res.status()),
        (Version::HTTP_11, StatusCode::OK)
    );
    res.into_body().collect().await.unwrap();

    let report = server.handle().drain(drain_opts()).await;
    assert_eq!(report.forced, 0, "{report:?}");
    // Both connections ended without an error on the client's side.
    h1_conn
        .await
        .unwrap()
        .expect("HTTP/1.1 over TLS ended with an error");
    h2_conn
        .await
        .unwrap()
        .expect("HTTP/2 over TLS ended with an error");
    let s = http.stats();
    assert_eq!((s.drain_closed_idle, s.goaway_sent), (1, 1), "{s:?}");
}

/// One client's tally.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// HTTP/1.1 over TLS: requests on one connection until it closes (after an answer with
/// `Connection: close`), then a new connection; until `stop`.
async fn h1_tls_client(
    connector: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Relaxed) {
        let Ok(tls) = common::tls::connect(&connector, addr).await else {
            tally.fail("connect".into());
            return;
        };
        let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
        {
            Ok(x) => x,
            Err(e) => return tally.fail(format!("h1 handshake: {e}")),
        };
        let conn = tokio::spawn(conn);
        for path in ["/", "/slow"].iter().cycle() {
            if stop.load(Relaxed) || send.ready().await.is_err() {
                break;
            }
            let req = Request::get(*path)
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            match send.send_request(req).await {
                Ok(res) => {
                    let close = res
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v == "close");
                    match res.into_body().collect().await {
                        Ok(_) => tally.ok.fetch_add(1, Relaxed),
                        Err(e) => return tally.fail(format!("h1 body: {e}")),
                    };
                    if close {
                        break;
                    }
                }
                // Never sent: the connection was already closing.
                Err(e) if e.is_canceled() => {
                    tally.refused.fetch_add(1, Relaxed);
                    break;
                }
                Err(e) => return tally.fail(format!("h1 request: {e:?}")),
            }
        }
        drop(send);
        match conn.await.unwrap() {
            Ok(()) => {}
            Err(e) => return tally.fail(format!("h1 connection: {e:?}")),
        }
    }
}

/// HTTP/2 over TLS: 4 streams at a time on one connection until a GOAWAY, then a new connection.
async fn h2_tls_client(
    connector: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Relaxed) {
        let Ok(tls) = common::tls::connect(&connector, addr).await else {
            return tally.fail("connect".into());
        };
        let (send, conn) =
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
            {
                Ok(x) => x,
                Err(e) => return tally.fail(format!("h2 handshake: {e}")),
            };
        tokio::spawn(conn);
        let streams: Vec<_> = (0..4)
            .map(|i| {
                let (mut send, stop, tally) = (send.clone(), stop.clone(), tally.clone());
                tokio::spawn(async move {
                    let path = if i % 2 == 0 { "/" } else { "/slow" };
                    while !stop.load(Relaxed) && send.ready().await.is_ok() {
                        let req = Request::get(format!("https://localhost{path}"))
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        match send.send_request(req).await {
                            Ok(res) => match res.into_body().collect().await {
                                Ok(_) => tally.ok.fetch_add(1, Relaxed),
                                Err(e) => return tally.fail(format!("h2 body: {e}")),
                            },
                            Err(e) if refused_unprocessed(&e) => {
                                tally.refused.fetch_add(1, Relaxed);
                                return;
                            }
                            Err(e) => return tally.fail(format!("h2 request: {e:?}")),
                        };
                    }
                })
            })
            .collect();
        for s in streams {
            s.await.unwrap();
        }
    }
}

/// An axum app over TLS (ALPN `h2` and `http/1.1`) handed from one server to the next 5 times under
/// load, the way a restart does (the successor serves the same socket, the old one releases it and
/// drains): no request fails, no drain is forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_over_tls_through_five_hand_overs_under_load() {
    use axum::routing::get;
    use common::tls::{temp_dir, TestCert};
    let cert = TestCert::write(&temp_dir("http-axum"));
    let tls = lariat::tls::TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path)
        .unwrap()
        .with_alpn(["h2", "http/1.1"]);
    // Requests the app began: each must have been answered (none processed and then lost).
    static BEGAN: AtomicU64 = AtomicU64::new(0);
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async {
                BEGAN.fetch_add(1, Relaxed);
                "hello"
            }),
        )
        .route(
            "/slow",
            get(|| async {
                BEGAN.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                "slow"
            }),
        );
    let http = Http::tower(app);
    // The socket itself stays here; each generation serves a descriptor of its own.
    let (socket, addr) = bind_loopback();
    let generation = || {
        Server::builder()
            .tls(Some(tls.clone()))
            .serve([socket.try_clone().unwrap()], http.clone())
            .unwrap()
    };
    let mut serving = generation();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(tokio::spawn(h1_tls_client(
            cert.client(&[b"http/1.1"]),
            addr,
            stop.clone(),
            tally.clone(),
        )));
        clients.push(tokio::spawn(h2_tls_client(
            cert.client(&[b"h2"]),
            addr,
            stop.clone(),
            tally.clone(),
        )));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let next = generation();
        serving.handle().release_listeners();
        let report = serving.handle().drain(drain_opts()).await;
        assert_eq!(report.forced, 0, "{report:?}");
        serving = next;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Relaxed);
    for c in clients {
        tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap();
    }
    let failures = tally.failures.lock().unwrap().clone();
    let (ok, refused) = (tally.ok.load(Relaxed), tally.refused.load(Relaxed));
    eprintln!("axum over TLS, 5 hand-overs: {ok} ok, {refused} refused unprocessed and retried, {} failed", failures.len());
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 100, "{ok}");
    assert_eq!(
        BEGAN.load(Relaxed),
        ok,
        "a request was processed but its answer lost"
    );
    let report = serving.handle().drain(drain_opts()).await;
    assert_eq!(report.forced, 0, "{report:?}");
}

/// A head over the limit, or too many header fields, gets `431` and a close, counted as a protocol
/// error; the limit is the option's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_are_counted() {
    let (listener, addr) = bind_loopback();
    let opts = HttpOptions::default()
        .max_head_bytes(16 * 1024)
        .max_headers(20);
    let http = Http::with_options(Hello::new(Duration::ZERO), opts);
    let _server = Server::builder().serve([listener], http.clone()).unwrap();
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20 * 1024)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..30).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    for req in [long, many] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(req.as_bytes()).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, c.read_to_end(&mut got))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    }
    // Within the limits: served.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-1: v\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut c, &mut Vec::new()).await.unwrap();
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    // Counted as each connection ends, which may come just after the client saw the close.
    let counted = common::eventually(PATIENCE, || http.stats().protocol_errors == 2).await;
    assert!(counted, "{:?}", http.stats());
}
