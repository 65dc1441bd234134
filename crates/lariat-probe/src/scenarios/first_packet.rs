//! The fast first packet at scale: every client sends its request the instant it connects; every one must be answered
//! exactly. A server that reads before its handler is ready, or hands the socket over late, loses some.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::protocol;
use crate::{Context, Outcome};

const CONCURRENCY: usize = 64;

pub async fn run(ctx: &Context, outcome: Outcome) -> anyhow::Result<Outcome> {
    let server = ctx.server().await?;
    let total = ctx.scale(10_000, 2_000) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, failed, first_error) = (next.clone(), failed.clone(), first_error.clone());
            let (protocol, addr) = (ctx.protocol, server.addr);
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Relaxed);
                    if n >= total {
                        return;
                    }
                    if let Err(e) = protocol::one_connection(protocol, addr, n).await {
                        failed.fetch_add(1, Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| e.to_string());
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let failed = failed.load(Relaxed);
    let outcome = outcome
        .figure("connections", total)
        .figure("lost or wrong", failed);
    let first_error = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(match first_error {
        None => outcome.pass(format!("all {total} first packets answered")),
        Some(e) => outcome.fail(format!("{failed} of {total} not answered; first: {e}")),
    })
}
