//! `lariat serve --metrics ADDR`: a small HTTP/1.1 endpoint for operators and load balancers.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: the server's counters ([`lariat::metrics`]), published at scrape time, plus `lariat_ready` and `lariat_lame_duck` |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while it takes traffic; 503 from the first SIGTERM/SIGINT (lame duck, then drain) and after a restart handed over |
//! | `GET /connections` | the live connections as JSON: id, peer, age_ms, bytes_in, bytes_out, handler, route (token) |
//! | `DELETE /connections/ID` or `POST /connections/ID/close` | closes one (404 if no live connection has that id) (token) |
//!
//! Who may ask for what is `access.rs`: health for everyone, the rest not from web pages, the
//! connection routes only with the token. `HEAD` works wherever `GET` does.
//!
//! The endpoint is a hyper service (hyper's HTTP/1 connection, one request per connection, then
//! `Connection: close`) on a lariat server of its own: its own small cap, EMFILE handled by the same
//! accept loop. Around hyper, each connection keeps two rules health checks depend on, which hyper has
//! no setting for: the whole request, body included, within a short deadline (else `408`; hyper's header
//! timeout closes without an answer and does not cover the body), and giving way while it waits for its
//! request when the cap is full and another client is queued (`Connection::crowded`), so idle
//! connections cannot keep a health check out. (`lariat::http::Http` serves keep-alive connections
//! through drains and restarts; this endpoint wants one request per connection and these two rules.)

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use lariat::activation::Inherited;
use lariat::lifecycle::Readiness;
use lariat::{BindOptions, Connection, ListenAddr, Listener, Server, ServerHandle};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::AdminAddr;

mod access;
mod answer;
mod request;
mod routes;
pub use access::Access;
use answer::Answer;
use request::Request;

/// The most admin connections held at once: scrapers and health checks, not clients.
const MAX_CONNECTIONS: usize = 64;
/// The largest request head read (hyper's smallest buffer).
const MAX_HEAD: usize = 8 * 1024;
/// How long a client gets to send its request (scrapers and probes send it at once).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long a connection waits for its request before it gives way to a queued client, when the cap is
/// full.
const GIVE_WAY_AFTER: Duration = Duration::from_millis(200);
/// After the answer, how long to wait for the client's close before closing ourselves. Reading what it
/// sent meanwhile keeps the kernel from answering unread bytes with a reset that could destroy the answer.
const LINGER: Duration = Duration::from_secs(1);
/// The most header fields in a request.
const MAX_HEADERS: usize = 32;

/// The name the `--metrics` socket is passed on under in a restart. The `:` keeps it apart from every
/// `--listen` value and every systemd socket name (systemd names have none).
pub fn passed_name(addr: &AdminAddr) -> String {
    format!("metrics:{}", addr.text)
}

/// The socket for `--metrics`: the one a restart's predecessor passed on (so the successor answers on
/// the very same socket, and no scrape is refused during the hand-over), else a new bind.
pub fn listener(
    addr: &AdminAddr,
    inherited: &mut Vec<Inherited>,
    opts: &BindOptions,
) -> anyhow::Result<Listener> {
    let name = passed_name(addr);
    if let Some(i) = inherited
        .iter()
        .position(|i| i.name.as_deref() == Some(name.as_str()))
    {
        return Ok(inherited.swap_remove(i).listener);
    }
    Listener::bind_with(&addr.endpoint, opts)
        .with_context(|| format!("binding the --metrics address {}", addr.text))
}

/// The running endpoint.
pub struct Admin {
    server: Server,
}

impl Admin {
    /// Where it listens.
    pub fn addr(&self) -> &ListenAddr {
        &self.server.local_addrs()[0]
    }

    /// Stops answering and leaves the socket to a restart's successor, which holds it too (no unlink).
    pub fn hand_over(&self) {
        self.server.handle().release_listeners();
    }
}

/// What every request reads.
pub(super) struct State {
    /// `None` in a `--workers` supervisor: it serves no connection itself.
    pub(super) server: Option<ServerHandle>,
    pub(super) prometheus: PrometheusHandle,
    pub(super) readiness: Readiness,
    pub(super) handlers: HandlerNames,
    pub(super) access: Access,
}

/// The handler serving each connection, as `/connections` names it: one for the whole server, or
/// one per `--route`, found by the route's name.
#[derive(Debug, Clone)]
pub struct HandlerNames {
    /// Without routes, every connection's; with routes, the name of a connection still being routed.
    unrouted: &'static str,
    routes: Vec<(String, &'static str)>,
}

impl HandlerNames {
    /// Every connection runs `handler`.
    pub fn single(handler: &'static str) -> HandlerNames {
        HandlerNames {
            unrouted: handler,
            routes: Vec::new(),
        }
    }

    /// Connections the route named `route` took run `handler`.
    pub fn route(mut self, route: &str, handler: &'static str) -> HandlerNames {
        self.routes.push((route.to_owned(), handler));
        self
    }

    /// The handler of a connection on `route` (`None`: not routed, or not yet).
    pub(super) fn of(&self, route: Option<&str>) -> &'static str {
        route
            .and_then(|route| self.routes.iter().find(|(name, _)| name == route))
            .map_or(self.unrouted, |(_, handler)| handler)
    }
}

/// Installs the Prometheus recorder as the process's `metrics` recorder and serves the endpoint on
/// `listener` for `server`, whose connections run `handlers`, under the `access` rules. Without a
/// server (a `--workers` supervisor), it answers `/healthz`, `/readyz` and the process's own series;
/// `/connections` is 404.
pub fn start(
    listener: Listener,
    server: Option<ServerHandle>,
    readiness: Readiness,
    handlers: HandlerNames,
    access: Access,
) -> anyhow::Result<Admin> {
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus metrics recorder")?;
    metrics::describe_gauge!(
        "lariat_ready",
        "1 while /readyz answers 200 (taking traffic); 0 in lame duck, while draining and after a hand-over."
    );
    metrics::describe_gauge!(
        "lariat_lame_duck",
        "1 during the lame-duck period after SIGTERM/SIGINT: still serving, /readyz answering 503."
    );
    if server.is_some() && !access.has_token() {
        tracing::info!("--metrics: /connections and closing a connection are disabled (no --admin-token-file or LARIAT_ADMIN_TOKEN)");
    }
    let state = Arc::new(State {
        server,
        prometheus,
        readiness,
        handlers,
        access,
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    let http = Arc::new(http);
    let server = Server::builder()
        .max_connections(MAX_CONNECTIONS)
        .handshake_grace(GIVE_WAY_AFTER)
        .serve([listener], move |conn| {
            serve(conn, state.clone(), http.clone())
        })
        .context("starting the --metrics endpoint")?;
    Ok(Admin { server })
}

/// Answers one request, then closes. Waiting for the request or for the client's close, it gives way
/// to a queued client when the cap is full.
async fn serve(
    mut conn: Connection,
    state: Arc<State>,
    http: Arc<hyper::server::conn::http1::Builder>,
) -> io::Result<()> {
    // Set once the request is read: from then on the answer is on its way, and neither the deadline nor
    // a queued client cuts it.
    let read = Arc::new(AtomicBool::new(false));
    let service = {
        let read = read.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (state, read) = (state.clone(), read.clone());
            async move {
                let answer = match Request::read(req).await {
                    Ok(request) => routes::route(&state, &request),
                    Err(refused) => refused,
                };
                read.store(true, Relaxed);
                Ok::<_, std::convert::Infallible>(answer.into_response())
            }
        })
    };
    let crowded = conn.crowded();
    tokio::pin!(crowded);
    let deadline = tokio::time::sleep(REQUEST_DEADLINE);
    tokio::pin!(deadline);
    let late = {
        let served = http.serve_connection(TokioIo::new(&mut conn), service);
        tokio::pin!(served);
        tokio::select! {
            // Malformed requests get hyper's own 400 or 431.
            _ = &mut served => false,
            () = &mut crowded, if !read.load(Relaxed) => return Ok(()),
            () = &mut deadline, if !read.load(Relaxed) => true,
        }
    };
    if late {
        // hyper has not answered (the request had not arrived whole): the answer is ours.
        conn.write_all(&Answer::text(408, "request timeout\n").into_bytes())
            .await?;
    }
    // hyper may have closed our side already; whatever happened, what is left is to linger.
    let _ = conn.shutdown().await;
    let crowded = conn.crowded();
    tokio::select! {
        _ = tokio::time::timeout(LINGER, until_eof(&mut conn)) => {}
        () = crowded => {}
    }
    Ok(())
}

async fn until_eof(conn: &mut Connection) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = conn.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
