//! `lariat serve` with TLS, a router and the handshake timeout, driven by a real rustls client:
//! TLS echo byte-exact with ALPN, certificate reload on SIGUSR1, one port serving TLS, HTTP and a custom
//! protocol at once, a silent client closed at the handshake timeout, PROXY on one listener only.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Lariat};
use rustls::pki_types::{CertificateDer, ServerName};

const PATIENCE: Duration = Duration::from_secs(10);

struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn write_cert(dir: &Path) -> Cert {
    std::fs::create_dir_all(dir).unwrap();
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    Cert {
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
    }
}

/// `lariat serve` on a loopback port with `cert`, and `extra` flags.
fn serve_tls(cert: &Cert, extra: &[&str]) -> Lariat {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Lariat::start(&args)
}

fn dir(tag: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{tag}-{}", std::process::id()))
}

type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A blocking rustls client trusting only `cert`, handshake completed.
fn tls_connect(addr: SocketAddr, cert: &Cert, alpn: &[&str]) -> std::io::Result<Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Writes `data` in chunks, reading the echo as it comes; returns what came back.
fn echo_through(stream: &mut impl ReadWrite, data: &[u8]) -> Vec<u8> {
    let mut back = vec![0u8; data.len()];
    let mut got = 0;
    for chunk in data.chunks(16 * 1024) {
        stream.write_all(chunk).unwrap();
        stream.flush().unwrap();
        // Keep the echo flowing so neither side's buffers fill.
        let want = (got + chunk.len()).min(back.len());
        stream.read_exact(&mut back[got..want]).unwrap();
        got = want;
    }
    back
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn tls_echo_with_alpn_and_a_certificate_reload_on_sigusr1() {
    let dir = dir("echo");
    let old = write_cert(&dir);
    let server = serve_tls(&old, &["--alpn", "x-lariat"]);
    let addr = server.tcp_addr();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut client = tls_connect(addr, &old, &["x-lariat"]).unwrap();
    assert_eq!(client.conn.alpn_protocol(), Some(&b"x-lariat"[..]));
    assert!(echo_through(&mut client, &data) == data, "echo differs");

    let new = write_cert(&dir);
    server.signal(libc::SIGUSR1);
    assert!(
        eventually(PATIENCE, || server
            .stderr()
            .contains("TLS certificate and key reloaded")),
        "no reload logged: {}",
        server.stderr()
    );
    assert!(
        tls_connect(addr, &old, &[]).is_err(),
        "the old certificate is still served"
    );
    let mut fresh = tls_connect(addr, &new, &[]).unwrap();
    assert_eq!(echo_through(&mut fresh, b"after reload"), b"after reload");
    // The connection made before the reload keeps its session.
    assert_eq!(echo_through(&mut client, b"still here"), b"still here");
}

#[test]
fn one_port_routes_tls_http_and_a_custom_protocol() {
    let dir = dir("route");
    let cert = write_cert(&dir);
    let server = serve_tls(
        &cert,
        &[
            "--route",
            "tls=echo",
            "--route",
            "http=http-hello",
            "--route",
            "prefix:WHO=whoami",
            "--route",
            "default=echo",
            "--handshake-timeout",
            "500ms",
        ],
    );
    let addr = server.tcp_addr();
    for round in 0..5 {
        // TLS → echo.
        let mut tls = tls_connect(addr, &cert, &[]).unwrap();
        let data = vec![b'a' + round as u8; 50_000];
        assert!(echo_through(&mut tls, &data) == data);
        // HTTP/1 → http-hello.
        let mut http = TcpStream::connect(addr).unwrap();
        http.set_read_timeout(Some(PATIENCE)).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        http.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The custom prefix → whoami, then its echo sees the sniffed bytes too.
        let mut who = TcpStream::connect(addr).unwrap();
        who.set_read_timeout(Some(PATIENCE)).unwrap();
        who.write_all(b"WHO am I").unwrap();
        let mut back = vec![0u8; 256];
        let mut got = Vec::new();
        while !got.ends_with(b"WHO am I") {
            let n = who.read(&mut back).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&back[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("peer=127.0.0.1:"), "{text}");
        // Anything else → the default route (echo), byte-exact.
        let mut other = TcpStream::connect(addr).unwrap();
        other.set_read_timeout(Some(PATIENCE)).unwrap();
        assert_eq!(
            echo_through(&mut other, b"\x00\x01binary"),
            b"\x00\x01binary"
        );
    }
    // Silent: closed at the handshake timeout, not held.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4];
    let r = silent.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_greeting_follows_the_proxy_header_and_precedes_the_handler() {
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "whoami",
        "--proxy-protocol",
        "v1",
        "--greeting",
        "+OK lariat\\r\\n",
    ]);
    // Without --proxy-on, every listener reads the header (and greets).
    let addr: SocketAddr = server.listening[1]
        .strip_prefix("tcp://")
        .unwrap()
        .parse()
        .unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n")
        .unwrap();
    let mut got = vec![0u8; 12];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, b"+OK lariat\r\n");
    let mut line = vec![0u8; "peer=192.0.2.1:1234".len()];
    s.read_exact(&mut line).unwrap();
    assert_eq!(line, b"peer=192.0.2.1:1234");
}

#[test]
fn proxy_on_names_one_listener() {
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--handler",
        "whoami",
        "--proxy-protocol",
        "v1",
        "--proxy-on",
        "127.0.0.1:0",
    ]);
    let v4: SocketAddr = server.listening[0]
        .strip_prefix("tcp://")
        .unwrap()
        .parse()
        .unwrap();
    let v6: SocketAddr = server.listening[1]
        .strip_prefix("tcp://")
        .unwrap()
        .parse()
        .unwrap();
    let mut behind = TcpStream::connect(v4).unwrap();
    behind.set_read_timeout(Some(PATIENCE)).unwrap();
    behind
        .write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n")
        .unwrap();
    let mut line = vec![0u8; "peer=192.0.2.1:1234".len()];
    behind.read_exact(&mut line).unwrap();
    assert_eq!(line, b"peer=192.0.2.1:1234");
    // The other listener reads no header.
    let mut direct = TcpStream::connect(v6).unwrap();
    direct.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut line = vec![0u8; "peer=[::1]".len()];
    direct.read_exact(&mut line).unwrap();
    assert_eq!(line, b"peer=[::1]");

    // A --proxy-on that names no listener is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lariat"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--proxy-protocol",
            "v1",
            "--proxy-on",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proxy-on 127.0.0.1:1"));
}

/// SIGUSR1 to a `--workers` supervisor reloads the certificate in every worker (the supervisor passes it
/// on); sent to the whole group (`systemctl kill -s USR1` does), each worker still reloads once, on the
/// supervisor's word.
#[test]
fn sigusr1_to_a_workers_supervisor_reloads_the_certificate_in_every_worker() {
    let dir = dir("workers");
    let old = write_cert(&dir);
    let mut server = serve_tls(&old, &["--workers", "2"]);
    let addr = server.tcp_addr();
    let reloads = |server: &Lariat| {
        server
            .stderr()
            .matches("TLS certificate and key reloaded")
            .count()
    };
    assert!(eventually(PATIENCE, || server
        .stderr()
        .matches("worker ready")
        .count()
        == 2));
    assert_eq!(
        echo_through(&mut tls_connect(addr, &old, &[]).unwrap(), b"old"),
        b"old"
    );
    let new = write_cert(&dir);
    server.signal(libc::SIGUSR1);
    assert!(
        eventually(PATIENCE, || reloads(&server) == 2),
        "{}",
        server.stderr()
    );
    // Whichever worker takes it, a new client gets the new certificate.
    for _ in 0..10 {
        assert!(
            tls_connect(addr, &old, &[]).is_err(),
            "the old certificate is still served"
        );
        let mut fresh = tls_connect(addr, &new, &[]).unwrap();
        assert_eq!(echo_through(&mut fresh, b"new"), b"new");
    }
    server.signal_group(libc::SIGUSR1);
    assert!(eventually(PATIENCE, || reloads(&server) == 4));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reloads(&server), 4, "{}", server.stderr());
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success(), "{}", server.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_with_only_plain_routes_runs_tls_first_then_routes_the_plaintext() {
    let dir = dir("tls-then-route");
    let cert = write_cert(&dir);
    let server = serve_tls(
        &cert,
        &[
            "--listen",
            "127.0.0.1:0",
            "--route",
            "http=http-hello",
            "--route",
            "default=echo",
        ],
    );
    let addr = server.tcp_addr();
    // TLS, then the default route's echo on the plaintext.
    let mut tls = tls_connect(addr, &cert, &[]).expect("the listener must speak TLS");
    assert_eq!(echo_through(&mut tls, b"\x00secret"), b"\x00secret");
    // TLS, then the http route on the plaintext request.
    let mut tls = tls_connect(addr, &cert, &[]).unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A plaintext client is refused, not served in the clear.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(b"in the clear\n").unwrap();
    let mut back = [0u8; 13];
    assert!(
        plain.read_exact(&mut back).is_err() || back != *b"in the clear\n",
        "a plaintext client was echoed"
    );
}

#[test]
fn tls_on_one_listener_holds_with_routes() {
    let dir = dir("tls-on-route");
    let cert = write_cert(&dir);
    let server = serve_tls(
        &cert,
        &[
            "--listen",
            "[::1]:0",
            "--tls-on",
            "127.0.0.1:0",
            "--route",
            "default=echo",
        ],
    );
    let v4 = server.tcp_addr();
    let v6: SocketAddr = server.listening[1]
        .strip_prefix("tcp://")
        .unwrap()
        .parse()
        .unwrap();
    let mut tls = tls_connect(v4, &cert, &[]).expect("--tls-on names this listener");
    assert_eq!(echo_through(&mut tls, b"over tls"), b"over tls");
    let mut plain = TcpStream::connect(v6).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(echo_through(&mut plain, b"plain"), b"plain");
}

#[test]
fn a_greeting_with_a_tls_route_is_written_inside_tls() {
    let dir = dir("tls-route-greeting");
    let cert = write_cert(&dir);
    let server = serve_tls(
        &cert,
        &[
            "--route",
            "tls=echo",
            "--route",
            "default=echo",
            "--greeting",
            "+OK\\r\\n",
        ],
    );
    let addr = server.tcp_addr();
    let mut tls = tls_connect(addr, &cert, &[]).expect("the handshake must not meet the greeting");
    let mut hello = [0u8; 5];
    tls.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"+OK\r\n");
    assert_eq!(echo_through(&mut tls, b"after"), b"after");
    // A plain client is greeted once its route is chosen, then echoed.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(b"x").unwrap();
    let mut got = [0u8; 6];
    plain.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"+OK\r\nx");
}

/// A child process killed (and reaped) when the test ends, passing or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real OpenSSL client on one TLS 1.3 connection to `http-hello`: requests with quiet gaps longer than
/// the hibernation delay, so between them the connection sleeps in the server's parking lot with its
/// session on lariat's record layer, and each request wakes it.
#[test]
fn openssl_requests_wake_a_tls13_connection_asleep_between_them() {
    use std::process::{Command, Stdio};
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: no openssl on this machine");
        return;
    }
    let dir = dir("openssl");
    let cert = write_cert(&dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lariat"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "http-hello",
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
        "--alpn",
        "http/1.1",
        "--http-hibernate-after",
        "20ms",
    ])
    .env("RUST_LOG", "info,lariat::http=trace");
    let server = Lariat::from_command(cmd, 1);
    let addr = server.tcp_addr();

    let mut client = KillOnDrop(
        Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args([
                "-tls1_3",
                "-alpn",
                "http/1.1",
                "-servername",
                "localhost",
                "-quiet",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = common::collect(client.0.stdout.take().unwrap());
    let err = common::collect(client.0.stderr.take().unwrap());
    let mut stdin = client.0.stdin.take().unwrap();
    let answers = || out.lock().unwrap().matches("HTTP/1.1 200 OK").count();
    const REQUESTS: usize = 4;
    for n in 1..=REQUESTS {
        stdin
            .write_all(format!("GET /{n} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .unwrap();
        stdin.flush().unwrap();
        assert!(
            eventually(PATIENCE, || answers() == n),
            "answer {n} missing: {:?} (openssl: {:?})",
            out.lock().unwrap(),
            err.lock().unwrap()
        );
        // Quiet for ten hibernation delays: the connection falls asleep.
        std::thread::sleep(Duration::from_millis(200));
    }
    let woken = || server.stderr().matches("woken in the parking lot").count();
    assert!(
        eventually(PATIENCE, || woken() >= REQUESTS - 1),
        "woken {} times: {}",
        woken(),
        server.stderr()
    );
    assert!(
        !server.stderr().contains("ERROR") && !server.stderr().contains("WARN"),
        "{}",
        server.stderr()
    );
    drop(stdin);
}
