//! `lariat serve --delivery MODE` end to end: the message API's back-pressure holds a flood in the kernel
//! (the server's memory stays flat while peers that never read write as fast as they can), and every mode
//! echoes every byte in order.

use crate::common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Lariat;

const MIB: u64 = 1024 * 1024;
/// What each flooding peer tries to write.
const FLOOD_TARGET: u64 = 1024 * MIB;
/// The most the server may grow per flooding peer.
const RSS_PER_PEER: u64 = 2 * MIB;

/// The resident set of `pid`, in bytes (VmRSS of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("no VmRSS");
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// A peer writing as fast as it can and never reading what is echoed.
struct Flooder {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    error: Arc<Mutex<Option<io::Error>>>,
    thread: Option<JoinHandle<()>>,
}

impl Flooder {
    fn start(addr: SocketAddr) -> Flooder {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let stream = TcpStream::connect(addr).unwrap();
        // Blocking writes that give up now and then, so the peer can be stopped.
        stream
            .set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let thread = {
            let (stop, written, error) = (stop.clone(), written.clone(), error.clone());
            std::thread::spawn(move || {
                let mut stream = stream;
                let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
                while !stop.load(Ordering::Relaxed)
                    && written.load(Ordering::Relaxed) < FLOOD_TARGET
                {
                    match stream.write(&chunk) {
                        Ok(n) => {
                            written.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => {
                            *error.lock().unwrap() = Some(e);
                            break;
                        }
                    }
                }
                // Wait to be stopped: the socket (and the server's connection) stays open until then.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Flooder {
            stop,
            written,
            error,
            thread: Some(thread),
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn check(&self) {
        if let Some(e) = self.error.lock().unwrap().as_ref() {
            panic!("a flooding peer's write failed: {e}");
        }
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Floods `server` with `peers` peers until their writes stall (nothing more written for a second) or
/// `limit` passes; asserts they stalled far below the target and the server's RSS grew by at most
/// [`RSS_PER_PEER`] per peer over `baseline`. Returns (bytes written per peer, max and min; RSS growth).
fn flood(server: &Lariat, peers: usize, baseline: u64, limit: Duration) -> (u64, u64, u64) {
    let started = Instant::now();
    let flooders: Vec<Flooder> = (0..peers)
        .map(|_| Flooder::start(server.tcp_addr()))
        .collect();
    let total = |f: &[Flooder]| f.iter().map(Flooder::written).sum::<u64>();
    let mut last = total(&flooders);
    let mut last_change = Instant::now();
    let mut stalled_after = None;
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        flooders.iter().for_each(Flooder::check);
        let now = total(&flooders);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= Duration::from_secs(1) {
            stalled_after = Some(last_change.duration_since(started));
            break;
        }
    }
    let grown = rss(server.pid()).saturating_sub(baseline);
    let most = flooders.iter().map(Flooder::written).max().unwrap();
    let least = flooders.iter().map(Flooder::written).min().unwrap();
    eprintln!(
        "{peers} flooding peer(s): {} MiB written in all, per peer {:.1}..{:.1} MiB, stalled after \
         {stalled_after:?}; server RSS {:.1} MiB over the baseline of {:.1} MiB ({:.0} KiB per peer)",
        last / MIB,
        least as f64 / MIB as f64,
        most as f64 / MIB as f64,
        grown as f64 / MIB as f64,
        baseline as f64 / MIB as f64,
        grown as f64 / 1024.0 / peers as f64,
    );
    assert!(
        stalled_after.is_some(),
        "the peers' writes never stalled in {limit:?}: {} MiB written",
        last / MIB
    );
    assert!(
        most < FLOOD_TARGET / 4,
        "a peer wrote {most} bytes before stalling"
    );
    assert!(least > 0, "a peer wrote nothing: the server is not reading");
    assert!(
        grown <= RSS_PER_PEER * peers as u64,
        "the server grew by {grown} bytes for {peers} peer(s)"
    );
    // The peers leave (with unread echo in their buffers: a reset) before the server is dropped.
    drop(flooders);
    (most, least, grown)
}

/// One small echo, so the baseline includes what the first connection sets up once.
fn warm_up(addr: SocketAddr) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"warm-up").unwrap();
    let mut back = [0u8; 7];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"warm-up");
}

#[test]
fn push_delivery_holds_a_flood_in_the_kernel() {
    let server = Lariat::start(&["--listen", "127.0.0.1:0", "--delivery", "push"]);
    warm_up(server.tcp_addr());
    std::thread::sleep(Duration::from_millis(100));
    let baseline = rss(server.pid());

    flood(&server, 1, baseline, Duration::from_secs(6));

    // Let the server see the peer go, then 50 at once, measured against the same baseline.
    std::thread::sleep(Duration::from_millis(200));
    eprintln!(
        "between phases: server RSS {:.1} MiB over the baseline",
        rss(server.pid()).saturating_sub(baseline) as f64 / MIB as f64
    );
    flood(&server, 50, baseline, Duration::from_secs(8));

    // Still serving.
    std::thread::sleep(Duration::from_millis(200));
    warm_up(server.tcp_addr());
}

/// Sends `len` bytes of a pattern (from another thread), closes the write side, reads everything back.
fn echo_exactly(addr: SocketAddr, len: usize) -> Vec<u8> {
    let sent: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let sent = sent.clone();
        std::thread::spawn(move || {
            // Uneven pieces, so the server's reads and the framing's chunks do not line up with them.
            let mut at = 0;
            let mut piece = 1;
            while at < sent.len() {
                let end = (at + piece).min(sent.len());
                stream.write_all(&sent[at..end]).unwrap();
                at = end;
                piece = piece * 3 % 100_003 + 1;
            }
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::with_capacity(len);
    let mut stream = stream;
    stream.read_to_end(&mut back).expect("echo stalled");
    writer.join().unwrap();
    assert_eq!(back.len(), sent.len());
    assert!(back == sent, "the echo differs from what was sent");
    back
}

#[test]
fn every_delivery_mode_echoes_exactly() {
    for mode in ["pull", "once", "100", "push"] {
        let started = Instant::now();
        let server = Lariat::start(&["--listen", "127.0.0.1:0", "--delivery", mode]);
        echo_exactly(server.tcp_addr(), MIB as usize);
        // And several at once.
        let addr = server.tcp_addr();
        let clients: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || echo_exactly(addr, 256 * 1024).len()))
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap(), 256 * 1024);
        }
        eprintln!("--delivery {mode}: echoed in {:?}", started.elapsed());
        assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
    }
}
