//! Behind a real HAProxy: `send-proxy-v2` and `send-proxy` to `lariat serve --handler whoami`, with the
//! client on its own loopback address, so the client the header names is told apart from the hop (HAProxy,
//! connecting from 127.0.0.1). Skipped when `haproxy` is not installed (`.ci/run` installs it).

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Lariat;

/// The client's own loopback address: not 127.0.0.1, where HAProxy connects from.
const CLIENT_IP: &str = "127.0.0.7";

fn haproxy_installed() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("haproxy").is_file()));
    if !found {
        eprintln!("skipped: haproxy not installed (.ci/run installs it)");
    }
    found
}

/// A running `haproxy -db`, killed on drop (so a failed assertion leaves no process behind).
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    config: std::path::PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Haproxy {
    /// Forwards a free loopback port to `backend`, with `send` (`send-proxy` or `send-proxy-v2`) on the
    /// server line; returns once the port accepts.
    fn start(backend: SocketAddr, send: &str) -> Haproxy {
        Haproxy::start_with(send, &format!("    server s1 {backend} {send}\n"), "")
    }

    /// Forwards a free loopback port to the backend whose `server` lines are `servers`, with
    /// `backend_options` (e.g. health checks) before them; `tag` names the config file.
    fn start_with(tag: &str, servers: &str, backend_options: &str) -> Haproxy {
        let addr = free_port();
        let config = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "haproxy-{}-{}-{tag}.cfg",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(
            &config,
            format!(
                "global\n\
                 \x20   maxconn 256\n\
                 defaults\n\
                 \x20   mode tcp\n\
                 \x20   log stderr format raw local0\n\
                 \x20   timeout connect 2s\n\
                 \x20   timeout client 10s\n\
                 \x20   timeout server 10s\n\
                 \x20   timeout check 1s\n\
                 frontend fe\n\
                 \x20   bind {addr}\n\
                 \x20   default_backend be\n\
                 backend be\n\
                 {backend_options}{servers}"
            ),
        )
        .unwrap();
        let mut child = Command::new("haproxy")
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start haproxy");
        let stderr = common::collect(child.stderr.take().unwrap());
        let mut haproxy = Haproxy {
            child,
            addr,
            config,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Probe the port (a probe is forwarded too: lariat sees a header and then EOF, which is fine).
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = haproxy.child.try_wait().unwrap() {
                panic!("haproxy exited ({status}): {}", haproxy.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr}: {}",
                haproxy.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Connects to `to` from `CLIENT_IP`.
fn connect_from_client_ip(to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{CLIENT_IP}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Through HAProxy (with `send`) to `lariat serve --handler whoami --proxy-protocol MODE`: the first line
/// names the client's own address and port as the peer and 127.0.0.1 as the hop; then the echo works.
fn whoami_through_haproxy(mode: &str, send: &str) {
    let lariat = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "whoami",
        "--proxy-protocol",
        mode,
    ]);
    let haproxy = Haproxy::start(lariat.tcp_addr(), send);
    for round in 0..3 {
        let client = connect_from_client_ip(haproxy.addr);
        let me = client.local_addr().unwrap();
        assert_eq!(me.ip().to_string(), CLIENT_IP);
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap_or_else(|e| {
            panic!(
                "no whoami line ({e}); lariat: {}; haproxy: {}",
                lariat.stderr(),
                haproxy.stderr()
            )
        });
        let line = line.trim_end();
        eprintln!("{mode}/{send}: client {me}: {line}");
        let hop = line
            .strip_prefix(&format!("peer={me} hop="))
            .unwrap_or_else(|| panic!("{mode}/{send}: client {me}, whoami said {line:?}"));
        let hop: SocketAddr = hop
            .parse()
            .unwrap_or_else(|_| panic!("bad hop in {line:?}"));
        assert_eq!(hop.ip().to_string(), "127.0.0.1", "{line:?}");
        assert_ne!(hop.port(), me.port());

        // The echo, including bytes that look like a PROXY header: the client's own, untouched.
        let mut writer = client;
        let payload =
            format!("round {round}\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\r\n\r\n\0\r\nQUIT\nend");
        writer.write_all(payload.as_bytes()).unwrap();
        let mut back = vec![0u8; payload.len()];
        reader.read_exact(&mut back).unwrap();
        assert_eq!(String::from_utf8_lossy(&back), payload);
    }
}

#[test]
fn haproxy_send_proxy_v2() {
    if !haproxy_installed() {
        return;
    }
    whoami_through_haproxy("v2", "send-proxy-v2");
}

#[test]
fn haproxy_send_proxy_v1() {
    if !haproxy_installed() {
        return;
    }
    whoami_through_haproxy("v1", "send-proxy");
}

#[test]
fn haproxy_send_proxy_v1_and_v2_to_any() {
    if !haproxy_installed() {
        return;
    }
    whoami_through_haproxy("any", "send-proxy");
    whoami_through_haproxy("any", "send-proxy-v2");
}

/// Two `lariat serve` behind HAProxy (`send-proxy-v2`, `option httpchk GET /readyz` on each server's
/// `--metrics` port), under client load through HAProxy. One of them gets SIGTERM with a lame-duck
/// period: its `/readyz` turns 503 at once, HAProxy marks it down while it still accepts, and only then
/// does it stop accepting and drain. Not one client connection fails.
#[test]
fn a_drained_server_behind_haproxy_loses_no_client() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    if !haproxy_installed() {
        return;
    }
    let start = |metrics: SocketAddr| {
        Lariat::start(&[
            "--listen",
            "127.0.0.1:0",
            "--proxy-protocol",
            "v2",
            "--metrics",
            &metrics.to_string(),
            "--lame-duck",
            "1500ms",
            "--drain-timeout",
            "5s",
        ])
    };
    let (metrics_a, metrics_b) = (free_port(), free_port());
    let mut a = start(metrics_a);
    let b = start(metrics_b);
    let servers = format!(
        "    server a {} send-proxy-v2 check port {} inter 100ms fall 1 rise 1\n\
         \x20   server b {} send-proxy-v2 check port {} inter 100ms fall 1 rise 1\n",
        a.tcp_addr(),
        metrics_a.port(),
        b.tcp_addr(),
        metrics_b.port()
    );
    let haproxy = Haproxy::start_with(
        "readyz",
        &servers,
        "    balance roundrobin\n    option httpchk GET /readyz\n",
    );
    let front = haproxy.addr;
    // Both servers up (checks pass) before the load starts.
    std::thread::sleep(Duration::from_millis(500));

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            std::thread::spawn(move || {
                let msg = format!("client {i} says hello");
                while !stop.load(Relaxed) {
                    let result = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&front, Duration::from_secs(5))?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(msg.as_bytes())?;
                        let mut back = vec![0u8; msg.len()];
                        s.read_exact(&mut back)?;
                        if back != msg.as_bytes() {
                            return Err(std::io::Error::other("echo differs"));
                        }
                        Ok(())
                    })();
                    match result {
                        Ok(()) => served.fetch_add(1, Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e.to_string());
                            0
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    a.signal(libc::SIGTERM);
    // HAProxy sees /readyz fail and marks `a` down...
    let marked_down = loop {
        if haproxy.stderr().contains("be/a is DOWN") {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "haproxy never marked a down: {}",
            haproxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // ...before `a` stops accepting (the lame duck ends, the drain begins).
    let drain_began = loop {
        if a.stderr().contains("draining") {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "{}",
            a.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        marked_down < drain_began,
        "marked down after {marked_down:?}, but the drain began after {drain_began:?}"
    );
    let status = a.wait_exit(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "served {} through haproxy; a marked down {marked_down:?} after SIGTERM, drain began {drain_began:?}",
        served.load(Relaxed)
    );
    assert!(status.success(), "{status:?}: {}", a.stderr());
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(served.load(Relaxed) > 100);
    drop(b);
}
