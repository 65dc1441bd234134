//! `discard`: reads and drops every byte, until the peer closes.

use std::future::Future;
use std::io;

use lariat::handover::Wake;
use lariat::Connection;

use super::READ_BUFFER;

/// Discards until EOF. Between bursts it waits for readiness holding no buffer. (A `fn` returning
/// `async move` for the reason given on [`echo`](super::echo::echo).)
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` stores its argument twice
pub fn discard(mut conn: Connection) -> impl Future<Output = io::Result<()>> {
    async move {
        // Read-ahead a predecessor carried is discarded like the rest.
        drop(conn.take_read_ahead());
        let mut listening = true;
        loop {
            if conn.readable_or_offer(&mut listening).await? == Wake::HandOver {
                match Box::pin(super::move_on(conn, false)).await? {
                    None => return Ok(()),
                    Some(stays) => conn = stays,
                }
                continue;
            }
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
