//! `lariat serve --workers N`: a supervisor process that binds the listening sockets once and runs N
//! worker processes (`lariat serve --as-worker`, with the supervisor's settings but its own) that all
//! accept from them.
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

mod args;
mod slots;
mod spawner;

use std::process::{Child, ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::Context;
use lariat::ParkedListener;
use tokio::task::JoinSet;

use crate::admin;
use crate::cli::ServeArgs;
use crate::listeners;
use crate::serve::announce;
use lariat::lifecycle::{Exit, Instruction, Order, Readiness, Signals, State};
use slots::{Failed, Slots};
use spawner::Spawner;

pub use spawner::worker_hand_over_socket;

/// How often the supervisor looks for workers that exited.
const REAP_EVERY: Duration = Duration::from_millis(50);

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

/// Workers being started, waited for in the background so that signals are answered meanwhile: each
/// resolves to its slot and the outcome.
type Starts = JoinSet<(usize, anyhow::Result<Child>)>;

/// Runs the supervisor until its workers have all stopped.
pub async fn supervise(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = args.listeners.bind_options();
    let mut inherited = lariat::activation::inherited().context("adopting the passed sockets")?;
    // `--metrics` is the supervisor's: /healthz, /readyz (with the lame duck) for the group.
    let readiness = Readiness::new();
    let admin = match &args.admin.metrics {
        Some(addr) => {
            let listener = admin::listener(addr, &mut inherited, &args.admin.bind_options()?)?;
            let access = admin::Access::new(
                args.admin.admin_token_file.as_deref(),
                &args.admin.admin_host,
            )?;
            Some(admin::start(
                listener,
                None,
                readiness.clone(),
                admin::HandlerNames::single("workers"),
                access,
            )?)
        }
        None => None,
    };
    // Parked: this process never accepts, and a socket registered with its runtime would wake it for
    // every connection the workers take.
    let mut named = listeners::resolve(&args.listeners.listen, inherited, &opts)?
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
    let workers = start_all(&spawner, &named, args.drain.workers).await?;
    let addrs: Vec<_> = named
        .iter()
        .map(|n| n.listener.local_addr().clone())
        .collect();
    announce(&addrs, admin.as_ref().map(|a| a.addr()));
    if let Err(e) = lariat::activation::notify_ready() {
        tracing::warn!(error = %e, "cannot notify NOTIFY_SOCKET that we are ready");
    }
    tracing::info!(
        workers = args.drain.workers,
        "serving with worker processes"
    );

    let mut slots = Slots::serving(workers);
    let mut starting = Starts::new();
    // Old workers handing over (SIGHUP): out of their slots, waited for at shutdown, never restarted.
    let mut retiring: Vec<Worker> = Vec::new();
    let mut reap = tokio::time::interval(REAP_EVERY);
    let (signal_name, mut stop_seen) = loop {
        let next_due = slots.next_due();
        tokio::select! {
            order = signals.recv() => match order {
                Order::Stop(signal) => break (signal, true),
                // Not the operator's: a stop signal after it is the first, not a second one.
                Order::Drain => break ("drain instruction", false),
                Order::Reload => tell_all(slots.workers(), &retiring, Instruction::Reload),
                Order::Ignored(signal) => tracing::info!(signal, "nothing to do on this signal; ignored"),
                Order::Force | Order::Retire => {}
                Order::Restart => {
                    let Some(replace) = slots.replace_all() else {
                        tracing::warn!("SIGHUP: workers are being started already; ignored");
                        continue;
                    };
                    tracing::info!("SIGHUP: replacing the workers; each old one hands over once its replacement serves");
                    for slot in replace {
                        let old = slots.worker(slot).map(|w| w.child.id());
                        spawner.start_in(&mut starting, slot, &named, old);
                    }
                }
            },
            Some(started) = starting.join_next() => {
                let Ok((slot, outcome)) = started else { continue };
                match outcome {
                    Ok(child) => {
                        tracing::info!(slot, worker_pid = child.id(), "worker ready");
                        // Whatever held the slot (the worker it replaces) hands over to it.
                        if let Some(old) = slots.ready(slot, Worker::new(slot, child)) {
                            retiring.push(retire(old));
                        }
                    }
                    Err(e) => match slots.failed(slot, tokio::time::Instant::now()) {
                        Failed::OldGoesOn => tracing::error!(error = %e, slot, "a replacement worker did not start; the old one goes on"),
                        Failed::RetryIn(delay) => tracing::error!(error = %e, slot, retry_in_ms = delay.as_millis() as u64, "worker restart failed"),
                    },
                }
            }
            _ = async { tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)).await }, if next_due.is_some() => {
                for slot in slots.take_due(tokio::time::Instant::now()) {
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
                let now = tokio::time::Instant::now();
                for dead in slots.reap(now, |w| exited(&mut w.child), |w| w.started.elapsed()) {
                    let (w, status) = (dead.worker, dead.status);
                    match dead.retry_in {
                        Some(delay) => tracing::warn!(slot = w.slot, pid = w.child.id(), %status, retry_in_ms = delay.as_millis() as u64, "worker exited unasked; its queued clients stay in the shared queue; restarting it"),
                        None => tracing::warn!(slot = w.slot, pid = w.child.id(), %status, "worker exited unasked while its replacement starts; its queued clients stay in the shared queue"),
                    }
                }
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
            if let Some(old) = slots.ready(slot, Worker::new(slot, child)) {
                retiring.push(retire(old));
            }
        }
    }
    starting.abort_all();
    while starting.join_next().await.is_some() {}
    let mut workers = slots.into_workers();
    if !args.drain.lame_duck.is_zero() {
        lame_duck(
            args.drain.lame_duck,
            &readiness,
            &mut signals,
            &mut stop_seen,
            (&workers, &retiring),
        )
        .await;
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
    Ok(wait_for_all(workers, &mut signals, stop_seen).await)
}

/// The lame duck: /readyz turns 503 for `period` while the workers keep accepting, so a balancer stops
/// sending first. A second stop signal ends it early.
async fn lame_duck(
    period: Duration,
    readiness: &Readiness,
    signals: &mut Signals,
    stop_seen: &mut bool,
    (workers, retiring): (&[Worker], &[Worker]),
) {
    readiness.set(State::LameDuck);
    tracing::info!(
        lame_duck_ms = period.as_millis() as u64,
        "lame duck: /readyz answers 503; the workers keep serving until the period ends"
    );
    let lame_duck = tokio::time::sleep(period);
    tokio::pin!(lame_duck);
    loop {
        tokio::select! {
            _ = &mut lame_duck => break,
            order = signals.recv() => match order {
                Order::Stop(signal) if !*stop_seen => {
                    *stop_seen = true;
                    tracing::info!(signal, "already in the lame duck; a second signal skips it");
                }
                Order::Stop(_) => {
                    tracing::info!("a second signal skips the lame duck");
                    break;
                }
                Order::Reload => tell_all(workers.iter(), retiring, Instruction::Reload),
                Order::Restart => tracing::warn!("SIGHUP during the lame duck: ignored, shutting down"),
                Order::Drain | Order::Force | Order::Retire | Order::Ignored(_) => {}
            },
        }
    }
}

/// Starts the first `count` workers one after the other, each ready before the next. If one fails, the
/// ones already serving are drained and waited for: a supervisor that failed to start leaves nothing.
async fn start_all(
    spawner: &Spawner,
    named: &[Parked],
    count: usize,
) -> anyhow::Result<Vec<Worker>> {
    let mut workers: Vec<Worker> = Vec::with_capacity(count);
    for slot in 0..count {
        let started = match spawner.spawn(named, None) {
            Ok(successor) => successor.ready_child().await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match started {
            Ok(child) => {
                tracing::info!(slot, worker_pid = child.id(), "worker ready");
                workers.push(Worker::new(slot, child));
            }
            Err(e) => {
                for w in &mut workers {
                    Instruction::Drain.send(w.child.id());
                    let _ = w.child.wait();
                }
                return Err(e.context(format!("starting worker {slot}")));
            }
        }
    }
    Ok(workers)
}

/// Waits for every worker to exit, passing a second stop signal on as a force: 0 if all drained
/// cleanly, 3 if one had to force, 1 if one failed.
async fn wait_for_all(
    mut workers: Vec<Worker>,
    signals: &mut Signals,
    mut stop_seen: bool,
) -> ExitCode {
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
                    tell_all(workers.iter(), &[], Instruction::Force);
                }
                Order::Reload => tell_all(workers.iter(), &[], Instruction::Reload),
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
    if failed {
        ExitCode::FAILURE
    } else if forced {
        Exit::Forced.into()
    } else {
        Exit::Clean.into()
    }
}

/// Sends `what` to every worker, serving or handing over.
fn tell_all<'a>(
    workers: impl Iterator<Item = &'a Worker>,
    retiring: &'a [Worker],
    what: Instruction,
) {
    if what == Instruction::Reload {
        tracing::info!("SIGUSR1: the workers reload the TLS certificate and key");
    }
    for w in workers.chain(retiring) {
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
