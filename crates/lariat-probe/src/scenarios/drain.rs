//! Spawn: the graceful stop signal (`--stop-signal`, TERM unless told) under load. A server that stops well closes its door (new clients are refused or left
//! unanswered, which is clean) and serves every client it already accepted before it exits. One that is
//! simply killed resets them: every exchange in flight, every client still in its accept queue.
//!
//! Two kinds of clients run across the signal:
//! - a closed-loop churn [`Load`] (connect, one exchange, close), which catches the queued and in-flight
//!   exchanges at the instant of the signal;
//! - "live" clients, connected and served once before the signal, then caught mid-request: the first half
//!   of a request sent before the signal, the rest [`LIVE_DELAY`] after it, and the answer expected. A
//!   server that dies at once cannot answer them however lucky the timing; one that drains does.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};

use super::load::Load;
use crate::protocol::{self, Protocol, EXCHANGE_TIMEOUT};
use crate::target::signal_name;
use crate::{Context, Outcome};

/// Churn clients.
const CONCURRENCY: usize = 32;
/// Clients held mid-request across the signal.
const LIVE: u64 = 50;
/// How long after the signal the live clients finish their requests.
const LIVE_DELAY: Duration = Duration::from_millis(200);
/// How long the server gets to exit after the stop signal.
const EXIT_BOUND: Duration = Duration::from_secs(30);
/// How long the load keeps running after the server exited (clients then see refusals, which are clean).
const AFTER_EXIT: Duration = Duration::from_millis(300);

/// What the live clients saw.
#[derive(Default)]
struct Live {
    ok: u64,
    failed: u64,
    first_failure: Option<String>,
}

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    if ctx.spawner.is_none() {
        return Ok(outcome.skip("needs --spawn: the probe sends the server its stop signal"));
    }
    let mut server = ctx.server().await?;
    let addr = server.addr;
    let protocol = ctx.protocol;

    // The live clients: connected and served once, then half a request, before the signal.
    let (signalled_tx, signalled_rx) = watch::channel(false);
    let mut ready = Vec::new();
    let live: Vec<_> = (0..LIVE)
        .map(|i| {
            let (ready_tx, ready_rx) = oneshot::channel();
            ready.push(ready_rx);
            let signalled = signalled_rx.clone();
            // Tags distinct from the load's (which count up from 0).
            let tag = u64::MAX / 2 + 2 * i;
            tokio::spawn(live_client(protocol, addr, tag, ready_tx, signalled))
        })
        .collect();
    // Every live client is in place, or has failed already (its sender dropped).
    for r in ready {
        let _ = r.await;
    }

    let load = Load::start(protocol, addr, CONCURRENCY);
    tokio::time::sleep(ctx.time(Duration::from_secs(2), Duration::from_secs(1))).await;

    let served_before = load.tally().ok.load(Relaxed);
    server.signal(ctx.stop_signal)?;
    let signalled = Instant::now();
    let _ = signalled_tx.send(true);
    let status = server.wait_exit(EXIT_BOUND).await;
    let time_to_exit = signalled.elapsed();
    if status.is_some() {
        tokio::time::sleep(AFTER_EXIT).await;
    }
    let (tally, _) = load.stop().await;

    let mut seen = Live::default();
    for task in live {
        match task.await? {
            Ok(()) => seen.ok += 1,
            Err(e) => {
                seen.failed += 1;
                seen.first_failure.get_or_insert(e);
            }
        }
    }

    let served = tally.ok.load(Relaxed);
    let load_failed = tally.failed_after_connect.load(Relaxed);
    let failed = load_failed + seen.failed;
    let first_failure = tally
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .map(|e| format!("churn client: {e}"))
        .or(seen.first_failure.map(|e| format!("live client: {e}")));
    let exit = match status {
        Some(s) => s.to_string(),
        None => format!("still running after {} s", EXIT_BOUND.as_secs()),
    };
    let signal = signal_name(ctx.stop_signal);
    let outcome = outcome
        .figure("stop signal", &signal)
        .figure("served before signal", served_before)
        .figure("served after signal", served - served_before)
        .figure("live answered", format!("{} of {LIVE}", seen.ok))
        .figure("failed after connect", failed)
        .figure("not connected", tally.not_connected.load(Relaxed))
        .figure("first failure", first_failure.as_deref().unwrap_or("none"))
        .figure("exit", &exit)
        .figure(
            "time to exit",
            match status {
                Some(_) => format!("{:.0} ms", time_to_exit.as_secs_f64() * 1e3),
                None => "n/a".into(),
            },
        );
    Ok(if status.is_none() {
        outcome.fail(format!(
            "did not exit within {} s of {signal}",
            EXIT_BOUND.as_secs()
        ))
    } else if failed > 0 {
        outcome.fail(format!(
            "{failed} clients failed after connecting ({load_failed} churn, {} of {LIVE} mid-request); \
             first: {}",
            seen.failed,
            first_failure.as_deref().unwrap_or("?")
        ))
    } else {
        outcome.pass(format!(
            "every accepted client was answered (including {LIVE} mid-request); exited ({exit}) \
             {:.1} s after {signal}",
            time_to_exit.as_secs_f64()
        ))
    })
}

/// Connects, completes one exchange, sends the first half of a second request and reports ready; once
/// the signal was sent, waits [`LIVE_DELAY`], sends the rest and expects the answer.
async fn live_client(
    protocol: Protocol,
    addr: std::net::SocketAddr,
    tag: u64,
    ready: oneshot::Sender<()>,
    mut signalled: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut stream = protocol::connect(addr, tag)
        .await
        .map_err(|e| format!("connect before the signal: {e}"))?;
    protocol
        .exchange(&mut stream, &protocol.request(tag))
        .await
        .map_err(|e| format!("exchange before the signal: {e}"))?;
    let request = protocol.request(tag + 1);
    let (head, tail) = request.split_at(request.len() / 2);
    stream
        .write_all(head)
        .await
        .map_err(|e| format!("first half before the signal: {e}"))?;
    let _ = ready.send(());
    let _ = signalled.wait_for(|s| *s).await;
    tokio::time::sleep(LIVE_DELAY).await;
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        stream.write_all(tail).await?;
        protocol.read_answer(&mut stream, &request).await
    })
    .await
    .map_err(|_| "mid-request across the signal: no answer in time".to_owned())?
    .map_err(|e| format!("mid-request across the signal: {e}"))
}
