//! `discard`: reads and drops every byte, until the peer closes.

use std::future::Future;
use std::io;

use lariat::Connection;

use super::READ_BUFFER;

/// Discards until EOF. Between bursts it waits for readiness holding no buffer. (A `fn` returning
/// `async move` for the reason given on [`echo`](super::echo::echo).)
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` stores its argument twice
pub fn discard(conn: Connection) -> impl Future<Output = io::Result<()>> {
    async move {
        loop {
            conn.readable().await?;
            let mut buf = Vec::with_capacity(READ_BUFFER);
            loop {
                buf.clear();
                match conn.try_read_buf(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}
