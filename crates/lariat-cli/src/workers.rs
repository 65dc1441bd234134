//! `lariat serve --workers N`: a supervisor process that binds the listening sockets once and runs N
//! worker processes (`lariat serve --as-worker`, same arguments) that all accept from them.
//!
//! One shared socket, not one `SO_REUSEPORT` socket per worker: a shared socket has one accept queue, so
//! a worker that dies (even by SIGKILL) leaves every client it had not yet accepted in that queue, where
//! its siblings (and its replacement) accept them. With `SO_REUSEPORT` each worker has its own queue,
//! and a dead worker's queue is reset unless `net.ipv4.tcp_migrate_req` is on (Linux 5.14+). The
//! kernel wakes every waiting worker on a new connection; with a few workers that costs little, and the
//! first one awake takes it, so a busy worker takes fewer.
//!
//! The supervisor:
//! - starts the workers with the sockets as descriptors 3, 4, … (`LISTEN_FDS`, as a restart does) and
//!   waits for each one's `READY=1` before printing `listening on`;
//! - restarts a worker that exits unasked (backing off when they keep dying: 100 ms doubling to 5 s);
//! - SIGHUP: replaces the workers: each new one is started and ready before the old one it replaces is
//!   told to stop accepting and finish its connections, so capacity never drops;
//! - never blocks on a starting worker: replacements and restarts are waited for in the background, so
//!   a SIGTERM is answered at once even while a worker is being (re)started;
//! - SIGTERM/SIGINT: (after the lame duck, with `--lame-duck`) stops new clients at the socket (the
//!   drain's SYN filter, or unlinking a Unix path; never on systemd's sockets), then tells every worker
//!   to drain: they serve the queue and their connections and exit; the supervisor exits 0 if all did, 3
//!   if one had to force. A second signal tells them to close what is left;
//! - SIGUSR1: tells every worker to reload the TLS certificate.
//!
//! Workers act on the supervisor's instructions only, carried by real-time signals ([`Instruction`]): a
//! signal to the whole process group (Ctrl-C, systemd's default `KillMode=control-group`) reaches the
//! workers too, and they ignore it, so the group drains once, cleanly, at the supervisor's pace.

use std::process::{Child, ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context};
use lariat::restart::{spawn_successor, PassOn, RestartError, RestartOptions, Successor};
use lariat::ParkedListener;
use tokio::task::JoinSet;

use crate::admin;
use crate::cli::ServeArgs;
use crate::listeners;
use crate::serve::announce;
use lariat::lifecycle::{Exit, Instruction, Order, Readiness, Signals, State};

/// The hidden flag a worker is started with.
pub const AS_WORKER: &str = "--as-worker";

/// How often the supervisor looks for workers that exited.
const REAP_EVERY: Duration = Duration::from_millis(50);
/// Backoff between restarts of workers that keep dying.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// A socket the supervisor holds for its workers, with the name it is passed under.
struct Parked {
    name: String,
    listener: ParkedListener,
}

/// One worker process.
struct Worker {
    slot: usize,
    child: Child,
    started: std::time::Instant,
}

impl Worker {
    fn new(slot: usize, child: Child) -> Worker {
        Worker {
            slot,
            child,
            started: std::time::Instant::now(),
        }
    }
}

/// A worker that lives this long counts as started well: its next death restarts it after the shortest
/// delay.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Runs the supervisor until its workers have all stopped.
pub async fn supervise(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = args.bind_options();
    let mut inherited = lariat::activation::inherited().context("adopting the passed sockets")?;
    // `--metrics` is the supervisor's: /healthz, /readyz (with the lame duck) for the group.
    let readiness = Readiness::new();
    let admin = match &args.metrics {
        Some(addr) => {
            let listener = admin::listener(addr, &mut inherited, &args.metrics_bind_options()?)?;
            let access = admin::Access::new(args.admin_token_file.as_deref(), &args.admin_host)?;
            Some(admin::start(
                listener,
                None,
                readiness.clone(),
                "workers",
                access,
            )?)
        }
        None => None,
    };
    // Parked: this process never accepts, and a socket registered with its runtime would wake it for
    // every connection the workers take.
    let mut named = listeners::resolve(&args.listen, inherited, &opts)?
        .into_iter()
        .map(|n| {
            Ok(Parked {
                name: n.name,
                listener: n.listener.park()?,
            })
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("taking the sockets out of the supervisor's runtime")?;
    let mut signals = Signals::operator()?;

    let spawner = Spawner::new(&args)?;
    let mut workers: Vec<Worker> = Vec::with_capacity(args.workers);
    for slot in 0..args.workers {
        let started = match spawner.spawn(&named, None) {
            Ok(successor) => successor.ready_child().await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match started {
            Ok(child) => {
                tracing::info!(slot, worker_pid = child.id(), "worker ready");
                workers.push(Worker::new(slot, child));
            }
            Err(e) => {
                // The ones already serving go too: a supervisor that failed to start leaves nothing.
                for w in &mut workers {
                    Instruction::Drain.send(w.child.id());
                    let _ = w.child.wait();
                }
                return Err(e.context(format!("starting worker {slot}")));
            }
        }
    }
    let addrs: Vec<_> = named
        .iter()
        .map(|n| n.listener.local_addr().clone())
        .collect();
    announce(&addrs, admin.as_ref().map(|a| a.addr()));
    if let Err(e) = lariat::activation::notify_ready() {
        tracing::warn!(error = %e, "cannot notify NOTIFY_SOCKET that we are ready");
    }
    tracing::info!(workers = args.workers, "serving with worker processes");

    // Workers being started, waited for in the background so that signals are answered meanwhile: each
    // resolves to its slot and the outcome (a replacement takes over whatever holds its slot then).
    // `starting_slots` says which
    // slots have one, so a slot never gets two.
    let mut starting: JoinSet<(usize, anyhow::Result<Child>)> = JoinSet::new();
    let mut starting_slots: Vec<usize> = Vec::new();
    // Old workers handing over (SIGHUP): waited for at shutdown, never restarted.
    let mut retiring: Vec<Worker> = Vec::new();
    // Slots whose worker died, and when to start it again.
    let mut due: Vec<(usize, tokio::time::Instant)> = Vec::new();
    let mut backoff = RESTART_MIN;
    let mut reap = tokio::time::interval(REAP_EVERY);
    let (signal_name, mut stop_seen) = loop {
        let next_due = due.iter().map(|(_, at)| *at).min();
        tokio::select! {
            order = signals.recv() => match order {
                Order::Stop(signal) => break (signal, true),
                // Not the operator's: a stop signal after it is the first, not a second one.
                Order::Drain => break ("drain instruction", false),
                Order::Reload => tell_all(&workers, &retiring, Instruction::Reload),
                Order::Ignored(signal) => tracing::info!(signal, "nothing to do on this signal; ignored"),
                Order::Force | Order::Retire => {}
                Order::Restart => {
                    if !starting.is_empty() || !due.is_empty() {
                        tracing::warn!("SIGHUP: workers are being started already; ignored");
                        continue;
                    }
                    tracing::info!("SIGHUP: replacing the workers; each old one hands over once its replacement serves");
                    for worker in &workers {
                        starting_slots.push(worker.slot);
                        spawner.start_in(&mut starting, worker.slot, &named, Some(worker.child.id()));
                    }
                }
            },
            Some(started) = starting.join_next() => {
                let Ok((slot, outcome)) = started else { continue };
                starting_slots.retain(|s| *s != slot);
                match outcome {
                    Ok(child) => {
                        tracing::info!(slot, worker_pid = child.id(), "worker ready");
                        let fresh = Worker::new(slot, child);
                        // Whatever holds the slot now (the worker it replaces) hands over to it.
                        match workers.iter().position(|w| w.slot == slot) {
                            Some(i) => retiring.push(retire(std::mem::replace(&mut workers[i], fresh))),
                            None => workers.push(fresh),
                        }
                        due.retain(|(s, _)| *s != slot);
                    }
                    Err(e) if workers.iter().any(|w| w.slot == slot) => {
                        tracing::error!(error = %e, slot, "a replacement worker did not start; the old one goes on");
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(RESTART_MAX);
                        tracing::error!(error = %e, slot, retry_in_ms = backoff.as_millis() as u64, "worker restart failed");
                        due.push((slot, tokio::time::Instant::now() + backoff));
                    }
                }
            }
            _ = async { tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)).await }, if next_due.is_some() => {
                let now = tokio::time::Instant::now();
                let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|(_, at)| *at <= now);
                due = later;
                for (slot, _) in ready {
                    if starting_slots.contains(&slot) || workers.iter().any(|w| w.slot == slot) {
                        continue;
                    }
                    starting_slots.push(slot);
                    spawner.start_in(&mut starting, slot, &named, None);
                }
            }
            _ = reap.tick() => {
                retiring.retain_mut(|w| match exited(&mut w.child) {
                    None => true,
                    Some(status) => {
                        tracing::info!(slot = w.slot, worker_pid = w.child.id(), %status, "old worker stopped");
                        false
                    }
                });
                workers.retain_mut(|worker| match exited(&mut worker.child) {
                    None => true,
                    Some(status) => {
                        // A worker that dies within a minute of starting counts as a failed start: the
                        // backoff grows, so a crash loop does not become a fork loop.
                        if worker.started.elapsed() < STABLE_AFTER {
                            backoff = (backoff * 2).min(RESTART_MAX);
                        } else {
                            backoff = RESTART_MIN;
                        }
                        tracing::warn!(slot = worker.slot, pid = worker.child.id(), %status, retry_in_ms = backoff.as_millis() as u64, "worker exited unasked; its queued clients stay in the shared queue; restarting it");
                        if !starting_slots.contains(&worker.slot) {
                            due.push((worker.slot, tokio::time::Instant::now() + backoff));
                        }
                        false
                    }
                });
            }
        }
    };
    // Starts in progress: one that said READY may be accepting already, so it is collected (and drained
    // with the others); one that did not has accepted nothing and is killed (dropping it does).
    let collect_until = tokio::time::Instant::now() + Duration::from_millis(200);
    while let Ok(Some(started)) = tokio::time::timeout_at(collect_until, starting.join_next()).await
    {
        if let Ok((slot, Ok(child))) = started {
            tracing::info!(
                slot,
                worker_pid = child.id(),
                "worker ready as the drain begins"
            );
            match workers.iter().position(|w| w.slot == slot) {
                Some(i) => retiring.push(retire(std::mem::replace(
                    &mut workers[i],
                    Worker::new(slot, child),
                ))),
                None => workers.push(Worker::new(slot, child)),
            }
        }
    }
    starting.abort_all();
    while starting.join_next().await.is_some() {}
    if !args.lame_duck.is_zero() {
        // /readyz turns 503 while the workers keep accepting: a balancer stops sending first.
        readiness.set(State::LameDuck);
        tracing::info!(
            lame_duck_ms = args.lame_duck.as_millis() as u64,
            "lame duck: /readyz answers 503; the workers keep serving until the period ends"
        );
        let lame_duck = tokio::time::sleep(args.lame_duck);
        tokio::pin!(lame_duck);
        loop {
            tokio::select! {
                _ = &mut lame_duck => break,
                order = signals.recv() => match order {
                    Order::Stop(signal) if !stop_seen => {
                        stop_seen = true;
                        tracing::info!(signal, "already in the lame duck; a second signal skips it");
                    }
                    Order::Stop(_) => {
                        tracing::info!("a second signal skips the lame duck");
                        break;
                    }
                    Order::Reload => tell_all(&workers, &retiring, Instruction::Reload),
                    Order::Restart => tracing::warn!("SIGHUP during the lame duck: ignored, shutting down"),
                    Order::Drain | Order::Force | Order::Retire | Order::Ignored(_) => {}
                },
            }
        }
    }
    readiness.set(State::Stopping);
    // Stop new clients at the socket itself, which all workers share; the workers then drain the queue.
    tracing::info!(
        signal = signal_name,
        "draining: no new clients; the workers serve the queue and their connections"
    );
    for n in &mut named {
        n.listener.refuse_new();
    }
    for w in &workers {
        Instruction::Drain.send(w.child.id());
    }
    // Old workers still handing over are already draining: they are waited for, not instructed, unless a
    // second signal reaches the supervisor.
    workers.append(&mut retiring);
    let mut forced = false;
    let mut failed = false;
    let mut reap = tokio::time::interval(REAP_EVERY);
    while !workers.is_empty() {
        tokio::select! {
            order = signals.recv() => match order {
                Order::Stop(signal) if !stop_seen => {
                    stop_seen = true;
                    tracing::info!(signal, "already draining; a second signal closes every connection");
                }
                Order::Stop(signal) => {
                    tracing::warn!(signal, "second signal: the workers close every connection now");
                    tell_all(&workers, &[], Instruction::Force);
                }
                Order::Reload => tell_all(&workers, &[], Instruction::Reload),
                Order::Restart => tracing::warn!("SIGHUP while draining: ignored"),
                Order::Drain | Order::Force | Order::Retire | Order::Ignored(_) => {}
            },
            _ = reap.tick() => {
                workers.retain_mut(|w| match exited(&mut w.child) {
                    None => true,
                    Some(status) => {
                        match status.code() {
                            Some(0) => {}
                            Some(code) if code == i32::from(Exit::FORCED_CODE) => forced = true,
                            _ => failed = true,
                        }
                        tracing::info!(slot = w.slot, pid = w.child.id(), %status, "worker stopped");
                        false
                    }
                });
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else if forced {
        Exit::Forced.into()
    } else {
        Exit::Clean.into()
    })
}

/// Starts workers: this executable, the same arguments with `--workers` replaced by `--as-worker`.
struct Spawner {
    opts: RestartOptions,
    /// Where each worker's hand-over socket is (`None` if the directory could not be made: the
    /// workers then drain when replaced).
    hand_over_dir: Option<HandOverDir>,
}

/// The directory of the workers' hand-over sockets, one per worker named by its pid: made by the
/// supervisor, readable by its user only; removed when dropped.
struct HandOverDir(std::path::PathBuf);

impl HandOverDir {
    fn create() -> std::io::Result<HandOverDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = hand_over_dir(std::process::id());
        // Fails if it exists: a directory someone else prepared is never used.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(HandOverDir(path))
    }
}

impl Drop for HandOverDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory of the hand-over sockets of the supervisor `supervisor`'s workers.
pub fn hand_over_dir(supervisor: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("lariat-workers-{supervisor}"))
}

/// The socket a worker binds in `dir` (made by its supervisor), after checking the directory is this
/// user's and closed to others: the worker replacing it connects there to take its connections.
pub fn worker_hand_over_socket(
    supervisor: u32,
) -> anyhow::Result<lariat::handover::HandOverSocket> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = hand_over_dir(supervisor);
    let meta = std::fs::symlink_metadata(&dir).context("the supervisor's hand-over directory")?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is not a private directory of this user", dir.display());
    }
    let path = dir.join(std::process::id().to_string());
    lariat::handover::HandOverSocket::bind(&path)
        .with_context(|| format!("binding {}", path.display()))
}

impl Spawner {
    fn new(args: &ServeArgs) -> anyhow::Result<Spawner> {
        let mut opts = RestartOptions::same_process().context("finding this executable")?;
        opts.args = worker_args(&opts.args);
        opts.ready_timeout = args.restart_timeout;
        // Workers ignore SIGTERM (it may be the whole group's): one given up on is told to drain.
        opts.stop_signal = Instruction::Drain.signal();
        let hand_over_dir = match HandOverDir::create() {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the workers' hand-over directory; replaced workers drain");
                None
            }
        };
        Ok(Spawner {
            opts,
            hand_over_dir,
        })
    }

    /// Starts a worker process with the sockets; it is not serving yet. `replacing`: the pid of the
    /// worker it replaces, whose live connections it takes.
    fn spawn(&self, named: &[Parked], replacing: Option<u32>) -> Result<Successor, RestartError> {
        // The supervisor keeps the socket: a worker's drain must not filter or unlink it.
        let passed = named
            .iter()
            .map(|n| PassOn::supervised(n.name.clone(), &n.listener))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| RestartError::Spawn {
                program: self.opts.program.clone(),
                source,
            })?;
        match (&self.hand_over_dir, replacing) {
            (Some(dir), Some(old)) => {
                let mut opts = self.opts.clone();
                opts.hand_over_from = Some(dir.0.join(old.to_string()));
                spawn_successor(&passed, &opts)
            }
            _ => spawn_successor(&passed, &self.opts),
        }
    }

    /// Starts a worker for `slot` and waits for it to serve in `set`, in the background.
    fn start_in(
        &self,
        set: &mut JoinSet<(usize, anyhow::Result<Child>)>,
        slot: usize,
        named: &[Parked],
        replacing: Option<u32>,
    ) {
        match self.spawn(named, replacing) {
            Ok(successor) => {
                set.spawn(async move {
                    let ready = successor.ready_child().await.map_err(anyhow::Error::from);
                    (slot, ready)
                });
            }
            Err(e) => {
                set.spawn(async move { (slot, Err(anyhow::Error::from(e))) });
            }
        }
    }
}

/// The supervisor's own options, with their values: a worker gets neither.
const SUPERVISOR_ONLY: [&str; 6] = [
    "--workers",
    "--metrics",
    "--lame-duck",
    "--metrics-unix-mode",
    "--admin-token-file",
    "--admin-host",
];

/// The worker's arguments: ours without the supervisor's options (`--workers N`, `--metrics ADDR` and
/// the endpoint's options, `--lame-duck D`, or `=`-joined), plus `--as-worker`.
fn worker_args(args: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut skip_next = false;
    for arg in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        let text = arg.to_str().unwrap_or("");
        if SUPERVISOR_ONLY.contains(&text) {
            skip_next = true;
        } else if !SUPERVISOR_ONLY.iter().any(|flag| {
            text.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
        }) {
            out.push(arg.clone());
        }
    }
    out.push(AS_WORKER.into());
    out.push(std::process::id().to_string().into());
    out
}

/// Sends `what` to every worker, serving or handing over.
fn tell_all(workers: &[Worker], retiring: &[Worker], what: Instruction) {
    if what == Instruction::Reload {
        tracing::info!("SIGUSR1: the workers reload the TLS certificate and key");
    }
    for w in workers.iter().chain(retiring) {
        what.send(w.child.id());
    }
}

/// Tells a replaced worker to stop accepting and finish its connections; the caller keeps it, to reap
/// it and to wait for it at shutdown.
fn retire(old: Worker) -> Worker {
    Instruction::Retire.send(old.child.id());
    tracing::info!(
        slot = old.slot,
        worker_pid = old.child.id(),
        "old worker handing over"
    );
    old
}

fn exited(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_args_drop_workers_and_add_the_flag() {
        let args: Vec<std::ffi::OsString> = [
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--metrics",
            "127.0.0.1:9100",
            "--lame-duck=2s",
            "--workers=3",
            "--handler",
            "echo",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let out: Vec<String> = worker_args(&args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            [
                "--listen",
                "127.0.0.1:0",
                "--handler",
                "echo",
                "--as-worker",
                &std::process::id().to_string(),
            ]
        );
    }
}
