//! `lariat-bench`: lariat against a naive tokio echo server and an actix-server echo server,
//! side by side, on loopback.
//!
//! The servers run pinned to CPU 0 with one runtime worker each; the client (this process) runs
//! on a current-thread runtime pinned to CPU 1. Each measurement runs in alternating rounds with
//! fresh server processes, and the table reports the median of the rounds for each server. The
//! targets are against naive (`naive-echo`); actix (`actix-echo`, what a user would pick instead)
//! is in columns of its own, for information. The restart measurement is lariat's alone (the
//! others cannot restart), in one round, against targets of its own. So is the delivery
//! measurement: lariat's echo on the message API (`--delivery`) against lariat's plain echo, one
//! round, each mode's ratio against a baseline from the same run. The probe measurement runs
//! `lariat probe` against each of the three servers (started by the probe, not pinned) and
//! reports the verdicts in a second table. The scale measurement (`--only scale`) is lariat's
//! alone: connection churn with one accept loop against two accept loops, two worker processes
//! and two SO_REUSEPORT processes, pinned (median of the rounds) and unpinned (one round), in a
//! table of its own (see [`scale`]). The metrics measurement (in the default run, or alone with
//! `--only metrics`) is lariat's alone too: `lariat serve --metrics`, scraped every 100 ms, against
//! `lariat serve` without it, idle memory and churn, pinned, median of the rounds, in a table of
//! its own (see [`metrics`]).
//!
//! Besides the tables it writes every raw number as JSON (`--json`) and the headline metrics as a
//! bar chart normalised to lariat (`--svg`, by default `side-by-side.svg` next to the JSON).
//!
//! ```text
//! cargo build --release -p lariat-cli -p lariat-bench && target/release/lariat-bench [--quick]
//! ```

mod churn;
mod client;
mod handover;
mod host;
mod http;
mod idle;
mod idle_http;
mod metrics;
mod plot;
mod probe;
mod proc;
mod report;
mod restart;
mod scale;
mod server;
mod throughput;
mod zoo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::host::Machine;
use crate::report::{Measured, Sample};
use crate::scale::Pinning;
use crate::server::{Binaries, Delivery, Kind, Scale};

/// The CPU the client (this process) runs on; the servers get `server::SERVER_CPU`.
const CLIENT_CPU: usize = 1;

/// Benchmarks lariat against a naive tokio accept loop and an actix-server echo (all from the
/// same target directory).
#[derive(Debug, Parser)]
#[command(name = "lariat-bench", version, about)]
struct Args {
    /// One round with shorter runs and fewer connections (about 100 s instead of about 4.5 minutes).
    #[arg(long)]
    quick: bool,

    /// Where to write every raw number, the medians and the ratios, as JSON.
    #[arg(long, value_name = "PATH", default_value = "bench-results/latest.json")]
    json: PathBuf,

    /// Where to write the bar chart of the headline metrics (normalised to lariat = 1.0), as SVG.
    /// Default: side-by-side.svg in the JSON's directory.
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,

    /// Run a single measurement.
    #[arg(long, value_enum)]
    only: Option<Measurement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Measurement {
    /// Short connections: connect, 64-byte echo, close.
    Churn,
    /// Resident memory per open, idle connection.
    Idle,
    /// Bulk echo over one connection.
    Throughput,
    /// Repeated SIGHUP restarts of lariat under connection churn.
    Restart,
    /// lariat's `--delivery` modes against its plain echo: bulk echo throughput, idle memory.
    Delivery,
    /// `lariat probe --short` verdicts for each server (started by the probe, not pinned).
    Probe,
    /// lariat under churn with 1 accept loop, --acceptors 2, --workers 2 and 2 × --reuseport,
    /// pinned and unpinned (not in the default run).
    Scale,
    /// lariat with --metrics, scraped every 100 ms, against lariat without it: idle memory, churn
    /// rate and server CPU per connection.
    Metrics,
    /// `lariat serve --handler http-hello` against the same hyper service on hyper-util and nginx:
    /// HTTP/1.1 (wrk) and HTTP/2 (h2load) requests/s and server CPU per request; failed requests
    /// per restart (not in the default run).
    Http,
    /// `lariat probe --short` against peers (lariat, the naive tokio loop, actix-server, axum,
    /// hyper-util, Go net/http, nginx, HAProxy), each with its own graceful stop and reload signals; a
    /// Markdown table on stdout (not in the default run).
    Zoo,
    /// Resident memory per idle HTTP/1.1 keep-alive connection (one request each) of `lariat serve
    /// --handler http-hello`, with and without hibernation, against nginx `return 200` (not in the
    /// default run).
    IdleHttp,
    /// Connection hand-over at restart: the time to move 1,000 and 10,000 idle echo connections to
    /// the successor (and none lost), and restarts under churn with 5,000 live sessions, against
    /// `--hand-over-window 0` (drain) in the same run (not in the default run).
    Handover,
}

/// The `--delivery N` count measured.
const DELIVERY_COUNT: u32 = 100;

impl Measurement {
    const ALL: [Measurement; 7] = [
        Measurement::Churn,
        Measurement::Idle,
        Measurement::Throughput,
        Measurement::Restart,
        Measurement::Delivery,
        Measurement::Metrics,
        Measurement::Probe,
    ];

    fn name(self) -> &'static str {
        match self {
            Measurement::Churn => "churn",
            Measurement::Idle => "idle",
            Measurement::Throughput => "throughput",
            Measurement::Restart => "restart",
            Measurement::Delivery => "delivery",
            Measurement::Probe => "probe",
            Measurement::Scale => "scale",
            Measurement::Metrics => "metrics",
            Measurement::Http => "http",
            Measurement::Zoo => "zoo",
            Measurement::Handover => "handover",
            Measurement::IdleHttp => "idle-http",
        }
    }

    /// What one round runs, in order: which measurement against which server. Only lariat can
    /// restart; the delivery measurement runs the throughput and idle measurements against lariat
    /// with and without `--delivery`. The probe starts its servers itself (see [`probe`]).
    fn plan(self) -> Vec<(Measurement, Kind)> {
        match self {
            Measurement::Restart => vec![(Measurement::Restart, Kind::Lariat)],
            Measurement::Probe
            | Measurement::Scale
            | Measurement::Metrics
            | Measurement::Http
            | Measurement::Zoo
            | Measurement::IdleHttp
            | Measurement::Handover => Vec::new(),
            Measurement::Delivery => {
                let throughput = [
                    Kind::Lariat,
                    Kind::LariatDelivery(Delivery::Pull),
                    Kind::LariatDelivery(Delivery::Once),
                    Kind::LariatDelivery(Delivery::Count(DELIVERY_COUNT)),
                    Kind::LariatDelivery(Delivery::Push),
                ];
                let idle = [
                    Kind::LariatDelivery(Delivery::Pull),
                    Kind::LariatDelivery(Delivery::Push),
                ];
                throughput
                    .map(|kind| (Measurement::Throughput, kind))
                    .into_iter()
                    .chain(idle.map(|kind| (Measurement::Idle, kind)))
                    .collect()
            }
            _ => Kind::ALL.map(|kind| (self, kind)).to_vec(),
        }
    }

    /// Rounds of it: one for restart, which reports lariat's own values rather than a ratio, one
    /// for delivery, whose ratios are between servers of the same round, and one for the probe's
    /// verdicts. Scale runs this many pinned rounds, then one unpinned round; metrics this many
    /// rounds of each part against each server.
    fn rounds(self, config: &Config) -> usize {
        match self {
            Measurement::Restart
            | Measurement::Delivery
            | Measurement::Probe
            | Measurement::Zoo
            | Measurement::Handover => 1,
            _ => config.rounds,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Config {
    quick: bool,
    measurements: Vec<Measurement>,
    rounds: usize,
    churn_seconds: f64,
    churn_concurrency: usize,
    idle_connections: u64,
    idle_concurrency: usize,
    throughput_seconds: f64,
    restart_seconds: f64,
    restarts: usize,
    server_cpu: usize,
    client_cpu: usize,
    /// Where the scale measurement's unpinned round lets servers and client run.
    unpinned_cpus: String,
    source_addresses: String,
}

impl Config {
    fn new(args: &Args) -> Self {
        let quick = args.quick;
        Config {
            quick,
            measurements: match args.only {
                Some(only) => vec![only],
                None => Measurement::ALL.to_vec(),
            },
            rounds: if quick { 1 } else { 3 },
            churn_seconds: if quick { 2.0 } else { 5.0 },
            churn_concurrency: 32,
            idle_connections: if quick { 2_000 } else { 10_000 },
            idle_concurrency: 256,
            throughput_seconds: if quick { 2.0 } else { 5.0 },
            restart_seconds: if quick { 4.0 } else { 10.0 },
            restarts: if quick { 3 } else { 10 },
            server_cpu: server::SERVER_CPU,
            client_cpu: CLIENT_CPU,
            unpinned_cpus: host::online_cpus(),
            source_addresses: format!(
                "{}..={}",
                client::source_ip(0),
                client::source_ip(u64::from(client::SOURCE_ADDRESSES) - 1)
            ),
        }
    }

    /// How many rounds each measurement runs, for the headers.
    fn rounds_line(&self) -> String {
        let mut parts = Vec::new();
        if self.measurements.iter().any(|&m| {
            !matches!(
                m,
                Measurement::Restart
                    | Measurement::Delivery
                    | Measurement::Probe
                    | Measurement::Scale
                    | Measurement::Metrics
                    | Measurement::Http
                    | Measurement::Handover
            )
        }) {
            parts.push(format!("median of {} round(s)", self.rounds));
        }
        if self.measurements.contains(&Measurement::Restart) {
            parts.push(format!(
                "restart: lariat only, {} SIGHUPs in {:.0} s of churn, one round",
                self.restarts, self.restart_seconds
            ));
        }
        if self.measurements.contains(&Measurement::Delivery) {
            parts.push(
                "delivery: lariat only, --delivery modes against plain echo (throughput) and \
                 --delivery pull (idle memory), one round"
                    .to_string(),
            );
        }
        if self.measurements.contains(&Measurement::Metrics) {
            parts.push(format!(
                "metrics: lariat only, --metrics scraped every {} ms against without, {} idle \
                 connections and {:.0} s of churn each, median of {} round(s)",
                metrics::SCRAPE_PERIOD.as_millis(),
                self.idle_connections,
                self.churn_seconds,
                self.rounds
            ));
        }
        if self.measurements.contains(&Measurement::Http) {
            parts.push(format!(
                "http: lariat http-hello against hyper-hello and nginx, wrk and h2load on the client \
                 CPU, median of {} round(s), then restarts under wrk",
                self.rounds
            ));
        }
        if self.measurements.contains(&Measurement::Handover) {
            parts.push(format!(
                "handover: lariat only, one SIGHUP with {} idle echo connections; {} sessions and \
                 churn through {} SIGHUPs, with hand-over and with --hand-over-window 0; one round",
                handover::IDLE_CONNECTIONS
                    .map(|n| n.to_string())
                    .join(" and "),
                handover::SESSIONS,
                handover::SESSION_RESTARTS
            ));
        }
        if self.measurements.contains(&Measurement::Probe) {
            parts.push(
                "probe: `lariat probe --short` against each server, which it starts itself \
                 (unpinned), one round"
                    .to_string(),
            );
        }
        if self.measurements.contains(&Measurement::Scale) {
            parts.push(format!(
                "scale: lariat only, {:.0} s of churn per configuration, pinned median of {} \
                 round(s), then one unpinned round",
                self.churn_seconds, self.rounds
            ));
        }
        parts.join("; ")
    }

    /// What the HTTP measurement loads each server with.
    fn http_load(&self) -> http::Load {
        http::Load {
            seconds: if self.quick { 2 } else { 4 },
            h1_connections: 32,
            h2_connections: 8,
            h2_streams: 10,
            restarts: if self.quick { 3 } else { 5 },
            restart_interval_ms: 1500,
            restart_connections: 50,
            cpu: self.client_cpu,
        }
    }

    /// What the metrics measurement loads each server with: the same as idle and churn.
    fn metrics_load(&self) -> metrics::Load {
        metrics::Load {
            idle_connections: self.idle_connections,
            idle_concurrency: self.idle_concurrency,
            churn: Duration::from_secs_f64(self.churn_seconds),
            churn_concurrency: self.churn_concurrency,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("lariat-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let binaries = Binaries::locate()?;
    if args.only == Some(Measurement::Zoo) {
        // The probe starts and signals every peer itself; nothing is pinned or timed here.
        let dir = binaries.dir();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the runtime")?;
        runtime.block_on(zoo::run(&dir))?;
        return Ok(ExitCode::SUCCESS);
    }
    let nofile = host::raise_nofile()?;
    let machine = Machine::probe(nofile);
    host::pin_self_to_cpu(CLIENT_CPU)
        .context("the bench needs two CPUs: the servers run on CPU 0 and the client on CPU 1")?;
    let config = Config::new(&args);
    if args.only == Some(Measurement::IdleHttp) {
        let load = idle_http::Load {
            connections: 3_000,
            concurrency: 256,
            rounds: if args.quick { 1 } else { 5 },
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the client runtime")?;
        runtime.block_on(idle_http::run(&binaries, load))?;
        return Ok(ExitCode::SUCCESS);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    runtime.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // Dropping the bench future on a signal drops the running server's guard, which stops it.
        tokio::select! {
            result = bench(&args, &config, &machine, &binaries) => result,
            _ = sigint.recv() => anyhow::bail!("interrupted"),
            _ = sigterm.recv() => anyhow::bail!("terminated"),
        }
    })
}

async fn bench(
    args: &Args,
    config: &Config,
    machine: &Machine,
    binaries: &Binaries,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let started_unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!("{}", machine.line());
    eprintln!(
        "servers on CPU {}, client on CPU {}; {}{}",
        config.server_cpu,
        config.client_cpu,
        config.rounds_line(),
        if config.quick { " (quick)" } else { "" }
    );

    let mut samples = Vec::new();
    let mut probes = Vec::new();
    let mut http_results: Option<http::HttpResults> = None;
    let mut handover_results: Option<handover::HandoverResults> = None;
    for &measurement in &config.measurements {
        let rounds = measurement.rounds(config);
        if measurement == Measurement::Probe {
            for kind in probe::SERVERS {
                let run = probe::run(binaries, kind).await;
                eprintln!("[probe 1/1] {:<6}: {}", kind, run.summary());
                probes.push(run);
            }
            continue;
        }
        if measurement == Measurement::Scale {
            samples.extend(run_scale(binaries, config, rounds).await);
            continue;
        }
        if measurement == Measurement::Metrics {
            samples.extend(run_metrics(binaries, config, rounds).await);
            continue;
        }
        if measurement == Measurement::Handover {
            handover_results = Some(handover::run(binaries).await);
            continue;
        }
        if measurement == Measurement::Http {
            http_results = Some(http::run(binaries, config.http_load(), rounds).await);
            continue;
        }
        for round in 1..=rounds {
            for (run, kind) in measurement.plan() {
                let sample = measure(binaries, config, measurement, run, round, kind).await;
                eprintln!("{}", progress_line(&sample, rounds));
                samples.push(sample);
            }
        }
    }

    let rows = report::rows(&samples);
    let notes = notes(&samples);
    println!("{}", machine.line());
    println!(
        "lariat-bench{}: servers pinned to CPU {} (1 runtime worker each), client on CPU {}; {}\n",
        if config.quick { " --quick" } else { "" },
        config.server_cpu,
        config.client_cpu,
        config.rounds_line(),
    );
    let table = report::markdown(&rows);
    print!("{table}");
    if !notes.is_empty() {
        println!();
        for note in &notes {
            println!("- {note}");
        }
    }
    let scale_table = scale::markdown(&samples, config.rounds);
    let scale_notes = scale::notes(&samples);
    if !scale_table.is_empty() {
        if !table.is_empty() || !notes.is_empty() {
            println!();
        }
        print!("{scale_table}");
        if !scale_notes.is_empty() {
            println!();
            for note in &scale_notes {
                println!("- {note}");
            }
        }
    }
    let metrics_table = metrics::markdown(&samples, &rows, config.rounds);
    let metrics_notes = metrics::notes(&samples);
    if !metrics_table.is_empty() {
        if !table.is_empty() || !notes.is_empty() || !scale_table.is_empty() {
            println!();
        }
        print!("{metrics_table}");
        if !metrics_notes.is_empty() {
            println!();
            for note in &metrics_notes {
                println!("- {note}");
            }
        }
    }
    if let Some(results) = &http_results {
        println!();
        print!(
            "{}",
            http::markdown(results, &config.http_load(), config.rounds)
        );
        if !results.notes.is_empty() {
            println!();
            for note in &results.notes {
                println!("- {note}");
            }
        }
    }
    if let Some(results) = &handover_results {
        println!();
        print!("{}", results.markdown());
    }
    let probe_notes = probe::notes(&probes);
    if !probes.is_empty() {
        if !table.is_empty() || !scale_table.is_empty() || !metrics_table.is_empty() {
            println!();
        }
        print!("{}", probe::markdown(&probes));
        if !probe_notes.is_empty() {
            println!();
            for note in &probe_notes {
                println!("- {note}");
            }
        }
    }

    let doc = report::Document {
        machine,
        config,
        started_unix_s,
        total_s: started.elapsed().as_secs_f64(),
        samples: &samples,
        rows: &rows,
        notes: &notes,
        scale_notes: &scale_notes,
        metrics_notes: &metrics_notes,
        probe: &probes,
        probe_notes: &probe_notes,
        http: http_results.as_ref(),
        handover: handover_results.as_ref(),
    };
    report::write_json(&args.json, &doc)?;
    let svg = args
        .svg
        .clone()
        .unwrap_or_else(|| args.json.with_file_name("side-by-side.svg"));
    let plotted = plot::has_data(&rows);
    if plotted {
        let subtitle = format!(
            "{} ({} CPUs, servers pinned to one); medians of {} round(s){}",
            machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
            machine.nproc,
            config.rounds,
            if config.quick { ", --quick" } else { "" }
        );
        plot::write(&svg, &rows, &subtitle)?;
    }
    eprintln!(
        "raw results in {}{} ({:.0} s in all)",
        args.json.display(),
        if plotted {
            format!(", plot in {}", svg.display())
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );

    let failed = samples.iter().any(|s| s.error.is_some())
        || probes.iter().any(|p| p.error.is_some())
        || handover_results.as_ref().is_some_and(|h| h.failed());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `run` (`measurement` itself, or a part of it) against a fresh server of `kind`, which is
/// stopped before returning.
async fn measure(
    binaries: &Binaries,
    config: &Config,
    measurement: Measurement,
    run: Measurement,
    round: usize,
    kind: Kind,
) -> Sample {
    let (mut sample, mut server) = match Sample::start(measurement.name(), round, binaries, kind) {
        Ok(started) => started,
        Err(failed) => return *failed,
    };

    let outcome = match run {
        Measurement::Churn => record(
            churn::run(
                &server,
                Duration::from_secs_f64(config.churn_seconds),
                config.churn_concurrency,
            )
            .await,
        ),
        Measurement::Idle => {
            record(idle::run(&server, config.idle_connections, config.idle_concurrency).await)
        }
        Measurement::Throughput => record(
            throughput::run(&server, Duration::from_secs_f64(config.throughput_seconds)).await,
        ),
        Measurement::Restart => record(
            restart::run(
                &mut server,
                Duration::from_secs_f64(config.restart_seconds),
                config.restarts,
                config.churn_concurrency,
            )
            .await,
        ),
        Measurement::Delivery => Err(anyhow::anyhow!(
            "the delivery measurement runs as throughput and idle parts"
        )),
        Measurement::Probe | Measurement::Zoo => {
            Err(anyhow::anyhow!("the probe starts its servers itself"))
        }
        Measurement::Scale => Err(anyhow::anyhow!(
            "the scale measurement starts its own servers"
        )),
        Measurement::Metrics => Err(anyhow::anyhow!(
            "the metrics measurement starts its own servers"
        )),
        Measurement::Http => Err(anyhow::anyhow!(
            "the http measurement starts its own servers"
        )),
        Measurement::Handover | Measurement::IdleHttp => {
            Err(anyhow::anyhow!("this measurement starts its own servers"))
        }
    };
    match outcome {
        Ok((value, metrics, errors, summary)) => {
            sample.result = Some(value);
            sample.summary = summary;
            sample.metrics = if measurement == Measurement::Delivery {
                // Its own rows, apart from the lariat-against-naive throughput and idle rows.
                metrics
                    .into_iter()
                    .map(|(metric, value)| (metric.in_delivery(), value))
                    .collect()
            } else {
                metrics
            };
            sample.operation_errors = errors;
        }
        Err(err) => sample.error = Some(format!("{err:#}")),
    }
    // A restart replaces the first process on purpose; its result says how each one ended.
    if run != Measurement::Restart {
        sample.server_exited = server.exited();
    }
    drop(server);
    sample
}

/// The scale measurement: `rounds` pinned rounds of every configuration (each round starting one
/// configuration later, so none always runs first), then one unpinned round with the client
/// free to use every CPU.
async fn run_scale(binaries: &Binaries, config: &Config, rounds: usize) -> Vec<Sample> {
    let duration = Duration::from_secs_f64(config.churn_seconds);
    let concurrency = config.churn_concurrency;
    let mut samples = Vec::new();
    for round in 1..=rounds {
        for i in 0..Scale::ALL.len() {
            let scale = Scale::ALL[(i + round - 1) % Scale::ALL.len()];
            let sample = scale::measure(
                binaries,
                Pinning::Pinned,
                round,
                scale,
                duration,
                concurrency,
            )
            .await;
            eprintln!("{}", progress_line(&sample, rounds));
            samples.push(sample);
        }
    }
    // Re-pinned to the client CPU when dropped.
    let unpinned = scale::Unpinned::begin(CLIENT_CPU);
    for scale in Scale::ALL {
        let sample = match &unpinned {
            Ok(_) => {
                scale::measure(binaries, Pinning::Unpinned, 1, scale, duration, concurrency).await
            }
            Err(err) => {
                let mut sample =
                    Sample::new(Pinning::Unpinned.measurement(), 1, Kind::LariatScale(scale));
                sample.error = Some(format!("{err:#}"));
                sample
            }
        };
        eprintln!("{}", progress_line(&sample, 1));
        samples.push(sample);
    }
    drop(unpinned);
    samples
}

/// The metrics measurement: `rounds` rounds, each running the idle part, then the churn part,
/// against lariat without and with `--metrics` back to back (which goes first alternates).
async fn run_metrics(binaries: &Binaries, config: &Config, rounds: usize) -> Vec<Sample> {
    let load = config.metrics_load();
    let mut samples = Vec::new();
    for round in 1..=rounds {
        for part in metrics::Part::ALL {
            for kind in metrics::order(round) {
                let sample = metrics::measure(binaries, load, round, part, kind).await;
                eprintln!("{}", progress_line(&sample, rounds));
                samples.push(sample);
            }
        }
    }
    samples
}

type Recorded = (serde_json::Value, Vec<(report::Metric, f64)>, u64, String);

fn record<R: Measured>(result: anyhow::Result<R>) -> anyhow::Result<Recorded> {
    let result = result?;
    let value = serde_json::to_value(&result).context("serialising a result")?;
    Ok((value, result.metrics(), result.errors(), result.summary()))
}

fn progress_line(sample: &Sample, rounds: usize) -> String {
    let head = format!(
        "[{} {}/{}] {:<6} pid {:>7}",
        sample.measurement,
        sample.round,
        rounds,
        sample.server,
        sample.pid.map_or("-".to_string(), |p| p.to_string()),
    );
    let body = match (&sample.error, &sample.result) {
        (Some(err), _) => format!("FAILED: {err}"),
        (None, Some(_)) => sample.summary.clone(),
        (None, None) => "no result".to_string(),
    };
    let exited = sample
        .server_exited
        .as_deref()
        .map(|s| format!(" [server had exited: {s}]"))
        .unwrap_or_default();
    format!("{head}: {body}{exited}")
}

/// Anything that qualifies the table: failures, errors, servers that died or were not pinned,
/// and which side of the loopback was the busier.
fn notes(samples: &[Sample]) -> Vec<String> {
    let mut notes = Vec::new();
    for s in samples {
        let at = format!("{} round {} ({})", s.measurement, s.round, s.server);
        if let Some(err) = &s.error {
            notes.push(format!("{at}: measurement failed: {err}"));
        }
        if s.operation_errors > 0 {
            notes.push(format!(
                "{at}: {} failed connections/operations, see the JSON",
                s.operation_errors
            ));
        }
        if let Some(status) = &s.server_exited {
            notes.push(format!(
                "{at}: the server had exited during the run ({status})"
            ));
        }
        if let Some(cpus) = s.server_cpus_allowed.as_deref() {
            // The unpinned scale round is unpinned on purpose.
            if cpus != server::SERVER_CPU.to_string()
                && s.measurement != Pinning::Unpinned.measurement()
            {
                notes.push(format!("{at}: server allowed on CPUs {cpus}, not pinned"));
            }
        }
    }
    // Each measurement and server with CPU figures (churn, throughput, delivery), in run order.
    // (The scale table has CPU columns of its own, and the metrics table notes of its own.)
    let mut pairs: Vec<(&str, Kind)> = Vec::new();
    for s in samples
        .iter()
        .filter(|s| !s.measurement.starts_with("scale") && !s.measurement.starts_with("metrics"))
    {
        if !pairs.contains(&(s.measurement, s.server)) {
            pairs.push((s.measurement, s.server));
        }
    }
    for (measurement, kind) in pairs {
        let utilisation = |key: &str| {
            let values: Vec<f64> = samples
                .iter()
                .filter(|s| s.measurement == measurement && s.server == kind)
                .filter_map(|s| s.result.as_ref()?.get(key)?.as_f64())
                .collect();
            report::median(&values)
        };
        if let (Some(server), Some(client)) = (
            utilisation("server_cpu_utilisation"),
            utilisation("client_cpu_utilisation"),
        ) {
            notes.push(format!(
                "{measurement} ({kind}): server CPU {:.0}% of its core, client CPU {:.0}% of its core",
                server * 100.0,
                client * 100.0
            ));
        }
    }
    if samples.iter().any(|s| s.measurement == "delivery") {
        notes.push(
            "delivery rows: lariat against lariat in the same round; the naive column holds the \
             baseline, named (plain: echo without --delivery; pull: --delivery pull)"
                .to_string(),
        );
    }
    notes
}
