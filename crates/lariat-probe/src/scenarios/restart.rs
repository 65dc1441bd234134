//! Spawn: repeated restarts under load. The restart signal (`--restart-signal`) goes to the server's whole
//! process group, so it reaches whichever process serves at that moment, and also one still draining
//! after an earlier restart (which must not act on it). A restart that hands its listening sockets over
//! refuses nobody and resets nobody; one that closes and rebinds refuses clients in the gap, and one that
//! exits without draining resets the exchanges in flight.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::load::Load;
use crate::protocol;
use crate::target::group_members;
use crate::{Context, Outcome};

/// Churn clients.
const CONCURRENCY: usize = 32;
/// How often the process group is sampled, to count the processes a restart started.
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    if ctx.spawner.is_none() {
        return Ok(outcome.skip("needs --spawn: the probe sends the server its restart signal"));
    }
    let Some(signal) = ctx.restart_signal else {
        return Ok(
            outcome.skip("needs --restart-signal: how the server is told to restart (e.g. HUP)")
        );
    };
    let server = ctx.server().await?;
    let group = server.pid().expect("a spawned server has a pid");
    let addr = server.addr;

    // The processes of the server's group, sampled as it runs: one more per restart that started a
    // successor (a server that re-executes itself in place keeps its pid, and shows as one).
    let seen = Arc::new(Mutex::new(BTreeSet::from([group])));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (seen, sampling) = (seen.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Relaxed) {
                let members = group_members(group);
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(members);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    let duration = ctx.time(Duration::from_secs(10), Duration::from_secs(4));
    let restarts = ctx.scale(10, 3) as u32;
    let started = Instant::now();
    let load = Load::start(ctx.protocol, addr, CONCURRENCY);
    super::restarts_spread(&server, Some(signal), restarts, started, duration).await?;
    let (tally, elapsed) = load.stop().await;

    // Still serving: a fresh client is answered.
    let still = protocol::one_connection(ctx.protocol, addr, u64::MAX / 2).await;
    sampling.store(false, Relaxed);
    let _ = sampler.await;
    let processes = seen.lock().unwrap_or_else(|e| e.into_inner()).len();

    let ok = tally.ok.load(Relaxed);
    let failed = tally.failed_after_connect.load(Relaxed);
    let refused = tally.not_connected.load(Relaxed);
    let first_failure = tally
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let outcome = outcome
        .figure("restarts sent", restarts)
        .figure("server processes seen", processes)
        .figure("served", ok)
        .figure(
            "rate",
            format!("{:.0} conn/s", ok as f64 / elapsed.as_secs_f64()),
        )
        .figure("failed after connect", failed)
        .figure("not connected", refused)
        .figure("first failure", first_failure.as_deref().unwrap_or("none"))
        .figure(
            "answers at the end",
            match &still {
                Ok(()) => "yes".to_owned(),
                Err(e) => format!("no: {e}"),
            },
        );
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!(
            "{failed} clients failed after connecting (first: {})",
            first_failure.as_deref().unwrap_or("?")
        ));
    }
    if refused > 0 {
        problems.push(format!("{refused} connects refused or unanswered"));
    }
    if let Err(e) = &still {
        problems.push(format!("no answer after the restarts: {e}"));
    }
    Ok(if problems.is_empty() {
        outcome.pass(format!(
            "{restarts} restarts under load: {ok} served, nobody refused or reset"
        ))
    } else {
        outcome.fail(problems.join("; "))
    })
}
