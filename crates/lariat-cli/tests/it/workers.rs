//! `lariat serve --workers 2`: two processes accepting from one shared socket. A worker killed with
//! SIGKILL leaves its not-yet-accepted clients in the shared queue, where its sibling serves them, and
//! it is restarted; SIGHUP replaces the workers under load without a failed connection; SIGTERM drains
//! them all. Then the edge cases found in review: a worker dying while its replacement starts, a
//! handing-over worker across the supervisor's drain, a pid-1 supervisor, a SIGTERM right after a
//! replacement became ready.

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{churn_once, eventually, is_alive, signal, Lariat};

const PATIENCE: Duration = Duration::from_secs(10);

/// The worker pids the supervisor reported ready, in order.
fn worker_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("worker ready"))
        .filter_map(|l| l.split("worker_pid=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn start_workers(extra: &[&str]) -> (Lariat, SocketAddr, Vec<u32>) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "2"];
    args.extend_from_slice(extra);
    let server = Lariat::start(&args);
    let addr = server.tcp_addr();
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 2));
    let pids = worker_pids(&server.stderr());
    (server, addr, pids)
}

#[test]
fn a_killed_workers_queued_clients_are_served_by_its_sibling_and_it_is_restarted() {
    let (mut server, addr, pids) = start_workers(&[]);
    let (victim, sibling) = (pids[0], pids[1]);
    // Neither worker accepts now: every client below completes its handshake and waits in the queue.
    signal(victim, libc::SIGSTOP);
    signal(sibling, libc::SIGSTOP);
    let mut clients = Vec::new();
    for i in 0..100u32 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(format!("hello {i:03}").as_bytes()).unwrap();
        clients.push(s);
    }
    signal(victim, libc::SIGKILL);
    signal(sibling, libc::SIGCONT);
    for (i, s) in clients.iter_mut().enumerate() {
        let mut back = [0u8; 9];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("client {i} was not served: {e}"));
        assert_eq!(back, format!("hello {i:03}").as_bytes());
    }
    // The supervisor restarts the killed worker.
    assert!(
        eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 3),
        "no restart: {}",
        server.stderr()
    );
    let fresh = worker_pids(&server.stderr())[2];
    assert!(is_alive(fresh) && !pids.contains(&fresh));
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"after").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();

    // Clients that leave let the drain finish at once.
    drop(clients);
    drop(s);
    signal(server.pid(), libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
    assert!(eventually(PATIENCE, || !is_alive(sibling) && !is_alive(fresh)));
}

struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn churn(addr: SocketAddr, clients: u8) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let threads = (0..clients)
        .map(|i| {
            let (stop, served, failed, errors) =
                (stop.clone(), served.clone(), failed.clone(), errors.clone());
            let source = Ipv4Addr::new(127, 0, 3, 1 + i);
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    match churn_once(source, addr) {
                        Ok(()) => served.fetch_add(1, Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(e.to_string());
                            failed.fetch_add(1, Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    Load {
        stop,
        served,
        failed,
        errors,
        threads,
    }
}

impl Load {
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.served.load(Relaxed), self.failed.load(Relaxed), errors)
    }
}

#[test]
fn sighup_replaces_the_workers_under_churn_without_a_failed_connection() {
    let (mut server, addr, pids) = start_workers(&[]);
    let load = churn(addr, 8);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        signal(server.pid(), libc::SIGHUP);
        let before = worker_pids(&server.stderr()).len();
        assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len()
            == before + 2));
        std::thread::sleep(Duration::from_millis(300));
    }
    let (served, failed, errors) = load.finish();
    assert_eq!(failed, 0, "failed connections: {errors:?}");
    assert!(served > 100, "only {served} served");
    // The first generation handed over and exited.
    assert!(eventually(PATIENCE, || pids.iter().all(|p| !is_alive(*p))));
    signal(server.pid(), libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
}

#[test]
fn sigkill_under_churn_costs_at_most_the_killed_workers_own_connections() {
    let (mut server, addr, pids) = start_workers(&[]);
    let load = churn(addr, 8);
    std::thread::sleep(Duration::from_millis(500));
    signal(pids[0], libc::SIGKILL);
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 3));
    std::thread::sleep(Duration::from_millis(500));
    let (served, failed, errors) = load.finish();
    // Each of the 8 clients has at most one connection open, so at most 8 can have been inside the
    // killed worker; nothing queued is lost.
    assert!(failed <= 8, "{failed} failed: {errors:?}");
    assert!(served > 100, "only {served} served");
    eprintln!("served {served}, failed {failed} (in the killed worker)");
    signal(server.pid(), libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_drains_every_worker_and_the_supervisor_exits_zero() {
    let (mut server, addr, pids) = start_workers(&["--drain-timeout", "5s"]);
    // A live connection in some worker, mid-conversation.
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(PATIENCE)).unwrap();
    live.write_all(b"one").unwrap();
    let mut back = [0u8; 3];
    live.read_exact(&mut back).unwrap();
    signal(server.pid(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    // Still served during the drain; new clients are not admitted.
    live.write_all(b"two").unwrap();
    live.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"two");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "a new client got in during the drain"
    );
    drop(live);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}: {}", server.stderr());
    assert!(pids.iter().all(|p| !is_alive(*p)));
}

#[test]
fn the_supervisor_answers_readyz_for_the_group_through_a_lame_duck() {
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--metrics",
        "127.0.0.1:0",
        "--lame-duck",
        "1500ms",
    ]);
    let mut server = server;
    let addr = server.tcp_addr();
    let admin = common::admin_addr(&server);
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 2));
    let pids = worker_pids(&server.stderr());
    assert_eq!(common::http(admin, "GET", "/readyz").0, 200);
    assert_eq!(common::http(admin, "GET", "/healthz").0, 200);
    // The connection list lives in the workers.
    assert_eq!(common::http(admin, "GET", "/connections").0, 404);

    signal(server.pid(), libc::SIGTERM);
    assert!(eventually(Duration::from_secs(1), || common::http(
        admin, "GET", "/readyz"
    )
    .0 == 503));
    // Still serving during the lame duck.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"lame").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"lame");
    drop(s);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}: {}", server.stderr());
    assert!(eventually(PATIENCE, || pids.iter().all(|p| !is_alive(*p))));
    // The workers never bound the metrics address themselves.
    assert!(!server.stderr().contains("binding the --metrics address"));
}

/// Live (non-zombie) children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.retain(|p| is_alive(*p));
    out.sort();
    out.dedup();
    out
}

/// SIGHUP, then the old worker dies while its replacement is still starting: the replacement takes the
/// slot and no second worker is started for it.
#[test]
fn a_worker_dying_while_its_replacement_starts_leaves_one_worker() {
    let (mut server, sup, w0, r) = one_worker_being_replaced();
    // Held before it says READY.
    signal(r, libc::SIGSTOP);
    assert!(!server.stderr().contains("old worker handing over"));
    signal(w0, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    signal(r, libc::SIGCONT);
    assert!(
        eventually(PATIENCE, || worker_pids(&server.stderr()).contains(&r)),
        "{}",
        server.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    let live = children(sup);
    signal(sup, libc::SIGTERM);
    let _ = server.wait_exit(PATIENCE);
    assert_eq!(live, vec![r], "--workers 1 runs {live:?}");
}

/// A worker handing over after SIGHUP still has a live connection when the supervisor is told to
/// stop: the supervisor waits for it (it does not exit and let the parent-death signal force it), and
/// the connection is served to its end.
#[test]
fn a_handing_over_workers_connection_is_served_through_the_supervisors_drain() {
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--drain-timeout",
        "10s",
    ]);
    let addr = server.tcp_addr();
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 1));
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut back = [0u8; 3];
    live.write_all(b"one").unwrap();
    live.read_exact(&mut back).unwrap();
    signal(server.pid(), libc::SIGHUP);
    assert!(eventually(PATIENCE, || server
        .stderr()
        .contains("old worker handing over")));
    signal(server.pid(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.is_running(), "the supervisor left a worker draining");
    live.write_all(b"two").unwrap();
    live.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"two");
    drop(live);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}: {}", server.stderr());
    assert!(!server.stderr().contains("second signal"));
}

/// `--workers 1`, then SIGHUP: the server, the supervisor's pid, the first worker's, and its
/// replacement's as soon as it exists (before it is ready).
fn one_worker_being_replaced() -> (Lariat, u32, u32, u32) {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 1));
    let w0 = worker_pids(&server.stderr())[0];
    let sup = server.pid();
    signal(sup, libc::SIGHUP);
    let r = catch_new_worker(sup, w0);
    (server, sup, w0, r)
}

/// Waits for a worker process of `sup` other than `old` to appear; returns its pid.
fn catch_new_worker(sup: u32, old: u32) -> u32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = children(sup).into_iter().find(|p| {
            *p != old
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("--as-worker"))
                    .unwrap_or(false)
        });
        if let Some(p) = found {
            return p;
        }
        assert!(Instant::now() < deadline, "no new worker started");
    }
}

/// A supervisor that is pid 1 of its namespace (a container's entrypoint): its workers must not take
/// their parent for dead (they compare with its pid, not with 1) and drain and restart in a loop.
/// Skipped where unprivileged user namespaces are not allowed.
#[test]
fn a_pid1_supervisor_keeps_its_workers() {
    // Run the supervisor as PID 1 of a new PID namespace (a container's entrypoint).
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--pid", "--fork"])
        .arg(env!("CARGO_BIN_EXE_lariat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"]);
    if !std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--pid", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: unshare --pid is not allowed here");
        return;
    }
    let mut server = Lariat::from_command(cmd, 1);
    std::thread::sleep(Duration::from_secs(2));
    let log = server.stderr();
    let restarts = log.matches("exited unasked").count();
    signal(server.pid(), libc::SIGKILL);
    let _ = server.wait_exit(PATIENCE);
    assert_eq!(
        restarts, 0,
        "workers keep draining and restarting as pid 1's children: {restarts} restarts in 2 s"
    );
}

/// SIGTERM arrives while a replacement has said READY (it may serve) but the supervisor has not read
/// it yet (held with SIGSTOP): the supervisor collects it and drains it with the others, rather than
/// killing it or leaving it untracked.
#[test]
fn a_replacement_ready_as_the_drain_begins_is_drained_with_the_others() {
    let (mut server, sup, w0, r) = one_worker_being_replaced();
    signal(sup, libc::SIGSTOP);
    // The replacement says READY and serves while the supervisor is stopped.
    std::thread::sleep(Duration::from_millis(700));
    signal(sup, libc::SIGTERM);
    signal(sup, libc::SIGCONT);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}: {}", server.stderr());
    assert!(
        worker_pids(&server.stderr()).contains(&r)
            || server.stderr().contains("ready as the drain begins"),
        "the replacement that served was never tracked: {}",
        server.stderr()
    );
    assert!(eventually(PATIENCE, || !is_alive(r) && !is_alive(w0)));
}

/// Ctrl-C in a terminal and systemd's default `KillMode=control-group` signal every process of the
/// group at once. The workers must leave it to the supervisor: they keep accepting through its lame duck
/// (clients queued meanwhile would otherwise wait on a socket nobody accepts from), then drain on its
/// word, and the forwarded instruction is not taken for a second signal that closes everything.
#[test]
fn a_sigterm_to_the_whole_group_gives_a_clean_drain_through_the_lame_duck() {
    let (mut server, addr, pids) = start_workers(&["--lame-duck", "5s", "--drain-timeout", "10s"]);
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut back = [0u8; 3];
    live.write_all(b"one").unwrap();
    live.read_exact(&mut back).unwrap();
    let load = churn(addr, 4);
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal_group(libc::SIGTERM);
    // Clients keep coming during the lame duck: every one is served.
    std::thread::sleep(Duration::from_millis(1500));
    let (served, failed, errors) = load.finish();
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "too slow to stay inside the lame duck: {:?}",
        signalled.elapsed()
    );
    assert_eq!(
        failed,
        0,
        "clients failed in the lame duck: {errors:?}\n{}",
        server.stderr()
    );
    assert!(served > 10, "only {served} served");
    // Then the drain: the live connection is still served, and finishing it ends the drain cleanly.
    assert!(eventually(PATIENCE, || server
        .stderr()
        .contains("draining: no new clients")));
    live.write_all(b"two").unwrap();
    live.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"two");
    drop(live);
    let status = server.wait_exit(PATIENCE);
    let log = server.stderr();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("second signal"), "{log}");
    assert!(eventually(PATIENCE, || pids.iter().all(|p| !is_alive(*p))));
}

/// The same with two group-wide signals (Ctrl-C twice): the second one forces, through the supervisor.
#[test]
fn a_second_group_wide_signal_forces_the_workers() {
    let (mut server, addr, pids) = start_workers(&["--drain-timeout", "60s"]);
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut back = [0u8; 3];
    live.write_all(b"one").unwrap();
    live.read_exact(&mut back).unwrap();
    server.signal_group(libc::SIGINT);
    assert!(eventually(PATIENCE, || server
        .stderr()
        .contains("draining: no new clients")));
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.is_running(), "{}", server.stderr());
    server.signal_group(libc::SIGINT);
    let status = server.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(3), "{}", server.stderr());
    assert!(eventually(PATIENCE, || pids.iter().all(|p| !is_alive(*p))));
}

/// SIGUSR1 (the documented certificate reload) to a supervisor: it and its workers stay up and serve.
#[test]
fn sigusr1_keeps_the_supervisor_and_its_workers_serving() {
    let (mut server, addr, pids) = start_workers(&[]);
    for sig in [libc::SIGUSR1, libc::SIGUSR2] {
        server.signal(sig);
    }
    // And once to the whole group, as `systemctl kill -s USR1` does by default.
    server.signal_group(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.is_running(), "{}", server.stderr());
    assert!(pids.iter().all(|p| is_alive(*p)), "{}", server.stderr());
    for _ in 0..10 {
        churn_once(Ipv4Addr::LOCALHOST, addr).unwrap();
    }
    assert_eq!(
        worker_pids(&server.stderr()).len(),
        2,
        "{}",
        server.stderr()
    );
    signal(server.pid(), libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
}

/// A supervisor killed outright (SIGKILL: no drain of its own): its workers get the drain instruction as
/// their parent-death signal, serve their live connection to its end, and exit, rather than serving on
/// unsupervised.
#[test]
fn a_killed_supervisors_workers_drain_and_exit() {
    let (mut server, addr, pids) = start_workers(&["--drain-timeout", "10s"]);
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut back = [0u8; 3];
    live.write_all(b"one").unwrap();
    live.read_exact(&mut back).unwrap();
    signal(server.pid(), libc::SIGKILL);
    let _ = server.wait_exit(PATIENCE);
    std::thread::sleep(Duration::from_millis(300));
    // Still served while the workers drain.
    live.write_all(b"two").unwrap();
    live.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"two");
    drop(live);
    assert!(
        eventually(PATIENCE, || pids.iter().all(|p| !is_alive(*p))),
        "workers outlived their supervisor: {}",
        server.stderr()
    );
}

#[test]
fn sighup_moves_a_replaced_workers_connections_to_its_replacement() {
    let server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--drain-timeout",
        "20s",
    ]);
    let addr = server.tcp_addr();
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 1));
    let old = worker_pids(&server.stderr())[0];
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(PATIENCE)).unwrap();
            let line = format!("before {i:02}\n");
            c.write_all(line.as_bytes()).unwrap();
            let mut back = vec![0u8; line.len()];
            c.read_exact(&mut back).unwrap();
            c
        })
        .collect();
    signal(server.pid(), libc::SIGHUP);
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 2));
    let new = worker_pids(&server.stderr())[1];
    // The old worker had 20 s to drain its connections; it is gone at once: they moved.
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(old)),
        "the old worker is still draining:\n{}",
        server.stderr()
    );
    for (i, c) in conns.iter_mut().enumerate() {
        let line = format!("after {i:02}\n");
        c.write_all(line.as_bytes()).unwrap();
        let mut back = vec![0u8; line.len()];
        c.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", server.stderr()));
        assert_eq!(back, line.as_bytes());
    }
    assert!(is_alive(new));
    assert!(
        server.stderr().contains("resumed=20 "),
        "{}",
        server.stderr()
    );
}
