//! The seeds' tests against the real binary.
//!
//! * Seed 000 (Vinoski): a client connects and at once sends 14 bytes; the handler gets exactly them.
//!   10,000 connections, 64 at a time, none lost.
//! * Seed 004: under `RLIMIT_NOFILE` 100 with a cap of 1,000, 1,000 clients connect and hold. The server
//!   stays up, uses under 5% of a core while exhausted, warns once with a hint, and serves a new client
//!   within 200 ms of the others leaving.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Lariat};

#[test]
fn seed_000_fast_first_bytes_10k_connections() {
    const PAYLOAD: &[u8; 14] = b"Hello, lariat!";
    const TOTAL: usize = 10_000;
    const CONCURRENCY: usize = 64;
    let server = Lariat::start(&["--listen", "127.0.0.1:0"]);
    let addr = server.tcp_addr();
    let next = Arc::new(AtomicUsize::new(0));
    let exact = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, exact) = (next.clone(), exact.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < TOTAL {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    c.write_all(PAYLOAD).unwrap();
                    c.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut back = Vec::new();
                    c.read_to_end(&mut back).unwrap();
                    if back == PAYLOAD {
                        exact.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(exact.load(Ordering::Relaxed), TOTAL, "{}", server.stderr());
}

#[test]
fn seed_004_fd_exhaustion_under_ulimit_100() {
    let mut server = Lariat::start_with(
        &["--listen", "127.0.0.1:0", "--max-connections", "1000"],
        Some(100),
    );
    let addr = server.tcp_addr();

    // 1,000 clients connect (the kernel completes every handshake: the backlog is somaxconn) and hold.
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(TcpStream::connect(addr).expect("connect failed: backlog too small?"));
    }
    assert!(
        eventually(Duration::from_secs(10), || server
            .stderr()
            .contains("accept paused")),
        "no shortage warning: {}",
        server.stderr()
    );

    // While exhausted: no busy loop.
    let window = Duration::from_secs(3);
    let cpu_before = server.cpu_time();
    let started = Instant::now();
    std::thread::sleep(window);
    let cpu = server.cpu_time() - cpu_before;
    let share = cpu.as_secs_f64() / started.elapsed().as_secs_f64();
    assert!(
        share < 0.05,
        "{:.1}% of a core while exhausted",
        share * 100.0
    );
    assert!(server.is_running(), "the server died: {}", server.stderr());

    // One warning for the episode, naming the limit and how to raise it.
    let stderr = server.stderr();
    assert_eq!(stderr.matches("accept paused").count(), 1, "{stderr}");
    assert!(
        stderr.contains("EMFILE") && stderr.contains("ulimit -n"),
        "{stderr}"
    );
    assert!(stderr.contains("LimitNOFILE="), "{stderr}");

    // The clients leave; a new one is served promptly (the acceptor wakes as descriptors free).
    drop(clients);
    let left = Instant::now();
    let mut fresh = TcpStream::connect(addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    fresh.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    fresh.read_exact(&mut back).unwrap();
    let served_in = left.elapsed();
    assert_eq!(&back, b"ping");
    assert!(
        served_in < Duration::from_millis(200),
        "new client served {served_in:?} after the others left"
    );
    assert!(eventually(Duration::from_secs(5), || server
        .stderr()
        .contains("accept resumed")));
    assert_eq!(server.stderr().matches("accept paused").count(), 1);
    eprintln!(
        "seed 004: {:.2}% CPU while exhausted, new client served in {served_in:?}",
        share * 100.0
    );
}
