//! TLS over loopback with a real rustls client: echo byte for byte (plain reads, readiness reads, push
//! delivery), SNI and ALPN seen by the handler, a silent client closed at the handshake timeout while
//! others are served, garbage counted, certificates reloaded without a restart.

use crate::common;

use std::io;
use std::time::Duration;

use common::tls::{connect, echo_flush, exchange, temp_dir, TestCert};
use common::{bind_loopback, eventually};
use lariat::delivery::{Framing, Messages, Mode};
use lariat::tls::TlsConfig;
use lariat::{Connection, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);

/// Writes `sni=… alpn=…\n`, then echoes with plain reads, flushing after each write.
async fn tell_and_echo(mut conn: Connection) -> io::Result<()> {
    let info = conn.tls().expect("a TLS connection");
    let line = format!(
        "sni={} alpn={}\n",
        info.server_name.as_deref().unwrap_or("-"),
        info.alpn
            .as_deref()
            .map_or("-".into(), |p| String::from_utf8_lossy(p).into_owned())
    );
    conn.write_all(line.as_bytes()).await?;
    conn.flush().await?;
    echo_flush(conn).await
}

/// Echoes with `readable` + `try_read_buf`, as lariat's CLI does to keep idle connections buffer-free.
async fn readiness_echo(mut conn: Connection) -> io::Result<()> {
    loop {
        conn.readable().await?;
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            buf.clear();
            match conn.try_read_buf(&mut buf) {
                Ok(0) => return conn.shutdown().await,
                Ok(_) => {
                    conn.write_all(&buf).await?;
                    conn.flush().await?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Echoes line by line through push delivery.
async fn lines_echo(conn: Connection) -> io::Result<()> {
    use futures_util::StreamExt;
    let (mut messages, mut write) =
        Messages::new(conn, Framing::Lines { max: 1 << 20 }, Mode::Push);
    while let Some(event) = messages.next().await {
        match event {
            lariat::delivery::Event::Data(line) => {
                write.write_all(&line).await?;
                write.write_all(b"\n").await?;
                write.flush().await?;
            }
            lariat::delivery::Event::Closed => break,
            lariat::delivery::Event::Error(e) => return Err(io::Error::other(e)),
            lariat::delivery::Event::Passive | lariat::delivery::Event::Draining => {}
        }
    }
    write.shutdown().await
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn echo_over_tls_with_sni_and_alpn_byte_exact() {
    let dir = temp_dir("tls-echo");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path)
        .unwrap()
        .with_alpn(["x-lariat", "http/1.1"]);
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .tls(Some(tls))
        .serve([listener], tell_and_echo)
        .unwrap();
    let connector = cert.client(&[b"x-lariat"]);
    let mut clients = Vec::new();
    for seed in 0..8u8 {
        let connector = connector.clone();
        clients.push(tokio::spawn(async move {
            let mut tls = connect(&connector, addr).await.unwrap();
            // The client writes at once: the first bytes travel with the handshake's last flight.
            let data = payload(256 * 1024 + seed as usize, seed);
            let expected_line = b"sni=localhost alpn=x-lariat\n";
            let back = exchange(&mut tls, &data, expected_line.len() + data.len()).await;
            assert_eq!(&back[..expected_line.len()], expected_line);
            assert!(back[expected_line.len()..] == data[..], "echo differs");
            // A clean end both ways: close_notify, then the server's (read to EOF) before the socket
            // goes. A peer that just drops the connection is a truncated stream to the handler's read,
            // and one that goes before the server's close_notify makes that write fail; this test
            // counts handler errors.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tls.shutdown().await.unwrap();
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let stats = server.handle().stats();
    assert_eq!(stats.tls_failed, 0);
    assert_eq!(stats.handler_errors, 0);
}

#[tokio::test]
async fn readiness_reads_and_push_delivery_work_over_tls() {
    let dir = temp_dir("tls-ready");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let connector = cert.client(&[]);

    let (listener, addr) = bind_loopback();
    let _ready = Server::builder()
        .tls(Some(tls.clone()))
        .serve([listener], readiness_echo)
        .unwrap();
    let mut stream = connect(&connector, addr).await.unwrap();
    let data = payload(1 << 20, 7);
    let back = exchange(&mut stream, &data, data.len()).await;
    assert!(back == data, "readiness echo differs");

    let (listener, addr) = bind_loopback();
    let _push = Server::builder()
        .tls(Some(tls))
        .serve([listener], lines_echo)
        .unwrap();
    let mut stream = connect(&connector, addr).await.unwrap();
    let mut lines = Vec::new();
    for i in 0..2000 {
        lines.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 97)).as_bytes());
    }
    let back = exchange(&mut stream, &lines, lines.len()).await;
    assert!(back == lines, "line echo differs");
}

#[tokio::test]
async fn a_silent_client_is_closed_at_the_handshake_timeout_while_others_are_served() {
    let dir = temp_dir("tls-silent");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .max_connections(4)
        .handshake_timeout(Duration::from_millis(400))
        .tls(Some(tls))
        .serve([listener], tell_and_echo)
        .unwrap();
    // Four silent clients fill the cap: TCP open, no ClientHello.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let handle = server.handle().clone();
    assert!(eventually(PATIENCE, || handle.stats().active == 4).await);
    // A real client still gets through once the timeout frees the slots.
    let started = std::time::Instant::now();
    let connector = cert.client(&[]);
    let mut tls = connect(&connector, addr).await.unwrap();
    let mut line = vec![0u8; "sni=localhost alpn=-\n".len()];
    tls.read_exact(&mut line).await.unwrap();
    assert_eq!(line, b"sni=localhost alpn=-\n");
    assert!(started.elapsed() < PATIENCE);
    // Each silent client was closed: it reads EOF (or a reset), not a hang.
    for mut s in silent {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "silent client got {r:?}");
    }
    assert_eq!(handle.stats().handshake_timeouts, 4);
    assert_eq!(handle.stats().tls_failed, 0);
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_counted_and_closed() {
    let dir = temp_dir("tls-garbage");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .tls(Some(tls))
        .serve([listener], tell_and_echo)
        .unwrap();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // The server answers with an alert (or nothing) and closes.
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    let handle = server.handle().clone();
    assert!(eventually(PATIENCE, || handle.stats().tls_failed == 1).await);
    // A client that closes mid-handshake is counted the same way.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0x50, 0x01])
        .await
        .unwrap();
    drop(half);
    assert!(eventually(PATIENCE, || handle.stats().tls_failed == 2).await);
    assert!(eventually(PATIENCE, || handle.stats().active == 0).await);
}

#[tokio::test]
async fn certificates_reload_without_a_restart() {
    let dir = temp_dir("tls-reload");
    let old = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&old.cert_path, &old.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let _server = Server::builder()
        .tls(Some(tls.clone()))
        .serve([listener], tell_and_echo)
        .unwrap();
    let mut before = connect(&old.client(&[]), addr).await.unwrap();
    let mut line = [0u8; 21];
    before.read_exact(&mut line).await.unwrap();

    let new = TestCert::write(&dir);
    tls.reload().unwrap();
    // New handshakes get the new certificate: a client trusting only the old one fails…
    assert!(connect(&old.client(&[]), addr).await.is_err());
    // …and one trusting only the new one succeeds.
    let mut after = connect(&new.client(&[]), addr).await.unwrap();
    after.read_exact(&mut line).await.unwrap();
    // The connection made before the reload goes on with its session.
    before.write_all(b"still here").await.unwrap();
    before.flush().await.unwrap();
    let mut back = [0u8; 10];
    before.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");

    // A broken file is refused and the current pair stays.
    std::fs::write(&new.key_path, "not a key").unwrap();
    assert!(tls.reload().is_err());
    connect(&new.client(&[]), addr).await.unwrap();
}

#[test]
fn bad_pem_files_are_clear_errors() {
    let dir = temp_dir("tls-bad");
    let cert = TestCert::write(&dir);
    let err = TlsConfig::from_pem_files(dir.join("missing.pem"), &cert.key_path).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let other = TestCert::write(&temp_dir("tls-bad-other"));
    let err = TlsConfig::from_pem_files(&cert.cert_path, &other.key_path).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

/// After a split, the halves and the message view report what the connection knew: the TLS
/// handshake's outcome, the peer, the local address, and live byte counters.
#[tokio::test]
async fn split_halves_and_messages_keep_the_connections_metadata() {
    use futures_util::StreamExt;
    use lariat::delivery::{Event, Framing, Messages, Mode};

    let dir = temp_dir("tls-meta");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path)
        .unwrap()
        .with_alpn(["x-lariat"]);
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .tls(Some(tls))
        .serve([listener], |conn: Connection| async move {
            let (messages, mut write) = Messages::new(conn, Framing::lines(), Mode::Push);
            let mut messages = messages.with_drain_event();
            let meta = messages.meta().clone();
            while let Some(Event::Data(_)) = messages.next().await {
                let tls = meta.tls().expect("TLS info after the split");
                let line = format!(
                    "sni={} alpn={} peer={} local={:?} in={} same={}\n",
                    tls.server_name.as_deref().unwrap_or("-"),
                    String::from_utf8_lossy(tls.alpn.as_deref().unwrap_or(b"-")),
                    write.meta().peer_addr(),
                    meta.local_addr()
                        .map(|a| matches!(a, lariat::LocalAddr::Tcp(_))),
                    meta.bytes_in(),
                    write.meta().id() == meta.id(),
                );
                write.write_all(line.as_bytes()).await?;
                write.flush().await?;
            }
            Ok::<_, io::Error>(())
        })
        .unwrap();
    let mut client = connect(&cert.client(&[b"x-lariat"]), addr).await.unwrap();
    let peer = client.get_ref().0.local_addr().unwrap();
    client.write_all(b"hello\n").await.unwrap();
    client.flush().await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte != *b"\n" {
        client.read_exact(&mut byte).await.unwrap();
        line.push(byte[0]);
    }
    assert_eq!(
        String::from_utf8(line).unwrap(),
        format!("sni=localhost alpn=x-lariat peer={peer} local=Ok(true) in=6 same=true\n")
    );
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
