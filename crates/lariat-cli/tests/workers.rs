//! `lariat serve --workers 2`: two processes accepting from one shared socket. A worker killed with
//! SIGKILL leaves its not-yet-accepted clients in the shared queue, where its sibling serves them, and
//! it is restarted; SIGHUP replaces the workers under load without a failed connection; SIGTERM drains
//! them all.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{churn_once, eventually, Lariat};

const PATIENCE: Duration = Duration::from_secs(10);

/// The worker pids the supervisor reported ready, in order.
fn worker_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("worker ready"))
        .filter_map(|l| l.split("worker_pid=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started (through the supervisor).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
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
