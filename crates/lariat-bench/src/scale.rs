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
//!
//! Across cores (see [`cores`]): the CPUs this process may use are split in two, the first half for
//! the servers and the rest for client threads (one per CPU); each configuration runs with N
//! accept loops, runtime threads or processes on N server cores, N from 1 up to every server core,
//! against one accept loop on one core measured the same way. On 2 CPUs that is N = 1 only.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::churn::{self, ChurnResult};
use crate::host;
use crate::proc;
use crate::report::{Measured, Metric, Sample};
use crate::server::{Binaries, Kind, Scale, SERVER_CPU};

pub mod cores;
mod deployment;
mod table;

use deployment::{Deployment, Process};
pub use table::{markdown, notes};

/// The pinned table, the table across cores and the unpinned table, each when it ran.
pub fn tables(samples: &[Sample], rounds: usize, layout: &cores::Layout) -> String {
    let mut out = markdown(samples, rounds);
    let across = cores::markdown(samples, layout, rounds);
    if !across.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&across);
    }
    out
}

/// Where the processes may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    /// Every server process on the server CPU, the client on the client CPU.
    Pinned,
    /// Servers and client on every CPU.
    Unpinned,
    /// N server cores for a configuration of N loops, threads or processes; client threads on the
    /// other cores (see [`cores`]).
    Cores,
}

impl Pinning {
    /// The samples' measurement name.
    pub fn measurement(self) -> &'static str {
        match self {
            Pinning::Pinned => "scale",
            Pinning::Unpinned => "scale-unpinned",
            Pinning::Cores => "scale-cores",
        }
    }

    /// The CPU list the server processes are started on (`taskset -c`).
    fn server_cpus(self) -> String {
        match self {
            Pinning::Pinned => SERVER_CPU.to_string(),
            Pinning::Unpinned | Pinning::Cores => host::online_cpus(),
        }
    }

    fn metrics(self) -> (Metric, Metric) {
        match self {
            Pinning::Pinned => (Metric::ScaleChurnRate, Metric::ScaleCpuPerConnection),
            Pinning::Unpinned | Pinning::Cores => (
                Metric::ScaleUnpinnedChurnRate,
                Metric::ScaleUnpinnedCpuPerConnection,
            ),
        }
    }
}

/// Where one configuration's server processes and the client run.
#[derive(Debug, Clone)]
pub struct Placement {
    pub pinning: Pinning,
    /// The `taskset -c` list of each server process started, in order (the last one for any
    /// further process).
    pub server_cpus: Vec<String>,
    /// Runtime worker threads of each server process (`--threads`).
    pub threads: usize,
    /// One client thread pinned to each of these CPUs; none: the client runs on the calling thread.
    pub client_cpus: Vec<usize>,
    /// How many cores the server processes may use between them.
    pub server_cores: usize,
}

impl Placement {
    /// Every server process on `pinning`'s CPU list with one runtime thread; the client on the
    /// calling thread.
    pub fn of(pinning: Pinning) -> Placement {
        Placement {
            pinning,
            server_cpus: vec![pinning.server_cpus()],
            threads: 1,
            client_cpus: Vec::new(),
            server_cores: match pinning {
                Pinning::Pinned => 1,
                Pinning::Unpinned | Pinning::Cores => host::online_count(),
            },
        }
    }

    /// The configuration's command, e.g. `lariat serve --workers 2`, with `--threads N` when its
    /// processes run more than one runtime thread.
    pub fn configuration(&self, scale: Scale) -> String {
        let name = Kind::LariatScale(scale).name().into_owned();
        if self.threads > 1 {
            format!("{name} --threads {}", self.threads)
        } else {
            name
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
    /// The CPU list the server processes were started on (one per process, space-separated, when
    /// they differ).
    pub server_cpus: String,
    /// The server cores this configuration was given (for the unpinned round: every CPU).
    pub server_cores: usize,
    /// Runtime worker threads of each server process.
    pub threads: usize,
    /// Client threads, each on a CPU of its own (1: the bench's own thread).
    pub client_threads: usize,
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
        if self.pinning == Pinning::Cores {
            // Its own table, keyed by server cores (see `cores`), not rows of the report.
            return Vec::new();
        }
        let (rate, cpu) = self.pinning.metrics();
        vec![
            (rate, self.churn.rate_per_s),
            (cpu, self.churn.server_cpu_us_per_connection),
        ]
    }

    fn summary(&self) -> String {
        let roles: Vec<&str> = self.processes.iter().map(|p| p.role.as_str()).collect();
        format!(
            "{}{}, other CPU {:.0}%{}{}",
            if self.pinning == Pinning::Cores {
                format!(
                    "{} server core(s), {} client thread(s): ",
                    self.server_cores, self.client_threads
                )
            } else {
                String::new()
            },
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

/// Starts `scale` placed as `placement` says, churns `concurrency` clients (on each client thread)
/// against it for `duration`, and stops it.
pub async fn measure(
    binaries: &Binaries,
    placement: &Placement,
    round: usize,
    scale: Scale,
    duration: Duration,
    concurrency: usize,
) -> Sample {
    let pinning = placement.pinning;
    let mut sample = Sample::new(pinning.measurement(), round, Kind::LariatScale(scale));
    let mut deployment = match Deployment::start(binaries, scale, placement) {
        Ok(deployment) => deployment,
        Err(err) => {
            sample.error = Some(format!("{err:#}"));
            return sample;
        }
    };
    let pid = deployment.servers[0].pid();
    sample.pid = Some(pid);
    sample.server_cpus_allowed = proc::cpus_allowed_list(pid).ok();
    match run(&mut deployment, placement, duration, concurrency).await {
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
    placement: &Placement,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<ScaleResult> {
    let pinning = placement.pinning;
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
    let (completed, errors) =
        cores::load(addr, start + duration, concurrency, &placement.client_cpus).await?;
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
    let client_threads = placement.client_cpus.len().max(1);
    Ok(ScaleResult {
        configuration: placement.configuration(deployment.scale),
        pinning,
        server_cpus: placement.server_cpus.join(" "),
        server_cores: placement.server_cores,
        threads: placement.threads,
        client_threads,
        churn: ChurnResult::from_parts(
            concurrency * client_threads,
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
