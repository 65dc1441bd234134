//! `http-hello` against clients that try to make it hold memory or a slot: request bodies are dropped as
//! they stream (the server's resident memory stays flat however many large bodies are in flight), and
//! a request that trickles in is answered 408 and closed at the request timeout.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Lariat;

/// The resident set of `pid`, in bytes (VmRSS of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn bodies_in_flight_cost_no_memory() {
    const CLIENTS: usize = 200;
    const BODY: usize = 1_000_000;
    const SENT: usize = 900_000;
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--handler", "http-hello"]);
    let addr = server.tcp_addr();
    let before = rss(server.pid());
    let chunk = vec![b'x'; SENT];
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&chunk).unwrap();
        clients.push(c);
    }
    // Let the server read what was sent.
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss(server.pid()).saturating_sub(before);
    eprintln!(
        "{CLIENTS} bodies of {SENT} bytes in flight: RSS grew {} KiB",
        grown / 1024
    );
    assert!(
        grown < 40 << 20,
        "{CLIENTS} unfinished bodies of {SENT} bytes grew the server by {} MiB",
        grown >> 20
    );
    // Each body, once finished, is answered on its connection, which stays usable.
    for c in clients.iter_mut().take(3) {
        c.write_all(&chunk[..BODY - SENT]).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    }
}

/// Sends `start`, then `byte` every 200 ms; how long until the server closed, and what it answered.
fn trickle(addr: std::net::SocketAddr, start: &[u8], byte: u8) -> (Duration, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let began = Instant::now();
    c.write_all(start).unwrap();
    let mut answer = Vec::new();
    while began.elapsed() < Duration::from_secs(20) {
        if c.write_all(&[byte]).is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    (
        began.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[test]
fn a_trickling_request_is_closed_at_the_request_timeout() {
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "http-hello",
        "--request-timeout",
        "1s",
    ]);
    let addr = server.tcp_addr();
    // A head that never ends: a header line grows by a byte every 200 ms.
    // A head still coming at the timeout: the connection is closed (the HTTP layer writes nothing).
    let (took, answer) = trickle(addr, b"GET / HTTP/1.1\r\nX-Slow: ", b'a');
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    // A body that trickles well below the minimum rate.
    let (took, answer) = trickle(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        b'b',
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    // A client that is quiet for less than the timeout before its request is not hurried.
    let mut quiet = TcpStream::connect(addr).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    quiet
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    quiet.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
