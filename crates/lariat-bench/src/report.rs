//! Results: per-round samples, medians, the Markdown table and the JSON file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::host::Machine;
use crate::server::{Delivery, Kind, Scale};

/// A headline number, and what counts as meeting its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ChurnRate,
    CpuPerConnection,
    IdleBytes,
    Throughput,
    RestartConnections,
    RestartChurnRate,
    RestartFailed,
    RestartFailedPerRestart,
    RestartToServingMedian,
    RestartToServingMax,
    RestartOldAlive,
    /// Echo throughput of lariat in a `--delivery` mode, against plain lariat in the same run.
    DeliveryThroughput,
    /// Memory per idle connection of lariat in a `--delivery` mode, against `--delivery pull`.
    DeliveryIdleBytes,
    /// Churn rate of lariat with more accept loops or processes, against one loop, all pinned to
    /// the server CPU.
    ScaleChurnRate,
    /// Server CPU per connection (summed over every process) of the same.
    ScaleCpuPerConnection,
    /// [`Metric::ScaleChurnRate`] with servers and client free to use every CPU.
    ScaleUnpinnedChurnRate,
    /// [`Metric::ScaleCpuPerConnection`] with servers and client free to use every CPU.
    ScaleUnpinnedCpuPerConnection,
    /// Memory per idle connection of lariat with `--metrics` (scraped), against lariat without it.
    MetricsIdleBytes,
    /// Churn rate of lariat with `--metrics` (scraped), against lariat without it.
    MetricsChurnRate,
    /// Server CPU per connection of lariat with `--metrics` (scraped), against lariat without it.
    MetricsCpuPerConnection,
}

enum Target {
    /// lariat / naive (or the metric's other baseline) must be at least this.
    RatioAtLeast(f64),
    /// lariat / naive (or the metric's other baseline) must be at most this.
    RatioAtMost(f64),
    /// lariat's own value must be at most this (the unit, for the table).
    AbsoluteAtMost(f64, &'static str),
    /// No target: lariat's own value (and its ratio, if it has a baseline), for the record.
    Reported,
}

impl Metric {
    pub const ALL: [Metric; 20] = [
        Metric::ChurnRate,
        Metric::CpuPerConnection,
        Metric::IdleBytes,
        Metric::Throughput,
        Metric::RestartConnections,
        Metric::RestartChurnRate,
        Metric::RestartFailed,
        Metric::RestartFailedPerRestart,
        Metric::RestartToServingMedian,
        Metric::RestartToServingMax,
        Metric::RestartOldAlive,
        Metric::DeliveryThroughput,
        Metric::DeliveryIdleBytes,
        Metric::ScaleChurnRate,
        Metric::ScaleCpuPerConnection,
        Metric::ScaleUnpinnedChurnRate,
        Metric::ScaleUnpinnedCpuPerConnection,
        Metric::MetricsIdleBytes,
        Metric::MetricsChurnRate,
        Metric::MetricsCpuPerConnection,
    ];

    /// The scale measurement's metrics, which have a table of their own.
    pub fn is_scale(self) -> bool {
        matches!(
            self,
            Metric::ScaleChurnRate
                | Metric::ScaleCpuPerConnection
                | Metric::ScaleUnpinnedChurnRate
                | Metric::ScaleUnpinnedCpuPerConnection
        )
    }

    /// The metrics measurement's metrics, which have a table of their own.
    pub fn is_metrics(self) -> bool {
        matches!(
            self,
            Metric::MetricsIdleBytes | Metric::MetricsChurnRate | Metric::MetricsCpuPerConnection
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::ChurnRate => "churn rate (conn/s)",
            Metric::CpuPerConnection => "server CPU per connection (µs)",
            Metric::IdleBytes => "user-space memory per idle connection (bytes)",
            Metric::Throughput => "echo throughput (MB/s)",
            Metric::RestartConnections => "restarts under churn: connections completed",
            Metric::RestartChurnRate => "restarts under churn: churn rate (conn/s)",
            Metric::RestartFailed => "restarts under churn: failed connections",
            Metric::RestartFailedPerRestart => {
                "restarts under churn: failed connections per restart"
            }
            Metric::RestartToServingMedian => "SIGHUP to successor serving, median (ms)",
            Metric::RestartToServingMax => "SIGHUP to successor serving, max (ms)",
            Metric::RestartOldAlive => "old processes still running after the restarts",
            Metric::DeliveryThroughput => "echo throughput (MB/s)",
            Metric::DeliveryIdleBytes => "user-space memory per idle connection (bytes)",
            Metric::ScaleChurnRate => "scale, pinned: churn rate (conn/s)",
            Metric::ScaleCpuPerConnection => "scale, pinned: server CPU per connection (µs)",
            Metric::ScaleUnpinnedChurnRate => "scale, unpinned: churn rate (conn/s)",
            Metric::ScaleUnpinnedCpuPerConnection => {
                "scale, unpinned: server CPU per connection (µs)"
            }
            Metric::MetricsIdleBytes => "memory per idle connection (bytes)",
            Metric::MetricsChurnRate => "churn rate (conn/s)",
            Metric::MetricsCpuPerConnection => "server CPU per connection (µs)",
        }
    }

    /// The row label for `server`: the metric's label, and for the delivery metrics the mode.
    fn row_label(self, server: Kind) -> String {
        match (self, server) {
            (Metric::DeliveryThroughput, _) => {
                format!("delivery: echo throughput, {server} (MB/s)")
            }
            (Metric::DeliveryIdleBytes, _) => {
                format!("delivery: memory per idle connection, {server} (bytes)")
            }
            (Metric::ScaleChurnRate, _) => format!("scale, pinned: churn rate, {server} (conn/s)"),
            (Metric::ScaleCpuPerConnection, _) => {
                format!("scale, pinned: server CPU per connection, {server} (µs)")
            }
            (Metric::ScaleUnpinnedChurnRate, _) => {
                format!("scale, unpinned: churn rate, {server} (conn/s)")
            }
            (Metric::ScaleUnpinnedCpuPerConnection, _) => {
                format!("scale, unpinned: server CPU per connection, {server} (µs)")
            }
            (Metric::MetricsIdleBytes, _) => {
                format!("metrics: memory per idle connection, {server} (bytes)")
            }
            (Metric::MetricsChurnRate, _) => format!("metrics: churn rate, {server} (conn/s)"),
            (Metric::MetricsCpuPerConnection, _) => {
                format!("metrics: server CPU per connection, {server} (µs)")
            }
            _ => self.label().to_string(),
        }
    }

    /// What the metric's ratios are against: naive, except for the delivery metrics, which
    /// compare lariat with lariat (plain echo, or `--delivery pull`) measured in the same run, and
    /// the scale metrics, which compare lariat's configurations with one accept loop, and the
    /// metrics measurement's, which compare lariat with `--metrics` with lariat without it.
    pub fn baseline(self) -> Kind {
        match self {
            Metric::DeliveryThroughput => Kind::Lariat,
            Metric::DeliveryIdleBytes => Kind::LariatDelivery(Delivery::Pull),
            Metric::ScaleChurnRate
            | Metric::ScaleCpuPerConnection
            | Metric::ScaleUnpinnedChurnRate
            | Metric::ScaleUnpinnedCpuPerConnection => Kind::LariatScale(Scale::Single),
            Metric::MetricsIdleBytes
            | Metric::MetricsChurnRate
            | Metric::MetricsCpuPerConnection => Kind::Lariat,
            _ => Kind::Naive,
        }
    }

    /// How a target names the baseline its ratio is against: None for naive (the default), `off`
    /// for the metrics measurement (lariat without `--metrics`), else the baseline's label.
    pub fn baseline_name(self) -> Option<String> {
        match self.baseline() {
            Kind::Naive => None,
            _ if self.is_metrics() => Some("off".to_string()),
            other => Some(other.baseline_label()),
        }
    }

    /// The metric a result's `self` counts as in the delivery measurement, which reuses the
    /// throughput and idle measurements against other servers (and must not mix with them).
    pub fn in_delivery(self) -> Metric {
        match self {
            Metric::Throughput => Metric::DeliveryThroughput,
            Metric::IdleBytes => Metric::DeliveryIdleBytes,
            other => other,
        }
    }

    /// The metric a result's `self` counts as in the metrics measurement, which reuses the idle
    /// and churn measurements (and must not mix with their lariat-against-naive rows).
    pub fn in_metrics(self) -> Metric {
        match self {
            Metric::IdleBytes => Metric::MetricsIdleBytes,
            Metric::ChurnRate => Metric::MetricsChurnRate,
            Metric::CpuPerConnection => Metric::MetricsCpuPerConnection,
            other => other,
        }
    }

    /// The target of `server`'s row.
    fn target(self, server: Kind) -> Target {
        match self {
            Metric::DeliveryThroughput => match server {
                Kind::LariatDelivery(Delivery::Push | Delivery::Count(_)) => {
                    Target::RatioAtLeast(0.80)
                }
                _ => Target::Reported,
            },
            Metric::DeliveryIdleBytes => Target::RatioAtMost(1.10),
            // Issue 7: metrics cost under 5%.
            Metric::MetricsIdleBytes | Metric::MetricsCpuPerConnection => Target::RatioAtMost(1.05),
            Metric::MetricsChurnRate => Target::RatioAtLeast(0.95),
            Metric::ChurnRate => Target::RatioAtLeast(0.97),
            Metric::CpuPerConnection => Target::RatioAtMost(1.00),
            Metric::IdleBytes => Target::AbsoluteAtMost(1024.0, " B"),
            Metric::Throughput => Target::RatioAtLeast(1.00),
            Metric::RestartFailedPerRestart | Metric::RestartOldAlive => {
                Target::AbsoluteAtMost(0.0, "")
            }
            Metric::RestartConnections
            | Metric::RestartChurnRate
            | Metric::RestartFailed
            | Metric::RestartToServingMedian
            | Metric::RestartToServingMax
            | Metric::ScaleChurnRate
            | Metric::ScaleCpuPerConnection
            | Metric::ScaleUnpinnedChurnRate
            | Metric::ScaleUnpinnedCpuPerConnection => Target::Reported,
        }
    }

    pub fn format(self, value: f64) -> String {
        if !value.is_finite() {
            return "n/a".to_string();
        }
        match self {
            Metric::ChurnRate
            | Metric::IdleBytes
            | Metric::RestartConnections
            | Metric::RestartChurnRate
            | Metric::RestartFailed
            | Metric::RestartOldAlive
            | Metric::DeliveryIdleBytes
            | Metric::ScaleChurnRate
            | Metric::ScaleUnpinnedChurnRate
            | Metric::MetricsIdleBytes
            | Metric::MetricsChurnRate => format!("{value:.0}"),
            Metric::CpuPerConnection
            | Metric::Throughput
            | Metric::RestartFailedPerRestart
            | Metric::RestartToServingMedian
            | Metric::RestartToServingMax
            | Metric::DeliveryThroughput
            | Metric::ScaleCpuPerConnection
            | Metric::ScaleUnpinnedCpuPerConnection
            | Metric::MetricsCpuPerConnection => format!("{value:.1}"),
        }
    }
}

impl Target {
    /// The target as the table shows it; a ratio against another baseline than naive names it
    /// (see [`Metric::baseline_name`]).
    fn describe(&self, baseline: Option<String>) -> String {
        let against = baseline
            .as_deref()
            .map(|b| format!(" {b}"))
            .unwrap_or_default();
        match self {
            Target::RatioAtLeast(r) => format!("≥ {r:.2}×{against}"),
            Target::RatioAtMost(r) => format!("≤ {r:.2}×{against}"),
            Target::AbsoluteAtMost(v, unit) => format!("≤ {v:.0}{unit} (lariat)"),
            Target::Reported if baseline.is_none() => "none (lariat only)".to_string(),
            Target::Reported => "none".to_string(),
        }
    }

    fn met(&self, lariat: f64, ratio: f64) -> Option<bool> {
        match self {
            Target::RatioAtLeast(r) => ratio.is_finite().then_some(ratio >= *r),
            Target::RatioAtMost(r) => ratio.is_finite().then_some(ratio <= *r),
            Target::AbsoluteAtMost(v, _) => lariat.is_finite().then_some(lariat <= *v),
            Target::Reported => None,
        }
    }
}

/// What a measurement reports besides its raw result.
pub trait Measured: Serialize {
    fn metrics(&self) -> Vec<(Metric, f64)>;
    /// One line for the progress output.
    fn summary(&self) -> String;
    /// Failed connections or operations (0 when everything worked).
    fn errors(&self) -> u64;
}

/// One measurement of one server in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub measurement: &'static str,
    pub round: usize,
    pub server: Kind,
    pub pid: Option<u32>,
    pub server_cpus_allowed: Option<String>,
    /// The measurement's raw result, or null if it failed.
    pub result: Option<serde_json::Value>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Set if the server process was no longer running after the measurement.
    pub server_exited: Option<String>,
    /// The measurement's one-line summary, as printed in the progress output.
    pub summary: String,
    #[serde(skip)]
    pub metrics: Vec<(Metric, f64)>,
    #[serde(skip)]
    pub operation_errors: u64,
}

impl Sample {
    /// Starts `kind` for a sample of `measurement`: the sample (with the server's pid and allowed
    /// CPUs) and the running server, or the sample carrying why it did not start.
    pub fn start(
        measurement: &'static str,
        round: usize,
        binaries: &crate::server::Binaries,
        kind: Kind,
    ) -> Result<(Sample, crate::server::Server), Box<Sample>> {
        let mut sample = Sample::new(measurement, round, kind);
        match crate::server::Server::start(binaries, kind) {
            Ok(server) => {
                sample.pid = Some(server.pid());
                sample.server_cpus_allowed = crate::proc::cpus_allowed_list(server.pid()).ok();
                Ok((sample, server))
            }
            Err(err) => {
                sample.error = Some(format!("{err:#}"));
                Err(Box::new(sample))
            }
        }
    }
    /// A sample of `measurement` against `server` in `round`, with nothing measured yet.
    pub fn new(measurement: &'static str, round: usize, server: Kind) -> Sample {
        Sample {
            measurement,
            round,
            server,
            pid: None,
            server_cpus_allowed: None,
            result: None,
            error: None,
            server_exited: None,
            summary: String::new(),
            metrics: Vec::new(),
            operation_errors: 0,
        }
    }

    /// A sample carrying only metrics, for the report's and the plot's tests.
    #[cfg(test)]
    pub fn for_test(server: Kind, metrics: Vec<(Metric, f64)>) -> Sample {
        Sample {
            metrics,
            ..Sample::new("test", 1, server)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: Metric,
    pub label: String,
    /// The server `lariat_rounds` and `lariat_median` are of: `lariat`, or for the delivery rows
    /// `lariat --delivery MODE`.
    pub server: Kind,
    pub naive_rounds: Vec<f64>,
    pub lariat_rounds: Vec<f64>,
    pub naive_median: Option<f64>,
    pub lariat_median: Option<f64>,
    /// For the delivery rows: the lariat configuration the ratio is against (null for the others,
    /// whose ratio is against naive).
    pub baseline: Option<Baseline>,
    /// lariat median / naive median, or / the baseline's median when there is one.
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
    /// actix-echo's values, for the rows against naive (churn, idle, throughput): information,
    /// with no target. Empty and null for the other rows.
    pub actix_rounds: Vec<f64>,
    pub actix_median: Option<f64>,
    /// lariat median / actix median.
    pub lariat_to_actix: Option<f64>,
}

/// Another server a row's ratio is against, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub server: Kind,
    pub rounds: Vec<f64>,
    pub median: Option<f64>,
}

/// Medians per server and metric, with ratio and target, for every metric that was measured: one
/// row of lariat against naive per metric, and for the delivery metrics one row per `--delivery`
/// mode measured (in the order they ran) against the metric's lariat baseline.
pub fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut values: BTreeMap<(Metric, Kind), Vec<f64>> = BTreeMap::new();
    // The servers that reported each metric, in the order they first did.
    let mut servers: BTreeMap<Metric, Vec<Kind>> = BTreeMap::new();
    for sample in samples {
        for &(metric, value) in &sample.metrics {
            let seen = servers.entry(metric).or_default();
            if !seen.contains(&sample.server) {
                seen.push(sample.server);
            }
            if value.is_finite() {
                values
                    .entry((metric, sample.server))
                    .or_default()
                    .push(value);
            }
        }
    }
    let rounds =
        |metric: Metric, kind: Kind| values.get(&(metric, kind)).cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for metric in Metric::ALL {
        let Some(measured) = servers.get(&metric) else {
            continue;
        };
        let baseline = metric.baseline();
        let compared: Vec<Kind> = if baseline == Kind::Naive {
            vec![Kind::Lariat]
        } else {
            measured
                .iter()
                .copied()
                .filter(|&k| k != baseline)
                .collect()
        };
        for server in compared {
            let base_rounds = rounds(metric, baseline);
            let lariat_rounds = rounds(metric, server);
            let base_median = median(&base_rounds);
            let lariat_median = median(&lariat_rounds);
            let ratio = match (base_median, lariat_median) {
                (Some(b), Some(l)) if b != 0.0 => Some(l / b),
                _ => None,
            };
            let target = metric.target(server);
            let met = target.met(lariat_median.unwrap_or(f64::NAN), ratio.unwrap_or(f64::NAN));
            let (actix_rounds, actix_median) = if baseline == Kind::Naive {
                let actix = rounds(metric, Kind::Actix);
                let median = median(&actix);
                (actix, median)
            } else {
                (Vec::new(), None)
            };
            let lariat_to_actix = match (actix_median, lariat_median) {
                (Some(a), Some(l)) if a != 0.0 => Some(l / a),
                _ => None,
            };
            let (naive_rounds, naive_median, other) = if baseline == Kind::Naive {
                (base_rounds, base_median, None)
            } else {
                let other = Baseline {
                    server: baseline,
                    rounds: base_rounds,
                    median: base_median,
                };
                (Vec::new(), None, Some(other))
            };
            rows.push(Row {
                metric,
                label: metric.row_label(server),
                server,
                naive_rounds,
                lariat_rounds,
                naive_median,
                lariat_median,
                baseline: other,
                ratio,
                target: target.describe(metric.baseline_name()),
                met,
                actix_rounds,
                actix_median,
                lariat_to_actix,
            });
        }
    }
    rows
}

/// The median; the mean of the middle two for an even count; None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The Markdown table of medians. A row with another baseline than naive shows it, named, in the
/// naive column (`plain: 1164.8`). When actix-echo was measured, an actix column and a
/// lariat/actix column follow lariat/naive (blank in the rows actix has no part in); the targets
/// are against naive only.
pub fn markdown(rows: &[Row]) -> String {
    let with_actix = rows.iter().any(|r| !r.actix_rounds.is_empty());
    // The scale and metrics rows have their own tables (`scale::markdown`, `metrics::markdown`).
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.metric.is_scale() && !r.metric.is_metrics())
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = if with_actix {
        String::from(
            "| metric | naive | lariat | actix | lariat/naive | lariat/actix | target | met? |\n\
             |---|---:|---:|---:|---:|---:|---|---|\n",
        )
    } else {
        String::from(
            "| metric | naive | lariat | lariat/naive | target | met? |\n\
             |---|---:|---:|---:|---|---|\n",
        )
    };
    let ratio = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.2}×"));
    for row in rows {
        let value = |v: Option<f64>| v.map_or("n/a".to_string(), |v| row.metric.format(v));
        let baseline = match &row.baseline {
            Some(b) => format!("{}: {}", b.server.baseline_label(), value(b.median)),
            None => value(row.naive_median),
        };
        let mut cells = vec![row.label.clone(), baseline, value(row.lariat_median)];
        // Only the rows against naive have an actix value; the others leave its columns blank.
        let actix_row = row.baseline.is_none() && !row.actix_rounds.is_empty();
        if with_actix {
            cells.push(if actix_row {
                value(row.actix_median)
            } else {
                String::new()
            });
        }
        cells.push(ratio(row.ratio));
        if with_actix {
            cells.push(if actix_row {
                ratio(row.lariat_to_actix)
            } else {
                String::new()
            });
        }
        cells.push(row.target.clone());
        cells.push(
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            }
            .to_string(),
        );
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

#[derive(Debug, Serialize)]
pub struct Document<'a, C: Serialize> {
    pub machine: &'a Machine,
    pub config: &'a C,
    pub started_unix_s: u64,
    pub total_s: f64,
    pub samples: &'a [Sample],
    pub rows: &'a [Row],
    pub notes: &'a [String],
    /// What qualifies the scale measurement's tables (its rows are in `rows`).
    pub scale_notes: &'a [String],
    /// What qualifies the metrics measurement's table (its rows are in `rows`).
    pub metrics_notes: &'a [String],
    /// The probe measurement: one `lariat probe` run per server (empty when it did not run).
    pub probe: &'a [crate::probe::ProbeRun],
    pub probe_notes: &'a [String],
    /// The HTTP measurement (`--only http`), if it ran.
    pub http: Option<&'a crate::http::HttpResults>,
    /// The connection hand-over measurement (`--only handover`), if it ran.
    pub handover: Option<&'a crate::handover::HandoverResults>,
}

/// Writes `doc` as pretty JSON to `path`, creating its directory.
pub fn write_json<C: Serialize>(path: &Path, doc: &Document<'_, C>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(doc).context("serialising the results")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
    }

    #[test]
    fn targets() {
        let l = Kind::Lariat;
        assert_eq!(Metric::ChurnRate.target(l).met(0.0, 0.97), Some(true));
        assert_eq!(Metric::ChurnRate.target(l).met(0.0, 0.96), Some(false));
        assert_eq!(
            Metric::CpuPerConnection.target(l).met(0.0, 1.01),
            Some(false)
        );
        assert_eq!(Metric::IdleBytes.target(l).met(1024.0, 9.0), Some(true));
        assert_eq!(Metric::IdleBytes.target(l).met(f64::NAN, 1.0), None);
        assert_eq!(
            Metric::RestartFailedPerRestart.target(l).met(0.0, f64::NAN),
            Some(true)
        );
        assert_eq!(
            Metric::RestartFailedPerRestart.target(l).met(0.1, f64::NAN),
            Some(false)
        );
        assert_eq!(
            Metric::RestartToServingMax.target(l).met(5.0, f64::NAN),
            None
        );
        let push = Kind::LariatDelivery(Delivery::Push);
        let count = Kind::LariatDelivery(Delivery::Count(100));
        let pull = Kind::LariatDelivery(Delivery::Pull);
        let once = Kind::LariatDelivery(Delivery::Once);
        let t = Metric::DeliveryThroughput;
        assert_eq!(t.target(push).met(1.0, 0.80), Some(true));
        assert_eq!(t.target(count).met(1.0, 0.79), Some(false));
        assert_eq!(t.target(pull).met(1.0, 0.10), None);
        assert_eq!(t.target(once).met(1.0, 0.10), None);
        assert_eq!(t.target(push).describe(t.baseline_name()), "≥ 0.80× plain");
        assert_eq!(t.target(once).describe(t.baseline_name()), "none");
        let i = Metric::DeliveryIdleBytes;
        assert_eq!(i.target(push).met(1.0, 1.10), Some(true));
        assert_eq!(i.target(push).met(1.0, 1.11), Some(false));
        assert_eq!(i.target(push).describe(i.baseline_name()), "≤ 1.10× pull");
        let m = Kind::LariatMetrics;
        for metric in [Metric::MetricsIdleBytes, Metric::MetricsCpuPerConnection] {
            assert_eq!(metric.target(m).met(1.0, 1.05), Some(true));
            assert_eq!(metric.target(m).met(1.0, 1.06), Some(false));
            assert_eq!(
                metric.target(m).describe(metric.baseline_name()),
                "≤ 1.05× off"
            );
        }
        let r = Metric::MetricsChurnRate;
        assert_eq!(r.target(m).met(1.0, 0.95), Some(true));
        assert_eq!(r.target(m).met(1.0, 0.94), Some(false));
        assert_eq!(r.target(m).describe(r.baseline_name()), "≥ 0.95× off");
        assert_eq!(Metric::ChurnRate.target(l).describe(None), "≥ 0.97×");
    }

    fn sample(server: Kind, metrics: Vec<(Metric, f64)>) -> Sample {
        Sample::for_test(server, metrics)
    }

    #[test]
    fn actix_columns_are_information() {
        let samples = [
            sample(Kind::Naive, vec![(Metric::ChurnRate, 1000.0)]),
            sample(Kind::Lariat, vec![(Metric::ChurnRate, 990.0)]),
            sample(Kind::Actix, vec![(Metric::ChurnRate, 1100.0)]),
            sample(Kind::Lariat, vec![(Metric::DeliveryThroughput, 1000.0)]),
            sample(
                Kind::LariatDelivery(Delivery::Push),
                vec![(Metric::DeliveryThroughput, 900.0)],
            ),
        ];
        let rows = rows(&samples);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].actix_median, Some(1100.0));
        assert_eq!(rows[0].lariat_to_actix, Some(0.9));
        assert_eq!(rows[0].met, Some(true));
        assert!(rows[1].actix_rounds.is_empty());
        let table = markdown(&rows);
        assert!(
            table.starts_with(
                "| metric | naive | lariat | actix | lariat/naive | lariat/actix | target | met? |\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| churn rate (conn/s) | 1000 | 990 | 1100 | 0.99× | 0.90× | ≥ 0.97× | yes |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| delivery: echo throughput, lariat --delivery push (MB/s) | plain: 1000.0 | 900.0 |  | 0.90× |  | ≥ 0.80× plain | yes |"
            ),
            "{table}"
        );
    }

    #[test]
    fn delivery_rows_compare_with_their_own_baseline() {
        let push = Kind::LariatDelivery(Delivery::Push);
        let pull = Kind::LariatDelivery(Delivery::Pull);
        let samples = [
            sample(Kind::Naive, vec![(Metric::Throughput, 500.0)]),
            sample(Kind::Lariat, vec![(Metric::Throughput, 800.0)]),
            sample(Kind::Lariat, vec![(Metric::DeliveryThroughput, 1000.0)]),
            sample(pull, vec![(Metric::DeliveryThroughput, 700.0)]),
            sample(push, vec![(Metric::DeliveryThroughput, 900.0)]),
            sample(pull, vec![(Metric::DeliveryIdleBytes, 1000.0)]),
            sample(push, vec![(Metric::DeliveryIdleBytes, 1200.0)]),
        ];
        let rows = rows(&samples);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.metric, r.server, r.ratio.unwrap(), r.met))
            .collect();
        assert_eq!(
            summary,
            [
                (Metric::Throughput, Kind::Lariat, 1.6, Some(true)),
                (Metric::DeliveryThroughput, pull, 0.7, None),
                (Metric::DeliveryThroughput, push, 0.9, Some(true)),
                (Metric::DeliveryIdleBytes, push, 1.2, Some(false)),
            ]
        );
        assert!(rows[0].baseline.is_none());
        assert_eq!(rows[1].baseline.as_ref().unwrap().median, Some(1000.0));
        let table = markdown(&rows);
        assert!(
            table.contains(
                "| delivery: echo throughput, lariat --delivery push (MB/s) | plain: 1000.0 | 900.0 | 0.90× | ≥ 0.80× plain | yes |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| delivery: memory per idle connection, lariat --delivery push (bytes) | pull: 1000 | 1200 | 1.20× | ≤ 1.10× pull | **no** |"
            ),
            "{table}"
        );
    }
}
