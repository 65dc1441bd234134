//! The README's library example: an echo server that drains on Ctrl-C and prints what happened.

use lariat::{Connection, DrainOptions, Listener, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = Listener::bind(&"127.0.0.1:0".parse()?)?; // port 0: the real port is reported
    let server = Server::builder()
        .max_connections(1_000) // exact: a slot is taken before accept
        .serve([listener], |mut conn: Connection| async move {
            // The handler owns the socket: no other task can read its bytes.
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await?;
            conn.write_all(&buf[..n]).await
        })?;
    println!("listening on {}", server.local_addrs()[0]);

    let handle = server.handle().clone(); // counters, registry, cap, drain
    tokio::signal::ctrl_c().await?;
    // Stop new clients without resetting queued ones, let live connections finish (30 s at most).
    let report = handle.drain(DrainOptions::default()).await;
    println!("{report:?} {:?}", handle.stats());
    server.wait().await?;
    Ok(())
}
