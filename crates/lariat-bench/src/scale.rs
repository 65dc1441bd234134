//! Scale: connection churn (connect, 64-byte echo, close) against lariat with more accept loops or
//! processes on one port, each configuration against one accept loop measured in the same run:
//!
//! - `lariat serve`: one process, one accept loop (the baseline);
//! - `lariat serve --acceptors 2`: two accept loops in one process, on clones of the socket;
//! - `lariat serve --workers 2`: a supervisor and two worker processes sharing its socket;
//! - two `lariat serve --reuseport` processes, the second bound to the first one's port.
//!
//! Every process runs one runtime worker (`--threads 1`). The server CPU time is summed over every
//! process of the configuration and its descendants (the workers of `--workers`), read from
//! /proc before and after the load. In the pinned rounds every server process runs on the server
//! CPU and the client on the client CPU, so a ratio is the cost of the extra loops or processes on
//! one core; the unpinned round lets servers and client use every CPU, to show whether more loops
//! or processes buy throughput when the cores are shared with the client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::churn::{self, ChurnResult};
use crate::host;
use crate::proc;
use crate::report::{self, Measured, Metric, Sample};
use crate::server::{Binaries, Kind, Scale, Server, SERVER_CPU};

/// Other work (in cores) above which a run counts as disturbed, in the notes.
const DISTURBED: f64 = 0.25;

/// After the servers stopped, how long processes left of their trees get before SIGKILL.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the processes may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    /// Every server process on the server CPU, the client on the client CPU.
    Pinned,
    /// Servers and client on every CPU.
    Unpinned,
}

impl Pinning {
    /// The samples' measurement name.
    pub fn measurement(self) -> &'static str {
        match self {
            Pinning::Pinned => "scale",
            Pinning::Unpinned => "scale-unpinned",
        }
    }

    /// The CPU list the server processes are started on (`taskset -c`).
    fn server_cpus(self) -> String {
        match self {
            Pinning::Pinned => SERVER_CPU.to_string(),
            Pinning::Unpinned => host::online_cpus(),
        }
    }

    fn metrics(self) -> (Metric, Metric) {
        match self {
            Pinning::Pinned => (Metric::ScaleChurnRate, Metric::ScaleCpuPerConnection),
            Pinning::Unpinned => (
                Metric::ScaleUnpinnedChurnRate,
                Metric::ScaleUnpinnedCpuPerConnection,
            ),
        }
    }
}

/// Lets the client (this thread, which drives the current-thread runtime) use every CPU until
/// dropped, then pins it to `cpu` again.
pub struct Unpinned {
    cpu: usize,
}

impl Unpinned {
    pub fn begin(cpu: usize) -> anyhow::Result<Unpinned> {
        host::unpin_self().context("letting the client run on every CPU")?;
        Ok(Unpinned { cpu })
    }
}

impl Drop for Unpinned {
    fn drop(&mut self) {
        if let Err(e) = host::pin_self_to_cpu(self.cpu) {
            eprintln!(
                "lariat-bench: cannot pin the client to CPU {} again: {e:#}",
                self.cpu
            );
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    /// The configuration, e.g. `lariat serve --workers 2`.
    pub configuration: String,
    pub pinning: Pinning,
    /// The CPU list the server processes were started on.
    pub server_cpus: String,
    #[serde(flatten)]
    pub churn: ChurnResult,
    /// Each server process's part of the server CPU time, in the order started (a supervisor
    /// before its workers).
    pub processes: Vec<ProcessCpu>,
    /// Whether the set of server processes changed during the load (a worker restarted or gone):
    /// the CPU time of a process gone is then missing.
    pub processes_changed: bool,
    /// CPU time the machine was busy with anything but the servers and this client (other
    /// processes, kernel threads, interrupts, a hypervisor's steal; loopback's softirq work when it
    /// is not charged to a process) over wall time, in cores: high means the run was disturbed.
    pub other_cpu_utilisation: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    /// `process`, `process N` (one of several `--reuseport` processes), `supervisor`, `worker`.
    pub role: String,
    pub cpus_allowed: Option<String>,
    pub cpu_us: u64,
    /// Its part of the configuration's server CPU time.
    pub cpu_share: f64,
}

impl ScaleResult {
    /// Each process's part of the CPU time, as `role pct%`, or None for a single process.
    pub fn split(&self) -> Option<String> {
        (self.processes.len() > 1).then(|| {
            self.processes
                .iter()
                .map(|p| format!("{:.0}", p.cpu_share * 100.0))
                .collect::<Vec<_>>()
                .join("/")
        })
    }
}

impl Measured for ScaleResult {
    fn metrics(&self) -> Vec<(Metric, f64)> {
        let (rate, cpu) = self.pinning.metrics();
        vec![
            (rate, self.churn.rate_per_s),
            (cpu, self.churn.server_cpu_us_per_connection),
        ]
    }

    fn summary(&self) -> String {
        let roles: Vec<&str> = self.processes.iter().map(|p| p.role.as_str()).collect();
        format!(
            "{}, other CPU {:.0}%{}{}",
            self.churn.summary(),
            self.other_cpu_utilisation * 100.0,
            self.split()
                .map(|s| format!("; CPU split {} % ({})", s, roles.join("/")))
                .unwrap_or_default(),
            if self.processes_changed {
                "; the server processes changed during the load"
            } else {
                ""
            }
        )
    }

    fn errors(&self) -> u64 {
        self.churn.errors.total()
    }
}

/// The server processes of one configuration. Dropping it stops them (SIGTERM, then SIGKILL; a
/// supervisor drains and stops its workers), then kills whatever is left of their process trees.
struct Deployment {
    scale: Scale,
    servers: Vec<Server>,
    /// Every descendant seen, with its start time (so a reused pid is never killed).
    seen: Vec<(u32, u64)>,
}

/// A server process and its role.
struct Process {
    pid: u32,
    role: String,
}

impl Deployment {
    fn start(binaries: &Binaries, scale: Scale, pinning: Pinning) -> anyhow::Result<Deployment> {
        let kind = Kind::LariatScale(scale);
        let binary = binaries.path(kind);
        let cpus = pinning.server_cpus();
        // From here on the guard owns every process started, so each error path stops them.
        let mut deployment = Deployment {
            scale,
            servers: Vec::new(),
            seen: Vec::new(),
        };
        let args = kind.args();
        deployment
            .servers
            .push(Server::spawn(binary, &args, &cpus).context("starting the first server")?);
        let addr = deployment.servers[0].addr;
        // The others bind the first one's port (with SO_REUSEPORT, as it did).
        let args: Vec<String> = args
            .into_iter()
            .map(|a| {
                if a == "127.0.0.1:0" {
                    addr.to_string()
                } else {
                    a
                }
            })
            .collect();
        for n in 1..scale.processes() {
            let server = Server::spawn(binary, &args, &cpus)
                .with_context(|| format!("starting server {} on {addr}", n + 1))?;
            if server.addr != addr {
                bail!("server {} listens on {}, not on {addr}", n + 1, server.addr);
            }
            deployment.servers.push(server);
        }
        deployment.processes();
        Ok(deployment)
    }

    fn addr(&self) -> SocketAddr {
        self.servers[0].addr
    }

    /// Every server process now: each started one, then its descendants.
    fn processes(&mut self) -> Vec<Process> {
        let several = self.servers.len() > 1;
        let mut all = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            let children = proc::descendants(server.pid());
            let role = match (self.scale, several) {
                (Scale::Workers(_), _) => "supervisor".to_string(),
                (_, true) => format!("process {}", i + 1),
                (_, false) => "process".to_string(),
            };
            all.push(Process {
                pid: server.pid(),
                role,
            });
            for pid in children {
                if let Ok(start) = proc::start_time(pid) {
                    if !self.seen.contains(&(pid, start)) {
                        self.seen.push((pid, start));
                    }
                }
                all.push(Process {
                    pid,
                    role: "worker".to_string(),
                });
            }
        }
        all
    }

    /// The descendants seen that still run (the same process: same pid and start time).
    fn leftovers(&self) -> Vec<u32> {
        self.seen
            .iter()
            .filter(|&&(pid, start)| proc::alive(pid) && proc::start_time(pid).ok() == Some(start))
            .map(|&(pid, _)| pid)
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.processes();
        // Each server's own guard: SIGTERM, SIGKILL after a grace period.
        self.servers.clear();
        // A supervisor stops its workers before it exits; if it had to be killed, its workers got
        // SIGTERM (PDEATHSIG) and drain. Whatever is still running after a while is killed.
        let deadline = Instant::now() + LEFTOVER_TIMEOUT;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for pid in left {
                    eprintln!("lariat-bench: server process {pid} outlived its parent; SIGKILL");
                    if let Ok(pid) = libc::pid_t::try_from(pid) {
                        // SAFETY: kill(2) has no memory-safety preconditions; the pid's start time
                        // was just checked, so it is the server process seen, not a reused pid.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                let gone = Instant::now() + LEFTOVER_TIMEOUT;
                while !self.leftovers().is_empty() && Instant::now() < gone {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts `scale` placed as `pinning` says, churns `concurrency` clients against it for
/// `duration`, and stops it.
pub async fn measure(
    binaries: &Binaries,
    pinning: Pinning,
    round: usize,
    scale: Scale,
    duration: Duration,
    concurrency: usize,
) -> Sample {
    let mut sample = Sample::new(pinning.measurement(), round, Kind::LariatScale(scale));
    let mut deployment = match Deployment::start(binaries, scale, pinning) {
        Ok(deployment) => deployment,
        Err(err) => {
            sample.error = Some(format!("{err:#}"));
            return sample;
        }
    };
    let pid = deployment.servers[0].pid();
    sample.pid = Some(pid);
    sample.server_cpus_allowed = proc::cpus_allowed_list(pid).ok();
    match run(&mut deployment, pinning, duration, concurrency).await {
        Ok(result) => {
            match serde_json::to_value(&result) {
                Ok(value) => sample.result = Some(value),
                Err(err) => sample.error = Some(format!("serialising the result: {err}")),
            }
            sample.metrics = result.metrics();
            sample.summary = result.summary();
            sample.operation_errors = result.errors();
        }
        Err(err) => sample.error = Some(format!("{err:#}")),
    }
    let exited: Vec<String> = deployment
        .servers
        .iter_mut()
        .filter_map(|s| Some(format!("{}: {}", s.pid(), s.exited()?)))
        .collect();
    if !exited.is_empty() {
        sample.server_exited = Some(exited.join("; "));
    }
    drop(deployment);
    sample
}

async fn run(
    deployment: &mut Deployment,
    pinning: Pinning,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<ScaleResult> {
    let addr = deployment.addr();
    churn::preflight(addr).await?;

    let before: Vec<(Process, Duration)> = deployment
        .processes()
        .into_iter()
        .map(|p| {
            let cpu = proc::cpu_time(p.pid)?;
            Ok((p, cpu))
        })
        .collect::<anyhow::Result<_>>()?;
    let me = std::process::id();
    let client_cpu_before = proc::cpu_time(me)?;
    let busy_before = proc::machine_busy_time()?;
    let start = Instant::now();
    let (completed, errors) = churn::load(addr, start + duration, concurrency).await?;
    let elapsed = start.elapsed();
    let busy = proc::machine_busy_time()?.saturating_sub(busy_before);
    let client_cpu = proc::cpu_time(me)?.saturating_sub(client_cpu_before);

    // Every process there was before the load (a worker whose supervisor died is no longer in the
    // tree, but still serves), then any that appeared during it (all of whose CPU time is the
    // load's).
    let mut changed = false;
    let mut processes = Vec::new();
    let now = deployment.processes();
    let appeared = now
        .into_iter()
        .filter(|p| !before.iter().any(|(b, _)| b.pid == p.pid))
        .map(|p| (p, Duration::ZERO))
        .collect::<Vec<_>>();
    changed |= !appeared.is_empty();
    for (p, was) in before.iter().chain(&appeared) {
        // A process that exited is gone from /proc, or a zombie whose times still read.
        changed |= !proc::alive(p.pid);
        let Ok(cpu) = proc::cpu_time(p.pid) else {
            continue;
        };
        processes.push(ProcessCpu {
            pid: p.pid,
            role: p.role.clone(),
            cpus_allowed: proc::cpus_allowed_list(p.pid).ok(),
            cpu_us: u64::try_from(cpu.saturating_sub(*was).as_micros()).unwrap_or(u64::MAX),
            cpu_share: 0.0,
        });
    }
    let server_cpu_us: u64 = processes.iter().map(|p| p.cpu_us).sum();
    for p in &mut processes {
        p.cpu_share = if server_cpu_us > 0 {
            p.cpu_us as f64 / server_cpu_us as f64
        } else {
            0.0
        };
    }
    let other = busy
        .saturating_sub(Duration::from_micros(server_cpu_us))
        .saturating_sub(client_cpu);
    Ok(ScaleResult {
        configuration: Kind::LariatScale(deployment.scale).name().into_owned(),
        pinning,
        server_cpus: pinning.server_cpus(),
        churn: ChurnResult::from_parts(
            concurrency,
            completed,
            elapsed,
            Duration::from_micros(server_cpu_us),
            client_cpu,
            errors,
        ),
        processes,
        processes_changed: changed,
        other_cpu_utilisation: other.as_secs_f64() / elapsed.as_secs_f64(),
    })
}

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
            Pinning::Unpinned => out.push_str(&format!(
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
            "scale: every process runs one runtime worker (--threads 1); server CPU is summed over \
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
