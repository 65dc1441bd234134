//! `lariat serve` on SIGTERM: a two-stage drain that resets no client (issue 4).

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Lariat};

const FORCED_EXIT: i32 = 3;

fn round_trip(stream: &mut (impl Read + Write), msg: &[u8]) -> std::io::Result<()> {
    stream.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back)?;
    if back != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// What a client that keeps connecting saw.
#[derive(Default)]
struct Prober {
    served: AtomicU64,
    not_admitted: AtomicU64,
    reset_after_connect: AtomicU64,
}

/// Connects again and again (one short echo each) until `stop`: a refused or unanswered connect is
/// fine, an error after a successful connect is a reset.
fn keep_connecting(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Prober>) {
    while !stop.load(Relaxed) {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                match round_trip(&mut s, b"probe") {
                    Ok(()) => seen.served.fetch_add(1, Relaxed),
                    Err(_) => seen.reset_after_connect.fetch_add(1, Relaxed),
                };
            }
            Err(_) => {
                seen.not_admitted.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn sigterm_drains_live_and_queued_connections_and_resets_none() {
    const LIVE: usize = 200;
    const QUEUED: usize = 20;
    let mut server = Lariat::start(&[
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        &LIVE.to_string(),
        "--drain-timeout",
        "20s",
    ]);
    let addr = server.tcp_addr();

    // LIVE connections in the middle of a conversation, holding every slot...
    let mut live: Vec<TcpStream> = (0..LIVE)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            round_trip(&mut s, b"first half").unwrap();
            s
        })
        .collect();
    // ...QUEUED more in the kernel backlog (the cap is reached), their request already sent...
    let mut queued: Vec<TcpStream> = (0..QUEUED)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(format!("queued {i:03}").as_bytes()).unwrap();
            s
        })
        .collect();
    // ...and a client that keeps connecting throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Prober::default());
    let prober = std::thread::spawn({
        let (stop, seen) = (stop.clone(), seen.clone());
        move || keep_connecting(addr, stop, seen)
    });

    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    std::thread::sleep(Duration::from_millis(200));

    // The live ones finish their conversation after the signal.
    for s in &mut live {
        round_trip(s, b"second half").expect("a live connection was cut during the drain");
    }
    drop(live);
    // The queued ones are accepted and served.
    for (i, s) in queued.iter_mut().enumerate() {
        let want = format!("queued {i:03}");
        let mut back = vec![0u8; want.len()];
        s.read_exact(&mut back)
            .expect("a queued client was not served during the drain");
        assert_eq!(back, want.as_bytes());
    }
    drop(queued);

    let status = server.wait_exit(Duration::from_secs(20));
    stop.store(true, Relaxed);
    prober.join().unwrap();
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(signalled.elapsed() < Duration::from_secs(20));
    assert_eq!(
        seen.reset_after_connect.load(Relaxed),
        0,
        "a client was reset after connecting"
    );
    assert!(seen.served.load(Relaxed) > 0 || seen.not_admitted.load(Relaxed) > 0);
    let log = server.stderr();
    assert!(log.contains("drained"), "{log}");
}

#[test]
fn the_deadline_closes_the_rest_counts_them_and_exits_non_zero() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "1s"]);
    let addr = server.tcp_addr();
    // Idle clients: the echo handler waits on them forever.
    let mut idle: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            round_trip(&mut s, b"hi").unwrap();
            s
        })
        .collect();
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(FORCED_EXIT), "{}", server.stderr());
    assert!(
        took >= Duration::from_millis(900),
        "exited before the deadline: {took:?}"
    );
    let log = server.stderr();
    assert!(log.contains("forced=5"), "{log}");
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "the connection was not closed"
        );
    }
}

#[test]
fn a_second_signal_forces_at_once() {
    let mut server = Lariat::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "60s"]);
    let addr = server.tcp_addr();
    let mut idle = TcpStream::connect(addr).unwrap();
    round_trip(&mut idle, b"hi").unwrap();
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.is_running(),
        "exited with a live connection and 60 s to go"
    );
    let forced = Instant::now();
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(forced.elapsed() < Duration::from_secs(3));
    assert_eq!(status.code(), Some(FORCED_EXIT), "{}", server.stderr());
    assert!(status.signal().is_none());
}

#[test]
fn unix_socket_refuses_new_clients_with_enoent_and_serves_its_queue() {
    let path = std::env::temp_dir().join(format!("lariat-cli-drain-{}.sock", std::process::id()));
    let listen = format!("unix:{}", path.display());
    let mut server = Lariat::start(&["--listen", &listen, "--max-connections", "1"]);
    let mut live = UnixStream::connect(&path).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    round_trip(&mut live, b"live").unwrap();
    let mut queued = UnixStream::connect(&path).unwrap();
    queued
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    queued.write_all(b"queued").unwrap();

    server.signal(libc::SIGTERM);
    assert!(eventually(Duration::from_secs(5), || !path.exists()));
    let err = UnixStream::connect(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(server.is_running());

    round_trip(&mut live, b"still served").unwrap();
    drop(live);
    let mut back = [0u8; 6];
    queued.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"queued");
    drop(queued);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}
