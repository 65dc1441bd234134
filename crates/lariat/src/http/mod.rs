//! HTTP/1.1 and HTTP/2 on a lariat server, with drains and restarts that lose no request.
//!
//! [`Http`] is a [`Handler`] that runs [hyper](https://hyper.rs) on each
//! [`Connection`]: give it any hyper service ([`Http::new`]) or tower service
//! ([`Http::tower`]: an axum `Router`, a tonic server), and serve it with
//! [`ServerBuilder::serve`](crate::ServerBuilder::serve). On a plain connection, first bytes that cannot
//! begin HTTP/2's preface are served by hyper's HTTP/1 connection, anything else by hyper-util's auto
//! builder (h2c with prior knowledge on the same port); under lariat's TLS the ALPN result (`h2`,
//! `http/1.1`) decides, and without one the first plaintext bytes do.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hello = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("hello\n")))
//! });
//! let listener = lariat::Listener::bind(&"127.0.0.1:8080".parse()?)?;
//! let server = lariat::Server::builder().serve([listener], lariat::http::Http::new(hello))?;
//! // … later, on SIGTERM: answers in progress finish, keep-alive connections close between requests.
//! server.handle().drain(lariat::DrainOptions::default()).await;
//! # Ok(()) }
//! ```
//!
//! # Idle keep-alive connections hibernate
//! hyper's HTTP/1 connection holds about 20 KiB of heap (read and write buffers, the dispatcher, the
//! service's clone, the header timer) for as long as it lives. Once a plain HTTP/1.1 connection has been
//! quiet between requests for [`HttpOptions::hibernate_after`] (default 50 ms) with nothing read ahead,
//! lariat ends hyper's connection without a shutdown, ends the connection's task and lets it sleep in
//! the server's parking lot (one epoll instance and one task for all of them): it keeps its socket,
//! its registry entry and its slot under the cap, and about 250 bytes of heap in all. Its next bytes
//! wake it and a new hyper connection serves them. A TLS 1.3 HTTP/1.1 connection sleeps there
//! too, with its session's record layer at rest (keys, IVs and sequence numbers); a TLS 1.2 one, or a
//! session kept in rustls, hibernates in its task instead, holding only the `Connection`. The keep-alive timeout,
//! the drain (idle connections closed after the quiet period, answers with `Connection: close`) and a
//! restart's hand-over treat it as the idle connection it is; bytes hyper read ahead (pipelined
//! requests) are served at once, never hibernated. A connection busy with requests never hibernates.
//!
//! # What a restart does: idle HTTP/1.1 connections move
//! At a hitless restart, once the successor takes connections, a plain HTTP/1.1 connection moves to it
//! between requests ([`Connection::hand_over_with`](crate::Connection::hand_over_with)): the socket,
//! and the bytes hyper read of a next request as read-ahead. The client sees a pause, not a close. A
//! connection busy with an answer moves after it if it is idle within the hand-over window. HTTP/2
//! (many streams, no single safe point), TLS (its keys stay in this process), proxied and routed
//! connections do not move: they drain as below.
//!
//! # What a drain does to an HTTP connection
//! When the server drains (or, for the connections that do not move, at a restart), each connection is told
//! ([`Connection::draining`](crate::Connection::draining)) and ends after an answer, never in the middle
//! of one:
//! * **HTTP/1**: every answer from then on carries `Connection: close` and the connection closes after
//!   it. A connection idle between requests is closed once it has been quiet for
//!   [`HttpOptions::drain_quiet`] and nothing waits unread in its socket; otherwise its next request is
//!   answered (with `Connection: close`) first.
//! * **HTTP/2**: a graceful GOAWAY (hyper and h2 send the two-step one: first "no new streams", then,
//!   a round trip later, the last stream id actually accepted); open streams finish; streams the client
//!   opens after the final GOAWAY are refused unprocessed, which clients retry.
//! * **Every close is a lingering close**: our end of stream is sent first, then whatever the client still
//!   sends is read and discarded until it closes too (at most [`HttpOptions::linger`]), so the kernel
//!   never answers unread bytes with a reset that would destroy the last answer.
//!
//! One race is left, and HTTP/1.1 has it by design: a client may send a request on an idle connection
//! at the moment the server's close is on its way. Its request then meets a close before any byte of it
//! was read, which HTTP/1.1 clients retry on a new connection (RFC 9112, section 9.3.1). The quiet period
//! keeps the window small: a connection in active use is never closed idle, only after an answer.
//!
//! # Limits
//! [`HttpOptions`] bounds the time and memory one client can take: the header timeout (slow header
//! senders), the keep-alive timeout, the head size and the header count. A request body the service does
//! not read is not buffered: HTTP/1 stops reading it and closes the connection after the answer, HTTP/2
//! holds at most the flow-control window. [`Http::stats`] counts what happened.

mod awake;
mod io;
mod serve;
mod service;
mod stats;
mod wake;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::{BoxError, Connection, Handler};

pub use stats::HttpStatsSnapshot;

/// Limits and timing of the HTTP layer. The defaults suit a service facing the internet.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    header_timeout: Option<Duration>,
    keep_alive_timeout: Option<Duration>,
    hibernate_after: Option<Duration>,
    drain_quiet: Duration,
    linger: Duration,
    max_head_bytes: usize,
    max_headers: usize,
    max_concurrent_streams: u32,
    date_header: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            header_timeout: Some(Duration::from_secs(10)),
            keep_alive_timeout: Some(Duration::from_secs(5)),
            hibernate_after: Some(Duration::from_millis(HIBERNATE_AFTER_MS)),
            drain_quiet: Duration::from_millis(200),
            linger: Duration::from_secs(2),
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 200,
            date_header: true,
        }
    }
}

/// The default of [`HttpOptions::hibernate_after`], in milliseconds.
const HIBERNATE_AFTER_MS: u64 = 50;

/// The smallest head limit hyper takes (its smallest read buffer).
pub const MIN_HEAD_BYTES: usize = 8 * 1024;

impl HttpOptions {
    /// HTTP/1: how long a connection may wait for a complete request head, counted from the end of the
    /// previous answer (or from the first byte on a new connection). A client that trickles its head
    /// slower than this (slowloris) is closed, counted in `header_timeouts`. Default 10 s; `None` turns it
    /// off. Keep it above the keep-alive timeout: it also bounds the idle time between requests, and the
    /// keep-alive timeout's close is the gentler one (it checks that no request is arriving).
    pub fn header_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a connection may stay idle (no request in progress, no bytes moving) before it is closed
    /// (HTTP/1) or sent a GOAWAY (HTTP/2); counted in `idle_closed`. Default 5 s; `None` keeps idle
    /// connections until the client or a drain closes them.
    pub fn keep_alive_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.keep_alive_timeout = timeout;
        self
    }

    /// How long an HTTP/1 connection must be quiet between requests (no request in progress, no byte
    /// moving, nothing read ahead) before it hibernates: hyper's connection (its read and write
    /// buffers, the service's state, the header timer) is dropped and the connection waits for its
    /// next bytes holding only the socket, then is served by a new hyper connection. An idle keep-alive
    /// connection then costs about what an idle raw connection does, instead of hyper's buffers (16 KiB
    /// allocated per connection). A connection that sends its next request within this time never
    /// hibernates, so a busy one pays nothing. The keep-alive timeout, the drain and a restart's
    /// hand-over treat a hibernated connection as the idle connection it is. Default 50 ms; `None`
    /// keeps hyper's connection for the connection's whole life. Applies to plain HTTP/1 connections
    /// (not HTTP/2, TLS, proxied or routed ones).
    pub fn hibernate_after(mut self, after: Option<Duration>) -> Self {
        self.hibernate_after = after;
        self
    }

    /// During a drain, how long an HTTP/1 connection must have been idle before it is closed between
    /// requests (a connection in use is closed after its next answer instead). Default 200 ms.
    pub fn drain_quiet(mut self, quiet: Duration) -> Self {
        self.drain_quiet = quiet;
        self
    }

    /// After our end of stream, how long to read and discard what the client still sends before the socket
    /// is closed anyway. Default 2 s.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The largest HTTP/1 request head (larger: `431` and a close) and HTTP/2 header list. At least
    /// [`MIN_HEAD_BYTES`]; smaller values are raised to it. Default 64 KiB.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes.max(MIN_HEAD_BYTES);
        self
    }

    /// The most header fields in an HTTP/1 request (more: `431` and a close). Default 100.
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }

    /// The most HTTP/2 streams open at once on one connection. Default 200.
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// Whether answers get a `Date` header when the service set none (HTTP requires one from servers
    /// with a clock). Default on.
    pub fn date_header(mut self, on: bool) -> Self {
        self.date_header = on;
        self
    }

    /// hyper's own HTTP/1 builder, set as [`builder`](Self::builder)'s HTTP/1 half: the connections
    /// it serves give their socket back between requests, so they can move at a restart.
    fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(self.max_head_bytes)
            .max_headers(self.max_headers)
            .auto_date_header(self.date_header)
            .keep_alive(true);
        // Head and body copied into one buffer, one write: for the small answers most requests
        // get, about 4 % fewer instructions per request than queueing the body beside the head
        // for a vectored write (what hyper picks for a socket). The price: each body frame is
        // copied, and the buffer keeps the size of the largest frame written until hyper's
        // connection ends (at the latest when the connection hibernates).
        b.writev(false);
        b
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(self.max_head_bytes)
            .max_headers(self.max_headers)
            .auto_date_header(self.date_header)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_head_bytes).unwrap_or(u32::MAX))
            .auto_date_header(self.date_header);
        b
    }
}

/// What every connection of one [`Http`] handler shares.
struct Shared {
    /// HTTP/1 told by the first bytes (not HTTP/2's preface) or by ALPN (`http/1.1`).
    http1: hyper::server::conn::http1::Builder,
    /// HTTP/1 or HTTP/2 by the first bytes.
    auto: auto::Builder<TokioExecutor>,
    /// ALPN said `h2`.
    h2: auto::Builder<TokioExecutor>,
    options: HttpOptions,
    stats: Arc<stats::HttpStats>,
}

/// A [`Handler`] that serves a hyper service over HTTP/1.1 and HTTP/2 (see the [module docs](self)).
///
/// Cloning is cheap; clones share their counters.
pub struct Http<S> {
    service: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Http<S> {
    fn clone(&self) -> Self {
        Http {
            service: self.service.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Http<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl<S> Http<S> {
    /// Serves `service` (a hyper `Service`, cloned per connection) with the default [`HttpOptions`].
    pub fn new(service: S) -> Self {
        Http::with_options(service, HttpOptions::default())
    }

    /// Serves `service` with `options`.
    pub fn with_options(service: S, options: HttpOptions) -> Self {
        let auto = options.builder();
        Http {
            service,
            shared: Arc::new(Shared {
                http1: options.http1(),
                h2: auto.clone().http2_only(),
                auto,
                options,
                stats: Arc::default(),
            }),
        }
    }

    /// The counters so far, over every connection this handler (and its clones) served.
    pub fn stats(&self) -> HttpStatsSnapshot {
        self.shared.stats.snapshot()
    }
}

impl<T> Http<hyper_util::service::TowerToHyperService<T>> {
    /// Serves a tower service (an axum `Router`, a tonic server) with the default [`HttpOptions`].
    pub fn tower(service: T) -> Self {
        Http::new(hyper_util::service::TowerToHyperService::new(service))
    }

    /// Serves a tower service with `options`.
    pub fn tower_with_options(service: T, options: HttpOptions) -> Self {
        Http::with_options(
            hyper_util::service::TowerToHyperService::new(service),
            options,
        )
    }
}

impl<S, B> Handler for Http<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Outcome = ();
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn call(&self, conn: Connection) -> Self::Future {
        Box::pin(serve::serve(
            conn,
            self.service.clone(),
            self.shared.clone(),
        ))
    }
}
