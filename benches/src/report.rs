//! Results: per-round samples, medians, the Markdown table and the JSON file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::host::Machine;
use crate::server::Kind;

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
}

enum Target {
    /// lariat / naive must be at least this.
    RatioAtLeast(f64),
    /// lariat / naive must be at most this.
    RatioAtMost(f64),
    /// lariat's own value must be at most this (the unit, for the table).
    AbsoluteAtMost(f64, &'static str),
    /// No target: lariat's own value, for the record.
    Reported,
}

impl Metric {
    pub const ALL: [Metric; 11] = [
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
    ];

    fn label(self) -> &'static str {
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
        }
    }

    fn target(self) -> Target {
        match self {
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
            | Metric::RestartToServingMax => Target::Reported,
        }
    }

    fn format(self, value: f64) -> String {
        if !value.is_finite() {
            return "n/a".to_string();
        }
        match self {
            Metric::ChurnRate
            | Metric::IdleBytes
            | Metric::RestartConnections
            | Metric::RestartChurnRate
            | Metric::RestartFailed
            | Metric::RestartOldAlive => format!("{value:.0}"),
            Metric::CpuPerConnection
            | Metric::Throughput
            | Metric::RestartFailedPerRestart
            | Metric::RestartToServingMedian
            | Metric::RestartToServingMax => format!("{value:.1}"),
        }
    }
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥ {r:.2}×"),
            Target::RatioAtMost(r) => format!("≤ {r:.2}×"),
            Target::AbsoluteAtMost(v, unit) => format!("≤ {v:.0}{unit} (lariat)"),
            Target::Reported => "none (lariat only)".to_string(),
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

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: Metric,
    pub label: &'static str,
    pub naive_rounds: Vec<f64>,
    pub lariat_rounds: Vec<f64>,
    pub naive_median: Option<f64>,
    pub lariat_median: Option<f64>,
    /// lariat median / naive median.
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

/// Medians per server and metric, with ratio and target, for every metric that was measured.
pub fn rows(samples: &[Sample]) -> Vec<Row> {
    let mut values: BTreeMap<(Metric, &'static str), Vec<f64>> = BTreeMap::new();
    for sample in samples {
        for &(metric, value) in &sample.metrics {
            if value.is_finite() {
                values
                    .entry((metric, sample.server.name()))
                    .or_default()
                    .push(value);
            }
        }
    }
    let measured: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| {
            samples
                .iter()
                .any(|s| s.metrics.iter().any(|(sm, _)| sm == m))
        })
        .collect();
    measured
        .into_iter()
        .map(|metric| {
            let naive_rounds = values
                .get(&(metric, Kind::Naive.name()))
                .cloned()
                .unwrap_or_default();
            let lariat_rounds = values
                .get(&(metric, Kind::Lariat.name()))
                .cloned()
                .unwrap_or_default();
            let naive_median = median(&naive_rounds);
            let lariat_median = median(&lariat_rounds);
            let ratio = match (naive_median, lariat_median) {
                (Some(n), Some(l)) if n != 0.0 => Some(l / n),
                _ => None,
            };
            let target = metric.target();
            let met = target.met(lariat_median.unwrap_or(f64::NAN), ratio.unwrap_or(f64::NAN));
            Row {
                metric,
                label: metric.label(),
                naive_rounds,
                lariat_rounds,
                naive_median,
                lariat_median,
                ratio,
                target: target.describe(),
                met,
            }
        })
        .collect()
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

/// The Markdown table of medians.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| metric | naive | lariat | lariat/naive | target | met? |\n\
         |---|---:|---:|---:|---|---|\n",
    );
    for row in rows {
        let value = |v: Option<f64>| v.map_or("n/a".to_string(), |v| row.metric.format(v));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.label,
            value(row.naive_median),
            value(row.lariat_median),
            row.ratio.map_or("n/a".to_string(), |r| format!("{r:.2}×")),
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

#[derive(Debug, Serialize)]
pub struct Document<'a, C: Serialize> {
    pub machine: &'a Machine,
    pub config: &'a C,
    pub started_unix_s: u64,
    pub total_s: f64,
    pub samples: &'a [Sample],
    pub rows: &'a [Row],
    pub notes: &'a [String],
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
        assert_eq!(Metric::ChurnRate.target().met(0.0, 0.97), Some(true));
        assert_eq!(Metric::ChurnRate.target().met(0.0, 0.96), Some(false));
        assert_eq!(
            Metric::CpuPerConnection.target().met(0.0, 1.01),
            Some(false)
        );
        assert_eq!(Metric::IdleBytes.target().met(1024.0, 9.0), Some(true));
        assert_eq!(Metric::IdleBytes.target().met(f64::NAN, 1.0), None);
        assert_eq!(
            Metric::RestartFailedPerRestart.target().met(0.0, f64::NAN),
            Some(true)
        );
        assert_eq!(
            Metric::RestartFailedPerRestart.target().met(0.1, f64::NAN),
            Some(false)
        );
        assert_eq!(
            Metric::RestartToServingMax.target().met(5.0, f64::NAN),
            None
        );
    }
}
