//! The `lariat` command.

mod admin;
mod checks;
mod cli;
mod handlers;
mod listeners;
mod logging;
mod probe;
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
            logging::init(args.log_format);
            if let Some((before, after)) = rlimit::raise_nofile() {
                tracing::debug!(
                    before,
                    after,
                    "raised the open-file soft limit to the hard limit"
                );
            }
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.enable_all();
            if let Some(threads) = args.threads {
                runtime.worker_threads(threads.max(1));
            }
            let result = checks::serve_args(&args)
                .and_then(|()| runtime.build().map_err(anyhow::Error::from))
                .and_then(|rt| {
                    if args.workers > 0 && args.as_worker.is_none() {
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
        Command::Probe(args) => {
            rlimit::raise_nofile();
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(probe::run(args)));
            match result {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("lariat probe: {err:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
