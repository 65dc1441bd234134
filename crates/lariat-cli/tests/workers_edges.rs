//! Edge cases of the `--workers` supervisor, found in review: a worker that dies while its replacement
//! starts (the slot keeps one worker, not two), a handing-over worker's connection across the
//! supervisor's drain, a supervisor that is pid 1 (a container), and a SIGTERM right after a
//! replacement became ready.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{eventually, Lariat};

const PATIENCE: Duration = Duration::from_secs(10);

fn worker_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("worker ready"))
        .filter_map(|l| l.split("worker_pid=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn signal(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
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
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 1));
    let w0 = worker_pids(&server.stderr())[0];
    let sup = server.pid();
    signal(sup, libc::SIGHUP);
    let r = catch_new_worker(sup, w0);
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
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    assert!(eventually(PATIENCE, || worker_pids(&server.stderr()).len() == 1));
    let w0 = worker_pids(&server.stderr())[0];
    let sup = server.pid();
    signal(sup, libc::SIGHUP);
    let r = catch_new_worker(sup, w0);
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
