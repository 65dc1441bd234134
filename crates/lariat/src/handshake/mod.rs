//! The handshake: what runs in a connection's own task before its handler: the PROXY header (and the
//! admission rules on the client it names), the TLS handshake, the admission hook and the greeting, in
//! that order, all within one handshake timeout counted from `accept` (this module owns its default and
//! the grace before a handshake gives way under pressure). A slow or hostile client holds up only its own task, never the accept loop,
//! and every way the set-up can fail is counted by cause.
//!
//! No step takes a byte meant for the handler: the PROXY reader consumes exactly its header (see
//! [`proxy`](crate::proxy)), and TLS records that arrive with the handshake's last flight stay in the
//! session that the handler reads from.
//!
//! The steps live beside this file: `proxy.rs`, `tls/`, `admission.rs` (rules and the hook's `Reject`),
//! `route.rs` (several protocols on one port, within the same timeout), `pressure.rs` (when handshakes
//! give way).

pub mod admission;
pub(crate) mod pressure;
pub mod proxy;
pub mod route;
pub mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::admission::{AdmissionHook, Reject};
use crate::proxy::{ProxyConfig, ProxyError};
use crate::server::stats::Stats;
use crate::tls::{TlsConfig, TlsError};
use crate::{Connection, Stream};

/// One listener's own handshake settings, replacing the server-wide
/// [`proxy_protocol`](crate::ServerBuilder::proxy_protocol) and [`tls`](crate::ServerBuilder::tls) for its
/// connections: say, PROXY on the port the load balancer uses and none on an internal one. Given with
/// [`Listener::with_handshake`](crate::Listener::with_handshake), so a setting always belongs to a
/// listener that exists. The server-wide admission hook and greeting apply to every listener.
#[derive(Debug, Clone, Default)]
pub struct ListenerHandshake {
    /// The PROXY header this listener's connections start with; `None` (or
    /// [`ProxyMode::Off`](crate::proxy::ProxyMode::Off)): none.
    pub proxy: Option<ProxyConfig>,
    /// TLS on this listener; `None`: plaintext.
    pub tls: Option<TlsConfig>,
}

/// The set-up steps of one listener's connections.
#[derive(Clone, Default)]
pub(crate) struct Handshake {
    pub(crate) proxy: Option<Arc<ProxyConfig>>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) hook: Option<AdmissionHook>,
    pub(crate) greeting: Option<Bytes>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("proxy", &self.proxy)
            .field("tls", &self.tls.is_some())
            .field("hook", &self.hook.is_some())
            .field("greeting", &self.greeting)
            .finish()
    }
}

/// Why a connection's set-up failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("PROXY header refused: {0}")]
    Proxy(#[from] ProxyError),
    #[error("TLS handshake failed: {0}")]
    Tls(#[from] TlsError),
    #[error("refused by the admission rules: {0}")]
    Admission(crate::admission::Refusal),
    #[error("refused by the admission hook: {}", .0.reason)]
    Refused(Reject),
    #[error("greeting not written: {0}")]
    Greeting(io::Error),
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("handshake still going after {0:?} while the cap was full and clients were queued")]
    Evicted(Duration),
}

impl Handshake {
    /// True when there is nothing to do before the handler (the fast path: no extra state in the task).
    pub(crate) fn is_empty(&self) -> bool {
        self.proxy.is_none() && self.tls.is_none() && self.hook.is_none() && self.greeting.is_none()
    }

    /// Runs the steps; the connection ready for its handler, or `None` after counting and logging why
    /// it was closed.
    pub(crate) async fn open(&self, conn: Connection) -> Option<Connection> {
        let entry = conn.entry().clone();
        // Boxed: the steps' future (a TLS handshake's is ~2 KiB) would otherwise widen the task of every
        // connection for its whole life, though it is only alive until the handler starts.
        let result = bounded(&entry, Box::pin(self.steps(conn)))
            .await
            .and_then(|r| r);
        match result {
            Ok(conn) => Some(conn),
            Err(e) => {
                failed(&entry, &e);
                None
            }
        }
    }

    async fn steps(&self, mut conn: Connection) -> Result<Connection, HandshakeError> {
        if let Some(config) = &self.proxy {
            match proxy::read_header(conn.stream(), &conn.entry().peer, config).await? {
                proxy::Admitted::Header(header) => conn.set_proxy_header(header),
                proxy::Admitted::Plain => {}
            }
            // The client is known now: the admission rules judge it, not the balancer.
            conn.admit().map_err(HandshakeError::Admission)?;
        }
        if let Some(tls) = &self.tls {
            conn = start_tls(conn, tls).await?;
        }
        if let Some(hook) = &self.hook {
            if let Err(reject) = hook(&conn) {
                if let Some(reply) = &reject.reply {
                    // Best effort: the refusal stands whether or not the client hears it.
                    let _ = conn.write_all(reply).await;
                    let _ = conn.flush().await;
                }
                return Err(HandshakeError::Refused(reject));
            }
        }
        if let Some(greeting) = &self.greeting {
            conn.write_all(greeting)
                .await
                .map_err(HandshakeError::Greeting)?;
            conn.flush().await.map_err(HandshakeError::Greeting)?;
        }
        Ok(conn)
    }
}

/// Runs a set-up step within what is left of the handshake timeout, giving way to queued clients when
/// the cap is full and the grace period is over (see [`pressure`](crate::handshake::pressure)).
pub(crate) async fn bounded<T>(
    entry: &crate::server::registry::Entry,
    step: impl std::future::Future<Output = T>,
) -> Result<T, HandshakeError> {
    let shared = &entry.shared;
    let accepted = tokio::time::Instant::now() - shared.registry.age(entry);
    let deadline = crate::deadline::after(accepted, shared.handshake_timeout);
    // The grace is at most the timeout: the settings are validated before the server starts.
    let grace_ends = crate::deadline::after(accepted, shared.handshake_grace);
    tokio::select! {
        biased;
        done = step => Ok(done),
        _ = tokio::time::sleep_until(deadline) => Err(HandshakeError::Timeout(shared.handshake_timeout)),
        _ = shared.pressure.gives_way(grace_ends) => Err(HandshakeError::Evicted(shared.handshake_grace)),
    }
}

/// Runs a TLS handshake over a plain connection and returns it reading and writing plaintext.
pub(crate) async fn start_tls(conn: Connection, tls: &TlsConfig) -> Result<Connection, TlsError> {
    let (stream, guard) = conn.into_parts();
    let session = crate::tls::handshake(stream, tls).await?;
    let _ = guard.entry().extras().tls.set(session.shared_info());
    Ok(Connection::from_parts(
        Stream::Tls(Box::new(session)),
        guard,
    ))
}

/// Counts a failed set-up by cause and logs it (each at debug, one a second at info).
pub(crate) fn failed(entry: &crate::server::registry::Entry, e: &HandshakeError) {
    let stats = &entry.shared.stats;
    let counter = match e {
        HandshakeError::Proxy(_) => &stats.proxy_refused,
        HandshakeError::Tls(_) => &stats.tls_failed,
        HandshakeError::Refused(_) => &stats.hook_refused,
        HandshakeError::Timeout(_) => &stats.handshake_timeouts,
        HandshakeError::Evicted(_) => &stats.handshake_evicted,
        // Counted and logged by the admission rules.
        HandshakeError::Admission(_) => return,
        // The client left before its greeting: a close like any other.
        HandshakeError::Greeting(_) => {
            tracing::debug!(conn = entry.id, peer = %entry.peer, error = %e, "connection closed during set-up");
            return;
        }
    };
    Stats::add(counter, 1);
    if entry
        .shared
        .handshake_log
        .allow(entry.shared.registry.now_ms())
    {
        tracing::info!(conn = entry.id, peer = %entry.peer, error = %e, "connection closed during set-up (logged at most once a second; all are counted)");
    } else {
        tracing::debug!(conn = entry.id, peer = %entry.peer, error = %e, "connection closed during set-up");
    }
}
