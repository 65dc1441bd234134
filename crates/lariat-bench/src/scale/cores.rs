//! The scale measurement across cores, laid out from the machine's core count so one command runs
//! it anywhere: the CPUs this process may use are split in two, the first half (at least one) for
//! the servers and the rest for the client, one client thread pinned to each of its CPUs. For each
//! N from 1 up to every server core (1, 2, 4, …, and the server cores themselves), four
//! configurations get N server cores:
//!
//! - `lariat serve --threads N`: one accept loop, N runtime threads (where one loop saturates);
//! - `lariat serve --acceptors N --threads N`: N accept loops on one socket (one accept queue);
//! - `lariat serve --workers N`: N worker processes on the supervisor's socket (one accept queue);
//! - N × `lariat serve --reuseport`: N processes, each with its own socket and accept queue, each
//!   pinned to a core of its own.
//!
//! The table gives each configuration's churn against one accept loop on one core, measured the
//! same way in the same run.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::{Pinning, Placement};
use crate::churn::{self, Errors};
use crate::host;
use crate::report::{self, Sample};
use crate::server::{Kind, Scale};

/// Which CPUs the servers and the client get.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// The servers' CPUs: the first half of the CPUs this process may use (at least one).
    pub server: Vec<usize>,
    /// The client threads' CPUs: the rest (the server's CPU when there is only one).
    pub client: Vec<usize>,
}

impl Layout {
    /// Splits `cpus` (those this process may run on, in order) between servers and client.
    pub fn new(cpus: &[usize]) -> Layout {
        let cpus = if cpus.is_empty() { &[0][..] } else { cpus };
        let servers = (cpus.len() / 2).max(1);
        let (server, client) = cpus.split_at(servers);
        Layout {
            server: server.to_vec(),
            client: if client.is_empty() {
                server.to_vec()
            } else {
                client.to_vec()
            },
        }
    }

    /// The server core counts measured: 1, 2, 4, … below the number of server cores, and that
    /// number itself.
    pub fn steps(&self) -> Vec<usize> {
        let all = self.server.len();
        let mut steps: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
            .take_while(|&n| n < all)
            .collect();
        steps.push(all);
        steps
    }

    /// The configurations run on `cores` server cores, each with where it runs.
    pub fn configurations(&self, cores: usize) -> Vec<(Scale, Placement)> {
        let cores = cores.clamp(1, self.server.len());
        let mine = &self.server[..cores];
        let placement = |server_cpus: Vec<String>, threads: usize| Placement {
            pinning: Pinning::Cores,
            server_cpus,
            threads,
            client_cpus: self.client.clone(),
            server_cores: cores,
        };
        let all = vec![host::cpu_list(mine)];
        let n = u8::try_from(cores).unwrap_or(u8::MAX);
        if cores == 1 {
            return vec![(Scale::Single, placement(all, 1))];
        }
        vec![
            (Scale::Single, placement(all.clone(), cores)),
            (Scale::Acceptors(n), placement(all.clone(), cores)),
            (Scale::Workers(n), placement(all, 1)),
            (
                Scale::ReusePort(n),
                placement(mine.iter().map(|c| c.to_string()).collect(), 1),
            ),
        ]
    }
}

/// Churns `concurrency` connections from each client thread, one pinned to each of `cpus` (on
/// the calling thread's runtime when `cpus` is empty), until `deadline`; the connections completed
/// and the errors, summed.
pub async fn load(
    addr: SocketAddr,
    deadline: Instant,
    concurrency: usize,
    cpus: &[usize],
) -> anyhow::Result<(u64, Errors)> {
    if cpus.is_empty() {
        return churn::load(addr, deadline, concurrency).await;
    }
    let mut results = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("client-{cpu}"))
            .spawn(move || {
                let run = || -> anyhow::Result<(u64, Errors)> {
                    host::pin_self_to_cpu(cpu)?;
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("building a client thread's runtime")?
                        .block_on(churn::load(addr, deadline, concurrency))
                };
                let _ = tx.send(run());
            })
            .context("starting a client thread")?;
        results.push(rx);
    }
    let mut completed = 0;
    let mut errors = Errors::default();
    for rx in results {
        let (done, errs) = rx.await.context("a client thread panicked")??;
        completed += done;
        errors.merge(errs);
    }
    Ok((completed, errors))
}

/// One line of the table: the medians of one configuration on some server cores.
struct Line {
    rate: Option<f64>,
    cpu: Option<f64>,
    server_use: Option<f64>,
    client_use: Option<f64>,
    other_use: Option<f64>,
}

fn line(samples: &[Sample], scale: Scale, cores: usize) -> Option<(String, Line)> {
    let mine: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|s| s.measurement == Pinning::Cores.measurement())
        .filter(|s| s.server == Kind::LariatScale(scale))
        .filter_map(|s| s.result.as_ref())
        .filter(|r| r.get("server_cores").and_then(|v| v.as_u64()) == Some(cores as u64))
        .collect();
    let configuration = mine.first()?.get("configuration")?.as_str()?.to_string();
    let field = |key: &str| {
        let values: Vec<f64> = mine
            .iter()
            .filter_map(|r| r.get(key)?.as_f64())
            .filter(|v| v.is_finite())
            .collect();
        report::median(&values)
    };
    Some((
        configuration,
        Line {
            rate: field("rate_per_s"),
            cpu: field("server_cpu_us_per_connection"),
            server_use: field("server_cpu_utilisation"),
            client_use: field("client_cpu_utilisation"),
            other_use: field("other_cpu_utilisation"),
        },
    ))
}

/// The table across cores, each configuration against one accept loop on one core; empty when it
/// did not run.
pub fn markdown(samples: &[Sample], layout: &Layout, rounds: usize) -> String {
    if !samples
        .iter()
        .any(|s| s.measurement == Pinning::Cores.measurement())
    {
        return String::new();
    }
    let mut out = format!(
        "Scale across cores: servers on CPUs {} (N of them per configuration), {} client thread(s) \
         on CPUs {}; median of {rounds} round(s)\n\n\
         | configuration | server cores | churn (conn/s) | × 1 loop on 1 core | per server core (conn/s) | \
         server CPU/conn (µs) | server CPU (cores) | client CPU (cores) | other CPU (cores) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        host::cpu_list(&layout.server),
        layout.client.len(),
        host::cpu_list(&layout.client),
    );
    let base = line(samples, Scale::Single, 1).and_then(|(_, l)| l.rate);
    let number = |v: Option<f64>, decimals: usize| {
        v.map_or("n/a".to_string(), |v| format!("{v:.decimals$}"))
    };
    for cores in layout.steps() {
        for (scale, _) in layout.configurations(cores) {
            let Some((configuration, l)) = line(samples, scale, cores) else {
                continue;
            };
            let ratio = match (l.rate, base) {
                (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
                _ => "n/a".to_string(),
            };
            out.push_str(&format!(
                "| {configuration} | {cores} | {} | {ratio} | {} | {} | {} | {} | {} |\n",
                number(l.rate, 0),
                number(l.rate.map(|r| r / cores as f64), 0),
                number(l.cpu, 1),
                number(l.server_use, 2),
                number(l.client_use, 2),
                number(l.other_use, 2),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_from_the_core_count() {
        let two = Layout::new(&[0, 1]);
        assert_eq!((two.server.clone(), two.client.clone()), (vec![0], vec![1]));
        assert_eq!(two.steps(), [1]);
        assert_eq!(two.configurations(1).len(), 1);

        let sixteen = Layout::new(&(0..16).collect::<Vec<_>>());
        assert_eq!(sixteen.server, (0..8).collect::<Vec<_>>());
        assert_eq!(sixteen.client, (8..16).collect::<Vec<_>>());
        assert_eq!(sixteen.steps(), [1, 2, 4, 8]);
        let eight = sixteen.configurations(8);
        assert_eq!(eight.len(), 4);
        let (scale, single) = &eight[0];
        assert_eq!(*scale, Scale::Single);
        assert_eq!(
            (single.server_cpus.clone(), single.threads),
            (vec!["0,1,2,3,4,5,6,7".to_string()], 8)
        );
        assert_eq!(single.configuration(*scale), "lariat serve --threads 8");
        let (scale, reuseport) = &eight[3];
        assert_eq!(*scale, Scale::ReusePort(8));
        assert_eq!(reuseport.server_cpus.len(), 8);
        assert_eq!(reuseport.server_cpus[7], "7");
        assert_eq!(reuseport.threads, 1);
        assert_eq!(reuseport.client_cpus.len(), 8);

        assert_eq!(
            Layout::new(&(0..24).collect::<Vec<_>>()).steps(),
            [1, 2, 4, 8, 12]
        );
        let one = Layout::new(&[3]);
        assert_eq!((one.server.clone(), one.client.clone()), (vec![3], vec![3]));
    }

    fn sample(scale: Scale, cores: usize, configuration: &str, rate: f64) -> Sample {
        Sample {
            result: Some(serde_json::json!({
                "configuration": configuration,
                "server_cores": cores,
                "rate_per_s": rate,
                "server_cpu_us_per_connection": 1e6 / rate,
                "server_cpu_utilisation": cores as f64,
                "client_cpu_utilisation": 0.5,
                "other_cpu_utilisation": 0.1,
            })),
            ..Sample::new(Pinning::Cores.measurement(), 1, Kind::LariatScale(scale))
        }
    }

    #[test]
    fn table_against_one_loop_on_one_core() {
        let layout = Layout::new(&[0, 1, 2, 3]);
        let samples = [
            sample(Scale::Single, 1, "lariat serve", 10_000.0),
            sample(Scale::Single, 2, "lariat serve --threads 2", 15_000.0),
            sample(
                Scale::ReusePort(2),
                2,
                "2 × lariat serve --reuseport",
                19_000.0,
            ),
        ];
        let table = markdown(&samples, &layout, 1);
        assert!(
            table.contains("| lariat serve | 1 | 10000 | 1.00× | 10000 | 100.0 | 1.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| lariat serve --threads 2 | 2 | 15000 | 1.50× | 7500 |"),
            "{table}"
        );
        assert!(
            table.contains("| 2 × lariat serve --reuseport | 2 | 19000 | 1.90× | 9500 |"),
            "{table}"
        );
        assert!(!table.contains("--acceptors"), "{table}");
        assert!(markdown(&[], &layout, 1).is_empty());
    }
}
