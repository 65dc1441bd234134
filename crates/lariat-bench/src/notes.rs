//! The notes under the main table: failures, servers that died or were not pinned, and how busy
//! each side of the loopback was.

use crate::report::{self, Sample};
use crate::scale::Pinning;
use crate::server::{self, Kind};

/// Anything that qualifies the table: failures, errors, servers that died or were not pinned,
/// and which side of the loopback was the busier.
pub fn notes(samples: &[Sample]) -> Vec<String> {
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
                && s.measurement != Pinning::Cores.measurement()
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
