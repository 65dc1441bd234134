//! Metrics cost: `lariat serve --metrics 127.0.0.1:0` with its endpoint scraped by the bench
//! (`GET /metrics`, the whole answer read) every [`SCRAPE_PERIOD`], against `lariat serve` without
//! `--metrics`, both measured in the same round, back to back (the order alternates between
//! rounds), pinned like the other measurements:
//!
//! - memory per idle connection: the idle measurement ([`idle::run`]), the scrapes running from
//!   before its first reading to after its last;
//! - churn rate and server CPU per connection: the churn measurement ([`churn::run`]), the scrapes
//!   running throughout.
//!
//! The server CPU of the churn part includes answering the scrapes; the client's includes making
//! them (a few per second, on the client's runtime next to the load). lariat publishes its counters
//! into the Prometheus recorder only when scraped, so a connection carries nothing for them and the
//! expected cost is the scrapes' alone.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::churn;
use crate::idle;
use crate::proc;
use crate::report::{self, Measured, Metric, Row, Sample};
use crate::server::{Binaries, Kind, Server, SERVER_CPU};

mod scraper;

use scraper::{ScrapeStats, Scraper};

/// How often the bench scrapes `/metrics` of the server with `--metrics`.
pub const SCRAPE_PERIOD: Duration = Duration::from_millis(100);
/// Other work (in cores) above which a run counts as disturbed, in the notes.
const DISTURBED: f64 = 0.25;

/// The two servers compared: without `--metrics` (the baseline), and with it.
pub const SERVERS: [Kind; 2] = [Kind::Lariat, Kind::LariatMetrics];

/// Which measurement runs against the two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Memory per idle connection.
    Idle,
    /// Churn rate and server CPU per connection.
    Churn,
}

impl Part {
    /// In the order each round runs them.
    pub const ALL: [Part; 2] = [Part::Idle, Part::Churn];

    /// The samples' measurement name.
    pub fn measurement(self) -> &'static str {
        match self {
            Part::Idle => "metrics-idle",
            Part::Churn => "metrics-churn",
        }
    }
}

/// The servers in the order round `round` runs them: without `--metrics` first in the odd rounds,
/// with it first in the even ones.
pub fn order(round: usize) -> [Kind; 2] {
    let [off, on] = SERVERS;
    if round % 2 == 1 {
        [off, on]
    } else {
        [on, off]
    }
}

/// How much load each part puts on a server: the same as the idle and churn measurements.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub idle_connections: u64,
    pub idle_concurrency: usize,
    pub churn: Duration,
    pub churn_concurrency: usize,
}

/// One part against one server, with the scrapes (for the server with `--metrics`) and how busy
/// the machine was with other work meanwhile.
#[derive(Debug, Clone, Serialize)]
struct MetricsResult<R> {
    part: Part,
    #[serde(flatten)]
    result: R,
    /// The scrapes, for the server with `--metrics` (null for the other).
    scrape: Option<ScrapeStats>,
    /// Server CPU time over the whole part, in seconds.
    part_server_cpu_s: f64,
    part_elapsed_s: f64,
    /// CPU time the machine spent on anything but the server and this client over the part's wall
    /// time, in cores: high means the run was disturbed.
    other_cpu_utilisation: f64,
}

impl<R: Measured> Measured for MetricsResult<R> {
    fn metrics(&self) -> Vec<(Metric, f64)> {
        self.result
            .metrics()
            .into_iter()
            .map(|(metric, value)| (metric.in_metrics(), value))
            .collect()
    }

    fn summary(&self) -> String {
        let scrapes = self.scrape.as_ref().map_or(String::new(), |s| {
            format!(
                "; {} scrapes ({} failed), {:.1} ms median, {} B",
                s.scrapes,
                s.failed,
                s.latency_ms_median.unwrap_or(f64::NAN),
                s.answer_bytes
            )
        });
        format!(
            "{}{scrapes}; other CPU {:.0}%",
            self.result.summary(),
            self.other_cpu_utilisation * 100.0
        )
    }

    fn errors(&self) -> u64 {
        self.result.errors() + self.scrape.as_ref().map_or(0, |s| s.failed)
    }
}

/// Starts `kind` pinned to the server CPU, runs `part` against it (scraping it if it has
/// `--metrics`), and stops it.
pub async fn measure(
    binaries: &Binaries,
    load: Load,
    round: usize,
    part: Part,
    kind: Kind,
) -> Sample {
    let (mut sample, mut server) = match Sample::start(part.measurement(), round, binaries, kind) {
        Ok(started) => started,
        Err(failed) => return *failed,
    };
    let outcome = match part {
        Part::Idle => {
            let run = idle::run(&server, load.idle_connections, load.idle_concurrency);
            record(run_part(&server, kind, part, run).await)
        }
        Part::Churn => {
            let run = churn::run(&server, load.churn, load.churn_concurrency);
            record(run_part(&server, kind, part, run).await)
        }
    };
    match outcome {
        Ok((value, metrics, errors, summary)) => {
            sample.result = Some(value);
            sample.metrics = metrics;
            sample.operation_errors = errors;
            sample.summary = summary;
        }
        Err(err) => sample.error = Some(format!("{err:#}")),
    }
    sample.server_exited = server.exited();
    drop(server);
    sample
}

type Recorded = (serde_json::Value, Vec<(Metric, f64)>, u64, String);

fn record<R: Measured>(result: anyhow::Result<MetricsResult<R>>) -> anyhow::Result<Recorded> {
    let result = result?;
    let value = serde_json::to_value(&result).context("serialising a result")?;
    Ok((value, result.metrics(), result.errors(), result.summary()))
}

/// Runs `run` (`part` against `server`, a `kind`), scraping the server throughout if it is
/// `--metrics`'s.
async fn run_part<R: Measured>(
    server: &Server,
    kind: Kind,
    part: Part,
    run: impl std::future::Future<Output = anyhow::Result<R>>,
) -> anyhow::Result<MetricsResult<R>> {
    let pid = server.pid();
    let me = std::process::id();
    let scraper = if kind == Kind::LariatMetrics {
        Some(Scraper::start(server.metrics_addr()?))
    } else {
        None
    };
    let server_before = proc::cpu_time(pid)?;
    let client_before = proc::cpu_time(me)?;
    let busy_before = proc::machine_busy_time()?;
    let started = Instant::now();
    let result = run.await;
    let scrape = match scraper {
        Some(scraper) => Some(scraper.stop().await?),
        None => None,
    };
    let elapsed = started.elapsed();
    let busy = proc::machine_busy_time()?.saturating_sub(busy_before);
    let server_cpu = proc::cpu_time(pid)?.saturating_sub(server_before);
    let client_cpu = proc::cpu_time(me)?.saturating_sub(client_before);
    let other = busy.saturating_sub(server_cpu).saturating_sub(client_cpu);
    Ok(MetricsResult {
        part,
        result: result?,
        scrape,
        part_server_cpu_s: server_cpu.as_secs_f64(),
        part_elapsed_s: elapsed.as_secs_f64(),
        other_cpu_utilisation: other.as_secs_f64() / elapsed.as_secs_f64(),
    })
}

/// The value of `metric` in `server`'s sample of `round`, if it measured one.
fn value(samples: &[Sample], metric: Metric, server: Kind, round: usize) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.server == server && s.round == round)
        .flat_map(|s| &s.metrics)
        .find(|&&(m, v)| m == metric && v.is_finite())
        .map(|&(_, v)| v)
}

/// The metrics table: each metric without and with `--metrics`, their ratio (medians), each
/// round's ratio (the two servers of a round ran back to back), and the target. Empty when
/// the metrics measurement did not run.
pub fn markdown(samples: &[Sample], rows: &[Row], rounds: usize) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.metric.is_metrics()).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "Metrics cost: `lariat serve --metrics 127.0.0.1:0` scraped (GET /metrics, whole answer) \
         every {} ms, against `lariat serve` without it; server on CPU {SERVER_CPU}, median of \
         {rounds} round(s)\n\n\
         | metric | off | on | on/off | on/off per round | target | met? |\n\
         |---|---:|---:|---:|---|---|---|\n",
        SCRAPE_PERIOD.as_millis()
    );
    let [off, on] = SERVERS;
    for row in rows {
        let shown = |v: Option<f64>| v.map_or("n/a".to_string(), |v| row.metric.format(v));
        let ratio = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.2}×"));
        let mut rounds_seen: Vec<usize> = samples
            .iter()
            .filter(|s| s.metrics.iter().any(|&(m, _)| m == row.metric))
            .map(|s| s.round)
            .collect();
        rounds_seen.sort_unstable();
        rounds_seen.dedup();
        let per_round: Vec<String> = rounds_seen
            .into_iter()
            .map(|round| {
                let r = match (
                    value(samples, row.metric, off, round),
                    value(samples, row.metric, on, round),
                ) {
                    (Some(b), Some(v)) if b != 0.0 => Some(v / b),
                    _ => None,
                };
                ratio(r)
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.metric.label(),
            shown(row.baseline.as_ref().and_then(|b| b.median)),
            shown(row.lariat_median),
            ratio(row.ratio),
            per_round.join(", "),
            row.target,
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            },
        ));
    }
    out
}

/// What qualifies the metrics table: the scrapes made, how busy server and client were in the
/// churn part, and disturbed runs.
pub fn notes(samples: &[Sample]) -> Vec<String> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| Part::ALL.iter().any(|p| p.measurement() == s.measurement))
        .collect();
    if mine.is_empty() {
        return Vec::new();
    }
    let mut notes = Vec::new();
    let field = |s: &Sample, key: &str| s.result.as_ref()?.get(key)?.as_f64();
    for part in Part::ALL {
        let of_part: Vec<&Sample> = mine
            .iter()
            .copied()
            .filter(|s| s.measurement == part.measurement())
            .collect();
        let scrapes: Vec<&serde_json::Value> = of_part
            .iter()
            .filter_map(|s| s.result.as_ref()?.get("scrape").filter(|v| !v.is_null()))
            .collect();
        if !scrapes.is_empty() {
            let ints = |key: &str| -> Vec<u64> {
                scrapes
                    .iter()
                    .filter_map(|v| v.get(key)?.as_u64())
                    .collect()
            };
            let floats = |key: &str| -> Vec<f64> {
                scrapes
                    .iter()
                    .filter_map(|v| v.get(key)?.as_f64())
                    .collect()
            };
            let counts = ints("scrapes");
            let max = floats("latency_ms_max").into_iter().reduce(f64::max);
            notes.push(format!(
                "{}: {} scrapes per run ({} failed in all), answers of {} bytes, {:.2} ms per scrape \
                 (median of the runs' medians; slowest {:.2} ms)",
                part.measurement(),
                range(&counts),
                ints("failed").iter().sum::<u64>(),
                range(&ints("answer_bytes")),
                report::median(&floats("latency_ms_median")).unwrap_or(f64::NAN),
                max.unwrap_or(f64::NAN),
            ));
        }
        if part == Part::Churn {
            for kind in SERVERS {
                let of_kind: Vec<&Sample> = of_part
                    .iter()
                    .copied()
                    .filter(|s| s.server == kind)
                    .collect();
                let utilisation = |key: &str| {
                    let values: Vec<f64> = of_kind.iter().filter_map(|s| field(s, key)).collect();
                    report::median(&values)
                };
                if let (Some(server), Some(client)) = (
                    utilisation("server_cpu_utilisation"),
                    utilisation("client_cpu_utilisation"),
                ) {
                    notes.push(format!(
                        "{} ({kind}): server CPU {:.0}% of its core, client CPU {:.0}% of its core",
                        part.measurement(),
                        server * 100.0,
                        client * 100.0
                    ));
                }
            }
        }
    }
    for s in &mine {
        if let Some(other) = field(s, "other_cpu_utilisation") {
            if other > DISTURBED {
                notes.push(format!(
                    "{} round {} ({}): disturbed: the machine spent {other:.2} cores on other work",
                    s.measurement, s.round, s.server
                ));
            }
        }
    }
    let others: Vec<f64> = mine
        .iter()
        .filter_map(|s| field(s, "other_cpu_utilisation"))
        .collect();
    notes.push(format!(
        "metrics: the two servers of a round run back to back, without --metrics first in odd \
         rounds and with it first in even ones; other work on the machine {} cores over the runs",
        match (
            others.iter().copied().reduce(f64::min),
            others.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2}"),
            _ => "n/a".to_string(),
        }
    ));
    notes
}

/// `a–b`, or `a` when all are equal, or `n/a`.
fn range(values: &[u64]) -> String {
    match (values.iter().min(), values.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
        (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
        _ => "n/a".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(part: Part, round: usize, kind: Kind, metrics: Vec<(Metric, f64)>) -> Sample {
        let scrape = (kind == Kind::LariatMetrics).then(|| {
            serde_json::json!({
                "scrapes": 40 + round,
                "failed": 0,
                "answer_bytes": 4100,
                "latency_ms_median": 0.5,
                "latency_ms_max": 2.0,
            })
        });
        Sample {
            metrics,
            result: Some(serde_json::json!({
                "scrape": scrape,
                "server_cpu_utilisation": 0.95,
                "client_cpu_utilisation": 0.96,
                "other_cpu_utilisation": if round == 2 { 0.5 } else { 0.07 },
            })),
            ..Sample::new(part.measurement(), round, kind)
        }
    }

    #[test]
    fn order_alternates() {
        assert_eq!(order(1), [Kind::Lariat, Kind::LariatMetrics]);
        assert_eq!(order(2), [Kind::LariatMetrics, Kind::Lariat]);
        assert_eq!(order(3), order(1));
    }

    #[test]
    fn table_and_notes() {
        let (off, on) = (Kind::Lariat, Kind::LariatMetrics);
        let idle = Metric::IdleBytes.in_metrics();
        let rate = Metric::ChurnRate.in_metrics();
        let samples = [
            sample(Part::Idle, 1, off, vec![(idle, 1000.0)]),
            sample(Part::Idle, 1, on, vec![(idle, 990.0)]),
            sample(Part::Churn, 1, off, vec![(rate, 50000.0)]),
            sample(Part::Churn, 1, on, vec![(rate, 45000.0)]),
            sample(Part::Idle, 2, on, vec![(idle, 1030.0)]),
            sample(Part::Idle, 2, off, vec![(idle, 1000.0)]),
        ];
        let rows = report::rows(&samples);
        let table = markdown(&samples, &rows, 2);
        assert!(
            table.contains(
                "| memory per idle connection (bytes) | 1000 | 1010 | 1.01× | 0.99×, 1.03× | ≤ 1.05× off | yes |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| churn rate (conn/s) | 50000 | 45000 | 0.90× | 0.90× | ≥ 0.95× off | **no** |"
            ),
            "{table}"
        );
        // The main table leaves these rows to this one.
        assert!(report::markdown(&rows).is_empty());
        let notes = notes(&samples);
        assert!(
            notes.iter().any(|n| n.starts_with(
                "metrics-idle: 41–42 scrapes per run (0 failed in all), answers of 4100 bytes, 0.50 ms"
            )),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n == "metrics-churn (lariat --metrics): server CPU 95% of its core, client CPU 96% of its core"),
            "{notes:?}"
        );
        assert_eq!(
            notes.iter().filter(|n| n.contains("disturbed")).count(),
            2,
            "{notes:?}"
        );
        assert!(markdown(&[], &[], 3).is_empty());
        assert!(super::notes(&[]).is_empty());
    }
}
