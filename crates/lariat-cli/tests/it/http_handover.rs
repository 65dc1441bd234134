//! `lariat serve --handler http-hello` on SIGHUP moves its idle HTTP/1.1 keep-alive connections to the
//! successor between requests: a keep-alive client never sees a close, so it never reconnects.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, is_alive, signal, successor_pids, Lariat};

/// One keep-alive client: its connection, and how many it had to open.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    opened: u64,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            conn: None,
            opened: 0,
        }
    }

    /// One `GET` and its whole answer on the client's connection (a new one if it has none); the
    /// connection is dropped on any error, and on an answer that says it will close.
    fn get(&mut self) -> Result<(), String> {
        let result = self.try_get();
        if !matches!(result, Ok(true)) {
            self.conn = None;
        }
        result.map(|_| ())
    }

    /// True if the connection stays open after the answer.
    fn try_get(&mut self) -> Result<bool, String> {
        if self.conn.is_none() {
            let c = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            self.opened += 1;
            self.conn = Some(BufReader::new(c));
        }
        let conn = self.conn.as_mut().unwrap();
        conn.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: lariat\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut status = String::new();
        conn.read_line(&mut status)
            .map_err(|e| format!("read: {e}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("status line {status:?}"));
        }
        let (mut length, mut keeps) = (None, true);
        loop {
            let mut line = String::new();
            conn.read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            if line == "connection: close" {
                keeps = false;
            }
        }
        let mut body = vec![0u8; length.ok_or("no content-length")?];
        conn.read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        if body != b"Hello, world!" {
            return Err(format!("body {:?}", String::from_utf8_lossy(&body)));
        }
        if !keeps {
            return Err("answer with connection: close".into());
        }
        Ok(true)
    }
}

const CLIENTS: usize = 50;
const RESTARTS: usize = 5;

#[test]
fn fifty_keep_alive_clients_ride_through_five_restarts_on_one_connection_each() {
    // A drain would close every keep-alive connection (the clients would reconnect); a hand-over
    // closes none.
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "http-hello",
        "--drain-timeout",
        "3s",
    ]);
    let addr = server.tcp_addr();
    let first = server.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, answers, failures) = (stop.clone(), answers.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(addr);
                let mut seq = 0u64;
                while !stop.load(Relaxed) {
                    match client.get() {
                        Ok(()) => {
                            answers.fetch_add(1, Relaxed);
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("client {i} request {seq}: {e}")),
                    }
                    seq += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                client.opened
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    let mut serving = first;
    let mut old = Vec::new();
    for n in 1..=RESTARTS {
        let started = Instant::now();
        signal(serving, libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(20), || successor_pids(&server.stderr())
                .len()
                == n),
            "restart {n} did not complete: {}",
            server.stderr()
        );
        old.push(serving);
        serving = *successor_pids(&server.stderr()).last().unwrap();
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    }
    // Every old process is gone, before its 3 s drain deadline: its connections moved.
    let gone = eventually(Duration::from_secs(10), || {
        old.iter().all(|&p| p == first || !is_alive(p))
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    let opened: Vec<u64> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let log = server.stderr();
    let failures = failures.lock().unwrap().clone();
    let reconnects: u64 = opened.iter().map(|o| o - 1).sum();
    // How many connections each old process passed on (its channel's last line).
    let moved: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hand-over channel closed"))
        .filter_map(|l| l.split("resumed=").nth(1)?.split_whitespace().next())
        .collect();
    eprintln!(
        "{} answers, {} errors, {reconnects} reconnects, moved per restart {moved:?}, pids {first} -> {:?}",
        answers.load(Relaxed),
        failures.len(),
        successor_pids(&log)
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}\n{log}");
    assert!(
        opened.iter().all(|&o| o == 1),
        "connections opened per client: {opened:?}"
    );
    assert!(gone, "an old process is still running: {old:?}\n{log}");
    // Each restart moved all 50 connections.
    let fifty = CLIENTS.to_string();
    assert_eq!(moved, vec![fifty.as_str(); RESTARTS], "{log}");
    assert!(is_alive(serving));
    signal(serving, libc::SIGKILL);
}

#[test]
fn half_a_request_read_before_the_restart_is_answered_once_by_the_successor() {
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "http-hello",
        "--drain-timeout",
        "5s",
    ]);
    let first = server.pid();
    let mut client = Client::new(server.tcp_addr());
    client.get().unwrap();
    // The first half of a request head: the old process reads it into hyper's buffer.
    let half = b"GET / HTTP/1.1\r\nHo";
    let conn = client.conn.as_mut().unwrap().get_mut();
    conn.write_all(half).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(first, libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || successor_pids(&server.stderr())
            .len()
            == 1),
        "the restart did not complete: {}",
        server.stderr()
    );
    let successor = successor_pids(&server.stderr())[0];
    // The connection moved with the half it carried: the old process is gone well before its 5 s
    // drain deadline, which a connection left with it would have held it to.
    assert!(
        eventually(Duration::from_secs(3), || !is_alive(first)),
        "the old process still runs:\n{}",
        server.stderr()
    );
    // The second half: the successor answers the whole request, once, and keeps the connection.
    let conn = client.conn.as_mut().unwrap().get_mut();
    conn.write_all(b"st: lariat\r\n\r\n").unwrap();
    let mut answer = [0u8; 512];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.ends_with(b"Hello, world!") && Instant::now() < deadline {
        let n = conn.read(&mut answer).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&answer[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    assert_eq!(text.matches("http/1.1").count(), 1, "{text}");
    // And the next request on the same connection too.
    client.get().unwrap();
    assert_eq!(client.opened, 1);
    signal(successor, libc::SIGKILL);
}
