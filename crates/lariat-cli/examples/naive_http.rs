//! What not to do, over HTTP: a hand-written tokio HTTP/1.1 keep-alive server as it is often first
//! written, kept naive on purpose. `lariat probe` is shown failing it on `keepalive`, `sessions` and
//! `balancer-lag` (`crates/lariat-cli/tests/it/probe.rs`), so a scenario that could not fail is caught.
//!
//! What is wrong with it, deliberately left in:
//!
//! - No stop handling: SIGTERM kills it at once. Every keep-alive request in flight is cut, and the
//!   listener is gone the same instant, so clients a load balancer still sends are refused.
//! - A "restart" on SIGHUP that re-executes itself in place: every connection is closed (requests and
//!   long-lived sessions cut mid-message) and the port is closed until the new image binds it again.
//!
//! Usage: `naive_http [ADDR]` (default `127.0.0.1:0`). Prints `listening on tcp://ADDR` once bound.
//!
//! ```text
//! cargo build --example naive_http -p lariat-cli
//! lariat probe --spawn 'target/debug/examples/naive_http 127.0.0.1:{port}' --protocol http \
//!     --restart-signal HUP --only keepalive --only sessions --only balancer-lag
//! ```

use std::io::Write;
use std::os::unix::process::CommandExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let mut hangup = signal(SignalKind::hangup())?;
    // The naive restart: bind again after exec. With SO_REUSEADDR (tokio's default) the port is free
    // again at once, but clients arriving in between are refused.
    let listener = TcpListener::bind(&addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on tcp://{}", listener.local_addr()?)?;
        out.flush()?;
    }

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut socket, _) = accepted?;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Answer every whole request head buffered (no bodies: GETs only).
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if socket.write_all(RESPONSE).await.is_err() {
                                return;
                            }
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
            _ = hangup.recv() => {
                // Replaces this process: every descriptor, connections and listener, is closed.
                let exe = std::env::current_exe()?;
                let err = std::process::Command::new(exe)
                    .args(std::env::args_os().skip(1))
                    .exec();
                return Err(err.into());
            }
        }
    }
}
