//! `lariat serve`: bind, print where, serve with a built-in handler until a signal or a fatal error.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use lariat::{
    BindOptions, DrainOptions, Handler, Listener, OnExhaustion, Server, ServerBuilder, ServerHandle,
};
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
        HandlerKind::Echo => serve(builder, listeners, handlers::echo::echo, &args).await,
        HandlerKind::Discard => serve(builder, listeners, handlers::discard::discard, &args).await,
        HandlerKind::HttpHello => {
            serve(builder, listeners, handlers::http_hello::http_hello, &args).await
        }
    }
}

async fn serve<H: Handler>(
    builder: ServerBuilder,
    listeners: Vec<Listener>,
    handler: H,
    args: &ServeArgs,
) -> anyhow::Result<ExitCode> {
    // Register for signals before announcing readiness, so a signal sent right after the line is seen.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // The accept loop runs on this (block_on's) thread and the connections on the runtime's workers, so
    // accepting and serving proceed in parallel even with one worker.
    let (running, accept_loop) = builder
        .run(listeners, handler)
        .context("starting the accept loop")?;
    announce(&running.addrs);
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
        deadline_ms = args.drain_timeout.as_millis() as u64,
        "draining: serving the queued clients and the live connections, admitting no new ones"
    );
    let opts = DrainOptions {
        timeout: args.drain_timeout,
        ..DrainOptions::default()
    };
    // The drain needs the accept loop driven (it empties the queues), so both run here.
    let drain = handle.drain(opts);
    tokio::pin!(drain);
    let mut accept_loop_done = false;
    let report = loop {
        tokio::select! {
            result = &mut accept_loop, if !accept_loop_done => {
                accept_loop_done = true;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a listener failed while draining");
                }
            }
            report = &mut drain => break report,
            _ = sigterm.recv() => force(&handle, "SIGTERM"),
            _ = sigint.recv() => force(&handle, "SIGINT"),
        }
    };
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FORCED)
    })
}

/// Prints one `listening on ADDR` line per listener on stdout, flushed. A closed stdout is logged, not
/// fatal: a successor started by a restart inherits a stdout its supervisor may have stopped reading.
fn announce(addrs: &[lariat::ListenAddr]) {
    let mut out = std::io::stdout().lock();
    let printed = addrs
        .iter()
        .try_for_each(|addr| writeln!(out, "listening on {addr}"))
        .and_then(|()| out.flush());
    if let Err(e) = printed {
        tracing::warn!(error = %e, "cannot print the listening addresses on stdout");
    }
    for addr in addrs {
        tracing::info!(listener = %addr, "listening");
    }
}

/// The exit code after a drain that had to close connections (or left clients queued).
pub const EXIT_FORCED: u8 = 3;

fn force(handle: &ServerHandle, signal: &str) {
    tracing::warn!(signal, "second signal: closing every connection now");
    handle.force();
}
