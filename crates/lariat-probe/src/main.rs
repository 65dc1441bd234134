//! The `lariat-probe` command (the same as `lariat probe`).

use std::process::ExitCode;

use clap::Parser;

/// Test any TCP server for the ways servers lose clients (first packet, descriptor exhaustion, flood,
/// silent clients, the connection cap, stop, restarts, keep-alive and long-lived clients, a balancer's
/// lag) and measure its churn.
#[derive(Debug, Parser)]
#[command(name = "lariat-probe", version, about, after_help = lariat_probe::AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    args: lariat_probe::ProbeArgs,
}

fn main() -> ExitCode {
    lariat_probe::main(Cli::parse().args, "lariat-probe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
