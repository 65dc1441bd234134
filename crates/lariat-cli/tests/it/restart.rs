//! `lariat serve` on SIGHUP: a hitless restart that refuses and resets no client (issue 4).

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{churn_once, eventually, is_alive, successor_pids, Lariat};

const CLIENTS: usize = 32;
const RESTARTS: usize = 10;
const LOAD: Duration = Duration::from_secs(10);

fn kill(pid: u32) {
    // SAFETY: kill(2) on a process this test started (directly or through restarts).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

#[test]
fn ten_restarts_under_churn_lose_no_connection() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "10s"]);
    let addr = server.tcp_addr();
    let first_pid = server.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, served, failed, first_error) = (
                stop.clone(),
                served.clone(),
                failed.clone(),
                first_error.clone(),
            );
            let source = Ipv4Addr::new(127, 0, 1, 1 + i as u8);
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    match churn_once(source, addr) {
                        Ok(()) => served.fetch_add(1, Relaxed),
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e.to_string());
                            failed.fetch_add(1, Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut serving = first_pid;
    for restart in 1..=RESTARTS {
        // Spread the restarts over the load period.
        let at = LOAD * restart as u32 / (RESTARTS as u32 + 1);
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        // SAFETY: kill(2) on the serving lariat.
        unsafe {
            libc::kill(serving as libc::pid_t, libc::SIGHUP);
        }
        assert!(
            eventually(Duration::from_secs(10), || successor_pids(&server.stderr())
                .len()
                == restart),
            "restart {restart} did not complete: {}",
            server.stderr()
        );
        serving = *successor_pids(&server.stderr()).last().unwrap();
    }
    std::thread::sleep(LOAD.saturating_sub(started.elapsed()));
    stop.store(true, Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let elapsed = started.elapsed();
    let pids = successor_pids(&server.stderr());
    let (served, failed) = (served.load(Relaxed), failed.load(Relaxed));
    eprintln!(
        "{served} connections in {elapsed:.1?} ({:.0}/s), {failed} failed, {RESTARTS} restarts, pids {first_pid} -> {pids:?}",
        served as f64 / elapsed.as_secs_f64()
    );

    // The last successor still serves; every earlier process exited.
    let last = *pids.last().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    drop(c);
    let old_exited = eventually(Duration::from_secs(15), || {
        !server.is_running() && pids[..pids.len() - 1].iter().all(|&p| !is_alive(p))
    });
    assert!(is_alive(last));
    kill(last);

    let log = server.stderr();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("hand-over"))
        .collect();
    assert_eq!(
        failed,
        0,
        "first error: {:?}; the servers' warnings and hand-overs:\n{}",
        first_error.lock().unwrap(),
        warnings.join("\n")
    );
    assert!(served > 0);
    assert_eq!(pids.len(), RESTARTS);
    assert!(!pids.contains(&first_pid));
    assert!(old_exited, "an old process did not exit");
    assert_eq!(server.wait_exit(Duration::from_secs(1)).code(), Some(0));
}

/// Writes an executable script standing in for a broken successor.
fn script(name: &str, body: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("lariat-{name}-{}.sh", std::process::id()));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn still_serves(server: &mut Lariat) {
    assert!(server.is_running());
    let mut c = TcpStream::connect(server.tcp_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

#[test]
fn a_successor_that_crashes_leaves_the_old_process_serving() {
    let crash = script("crash", "exit 7");
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--restart-binary",
        crash.to_str().unwrap(),
    ]);
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || server
        .stderr()
        .contains("exited before it was ready")));
    still_serves(&mut server);
    // And a later restart can still be tried.
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || server
        .stderr()
        .matches("exited before it was ready")
        .count()
        == 2));
    still_serves(&mut server);
    let _ = std::fs::remove_file(crash);
}

#[test]
fn a_successor_that_never_gets_ready_is_killed_and_the_old_process_keeps_serving() {
    let pid_file = std::env::temp_dir().join(format!("lariat-hang-{}.pid", std::process::id()));
    let hang = script(
        "hang",
        &format!("echo $$ > {}\nexec sleep 60", pid_file.display()),
    );
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--restart-binary",
        hang.to_str().unwrap(),
        "--restart-timeout",
        "1s",
    ]);
    server.signal(libc::SIGHUP);
    // A SIGHUP during the wait is ignored: one restart at a time.
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || server
        .stderr()
        .contains("was not ready within")));
    assert!(server.stderr().contains("already in progress"));
    still_serves(&mut server);
    let hung: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !is_alive(hung)),
        "the hung successor was not killed"
    );
    let _ = std::fs::remove_file(hang);
    let _ = std::fs::remove_file(pid_file);
}

#[test]
fn a_unix_socket_keeps_its_path_across_a_restart() {
    let path = std::env::temp_dir().join(format!("lariat-restart-{}.sock", std::process::id()));
    let listen = format!("unix:{}", path.display());
    let mut server = Lariat::start(&["--listen", &listen]);
    let mut before = std::os::unix::net::UnixStream::connect(&path).unwrap();
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || successor_pids(
        &server.stderr()
    )
    .len()
        == 1));
    let successor = successor_pids(&server.stderr())[0];
    // The old process drains its own connection, then exits without unlinking the successor's path.
    before.write_all(b"old").unwrap();
    let mut back = [0u8; 3];
    before.read_exact(&mut back).unwrap();
    drop(before);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        path.exists(),
        "the old process removed the successor's socket path"
    );
    let mut after = std::os::unix::net::UnixStream::connect(&path).unwrap();
    after.write_all(b"new").unwrap();
    after.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"new");
    drop(after);
    // The successor owns the path now: its own drain removes it.
    // SAFETY: kill(2) on the successor this test caused.
    unsafe {
        libc::kill(successor as libc::pid_t, libc::SIGTERM);
    }
    assert!(eventually(Duration::from_secs(10), || !path.exists()));
    assert!(eventually(Duration::from_secs(10), || !is_alive(successor)));
}

#[test]
fn a_successor_that_fails_after_adopting_leaves_the_unix_path_alone() {
    let path =
        std::env::temp_dir().join(format!("lariat-restart-fail-{}.sock", std::process::id()));
    let listen = format!("unix:{}", path.display());
    // The successor adopts the socket, then fails to bind an address that is not on this machine.
    let failing = script(
        "fail-after-adopt",
        &format!(
            "exec {} \"$@\" --listen 192.0.2.1:80",
            env!("CARGO_BIN_EXE_lariat")
        ),
    );
    let server = Lariat::start(&[
        "--listen",
        &listen,
        "--restart-binary",
        failing.to_str().unwrap(),
    ]);
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || server
        .stderr()
        .contains("exited before it was ready")));
    assert!(
        server.stderr().contains("adopted a passed socket"),
        "{}",
        server.stderr()
    );
    assert!(
        path.exists(),
        "the failed successor removed the path the old process serves"
    );
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.write_all(b"still").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still");
    let _ = std::fs::remove_file(failing);
}

/// `systemctl stop` during a restart's drain: SIGTERM reaches the successor and the old process still
/// draining. That first signal must not force the old process: its clients are served to their end.
#[test]
fn the_first_sigterm_after_a_hand_over_keeps_the_old_process_draining() {
    // A connection that stays in the old process (moving turned off), as a TLS one would.
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "20s",
        "--hand-over-window",
        "0",
    ]);
    let addr = server.tcp_addr();
    let mut live = TcpStream::connect(addr).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut back = [0u8; 3];
    live.write_all(b"one").unwrap();
    live.read_exact(&mut back).unwrap();
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || successor_pids(
        &server.stderr()
    )
    .len()
        == 1));
    let successor = successor_pids(&server.stderr())[0];
    // Every process of the unit, as systemd's default KillMode does.
    server.signal_group(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.is_running(), "{}", server.stderr());
    live.write_all(b"two").unwrap();
    live.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"two");
    drop(live);
    let status = server.wait_exit(Duration::from_secs(10));
    let log = server.stderr();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("already draining; a second signal"), "{log}");
    assert!(eventually(Duration::from_secs(10), || !is_alive(successor)));
}

/// A second signal still forces the old process.
#[test]
fn a_second_sigterm_after_a_hand_over_forces_the_old_process() {
    // A connection that stays in the old process (moving turned off), as a TLS one would.
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "20s",
        "--hand-over-window",
        "0",
    ]);
    let mut live = TcpStream::connect(server.tcp_addr()).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    live.write_all(b"one").unwrap();
    let mut back = [0u8; 3];
    live.read_exact(&mut back).unwrap();
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || successor_pids(
        &server.stderr()
    )
    .len()
        == 1));
    let successor = successor_pids(&server.stderr())[0];
    server.signal(libc::SIGTERM);
    assert!(eventually(Duration::from_secs(5), || server
        .stderr()
        .contains("already draining; a second signal")));
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "{}", server.stderr());
    kill(successor);
}

/// A stop signal to the whole group reaches the old process just as its successor is ready (the old
/// one was stopped meanwhile, so it sees both at once). However the old process orders the two, the
/// successor drains its clients once, after its whole lame duck: what the old process passes on is not a
/// second signal that cuts the lame duck short or forces the drain. Four rounds: the old process picks
/// either order at random.
#[test]
fn a_group_signal_racing_a_successors_ready_does_not_force_the_successor() {
    let slow = script(
        "slow-successor",
        &format!("sleep 0.5; exec {} \"$@\"", env!("CARGO_BIN_EXE_lariat")),
    );
    for round in 0..4 {
        let mut server = Lariat::start(&[
            "--listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "20s",
            "--lame-duck",
            "300ms",
            "--restart-binary",
            slow.to_str().unwrap(),
        ]);
        let addr = server.tcp_addr();
        server.signal(libc::SIGHUP);
        assert!(eventually(Duration::from_secs(10), || server
            .stderr()
            .contains("restart: successor started")));
        server.signal(libc::SIGSTOP);
        // The successor says READY (unread) and serves this client.
        assert!(eventually(Duration::from_secs(10), || !server
            .later_stdout()
            .is_empty()));
        let mut live = TcpStream::connect(addr).unwrap();
        live.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut back = [0u8; 3];
        live.write_all(b"one").unwrap();
        live.read_exact(&mut back).unwrap();
        server.signal_group(libc::SIGTERM);
        server.signal(libc::SIGCONT);
        assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
        // The successor still serves its client, then exits when it leaves.
        live.write_all(b"two").unwrap();
        live.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"two", "round {round}");
        let log = server.stderr();
        let successor = *successor_pids(&log)
            .first()
            .unwrap_or_else(|| panic!("no hand-over: {log}"));
        drop(live);
        assert!(
            eventually(Duration::from_secs(10), || !is_alive(successor)),
            "{log}"
        );
        let log = server.stderr();
        assert!(
            !log.contains("closing every connection now"),
            "round {round}: {log}"
        );
        // Nor does the pair cut the successor's lame duck short.
        assert!(
            log.contains("lame duck over why=\"the period is over\"") && !log.contains("skips it"),
            "round {round}: {log}"
        );
    }
    let _ = std::fs::remove_file(slow);
}

/// A successor not ready in time is stopped with SIGTERM first (a lariat successor then exits without
/// serving, or drains what it accepted), and killed only if it ignores it.
#[test]
fn a_successor_given_up_on_gets_sigterm_before_sigkill() {
    let mark = std::env::temp_dir().join(format!("lariat-term-{}.mark", std::process::id()));
    let _ = std::fs::remove_file(&mark);
    let slow = script(
        "term-trap",
        &format!(
            "trap 'echo term > {}; exit 0' TERM\nwhile :; do sleep 0.05; done",
            mark.display()
        ),
    );
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--restart-binary",
        slow.to_str().unwrap(),
        "--restart-timeout",
        "500ms",
    ]);
    server.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || server
        .stderr()
        .contains("was not ready within")));
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap_or_default().trim(),
        "term",
        "the successor was not sent SIGTERM: {}",
        server.stderr()
    );
    still_serves(&mut server);
    let _ = std::fs::remove_file(mark);
    let _ = std::fs::remove_file(slow);
}

/// A successor whose READY comes after the old process gave up on it learns so (the READY fails) and
/// exits without serving, leaving the sockets to the old process untouched.
#[test]
fn a_successor_ready_after_the_deadline_exits_without_serving() {
    let late = script(
        "late",
        &format!(
            "trap '' TERM\nsleep 1\nexec {} \"$@\"",
            env!("CARGO_BIN_EXE_lariat")
        ),
    );
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--restart-binary",
        late.to_str().unwrap(),
        "--restart-timeout",
        "300ms",
    ]);
    server.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || server
            .stderr()
            .contains("no longer waits for our READY")),
        "{}",
        server.stderr()
    );
    assert!(
        !server.stderr().contains("handing over"),
        "{}",
        server.stderr()
    );
    for _ in 0..5 {
        still_serves(&mut server);
    }
    let _ = std::fs::remove_file(late);
}
