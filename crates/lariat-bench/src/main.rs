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
//! and two SO_REUSEPORT processes, pinned (median of the rounds) and unpinned (one round), then
//! across cores (the CPUs split between servers and client threads, N loops, threads or processes
//! on N server cores), in tables of its own (see [`scale`]). The metrics measurement (in the
//! default run, or alone with `--only metrics`) is lariat's alone too: `lariat serve --metrics`,
//! scraped every 100 ms, against `lariat serve` without it, idle memory and churn, pinned, median
//! of the rounds, in a table of its own (see [`metrics`]).
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
mod measure;
mod metrics;
mod nginx;
mod notes;
mod plan;
mod plot;
mod probe;
mod proc;
mod report;
mod restart;
mod scale;
mod server;
mod throughput;
mod tls;
mod zoo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::host::Machine;
use crate::measure::{measure, progress_line, run_metrics, run_scale};
use crate::notes::notes;
use crate::plan::{Config, Measurement};
use crate::server::Binaries;

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
    let config = Config::new(&args);
    host::pin_self_to_cpu(CLIENT_CPU)
        .context("the bench needs two CPUs: the servers run on CPU 0 and the client on CPU 1")?;
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
        if let Some(part) = measurement.tls_part() {
            let results = tls::run(binaries, &[part], config.tls_load(), rounds).await;
            println!("{}", tls::markdown(&results, rounds));
            for note in &results.notes {
                println!("- {note}");
            }
            let path = args
                .json
                .with_file_name(format!("{}.json", measurement.name()));
            tls::write_json(&path, &results)?;
            eprintln!("TLS results in {}", path.display());
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
    let scale_table = scale::tables(&samples, config.rounds, &config.scale_layout);
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
        print!("{}", http::markdown(results, &config.http_load()));
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
