//! HTTP (`--only http`): `lariat serve --handler http-hello` (on `lariat::http`) against the same
//! hyper service on a plain tokio listener and hyper-util (`hyper-hello`, the goal: at least 0.97× its
//! request rate and at most 1.03× its server CPU per request), and against nginx `return 200` (for
//! information; skipped with a note when nginx is not installed).
//!
//! Each server runs pinned to the server CPU (one runtime worker; nginx one worker process, no master),
//! the load generator pinned to the client CPU: `wrk` for HTTP/1.1 keep-alive, `h2load` for HTTP/2
//! (h2c with prior knowledge). Each run lasts a few seconds against a fresh server; the rounds
//! alternate the servers' order and the table reports the median of the rounds, with the ratios
//! between medians of the same invocation. The server's CPU is its user + system time from
//! /proc/PID/stat over the run, divided by the requests answered.
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

/// Everything the HTTP measurement found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpResults {
    pub runs: Vec<HttpRun>,
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
            for i in 0..servers.len() {
                // Each round starts with another server, so none always runs first.
                let server = servers[(i + round - 1) % servers.len()];
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

/// The table: per protocol, each server's median rate and CPU per request, and lariat's ratios.
pub fn markdown(results: &HttpResults, load: &Load, rounds: usize) -> String {
    if results.runs.is_empty() && results.restart.is_none() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "HTTP: {} s per run, median of {rounds} round(s) (of the undisturbed ones: other work at most \
         {DISTURBED} cores); wrk -t1 -c{}; h2load -c{} -m{}\n",
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
        for (name, key, digits, goal) in metrics {
            let [l, h, n] = HttpServer::ALL.map(|s| median(results, s, protocol, key));
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} ({goal}) | {} | {} |",
                protocol.name(),
                fmt(l, digits),
                fmt(h, digits),
                fmt(ratio(l, h), 3),
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
