//! `lariat serve` end to end: the listening line, handlers, signals, errors, the cap.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{eventually, Lariat};

fn echo_once(stream: &mut TcpStream, msg: &[u8]) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn prints_the_real_port_echoes_and_exits_zero_on_sigterm() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0"]);
    let addr = server.tcp_addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(server.listening[0], format!("tcp://{addr}"));
    let mut c = TcpStream::connect(addr).unwrap();
    echo_once(&mut c, b"hello");
    // A live connection would hold the drain open (see tests/drain.rs): the client leaves first.
    drop(c);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(server.stderr().contains("SIGTERM"));
}

#[test]
fn sigint_exits_zero_too() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0"]);
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn listens_on_tcp_and_unix_at_once() {
    let dir = std::env::temp_dir().join(format!("lariat-cli-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.sock");
    let unix = format!("unix:{}", path.display());
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        &unix,
        "--unix-mode",
        "600",
    ]);
    assert_eq!(server.listening[1], unix);
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.write_all(b"over unix").unwrap();
    let mut back = [0u8; 9];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over unix");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut t = TcpStream::connect(server.tcp_addr()).unwrap();
    echo_once(&mut t, b"over tcp");
    drop((c, t));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!path.exists(), "socket file left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn http_hello_answers_pipelined_keep_alive_requests() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--handler", "http-hello"]);
    let mut c = TcpStream::connect(server.tcp_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let one =
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!";
    let mut buf = vec![0u8; one.len() * 2];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), one.repeat(2));
    // Still alive; then a close request ends it.
    c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200 OK") && rest.contains("connection: close"));
    // Garbage gets a 400 and a close.
    let mut bad = TcpStream::connect(server.tcp_addr()).unwrap();
    bad.write_all(b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    bad.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn discard_reads_and_answers_nothing() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--handler", "discard"]);
    let mut c = TcpStream::connect(server.tcp_addr()).unwrap();
    c.write_all(&vec![7u8; 1 << 20]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn the_cap_holds_over_the_wire() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--max-connections", "2"]);
    let addr = server.tcp_addr();
    let mut a = TcpStream::connect(addr).unwrap();
    let mut b = TcpStream::connect(addr).unwrap();
    echo_once(&mut a, b"a");
    echo_once(&mut b, b"b");
    // The third connects (the kernel completes the handshake) but waits in the backlog, unserved.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"c").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut one = [0u8; 1];
    let err = c.read_exact(&mut one).unwrap_err();
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    // One leaves; the waiting one is served, its early bytes intact.
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"c");
}

#[test]
fn json_logs_are_json() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0", "--log-format", "json"]);
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(10));
    let stderr = server.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("draining"))
        .expect(&stderr);
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
}

#[test]
fn bad_arguments_and_busy_ports_fail_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_lariat"))
        .args(["serve", "--listen", "localhost:80"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("localhost:80"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_lariat"))
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot bind") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[test]
fn the_server_keeps_running_until_told() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0"]);
    assert!(!eventually(Duration::from_millis(200), || !server.is_running()));
}
