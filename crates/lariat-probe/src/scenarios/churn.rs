//! Connections per second and latency under closed-loop churn: information, not a verdict.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::load::Load;
use crate::{Context, Outcome};

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    let server = ctx.server().await?;
    let load = Load::start(ctx.protocol, server.addr, 32);
    tokio::time::sleep(ctx.time(Duration::from_secs(5), Duration::from_secs(2))).await;
    let (tally, elapsed) = load.stop().await;
    let ok = tally.ok.load(Relaxed);
    let failed = tally.failed_after_connect.load(Relaxed) + tally.not_connected.load(Relaxed);
    let ms = |d: Option<Duration>| {
        d.map_or("n/a".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
    };
    Ok(outcome
        .figure(
            "rate",
            format!("{:.0} conn/s", ok as f64 / elapsed.as_secs_f64()),
        )
        .figure("p50", ms(tally.percentile(50.0)))
        .figure("p99", ms(tally.percentile(99.0)))
        .figure("failed", failed)
        .info("32 clients, connect + one exchange + close, as fast as the server answers"))
}
