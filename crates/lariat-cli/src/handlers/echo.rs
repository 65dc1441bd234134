//! `echo`: writes back every byte read, until the peer closes.

use std::io;

use lariat::Connection;
use tokio::io::AsyncWriteExt;

use super::READ_BUFFER;

/// Echoes until EOF. Between bursts it waits for readiness holding no buffer.
pub async fn echo(mut conn: Connection) -> io::Result<()> {
    loop {
        conn.readable().await?;
        let mut buf = Vec::with_capacity(READ_BUFFER);
        loop {
            buf.clear();
            match conn.try_read_buf(&mut buf) {
                Ok(0) => return conn.shutdown().await.or(Ok(())),
                Ok(_) => conn.write_all(&buf).await?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}
