//! The axum example (`examples/axum_http.rs`) as a process sees it: an axum app over TLS, on
//! `lariat::lifecycle`, restarted with SIGHUP five times while HTTP/1.1 and HTTP/2 clients (ALPN) keep
//! sending requests. The example runs in a process of its own (this test binary, started again with
//! `AXUM_CHILD` set); each restart starts the same program again with the listening socket.
#![cfg(all(feature = "http", feature = "axum"))]

use crate::common;

use common::http::refused_unprocessed;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use common::process::Spawned;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[allow(dead_code)] // its `main` is the example's; the child runs `serve`
#[path = "../../examples/axum_http.rs"]
mod example;

/// Generous bounds: the machine may be loaded; no test asserts a speed.
const PATIENCE: Duration = Duration::from_secs(30);

const CHILD_ENV: &str = "AXUM_CHILD";
const CHILD_TEST: &str = "axum_lifecycle::axum_child_process";

/// The child: the example, serving HTTPS with the certificate and key named in `AXUM_CHILD`
/// (`CERT KEY`). Started by the test below (and again by each restart), never on its own.
#[test]
#[ignore = "run by the other tests in a process of its own"]
fn axum_child_process() {
    let Ok(words) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut words = words.split_whitespace();
    let (cert, key) = (words.next().unwrap(), words.next().unwrap());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let config = example::Config {
        addr: "127.0.0.1:0".into(),
        tls: Some((cert.into(), key.into())),
        lame_duck: Duration::ZERO,
        drain_timeout: Duration::from_secs(20),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let code = match runtime.block_on(example::serve(config)) {
        Ok(exit) => i32::from(exit.code()),
        Err(e) => {
            eprintln!("child: {e}");
            1
        }
    };
    eprintln!("axum child exits with code {code}");
    std::process::exit(code);
}

/// The serving processes: the first one, in a process group of its own that is killed on drop (with
/// every successor, which stays in the group), so no test leaves a process behind.
struct Group {
    proc: Spawned,
}

impl Group {
    fn start(config: &str) -> Group {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([CHILD_TEST, "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, config);
        Group {
            proc: Spawned::start(command),
        }
    }

    /// The address and pid the next process to serve announces (`listening on …`, `serving as pid …`).
    fn next_serving(&mut self) -> (SocketAddr, i32) {
        let mut addr = None;
        loop {
            let mut line = String::new();
            let read = self.proc.stdout.read_line(&mut line).unwrap_or(0);
            assert!(read > 0, "no process serves: {}", self.stderr());
            let line = line.trim_end();
            if let Some(a) = line.strip_prefix("listening on tcp://") {
                addr = Some(a.parse().unwrap());
            } else if let Some(pid) = line.strip_prefix("serving as pid ") {
                return (addr.expect("no address"), pid.parse().unwrap());
            }
        }
    }

    fn stderr(&self) -> String {
        self.proc.stderr()
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests never sent, or refused by a GOAWAY before being processed: clients retry them.
    refused: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// HTTP/1.1 over TLS (ALPN `http/1.1`): keep-alive requests on one connection until an answer says
/// `Connection: close`, then a new connection; until `stop`.
async fn h1_client(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Relaxed) {
        let tls = match common::tls::connect(&connector, addr).await {
            Ok(tls) => tls,
            Err(e) => return tally.fail(format!("h1 connect: {e}")),
        };
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
        {
            Ok(x) => x,
            Err(e) => return tally.fail(format!("h1 handshake: {e}")),
        };
        let conn = tokio::spawn(conn);
        for path in ["/", "/slow", "/readyz"].iter().cycle() {
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
                    if res.version() != Version::HTTP_11 || !answered(path, res.status()) {
                        return tally.fail(format!(
                            "h1 {path}: {:?} {}",
                            res.version(),
                            res.status()
                        ));
                    }
                    match res.into_body().collect().await {
                        Ok(_) => tally.ok.fetch_add(1, Relaxed),
                        Err(e) => return tally.fail(format!("h1 body: {e}")),
                    };
                    if close {
                        break;
                    }
                }
                Err(e) if e.is_canceled() => {
                    tally.refused.fetch_add(1, Relaxed);
                    break;
                }
                Err(e) => return tally.fail(format!("h1 request: {e:?}")),
            }
        }
        drop(send);
        if let Err(e) = conn.await.unwrap() {
            return tally.fail(format!("h1 connection: {e:?}"));
        }
    }
}

/// HTTP/2 over TLS (ALPN `h2`): 4 streams at a time on one connection until a GOAWAY, then a new
/// connection; until `stop`.
async fn h2_client(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Relaxed) {
        let tls = match common::tls::connect(&connector, addr).await {
            Ok(tls) => tls,
            Err(e) => return tally.fail(format!("h2 connect: {e}")),
        };
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) =
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
            {
                Ok(x) => x,
                Err(e) => return tally.fail(format!("h2 handshake: {e}")),
            };
        tokio::spawn(conn);
        let streams: Vec<_> = ["/", "/slow", "/", "/readyz"]
            .into_iter()
            .map(|path| {
                let (mut send, stop, tally) = (send.clone(), stop.clone(), tally.clone());
                tokio::spawn(async move {
                    while !stop.load(Relaxed) && send.ready().await.is_ok() {
                        let req = Request::get(format!("https://localhost{path}"))
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        match send.send_request(req).await {
                            Ok(res) => {
                                if res.version() != Version::HTTP_2 || !answered(path, res.status())
                                {
                                    let what = format!("{:?} {}", res.version(), res.status());
                                    return tally.fail(format!("h2 {path}: {what}"));
                                }
                                match res.into_body().collect().await {
                                    Ok(_) => tally.ok.fetch_add(1, Relaxed),
                                    Err(e) => return tally.fail(format!("h2 body: {e}")),
                                }
                            }
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

/// Whether `status` is a right answer to `path`: 200, or for `/readyz` 503 too (a process that handed
/// over and drains says it takes no new traffic, while it still answers what it has).
fn answered(path: &str, status: StatusCode) -> bool {
    status == StatusCode::OK || (path == "/readyz" && status == StatusCode::SERVICE_UNAVAILABLE)
}

/// The acceptance test for axum: an axum app over TLS (ALPN `h2` and `http/1.1`) on the
/// lifecycle, restarted with SIGHUP 5 times (1.5 s apart) under load from 3 HTTP/1.1 and 3 HTTP/2
/// clients: no request fails, every restart hands over, no drain closes a connection by force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn axum_over_tls_restarted_five_times_under_load_fails_no_request() {
    use common::tls::{temp_dir, TestCert};
    const RESTARTS: usize = 5;
    let cert = TestCert::write(&temp_dir("axum-lifecycle"));
    let config = format!("{} {}", cert.cert_path.display(), cert.key_path.display());
    let group = Arc::new(Mutex::new(Group::start(&config)));
    let next_serving = |group: Arc<Mutex<Group>>| async move {
        tokio::task::spawn_blocking(move || group.lock().unwrap().next_serving())
            .await
            .unwrap()
    };
    let (addr, mut pid) = next_serving(group.clone()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::spawn(h1_client(
            cert.client(&[b"http/1.1"]),
            addr,
            stop.clone(),
            tally.clone(),
        )));
        clients.push(tokio::spawn(h2_client(
            cert.client(&[b"h2"]),
            addr,
            stop.clone(),
            tally.clone(),
        )));
    }

    for _ in 0..RESTARTS {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // SAFETY: kill(2) on a process of the group this test created.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        let (successor_addr, successor) =
            tokio::time::timeout(PATIENCE, next_serving(group.clone()))
                .await
                .expect("no successor served");
        assert_eq!(successor_addr, addr, "the successor bound a new socket");
        assert_ne!(successor, pid);
        pid = successor;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Relaxed);
    for c in clients {
        tokio::time::timeout(PATIENCE, c)
            .await
            .expect("a client hung")
            .unwrap();
    }

    // Every old process has drained and exited; each drain ended without closing a connection by force.
    let deadline = Instant::now() + PATIENCE;
    let stderr = loop {
        let stderr = group.lock().unwrap().stderr();
        if stderr.matches("axum child exits with code").count() >= RESTARTS {
            break stderr;
        }
        assert!(
            Instant::now() < deadline,
            "the drains did not end: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failures = tally.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let ok = tally.ok.load(Relaxed);
    assert!(ok > 100, "only {ok} requests answered");
    assert_eq!(
        stderr
            .matches("restart: successor ready; handing over")
            .count(),
        RESTARTS,
        "{stderr}"
    );
    assert!(!stderr.contains("restart failed"), "{stderr}");
    assert_eq!(
        stderr.matches("axum child exits with code 0").count(),
        RESTARTS,
        "{stderr}"
    );
    eprintln!(
        "{ok} requests answered, {} refused unprocessed and retried, through {RESTARTS} restarts",
        tally.refused.load(Relaxed)
    );
}
