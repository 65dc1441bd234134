//! `lariat serve --handler http-hello` on `lariat::http`, driven by real clients: wrk (HTTP/1.1
//! keep-alive) through restarts, curl and h2load (HTTP/2 with prior knowledge), a keep-alive client
//! through SIGTERM, a hyper HTTP/2 client through SIGHUP and SIGTERM, slow header senders.
//!
//! The tests that need wrk, curl or h2load skip with a note when the tool is missing (.ci/run installs
//! them).

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, successor_pids, Lariat};

/// The longest any one client step may take before the test calls it a failure.
const PATIENCE: Duration = Duration::from_secs(10);

/// Whether `tool` is on PATH; prints a note when it is not.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!(
            "note: {tool} is not installed; skipping (apt-get install wrk nghttp2-client curl)"
        );
    }
    found
}

/// Processes this test started indirectly (restart successors), killed on drop.
#[derive(Default)]
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) on a process this test started (through a restart).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// A client process, killed on drop; its output gathered.
struct Tool {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Tool {
    fn start(cmd: &mut Command) -> Tool {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the client");
        let out = common::collect(child.stdout.take().unwrap());
        // Read too, so a chatty client never blocks on a full pipe.
        let _stderr = common::collect(child.stderr.take().unwrap());
        Tool { child, out }
    }

    /// Waits for it to end (at most `limit`); its stdout.
    fn finish(mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the client did not end in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The reader thread may still be copying the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.lock().unwrap().clone();
        out
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hup(pid: u32) {
    // SAFETY: kill(2) on a lariat this test started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
}

/// Restarts the serving process `count` times, `every` apart; returns the pid serving at the end.
fn restart(server: &Lariat, successors: &mut KillOnDrop, count: usize, every: Duration) -> u32 {
    let mut serving = server.pid();
    for n in 1..=count {
        std::thread::sleep(every);
        hup(serving);
        assert!(
            eventually(Duration::from_secs(10), || successor_pids(&server.stderr())
                .len()
                == n),
            "restart {n} did not complete: {}",
            server.stderr()
        );
        serving = *successor_pids(&server.stderr()).last().unwrap();
        successors.0.push(serving);
    }
    serving
}

fn start_hello(extra: &[&str]) -> Lariat {
    let mut args = vec!["--listen", "127.0.0.1:0", "--handler", "http-hello"];
    args.extend_from_slice(extra);
    Lariat::start(&args)
}

/// wrk's summary line for `what` (e.g. "Socket errors"), if it printed one.
fn wrk_line<'a>(out: &'a str, what: &str) -> Option<&'a str> {
    out.lines().find(|l| l.trim_start().starts_with(what))
}

fn wrk_requests(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            l.split(" requests in ")
                .next()
                .filter(|_| l.contains(" requests in "))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{out}"))
}

/// 50 keep-alive HTTP/1.1 clients (wrk) through 5 restarts 1.5 s apart: no socket error, no non-2xx
/// answer, no old process ends its drain by force.
#[test]
fn wrk_keep_alive_through_five_restarts_sees_no_error() {
    if !have("wrk") {
        return;
    }
    let server = start_hello(&["--drain-timeout", "5s"]);
    let mut successors = KillOnDrop::default();
    let url = format!("http://{}/", server.tcp_addr());
    let wrk = Tool::start(Command::new("wrk").args(["-t2", "-c50", "-d10s", &url]));
    let last = restart(&server, &mut successors, 5, Duration::from_millis(1500));
    let out = wrk.finish(Duration::from_secs(30));
    eprintln!("{out}");
    assert!(wrk_line(&out, "Socket errors").is_none(), "{out}");
    assert!(wrk_line(&out, "Non-2xx").is_none(), "{out}");
    assert!(wrk_requests(&out) > 0);
    // Every old process drained on its own, well within its 5 s.
    let all_exited = eventually(Duration::from_secs(10), || {
        successor_pids(&server.stderr())
            .iter()
            .filter(|&&p| p != last)
            .all(|&p| !std::path::Path::new(&format!("/proc/{p}/status")).exists() || is_zombie(p))
    });
    let log = server.stderr();
    assert!(!log.contains("by force"), "{log}");
    assert!(all_exited, "an old process is still draining: {log}");
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(true)
}

/// One keep-alive client: requests on one connection until an answer says `Connection: close`, then
/// expects the end of stream. Counts answers; any other end is an error.
fn keep_alive_client(addr: SocketAddr, stop: &AtomicBool) -> Result<u64, String> {
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answers = 0;
    let mut buf = Vec::new();
    loop {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .map_err(|e| format!("write after {answers} answers: {e}"))?;
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match c.read(&mut chunk) {
                Ok(0) => return Err(format!("closed before an answer, after {answers}")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read after {answers} answers: {e}")),
            }
        };
        while buf.len() < head_end + 13 {
            let mut chunk = [0u8; 4096];
            match c.read(&mut chunk) {
                Ok(0) => return Err("closed mid-answer".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read mid-answer: {e}")),
            }
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 200 OK") || &buf[head_end..head_end + 13] != b"Hello, world!"
        {
            return Err(format!("bad answer: {head}"));
        }
        buf.drain(..head_end + 13);
        answers += 1;
        if head.contains("connection: close") {
            let mut rest = Vec::new();
            return match c.read_to_end(&mut rest) {
                Ok(_) if rest.is_empty() => Ok(answers),
                Ok(_) => Err(format!("bytes after the last answer: {rest:?}")),
                Err(e) => Err(format!("no clean close after the last answer: {e}")),
            };
        }
        if stop.load(Relaxed) {
            return Ok(answers);
        }
    }
}

/// SIGTERM with 50 busy keep-alive clients: each connection ends right after an answer (with
/// `Connection: close`), with no read error or timeout; the server exits 0 within 3 s.
#[test]
fn sigterm_ends_50_busy_keep_alive_connections_after_an_answer() {
    let mut server = start_hello(&["--drain-timeout", "10s"]);
    let addr = server.tcp_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || keep_alive_client(addr, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    stop.store(true, Relaxed);
    let mut answers = 0;
    for c in clients {
        answers += c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("client: {e}\n{}", server.stderr()));
    }
    eprintln!("SIGTERM: exit {status} after {took:?}; {answers} answers on 50 connections");
    assert!(answers > 50);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
}

/// curl with HTTP/2 prior knowledge gets `200 Hello, world!` over HTTP/2 (and over HTTP/1.1 on the same
/// port); h2load's streams all succeed.
#[test]
fn curl_and_h2load_speak_http2_with_prior_knowledge() {
    if !have("curl") || !have("h2load") {
        return;
    }
    let server = start_hello(&[]);
    let url = format!("http://{}/", server.tcp_addr());
    for (flag, version) in [("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args(["-sS", flag, "-w", " %{http_code} %{http_version}", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text, format!("Hello, world! 200 {version}"), "{out:?}");
    }
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "10", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
}

/// A client that sends one header byte every 300 ms is closed at the header timeout (1 s here), and
/// the close is logged; a well-behaved client on the same server is unaffected.
#[test]
fn slow_header_senders_are_closed_at_the_header_timeout() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lariat"));
    cmd.env("RUST_LOG", "info,lariat::http=debug").args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "http-hello",
        "--request-timeout",
        "1s",
    ]);
    let server = Lariat::from_command(cmd, 1);
    let addr = server.tcp_addr();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let started = Instant::now();
                for b in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ".iter().cycle() {
                    if c.write_all(&[*b]).is_err() {
                        break;
                    }
                    let mut one = [0u8; 64];
                    match c.read(&mut one) {
                        Ok(0) => break,
                        Ok(_) => panic!("answered a partial head"),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                    assert!(started.elapsed() < Duration::from_secs(10), "never closed");
                }
                started.elapsed()
            })
        })
        .collect();
    let (status, _) = common::http(addr, "GET", "/");
    assert_eq!(status, 200);
    for s in slow {
        let took = s.join().unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(2), || server
            .stderr()
            .matches("header timeout")
            .count()
            == 3),
        "{}",
        server.stderr()
    );
}

/// Request bodies are read and dropped as they stream: a 512 KiB upload is answered and the connection
/// stays usable; a 4 MiB one gets 413 without a reset of the uploader.
#[test]
fn request_bodies_are_discarded_as_they_stream() {
    let server = start_hello(&[]);
    let mut c = TcpStream::connect(server.tcp_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![b'b'; 512 * 1024];
    c.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&body).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");

    let mut big = TcpStream::connect(server.tcp_addr()).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = big.try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        big.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4194304\r\n\r\n")?;
        let chunk = vec![b'b'; 64 * 1024];
        for _ in 0..64 {
            big.write_all(&chunk)?;
        }
        big.shutdown(std::net::Shutdown::Write)
    });
    let mut answer = String::new();
    reader.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    uploader.join().unwrap().expect("the uploader was reset");
}

/// A hyper HTTP/2 client keeps 8 connections with 4 streams each busy through two restarts and then a
/// SIGTERM: every request either completes or is refused by a GOAWAY before it was processed (then
/// retried on a new connection); none fails otherwise.
#[test]
fn h2_streams_survive_restarts_and_sigterm() {
    let mut server = start_hello(&["--drain-timeout", "5s"]);
    let mut successors = KillOnDrop::default();
    let addr = server.tcp_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = {
        let (stop, ok, refused, failures) =
            (stop.clone(), ok.clone(), refused.clone(), failures.clone());
        rt.spawn(async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (stop, ok, refused, failures) =
                        (stop.clone(), ok.clone(), refused.clone(), failures.clone());
                    tokio::spawn(h2_client(addr, stop, ok, refused, failures))
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    restart(&server, &mut successors, 2, Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(1000));
    let last = *successors.0.last().unwrap();
    let before_term = ok.load(Relaxed);
    // SAFETY: kill(2) on the serving lariat, started by this test through restarts.
    unsafe {
        libc::kill(last as libc::pid_t, libc::SIGTERM);
    }
    let exited = eventually(Duration::from_secs(5), || is_zombie(last));
    stop.store(true, Relaxed);
    rt.block_on(async { tokio::time::timeout(PATIENCE * 2, load).await })
        .expect("the HTTP/2 clients did not stop")
        .unwrap();
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "h2: {} ok, {} refused by GOAWAY and retried, {} failed",
        ok.load(Relaxed),
        refused.load(Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", server.stderr());
    assert!(before_term > 0);
    assert!(exited, "the last process did not exit after SIGTERM");
    assert!(!server.stderr().contains("by force"), "{}", server.stderr());
    let _ = server.wait_exit(Duration::from_secs(5));
}

/// Whether a failed HTTP/2 request was refused before the server processed it: a GOAWAY that excludes
/// its stream, `REFUSED_STREAM`, or a request the client never sent because the connection was closing.
fn refused_unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

async fn h2_client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    while !stop.load(Relaxed) {
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            // After the final SIGTERM nothing listens any more.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let handshake = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        );
        let Ok((send, conn)) = (match tokio::time::timeout(PATIENCE, handshake).await {
            Ok(r) => r,
            Err(_) => {
                failures.lock().unwrap().push("no HTTP/2 handshake".into());
                return;
            }
        }) else {
            continue;
        };
        tokio::spawn(conn);
        let streams: Vec<_> = (0..4)
            .map(|_| {
                let mut send = send.clone();
                let (stop, ok, refused, failures) =
                    (stop.clone(), ok.clone(), refused.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        if send.ready().await.is_err() {
                            return; // the connection is closing: open a new one
                        }
                        let req = hyper::Request::get(format!("http://{addr}/"))
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        let Ok(res) = tokio::time::timeout(PATIENCE, send.send_request(req)).await
                        else {
                            failures.lock().unwrap().push("no answer in time".into());
                            return;
                        };
                        let res = match res {
                            Ok(res) => res,
                            Err(e) if refused_unprocessed(&e) => {
                                refused.fetch_add(1, Relaxed);
                                return;
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!("request: {e:?}"));
                                return;
                            }
                        };
                        match res.into_body().collect().await.map(|b| b.to_bytes()) {
                            Ok(b) if b == "Hello, world!" => {
                                ok.fetch_add(1, Relaxed);
                            }
                            Ok(_) => failures.lock().unwrap().push("wrong body".into()),
                            Err(e) => failures.lock().unwrap().push(format!("body: {e:?}")),
                        }
                    }
                })
            })
            .collect();
        for s in streams {
            let _ = s.await;
        }
    }
}

/// curl sends a request every 200 ms on one keep-alive connection (about the drain's quiet period, so
/// its connection is often idle when a restart begins) through two restarts: every request gets its
/// 200, and the connection moves to each successor between requests instead of closing.
#[test]
fn curl_paced_keep_alive_requests_through_restarts_all_succeed() {
    if !have("curl") {
        return;
    }
    let server = start_hello(&["--drain-timeout", "5s"]);
    let mut successors = KillOnDrop::default();
    let url = format!("http://{}/", server.tcp_addr());
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--rate",
        "5/s",
        "-w",
        "%{http_code} %{num_connects}\\n",
    ]);
    for _ in 0..25 {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let curl = Tool::start(&mut cmd);
    restart(&server, &mut successors, 2, Duration::from_millis(1500));
    let out = curl.finish(Duration::from_secs(30));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 25, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{out}");
    // The restarts moved the connection it kept: it never connected again.
    let connects: u32 = lines
        .iter()
        .filter_map(|l| l.split(' ').nth(1)?.parse::<u32>().ok())
        .sum();
    assert_eq!(connects, 1, "{out}");
}
