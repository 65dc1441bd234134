//! Results: per-round samples, medians, the Markdown table and the JSON file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::host::Machine;
use crate::server::Kind;

mod metric;

pub use metric::Metric;

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
    use crate::server::Delivery;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
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
