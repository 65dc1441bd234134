//! A server that stops and restarts without losing a client, with `lariat::lifecycle`:
//!
//! - SIGTERM or Ctrl-C: a lame duck (still serving, reported unready), then the drain; a second one
//!   closes every connection. Exit code 0, or 3 if connections had to be closed.
//! - SIGHUP: a new copy of this program takes the listening socket over once it serves; this one drains.
//! - SIGUSR1: the reload hook runs.
//!
//! Each message a client sends is answered with the process's readiness (`serving`, `lame-duck`,
//! `stopping`), as a load balancer's health check would see it.
//!
//! ```text
//! cargo run -p lariat --example lifecycle -- 127.0.0.1:7878 2000 30000   # address, lame duck ms, drain ms
//! nc 127.0.0.1 7878            # type a line: "serving"
//! kill -TERM <pid>             # the same connection now answers "lame-duck", then "stopping"
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use lariat::lifecycle::{Exit, Lifecycle, Readiness, Signals, State};
use lariat::restart::PassOn;
use lariat::restart::RestartOptions;
use lariat::{Connection, Listener, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What to serve, and how to stop.
pub struct Config {
    /// Where to listen, unless a predecessor passed the socket on.
    pub addr: String,
    /// The lame duck after the first stop signal.
    pub lame_duck: Duration,
    /// The drain's deadline.
    pub drain_timeout: Duration,
    /// The successor SIGHUP starts, if not this program.
    pub restart_program: Option<std::path::PathBuf>,
    /// Run as the worker of this supervisor (a pid): obey its instructions, ignore the group's signals.
    pub supervisor: Option<u32>,
}

/// The name the socket is passed on under, so that the successor finds it.
const SOCKET_NAME: &str = "main";

/// Serves until signalled; returns how the drain ended.
pub async fn serve(config: Config) -> Result<Exit, Box<dyn Error>> {
    // Before anyone learns that we serve: a SIGTERM sent right after the line below is obeyed.
    let signals = match config.supervisor {
        Some(supervisor) => Signals::worker(supervisor)?,
        None => Signals::operator()?,
    };
    // A restart's predecessor passes the socket on; otherwise bind it.
    let passed = lariat::activation::inherited()?
        .into_iter()
        .find(|s| s.name.as_deref() == Some(SOCKET_NAME));
    let listener = match passed {
        Some(passed) => passed.listener,
        None => Listener::bind(&config.addr.parse()?)?,
    };
    let mut restart = RestartOptions::same_process()?;
    if let Some(program) = config.restart_program {
        restart.program = program;
    }
    let sockets = vec![PassOn::new(SOCKET_NAME, &listener)?];

    let readiness = Readiness::new();
    let answers = readiness.clone();
    let (running, accept_loop) =
        Server::builder().run([listener], move |conn| answer(conn, answers.clone()))?;
    println!("listening on {}", running.addrs[0]);

    let exit = Lifecycle::new(running.handle, accept_loop)
        .signals(signals)
        .readiness(readiness)
        .lame_duck(config.lame_duck)
        .drain_timeout(config.drain_timeout)
        .restart(restart, sockets)
        .on_reload(|| tracing::info!("reload hook: configuration reloaded"))
        .run()
        .await?;
    Ok(exit)
}

/// Answers every message with the readiness, until the client closes.
async fn answer(mut conn: Connection, readiness: Readiness) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    while conn.read(&mut buf).await? > 0 {
        let state = match readiness.state() {
            State::Serving => "serving\n",
            State::LameDuck => "lame-duck\n",
            State::Stopping => "stopping\n",
        };
        conn.write_all(state.as_bytes()).await?;
    }
    Ok(())
}

#[allow(dead_code)] // the tests run `serve` in a process of their own
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());
    let millis = |arg: Option<String>, default: u64| {
        Duration::from_millis(arg.and_then(|a| a.parse().ok()).unwrap_or(default))
    };
    let config = Config {
        addr,
        lame_duck: millis(args.next(), 0),
        drain_timeout: millis(args.next(), 30_000),
        restart_program: None,
        supervisor: None,
    };
    let served = tokio::runtime::Runtime::new()
        .map_err(Box::<dyn Error>::from)
        .and_then(|rt| rt.block_on(serve(config)));
    match served {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("lifecycle example: {e}");
            ExitCode::FAILURE
        }
    }
}
