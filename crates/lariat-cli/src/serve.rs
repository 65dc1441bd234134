//! `lariat serve`: bind, print where, serve with a built-in handler until a signal or a fatal error.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use lariat::{BindOptions, Handler, Listener, OnExhaustion, Server, ServerBuilder};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Exhaustion, HandlerKind, ServeArgs};
use crate::handlers;

/// Runs the server described by `args`.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let opts = BindOptions {
        backlog: args.backlog,
        reuse_port: args.reuseport,
        unix_mode: args.unix_mode,
        ..BindOptions::default()
    };
    let listeners = args
        .listen
        .iter()
        .map(|endpoint| Listener::bind_with(endpoint, &opts))
        .collect::<Result<Vec<_>, _>>()?;
    let builder = Server::builder()
        .max_connections(args.max_connections)
        .on_exhaustion(match args.on_exhaustion {
            Exhaustion::Wait => OnExhaustion::Wait,
            Exhaustion::Shed => OnExhaustion::Shed,
        });
    // Monomorphised per handler: no boxing on the per-connection path.
    match args.handler {
        HandlerKind::Echo => serve(builder, listeners, handlers::echo::echo).await,
        HandlerKind::Discard => serve(builder, listeners, handlers::discard::discard).await,
        HandlerKind::HttpHello => serve(builder, listeners, handlers::http_hello::http_hello).await,
    }
}

async fn serve<H: Handler>(
    builder: ServerBuilder,
    listeners: Vec<Listener>,
    handler: H,
) -> anyhow::Result<ExitCode> {
    // Register for signals before announcing readiness, so a signal sent right after the line is seen.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // The accept loop runs on this (block_on's) thread and the connections on the runtime's workers, so
    // accepting and serving proceed in parallel even with one worker.
    let (running, accept_loop) = builder
        .run(listeners, handler)
        .context("starting the accept loop")?;
    {
        let mut out = std::io::stdout().lock();
        for addr in &running.addrs {
            writeln!(out, "listening on {addr}")?;
        }
        out.flush()?;
    }
    let handle = running.handle;
    tokio::pin!(accept_loop);

    let signal_name = tokio::select! {
        result = &mut accept_loop => {
            // The accept loop ended on its own: every listener failed for good.
            result.context("the server stopped accepting")?;
            return Ok(ExitCode::SUCCESS);
        }
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    let stats = handle.stats();
    tracing::info!(
        signal = signal_name,
        active = stats.active,
        accepted = stats.accepted,
        "stopping: no longer accepting"
    );
    handle.stop();
    accept_loop.await.context("the server stopped accepting")?;
    Ok(ExitCode::SUCCESS)
}
