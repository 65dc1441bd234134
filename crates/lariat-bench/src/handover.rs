//! Connection hand-over at restart (`--only handover`), lariat's alone, in two parts.
//!
//! Idle: N idle echo connections (each proved served by a 1-byte echo), one SIGHUP, and the time from
//! the signal to the old process's `drained` line (its last connection has moved) and to its exit;
//! then every connection must still echo, now served by the successor.
//!
//! Sessions: long-lived echo sessions (a short line every second each) and the restart measurement's
//! churn clients, through a few SIGHUPs, once with hand-over and once with `--hand-over-window 0`
//! (every connection drains, as before hand-over existed) as the baseline: failed churn connections
//! and sessions closed, both with a goal of 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::churn::{self, Errors};
use crate::client;
use crate::proc;
use crate::restart::{self, Restart};
use crate::server::{Binaries, Kind, Mark, Server};

mod table;

/// The idle part's connection counts.
pub const IDLE_CONNECTIONS: [u64; 2] = [1_000, 10_000];
/// Connections being opened at once.
const OPEN_CONCURRENCY: usize = 256;
/// Longest opening one connection, or one echo exchange, may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a SIGHUP may take until the old process has exited.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// The sessions part: how many, how often each sends, for how long, through how many SIGHUPs.
pub const SESSIONS: u64 = 5_000;
const SESSION_PERIOD: Duration = Duration::from_secs(1);
const SESSION_RUN: Duration = Duration::from_secs(12);
pub const SESSION_RESTARTS: usize = 3;
const CHURN_CONCURRENCY: usize = 32;
/// The drain deadline of both runs: the drain baseline closes its sessions this long after each
/// restart, which keeps the run short (the default is 30 s).
const DRAIN_TIMEOUT: &str = "3s";
/// After the load, how long old processes get to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Serialize)]
pub struct HandoverResults {
    pub idle: Vec<IdleHandover>,
    pub sessions: Vec<SessionRun>,
    /// Parts that could not be measured, and why.
    pub failures: Vec<String>,
}

/// One SIGHUP with N idle connections open.
#[derive(Debug, Clone, Serialize)]
pub struct IdleHandover {
    pub connections: u64,
    pub opened: u64,
    pub open_failed: u64,
    pub open_s: f64,
    /// From SIGHUP to reading the old process's `successor_pid=` line (the successor serves).
    pub sighup_to_successor_ms: f64,
    /// From SIGHUP to reading the old process's `drained` line: its last connection has moved.
    pub sighup_to_drained_ms: Option<f64>,
    /// From SIGHUP to the old process gone (polled every millisecond).
    pub sighup_to_exit_ms: f64,
    /// The successor's `hand-over channel closed` counts.
    pub resumed: Option<u64>,
    pub left_with_predecessor: Option<u64>,
    /// Connections that echoed after the restart, and those that did not (closed, reset, silent).
    pub echoed_after: u64,
    pub lost: u64,
    pub first_error: Option<String>,
}

/// Sessions and churn through SIGHUPs, with or without hand-over.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRun {
    /// `hand-over` or `drain` (`--hand-over-window 0`).
    pub mode: &'static str,
    pub sessions: u64,
    pub sessions_opened: u64,
    /// Sessions whose connection ended (EOF, reset) or stopped answering before the run's end.
    pub sessions_closed: u64,
    /// Exchanges answered, and those that failed (each ends its session).
    pub exchanges: u64,
    pub exchanges_failed: u64,
    pub first_session_error: Option<String>,
    pub churn_completed: u64,
    pub churn_errors: Errors,
    pub restarts: Vec<Restart>,
    pub elapsed_s: f64,
    pub old_processes_alive: u64,
    pub old_processes_exited_after_s: Option<f64>,
}

/// Runs both parts, each against fresh servers; a part that fails is noted and the next one runs.
pub async fn run(binaries: &Binaries) -> HandoverResults {
    let mut results = HandoverResults::default();
    for n in IDLE_CONNECTIONS {
        match idle(binaries, n).await {
            Ok(r) => {
                eprintln!("[handover] {}", r.line());
                results.idle.push(r);
            }
            Err(e) => results
                .failures
                .push(format!("{n} idle connections: {e:#}")),
        }
    }
    for mode in ["hand-over", "drain"] {
        match sessions(binaries, mode).await {
            Ok(r) => {
                eprintln!("[handover] {}", r.line());
                results.sessions.push(r);
            }
            Err(e) => results.failures.push(format!("sessions ({mode}): {e:#}")),
        }
    }
    results
}

/// `lariat serve --handler echo` with the given extra arguments, pinned like the other servers.
fn start(binaries: &Binaries, extra: &[&str]) -> anyhow::Result<Server> {
    let mut args = Kind::Lariat.args();
    args.extend(extra.iter().map(|a| a.to_string()));
    Server::spawn(
        binaries.path(Kind::Lariat),
        &args,
        &crate::server::SERVER_CPU.to_string(),
    )
}

async fn idle(binaries: &Binaries, n: u64) -> anyhow::Result<IdleHandover> {
    let mut server = start(binaries, &[])?;
    let old = server.pid();
    let opened_at = Instant::now();
    let (mut streams, open_failed, open_error) = open(server.addr, n).await;
    let open_s = opened_at.elapsed().as_secs_f64();
    let opened = streams.len() as u64;

    let marks_before = server.marks().len();
    let sent = Instant::now();
    restart::kill(old, libc::SIGHUP)?;
    while proc::alive(old) {
        if sent.elapsed() > HANDOVER_TIMEOUT {
            bail!(
                "the old process still runs {HANDOVER_TIMEOUT:?} after SIGHUP; stderr ends:\n{}",
                server.stderr_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let exit = sent.elapsed();
    let Some(successor) = server.handovers().first().copied() else {
        bail!("the old process exited without a `successor_pid=` line");
    };
    // The successor's count comes once its channel closes, right after the old process exits.
    let deadline = Instant::now() + Duration::from_secs(2);
    let channel = loop {
        let found = server.marks()[marks_before..]
            .iter()
            .find_map(|&(_, m)| match m {
                Mark::ChannelClosed { resumed, left } => Some((resumed, left)),
                Mark::Drained => None,
            });
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let drained = server.marks()[marks_before..]
        .iter()
        .find(|&&(_, m)| m == Mark::Drained)
        .map(|&(seen, _)| seen.saturating_duration_since(sent));

    let (echoed_after, lost, echo_error) = echo_all(&mut streams).await;
    drop(streams);
    let _ = server.exited();
    server.kill_successor()?;
    Ok(IdleHandover {
        connections: n,
        opened,
        open_failed,
        open_s,
        sighup_to_successor_ms: ms(successor.seen.saturating_duration_since(sent)),
        sighup_to_drained_ms: drained.map(ms),
        sighup_to_exit_ms: ms(exit),
        resumed: channel.map(|c| c.0),
        left_with_predecessor: channel.map(|c| c.1),
        echoed_after,
        lost,
        first_error: open_error.or(echo_error),
    })
}

/// Opens `n` connections, [`OPEN_CONCURRENCY`] at a time, each proved served by a 1-byte echo.
async fn open(addr: SocketAddr, n: u64) -> (Vec<TcpStream>, u64, Option<String>) {
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let permits = Arc::clone(&permits);
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let work = async {
                    let mut stream = client::connect(addr, i).await?;
                    exchange(&mut stream, &[i as u8]).await?;
                    Ok::<_, std::io::Error>(stream)
                };
                match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("connect + echo took over {EXCHANGE_TIMEOUT:?}")),
                }
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    let mut first = None;
    for task in tasks {
        match task.await {
            Ok(Ok(stream)) => streams.push(stream),
            Ok(Err(e)) => {
                failed += 1;
                first.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert(format!("an open task failed: {e}"));
            }
        }
    }
    (streams, failed, first)
}

/// One echo exchange on each stream, all at once: (answered, not answered, first failure).
async fn echo_all(streams: &mut Vec<TcpStream>) -> (u64, u64, Option<String>) {
    let tasks: Vec<_> = streams
        .drain(..)
        .enumerate()
        .map(|(i, mut stream)| {
            tokio::spawn(async move {
                let message = format!("after {i:06}\n");
                let result = tokio::time::timeout(
                    EXCHANGE_TIMEOUT,
                    exchange(&mut stream, message.as_bytes()),
                )
                .await;
                let outcome = match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no echo within {EXCHANGE_TIMEOUT:?}")),
                };
                (stream, outcome)
            })
        })
        .collect();
    let (mut ok, mut lost, mut first) = (0, 0, None);
    for task in tasks {
        match task.await {
            Ok((stream, Ok(()))) => {
                ok += 1;
                streams.push(stream);
            }
            Ok((_, Err(e))) => {
                lost += 1;
                first.get_or_insert(e);
            }
            Err(e) => {
                lost += 1;
                first.get_or_insert(format!("an echo task failed: {e}"));
            }
        }
    }
    (ok, lost, first)
}

/// Writes `message` and reads it back; an early end of stream or different bytes are errors.
async fn exchange(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    stream.write_all(message).await?;
    let mut echo = vec![0u8; message.len()];
    stream.read_exact(&mut echo).await?;
    if echo != message {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the echo differs from what was sent",
        ));
    }
    Ok(())
}

async fn sessions(binaries: &Binaries, mode: &'static str) -> anyhow::Result<SessionRun> {
    let mut extra = vec!["--drain-timeout", DRAIN_TIMEOUT];
    if mode == "drain" {
        extra.extend(["--hand-over-window", "0"]);
    }
    let mut server = start(binaries, &extra)?;
    churn::preflight(server.addr).await?;
    let first_pid = server.pid();
    let start = Instant::now();
    let deadline = start + SESSION_RUN;
    let (load, sessions, restarted) = tokio::join!(
        churn::load(server.addr, deadline, CHURN_CONCURRENCY),
        run_sessions(server.addr, deadline),
        restart::restart_repeatedly(&server, start, SESSION_RUN, SESSION_RESTARTS),
    );
    let elapsed = start.elapsed();
    let (churn_completed, churn_errors) = load?;
    let restarts = restarted?;
    let sessions = sessions?;

    let old: Vec<u32> = std::iter::once(first_pid)
        .chain(
            restarts[..restarts.len().saturating_sub(1)]
                .iter()
                .map(|r| r.successor_pid),
        )
        .collect();
    let load_ended = Instant::now();
    let mut exited_after = None;
    while load_ended.elapsed() < EXIT_TIMEOUT {
        if !old.iter().any(|&pid| proc::alive(pid)) {
            exited_after = Some(load_ended.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lingering: Vec<u32> = old.iter().copied().filter(|&p| proc::alive(p)).collect();
    for &pid in lingering.iter().filter(|&&p| p != first_pid) {
        restart::kill(pid, libc::SIGKILL)?;
    }
    let _ = server.exited();
    server.kill_successor()?;
    Ok(SessionRun {
        mode,
        sessions: SESSIONS,
        sessions_opened: sessions.opened,
        sessions_closed: sessions.closed,
        exchanges: sessions.exchanges,
        exchanges_failed: sessions.failed,
        first_session_error: sessions.first_error,
        churn_completed,
        churn_errors,
        restarts,
        elapsed_s: elapsed.as_secs_f64(),
        old_processes_alive: lingering.len() as u64,
        old_processes_exited_after_s: exited_after,
    })
}

/// What the session clients saw.
#[derive(Debug, Default)]
struct Sessions {
    opened: u64,
    closed: u64,
    exchanges: u64,
    failed: u64,
    first_error: Option<String>,
}

/// How one session ended.
enum SessionEnd {
    /// It could not connect.
    NotOpened(String),
    /// It ran to the deadline.
    Lasted { exchanges: u64 },
    /// Its connection ended or failed after `exchanges` good exchanges.
    Closed { exchanges: u64, why: String },
}

/// [`SESSIONS`] sessions, opened over the first [`SESSION_PERIOD`] (so their messages are spread
/// over it too), each exchanging a short line every period until `deadline`.
async fn run_sessions(addr: SocketAddr, deadline: Instant) -> anyhow::Result<Sessions> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let offset = SESSION_PERIOD.mul_f64(n as f64 / SESSIONS as f64);
            tokio::spawn(session(addr, n, start + offset, deadline))
        })
        .collect();
    let mut seen = Sessions::default();
    for task in tasks {
        match task.await.context("a session task panicked")? {
            SessionEnd::NotOpened(why) => {
                seen.first_error.get_or_insert(format!("connect: {why}"));
            }
            SessionEnd::Lasted { exchanges } => {
                seen.opened += 1;
                seen.exchanges += exchanges;
            }
            SessionEnd::Closed { exchanges, why } => {
                seen.opened += 1;
                seen.closed += 1;
                seen.exchanges += exchanges;
                seen.failed += 1;
                seen.first_error.get_or_insert(why);
            }
        }
    }
    Ok(seen)
}

async fn session(addr: SocketAddr, n: u64, first: Instant, deadline: Instant) -> SessionEnd {
    tokio::time::sleep_until(first.into()).await;
    let mut stream = match tokio::time::timeout(EXCHANGE_TIMEOUT, client::connect(addr, n)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return SessionEnd::NotOpened(e.to_string()),
        Err(_) => return SessionEnd::NotOpened(format!("over {EXCHANGE_TIMEOUT:?}")),
    };
    let mut exchanges = 0;
    let mut next = first;
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        let line = format!("session {n:05} {exchanges:04}\n");
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&mut stream, line.as_bytes())).await {
            Ok(Ok(())) => exchanges += 1,
            Ok(Err(e)) => {
                return SessionEnd::Closed {
                    exchanges,
                    why: e.to_string(),
                }
            }
            Err(_) => {
                return SessionEnd::Closed {
                    exchanges,
                    why: format!("no echo within {EXCHANGE_TIMEOUT:?}"),
                }
            }
        }
        next += SESSION_PERIOD;
    }
    SessionEnd::Lasted { exchanges }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
