//! The scale tables (pinned and unpinned, each configuration against one accept loop) and the
//! notes that qualify them.

use super::Pinning;
use crate::host;
use crate::report::{self, Metric, Sample};
use crate::server::{Kind, Scale, SERVER_CPU};

/// Other work (in cores) above which a run counts as disturbed, in the notes.
const DISTURBED: f64 = 0.25;

/// One line of the scale table: the medians of one configuration over its rounds.
struct Line {
    rate: Option<f64>,
    cpu: Option<f64>,
    server_use: Option<f64>,
    client_use: Option<f64>,
    other_use: Option<f64>,
    /// Each round's CPU split between the processes, for the configurations with several.
    splits: Vec<String>,
}

fn line(samples: &[Sample], pinning: Pinning, scale: Scale) -> Line {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.measurement == pinning.measurement() && s.server == Kind::LariatScale(scale))
        .collect();
    let (rate_metric, cpu_metric) = pinning.metrics();
    let metric = |wanted: Metric| {
        let values: Vec<f64> = mine
            .iter()
            .flat_map(|s| &s.metrics)
            .filter(|&&(m, v)| m == wanted && v.is_finite())
            .map(|&(_, v)| v)
            .collect();
        report::median(&values)
    };
    let field = |key: &str| {
        let values: Vec<f64> = mine
            .iter()
            .filter_map(|s| s.result.as_ref()?.get(key)?.as_f64())
            .collect();
        report::median(&values)
    };
    let splits = mine
        .iter()
        .filter_map(|s| {
            let processes = s.result.as_ref()?.get("processes")?.as_array()?;
            (processes.len() > 1).then(|| {
                processes
                    .iter()
                    .map(|p| {
                        let share = p.get("cpu_share").and_then(|v| v.as_f64()).unwrap_or(0.0);
                        format!("{:.0}", share * 100.0)
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            })
        })
        .collect();
    Line {
        rate: metric(rate_metric),
        cpu: metric(cpu_metric),
        server_use: field("server_cpu_utilisation"),
        client_use: field("client_cpu_utilisation"),
        other_use: field("other_cpu_utilisation"),
        splits,
    }
}

/// The scale tables, pinned and unpinned, each configuration against one accept loop; empty when
/// the scale measurement did not run.
pub fn markdown(samples: &[Sample], rounds: usize) -> String {
    let mut out = String::new();
    for pinning in [Pinning::Pinned, Pinning::Unpinned] {
        if !samples
            .iter()
            .any(|s| s.measurement == pinning.measurement())
        {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        match pinning {
            Pinning::Pinned => out.push_str(&format!(
                "Scale, pinned: every server process on CPU {SERVER_CPU}, the client on another CPU; \
                 median of {rounds} round(s)\n\n"
            )),
            Pinning::Unpinned | Pinning::Cores => out.push_str(&format!(
                "Scale, unpinned: server processes and client free to run on CPUs {}; one round\n\n",
                host::online_cpus()
            )),
        }
        out.push_str(
            "| configuration | churn (conn/s) | × 1 loop | server CPU/conn (µs) | × 1 loop | \
             server CPU (cores) | client CPU (cores) | other CPU (cores) | CPU split % (per round) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        let (rate_metric, cpu_metric) = pinning.metrics();
        let base = line(samples, pinning, Scale::Single);
        for scale in Scale::ALL {
            let l = line(samples, pinning, scale);
            let value =
                |metric: Metric, v: Option<f64>| v.map_or("n/a".into(), |v| metric.format(v));
            let ratio = |v: Option<f64>, b: Option<f64>| match (v, b) {
                (Some(v), Some(b)) if b != 0.0 => format!("{:.2}×", v / b),
                _ => "n/a".to_string(),
            };
            let cores = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                Kind::LariatScale(scale),
                value(rate_metric, l.rate),
                ratio(l.rate, base.rate),
                value(cpu_metric, l.cpu),
                ratio(l.cpu, base.cpu),
                cores(l.server_use),
                cores(l.client_use),
                cores(l.other_use),
                if l.splits.is_empty() {
                    String::new()
                } else {
                    l.splits.join(", ")
                },
            ));
        }
    }
    out
}

/// What qualifies the scale tables: server processes of a pinned round not on the server CPU,
/// process sets that changed during a load, and what the split column holds.
pub fn notes(samples: &[Sample]) -> Vec<String> {
    let mut notes = Vec::new();
    for s in samples
        .iter()
        .filter(|s| s.measurement.starts_with("scale"))
    {
        let Some(result) = &s.result else { continue };
        let at = format!("{} round {} ({})", s.measurement, s.round, s.server);
        if s.measurement == Pinning::Pinned.measurement() {
            let stray: Vec<String> = result
                .get("processes")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let cpus = p.get("cpus_allowed")?.as_str()?;
                    (cpus != SERVER_CPU.to_string()).then(|| {
                        format!(
                            "{} on CPUs {cpus}",
                            p.get("pid").map_or(0, |v| v.as_u64().unwrap_or(0))
                        )
                    })
                })
                .collect();
            if !stray.is_empty() {
                notes.push(format!(
                    "{at}: server processes not pinned: {}",
                    stray.join(", ")
                ));
            }
        }
        if let Some(other) = result.get("other_cpu_utilisation").and_then(|v| v.as_f64()) {
            if other > DISTURBED {
                notes.push(format!(
                    "{at}: disturbed: the machine spent {other:.2} cores on other work during the load"
                ));
            }
        }
        if result.get("processes_changed").and_then(|v| v.as_bool()) == Some(true) {
            notes.push(format!(
                "{at}: the server processes changed during the load; a vanished process's CPU time is missing"
            ));
        }
    }
    if samples.iter().any(|s| s.measurement.starts_with("scale")) {
        notes.push(
            "scale: every process runs one runtime worker (--threads 1; across cores, a single \
             process of N loops or one loop on N cores runs N); server CPU is summed over \
             every process (supervisor and workers for --workers); the split is each process's part \
             of it, in the order started (supervisor first)"
                .to_string(),
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pinning: Pinning, round: usize, scale: Scale, rate: f64, shares: &[f64]) -> Sample {
        let (rate_metric, cpu_metric) = pinning.metrics();
        let processes: Vec<serde_json::Value> = shares
            .iter()
            .map(|s| serde_json::json!({ "pid": 1, "cpus_allowed": "0-1", "cpu_share": s }))
            .collect();
        Sample {
            metrics: vec![(rate_metric, rate), (cpu_metric, 1e6 / rate)],
            result: Some(serde_json::json!({
                "server_cpu_utilisation": 1.0,
                "client_cpu_utilisation": 0.5,
                "other_cpu_utilisation": 0.1,
                "processes": processes,
            })),
            ..Sample::new(pinning.measurement(), round, Kind::LariatScale(scale))
        }
    }

    #[test]
    fn tables_against_one_loop() {
        let pinned = Pinning::Pinned;
        let samples = [
            sample(pinned, 1, Scale::Single, 1000.0, &[1.0]),
            sample(pinned, 1, Scale::Workers(2), 800.0, &[0.2, 0.4, 0.4]),
            sample(pinned, 2, Scale::Single, 1200.0, &[1.0]),
            sample(pinned, 2, Scale::Workers(2), 1000.0, &[0.1, 0.5, 0.4]),
            sample(Pinning::Unpinned, 1, Scale::Single, 500.0, &[1.0]),
            sample(Pinning::Unpinned, 1, Scale::Acceptors(2), 1000.0, &[1.0]),
        ];
        let table = markdown(&samples, 2);
        assert!(
            table.contains(
                "| lariat serve | 1100 | 1.00× | 916.7 | 1.00× | 1.00 | 0.50 | 0.10 |  |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| lariat serve --workers 2 | 900 | 0.82× | 1125.0 | 1.23× | 1.00 | 0.50 | 0.10 | 20/40/40, 10/50/40 |"
            ),
            "{table}"
        );
        let unpinned = &table[table.find("Scale, unpinned").expect("an unpinned table")..];
        assert!(
            unpinned.contains("| lariat serve --acceptors 2 | 1000 | 2.00× | 1000.0 | 0.50× |"),
            "{unpinned}"
        );
        assert!(unpinned.contains("| 2 × lariat serve --reuseport | n/a | n/a |"));
        // The pinned samples say their processes ran on CPUs 0-1: a note each.
        let notes = notes(&samples);
        assert_eq!(
            notes.iter().filter(|n| n.contains("not pinned")).count(),
            4,
            "{notes:?}"
        );
        assert!(markdown(&[], 3).is_empty());
    }
}
