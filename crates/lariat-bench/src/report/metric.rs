//! The headline numbers the report has rows for: their labels, baselines, targets and formats.

use serde::Serialize;

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

pub(super) enum Target {
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
    pub(super) fn row_label(self, server: Kind) -> String {
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
    pub(super) fn target(self, server: Kind) -> Target {
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
    pub(super) fn describe(&self, baseline: Option<String>) -> String {
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

    pub(super) fn met(&self, lariat: f64, ratio: f64) -> Option<bool> {
        match self {
            Target::RatioAtLeast(r) => ratio.is_finite().then_some(ratio >= *r),
            Target::RatioAtMost(r) => ratio.is_finite().then_some(ratio <= *r),
            Target::AbsoluteAtMost(v, _) => lariat.is_finite().then_some(lariat <= *v),
            Target::Reported => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
