//! TLS edge cases found in review: TLS 1.2 and 1.3 with data in the client's Finished flight and session
//! resumption; a router behind server-level TLS sniffs the plaintext; a handler that returns without
//! flushing loses nothing (the last records linger in a task); a TLS error is returned again on the next
//! read instead of spinning.
use crate::common;

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::bind_loopback;
use common::tls::{connect, echo_flush, temp_dir, TestCert};
use lariat::route::{Matcher, Router};
use lariat::tls::TlsConfig;
use lariat::{Connection, Server, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn client_config(
    cert: &TestCert,
    v: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[v])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Blocking rustls client: plaintext written before the handshake goes out in the same write as the
/// client's Finished. Half-closes with close_notify after the data, reads the echo to the end.
fn sync_client(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    data: &[u8],
) -> (Vec<u8>, bool) {
    let mut conn = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Buffered by rustls until the handshake completes, then sent with Finished.
    let first = data.len().min(8000);
    conn.writer().write_all(&data[..first]).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut back = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut sent = first;
    while back.len() < data.len() {
        if sent < data.len() {
            let end = (sent + 4096).min(data.len());
            tls.write_all(&data[sent..end]).unwrap();
            sent = end;
        }
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "early eof after {}", back.len());
        back.extend_from_slice(&buf[..n]);
    }
    (back, resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_data_in_the_finished_flight_and_resumption() {
    let dir = temp_dir("rv-vers");
    let cert = Arc::new(TestCert::write(&dir));
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let _server = Server::builder()
        .tls(Some(tls))
        .serve([listener], echo_flush)
        .unwrap();
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = client_config(&cert, v);
        for round in 0..3 {
            let data = payload(100_000, round);
            let cfg = cfg.clone();
            let d = data.clone();
            let (back, resumed) = tokio::task::spawn_blocking(move || sync_client(addr, cfg, &d))
                .await
                .unwrap();
            assert_eq!(back.len(), data.len());
            assert!(back == data, "{v:?} round {round}: bytes differ");
            eprintln!("{v:?} round {round}: ok, resumed={resumed}");
        }
    }
}

/// Server-level TLS + a Router that sniffs the plaintext (HTTP/1 vs other) after the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_behind_server_tls_sniffs_the_plaintext() {
    let dir = temp_dir("rv-route");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    let router = Router::new()
        .route("http", Matcher::Http1, echo_flush)
        .fallback(echo_flush);
    let server = Server::builder()
        .tls(Some(tls))
        .serve([listener], router)
        .unwrap();
    let mut c = connect(&cert.client(&[]), addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = vec![0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf)).await;
    eprintln!("client read: {r:?}; stats: {:?}", server.handle().stats());
    assert!(
        matches!(r, Ok(Ok(n)) if n > 0),
        "no echo: the router could not sniff under TLS"
    );
}

fn raw_fd(conn: &Connection) -> i32 {
    match conn.stream() {
        Stream::Tls(t) => match t.get_ref() {
            Stream::Tcp(s) => std::os::fd::AsRawFd::as_raw_fd(s),
            _ => unreachable!(),
        },
        Stream::Tcp(s) => std::os::fd::AsRawFd::as_raw_fd(s),
        _ => unreachable!(),
    }
}

/// A handler that write_all()s 1 MiB and returns without flush (fine over plain TCP: every byte
/// write_all reported is in the kernel). The client reads slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_returns_without_flush_loses_nothing() {
    let dir = temp_dir("rv-flush");
    let cert = TestCert::write(&dir);
    let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    let (listener, addr) = bind_loopback();
    const TOTAL: usize = 1 << 20;
    let handler = move |mut conn: Connection| async move {
        let fd = raw_fd(&conn);
        let small: libc::c_int = 16 * 1024;
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                4,
            );
        }
        conn.write_all(&payload(TOTAL, 7)).await?;
        Ok::<(), io::Error>(()) // no flush, no shutdown
    };
    let _server = Server::builder()
        .tls(Some(tls))
        .serve([listener], handler)
        .unwrap();
    let mut c = connect(&cert.client(&[]), addr).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
            Ok(Ok(0)) => break "clean eof".to_string(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            other => break format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
    };
    eprintln!(
        "write_all reported {TOTAL}; received {} then {end}",
        got.len()
    );
    assert_eq!(
        got.len(),
        TOTAL,
        "bytes write_all accepted were lost at drop"
    );
    assert_eq!(end, "clean eof", "no close_notify after the last record");
}

/// After a read fails (a corrupted record), reading again must not spin inside one poll.
#[test]
fn a_tls_error_is_returned_again_not_spun_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    rt.block_on(async move {
        let dir = temp_dir("rv-spin");
        let cert = TestCert::write(&dir);
        let tls = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
        let (listener, addr) = bind_loopback();
        let tx = Arc::new(std::sync::Mutex::new(tx));
        let handler = move |mut conn: Connection| {
            let tx = tx.clone();
            async move {
                let mut buf = [0u8; 100];
                let first = conn.read(&mut buf).await;
                tx.lock()
                    .unwrap()
                    .send(format!("first read: {first:?}"))
                    .unwrap();
                let second = conn.read(&mut buf).await;
                tx.lock()
                    .unwrap()
                    .send(format!("second read: {second:?}"))
                    .unwrap();
                Ok::<(), io::Error>(())
            }
        };
        let server = Server::builder()
            .tls(Some(tls))
            .serve([listener], handler)
            .unwrap();
        let mut c = connect(&cert.client(&[]), addr).await.unwrap();
        // A record with a bad MAC, straight onto the socket; then keep the connection open, silent.
        let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        rec.extend_from_slice(&[0xAA; 32]);
        c.get_mut().0.write_all(&rec).await.unwrap();
        std::mem::forget(c);
        std::mem::forget(server);
    });
    let first = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("first read returns");
    eprintln!("{first}");
    let cpu = || {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        u.ru_utime.tv_sec as f64
            + u.ru_utime.tv_usec as f64 / 1e6
            + u.ru_stime.tv_sec as f64
            + u.ru_stime.tv_usec as f64 / 1e6
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu();
    let second = rx.recv_timeout(Duration::from_secs(2));
    let used = cpu() - before;
    eprintln!("second: {second:?}; CPU used while waiting 2 s: {used:.2} s");
    std::mem::forget(rt); // a spinning worker would block the runtime's shutdown
    let second = second.expect("the second read returns");
    assert!(second.contains("Err"), "the error is not sticky: {second}");
    assert!(used < 0.5, "the second read burned {used:.2} s of CPU");
}
