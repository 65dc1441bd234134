//! `lariat serve --metrics ADDR` and `--lame-duck` (issue 7): the counters scraped over HTTP move with a
//! scripted workload, /healthz and /readyz follow the process through lame duck and drain, and the
//! connection list closes a client by id.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use common::{admin_addr, eventually, http, Lariat};
use socket2::{Domain, Socket, Type};

const FORCED_EXIT: i32 = 3;

/// The `--metrics` address, from the `metrics on tcp://…` line printed after the `listening on` ones.
fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| match l.rsplit_once(' ') {
            Some((s, v)) if s == series => v.parse().ok(),
            _ => None,
        })
}

/// The value of `series`, which must be there.
fn get(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Scrapes until `series` equals `want`, for up to 5 s.
fn wait_for(addr: SocketAddr, series: &str, want: f64) -> String {
    let mut text = String::new();
    let ok = eventually(Duration::from_secs(5), || {
        text = scrape(addr);
        value(&text, series) == Some(want)
    });
    assert!(ok, "{series} never became {want}:\n{text}");
    text
}

fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// True when the peer closed `stream` (EOF, or a reset) within 5 s.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Every series `lariat serve --metrics` publishes, at any time.
const SERIES: &[&str] = &[
    "lariat_accepted_total",
    "lariat_active",
    "lariat_max_connections",
    "lariat_closed_total",
    "lariat_refused_total{cause=\"admission\"}",
    "lariat_refused_total{cause=\"proxy\"}",
    "lariat_shed_total",
    "lariat_accept_errors_total{class=\"connection\"}",
    "lariat_accept_errors_total{class=\"shortage\"}",
    "lariat_shortage_episodes_total",
    "lariat_accept_paused_seconds",
    "lariat_handshake_failures_total{cause=\"proxy\"}",
    "lariat_bytes_in_total",
    "lariat_bytes_out_total",
    "lariat_idle_closed_total",
    "lariat_drain_forced_total",
    "lariat_handler_errors_total",
    "lariat_handler_panics_total",
    "lariat_draining",
    "lariat_restarts_total{outcome=\"started\"}",
    "lariat_restarts_total{outcome=\"handed_over\"}",
    "lariat_restarts_total{outcome=\"failed\"}",
    "lariat_ready",
    "lariat_lame_duck",
];

#[test]
fn metrics_move_with_a_scripted_workload() {
    const N: usize = 5;
    const MSG: &[u8] = &[b'x'; 100];
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--deny",
        "127.0.0.3/32",
        "--max-connections",
        "500",
    ]);
    let addr = server.tcp_addr();
    let admin = admin_addr(&server);

    let m = scrape(admin);
    for series in SERIES {
        assert!(value(&m, series).is_some(), "no {series} in\n{m}");
        assert!(
            m.contains(&format!("# HELP {} ", series.split('{').next().unwrap())),
            "no help text for {series}"
        );
    }
    for series in SERIES.iter().filter(|s| {
        !matches!(
            **s,
            "lariat_max_connections" | "lariat_ready" | "lariat_draining" | "lariat_lame_duck"
        )
    }) {
        assert_eq!(get(&m, series), 0.0, "{series} at start");
    }
    assert_eq!(get(&m, "lariat_max_connections"), 500.0);
    assert_eq!(get(&m, "lariat_ready"), 1.0);
    assert_eq!(get(&m, "lariat_draining"), 0.0);
    assert_eq!(get(&m, "lariat_lame_duck"), 0.0);

    // N live echo connections, 100 bytes each way: the live ones' bytes count before they close.
    let mut clients: Vec<TcpStream> = (0..N).map(|_| client(addr)).collect();
    for c in &mut clients {
        round_trip(c, MSG);
    }
    // A write is counted once the write call returns, which can be just after the client has read the
    // bytes: wait for the count.
    let m = wait_for(admin, "lariat_bytes_out_total", (N * MSG.len()) as f64);
    assert_eq!(get(&m, "lariat_accepted_total"), N as f64);
    assert_eq!(get(&m, "lariat_active"), N as f64);
    assert_eq!(get(&m, "lariat_closed_total"), 0.0);
    // A read is counted before the echo is written, so it is there by now.
    assert_eq!(get(&m, "lariat_bytes_in_total"), (N * MSG.len()) as f64);

    // Closed, they keep their bytes (now in the closed connections' totals).
    drop(clients);
    let m = wait_for(admin, "lariat_closed_total", N as f64);
    assert_eq!(get(&m, "lariat_active"), 0.0);
    assert_eq!(get(&m, "lariat_bytes_in_total"), (N * MSG.len()) as f64);
    assert_eq!(get(&m, "lariat_bytes_out_total"), (N * MSG.len()) as f64);

    // A denied client is accepted, closed at once and counted as refused by admission.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 0)).into())
        .unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let mut denied: TcpStream = socket.into();
    assert!(
        closed_by_server(&mut denied),
        "the denied client was served"
    );
    let m = wait_for(admin, "lariat_refused_total{cause=\"admission\"}", 1.0);
    assert_eq!(get(&m, "lariat_accepted_total"), (N + 1) as f64);
    assert_eq!(get(&m, "lariat_refused_total{cause=\"proxy\"}"), 0.0);
    let m = wait_for(admin, "lariat_closed_total", (N + 1) as f64);
    assert_eq!(get(&m, "lariat_bytes_in_total"), (N * MSG.len()) as f64);
    assert_eq!(get(&m, "lariat_handler_errors_total"), 0.0);
    assert_eq!(get(&m, "lariat_ready"), 1.0);
}

#[test]
fn proxy_refusals_and_idle_closes_are_counted() {
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--proxy-protocol",
        "v1",
        "--idle-timeout",
        "2s",
    ]);
    let addr = server.tcp_addr();
    let admin = admin_addr(&server);

    // Not a PROXY header: refused before the handler, a handshake failure.
    let mut garbage = client(addr);
    garbage.write_all(b"GARBAGE\r\n").unwrap();
    assert!(closed_by_server(&mut garbage));
    let m = wait_for(admin, "lariat_refused_total{cause=\"proxy\"}", 1.0);
    assert_eq!(
        get(&m, "lariat_handshake_failures_total{cause=\"proxy\"}"),
        1.0
    );
    assert_eq!(get(&m, "lariat_refused_total{cause=\"admission\"}"), 0.0);

    // A good header, one echo, then silence: the idle timeout closes it and counts it. Meanwhile the
    // connection list shows the client the header named.
    let mut quiet = client(addr);
    quiet
        .write_all(b"PROXY TCP4 192.0.2.7 192.0.2.1 4000 80\r\n")
        .unwrap();
    round_trip(&mut quiet, b"hi");
    let (status, list) = http(admin, "GET", "/connections");
    assert_eq!(status, 200);
    assert!(list.contains("\"peer\":\"192.0.2.7:4000\""), "{list}");
    assert!(
        closed_by_server(&mut quiet),
        "not closed by the idle timeout"
    );
    let m = wait_for(admin, "lariat_idle_closed_total", 1.0);
    assert_eq!(get(&m, "lariat_bytes_in_total"), 2.0);
    assert_eq!(
        get(&m, "lariat_handshake_failures_total{cause=\"proxy\"}"),
        1.0
    );
}

#[test]
fn readyz_turns_503_at_sigterm_while_the_lame_duck_keeps_serving_then_it_drains() {
    const LAME_DUCK: Duration = Duration::from_secs(3);
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--lame-duck",
        "3s",
        "--drain-timeout",
        "10s",
    ]);
    let addr = server.tcp_addr();
    let admin = admin_addr(&server);
    assert_eq!(http(admin, "GET", "/healthz"), (200, "ok\n".into()));
    assert_eq!(http(admin, "GET", "/readyz"), (200, "ready\n".into()));
    assert_eq!(http(admin, "HEAD", "/readyz").0, 200);
    assert_eq!(http(admin, "POST", "/readyz").0, 405);
    assert_eq!(http(admin, "GET", "/nothing-here").0, 404);

    let mut live = client(addr);
    round_trip(&mut live, b"before");
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();

    // Not ready at once; still alive.
    assert!(eventually(Duration::from_secs(1), || http(
        admin, "GET", "/readyz"
    )
    .0 == 503));
    assert_eq!(http(admin, "GET", "/healthz").0, 200);
    // A new client is still accepted and served during the lame duck, and so is the live one.
    let mut late = client(addr);
    round_trip(&mut late, b"during the lame duck");
    round_trip(&mut live, b"still here");
    let m = scrape(admin);
    assert!(
        signalled.elapsed() < LAME_DUCK,
        "too slow to test inside the lame duck: {:?}",
        signalled.elapsed()
    );
    assert_eq!(get(&m, "lariat_lame_duck"), 1.0);
    assert_eq!(get(&m, "lariat_ready"), 0.0);
    assert_eq!(get(&m, "lariat_draining"), 0.0);
    assert_eq!(get(&m, "lariat_accepted_total"), 2.0);
    assert!(server.is_running());

    // After the lame duck, the drain: the clients finish and the process exits 0.
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(admin), "lariat_draining") == Some(1.0)
    }));
    assert!(signalled.elapsed() >= LAME_DUCK);
    assert_eq!(http(admin, "GET", "/readyz").0, 503);
    round_trip(&mut live, b"while draining");
    drop(live);
    drop(late);
    let status = server.wait_exit(Duration::from_secs(10));
    let log = server.stderr();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("lame duck: /readyz answers 503"), "{log}");
    assert!(
        log.contains("lame duck over why=\"the period is over\""),
        "{log}"
    );
    assert!(log.contains("drained"), "{log}");
}

#[test]
fn a_second_signal_skips_the_lame_duck_and_a_third_forces_the_drain() {
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--lame-duck",
        "30s",
        "--drain-timeout",
        "60s",
    ]);
    let addr = server.tcp_addr();
    let admin = admin_addr(&server);
    let mut idle = client(addr);
    round_trip(&mut idle, b"hi");
    let started = Instant::now();

    server.signal(libc::SIGTERM);
    wait_for(admin, "lariat_lame_duck", 1.0);
    server.signal(libc::SIGTERM);
    // The drain begins at once; the idle client holds it open (60 s to go).
    let m = wait_for(admin, "lariat_draining", 1.0);
    assert_eq!(get(&m, "lariat_lame_duck"), 0.0);
    assert_eq!(http(admin, "GET", "/readyz").0, 503);
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.is_running());

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5));
    let log = server.stderr();
    assert_eq!(status.code(), Some(FORCED_EXIT), "{log}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        log.contains("lame duck over why=\"a second signal (SIGTERM) skips it\""),
        "{log}"
    );
    assert!(closed_by_server(&mut idle));
}

#[test]
fn the_connection_list_shows_a_live_client_and_closing_it_by_id_closes_its_socket() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let addr = server.tcp_addr();
    let admin = admin_addr(&server);
    assert_eq!(http(admin, "GET", "/connections"), (200, "[]\n".into()));

    let mut first = client(addr);
    round_trip(&mut first, b"hello");
    let mut second = client(addr);
    round_trip(&mut second, b"hi");
    // Writes are counted when the write call returns, which can be after the client read them.
    wait_for(admin, "lariat_bytes_out_total", 7.0);

    let (status, body) = http(admin, "GET", "/connections");
    assert_eq!(status, 200);
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 2, "{body}");
    let find = |stream: &TcpStream| {
        let peer = stream.local_addr().unwrap().to_string();
        list.iter()
            .find(|c| c["peer"] == peer.as_str())
            .unwrap_or_else(|| panic!("{peer} not in {body}"))
            .clone()
    };
    let one = find(&first);
    assert_eq!(one["bytes_in"], 5);
    assert_eq!(one["bytes_out"], 5);
    assert_eq!(one["handler"], "echo");
    assert!(one["age_ms"].as_u64().unwrap() < 60_000, "{one}");
    let first_id = one["id"].as_u64().unwrap();
    let second_id = find(&second)["id"].as_u64().unwrap();

    // DELETE closes the socket: the client reads EOF.
    let (status, body) = http(admin, "DELETE", &format!("/connections/{first_id}"));
    assert_eq!(status, 200, "{body}");
    assert!(closed_by_server(&mut first), "the client was not closed");
    assert!(eventually(Duration::from_secs(5), || {
        http(admin, "DELETE", &format!("/connections/{first_id}")).0 == 404
    }));
    // So does POST …/close; the other client was untouched until then.
    round_trip(&mut second, b"still open");
    let (status, _) = http(admin, "POST", &format!("/connections/{second_id}/close"));
    assert_eq!(status, 200);
    assert!(closed_by_server(&mut second));

    assert_eq!(http(admin, "DELETE", "/connections/nonsense").0, 400);
    assert_eq!(http(admin, "GET", "/connections/1/close").0, 405);
    assert_eq!(http(admin, "DELETE", "/connections/999999").0, 404);
    assert!(eventually(Duration::from_secs(5), || http(
        admin,
        "GET",
        "/connections"
    )
    .1 == "[]\n"));
    let m = scrape(admin);
    assert_eq!(get(&m, "lariat_closed_total"), 2.0);
}

/// The pids of the successors that took over, from the old processes' logs, in order.
fn successor_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.split("successor_pid=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn a_restart_hands_the_metrics_socket_to_the_successor() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let addr = server.tcp_addr();
    let admin = admin_addr(&server);
    let mut c = client(addr);
    round_trip(&mut c, b"old");
    drop(c);
    wait_for(admin, "lariat_accepted_total", 1.0);

    server.signal(libc::SIGHUP);
    let status = server.wait_exit(Duration::from_secs(20));
    let log = server.stderr();
    let successor = *successor_pids(&log)
        .first()
        .unwrap_or_else(|| panic!("no successor: {log}"));
    let kill_successor = KillOnDrop(successor);
    assert_eq!(status.code(), Some(0), "{log}");
    // The same address answers: the successor's endpoint, on the passed socket (its counters are its own).
    assert_eq!(http(admin, "GET", "/readyz").0, 200);
    let m = scrape(admin);
    assert_eq!(get(&m, "lariat_accepted_total"), 0.0);
    let mut c = client(addr);
    round_trip(&mut c, b"new");
    assert_eq!(
        get(&scrape(admin), "lariat_accepted_total"),
        1.0,
        "{}",
        server.stderr()
    );
    drop(kill_successor);
}

/// Kills a successor the test did not start directly.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process this test started through a restart.
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// The permission bits of a socket file.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `--unix-mode` opens the service's socket to other users; it must not open the admin socket (which
/// reads the connection list) with it: that one has `--metrics-unix-mode`, 0600 unless given.
#[test]
fn the_admin_unix_socket_gets_its_own_mode_not_unix_mode() {
    let dir = std::env::temp_dir().join(format!("lariat-admin-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let service = dir.join("service.sock");
    let admin = dir.join("admin.sock");
    let (service_arg, admin_arg) = (
        format!("unix:{}", service.display()),
        format!("unix:{}", admin.display()),
    );
    {
        let _server = Lariat::start(&[
            "--listen",
            &service_arg,
            "--unix-mode",
            "666",
            "--metrics",
            &admin_arg,
        ]);
        assert_eq!(mode(&service), 0o666);
        assert_eq!(mode(&admin), 0o600, "the admin socket took --unix-mode");
    }
    let _ = std::fs::remove_file(&service);
    let _ = std::fs::remove_file(&admin);
    {
        let _server = Lariat::start(&[
            "--listen",
            &service_arg,
            "--metrics",
            &admin_arg,
            "--metrics-unix-mode",
            "660",
        ]);
        assert_eq!(mode(&admin), 0o660);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
