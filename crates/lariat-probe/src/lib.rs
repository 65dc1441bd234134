//! `lariat-probe` (also `lariat probe`): tests any TCP server for the ways servers lose connections (the first packet, running
//! out of descriptors, floods, silent clients, the connection cap, stopping, restarting, keep-alive and
//! long-lived clients, a balancer's lag) and prints a verdict per scenario. The scenarios marked *spawn*
//! start the server themselves (`--spawn`), to set limits, read its CPU and memory from `/proc`, and send
//! it signals; against `--target` they are skipped.
//!
//! A tool of its own: it talks to servers over sockets only and never imports the lariat library. The
//! `lariat` command reaches it as `lariat probe` ([`ProbeArgs`], [`main`]).

mod duration;

/// Durations as `lariat serve` and the probe take them (`30s`, `500ms`, `2m`, `1.5`).
pub use duration::parse_duration;
mod protocol;
mod report;
mod rlimit;
mod scenarios;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;

pub use protocol::Protocol;
pub use report::{Outcome, Verdict};
pub use target::{NotStarted, Spawner, Target};

/// What the verdicts mean and the exit status, for the command's `--help`.
pub const AFTER_HELP: &str =
    "Each scenario ends pass, FAIL, skipped (it needs --spawn, --restart-signal or \
    --protocol http), info (figures only) or could not run (the server did not start under the \
    scenario's conditions, e.g. a descriptor limit of 100; the reason is given).\n\
    Exit status: 1 when a scenario failed; skipped, info and could-not-run are not failures (0); \
    2 on a usage error.";

/// The probe's arguments (`lariat-probe …`, `lariat probe …`).
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

    /// The signal that restarts the server without dropping clients (e.g. HUP for lariat, USR2 for
    /// some servers), used by `restart`, `keepalive` and `sessions`. Without it, `restart` and `sessions`
    /// are skipped and `keepalive` only stops the server.
    #[arg(long, value_name = "SIGNAL")]
    pub restart_signal: Option<String>,

    /// The signal that stops the server gracefully, used by `drain`, `keepalive` and `balancer-lag`:
    /// TERM for most servers, QUIT for nginx, USR1 for HAProxy (their TERM is a fast stop).
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    pub stop_signal: String,

    /// The server writes its log to this file rather than (or as well as) stderr; `{port}` is replaced
    /// as in --spawn. The probe reads it besides stdout and stderr when it looks for what the server
    /// said (e.g. nginx's error_log).
    #[arg(long, value_name = "PATH", requires = "spawn")]
    pub server_log: Option<String>,

    /// In `balancer-lag`: how long new clients keep arriving after the stop signal, as from a load
    /// balancer that has not yet taken the server out (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse_duration)]
    pub balancer_lag: Duration,

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
    /// Thousands of clients send their request the instant they connect: every one must be answered,
    /// no byte lost.
    FirstPacket,
    /// (needs --spawn) The server may open only 100 files and 1000 clients connect: it must stay up, not spin
    /// on the CPU, not flood its log, and serve again once they leave.
    FdExhaustion,
    /// (needs --spawn) A client writes without ever reading: the server's memory must not grow with it.
    Flood,
    /// Thousands of connections that say nothing: new clients must still be served.
    Slowloris,
    /// More clients than the server takes at once: each must be served or cleanly closed, none left
    /// hanging.
    Cap,
    /// (needs --spawn) The stop signal under load: every client already connected is answered before the
    /// server exits.
    Drain,
    /// (needs --spawn and --restart-signal) Repeated restarts under load: nobody refused, nobody reset.
    Restart,
    /// (needs --spawn and --protocol http) HTTP/1.1 keep-alive clients (and HTTP/2 ones where the server
    /// speaks it in cleartext), busy through restarts and a graceful stop: no request may fail, no
    /// connection may close in the middle of a request.
    Keepalive,
    /// (needs --spawn and --restart-signal) Long-lived connections exchanging messages through restarts: no
    /// message may be lost; how many sessions were closed is reported.
    Sessions,
    /// (needs --spawn) After the stop signal, new clients keep arriving for --balancer-lag, as from a load
    /// balancer that has not yet taken the server out: none may be refused or reset.
    BalancerLag,
    /// Connections per second and latency under steady churn, as information.
    Churn,
}

impl ScenarioName {
    const ALL: [ScenarioName; 11] = [
        ScenarioName::FirstPacket,
        ScenarioName::FdExhaustion,
        ScenarioName::Flood,
        ScenarioName::Slowloris,
        ScenarioName::Cap,
        ScenarioName::Drain,
        ScenarioName::Restart,
        ScenarioName::Keepalive,
        ScenarioName::Sessions,
        ScenarioName::BalancerLag,
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
            ScenarioName::Keepalive => "keepalive",
            ScenarioName::Sessions => "sessions",
            ScenarioName::BalancerLag => "balancer-lag",
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
    /// The graceful stop signal (`--stop-signal`).
    pub stop_signal: i32,
    /// How long new clients keep arriving after the stop signal in `balancer-lag`.
    pub balancer_lag: Duration,
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

/// Runs the probe on a runtime of its own, after raising the open-file limit (scenarios open thousands of
/// connections); errors are printed on stderr after `name`, the command as the user typed it.
pub fn main(args: ProbeArgs, name: &str) -> ExitCode {
    rlimit::raise_nofile();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the probe; the exit code is 1 when a scenario failed (not when it was skipped or could not be
/// run), 2 on a usage error.
pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let restart_signal = match &args.restart_signal {
        Some(name) => Some(target::parse_signal(name)?),
        None => None,
    };
    let ctx = Context {
        protocol: args.protocol,
        target: args.target,
        spawner: args
            .spawn
            .as_deref()
            .map(|cmd| Spawner::parse(cmd, args.server_log.as_deref()))
            .transpose()?,
        restart_signal,
        stop_signal: target::parse_signal(&args.stop_signal)?,
        balancer_lag: args.balancer_lag,
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
            Err(e) => match e.downcast_ref::<NotStarted>() {
                Some(not_started) => Outcome::new(name).could_not_run(not_started.to_string()),
                None => Outcome::new(name).fail(format!("the probe could not run it: {e:#}")),
            },
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
