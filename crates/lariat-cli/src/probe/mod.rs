//! `lariat probe`: tests any TCP server for the failure modes of the seed documents and prints a verdict
//! per scenario. The scenarios marked *spawn* start the server themselves (`--spawn`), to set limits,
//! read its CPU and memory from `/proc`, and send it signals; against `--target` they are skipped.

mod protocol;
mod report;
mod scenarios;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;

pub use protocol::Protocol;
pub use report::{Outcome, Verdict};
pub use target::{Spawner, Target};

/// `lariat probe` arguments.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// An already running server to probe (IP:PORT). Scenarios that must start the server are skipped.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "spawn",
        required_unless_present = "spawn"
    )]
    pub target: Option<std::net::SocketAddr>,

    /// A command that starts the server, with `{port}` where its port goes, e.g.
    /// 'lariat serve --listen 127.0.0.1:{port}'. Started afresh for each scenario that needs it.
    #[arg(long, value_name = "CMD")]
    pub spawn: Option<String>,

    /// What a request and a valid answer are.
    #[arg(long, value_enum, default_value_t = Protocol::Echo)]
    pub protocol: Protocol,

    /// The signal that restarts the server in the `restart` scenario (e.g. HUP). Without it, `restart`
    /// is skipped.
    #[arg(long, value_name = "SIGNAL")]
    pub restart_signal: Option<String>,

    /// Smaller counts and shorter runs (for CI).
    #[arg(long)]
    pub short: bool,

    /// Run only these scenarios (repeatable).
    #[arg(long = "only", value_enum)]
    pub only: Vec<ScenarioName>,

    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioName {
    /// Seed 000: bytes sent at connect are answered, none lost.
    FirstPacket,
    /// Seed 004 (spawn): RLIMIT_NOFILE 100 and 1000 clients.
    FdExhaustion,
    /// Spawn: a peer that writes without reading.
    Flood,
    /// Many silent connections; fresh clients must still be served.
    Slowloris,
    /// Connections beyond the server's limit wait or get a clean close, never a hang.
    Cap,
    /// Spawn: SIGTERM under load; no reset after a successful connect.
    Drain,
    /// Spawn: repeated restarts under load; no failed connection.
    Restart,
    /// Connections per second and p99 latency, as information.
    Churn,
}

impl ScenarioName {
    const ALL: [ScenarioName; 8] = [
        ScenarioName::FirstPacket,
        ScenarioName::FdExhaustion,
        ScenarioName::Flood,
        ScenarioName::Slowloris,
        ScenarioName::Cap,
        ScenarioName::Drain,
        ScenarioName::Restart,
        ScenarioName::Churn,
    ];

    /// The name as printed and accepted by `--only`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::FirstPacket => "first-packet",
            ScenarioName::FdExhaustion => "fd-exhaustion",
            ScenarioName::Flood => "flood",
            ScenarioName::Slowloris => "slowloris",
            ScenarioName::Cap => "cap",
            ScenarioName::Drain => "drain",
            ScenarioName::Restart => "restart",
            ScenarioName::Churn => "churn",
        }
    }
}

/// What every scenario gets.
#[derive(Debug, Clone)]
pub struct Context {
    pub protocol: Protocol,
    /// Where to connect when the probe does not start the server.
    pub target: Option<std::net::SocketAddr>,
    /// How to start the server, when it may.
    pub spawner: Option<Spawner>,
    pub restart_signal: Option<i32>,
    pub short: bool,
}

impl Context {
    /// Scales a count down in short mode.
    pub fn scale(&self, full: usize, short: usize) -> usize {
        if self.short {
            short
        } else {
            full
        }
    }

    /// Scales a duration down in short mode.
    pub fn time(&self, full: Duration, short: Duration) -> Duration {
        if self.short {
            short
        } else {
            full
        }
    }

    /// A server to probe: a fresh one when the probe may start it, else the given target.
    pub async fn server(&self) -> anyhow::Result<Target> {
        match (&self.spawner, self.target) {
            (Some(spawner), _) => spawner.start(None).await,
            (None, Some(addr)) => Ok(Target::existing(addr)),
            (None, None) => anyhow::bail!("neither --target nor --spawn"),
        }
    }
}

/// Runs the probe; the exit code is 1 when a scenario failed, 2 on a usage error.
pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let restart_signal = match &args.restart_signal {
        Some(name) => Some(target::parse_signal(name)?),
        None => None,
    };
    let ctx = Context {
        protocol: args.protocol,
        target: args.target,
        spawner: args.spawn.as_deref().map(Spawner::parse).transpose()?,
        restart_signal,
        short: args.short,
    };
    let selected: Vec<ScenarioName> = ScenarioName::ALL
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.contains(s))
        .collect();
    let mut outcomes = Vec::new();
    for name in selected {
        report::progress_start(name);
        let started = std::time::Instant::now();
        let outcome = match scenarios::run(name, &ctx).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::new(name).fail(format!("the probe could not run it: {e:#}")),
        };
        report::progress_end(&outcome, started.elapsed());
        outcomes.push(outcome);
    }
    if args.json {
        report::print_json(&outcomes)?;
    } else {
        report::print_table(&outcomes);
    }
    let failed = outcomes.iter().any(|o| o.verdict == Verdict::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
