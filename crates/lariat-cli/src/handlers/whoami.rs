//! `whoami`: says who the server thinks the client is, then echoes. With `--proxy-protocol`, that is the
//! client a load balancer's PROXY header named, and `hop` is the balancer.

use std::future::Future;
use std::io;

use lariat::Connection;
use tokio::io::AsyncWriteExt;

/// Writes `peer=ADDR hop=ADDR\n`, then echoes until EOF.
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` stores its argument twice
pub fn whoami(mut conn: Connection) -> impl Future<Output = io::Result<()>> {
    async move {
        // Resumed after a restart: the client was greeted by the predecessor.
        if conn.resumed_state().is_some() {
            return super::echo::echo(conn).await;
        }
        let line = format!("peer={} hop={}\n", conn.peer_addr(), conn.hop_addr());
        conn.write_all(line.as_bytes()).await?;
        super::echo::echo(conn).await
    }
}
