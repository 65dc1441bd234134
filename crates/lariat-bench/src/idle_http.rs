//! Idle HTTP (`--only idle-http`): resident memory per idle HTTP/1.1 keep-alive connection of
//! `lariat serve --handler http-hello` against nginx `return 200`, in the same run.
//!
//! Each round starts every server fresh, pinned to the server CPU: lariat as it ships (idle
//! connections hibernate after `--http-hibernate-after`, 50 ms), lariat with `--http-hibernate-after
//! 0` (hyper's connection kept for the connection's life: what hibernation saves), and nginx with one
//! worker process under its master. The client (this process, on the client CPU) opens the
//! connections, each sending one request and reading its answer, then leaves them all open and idle
//! for [`IDLE`] and reads the resident memory of the server's processes (nginx: master + worker).
//! The figure is the growth over the reading before the first connection, divided by the connections
//! open. Before that reading each server serves one warm-up connection (one request, idle past
//! hibernation, closed): what any server pays once (its code paged in on first use, structures made
//! on the first connection or the first hibernation) is not a cost per connection. The rounds rotate the servers' order; the table reports each server's median and the median
//! of the per-round ratios against nginx.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client;
use crate::nginx;
use crate::proc;
use crate::server::{Binaries, Kind, Server, SERVER_CPU};

/// Wait after startup before the first reading, so lazy runtime setup is not counted.
const SETTLE: Duration = Duration::from_millis(500);
/// Wait with every connection open and idle before the reading: well past lariat's hibernation and
/// the heap trim after it (every 500 ms).
const IDLE: Duration = Duration::from_secs(2);
/// How long the warm-up connection stays open and idle: past lariat's hibernation (50 ms), so the
/// code and structures of sleeping are in place before the first reading.
const WARM_UP_IDLE: Duration = Duration::from_millis(300);
/// Longest opening one connection (connect, request, answer) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer's body, the same from every server.
const BODY: &[u8] = b"Hello, world!";

/// How many connections, how many opened at once, how many rounds.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: u64,
    pub concurrency: usize,
    pub rounds: usize,
}

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// `lariat serve --handler http-hello`, as it ships.
    Lariat,
    /// The same with `--http-hibernate-after 0`.
    LariatAwake,
    /// nginx `return 200`, one worker process and its master.
    Nginx,
}

impl Subject {
    const ALL: [Subject; 3] = [Subject::Lariat, Subject::LariatAwake, Subject::Nginx];

    fn name(self) -> &'static str {
        match self {
            Subject::Lariat => "lariat http-hello",
            Subject::LariatAwake => "lariat http-hello, --http-hibernate-after 0",
            Subject::Nginx => "nginx return 200 (master + 1 worker)",
        }
    }
}

/// A server under test, stopped on drop.
enum Running {
    Lariat(Server),
    Nginx(Nginx),
}

impl Running {
    fn start(binaries: &Binaries, subject: Subject) -> anyhow::Result<Running> {
        let hibernate = match subject {
            Subject::Nginx => return Ok(Running::Nginx(Nginx::start(SERVER_CPU)?)),
            Subject::Lariat => "50ms",
            Subject::LariatAwake => "0",
        };
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--handler",
            "http-hello",
            "--max-connections",
            "20000",
            // Longer than a round, as nginx's default 75 s: the connections stay open while measured.
            "--http-keep-alive",
            "120s",
            "--http-hibernate-after",
            hibernate,
        ]
        .map(String::from);
        Ok(Running::Lariat(Server::spawn(
            binaries.path(Kind::Lariat),
            &args,
            &SERVER_CPU.to_string(),
        )?))
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Running::Lariat(s) => s.addr,
            Running::Nginx(n) => std::net::SocketAddr::from(([127, 0, 0, 1], n.port)),
        }
    }

    /// The resident memory of the server's processes: the process and its descendants (nginx's
    /// worker).
    fn rss(&self) -> anyhow::Result<u64> {
        let pid = match self {
            Running::Lariat(s) => s.pid(),
            Running::Nginx(n) => n.child.id(),
        };
        let mut total = proc::vm_rss_bytes(pid)?;
        for p in proc::descendants(pid) {
            if p != pid {
                total += proc::vm_rss_bytes(p).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// nginx in the foreground (`daemon off`) with its master and one worker, configured in a temporary
/// directory; killed with its worker on drop.
struct Nginx {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(cpu: usize) -> anyhow::Result<Nginx> {
        let dir =
            std::env::temp_dir().join(format!("lariat-bench-idle-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = nginx::free_port()?;
        let conf = format!(
            "worker_processes 1;\nmaster_process on;\ndaemon off;\nerror_log stderr;\n\
             worker_rlimit_nofile 65536;\npid {dir}/nginx.pid;\nevents {{ worker_connections 20000; }}\n\
             http {{\n  access_log off;\n  {temp_paths}\n  \
             keepalive_timeout 120s;\n  default_type text/plain;\n  server {{\n    \
             listen 127.0.0.1:{port};\n    location / {{ return 200 \"Hello, world!\"; }}\n  }}\n}}\n",
            dir = dir.display(),
            temp_paths = nginx::temp_paths(&dir),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let child = nginx::spawn(&dir, &conf_path, cpu)?;
        let nginx = Nginx { child, port, dir };
        nginx::wait_listening(&[port])?;
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The worker goes with its master's TERM (a fast shutdown); KILL if the master lingers.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in proc::descendants(self.child.id()) {
            // SAFETY: kill(2) on a descendant of our child (nginx's worker).
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server's reading in one round.
#[derive(Debug, Clone, Copy)]
struct Reading {
    bytes_per_connection: f64,
    opened: u64,
    failed: u64,
}

/// Runs the rounds and prints the table (Markdown) on stdout; progress on stderr.
pub async fn run(binaries: &Binaries, load: Load) -> anyhow::Result<()> {
    if !nginx::installed() {
        bail!("nginx is not installed (apt-get install nginx-light)");
    }
    eprintln!(
        "idle-http: {} keep-alive connections after one request each, {} opened at once, {} round(s); \
         servers on CPU {SERVER_CPU}",
        load.connections, load.concurrency, load.rounds
    );
    let mut readings: Vec<[Option<Reading>; 3]> = Vec::new();
    for round in 0..load.rounds {
        let mut row = [None; 3];
        for k in 0..Subject::ALL.len() {
            let i = (k + round) % Subject::ALL.len();
            let subject = Subject::ALL[i];
            match measure(binaries, subject, load).await {
                Ok(r) => {
                    eprintln!(
                        "[idle-http {}/{}] {}: {:.0} B/conn ({} open, {} failed)",
                        round + 1,
                        load.rounds,
                        subject.name(),
                        r.bytes_per_connection,
                        r.opened,
                        r.failed
                    );
                    row[i] = Some(r);
                }
                Err(e) => eprintln!(
                    "[idle-http {}/{}] {}: failed: {e:#}",
                    round + 1,
                    load.rounds,
                    subject.name()
                ),
            }
        }
        readings.push(row);
    }
    println!("{}", table(&readings, load));
    Ok(())
}

async fn measure(binaries: &Binaries, subject: Subject, load: Load) -> anyhow::Result<Reading> {
    let server = Running::start(binaries, subject)?;
    tokio::time::sleep(SETTLE).await;
    let addr = server.addr();
    // One connection first, the same for every server: what is paid once is not counted.
    let warm = tokio::time::timeout(OPEN_TIMEOUT, one_request(addr, 0))
        .await
        .context("warm-up connection timed out")?
        .context("warm-up connection")?;
    tokio::time::sleep(WARM_UP_IDLE).await;
    drop(warm);
    // The trim after hibernations runs every 500 ms; the closed connection's memory goes with it.
    tokio::time::sleep(SETTLE + Duration::from_millis(500)).await;
    let before = server.rss()?;
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut open = Vec::new();
                let mut failed = 0u64;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= load.connections {
                        break;
                    }
                    match tokio::time::timeout(OPEN_TIMEOUT, one_request(addr, n)).await {
                        Ok(Ok(stream)) => open.push(stream),
                        _ => failed += 1,
                    }
                }
                (open, failed)
            })
        })
        .collect();
    let mut streams = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (open, fails) = worker.await.context("a client task panicked")?;
        streams.extend(open);
        failed += fails;
    }
    tokio::time::sleep(IDLE).await;
    let idle = server.rss()?;
    let opened = streams.len() as u64;
    drop(streams);
    drop(server);
    if opened == 0 {
        bail!("no connection opened");
    }
    Ok(Reading {
        bytes_per_connection: (idle as f64 - before as f64) / opened as f64,
        opened,
        failed,
    })
}

/// Connects, sends one keep-alive request and reads the whole answer.
async fn one_request(addr: std::net::SocketAddr, n: u64) -> std::io::Result<TcpStream> {
    let mut stream = client::connect(addr, n).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    while !buf.ends_with(BODY) {
        if buf.len() > 4096 || stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no complete answer",
            ));
        }
    }
    Ok(stream)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

fn table(readings: &[[Option<Reading>; 3]], load: Load) -> String {
    use std::fmt::Write as _;
    let nginx = Subject::ALL
        .iter()
        .position(|s| *s == Subject::Nginx)
        .unwrap_or(2);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| server | B per idle connection (median) | per round | / nginx (median of per-round ratios) |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|");
    for (i, subject) in Subject::ALL.iter().enumerate() {
        let values: Vec<f64> = readings
            .iter()
            .filter_map(|r| r[i].map(|x| x.bytes_per_connection))
            .collect();
        let ratios: Vec<f64> = readings
            .iter()
            .filter_map(|r| Some(r[i]?.bytes_per_connection / r[nginx]?.bytes_per_connection))
            .collect();
        let per_round = values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            subject.name(),
            median(values).map_or("-".into(), |m| format!("{m:.0}")),
            per_round,
            median(ratios).map_or("-".into(), |m| format!("{m:.2}×")),
        );
    }
    let failed: u64 = readings.iter().flatten().flatten().map(|r| r.failed).sum();
    let _ = writeln!(
        out,
        "\n{} HTTP/1.1 keep-alive connections after one request each ({} opened at once), idle {} s; \
         resident memory growth of the server's processes; {} round(s); {failed} connection(s) failed.",
        load.connections,
        load.concurrency,
        IDLE.as_secs(),
        readings.len()
    );
    out
}
