//! TLS (`--only tls-handshake`, `--only tls-idle`): `lariat serve --tls-cert/--tls-key --handler
//! http-hello` against nginx with OpenSSL (`return 200`, one worker process, no master), each with an
//! ECDSA P-256 and an RSA-2048 certificate, in the same run.
//!
//! - Handshakes: full handshakes per second and the server's CPU per handshake (user + system time
//!   from /proc/PID/stat over the run, divided by the handshakes), from [`client`] loops on the
//!   client CPU (many connections in flight; each: connect, TLS 1.3 handshake with X25519, one
//!   `Connection: close` request, close). No session is ever resumed. The goal: lariat's CPU per
//!   handshake at most nginx's (≥ 1.0× nginx in handshakes per core).
//! - Idle: the server's resident memory growth per idle TLS keep-alive connection (3,000 connections,
//!   each with one request answered).
//!
//! Servers are pinned to the server CPU, the rounds alternate which server goes first, and the table
//! reports medians of the rounds and the median of the per-round ratios.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::server::Binaries;

mod certs;
mod client;
mod runs;
mod servers;
mod table;

use certs::make_pair;
use runs::measure;
pub use table::markdown;

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
    if !crate::nginx::installed() {
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

/// Writes every raw number as JSON.
pub fn write_json(path: &Path, results: &TlsResults) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(results).context("serialising the results")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
