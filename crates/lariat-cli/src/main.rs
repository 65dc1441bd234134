//! The `lariat` command.

mod admin;
#[cfg(feature = "jemalloc")]
mod allocator;
mod checks;
mod cli;
mod handlers;
mod listeners;
mod logging;
mod rlimit;
mod serve;
mod trim;
mod workers;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            logging::init(args.logging.log_format);
            if let Some((before, after)) = rlimit::raise_nofile() {
                tracing::debug!(
                    before,
                    after,
                    "raised the open-file soft limit to the hard limit"
                );
            }
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.enable_all();
            if let Some(threads) = args.limits.threads {
                runtime.worker_threads(threads.max(1));
            }
            let result = checks::serve_args(&args)
                .and_then(|()| runtime.build().map_err(anyhow::Error::from))
                .and_then(|rt| {
                    if args.drain.workers > 0 && args.drain.as_worker.is_none() {
                        rt.block_on(workers::supervise(*args))
                    } else {
                        rt.block_on(serve::run(*args))
                    }
                });
            match result {
                Ok(code) => code,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Probe(args) => lariat_probe::main(args, "lariat probe"),
    }
}
