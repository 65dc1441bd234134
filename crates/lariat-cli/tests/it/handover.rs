//! `lariat serve` on SIGHUP moves its live connections to the successor: the sockets themselves, with
//! the bytes read and not yet echoed, so a client sees a pause and never a close.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, is_alive, signal, successor_pids, Lariat};

/// The pids of the successors started (ready or not), in order.
fn started_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("restart: successor started"))
        .filter_map(|l| l.split(" pid=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// How many descriptors a process holds (0 once it is gone).
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// SIGHUP to `serving`; waits for its successor to take over and returns the successor's pid.
fn restart(server: &Lariat, serving: u32, done: usize) -> u32 {
    signal(serving, libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || successor_pids(&server.stderr())
            .len()
            == done),
        "restart {done} did not complete: {}",
        server.stderr()
    );
    *successor_pids(&server.stderr()).last().unwrap()
}

/// One line out, the same line back, within `limit`.
fn exchange(c: &mut TcpStream, line: &[u8], limit: Duration) -> std::io::Result<()> {
    c.set_read_timeout(Some(limit))?;
    c.write_all(line)?;
    let mut back = vec![0u8; line.len()];
    c.read_exact(&mut back)?;
    if back != line {
        return Err(std::io::Error::other(format!(
            "sent {:?}, got {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(&back)
        )));
    }
    Ok(())
}

/// No byte arrives within `quiet` (a connection served twice would echo twice).
fn nothing_more(c: &mut TcpStream, quiet: Duration) -> bool {
    c.set_read_timeout(Some(quiet)).unwrap();
    let mut extra = [0u8; 64];
    matches!(c.read(&mut extra), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

const SESSIONS: usize = 50;
const RESTARTS: usize = 5;

#[test]
fn fifty_echo_sessions_ride_through_five_restarts_without_a_close() {
    // A drain would close every session at its 3 s deadline; a hand-over closes none.
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "3s"]);
    let addr = server.tcp_addr();
    let first = server.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let exchanges = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (stop, exchanges, failures) = (stop.clone(), exchanges.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                let mut seq = 0u64;
                while !stop.load(Relaxed) {
                    let line = format!("session {i} message {seq}\n");
                    // A restart pauses a session for a moment; 5 s is far past any pause.
                    if let Err(e) = exchange(&mut c, line.as_bytes(), Duration::from_secs(5)) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("session {i} at {seq}: {e}"));
                        return;
                    }
                    exchanges.fetch_add(1, Relaxed);
                    seq += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                assert!(
                    nothing_more(&mut c, Duration::from_millis(200)),
                    "session {i}: extra bytes"
                );
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    let mut serving = first;
    let mut old = Vec::new();
    for n in 1..=RESTARTS {
        let started = Instant::now();
        let next = restart(&server, serving, n);
        old.push(serving);
        serving = next;
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    }
    // Every old process is gone, long before its 3 s drain deadline would have come: its
    // connections moved.
    let gone = eventually(Duration::from_secs(10), || {
        old.iter().all(|&p| p == first || !is_alive(p))
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    for s in sessions {
        s.join().unwrap();
    }
    let log = server.stderr();
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "{} exchanges, {} failures, pids {first} -> {:?}",
        exchanges.load(Relaxed),
        failures.len(),
        successor_pids(&log)
    );
    assert!(failures.is_empty(), "failed exchanges: {failures:?}\n{log}");
    assert!(gone, "an old process is still running: {old:?}\n{log}");
    assert!(is_alive(serving));
    assert!(
        !log.contains("drain ended by force"),
        "a drain had to close connections:\n{log}"
    );
    // Each restart moved all 50 sessions (the last line comes when the fifth old process exits).
    let moved: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("hand-over channel closed"))
        .filter_map(|l| {
            l.split("resumed=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(moved, vec![SESSIONS as u64; RESTARTS], "{log}");
    signal(serving, libc::SIGKILL);
}

#[test]
fn bytes_sent_during_the_hand_over_are_echoed_once_and_in_order() {
    echoed_once_and_in_order(&[]);
}

#[test]
fn push_delivery_carries_its_undelivered_bytes_across_the_hand_over() {
    for mode in ["push", "3", "once", "pull"] {
        echoed_once_and_in_order(&["--delivery", mode]);
    }
}

fn echoed_once_and_in_order(extra: &[&str]) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--drain-timeout", "10s"];
    args.extend_from_slice(extra);
    let server = Lariat::start(&args);
    let addr = server.tcp_addr();
    let c = TcpStream::connect(addr).unwrap();
    let mut reader = c.try_clone().unwrap();
    let mut writer = c;

    // A counter as text, written in small pieces without waiting for the echo: at any instant some of
    // it sits in the kernel's buffer, some in the handler's hands.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writing = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                let mut chunk = Vec::new();
                for _ in 0..50 {
                    chunk.extend_from_slice(format!("{n},").as_bytes());
                    n += 1;
                }
                writer.write_all(&chunk).unwrap();
                sent.lock().unwrap().extend_from_slice(&chunk);
                std::thread::sleep(Duration::from_micros(200));
            }
            writer
        })
    };
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reading = {
        let received = received.clone();
        std::thread::spawn(move || {
            reader
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => return "closed".to_string(),
                    Ok(n) => received.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) => return e.to_string(),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let first = server.pid();
    let successor = restart(&server, first, 1);
    assert!(
        eventually(Duration::from_secs(10), || !is_alive(first)),
        "the old process did not exit:\n{}",
        server.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Relaxed);
    let _writer = writing.join().unwrap();
    let sent = sent.lock().unwrap().clone();
    assert!(
        eventually(Duration::from_secs(10), || received.lock().unwrap().len()
            >= sent.len()),
        "echoed {} of {} bytes",
        received.lock().unwrap().len(),
        sent.len()
    );
    // Nothing more than what was sent, and exactly it, in order.
    std::thread::sleep(Duration::from_millis(200));
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), sent.len(), "bytes echoed twice");
    assert!(got == sent, "the echo differs from what was sent");
    eprintln!("{extra:?}: {} bytes echoed across the hand-over", got.len());
    let log = server.stderr();
    assert!(
        log.contains("resumed=1 "),
        "the connection did not move:\n{log}"
    );
    signal(successor, libc::SIGKILL);
    let why = reading.join().unwrap();
    assert!(!why.is_empty());
}

/// Opens `n` idle echo connections, each checked with one exchange.
fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            exchange(
                &mut c,
                format!("hello {i}\n").as_bytes(),
                Duration::from_secs(10),
            )
            .unwrap();
            c
        })
        .collect()
}

#[test]
fn a_successor_killed_half_way_leaves_every_connection_with_one_process() {
    const N: usize = 2000;
    // The kill must land during the hand-over, which lasts some tens of milliseconds: a kill that
    // came after it (everything had moved) proves nothing here, and the scenario is run again.
    for attempt in 1..=5 {
        if killed_half_way(N) {
            return;
        }
        eprintln!("attempt {attempt}: the kill came after the hand-over had ended; again");
    }
    panic!("the kill never landed during a hand-over");
}

/// One try: false if the successor had taken every connection before it was killed.
fn killed_half_way(n: usize) -> bool {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "30s"]);
    let addr = server.tcp_addr();
    let mut conns = idle_connections(addr, n);
    let old = server.pid();
    signal(old, libc::SIGHUP);
    // Killed once it holds some of the connections.
    let mut successor = None;
    let killed_at = eventually(Duration::from_secs(20), || {
        let Some(&pid) = started_pids(&server.stderr()).first() else {
            return false;
        };
        successor = Some(pid);
        if open_descriptors(pid) > 200 {
            signal(pid, libc::SIGKILL);
            true
        } else {
            false
        }
    });
    assert!(
        killed_at,
        "the successor never took connections:\n{}",
        server.stderr()
    );
    let successor = successor.unwrap();
    assert!(eventually(Duration::from_secs(5), || !is_alive(successor)));
    let noticed = eventually(Duration::from_secs(10), || {
        server.stderr().contains("connection hand-over stopped")
            || server.stderr().contains("resumed=")
            || !is_alive(old)
    });
    assert!(
        noticed,
        "the old process did not notice:\n{}",
        server.stderr()
    );
    if !server.stderr().contains("connection hand-over stopped") {
        return false;
    }
    // Each connection either moved before the kill (and died with the successor: closed, never
    // left hanging) or is still the old process's, which echoes it exactly once.
    let (mut served, mut closed) = (0, 0);
    for (i, c) in conns.iter_mut().enumerate() {
        match exchange(
            c,
            format!("after {i}\n").as_bytes(),
            Duration::from_secs(10),
        ) {
            Ok(()) => {
                assert!(
                    nothing_more(c, Duration::from_millis(1)),
                    "connection {i} echoed twice"
                );
                served += 1;
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::UnexpectedEof
                            | ErrorKind::ConnectionReset
                            | ErrorKind::BrokenPipe
                    ),
                    "connection {i} neither served nor closed: {e}"
                );
                closed += 1;
            }
        }
    }
    eprintln!("successor killed half-way: {served} still served by the old process, {closed} died with it");
    // Killed holding 200 passed sockets: how many of those were committed (and so died with it)
    // depends on the instant; the rest, and every one not yet passed, stay with the old process.
    assert!(
        served > 0 && served + closed == n,
        "{served} served, {closed} closed"
    );
    assert!(is_alive(old));
    true
}

#[test]
fn two_thousand_idle_connections_move_and_stay_served() {
    let n: usize = std::env::var("LARIAT_HANDOVER_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "30s"]);
    let addr = server.tcp_addr();
    let mut conns = idle_connections(addr, n);
    let old = server.pid();
    let successor = restart(&server, old, 1);
    assert!(
        eventually(Duration::from_secs(30), || !is_alive(old)),
        "the old process did not exit:\n{}",
        server.stderr()
    );
    let log = server.stderr();
    // From the offer to the end of the old process's drain (its last connection gone).
    let offered = time_of(&log, "offering the live connections");
    let drained = time_of(&log, "drained");
    eprintln!(
        "{n} idle connections handed over in {:.0} ms",
        (drained - offered) * 1000.0
    );
    assert!(log.contains(&format!("resumed={n} ")), "{log}");
    for (i, c) in conns.iter_mut().enumerate() {
        exchange(
            c,
            format!("moved {i}\n").as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("connection {i} after the hand-over: {e}"));
    }
    signal(successor, libc::SIGKILL);
}

/// The time of day, in seconds, of the first log line containing `what`.
fn time_of(log: &str, what: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} line:\n{log}"));
    // 2026-12-01T01:17:05.247789Z
    let clock = &line[11..line.find('Z').unwrap()];
    let mut parts = clock.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn a_handler_that_reaches_no_safe_point_in_the_window_drains_as_before() {
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--hand-over-window",
        "1s",
        "--drain-timeout",
        "4s",
    ]);
    let addr = server.tcp_addr();
    let mut idle = TcpStream::connect(addr).unwrap();
    exchange(&mut idle, b"idle\n", Duration::from_secs(5)).unwrap();
    // A client that writes and never reads: the echo blocks in its write (the peer's window is
    // full), between no two messages, through the whole window.
    let mut stuck = TcpStream::connect(addr).unwrap();
    stuck.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0usize;
    // Until nothing more goes in for half a second: every buffer on the way is full.
    let mut blocked_since = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match stuck.write(&chunk) {
            Ok(n) => {
                written += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let old = server.pid();
    let started = Instant::now();
    let successor = restart(&server, old, 1);
    // The idle connection moved at once; the stuck one stays with the old process until its drain
    // deadline closes it.
    exchange(&mut idle, b"moved\n", Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        is_alive(old),
        "the old process let go of a connection it could not move:\n{}",
        server.stderr()
    );
    assert!(
        eventually(Duration::from_secs(10), || !server.is_running()),
        "the old process did not drain"
    );
    let elapsed = started.elapsed();
    let log = server.stderr();
    assert!(log.contains("drain ended by force"), "{log}");
    assert!(log.contains("resumed=1 "), "{log}");
    assert!(
        elapsed >= Duration::from_secs(3),
        "drained after {elapsed:?}"
    );
    eprintln!("{written} bytes stuck; the old process drained after {elapsed:.1?}");
    signal(successor, libc::SIGKILL);
}
