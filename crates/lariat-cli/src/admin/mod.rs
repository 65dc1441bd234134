//! `lariat serve --metrics ADDR`: a small HTTP/1.1 endpoint for operators and load balancers.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: the server's counters ([`lariat::metrics`]), published at scrape time, plus `lariat_ready` and `lariat_lame_duck` |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while it takes traffic; 503 from the first SIGTERM/SIGINT (lame duck, then drain) and after a restart handed over |
//! | `GET /connections` | the live connections as JSON: id, peer, age_ms, bytes_in, bytes_out, handler (token) |
//! | `DELETE /connections/ID` or `POST /connections/ID/close` | closes one (404 if no live connection has that id) (token) |
//!
//! Who may ask for what is `access.rs`: health for everyone, the rest not from web pages, the
//! connection routes only with the token. `HEAD` works wherever `GET` does.
//!
//! Why not hyper or axum: five routes, one request per connection (`Connection: close`), no bodies. The
//! endpoint is served by lariat itself, the way it serves clients (its own small cap, a short deadline
//! for the request, EMFILE handled by the same accept loop), with request heads parsed by `httparse`,
//! which the `http-hello` handler already uses: no HTTP stack in the binary for it. A connection still
//! waiting for its request gives way when the cap is full and another client is queued
//! (`Connection::crowded`), so idle connections cannot keep a health check out.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use lariat::activation::Inherited;
use lariat::lifecycle::{self, Readiness};
use lariat::{BindOptions, CloseError, Connection, ListenAddr, Listener, Server, ServerHandle};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::AdminAddr;

mod access;
pub use access::Access;
use access::{Credentials, Refusal};

/// The most admin connections held at once: scrapers and health checks, not clients.
const MAX_CONNECTIONS: usize = 64;
/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// The largest request body read (and discarded: no route takes one).
const MAX_BODY: usize = 64 * 1024;
/// How long a client gets to send its request (scrapers and probes send it at once).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long a connection waits for its request before it gives way to a queued client, when the cap is
/// full.
const GIVE_WAY_AFTER: Duration = Duration::from_millis(200);
/// After the answer, how long to wait for the client's close before closing ourselves. Reading what it
/// sent meanwhile keeps the kernel from answering unread bytes with a reset that could destroy the answer.
const LINGER: Duration = Duration::from_secs(1);
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
struct State {
    /// `None` in a `--workers` supervisor: it serves no connection itself.
    server: Option<ServerHandle>,
    prometheus: PrometheusHandle,
    readiness: Readiness,
    handler: &'static str,
    access: Access,
}

/// Installs the Prometheus recorder as the process's `metrics` recorder and serves the endpoint on
/// `listener` for `server`, whose connections all run `handler`, under the `access` rules. Without a
/// server (a `--workers` supervisor), it answers `/healthz`, `/readyz` and the process's own series;
/// `/connections` is 404.
pub fn start(
    listener: Listener,
    server: Option<ServerHandle>,
    readiness: Readiness,
    handler: &'static str,
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
        handler,
        access,
    });
    let server = Server::builder()
        .max_connections(MAX_CONNECTIONS)
        .handshake_grace(GIVE_WAY_AFTER)
        .serve([listener], move |conn| serve(conn, state.clone()))
        .context("starting the --metrics endpoint")?;
    Ok(Admin { server })
}

/// Answers one request, then closes. Waiting for the request or for the client's close, it gives way
/// to a queued client when the cap is full.
async fn serve(mut conn: Connection, state: Arc<State>) -> io::Result<()> {
    let crowded = conn.crowded();
    let read = tokio::select! {
        read = tokio::time::timeout(REQUEST_DEADLINE, read_request(&mut conn)) => read,
        () = crowded => return Ok(()),
    };
    let answer = match read {
        Ok(Ok(Some(request))) => {
            let mut answer = route(&state, &request);
            if request.method == "HEAD" {
                answer.head_only = true;
            }
            answer
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(Rejected::Io(e))) => return Err(e),
        Ok(Err(Rejected::Http(status, why))) => Answer::text(status, why),
        Err(_) => Answer::text(408, "request timeout\n"),
    };
    conn.write_all(&answer.into_bytes()).await?;
    conn.shutdown().await?;
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

struct Request {
    method: String,
    path: String,
    credentials: Credentials,
}

enum Rejected {
    Io(io::Error),
    Http(u16, &'static str),
}

/// Reads one request head (and skips a small body). `None`: the peer closed before sending one.
async fn read_request(conn: &mut Connection) -> Result<Option<Request>, Rejected> {
    let mut buf = BytesMut::with_capacity(1024);
    let (request, head_len, body) = loop {
        if conn.read_buf(&mut buf).await.map_err(Rejected::Io)? == 0 {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(Rejected::Http(400, "incomplete request\n")),
            };
        }
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
    };
    // No route takes a body; read it anyway (bounded) so that closing does not reset the connection.
    let mut left = (head_len + body).saturating_sub(buf.len());
    let mut sink = [0u8; 4096];
    while left > 0 {
        let n = conn.read(&mut sink).await.map_err(Rejected::Io)?;
        if n == 0 {
            return Err(Rejected::Http(400, "incomplete body\n"));
        }
        left = left.saturating_sub(n);
    }
    Ok(Some(request))
}

/// Parses a request head: the request, the head's length and the body's. `None`: need more bytes.
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize, usize)>, Rejected> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Rejected::Http(431, "request head too large\n"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejected::Http(431, "too many headers\n"))
        }
        Err(_) => return Err(Rejected::Http(400, "malformed request\n")),
    };
    let mut body = 0;
    let mut credentials = Credentials::default();
    for h in req.headers.iter() {
        let slot = if h.name.eq_ignore_ascii_case("host") {
            Some(&mut credentials.host)
        } else if h.name.eq_ignore_ascii_case("origin") {
            Some(&mut credentials.origin)
        } else if h.name.eq_ignore_ascii_case("authorization") {
            Some(&mut credentials.authorization)
        } else {
            None
        };
        if let Some(slot) = slot {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| Rejected::Http(400, "a header that is not text\n"))?;
            // Two values for one of these could be read differently by two checks.
            if slot.replace(value.trim().to_owned()).is_some() {
                return Err(Rejected::Http(
                    400,
                    "a repeated Host, Origin or Authorization\n",
                ));
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(Rejected::Http(400, "bad content-length\n"))?;
            if body > MAX_BODY {
                return Err(Rejected::Http(413, "body too large\n"));
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Rejected::Http(501, "chunked bodies are not supported\n"));
        }
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(Rejected::Http(400, "malformed request\n"));
    };
    // The query string, if any, changes nothing.
    let path = target.split('?').next().unwrap_or(target);
    let request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        credentials,
    };
    Ok(Some((request, head_len, body)))
}

/// One answer, always with `Connection: close`.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    /// One more header (`allow`, `www-authenticate`).
    header: Option<(&'static str, &'static str)>,
    head_only: bool,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            header: None,
            head_only: false,
        }
    }

    fn json(status: u16, value: &serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: format!("{value}\n"),
            header: None,
            head_only: false,
        }
    }

    fn method_not_allowed(allow: &'static str) -> Answer {
        Answer {
            header: Some(("allow", allow)),
            ..Answer::text(405, "method not allowed\n")
        }
    }

    fn refused(refusal: Refusal) -> Answer {
        match refusal {
            Refusal::Forbidden(why) => Answer::text(403, why),
            Refusal::Unauthorized => Answer {
                header: Some(("www-authenticate", "Bearer realm=\"lariat\"")),
                ..Answer::text(401, "a valid Authorization: Bearer TOKEN is needed\n")
            },
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if let Some((name, value)) = self.header {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn route(state: &State, request: &Request) -> Answer {
    let method = request.method.as_str();
    let get = method == "GET" || method == "HEAD";
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    // Health for everyone, before any check.
    match segments.as_slice() {
        ["healthz"] if get => return Answer::text(200, "ok\n"),
        ["readyz"] if get => return readyz(state),
        _ => {}
    }
    if let Err(refusal) = state.access.check_not_cross_site(&request.credentials) {
        return Answer::refused(refusal);
    }
    let connection_route = matches!(
        (segments.as_slice(), method),
        (["connections"], "GET" | "HEAD")
            | (["connections", _], "DELETE")
            | (["connections", _, "close"], "POST")
    );
    if connection_route && state.server.is_some() {
        if let Err(refusal) = state.access.check_token(&request.credentials) {
            return Answer::refused(refusal);
        }
    }
    match segments.as_slice() {
        ["metrics"] if get => metrics(state),
        ["connections"] if get => connections(state),
        ["connections", id] if method == "DELETE" => close(state, id),
        ["connections", id, "close"] if method == "POST" => close(state, id),
        ["metrics"] | ["healthz"] | ["readyz"] | ["connections"] => {
            Answer::method_not_allowed("GET, HEAD")
        }
        ["connections", _] => Answer::method_not_allowed("DELETE"),
        ["connections", _, "close"] => Answer::method_not_allowed("POST"),
        _ => Answer::text(
            404,
            "not found: try /metrics, /healthz, /readyz, /connections\n",
        ),
    }
}

fn ready(state: &State) -> bool {
    state.readiness.is_ready() && !state.server.as_ref().is_some_and(|s| s.is_draining())
}

fn readyz(state: &State) -> Answer {
    if ready(state) {
        return Answer::text(200, "ready\n");
    }
    match state.readiness.state() {
        lifecycle::State::LameDuck => {
            Answer::text(503, "lame duck: shutting down, still serving\n")
        }
        _ => Answer::text(503, "draining: taking no new traffic\n"),
    }
}

fn metrics(state: &State) -> Answer {
    if let Some(server) = &state.server {
        lariat::metrics::publish(server);
    }
    metrics::gauge!("lariat_ready").set(if ready(state) { 1.0 } else { 0.0 });
    let lame_duck = state.readiness.state() == lifecycle::State::LameDuck;
    metrics::gauge!("lariat_lame_duck").set(if lame_duck { 1.0 } else { 0.0 });
    Answer {
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        ..Answer::text(200, state.prometheus.render())
    }
}

fn connections(state: &State) -> Answer {
    let Some(server) = &state.server else {
        return no_connections_here();
    };
    let list: Vec<serde_json::Value> = server
        .connections()
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id,
                "peer": c.peer.to_string(),
                "age_ms": c.age.as_millis() as u64,
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "handler": state.handler,
            })
        })
        .collect();
    Answer::json(200, &serde_json::Value::Array(list))
}

fn close(state: &State, id: &str) -> Answer {
    let Ok(id) = id.parse::<u64>() else {
        return Answer::json(
            400,
            &serde_json::json!({ "error": format!("`{id}` is not a connection id") }),
        );
    };
    let Some(server) = &state.server else {
        return no_connections_here();
    };
    match server.close_connection(id) {
        Ok(()) => {
            tracing::info!(conn = id, "closed by the --metrics endpoint");
            Answer::json(200, &serde_json::json!({ "closed": id }))
        }
        Err(e @ CloseError::NotFound(_)) => {
            Answer::json(404, &serde_json::json!({ "error": e.to_string() }))
        }
        Err(e @ CloseError::NotOwned(_)) => {
            Answer::json(409, &serde_json::json!({ "error": e.to_string() }))
        }
    }
}

/// A `--workers` supervisor holds no connection: they live in its workers.
fn no_connections_here() -> Answer {
    Answer::json(
        404,
        &serde_json::json!({ "error": "this is a --workers supervisor: its connections live in the workers" }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> (String, String, usize, usize) {
        match parse_head(raw.as_bytes()) {
            Ok(Some((r, head, body))) => (r.method, r.path, head, body),
            _ => panic!("not parsed: {raw:?}"),
        }
    }

    #[test]
    fn parses_heads_and_strips_queries() {
        let raw = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(parsed(raw), ("GET".into(), "/metrics".into(), raw.len(), 0));
        let raw = "POST /connections/3/close HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        let (method, path, head, body) = parsed(raw);
        assert_eq!(
            (method.as_str(), path.as_str(), body),
            ("POST", "/connections/3/close", 2)
        );
        assert_eq!(head, raw.len() - 2);
        assert!(matches!(parse_head(b"GET /metrics HTTP/1.1\r\n"), Ok(None)));
        assert!(matches!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Err(Rejected::Http(400, _))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Rejected::Http(501, _))
        ));
        // Two Hosts (or Origins, or Authorizations) could be read differently by two checks.
        assert!(matches!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Err(Rejected::Http(400, _))
        ));
        match parse_head(
            b"GET / HTTP/1.1\r\nHost: a:1\r\nOrigin: http://a:1\r\nAuthorization: Bearer t\r\n\r\n",
        ) {
            Ok(Some((r, _, _))) => assert_eq!(
                r.credentials,
                Credentials {
                    host: Some("a:1".into()),
                    origin: Some("http://a:1".into()),
                    authorization: Some("Bearer t".into()),
                }
            ),
            _ => panic!("not parsed"),
        }
        let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(
            parse_head(huge.as_bytes()),
            Err(Rejected::Http(431, _))
        ));
    }

    #[test]
    fn answers_are_complete_http() {
        let bytes = Answer::method_not_allowed("GET, HEAD").into_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("allow: GET, HEAD\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nmethod not allowed\n"));
        let mut head = Answer::text(200, "ready\n");
        head.head_only = true;
        let text = String::from_utf8(head.into_bytes()).unwrap();
        assert!(text.contains("content-length: 6\r\n") && text.ends_with("\r\n\r\n"));
    }
}
