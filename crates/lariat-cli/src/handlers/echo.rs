//! `echo`: writes back every byte read, until the peer closes.

use std::future::Future;
use std::io;

use lariat::handover::Wake;
use lariat::Connection;
use tokio::io::AsyncWriteExt;

use super::READ_BUFFER;

/// Echoes until EOF. Between bursts it waits for readiness holding no buffer.
///
/// At a restart it moves to the successor between bursts (see [`move_on`](super::move_on)): the
/// bytes already read but not yet echoed travel with it and are echoed there first.
///
/// A plain `fn` returning an `async move` block, not an `async fn`: rustc stores an `async fn`'s
/// argument twice in its future (rust-lang/rust#62958), which here costs 48 bytes in every idle
/// connection's task and pushes the task cell from 256 to 384 bytes.
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` stores its argument twice
pub fn echo(mut conn: Connection) -> impl Future<Output = io::Result<()>> {
    async move {
        if conn.resumed_state().is_some() {
            conn = Box::pin(super::echo_carried(conn)).await?;
        }
        // Taken out once a hand-over was tried: one that failed leaves the connection to drain here.
        let mut listening = true;
        loop {
            if conn.readable_or_offer(&mut listening).await? == Wake::HandOver {
                match Box::pin(super::move_on(conn, true)).await? {
                    None => return Ok(()),
                    Some(stays) => conn = stays,
                }
                continue;
            }
            // The burst in a future of its own, boxed: an idle connection's future holds neither its
            // buffer nor its write.
            if Box::pin(burst(&mut conn)).await? {
                return Ok(());
            }
        }
    }
}

/// Echoes what is readable now; true at EOF.
async fn burst(conn: &mut Connection) -> io::Result<bool> {
    let mut buf = Vec::with_capacity(READ_BUFFER);
    loop {
        buf.clear();
        match conn.try_read_buf(&mut buf) {
            // EOF: dropping the connection closes it (FIN after everything written; under TLS,
            // close_notify after the last record).
            Ok(0) => {
                conn.flush().await?;
                return Ok(true);
            }
            Ok(_) => conn.write_all(&buf).await?,
            // Under TLS, records the socket did not take yet go out before the wait (a no-op on
            // plain sockets).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.flush().await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection carries this future; the 1 KiB-per-idle-connection budget depends on it
    /// staying small. tokio's task cell is about 104 bytes plus the future, rounded up to 128 on x86_64;
    /// lariat's wrapper adds 8 bytes and a tag. At most 128 bytes here keeps the cell at 256.
    #[tokio::test]
    async fn the_echo_future_stays_small() {
        let listener = lariat::Listener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().tcp().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _server = lariat::Server::builder()
            .serve([listener], move |conn: Connection| {
                let _ = tx.send(std::mem::size_of_val(&echo(conn)));
                async {}
            })
            .unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let size = rx.recv().await.unwrap();
        assert!(size <= 128, "echo future grew to {size} bytes");
    }
}
