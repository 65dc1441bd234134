//! Spawn, HTTP: keep-alive clients, each sending its next request as soon as the last is answered on the
//! same connection, through restarts (with `--restart-signal`) and then the graceful stop signal.
//!
//! A server that stops or restarts well ends each keep-alive connection where no request is lost: it
//! answers the request in flight with `Connection: close`, or closes a connection with nothing in it;
//! the client then opens a new one (to the successor, or finds the door closed, which is clean once the
//! stop signal was sent). One that closes connections at a deadline, or dies, cuts requests in the
//! middle: the request went out and no answer came.
//!
//! Where the server speaks HTTP/2 in cleartext, HTTP/2 clients run alongside (`keepalive_h2.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::keepalive_h2;
use crate::protocol::{self, Answered, KeepAliveError, Protocol};
use crate::target::signal_name;
use crate::{Context, Outcome};

/// Keep-alive clients.
const CLIENTS: u64 = 32;
/// How long the server gets to exit after the stop signal.
const EXIT_BOUND: Duration = Duration::from_secs(40);
/// How long the clients keep trying after the server exited.
const AFTER_EXIT: Duration = Duration::from_millis(300);

/// The phase the clients are in: before the stop signal, refusals are failures.
const RUNNING: u8 = 0;
const STOPPING: u8 = 1;

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    answered: AtomicU64,
    answered_after_stop: AtomicU64,
    /// Requests sent and not answered: the connection closed or reset mid-request, or no answer.
    failed: AtomicU64,
    /// Answers saying `Connection: close`.
    told_to_close: AtomicU64,
    /// Connections the server closed with no request in them.
    closed_between: AtomicU64,
    /// Connects refused or unanswered before the stop signal.
    refused_while_running: AtomicU64,
    /// New connections opened.
    connections: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    if ctx.spawner.is_none() {
        return Ok(outcome.skip("needs --spawn: the probe restarts and stops the server"));
    }
    if ctx.protocol != Protocol::Http {
        return Ok(outcome.skip("needs --protocol http: keep-alive is an HTTP/1.1 matter"));
    }
    let mut server = ctx.server().await?;
    let addr = server.addr;
    let phase = Arc::new(AtomicU8::new(RUNNING));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (phase, stop, tally) = (phase.clone(), stop.clone(), tally.clone());
            tokio::spawn(client(ctx.protocol, addr, i, phase, stop, tally))
        })
        .collect();
    let h2 = keepalive_h2::speaks_h2(addr).await;
    let h2_tally = Arc::new(keepalive_h2::Tally::default());
    let h2_clients: Vec<_> = if h2 {
        (0..keepalive_h2::CONNECTIONS)
            .map(|i| {
                let (phase, stop, tally) = (phase.clone(), stop.clone(), h2_tally.clone());
                tokio::spawn(keepalive_h2::client(addr, i, phase, RUNNING, stop, tally))
            })
            .collect()
    } else {
        Vec::new()
    };

    // Restarts, evenly spaced, while the clients are busy.
    let duration = ctx.time(Duration::from_secs(8), Duration::from_secs(3));
    let restarts = match ctx.restart_signal {
        Some(_) => ctx.scale(5, 2) as u32,
        None => 0,
    };
    super::restarts_spread(
        &server,
        ctx.restart_signal,
        restarts,
        Instant::now(),
        duration,
    )
    .await?;
    let answered_before_stop = tally.answered.load(Relaxed);

    // After restarts the server is a successor, and older processes may still be draining: the stop
    // signal goes to the whole group, and the stop is over when every one of them has exited.
    phase.store(STOPPING, Relaxed);
    let signalled = Instant::now();
    let exited = if restarts > 0 {
        server.signal_group(ctx.stop_signal)?;
        server.wait_group_exit(EXIT_BOUND).await
    } else {
        server.signal(ctx.stop_signal)?;
        server.wait_exit(EXIT_BOUND).await.is_some()
    };
    let time_to_exit = signalled.elapsed();
    if exited {
        tokio::time::sleep(AFTER_EXIT).await;
    }
    stop.store(true, Relaxed);
    for c in clients.into_iter().chain(h2_clients) {
        let _ = c.await;
    }

    let h2_failed = h2_tally.failed.load(Relaxed);
    let failed = tally.failed.load(Relaxed) + h2_failed;
    let refused =
        tally.refused_while_running.load(Relaxed) + h2_tally.refused_while_running.load(Relaxed);
    let first_failure = tally
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .or_else(|| {
            h2_tally
                .first_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
    let signal = signal_name(ctx.stop_signal);
    let outcome = outcome
        .figure("clients", CLIENTS)
        .figure(
            "restarts",
            match ctx.restart_signal {
                Some(s) => format!("{restarts} ({})", signal_name(s)),
                None => "none (no --restart-signal)".to_owned(),
            },
        )
        .figure("stop signal", &signal)
        .figure("answered before the stop", answered_before_stop)
        .figure(
            "answered after the stop",
            tally.answered_after_stop.load(Relaxed),
        )
        .figure("requests failed", failed)
        .figure(
            "answers with Connection: close",
            tally.told_to_close.load(Relaxed),
        )
        .figure(
            "connections closed between requests",
            tally.closed_between.load(Relaxed),
        )
        .figure("connections opened", tally.connections.load(Relaxed))
        .figure("refused before the stop", refused)
        .figure(
            "HTTP/2",
            if h2 {
                format!(
                    "{} connections: {} answered, {h2_failed} failed, {} streams ended unprocessed \
                     by GOAWAY, {} refused, {} connections over between requests",
                    keepalive_h2::CONNECTIONS,
                    h2_tally.answered.load(Relaxed),
                    h2_tally.goaways.load(Relaxed),
                    h2_tally.refused_streams.load(Relaxed),
                    h2_tally.closed_between.load(Relaxed),
                )
            } else {
                "not spoken in cleartext (prior knowledge): HTTP/1.1 only".to_owned()
            },
        )
        .figure("first failure", first_failure.as_deref().unwrap_or("none"))
        .figure(
            "time to exit",
            if exited {
                format!("{:.0} ms", time_to_exit.as_secs_f64() * 1e3)
            } else {
                format!("still running after {} s", EXIT_BOUND.as_secs())
            },
        );
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!(
            "{failed} requests failed ({h2_failed} over HTTP/2): their connection closed or reset \
             mid-request (first: {})",
            first_failure.as_deref().unwrap_or("?")
        ));
    }
    if refused > 0 {
        problems.push(format!(
            "{refused} new connections refused or unanswered through the restarts"
        ));
    }
    if !exited {
        problems.push(format!(
            "did not exit within {} s of {signal}",
            EXIT_BOUND.as_secs()
        ));
    }
    Ok(if problems.is_empty() {
        outcome.pass(format!(
            "no request lost through {restarts} restarts and {signal}: {} answered, connections \
             ended between requests; exited {:.1} s after the signal",
            tally.answered.load(Relaxed),
            time_to_exit.as_secs_f64()
        ))
    } else {
        outcome.fail(problems.join("; "))
    })
}

/// One keep-alive client: a connection carrying one request after another, reopened when the server
/// ends it, until told to stop.
async fn client(
    protocol: Protocol,
    addr: std::net::SocketAddr,
    index: u64,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut tag = index;
    while !stop.load(Relaxed) {
        tag += CLIENTS;
        let mut stream = match protocol::connect(addr, tag).await {
            Ok(s) => s,
            Err(_) => {
                if phase.load(Relaxed) == RUNNING {
                    tally.refused_while_running.fetch_add(1, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tally.connections.fetch_add(1, Relaxed);
        while !stop.load(Relaxed) {
            tag += CLIENTS;
            let stopping = phase.load(Relaxed) == STOPPING;
            match protocol
                .exchange_kept(&mut stream, &protocol.request(tag), None)
                .await
            {
                Ok(answered) => {
                    tally.answered.fetch_add(1, Relaxed);
                    if stopping {
                        tally.answered_after_stop.fetch_add(1, Relaxed);
                    }
                    if answered == Answered::Closing {
                        tally.told_to_close.fetch_add(1, Relaxed);
                        break;
                    }
                }
                Err(KeepAliveError::ClosedBefore) => {
                    tally.closed_between.fetch_add(1, Relaxed);
                    break;
                }
                Err(KeepAliveError::MidRequest(e)) => {
                    tally.failed.fetch_add(1, Relaxed);
                    tally
                        .first_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| e.to_string());
                    break;
                }
            }
        }
    }
}
