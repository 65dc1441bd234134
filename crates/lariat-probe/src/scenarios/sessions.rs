//! Spawn, `--restart-signal`: long-lived connections (chat, a database session, a push channel), each
//! sending a message every [`INTERVAL`] and waiting for its answer, through repeated restarts.
//!
//! Each message goes out in two writes [`IN_FLIGHT`] apart, so at any instant some are half-sent. A
//! restart that hands over and lets the old process finish its sessions loses none; a server that ends a
//! session between messages (a drain telling HTTP clients `Connection: close`) closes it cleanly, which
//! is reported as information (a session's client reconnects, to the successor). A server that cuts
//! connections as it restarts loses messages in flight, and one that closes its port refuses the
//! reconnects: those fail.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{self, Answered, KeepAliveError, Protocol};
use crate::target::signal_name;
use crate::{Context, Outcome};

/// How often a session sends a message.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long each message is half-sent.
const IN_FLIGHT: Duration = Duration::from_millis(20);

/// What the sessions saw.
#[derive(Debug, Default)]
struct Tally {
    messages: AtomicU64,
    /// Sent (at least in part) and not answered.
    lost: AtomicU64,
    /// Sessions the server ended between messages, with or without saying so first.
    closed: AtomicU64,
    /// Reconnects refused or unanswered.
    refused: AtomicU64,
    sessions: AtomicU64,
    first_loss: Mutex<Option<String>>,
}

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    if ctx.spawner.is_none() {
        return Ok(outcome.skip("needs --spawn: the probe restarts the server"));
    }
    let Some(signal) = ctx.restart_signal else {
        return Ok(
            outcome.skip("needs --restart-signal: how the server is told to restart (e.g. HUP)")
        );
    };
    let server = ctx.server().await?;
    let addr = server.addr;
    let count = ctx.scale(100, 30) as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let sessions: Vec<_> = (0..count)
        .map(|i| {
            let (stop, tally) = (stop.clone(), tally.clone());
            tokio::spawn(session(ctx.protocol, addr, i, count, stop, tally))
        })
        .collect();

    let duration = ctx.time(Duration::from_secs(10), Duration::from_secs(4));
    let restarts = ctx.scale(5, 3) as u32;
    super::restarts_spread(&server, Some(signal), restarts, Instant::now(), duration).await?;
    stop.store(true, Relaxed);
    for s in sessions {
        let _ = s.await;
    }
    let still = protocol::one_connection(ctx.protocol, addr, u64::MAX / 2).await;

    let lost = tally.lost.load(Relaxed);
    let closed = tally.closed.load(Relaxed);
    let refused = tally.refused.load(Relaxed);
    let first_loss = tally
        .first_loss
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let outcome = outcome
        .figure("sessions", count)
        .figure("restarts", format!("{restarts} ({})", signal_name(signal)))
        .figure("messages answered", tally.messages.load(Relaxed))
        .figure("messages lost", lost)
        .figure("sessions closed", closed)
        .figure("sessions opened", tally.sessions.load(Relaxed))
        .figure("reconnects refused", refused)
        .figure("first loss", first_loss.as_deref().unwrap_or("none"))
        .figure(
            "answers at the end",
            match &still {
                Ok(()) => "yes".to_owned(),
                Err(e) => format!("no: {e}"),
            },
        );
    let mut problems = Vec::new();
    if lost > 0 {
        problems.push(format!(
            "{lost} messages lost: sent and never answered (first: {})",
            first_loss.as_deref().unwrap_or("?")
        ));
    }
    if refused > 0 {
        problems.push(format!("{refused} reconnects refused or unanswered"));
    }
    if let Err(e) = &still {
        problems.push(format!("no answer after the restarts: {e}"));
    }
    Ok(if !problems.is_empty() {
        outcome.fail(problems.join("; "))
    } else if closed > 0 {
        outcome.pass(format!(
            "no message lost through {restarts} restarts; {closed} sessions were closed between \
             messages (information: the old process ended them as it drained, and they reconnected)"
        ))
    } else {
        outcome.pass(format!(
            "no message lost and no session closed through {restarts} restarts"
        ))
    })
}

/// One session: a connection exchanging a message every [`INTERVAL`], reopened if the server ends it,
/// until told to stop.
async fn session(
    protocol: Protocol,
    addr: std::net::SocketAddr,
    index: u64,
    count: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    // Spread the sessions over the interval, so some message is always in flight.
    tokio::time::sleep(INTERVAL * index as u32 / count.max(1) as u32).await;
    let mut tag = index;
    while !stop.load(Relaxed) {
        tag += count;
        let mut stream = match protocol::connect(addr, tag).await {
            Ok(s) => s,
            Err(_) => {
                tally.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tally.sessions.fetch_add(1, Relaxed);
        let mut next = tokio::time::Instant::now();
        while !stop.load(Relaxed) {
            tag += count;
            match protocol
                .exchange_kept(&mut stream, &protocol.request(tag), Some(IN_FLIGHT))
                .await
            {
                Ok(Answered::KeepOpen) => {
                    tally.messages.fetch_add(1, Relaxed);
                }
                Ok(Answered::Closing) => {
                    tally.messages.fetch_add(1, Relaxed);
                    tally.closed.fetch_add(1, Relaxed);
                    break;
                }
                Err(KeepAliveError::ClosedBefore) => {
                    tally.closed.fetch_add(1, Relaxed);
                    break;
                }
                Err(KeepAliveError::MidRequest(e)) => {
                    tally.lost.fetch_add(1, Relaxed);
                    tally
                        .first_loss
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| e.to_string());
                    break;
                }
            }
            next += INTERVAL;
            tokio::time::sleep_until(next).await;
        }
    }
}
