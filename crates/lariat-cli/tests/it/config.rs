//! `lariat serve` refuses, at start, settings it could not honour: each exits non-zero with a message
//! naming the flag, instead of serving something other than the command line says.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common;

use common::{eventually, Lariat};

/// Each bad command line, and the flag its error must name.
const REFUSED: &[(&[&str], &str)] = &[
    (&["--max-connections", "0"], "--max-connections"),
    (&["--max-per-ip", "0"], "--max-per-ip"),
    (
        &["--max-per-ip", "5", "--per-ip-v6-prefix", "129"],
        "--per-ip-v6-prefix",
    ),
    (&["--per-ip-v6-prefix", "48"], "--per-ip-v6-prefix"),
    (&["--handshake-timeout", "0"], "--handshake-timeout"),
    (&["--handshake-timeout", "0s"], "--handshake-timeout"),
    (
        &["--handler", "http-hello", "--request-timeout", "0"],
        "--request-timeout",
    ),
    (&["--request-timeout", "5s"], "--request-timeout"),
    (&["--acceptors", "0"], "--acceptors"),
    (&["--unix-peer-uid", "self"], "--unix-peer-uid"),
    (
        &[
            "--listen",
            "unix:@lariat-config-test",
            "--unix-peer-uid",
            "nobody",
        ],
        "--unix-peer-uid",
    ),
    (&["--threads", "0"], "--threads"),
    (&["--unix-mode", "17777"], "--unix-mode"),
    (
        &["--listen", "unix:@lariat-config-test", "--unix-mode", "600"],
        "--unix-mode",
    ),
    (
        &[
            "--route",
            "prefix:0123456789012345678901234567890123456789012345678901234567890123456789=echo",
        ],
        "--route",
    ),
    (
        &[
            "--listen",
            "unix:@lariat-config-test",
            "--proxy-protocol",
            "v1",
            "--trusted-proxy",
            "unix",
        ],
        "--trusted-proxy",
    ),
    (
        &["--workers", "2", "--restart-binary", "/bin/true"],
        "--restart-binary",
    ),
    (
        &["--route", "default=echo", "--delivery", "push"],
        "--delivery",
    ),
    (
        &["--handler", "discard", "--delivery", "push"],
        "--delivery",
    ),
    (
        &["--route", "default=echo", "--handler", "discard"],
        "--handler",
    ),
    (&["--trusted-proxy", "10.0.0.0/8"], "--trusted-proxy"),
    (
        &["--proxy-protocol", "off", "--trusted-proxy", "10.0.0.0/8"],
        "--trusted-proxy",
    ),
    (
        &["--proxy-protocol", "off", "--proxy-on", "127.0.0.1:0"],
        "--proxy-on",
    ),
    (
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "--tls-on",
            "127.0.0.1:0",
            "--route",
            "tls=echo",
        ],
        "--tls-on",
    ),
];

#[test]
fn bad_values_exit_non_zero_naming_the_flag() {
    for (args, flag) in REFUSED {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lariat"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(*args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A server that accepted the bad value keeps running: stop it after a while.
        let exited = eventually(Duration::from_secs(10), || {
            child.try_wait().unwrap().is_some()
        });
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            exited,
            "{args:?} was accepted: the server started: {stderr}"
        );
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "{args:?} was accepted: {stderr}"
        );
        assert!(stderr.contains(flag), "{args:?}: no {flag} in {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_huge_drain_timeout_drains_without_a_panic() {
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "10000000000000000000",
        "--restart-timeout",
        "10000000000000000000",
        "--handshake-timeout",
        "10000000000000000000",
        "--idle-timeout",
        "10000000000000000000",
    ]);
    // A connection goes through the handshake deadline and the idle sweep, and stays open.
    let mut client = std::net::TcpStream::connect(server.tcp_addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    use std::io::{Read, Write};
    client.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    std::thread::sleep(Duration::from_millis(1500));
    client.write_all(b"pong").unwrap();
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong", "closed early by an overflowed idle timeout");
    drop(client);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// Sends a PROXY header over the Unix socket at `path`; what the whoami handler answers (empty if the
/// connection was refused).
fn whoami_over_unix(path: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n");
    let mut line = vec![0u8; "peer=192.0.2.1:1234".len()];
    match s.read_exact(&mut line) {
        Ok(()) => String::from_utf8_lossy(&line).into_owned(),
        Err(_) => String::new(),
    }
}

#[test]
fn proxy_headers_over_unix_are_trusted_only_with_trusted_proxy_unix() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("config-unix-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("untrusted.sock");
    let listen = format!("unix:{}", path.display());
    let _untrusting = Lariat::start(&[
        "--listen",
        &listen,
        "--handler",
        "whoami",
        "--proxy-protocol",
        "v1",
    ]);
    assert_eq!(
        whoami_over_unix(&path),
        "",
        "a local process claimed a client address without --trusted-proxy unix"
    );
    let trusted_path = dir.join("trusted.sock");
    let listen = format!("unix:{}", trusted_path.display());
    let _trusting = Lariat::start(&[
        "--listen",
        &listen,
        "--handler",
        "whoami",
        "--proxy-protocol",
        "v1",
        "--trusted-proxy",
        "unix",
    ]);
    assert_eq!(whoami_over_unix(&trusted_path), "peer=192.0.2.1:1234");
}

#[test]
fn unix_peer_uid_keeps_other_users_off_an_abstract_socket() {
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for (uid, admitted) in [
        (me.wrapping_add(1).to_string(), false),
        ("self".into(), true),
    ] {
        let name = format!("lariat-peer-uid-{}-{admitted}", std::process::id());
        let listen = format!("unix:@{name}");
        let _server = Lariat::start(&["--listen", &listen, "--unix-peer-uid", &uid]);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let mut c = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut back = [0u8; 4];
        let answered = c.write_all(b"ping").is_ok() && c.read_exact(&mut back).is_ok();
        assert_eq!(answered, admitted, "--unix-peer-uid {uid}");
    }
}
