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

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proc;
use crate::report;
use crate::server::{Binaries, Kind, Server, SERVER_CPU};

mod generators;
mod nginx;

use generators::{children_cpu, h2load, wrk};
use nginx::{nginx_installed, Nginx};

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

/// A server under test: one of the bench's own (stopped on drop), or nginx.
enum Running {
    Bench(Server),
    Nginx(Nginx),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Bench(s) => s.pid(),
            Running::Nginx(n) => n.child.id(),
        }
    }

    fn port(&self, protocol: Protocol) -> u16 {
        match (self, protocol) {
            (Running::Bench(s), _) => s.addr.port(),
            (Running::Nginx(n), Protocol::H1) => n.h1_port,
            (Running::Nginx(n), Protocol::H2) => n.h2_port,
        }
    }
}

fn hyper_hello(binaries: &Binaries) -> PathBuf {
    binaries.path(Kind::Lariat).with_file_name("hyper-hello")
}

fn lariat_args(extra: &[&str]) -> Vec<String> {
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "http-hello",
        "--max-connections",
        "20000",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

fn start(binaries: &Binaries, server: HttpServer) -> anyhow::Result<Running> {
    let cpu = SERVER_CPU.to_string();
    Ok(match server {
        HttpServer::Lariat => Running::Bench(Server::spawn(
            binaries.path(Kind::Lariat),
            &lariat_args(&[]),
            &cpu,
        )?),
        HttpServer::Hyper => Running::Bench(Server::spawn(
            &hyper_hello(binaries),
            &["127.0.0.1:0".into()],
            &cpu,
        )?),
        HttpServer::Nginx => Running::Nginx(Nginx::start(SERVER_CPU)?),
    })
}

/// One run: a fresh `server`, loaded with `protocol` for `load.seconds`.
async fn measure(
    binaries: &Binaries,
    load: &Load,
    server: HttpServer,
    protocol: Protocol,
    round: usize,
) -> HttpRun {
    let mut run = HttpRun {
        server,
        protocol,
        round,
        requests: 0,
        rate_per_s: f64::NAN,
        server_cpu_s: f64::NAN,
        cpu_per_request_us: f64::NAN,
        failed: 0,
        other_cores: f64::NAN,
        error: None,
    };
    let result = async {
        let running = start(binaries, server)?;
        let pid = running.pid();
        let port = running.port(protocol);
        let before = proc::cpu_time(pid)?;
        let (machine_before, generator_before) = (proc::machine_busy_time()?, children_cpu());
        let began = Instant::now();
        let generated = match protocol {
            Protocol::H1 => wrk(load.cpu, port, load.h1_connections, load.seconds).await?,
            Protocol::H2 => h2load(load.cpu, port, load).await?,
        };
        let cpu = proc::cpu_time(pid)?.saturating_sub(before);
        // The generator has been waited for: its CPU is in the children's usage now.
        let generator = children_cpu().saturating_sub(generator_before);
        let other = proc::machine_busy_time()?
            .saturating_sub(machine_before)
            .saturating_sub(cpu + generator);
        run.other_cores = other.as_secs_f64() / began.elapsed().as_secs_f64();
        drop(running);
        anyhow::Ok((generated, cpu))
    }
    .await;
    match result {
        Ok((g, cpu)) => {
            run.requests = g.requests;
            run.rate_per_s = g.requests as f64 / g.seconds;
            run.server_cpu_s = cpu.as_secs_f64();
            run.cpu_per_request_us = cpu.as_secs_f64() * 1e6 / g.requests.max(1) as f64;
            run.failed = g.failed;
        }
        Err(e) => run.error = Some(format!("{e:#}")),
    }
    run
}

/// wrk keep-alive load on `lariat serve --handler http-hello` through `load.restarts` SIGHUPs.
async fn measure_restarts(binaries: &Binaries, load: &Load) -> RestartRun {
    let mut result = RestartRun {
        restarts: 0,
        requests: 0,
        rate_per_s: f64::NAN,
        failed: 0,
        failed_per_restart: f64::NAN,
        error: None,
    };
    let outcome = async {
        let server = Server::spawn(
            binaries.path(Kind::Lariat),
            &lariat_args(&["--drain-timeout", "5s"]),
            &SERVER_CPU.to_string(),
        )?;
        let interval = Duration::from_millis(load.restart_interval_ms);
        let seconds = (interval * (load.restarts as u32 + 1)).as_secs() + 1;
        let start = Instant::now();
        let (generated, restarted) = tokio::join!(
            wrk(
                load.cpu,
                server.addr.port(),
                load.restart_connections,
                seconds
            ),
            crate::restart::restart_repeatedly(
                &server,
                start,
                interval * (load.restarts as u32 + 1),
                load.restarts
            ),
        );
        let restarts = restarted?.len();
        drop(server);
        anyhow::Ok((generated?, restarts))
    }
    .await;
    match outcome {
        Ok((g, restarts)) => {
            result.restarts = restarts;
            result.requests = g.requests;
            result.rate_per_s = g.requests as f64 / g.seconds;
            result.failed = g.failed;
            result.failed_per_restart = g.failed as f64 / restarts.max(1) as f64;
        }
        Err(e) => result.error = Some(format!("{e:#}")),
    }
    result
}

/// Runs the whole measurement: `rounds` rounds of every server and protocol, then the restarts.
pub async fn run(binaries: &Binaries, load: Load, rounds: usize) -> HttpResults {
    let mut results = HttpResults::default();
    let servers: Vec<HttpServer> = if nginx_installed() {
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

/// The median of `key` over the rounds of `server` and `protocol` that other work did not disturb (over
/// all its rounds if every one was).
fn median(
    results: &HttpResults,
    server: HttpServer,
    protocol: Protocol,
    key: fn(&HttpRun) -> f64,
) -> Option<f64> {
    let runs: Vec<&HttpRun> = results
        .runs
        .iter()
        .filter(|r| r.server == server && r.protocol == protocol && r.error.is_none())
        .collect();
    let quiet: Vec<f64> = runs
        .iter()
        .filter(|r| r.other_cores <= DISTURBED)
        .map(|r| key(r))
        .collect();
    if quiet.is_empty() {
        report::median(&runs.iter().map(|r| key(r)).collect::<Vec<_>>())
    } else {
        report::median(&quiet)
    }
}

/// A row of the table: its name, the value of a run, the digits shown, the goal of lariat / hyper.
type Column = (&'static str, fn(&HttpRun) -> f64, usize, &'static str);

/// The table: per protocol, each server's median rate and CPU per request, and lariat's ratios to
/// hyper-hello (the median of the per-round ratios) and to nginx (between medians).
pub fn markdown(results: &HttpResults, load: &Load) -> String {
    if results.runs.is_empty() && results.restart.is_none() {
        return String::new();
    }
    let rounds = results.runs.iter().map(|r| r.round).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "HTTP: {} s per run, {rounds} round(s); each server's median over the rounds (of the undisturbed \
         ones: other work at most {DISTURBED} cores); lariat / hyper is the median of the per-round \
         ratios (the two back to back, the first alternating); wrk -t1 -c{}; h2load -c{} -m{}\n",
        load.seconds, load.h1_connections, load.h2_connections, load.h2_streams
    );
    let _ = writeln!(
        out,
        "| protocol | metric | lariat http-hello | hyper-hello | lariat / hyper (goal) | nginx return 200 | lariat / nginx |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    for protocol in [Protocol::H1, Protocol::H2] {
        let metrics: [Column; 2] = [
            ("requests/s", |r| r.rate_per_s, 0, "≥ 0.97"),
            (
                "server CPU µs/request",
                |r| r.cpu_per_request_us,
                2,
                "≤ 1.03",
            ),
        ];
        let paired = results
            .median_ratios
            .iter()
            .find(|(p, _, _)| *p == protocol);
        for (i, (name, key, digits, goal)) in metrics.into_iter().enumerate() {
            let [l, h, n] = HttpServer::ALL.map(|s| median(results, s, protocol, key));
            let per_round = paired.map(|&(_, rate, cpu)| if i == 0 { rate } else { cpu });
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} ({goal}) | {} | {} |",
                protocol.name(),
                fmt(l, digits),
                fmt(h, digits),
                fmt(per_round, 3),
                fmt(n, digits),
                fmt(ratio(l, n), 3),
            );
        }
    }
    if let Some(r) = &results.restart {
        let _ = writeln!(
            out,
            "\nRestarts: lariat http-hello, {} SIGHUPs {} ms apart under wrk -c{} (keep-alive): {} requests, \
             {} failed, {} failed per restart (goal 0){}",
            r.restarts,
            load.restart_interval_ms,
            load.restart_connections,
            r.requests,
            r.failed,
            fmt(Some(r.failed_per_restart), 2),
            r.error.as_deref().map(|e| format!("; FAILED: {e}")).unwrap_or_default()
        );
    }
    out
}
