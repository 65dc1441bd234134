//! `lariat serve --metrics ADDR` and `--lame-duck` (issue 7): the counters scraped over HTTP move with a
//! scripted workload, /healthz and /readyz follow the process through lame duck and drain, and the
//! connection list closes a client by id.

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use common::{admin_addr, eventually, http, http_with, successor_pids, Lariat};
use socket2::{Domain, Socket, Type};

const FORCED_EXIT: i32 = 3;

/// The token the tests configure for the connection routes.
const TOKEN: &str = "test-token-0123456789abcdef";

/// A file holding [`TOKEN`] (mode 0600), unique to the test.
fn token_file(tag: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-token-{tag}-{}", std::process::id()));
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A request with the token.
fn authed(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(
        admin,
        method,
        path,
        &format!("Host: {admin}\r\nAuthorization: Bearer {TOKEN}\r\n"),
    )
}

/// `lariat serve` with `--metrics` and the token configured, and `extra` flags: the server, its
/// address and the endpoint's.
fn with_token(tag: &str, extra: &[&str]) -> (Lariat, SocketAddr, SocketAddr) {
    let token = token_file(tag);
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--admin-token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = Lariat::start(&args);
    // Read at start-up: nothing is left behind.
    let _ = std::fs::remove_file(&token);
    let (addr, admin) = (server.tcp_addr(), admin_addr(&server));
    (server, addr, admin)
}

/// `GET /connections`, parsed (and the body, for messages).
fn listed(admin: SocketAddr) -> (Vec<serde_json::Value>, String) {
    let (status, body) = authed(admin, "GET", "/connections");
    assert_eq!(status, 200, "{body}");
    (serde_json::from_str(&body).unwrap(), body)
}

/// The entry of `list` for the client end `stream`.
fn entry_of(list: &[serde_json::Value], stream: &TcpStream) -> serde_json::Value {
    let peer = stream.local_addr().unwrap().to_string();
    list.iter()
        .find(|c| c["peer"] == peer.as_str())
        .unwrap_or_else(|| panic!("{peer} not in {list:?}"))
        .clone()
}

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
    let (_server, addr, admin) =
        with_token("proxy", &["--proxy-protocol", "v1", "--idle-timeout", "2s"]);

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
    let (status, list) = authed(admin, "GET", "/connections");
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

/// With `--route`, each connection is listed with the handler of the route that took it (and the
/// route's name), not the server's `--handler`.
#[test]
fn the_connection_list_names_the_handler_of_each_connections_route() {
    let (_server, addr, admin) = with_token(
        "routes",
        &["--route", "http=http-hello", "--route", "default=echo"],
    );

    let mut web = client(addr);
    web.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !String::from_utf8_lossy(&answer).contains("Hello, world!") {
        let n = web.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&chunk[..n]);
    }
    let mut plain = client(addr);
    round_trip(&mut plain, b"hello");

    let (list, _) = listed(admin);
    let web = entry_of(&list, &web);
    assert_eq!(web["handler"], "http-hello", "{web}");
    assert_eq!(web["route"], "http", "{web}");
    let plain = entry_of(&list, &plain);
    assert_eq!(plain["handler"], "echo", "{plain}");
    assert_eq!(plain["route"], lariat::route::FALLBACK, "{plain}");
}

#[test]
fn the_connection_list_shows_a_live_client_and_closing_it_by_id_closes_its_socket() {
    let (_server, addr, admin) = with_token("list", &[]);
    assert_eq!(authed(admin, "GET", "/connections"), (200, "[]\n".into()));

    let mut first = client(addr);
    round_trip(&mut first, b"hello");
    let mut second = client(addr);
    round_trip(&mut second, b"hi");
    // Writes are counted when the write call returns, which can be after the client read them.
    wait_for(admin, "lariat_bytes_out_total", 7.0);

    let (list, body) = listed(admin);
    assert_eq!(list.len(), 2, "{body}");
    let find = |stream: &TcpStream| entry_of(&list, stream);
    let one = find(&first);
    assert_eq!(one["bytes_in"], 5);
    assert_eq!(one["bytes_out"], 5);
    assert_eq!(one["handler"], "echo");
    assert!(one["age_ms"].as_u64().unwrap() < 60_000, "{one}");
    let first_id = one["id"].as_u64().unwrap();
    let second_id = find(&second)["id"].as_u64().unwrap();

    // DELETE closes the socket: the client reads EOF.
    let (status, body) = authed(admin, "DELETE", &format!("/connections/{first_id}"));
    assert_eq!(status, 200, "{body}");
    assert!(closed_by_server(&mut first), "the client was not closed");
    assert!(eventually(Duration::from_secs(5), || {
        authed(admin, "DELETE", &format!("/connections/{first_id}")).0 == 404
    }));
    // So does POST …/close; the other client was untouched until then.
    round_trip(&mut second, b"still open");
    let (status, _) = authed(admin, "POST", &format!("/connections/{second_id}/close"));
    assert_eq!(status, 200);
    assert!(closed_by_server(&mut second));

    assert_eq!(authed(admin, "DELETE", "/connections/nonsense").0, 400);
    assert_eq!(authed(admin, "GET", "/connections/1/close").0, 405);
    assert_eq!(authed(admin, "DELETE", "/connections/999999").0, 404);
    assert!(eventually(Duration::from_secs(5), || authed(
        admin,
        "GET",
        "/connections"
    )
    .1 == "[]\n"));
    let m = scrape(admin);
    assert_eq!(get(&m, "lariat_closed_total"), 2.0);
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

/// A connection to `admin` that sends nothing.
fn idle(admin: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&admin, Duration::from_secs(5)).unwrap()
}

/// More idle connections than the endpoint holds at once (64): a health check queued behind them is
/// still answered at once, because connections that have not sent a request give way to it, instead of
/// timing out and getting a healthy process restarted.
#[test]
fn idle_connections_filling_the_admin_endpoint_do_not_delay_healthz() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    let crowd: Vec<TcpStream> = (0..80).map(|_| idle(admin)).collect();
    let asked = Instant::now();
    assert_eq!(http(admin, "GET", "/healthz"), (200, "ok\n".into()));
    let healthz = asked.elapsed();
    let asked = Instant::now();
    assert_eq!(http(admin, "GET", "/readyz").0, 200);
    let readyz = asked.elapsed();
    eprintln!("behind 80 idle connections: /healthz in {healthz:?}, /readyz in {readyz:?}");
    // Well before the 2 s request deadline would have freed the slots.
    assert!(healthz < Duration::from_millis(1500), "{healthz:?}");
    assert!(readyz < Duration::from_millis(1500), "{readyz:?}");
    drop(crowd);
}

/// A client sending its request a byte at a time, too slowly, is closed at the request deadline (2 s),
/// not held for 10 s.
#[test]
fn a_slow_request_is_closed_at_the_deadline() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    let mut slow = idle(admin);
    slow.write_all(b"GET /met").unwrap();
    let started = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "held for {elapsed:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

/// Sends `raw` and reads the answer to the close; its status.
fn raw_status(admin: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = idle(admin);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

/// A request body (no route takes one) is read and dropped, chunked or not, up to 64 KiB; a larger one
/// gets 413, a malformed request 400, an oversized head 431, and `HEAD` the head alone.
#[test]
fn bodies_are_read_and_dropped_and_bad_requests_get_an_answer() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let admin = admin_addr(&server);
    let (status, answer) = raw_status(
        admin,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(status, 405, "{answer}");
    assert!(answer.contains("allow: GET, HEAD\r\n"), "{answer}");
    let (status, answer) = raw_status(
        admin,
        b"POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(status, 405, "{answer}");
    let mut big = format!(
        "POST /metrics HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        100 * 1024
    )
    .into_bytes();
    big.resize(big.len() + 100 * 1024, b'x');
    assert_eq!(raw_status(admin, &big).0, 413);
    assert_eq!(raw_status(admin, b"\x01\x02 nonsense\r\n\r\n").0, 400);
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(16 * 1024));
    assert_eq!(raw_status(admin, huge.as_bytes()).0, 431);
    let (status, answer) = raw_status(admin, b"HEAD /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer:?}");
    assert!(answer.contains("content-length: 3\r\n"), "{answer:?}");
}

/// The connection routes need the token: without it nothing is closed and nothing listed; with it the
/// client is closed. Without a configured token they are disabled.
#[test]
fn closing_a_connection_needs_the_token() {
    let (_server, addr, admin) = with_token("close", &[]);
    let mut victim = client(addr);
    round_trip(&mut victim, b"hello");
    let id = listed(admin).0[0]["id"].as_u64().unwrap();

    let host = format!("Host: {admin}\r\n");
    let wrong = format!("{host}Authorization: Bearer {TOKEN}x\r\n");
    for headers in [host.as_str(), wrong.as_str()] {
        assert_eq!(http_with(admin, "GET", "/connections", headers).0, 401);
        assert_eq!(
            http_with(admin, "DELETE", &format!("/connections/{id}"), headers).0,
            401
        );
        assert_eq!(
            http_with(admin, "POST", &format!("/connections/{id}/close"), headers).0,
            401
        );
    }
    round_trip(&mut victim, b"survived");
    // Health and metrics need no token.
    assert_eq!(http(admin, "GET", "/healthz").0, 200);
    assert_eq!(http(admin, "GET", "/metrics").0, 200);

    assert_eq!(
        authed(admin, "POST", &format!("/connections/{id}/close")).0,
        200
    );
    assert!(closed_by_server(&mut victim));

    // No token configured: the routes are disabled, even for a request that offers one.
    let plain = Lariat::start(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let admin = admin_addr(&plain);
    let mut kept = client(plain.tcp_addr());
    round_trip(&mut kept, b"hi");
    assert_eq!(authed(admin, "GET", "/connections").0, 403);
    assert_eq!(authed(admin, "DELETE", "/connections/1").0, 403);
    assert_eq!(authed(admin, "POST", "/connections/1/close").0, 403);
    round_trip(&mut kept, b"still open");
}

/// What a web page could send: a cross-site form (an `Origin` header) or a request through a hostile
/// name resolved to this address (a foreign `Host`). Both are refused, token or not; health checks are
/// answered whatever they carry; a name given with `--admin-host` is accepted.
#[test]
fn cross_site_requests_and_foreign_hosts_are_refused() {
    let (_server, addr, admin) = with_token("origin", &["--admin-host", "metrics.internal"]);
    let mut victim = client(addr);
    round_trip(&mut victim, b"hello");
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let cross_site = format!("Host: {admin}\r\nOrigin: https://evil.example\r\n{auth}");
    let rebound = format!("Host: evil.example:{}\r\n{auth}", admin.port());
    for headers in [cross_site.as_str(), rebound.as_str()] {
        assert_eq!(
            http_with(admin, "POST", "/connections/1/close", headers).0,
            403
        );
        assert_eq!(http_with(admin, "GET", "/connections", headers).0, 403);
        assert_eq!(http_with(admin, "GET", "/metrics", headers).0, 403);
        assert_eq!(http_with(admin, "GET", "/healthz", headers).0, 200);
        assert_eq!(http_with(admin, "GET", "/readyz", headers).0, 200);
    }
    round_trip(&mut victim, b"survived");
    let named = format!("Host: metrics.internal:{}\r\n{auth}", admin.port());
    assert_eq!(http_with(admin, "GET", "/connections", &named).0, 200);
    let localhost = format!("Host: localhost:{}\r\n", admin.port());
    assert_eq!(http_with(admin, "GET", "/metrics", &localhost).0, 200);
    // No Host at all (an HTTP/1.0 health checker or script): not a browser.
    assert_eq!(http_with(admin, "GET", "/metrics", "").0, 200);
}

/// The endpoint's options where they would do nothing, or a token too weak to protect anything, stop
/// the start with an error naming the option.
#[test]
fn admin_options_that_would_do_nothing_are_refused() {
    let short = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-token-short-{}", std::process::id()));
    std::fs::write(&short, "hunter2\n").unwrap();
    let short = short.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--admin-token-file", short], "--admin-token-file"),
        (&["--admin-host", "metrics.internal"], "--admin-host"),
        (&["--metrics-unix-mode", "600"], "--metrics-unix-mode"),
        (
            &["--metrics", "127.0.0.1:0", "--metrics-unix-mode", "600"],
            "--metrics-unix-mode",
        ),
        (
            &["--metrics", "127.0.0.1:0", "--admin-token-file", short],
            "--admin-token-file",
        ),
    ];
    for (args, flag) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lariat"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let _ = std::fs::remove_file(short);
}

/// The same over a Unix `--metrics` socket, whose queue length the kernel does not report (whether it
/// is empty is enough).
#[test]
fn idle_connections_filling_a_unix_admin_socket_do_not_delay_healthz() {
    use std::os::unix::net::UnixStream;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-crowd-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let metrics = format!("unix:{}", path.display());
    let _server = Lariat::start(&["--listen", "127.0.0.1:0", "--metrics", &metrics]);
    let crowd: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let asked = Instant::now();
    let mut health = UnixStream::connect(&path).unwrap();
    health
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    health
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).unwrap();
    let took = asked.elapsed();
    eprintln!("behind 80 idle Unix connections: /healthz in {took:?}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    drop(crowd);
}
