//! One file per scenario; each returns an [`Outcome`] with its figures.

mod balancer_lag;
mod cap;
mod churn;
mod drain;
mod fd_exhaustion;
mod first_packet;
mod flood;
mod keepalive;
mod keepalive_h2;
mod load;
mod open;
mod restart;
mod sessions;
mod slowloris;

use std::time::{Duration, Instant};

use super::target::Target;
use super::{Context, Outcome, ScenarioName};

/// Sends `restarts` of `signal` to the server's process group, evenly spaced over `duration` from
/// `started`, then waits out the rest of it (`None`: no signal, only the wait).
async fn restarts_spread(
    server: &Target,
    signal: Option<i32>,
    restarts: u32,
    started: Instant,
    duration: Duration,
) -> anyhow::Result<()> {
    let every = duration / (restarts + 1);
    for i in 1..=restarts {
        tokio::time::sleep_until((started + every * i).into()).await;
        if let Some(signal) = signal {
            server.signal_group(signal)?;
        }
    }
    tokio::time::sleep_until((started + duration).into()).await;
    Ok(())
}

pub async fn run(name: ScenarioName, ctx: &Context) -> anyhow::Result<Outcome> {
    let outcome = Outcome::new(name);
    match name {
        ScenarioName::FirstPacket => first_packet::run(ctx, outcome).await,
        ScenarioName::FdExhaustion => fd_exhaustion::run(ctx, outcome).await,
        ScenarioName::Flood => flood::run(ctx, outcome).await,
        ScenarioName::Slowloris => slowloris::run(ctx, outcome).await,
        ScenarioName::Cap => cap::run(ctx, outcome).await,
        ScenarioName::Drain => drain::run(ctx, outcome).await,
        ScenarioName::Restart => restart::run(ctx, outcome).await,
        ScenarioName::Keepalive => keepalive::run(ctx, outcome).await,
        ScenarioName::Sessions => sessions::run(ctx, outcome).await,
        ScenarioName::BalancerLag => balancer_lag::run(ctx, outcome).await,
        ScenarioName::Churn => churn::run(ctx, outcome).await,
    }
}
