//! Command-line arguments.

use clap::{Parser, Subcommand, ValueEnum};
use lariat::Endpoint;

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
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT, [IPv6]:PORT, unix:/path or unix:@abstract. Repeatable.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:7878")]
    pub listen: Vec<Endpoint>,

    /// What to do with each connection.
    #[arg(long, value_enum, default_value_t = HandlerKind::Echo)]
    pub handler: HandlerKind,

    /// Most connections held at once (others wait in the kernel backlog).
    #[arg(long, value_name = "N", default_value_t = lariat::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// listen(2) backlog [default: net.core.somaxconn].
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,

    /// Set SO_REUSEPORT, so several processes can listen on the same port.
    #[arg(long)]
    pub reuseport: bool,

    /// At descriptor exhaustion: let queued clients wait (default), or shed them with a clean close.
    #[arg(long, value_enum, default_value_t = Exhaustion::Wait)]
    pub on_exhaustion: Exhaustion,

    /// Permission bits for Unix socket files, in octal (e.g. 660).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,

    /// Runtime worker threads [default: the CPUs this process may run on].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Log format on stderr. The level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HandlerKind {
    /// Write back every byte read.
    Echo,
    /// Read and drop every byte.
    Discard,
    /// Answer every HTTP/1.x request with a short 200, keep-alive (for wrk, h2load).
    HttpHello,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Exhaustion {
    /// Leave queued clients in the backlog until a descriptor frees.
    Wait,
    /// Accept and close them with a reserved descriptor.
    Shed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|e| format!("`{text}` is not an octal mode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("660").unwrap(), 0o660);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert!(parse_mode("9").is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::parse_from(["lariat", "serve"]);
        let Command::Serve(args) = cli.command;
        assert_eq!(args.listen, vec!["127.0.0.1:7878".parse().unwrap()]);
        assert_eq!(args.handler, HandlerKind::Echo);
        assert_eq!(args.max_connections, lariat::DEFAULT_MAX_CONNECTIONS);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
