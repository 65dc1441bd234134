//! TLS (`--only tls-handshake`, `--only tls-idle`): `lariat serve --tls-cert/--tls-key --handler
//! http-hello` against nginx with OpenSSL (`return 200`, one worker process, no master), each with an
//! ECDSA P-256 and an RSA-2048 certificate, in the same run.
//!
//! - Handshakes: full handshakes per second and the server's CPU per handshake (user + system time
//!   from /proc/PID/stat over the run, divided by the handshakes), from [`tls_client`] loops on the
//!   client CPU (many connections in flight; each: connect, TLS 1.3 handshake with X25519, one
//!   `Connection: close` request, close). No session is ever resumed. The goal: lariat's CPU per
//!   handshake at most nginx's (≥ 1.0× nginx in handshakes per core).
//! - Idle: the server's resident memory growth per idle TLS keep-alive connection (3,000 connections,
//!   each with one request answered).
//!
//! Servers are pinned to the server CPU, the rounds alternate which server goes first, and the table
//! reports medians of the rounds and the median of the per-round ratios.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::proc;
use crate::report::median;
use crate::server::{Binaries, Kind, Server, SERVER_CPU};
use crate::tls_client;

/// What one run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Handshake,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Cert {
    #[serde(rename = "ECDSA P-256")]
    EcdsaP256,
    #[serde(rename = "RSA-2048")]
    Rsa2048,
}

impl Cert {
    const ALL: [Cert; 2] = [Cert::EcdsaP256, Cert::Rsa2048];

    fn name(self) -> &'static str {
        match self {
            Cert::EcdsaP256 => "ECDSA P-256",
            Cert::Rsa2048 => "RSA-2048",
        }
    }

    /// `openssl req` arguments for a new key of this kind.
    fn newkey(self) -> &'static [&'static str] {
        match self {
            Cert::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            Cert::Rsa2048 => &["-newkey", "rsa:2048"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsServer {
    Lariat,
    Nginx,
    /// `lariat serve --handler echo` with TLS (idle part only): the TLS layer alone, as the echo
    /// handler holds no buffer between bursts (HTTP's idle buffers are hyper's).
    #[serde(rename = "lariat-echo")]
    LariatEcho,
}

impl TlsServer {
    fn name(self) -> &'static str {
        match self {
            TlsServer::Lariat => "lariat http-hello",
            TlsServer::Nginx => "nginx return 200",
            TlsServer::LariatEcho => "lariat echo",
        }
    }
}

/// One run against a fresh server.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRun {
    pub part: Part,
    pub server: TlsServer,
    pub cert: Cert,
    pub round: usize,
    /// Handshakes: completed, per second, server CPU per handshake.
    pub handshakes: u64,
    pub handshakes_per_s: f64,
    pub server_cpu_us_per_handshake: f64,
    /// Idle: connections open, VmRSS before and with them, growth per connection.
    pub opened: u64,
    pub rss_before_bytes: u64,
    pub rss_idle_bytes: u64,
    pub bytes_per_connection: f64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub error: Option<String>,
}

/// How long and how hard each run goes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Load {
    pub seconds: u64,
    pub concurrency: usize,
    pub idle_connections: usize,
}

/// A self-signed certificate and key for `localhost`, as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

fn make_pair(dir: &Path, cert: Cert) -> anyhow::Result<Pair> {
    let tag = match cert {
        Cert::EcdsaP256 => "ecdsa",
        Cert::Rsa2048 => "rsa",
    };
    let pair = Pair {
        cert: dir.join(format!("{tag}-cert.pem")),
        key: dir.join(format!("{tag}-key.pem")),
    };
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(cert.newkey())
        .arg("-keyout")
        .arg(&pair.key)
        .arg("-out")
        .arg(&pair.cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl req (the openssl command makes the certificates)")?;
    if !status.success() {
        bail!("openssl req failed for {}", cert.name());
    }
    Ok(pair)
}

/// nginx with TLS, in the foreground, one process; killed on drop.
struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, pair: &Pair) -> anyhow::Result<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log stderr crit;\n\
             worker_rlimit_nofile 20000;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 16000; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  \
             fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  \
             keepalive_requests 1000000;\n  keepalive_timeout 600s;\n  default_type text/plain;\n  \
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    \
             ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
             location / {{ return 200 \"Hello, world!\"; }}\n  }}\n}}\n",
            dir = dir.display(),
            cert = pair.cert.display(),
            key = pair.key.display(),
        );
        let conf_path = dir.join("nginx-tls.conf");
        std::fs::write(&conf_path, conf).context("writing nginx-tls.conf")?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(SERVER_CPU.to_string())
            .arg("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server under test, stopped on drop.
enum Running {
    Lariat(Server),
    Nginx(Nginx),
}

impl Running {
    fn start(
        binaries: &Binaries,
        dir: &Path,
        server: TlsServer,
        pair: &Pair,
    ) -> anyhow::Result<Self> {
        Ok(match server {
            TlsServer::Lariat | TlsServer::LariatEcho => {
                let handler = if server == TlsServer::Lariat {
                    "http-hello"
                } else {
                    "echo"
                };
                let args: Vec<String> = [
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--handler",
                    handler,
                    "--max-connections",
                    "20000",
                    "--tls-cert",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([pair.cert.display().to_string(), "--tls-key".into()])
                .chain([pair.key.display().to_string()])
                .collect();
                Running::Lariat(Server::spawn(
                    binaries.path(Kind::Lariat),
                    &args,
                    &SERVER_CPU.to_string(),
                )?)
            }
            TlsServer::Nginx => Running::Nginx(Nginx::start(dir, pair)?),
        })
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Lariat(s) => s.pid(),
            Running::Nginx(n) => n.child.id(),
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Running::Lariat(s) => s.addr,
            Running::Nginx(n) => std::net::SocketAddr::from(([127, 0, 0, 1], n.port)),
        }
    }
}

impl TlsRun {
    fn new(part: Part, server: TlsServer, cert: Cert, round: usize) -> TlsRun {
        TlsRun {
            part,
            server,
            cert,
            round,
            handshakes: 0,
            handshakes_per_s: f64::NAN,
            server_cpu_us_per_handshake: f64::NAN,
            opened: 0,
            rss_before_bytes: 0,
            rss_idle_bytes: 0,
            bytes_per_connection: f64::NAN,
            failed: 0,
            first_error: None,
            error: None,
        }
    }
}

/// Fills `run` against a fresh server.
async fn measure(
    binaries: &Binaries,
    dir: &Path,
    load: Load,
    pair: &Pair,
    mut run: TlsRun,
) -> TlsRun {
    if let Err(e) = measure_into(&mut run, binaries, dir, load, pair).await {
        run.error = Some(format!("{e:#}"));
    }
    run
}

async fn measure_into(
    run: &mut TlsRun,
    binaries: &Binaries,
    dir: &Path,
    load: Load,
    pair: &Pair,
) -> anyhow::Result<()> {
    let running = Running::start(binaries, dir, run.server, pair)?;
    let pid = running.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    match run.part {
        Part::Handshake => {
            let cpu_before = proc::cpu_time(pid)?;
            let h = tls_client::handshakes(
                running.addr(),
                load.concurrency,
                Duration::from_secs(load.seconds),
            )
            .await;
            let cpu = proc::cpu_time(pid)?.saturating_sub(cpu_before);
            run.handshakes = h.done;
            run.handshakes_per_s = h.done as f64 / h.seconds;
            run.server_cpu_us_per_handshake = cpu.as_secs_f64() * 1e6 / h.done.max(1) as f64;
            run.failed = h.failed;
            run.first_error = h.first_error;
        }
        Part::Idle => {
            run.rss_before_bytes = proc::vm_rss_bytes(pid)?;
            let (open, failed, first_error) = tls_client::open_idle(
                running.addr(),
                load.idle_connections,
                64,
                run.server == TlsServer::LariatEcho,
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            run.rss_idle_bytes = proc::vm_rss_bytes(pid)?;
            run.opened = open.len() as u64;
            run.bytes_per_connection = (run.rss_idle_bytes as f64 - run.rss_before_bytes as f64)
                / run.opened.max(1) as f64;
            run.failed = failed;
            run.first_error = first_error;
            drop(open);
        }
    }
    drop(running);
    Ok(())
}

/// Everything the TLS measurements found.
#[derive(Debug, Default, Serialize)]
pub struct TlsResults {
    pub load: Option<Load>,
    pub runs: Vec<TlsRun>,
    pub notes: Vec<String>,
}

/// Runs `rounds` rounds of `parts` against both servers and both certificates.
pub async fn run(binaries: &Binaries, parts: &[Part], load: Load, rounds: usize) -> TlsResults {
    let mut results = TlsResults {
        load: Some(load),
        ..TlsResults::default()
    };
    let dir = std::env::temp_dir().join(format!("lariat-bench-tls-{}", std::process::id()));
    let pairs = std::fs::create_dir_all(&dir)
        .context("creating the certificates' directory")
        .and_then(|()| {
            Cert::ALL
                .iter()
                .map(|&c| make_pair(&dir, c))
                .collect::<anyhow::Result<Vec<_>>>()
        });
    let pairs = match pairs {
        Ok(p) => p,
        Err(e) => {
            results.notes.push(format!("no certificates: {e:#}"));
            return results;
        }
    };
    let mut servers = vec![TlsServer::Lariat, TlsServer::Nginx];
    if Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        results.notes.push(
            "nginx is not installed: its columns are empty (apt-get install nginx-light)".into(),
        );
        servers.pop();
    }
    for round in 1..=rounds {
        for &part in parts {
            for (c, &cert) in Cert::ALL.iter().enumerate() {
                let mut these = servers.clone();
                if part == Part::Idle {
                    these.push(TlsServer::LariatEcho);
                }
                for i in 0..these.len() {
                    let server = these[(i + round - 1) % these.len()];
                    let run = TlsRun::new(part, server, cert, round);
                    let run = measure(binaries, &dir, load, &pairs[c], run).await;
                    eprintln!("[tls {round}/{rounds}] {}", line(&run));
                    results.runs.push(run);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    results
}

fn line(run: &TlsRun) -> String {
    let head = format!(
        "{:?} {:<18} {:<12}",
        run.part,
        run.server.name(),
        run.cert.name()
    );
    if let Some(e) = &run.error {
        return format!("{head} FAILED: {e}");
    }
    let failed = match (&run.first_error, run.failed) {
        (_, 0) => String::new(),
        (e, n) => format!(", {n} failed (first: {})", e.as_deref().unwrap_or("?")),
    };
    match run.part {
        Part::Handshake => format!(
            "{head} {:.0} handshakes/s, {:.0} µs server CPU per handshake{failed}",
            run.handshakes_per_s, run.server_cpu_us_per_handshake
        ),
        Part::Idle => format!(
            "{head} {:.0} B per idle connection ({} open){failed}",
            run.bytes_per_connection, run.opened
        ),
    }
}

/// Median over the rounds of `value` for one server and certificate.
fn med(
    results: &TlsResults,
    part: Part,
    server: TlsServer,
    cert: Cert,
    value: fn(&TlsRun) -> f64,
) -> Option<f64> {
    let values: Vec<f64> = results
        .runs
        .iter()
        .filter(|r| r.part == part && r.server == server && r.cert == cert && r.error.is_none())
        .map(value)
        .filter(|v| v.is_finite())
        .collect();
    median(&values)
}

/// Median of the per-round ratios `value(nginx) / value(lariat)` (above 1: lariat does better when
/// smaller is better).
fn round_ratio(
    results: &TlsResults,
    part: Part,
    cert: Cert,
    value: fn(&TlsRun) -> f64,
) -> Option<f64> {
    round_ratio_of(results, TlsServer::Lariat, part, cert, value)
}

/// [`round_ratio`] for another lariat server.
fn round_ratio_of(
    results: &TlsResults,
    lariat: TlsServer,
    part: Part,
    cert: Cert,
    value: fn(&TlsRun) -> f64,
) -> Option<f64> {
    let rounds = results.runs.iter().map(|r| r.round).max().unwrap_or(0);
    let ratios: Vec<f64> = (1..=rounds)
        .filter_map(|round| {
            let find = |server| {
                results
                    .runs
                    .iter()
                    .find(|r| {
                        r.part == part
                            && r.server == server
                            && r.cert == cert
                            && r.round == round
                            && r.error.is_none()
                    })
                    .map(value)
            };
            Some(find(TlsServer::Nginx)? / find(lariat)?)
        })
        .filter(|v| v.is_finite())
        .collect();
    median(&ratios)
}

/// The Markdown tables: one per part measured.
pub fn markdown(results: &TlsResults, rounds: usize) -> String {
    let mut out = String::new();
    let f = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let parts: Vec<Part> = [Part::Handshake, Part::Idle]
        .into_iter()
        .filter(|p| results.runs.iter().any(|r| r.part == *p))
        .collect();
    for part in parts {
        match part {
            Part::Handshake => {
                let _ = writeln!(out, "| certificate | lariat handshakes/s | nginx handshakes/s | lariat µs CPU/handshake | nginx µs CPU/handshake | handshakes per core, lariat / nginx (median of {rounds} per-round ratios) |");
                let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
                for cert in Cert::ALL {
                    let rate = |s| med(results, part, s, cert, |r| r.handshakes_per_s);
                    let cpu = |s| med(results, part, s, cert, |r| r.server_cpu_us_per_handshake);
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {}× |",
                        cert.name(),
                        f(rate(TlsServer::Lariat), 0),
                        f(rate(TlsServer::Nginx), 0),
                        f(cpu(TlsServer::Lariat), 0),
                        f(cpu(TlsServer::Nginx), 0),
                        f(
                            round_ratio(results, part, cert, |r| r.server_cpu_us_per_handshake),
                            2
                        ),
                    );
                }
            }
            Part::Idle => {
                if !out.is_empty() {
                    out.push('\n');
                }
                let _ = writeln!(out, "| certificate | lariat http-hello B per idle TLS connection | nginx return 200 | lariat http-hello / nginx (median of {rounds} per-round ratios) | lariat echo (the TLS layer alone) | lariat echo / nginx |");
                let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
                for cert in Cert::ALL {
                    let bytes = |s| med(results, part, s, cert, |r| r.bytes_per_connection);
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {}× | {} | {}× |",
                        cert.name(),
                        f(bytes(TlsServer::Lariat), 0),
                        f(bytes(TlsServer::Nginx), 0),
                        f(
                            round_ratio(results, part, cert, |r| 1.0 / r.bytes_per_connection),
                            2
                        ),
                        f(bytes(TlsServer::LariatEcho), 0),
                        f(
                            round_ratio_of(results, TlsServer::LariatEcho, part, cert, |r| {
                                1.0 / r.bytes_per_connection
                            }),
                            2
                        ),
                    );
                }
            }
        }
    }
    out
}

/// Writes every raw number as JSON.
pub fn write_json(path: &Path, results: &TlsResults) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(results).context("serialising the results")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
