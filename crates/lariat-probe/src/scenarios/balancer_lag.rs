//! Spawn: the stop signal, while new clients keep arriving for `--balancer-lag` (default 5 s) after it,
//! as they do from a load balancer that has not yet taken the server out of rotation (a Kubernetes
//! endpoint still propagating, an NLB's deregistration delay, health checks yet to fail).
//!
//! A server with a lame-duck period (it keeps accepting and serving for a while after the signal, only
//! reporting itself unready) serves them all and passes. One that closes its listener at once refuses
//! them, or leaves their connects unanswered, and fails; so does one that resets them.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{self, Protocol};
use crate::target::signal_name;
use crate::{Context, Outcome};

/// Clients connecting one after another, each connect, one exchange, close.
const CONCURRENCY: u64 = 8;
/// How long the clients run before the signal.
const BEFORE: Duration = Duration::from_millis(500);
/// How long the server gets to exit after the lag.
const EXIT_BOUND: Duration = Duration::from_secs(60);

/// What the clients arriving after the signal saw.
#[derive(Debug, Default)]
struct Tally {
    served: AtomicU64,
    refused: AtomicU64,
    unanswered_connects: AtomicU64,
    /// Connected, then reset or closed without an answer.
    failed: AtomicU64,
    /// How long after the signal the first client turned away had begun to connect, and how.
    first_turned_away: Mutex<Option<(Duration, String)>>,
}

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    if ctx.spawner.is_none() {
        return Ok(outcome.skip("needs --spawn: the probe sends the server its stop signal"));
    }
    let mut server = ctx.server().await?;
    let addr = server.addr;
    let lag = ctx.balancer_lag;
    let signalled = Arc::new(Mutex::new(None::<Instant>));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            let (signalled, stop, tally) = (signalled.clone(), stop.clone(), tally.clone());
            tokio::spawn(client(ctx.protocol, addr, i, signalled, stop, tally))
        })
        .collect();

    tokio::time::sleep(BEFORE).await;
    server.signal(ctx.stop_signal)?;
    let at = Instant::now();
    *signalled.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    tokio::time::sleep(lag).await;
    stop.store(true, Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let status = server.wait_exit(EXIT_BOUND).await;

    let served = tally.served.load(Relaxed);
    let refused = tally.refused.load(Relaxed);
    let unanswered = tally.unanswered_connects.load(Relaxed);
    let failed = tally.failed.load(Relaxed);
    let first = tally
        .first_turned_away
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let signal = signal_name(ctx.stop_signal);
    let outcome = outcome
        .figure("stop signal", &signal)
        .figure("lag", format!("{:.1} s", lag.as_secs_f64()))
        .figure("served during the lag", served)
        .figure("refused", refused)
        .figure("connects unanswered", unanswered)
        .figure("reset or closed unanswered", failed)
        .figure(
            "first turned away",
            match &first {
                Some((after, how)) => {
                    format!(
                        "{:.0} ms after the signal: {how}",
                        after.as_secs_f64() * 1e3
                    )
                }
                None => "none".to_owned(),
            },
        )
        .figure(
            "exit",
            match status {
                Some(s) => s.to_string(),
                None => format!("still running {} s after the lag", EXIT_BOUND.as_secs()),
            },
        );
    let turned_away = refused + unanswered + failed;
    Ok(if turned_away > 0 {
        let when = first.map_or(String::new(), |(after, _)| {
            format!(
                ", the first {:.0} ms after {signal}",
                after.as_secs_f64() * 1e3
            )
        });
        outcome.fail(format!(
            "{turned_away} of the clients a balancer would still send were turned away ({refused} \
             refused, {unanswered} connects unanswered, {failed} reset){when}: it stops accepting \
             before a balancer can take it out (a lame-duck period of at least the lag avoids it)"
        ))
    } else if status.is_none() {
        outcome.fail(format!(
            "served every client during the lag, but did not exit within {} s of {signal}",
            EXIT_BOUND.as_secs()
        ))
    } else {
        outcome.pass(format!(
            "served all {served} clients that arrived in the {:.1} s after {signal}",
            lag.as_secs_f64()
        ))
    })
}

/// Connects, exchanges once, closes, again and again until told to stop; counts only what happens to
/// clients that start after the signal.
async fn client(
    protocol: Protocol,
    addr: std::net::SocketAddr,
    index: u64,
    signalled: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut tag = index;
    while !stop.load(Relaxed) {
        tag += CONCURRENCY;
        let since = *signalled.lock().unwrap_or_else(|e| e.into_inner());
        let began = Instant::now();
        let result = match protocol::connect(addr, tag).await {
            Err(e) => Err((true, e)),
            Ok(mut stream) => protocol
                .exchange(&mut stream, &protocol.request(tag))
                .await
                .map_err(|e| (false, e)),
        };
        let Some(signalled_at) = since else {
            continue;
        };
        match result {
            Ok(()) => {
                tally.served.fetch_add(1, Relaxed);
            }
            Err((connecting, e)) => {
                let how = if !connecting {
                    tally.failed.fetch_add(1, Relaxed);
                    format!("connected, then {e}")
                } else if e.kind() == io::ErrorKind::ConnectionRefused {
                    tally.refused.fetch_add(1, Relaxed);
                    "connection refused".to_owned()
                } else {
                    tally.unanswered_connects.fetch_add(1, Relaxed);
                    format!("connect: {e}")
                };
                tally
                    .first_turned_away
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert((began.saturating_duration_since(signalled_at), how));
                // A refused client tries again soon, as the next one from the balancer would.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
