//! An axum app on lariat: HTTP/1.1 and HTTP/2 on one port (h2c, or `h2` by ALPN with TLS), the sockets
//! systemd passes adopted, and a drain on SIGTERM or Ctrl-C that ends every connection after an answer.
//!
//! ```text
//! cargo run -p lariat --features http,axum --example axum_http -- 127.0.0.1:3000 [CERT.pem KEY.pem]
//! curl --http2-prior-knowledge http://127.0.0.1:3000/
//! ```

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use lariat::http::Http;
use lariat::tls::TlsConfig;
use lariat::{DrainOptions, Listener, Server};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => {
            Some(TlsConfig::from_pem_files(cert, key)?.with_alpn(["h2", "http/1.1"]))
        }
        _ => None,
    };

    let app = Router::new()
        .route("/", get(|| async { "Hello from axum on lariat\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "a slow answer that a drain lets finish\n"
            }),
        );

    // Sockets passed by systemd (socket activation) are served as they are; otherwise bind.
    let mut listeners: Vec<Listener> = lariat::activation::inherited()?
        .into_iter()
        .map(|passed| passed.listener)
        .collect();
    if listeners.is_empty() {
        listeners.push(Listener::bind(&addr.parse()?)?);
    }

    // The only change from `axum::serve`: the router runs as a lariat handler.
    let server = Server::builder()
        .tls(tls)
        .serve(listeners, Http::tower(app))?;
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    lariat::activation::notify_ready()?;

    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // New clients are no longer admitted (queued ones are still served); HTTP/1 connections close after
    // their next answer or, idle, at once; HTTP/2 ones get a GOAWAY and finish their streams.
    let handle = server.handle().clone();
    let report = handle
        .drain(DrainOptions {
            timeout: Duration::from_secs(10),
            ..DrainOptions::default()
        })
        .await;
    println!("{report:?}");
    server.wait().await?;
    std::process::exit(if report.forced == 0 { 0 } else { 3 });
}
