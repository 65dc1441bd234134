//! Running the plan: one sample of a measurement against a fresh server, the scale and metrics
//! measurements' rounds, and the progress line each sample prints.

use std::time::Duration;

use anyhow::Context;

use crate::plan::{Config, Measurement};
use crate::report::{self, Measured, Sample};
use crate::scale::{self, Pinning, Placement};
use crate::server::{Binaries, Kind, Scale};
use crate::{churn, host, idle, metrics, restart, throughput, CLIENT_CPU};

/// Runs `run` (`measurement` itself, or a part of it) against a fresh server of `kind`, which is
/// stopped before returning.
pub async fn measure(
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
        Measurement::Handover
        | Measurement::IdleHttp
        | Measurement::TlsHandshake
        | Measurement::TlsIdle => Err(anyhow::anyhow!(
            "the {} measurement starts its own servers",
            run.name()
        )),
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
/// configuration later, so none always runs first), then `rounds` rounds across cores (see
/// [`scale::cores`]), then one unpinned round with the client free to use every CPU.
pub async fn run_scale(binaries: &Binaries, config: &Config, rounds: usize) -> Vec<Sample> {
    let duration = Duration::from_secs_f64(config.churn_seconds);
    let concurrency = config.churn_concurrency;
    let mut samples = Vec::new();
    for round in 1..=rounds {
        for i in 0..Scale::ALL.len() {
            let scale = Scale::ALL[(i + round - 1) % Scale::ALL.len()];
            let sample = scale::measure(
                binaries,
                &Placement::of(Pinning::Pinned),
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
    samples.extend(run_scale_cores(binaries, config, rounds).await);
    // Re-pinned to the client CPU when dropped.
    let unpinned = scale::Unpinned::begin(CLIENT_CPU);
    for scale in Scale::ALL {
        let sample = match &unpinned {
            Ok(_) => {
                let placement = Placement::of(Pinning::Unpinned);
                scale::measure(binaries, &placement, 1, scale, duration, concurrency).await
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

/// The scale measurement across cores: `rounds` rounds of every configuration on every step of
/// server cores (each round starting one configuration later). The bench's own thread waits on the
/// client CPUs meanwhile, away from the servers' cores.
async fn run_scale_cores(binaries: &Binaries, config: &Config, rounds: usize) -> Vec<Sample> {
    let duration = Duration::from_secs_f64(config.churn_seconds);
    let layout = &config.scale_layout;
    let all: Vec<(Scale, Placement)> = layout
        .steps()
        .into_iter()
        .flat_map(|cores| layout.configurations(cores))
        .collect();
    let mut samples = Vec::new();
    if let Err(err) = host::pin_self_to_cpus(&layout.client) {
        eprintln!("lariat-bench: cannot move the bench to the client CPUs: {err:#}");
    }
    for round in 1..=rounds {
        for i in 0..all.len() {
            let (scale, placement) = &all[(i + round - 1) % all.len()];
            let sample = scale::measure(
                binaries,
                placement,
                round,
                *scale,
                duration,
                config.churn_concurrency,
            )
            .await;
            eprintln!("{}", progress_line(&sample, rounds));
            samples.push(sample);
        }
    }
    if let Err(err) = host::pin_self_to_cpu(CLIENT_CPU) {
        eprintln!("lariat-bench: cannot pin the client to CPU {CLIENT_CPU} again: {err:#}");
    }
    samples
}

/// The metrics measurement: `rounds` rounds, each running the idle part, then the churn part,
/// against lariat without and with `--metrics` back to back (which goes first alternates).
pub async fn run_metrics(binaries: &Binaries, config: &Config, rounds: usize) -> Vec<Sample> {
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

pub fn progress_line(sample: &Sample, rounds: usize) -> String {
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
