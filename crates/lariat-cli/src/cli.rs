//! Command-line arguments.

mod serve_args;
mod values;

use clap::{Parser, Subcommand};

pub use serve_args::*;
pub use values::*;

/// TCP and Unix-socket servers that never lose a connection or a byte.
#[derive(Debug, Parser)]
#[command(name = "lariat", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server with a built-in handler.
    Serve(Box<ServeArgs>),
    /// Test any TCP server for the ways servers lose clients (first packet, descriptor exhaustion,
    /// flood, silent clients, the connection cap, stop, restarts, keep-alive and long-lived clients, a
    /// balancer's lag) and measure its churn.
    #[command(after_help = lariat_probe::AFTER_HELP)]
    Probe(lariat_probe::ProbeArgs),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::parse_from(["lariat", "serve"]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert!(args.listeners.listen.is_empty());
        assert_eq!(args.handler.handler, HandlerKind::Echo);
        // The flags' defaults are the library's, from its settings groups.
        let limits = lariat::Limits::default();
        assert_eq!(args.limits.max_connections, limits.max_connections);
        assert_eq!(args.limits.acceptors, limits.acceptors);
        assert_eq!(args.limits.on_exhaustion, Exhaustion::Wait);
        assert_eq!(limits.on_exhaustion, lariat::OnExhaustion::Wait);
        let handshake = lariat::HandshakeSettings::default();
        assert_eq!(args.handshake.handshake_timeout, handshake.timeout);
        assert_eq!(args.handshake.handshake_grace, handshake.grace);
        assert_eq!(args.admin.metrics, None);
        assert_eq!(args.drain.lame_duck, Duration::ZERO);
    }

    #[test]
    fn metrics_and_lame_duck() {
        let cli = Cli::parse_from([
            "lariat",
            "serve",
            "--metrics",
            "127.0.0.1:9100",
            "--lame-duck",
            "5s",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let metrics = args.admin.metrics.unwrap();
        assert_eq!(metrics.endpoint, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(metrics.text, "127.0.0.1:9100");
        assert_eq!(args.drain.lame_duck, Duration::from_secs(5));
        assert!(Cli::try_parse_from(["lariat", "serve", "--metrics", "nowhere"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
