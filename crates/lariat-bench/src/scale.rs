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

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::churn::{self, ChurnResult};
use crate::host;
use crate::proc;
use crate::report::{Measured, Metric, Sample};
use crate::server::{Binaries, Kind, Scale, SERVER_CPU};

mod deployment;
mod table;

use deployment::{Deployment, Process};
pub use table::{markdown, notes};

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
