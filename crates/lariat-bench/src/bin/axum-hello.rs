//! A peer for `lariat-bench --only zoo`: axum's `serve` with `with_graceful_shutdown`, as its docs
//! show it, stopping gracefully on SIGTERM or SIGINT. Answers `GET /` with `hello`.
//!
//! Usage: `axum-hello ADDR`. Prints `listening on tcp://ADDR` once bound.

// The global allocator `lariat` ships with, so the comparison stays like for like.
#[path = "../../../lariat-cli/src/allocator.rs"]
mod allocator;

use std::io::Write;

use axum::routing::get;
use axum::Router;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on tcp://{}", listener.local_addr()?)?;
        out.flush()?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await?;
    Ok(())
}
