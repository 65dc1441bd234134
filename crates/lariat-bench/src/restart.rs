//! Restarts under churn: SIGHUP to the serving lariat, again and again, while the churn clients keep
//! connecting. Each SIGHUP starts a successor that inherits the listener; once it serves, the old
//! process logs `successor_pid=PID` on stderr, stops accepting, drains and exits. No client should
//! notice.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::churn::{self, Errors};
use crate::proc;
use crate::report::{self, Measured, Metric};
use crate::server::{Handover, Server};

/// Longest a SIGHUP may take to produce its `successor_pid=` line before the run counts as failed.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the bench looks for that line.
const POLL: Duration = Duration::from_millis(1);
/// After the load, how long the old processes get to finish draining and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct RestartResult {
    pub concurrency: usize,
    pub restarts_requested: usize,
    pub restarts: Vec<Restart>,
    pub completed: u64,
    pub elapsed_s: f64,
    pub rate_per_s: f64,
    /// Every client-side failure during the run: connect, read/write, echo mismatch, timeout.
    pub errors: Errors,
    pub failed_per_restart: f64,
    /// From sending SIGHUP to reading the successor's `successor_pid=` line, median and max.
    pub sighup_to_serving_ms_median: f64,
    pub sighup_to_serving_ms_max: f64,
    /// The bench's own (client) CPU time over wall time.
    pub client_cpu_utilisation: f64,
    /// The first process (the bench's child), and how it ended.
    pub first_pid: u32,
    pub first_exit: Option<String>,
    /// Old processes (every one but the last successor) still running `EXIT_TIMEOUT` after the
    /// load; they are then killed.
    pub old_processes_alive: u64,
    /// From the end of the load until every old process had exited.
    pub old_processes_exited_after_s: Option<f64>,
    /// The last successor, killed at the end, and how long it took to go after SIGKILL.
    pub last_successor_pid: Option<u32>,
    pub last_successor_gone_after_ms: Option<f64>,
}

/// One SIGHUP and the handover it caused.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// When SIGHUP was sent, from the start of the load.
    pub at_s: f64,
    /// The process that got SIGHUP.
    pub from_pid: u32,
    pub successor_pid: u32,
    /// From sending SIGHUP to the bench's stderr reader reading the `successor_pid=` line.
    pub sighup_to_serving_ms: f64,
    /// From sending SIGHUP to the 1 ms poll noticing that line.
    pub detected_after_ms: f64,
    /// Where the successor may run (it inherits the first process's pinning).
    pub successor_cpus_allowed: Option<String>,
}

/// Churns `concurrency` clients against `server` for `duration`, sending SIGHUP `restarts` times,
/// evenly spaced, each to the process serving at the time; then checks that the old processes
/// exited and kills the last successor.
pub async fn run(
    server: &mut Server,
    duration: Duration,
    restarts: usize,
    concurrency: usize,
) -> anyhow::Result<RestartResult> {
    churn::preflight(server.addr).await?;

    let first_pid = server.pid();
    let me = std::process::id();
    let client_cpu_before = proc::cpu_time(me)?;
    let start = Instant::now();
    let (load, restarted) = tokio::join!(
        churn::load(server.addr, start + duration, concurrency),
        restart_repeatedly(server, start, duration, restarts),
    );
    let elapsed = start.elapsed();
    let client_cpu = proc::cpu_time(me)?.saturating_sub(client_cpu_before);
    let (completed, errors) = load?;
    let restarts_done = restarted?;

    // Every process but the last successor should drain and exit by itself.
    let handovers = server.handovers();
    let old: Vec<u32> = std::iter::once(first_pid)
        .chain(
            handovers[..handovers.len().saturating_sub(1)]
                .iter()
                .map(|h| h.successor_pid),
        )
        .collect();
    let load_ended = Instant::now();
    let mut old_processes_exited_after_s = None;
    while load_ended.elapsed() < EXIT_TIMEOUT {
        if !old.iter().any(|&pid| proc::alive(pid)) {
            old_processes_exited_after_s = Some(load_ended.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lingering: Vec<u32> = old.iter().copied().filter(|&p| proc::alive(p)).collect();
    for &pid in lingering.iter().filter(|&&p| p != first_pid) {
        // The first process is the server guard's to stop; the others have no other owner.
        kill(pid, libc::SIGKILL)?;
    }
    let first_exit = server.exited();

    let killed = server
        .kill_successor()
        .context("killing the last successor")?;

    let secs = elapsed.as_secs_f64();
    let latencies: Vec<f64> = restarts_done
        .iter()
        .map(|r| r.sighup_to_serving_ms)
        .collect();
    Ok(RestartResult {
        concurrency,
        restarts_requested: restarts,
        completed,
        elapsed_s: secs,
        rate_per_s: completed as f64 / secs,
        failed_per_restart: if restarts_done.is_empty() {
            f64::NAN
        } else {
            errors.total() as f64 / restarts_done.len() as f64
        },
        errors,
        sighup_to_serving_ms_median: report::median(&latencies).unwrap_or(f64::NAN),
        sighup_to_serving_ms_max: latencies
            .iter()
            .copied()
            .reduce(f64::max)
            .unwrap_or(f64::NAN),
        client_cpu_utilisation: client_cpu.as_secs_f64() / secs,
        first_pid,
        first_exit,
        old_processes_alive: lingering.len() as u64,
        old_processes_exited_after_s,
        last_successor_pid: killed.map(|(pid, _)| pid),
        last_successor_gone_after_ms: killed.map(|(_, took)| took.as_secs_f64() * 1e3),
        restarts: restarts_done,
    })
}

/// Sends SIGHUP `restarts` times, at `duration` * i / (restarts + 1) from `start`, each to the
/// serving process, and waits for each handover.
pub async fn restart_repeatedly(
    server: &Server,
    start: Instant,
    duration: Duration,
    restarts: usize,
) -> anyhow::Result<Vec<Restart>> {
    let mut serving = server.pid();
    let mut done = Vec::with_capacity(restarts);
    for i in 1..=restarts {
        let at = start + duration.mul_f64(i as f64 / (restarts + 1) as f64);
        tokio::time::sleep_until(at.into()).await;
        let seen_before = server.handovers().len();
        let sent = Instant::now();
        kill(serving, libc::SIGHUP)?;
        let handover: Handover = loop {
            if let Some(&handover) = server.handovers().get(seen_before) {
                break handover;
            }
            if sent.elapsed() > HANDOVER_TIMEOUT {
                bail!(
                    "restart {i}: no `successor_pid=` line within {HANDOVER_TIMEOUT:?} of SIGHUP to {serving}; stderr ends:\n{}",
                    server.stderr_tail(10)
                );
            }
            tokio::time::sleep(POLL).await;
        };
        let detected = sent.elapsed();
        done.push(Restart {
            at_s: sent.duration_since(start).as_secs_f64(),
            from_pid: serving,
            successor_pid: handover.successor_pid,
            sighup_to_serving_ms: handover.seen.saturating_duration_since(sent).as_secs_f64() * 1e3,
            detected_after_ms: detected.as_secs_f64() * 1e3,
            successor_cpus_allowed: proc::cpus_allowed_list(handover.successor_pid).ok(),
        });
        serving = handover.successor_pid;
    }
    Ok(done)
}

/// Sends `signal` to `pid`, one of the server processes.
pub fn kill(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let target = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the bench's server or one of
    // the successors it started, which have not been seen to exit.
    if unsafe { libc::kill(target, signal) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sending signal {signal} to {pid}"));
    }
    Ok(())
}

impl Measured for RestartResult {
    fn metrics(&self) -> Vec<(Metric, f64)> {
        vec![
            (Metric::RestartConnections, self.completed as f64),
            (Metric::RestartChurnRate, self.rate_per_s),
            (Metric::RestartFailed, self.errors.total() as f64),
            (Metric::RestartFailedPerRestart, self.failed_per_restart),
            (
                Metric::RestartToServingMedian,
                self.sighup_to_serving_ms_median,
            ),
            (Metric::RestartToServingMax, self.sighup_to_serving_ms_max),
            (Metric::RestartOldAlive, self.old_processes_alive as f64),
        ]
    }

    fn summary(&self) -> String {
        let pinned = self
            .restarts
            .iter()
            .all(|r| r.successor_cpus_allowed.as_deref() == Some("0"));
        format!(
            "{} restarts, {:.0} conn/s ({} in {:.2} s), failed {} ({:.1}/restart){}, SIGHUP to successor serving median {:.1} ms, max {:.1} ms; successors {}pinned to CPU 0; old processes all gone {} after the load, {} still running; last successor {} killed",
            self.restarts.len(),
            self.rate_per_s,
            self.completed,
            self.elapsed_s,
            self.errors.total(),
            self.failed_per_restart,
            self.errors
                .first
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            self.sighup_to_serving_ms_median,
            self.sighup_to_serving_ms_max,
            if pinned { "" } else { "NOT " },
            self.old_processes_exited_after_s
                .map_or("never".to_string(), |s| format!("{s:.2} s")),
            self.old_processes_alive,
            self.last_successor_pid
                .map_or("-".to_string(), |p| p.to_string()),
        )
    }

    fn errors(&self) -> u64 {
        self.errors.total()
    }
}
