//! The HTTP/2 half of `keepalive`, where the server speaks it in cleartext (prior knowledge, h2c): a few
//! connections, each carrying one request after another, through the same restarts and stop.
//!
//! A server that stops well sends GOAWAY naming the last stream it will answer and answers up to it;
//! streams it refuses (above that, or `REFUSED_STREAM`) were never processed and are safe to retry, so
//! they are clean, as is the end of a connection after GOAWAY. A stream the server accepted and never
//! answered (the connection closed under it) is a lost request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::protocol::{self, EXCHANGE_TIMEOUT};

/// HTTP/2 connections.
pub const CONNECTIONS: u64 = 8;

/// What the HTTP/2 clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub answered: AtomicU64,
    /// Streams accepted and not answered.
    pub failed: AtomicU64,
    /// Streams the server refused unprocessed (GOAWAY above its last stream, `REFUSED_STREAM`).
    pub refused_streams: AtomicU64,
    /// Streams ended by GOAWAY before the server processed them.
    pub goaways: AtomicU64,
    /// Connections found over before the next request was sent.
    pub closed_between: AtomicU64,
    /// Connects (or handshakes) refused before the stop signal.
    pub refused_while_running: AtomicU64,
    pub first_failure: Mutex<Option<String>>,
}

/// Whether the server answers an HTTP/2 request sent with prior knowledge.
pub async fn speaks_h2(addr: SocketAddr) -> bool {
    let attempt = async {
        let tcp = protocol::connect(addr, u64::MAX / 4).await.ok()?;
        let (client, connection) = h2::client::handshake(tcp).await.ok()?;
        let driver = tokio::spawn(connection);
        let answered = get(client, addr).await.is_ok();
        driver.abort();
        Some(answered)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(true))
    )
}

/// How a request failed: before it was sent (the connection was already over), or after.
enum Failed {
    Before,
    After(h2::Error),
}

/// One request on `client`, its answer read whole.
async fn get(
    client: h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
) -> Result<h2::client::SendRequest<bytes::Bytes>, Failed> {
    let mut client = client.ready().await.map_err(|_| Failed::Before)?;
    let request = http::Request::builder()
        .uri(format!("http://{addr}/"))
        .body(())
        .map_err(|_| Failed::Before)?;
    let (response, _) = client
        .send_request(request, true)
        .map_err(|_| Failed::Before)?;
    let mut body = response.await.map_err(Failed::After)?.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(Failed::After)?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(client)
}

/// One HTTP/2 client: a connection carrying one request after another, reopened when the server ends
/// it, until told to stop. `running` reads the phase: refusals before the stop signal count.
pub async fn client(
    addr: SocketAddr,
    index: u64,
    phase: Arc<AtomicU8>,
    running: u8,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut tag = index;
    while !stop.load(Relaxed) {
        tag += CONNECTIONS;
        let handshake = async {
            let tcp = protocol::connect(addr, u64::MAX / 4 + tag).await.ok()?;
            h2::client::handshake(tcp).await.ok()
        };
        let Ok(Some((mut client, connection))) =
            tokio::time::timeout(EXCHANGE_TIMEOUT, handshake).await
        else {
            if phase.load(Relaxed) == running {
                tally.refused_while_running.fetch_add(1, Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let driver = tokio::spawn(connection);
        while !stop.load(Relaxed) {
            match tokio::time::timeout(EXCHANGE_TIMEOUT, get(client.clone(), addr)).await {
                Ok(Ok(next)) => {
                    tally.answered.fetch_add(1, Relaxed);
                    client = next;
                }
                Ok(Err(Failed::Before)) => {
                    tally.closed_between.fetch_add(1, Relaxed);
                    break;
                }
                Ok(Err(Failed::After(e)))
                    if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) =>
                {
                    if e.is_go_away() {
                        tally.goaways.fetch_add(1, Relaxed);
                    } else {
                        tally.refused_streams.fetch_add(1, Relaxed);
                    }
                    break;
                }
                Ok(Err(Failed::After(e))) => {
                    tally.failed.fetch_add(1, Relaxed);
                    tally
                        .first_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| format!("HTTP/2: {e}"));
                    break;
                }
                Err(_) => {
                    tally.failed.fetch_add(1, Relaxed);
                    tally
                        .first_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(|| "HTTP/2: no answer in time".to_owned());
                    break;
                }
            }
        }
        driver.abort();
    }
}
