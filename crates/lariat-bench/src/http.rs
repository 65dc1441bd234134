//! HTTP (`--only http`): `lariat serve --handler http-hello` (on `lariat::http`) against the same
//! hyper service on a plain tokio listener and hyper-util (`hyper-hello`, the goal: at least 0.97× its
//! request rate and at most 1.03× its server CPU per request), and against nginx `return 200` (for
//! information; skipped with a note when nginx is not installed).
//!
//! Each server runs pinned to the server CPU (one runtime worker; nginx one worker process, no master),
//! the load generator pinned to the client CPU: `wrk` for HTTP/1.1 keep-alive, `h2load` for HTTP/2
//! (h2c with prior knowledge). Each run lasts a few seconds against a fresh server. In each round
//! and protocol, lariat and hyper-hello run back to back (which goes first alternates between
//! rounds), so the two sides of a round's ratio saw the same load from the rest of the machine; the
//! table reports each server's median and, for the goal, the median of the per-round ratios. The
//! server's CPU is its user + system time from /proc/PID/stat over the run, divided by the requests
//! answered.
//!
//! Last, failed requests per restart: `wrk` keep-alive load on `lariat serve --handler http-hello`
//! through several SIGHUP restarts (the goal: 0).

use serde::Serialize;

use crate::report;
use crate::server::Binaries;

mod generators;
mod nginx;
mod runs;
mod servers;
mod table;

use runs::{measure, measure_restarts};
use servers::hyper_hello;
pub use table::markdown;

/// How hard and how long each run loads a server.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Load {
    pub seconds: u64,
    /// wrk's connections (HTTP/1.1 keep-alive), on one wrk thread.
    pub h1_connections: u32,
    /// h2load's connections, and streams in flight on each.
    pub h2_connections: u32,
    pub h2_streams: u32,
    /// The restart part: SIGHUPs, this far apart, under wrk with this many connections.
    pub restarts: usize,
    pub restart_interval_ms: u64,
    pub restart_connections: u32,
    pub cpu: usize,
}

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpServer {
    /// `lariat serve --handler http-hello`.
    Lariat,
    /// `hyper-hello`: hyper-util on a plain tokio listener.
    Hyper,
    /// nginx `return 200`, one worker.
    Nginx,
}

impl HttpServer {
    const ALL: [HttpServer; 3] = [HttpServer::Lariat, HttpServer::Hyper, HttpServer::Nginx];

    fn name(self) -> &'static str {
        match self {
            HttpServer::Lariat => "lariat http-hello",
            HttpServer::Hyper => "hyper-hello",
            HttpServer::Nginx => "nginx return 200",
        }
    }
}

/// HTTP/1.1 keep-alive (wrk) or HTTP/2 prior knowledge (h2load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    H1,
    H2,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::H1 => "HTTP/1.1 keep-alive (wrk)",
            Protocol::H2 => "HTTP/2 h2c (h2load)",
        }
    }
}

/// One run: a load generator against a fresh server.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRun {
    pub server: HttpServer,
    pub protocol: Protocol,
    pub round: usize,
    pub requests: u64,
    pub rate_per_s: f64,
    pub server_cpu_s: f64,
    pub cpu_per_request_us: f64,
    /// Socket errors, non-2xx answers, failed or timed-out requests, as the load generator counts them.
    pub failed: u64,
    /// CPU the rest of the machine used during the run (neither the server nor the load generator),
    /// in cores: other work on a shared machine slows both sides and makes the run less telling.
    pub other_cores: f64,
    pub error: Option<String>,
}

/// Other work (in cores) above which a run counts as disturbed, in the notes.
const DISTURBED: f64 = 0.25;

/// The restart part's result.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRun {
    pub restarts: usize,
    pub requests: u64,
    pub rate_per_s: f64,
    pub failed: u64,
    pub failed_per_restart: f64,
    pub error: Option<String>,
}

/// lariat against hyper-hello in one round and protocol: the two runs were back to back.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRatio {
    pub protocol: Protocol,
    pub round: usize,
    /// Which ran first in this round.
    pub first: HttpServer,
    /// lariat's requests/s over hyper-hello's (goal ≥ 0.97).
    pub rate: f64,
    /// lariat's server CPU per request over hyper-hello's (goal ≤ 1.03).
    pub cpu_per_request: f64,
    /// Other work on the machine during the two runs, in cores (the larger of the two).
    pub other_cores: f64,
}

/// How many rounds a full (not `--quick`) HTTP measurement runs: single runs on a shared machine
/// swing by tens of per cent, so the goal is judged on the median of several per-round ratios.
pub const ROUNDS: usize = 7;

/// Everything the HTTP measurement found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpResults {
    pub runs: Vec<HttpRun>,
    /// lariat / hyper-hello per round, from runs back to back.
    pub ratios: Vec<RoundRatio>,
    /// The medians of [`ratios`](Self::ratios), per protocol: (protocol, requests/s, CPU per request).
    pub median_ratios: Vec<(Protocol, f64, f64)>,
    pub restart: Option<RestartRun>,
    pub notes: Vec<String>,
}

/// Runs the whole measurement: `rounds` rounds of every server and protocol, then the restarts.
pub async fn run(binaries: &Binaries, load: Load, rounds: usize) -> HttpResults {
    let mut results = HttpResults::default();
    let servers: Vec<HttpServer> = if crate::nginx::installed() {
        HttpServer::ALL.to_vec()
    } else {
        results.notes.push(
            "nginx is not installed: its columns are empty (apt-get install nginx-light)".into(),
        );
        HttpServer::ALL[..2].to_vec()
    };
    if !hyper_hello(binaries).is_file() {
        results.notes.push(format!(
            "{} not found: build it with `cargo build --release -p lariat-bench`",
            hyper_hello(binaries).display()
        ));
    }
    for round in 1..=rounds {
        for protocol in [Protocol::H1, Protocol::H2] {
            // lariat and hyper-hello back to back, the first one alternating; nginx (for information) last.
            let mut order = servers.clone();
            if round % 2 == 0 {
                order.swap(0, 1);
            }
            for server in order {
                let run = measure(binaries, &load, server, protocol, round).await;
                eprintln!(
                    "[http {round}/{rounds}] {:<18} {:<26} {}",
                    server.name(),
                    protocol.name(),
                    match &run.error {
                        Some(e) => format!("FAILED: {e}"),
                        None => format!(
                            "{:.0} req/s, {:.2} µs server CPU per request, {} failed, other work {:.2} cores",
                            run.rate_per_s, run.cpu_per_request_us, run.failed, run.other_cores
                        ),
                    }
                );
                results.runs.push(run);
            }
        }
    }
    results.ratios = round_ratios(&results.runs);
    for protocol in [Protocol::H1, Protocol::H2] {
        let of = |key: fn(&RoundRatio) -> f64| {
            let values: Vec<f64> = results
                .ratios
                .iter()
                .filter(|r| r.protocol == protocol)
                .map(key)
                .collect();
            report::median(&values)
        };
        if let (Some(rate), Some(cpu)) = (of(|r| r.rate), of(|r| r.cpu_per_request)) {
            results.median_ratios.push((protocol, rate, cpu));
        }
    }
    let restart = measure_restarts(binaries, &load).await;
    eprintln!(
        "[http restart] {}",
        match &restart.error {
            Some(e) => format!("FAILED: {e}"),
            None => format!(
                "{} SIGHUPs under wrk -c{}: {} requests, {} failed",
                restart.restarts, load.restart_connections, restart.requests, restart.failed
            ),
        }
    );
    results.restart = Some(restart);
    for run in &results.runs {
        if let Some(e) = &run.error {
            results.notes.push(format!(
                "{} {} round {}: {e}",
                run.server.name(),
                run.protocol.name(),
                run.round
            ));
        } else if run.other_cores > DISTURBED {
            results.notes.push(format!(
                "{} {} round {}: disturbed, other work used {:.2} cores during the run",
                run.server.name(),
                run.protocol.name(),
                run.round,
                run.other_cores
            ));
        }
        if run.failed > 0 {
            results.notes.push(format!(
                "{} {} round {}: {} failed requests",
                run.server.name(),
                run.protocol.name(),
                run.round,
                run.failed
            ));
        }
    }
    results
}

/// lariat over hyper-hello in each round and protocol where both runs succeeded.
fn round_ratios(runs: &[HttpRun]) -> Vec<RoundRatio> {
    let find = |server, protocol, round| {
        runs.iter().position(|r| {
            r.server == server && r.protocol == protocol && r.round == round && r.error.is_none()
        })
    };
    let mut ratios = Vec::new();
    for run in runs {
        if run.server != HttpServer::Lariat {
            continue;
        }
        let (Some(l), Some(h)) = (
            find(HttpServer::Lariat, run.protocol, run.round),
            find(HttpServer::Hyper, run.protocol, run.round),
        ) else {
            continue;
        };
        let (lr, hr) = (&runs[l], &runs[h]);
        if lr.requests == 0 || hr.requests == 0 {
            continue;
        }
        ratios.push(RoundRatio {
            protocol: run.protocol,
            round: run.round,
            first: if l < h {
                HttpServer::Lariat
            } else {
                HttpServer::Hyper
            },
            rate: lr.rate_per_s / hr.rate_per_s,
            cpu_per_request: lr.cpu_per_request_us / hr.cpu_per_request_us,
            other_cores: lr.other_cores.max(hr.other_cores),
        });
    }
    ratios
}
