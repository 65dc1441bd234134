//! What not to do: the echo server from tokio's README, kept naive on purpose. It is the baseline
//! `lariat-bench` measures lariat against and the server `lariat probe` is shown failing.
//!
//! This is what most people write first. What is wrong with it, deliberately left in:
//!
//! - `?` on `accept()` ends the accept loop, and so the whole server, on the first transient
//!   error: one `EMFILE` (out of descriptors) or `ECONNABORTED` and it is gone.
//! - `TcpListener::bind` listens with mio's fixed backlog of 128, not `net.core.somaxconn`, so a
//!   burst of connects overflows the accept queue and clients wait for SYN retransmits.
//! - No cap on connections: every accepted socket gets a task, until descriptors or memory run out.
//! - Every task keeps its 4 KiB buffer alive for the whole life of the connection, idle or not.
//! - No signal handling: SIGTERM kills it at once, resetting every connection in flight and every
//!   client waiting in its accept queue.
//!
//! Usage: `naive-echo [ADDR]` (default `127.0.0.1:0`). Prints `listening on tcp://ADDR` once bound.
//!
//! ```text
//! cargo build --bin naive-echo -p lariat-bench
//! lariat probe --spawn 'target/debug/naive-echo 127.0.0.1:{port}' --short
//! ```

// The global allocator `lariat` ships with, so the comparison stays like for like.
#[path = "../../../lariat-cli/src/allocator.rs"]
mod allocator;

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = TcpListener::bind(&addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on tcp://{}", listener.local_addr()?)?;
        out.flush()?;
    }

    loop {
        let (mut socket, _) = listener.accept().await?;

        tokio::spawn(async move {
            let mut buf = [0u8; 4096];

            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(_) => return,
                };

                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
