//! `discard`: reads and drops every byte, until the peer closes.

use std::io;

use lariat::Connection;

use super::READ_BUFFER;

/// Discards until EOF. Between bursts it waits for readiness holding no buffer.
pub async fn discard(conn: Connection) -> io::Result<()> {
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
