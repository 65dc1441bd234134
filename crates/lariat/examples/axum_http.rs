//! An axum app on lariat, stopped and restarted like `lariat serve` does it, without cutting a request:
//!
//! - HTTP/1.1 and HTTP/2 on one port (h2c, or `h2`/`http/1.1` by ALPN with TLS);
//! - the sockets systemd passes (socket activation) are served as they are, or the address is bound;
//! - SIGTERM or Ctrl-C: a lame duck (`/readyz` answers 503 while the app still serves), then a drain
//!   that ends every connection after an answer; a second signal closes them all. Exit code 0, or 3;
//! - SIGHUP: a new copy of this program takes the listening sockets over once it serves (a failed one
//!   is rolled back), and this one drains.
//!
//! ```text
//! cargo run -p lariat --features http,axum --example axum_http -- 127.0.0.1:3000 [CERT.pem KEY.pem]
//! curl --http2-prior-knowledge http://127.0.0.1:3000/
//! kill -HUP <pid>               # a successor serves the same port; no request fails
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use lariat::http::Http;
use lariat::lifecycle::{Exit, Lifecycle, Readiness, Signals};
use lariat::restart::PassOn;
use lariat::restart::RestartOptions;
use lariat::tls::TlsConfig;
use lariat::{Listener, Server};

/// Where and how to serve.
pub struct Config {
    /// Where to listen, unless systemd or a predecessor passed the sockets.
    pub addr: String,
    /// A certificate and key (PEM) to serve HTTPS with; plain HTTP without.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long `/readyz` answers 503 before the drain begins.
    pub lame_duck: Duration,
    /// The drain's deadline.
    pub drain_timeout: Duration,
}

/// The app: any axum `Router`, plus a `/readyz` that load balancers check.
pub fn app(readiness: Readiness) -> Router {
    Router::new()
        .route("/", get(|| async { "Hello from axum on lariat\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "a slow answer that a drain or a restart lets finish\n"
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if readiness.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
                }
            }),
        )
}

/// Serves until signalled; returns how the drain ended.
pub async fn serve(config: Config) -> Result<Exit, Box<dyn Error>> {
    // Before anyone learns that we serve, so that no signal sent after that is lost.
    let signals = Signals::operator()?;
    let tls = match config.tls {
        Some((cert, key)) => {
            Some(TlsConfig::from_pem_files(cert, key)?.with_alpn(["h2", "http/1.1"]))
        }
        None => None,
    };

    // Sockets passed by systemd or by the predecessor of a restart are served as they are.
    let mut listeners: Vec<(String, Listener)> = lariat::activation::inherited()?
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s.name.unwrap_or_else(|| format!("http{i}")), s.listener))
        .collect();
    if listeners.is_empty() {
        listeners.push(("http".into(), Listener::bind(&config.addr.parse()?)?));
    }
    // What SIGHUP passes on to the successor: this program again, with the same arguments.
    let sockets = listeners
        .iter()
        .map(|(name, l)| PassOn::new(name.clone(), l))
        .collect::<Result<Vec<_>, _>>()?;

    let readiness = Readiness::new();
    let server = Server::builder().tls(tls).serve(
        listeners.into_iter().map(|(_, l)| l),
        Http::tower(app(readiness.clone())),
    )?;
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    println!("serving as pid {}", std::process::id());

    let exit = Lifecycle::for_server(server)
        .signals(signals)
        .readiness(readiness)
        .lame_duck(config.lame_duck)
        .drain_timeout(config.drain_timeout)
        .restart(RestartOptions::same_process()?, sockets)
        .run()
        .await?;
    Ok(exit)
}

#[allow(dead_code)] // the tests run `serve` in a process of their own
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some((cert.into(), key.into())),
        _ => None,
    };
    let config = Config {
        addr,
        tls,
        lame_duck: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(30),
    };
    let served = tokio::runtime::Runtime::new()
        .map_err(Box::<dyn Error>::from)
        .and_then(|rt| rt.block_on(serve(config)));
    match served {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("axum_http: {e}");
            ExitCode::FAILURE
        }
    }
}
