//! The chat example (`examples/chat.rs`), run as a process: three clients see each other's lines; a
//! client that never reads while others flood does not grow the server; SIGTERM gives every client a
//! goodbye and the server exits 0.
//!
//! The example is built with the `cargo` that runs the tests (`CARGO`), once per test binary; each test
//! starts its own server, killed when the test ends, pass or fail.

use crate::common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::process::Spawned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

/// Builds the example (a no-op when it is fresh) and returns its path, as cargo reports it.
fn chat_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--message-format=json",
                "-p",
                "lariat",
                "--example",
                "chat",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "building the chat example failed");
        // One JSON object per line; the example's artifact names its executable.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let binary = stdout
            .lines()
            .filter_map(|l| l.split("\"executable\":\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .find(|path| path.ends_with("/chat"))
            .map(PathBuf::from)
            .expect("cargo names the chat example's executable");
        assert!(binary.exists(), "no {}", binary.display());
        binary
    })
}

/// The chat server's process; killed when dropped.
struct Chat {
    proc: Spawned,
    addr: SocketAddr,
}

impl Chat {
    fn start() -> Chat {
        let mut command = Command::new(chat_binary());
        command.arg("127.0.0.1:0");
        let mut proc = Spawned::start(command);
        let mut line = String::new();
        proc.stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on tcp://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}: {}", proc.stderr()))
            .parse()
            .unwrap();
        Chat { proc, addr }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The server's resident set, in bytes (VmRSS of /proc/PID/status).
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .expect("VmRSS")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.proc.exit_within(limit)
    }
}

/// Connects `n` clients and gives the server a moment to seat them in the room.
async fn clients(chat: &Chat, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(TcpStream::connect(chat.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    all
}

async fn read_line(lines: &mut tokio::io::Lines<tokio::io::BufReader<TcpStream>>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("a line, not the end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_see_each_others_lines() {
    let chat = Chat::start();
    let mut streams = clients(&chat, 3).await;
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(format!("hello from {i}\n").as_bytes())
            .await
            .unwrap();
    }
    for (i, s) in streams.into_iter().enumerate() {
        let mut lines = tokio::io::BufReader::new(s).lines();
        let mut got: Vec<String> = Vec::new();
        for _ in 0..2 {
            let line = read_line(&mut lines).await;
            // "ID: text": the text after the sender's id.
            got.push(line.split_once(": ").unwrap().1.to_owned());
        }
        got.sort();
        let mut want: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| format!("hello from {j}"))
            .collect();
        want.sort();
        assert_eq!(got, want, "client {i}");
    }
}

/// A flooding client: writes lines of `LINE` bytes until `target` bytes are written or `stop` says
/// so, while reading (and counting) what the room sends it.
struct Flooder {
    /// Bytes sent, and the write half, kept open (dropping it would end the conversation).
    sent: tokio::task::JoinHandle<(u64, tokio::net::tcp::OwnedWriteHalf)>,
    received: tokio::task::JoinHandle<u64>,
}

const LINE: usize = 4000;

impl Flooder {
    async fn start(addr: SocketAddr, target: u64, until: Instant) -> Flooder {
        let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        let received = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n as u64,
                }
            }
        });
        let sent = tokio::spawn(async move {
            let mut line = vec![b'x'; LINE - 1];
            line.push(b'\n');
            let batch = line.repeat(16);
            let mut sent = 0u64;
            while sent < target && Instant::now() < until {
                if write.write_all(&batch).await.is_err() {
                    break;
                }
                sent += batch.len() as u64;
            }
            (sent, write)
        });
        Flooder { sent, received }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_costs_the_server_nothing_under_a_flood() {
    const TOTAL: u64 = 1024 * MIB;
    const LIMIT: Duration = Duration::from_secs(60);
    let chat = Chat::start();
    let mut silent = clients(&chat, 1).await.pop().unwrap();

    // Warm up: the allocator's and the runtime's first buffers are not what is measured. Little enough
    // that the silent client's socket buffers take it, so it is still connected when the flood starts.
    let until = Instant::now() + LIMIT;
    let warm: Vec<Flooder> = vec![
        Flooder::start(chat.addr, MIB, until).await,
        Flooder::start(chat.addr, MIB, until).await,
    ];
    for f in warm {
        f.sent.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = chat.rss();

    let started = Instant::now();
    let until = started + LIMIT;
    let flooders = vec![
        Flooder::start(chat.addr, TOTAL / 2, until).await,
        Flooder::start(chat.addr, TOTAL / 2, until).await,
    ];
    let mut peak = baseline;
    while !flooders.iter().all(|f| f.sent.is_finished()) {
        peak = peak.max(chat.rss());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(chat.rss());
    let elapsed = started.elapsed();
    let mut sent = 0;
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for f in flooders {
        let (n, write) = f.sent.await.unwrap();
        sent += n;
        writers.push(write);
        readers.push(f.received);
    }
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "chat flood: {} MiB sent in {elapsed:.1?}, server RSS {} KiB -> peak {} KiB (+{} KiB)",
        sent / MIB,
        baseline / 1024,
        peak / 1024,
        grown / 1024
    );
    assert!(
        sent >= 256 * MIB,
        "the flood was too slow to mean anything: {} MiB in {elapsed:?}",
        sent / MIB
    );
    assert!(
        grown <= 2 * MIB,
        "the server grew by {} KiB under the flood",
        grown / 1024
    );
    // The silent client was disconnected when its queue stayed full: past what its socket buffer
    // holds, it reads the end.
    let mut buf = vec![0u8; 1024 * 1024];
    let mut drained = 0u64;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n as u64,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the silent client is still connected ({drained} bytes read)"
    );
    assert!(drained < 64 * MIB, "the silent client got {drained} bytes");
    // The flooders, which read, were not: their connections are still open.
    for r in &readers {
        assert!(!r.is_finished(), "a reading client was disconnected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_goodbye_to_every_client_and_exits_0() {
    let mut chat = Chat::start();
    let streams = clients(&chat, 3).await;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(chat.pid() as libc::pid_t, libc::SIGTERM) },
        0
    );
    for (i, s) in streams.into_iter().enumerate() {
        let mut all = String::new();
        let mut s = s;
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut all))
            .await
            .expect("the server ends the conversation")
            .unwrap();
        assert_eq!(all, "server: goodbye\n", "client {i}");
    }
    let status = chat
        .wait_exit(Duration::from_secs(15))
        .expect("the server exits after its drain");
    assert!(status.success(), "exit status {status:?}");
}
