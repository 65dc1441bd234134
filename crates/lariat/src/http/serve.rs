//! One connection's life under hyper: serve, watch for the drain, the hand-over offer and idleness,
//! end gracefully and close without a reset, or move an idle HTTP/1 connection to a restart's
//! successor.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::io::{first_bytes, linger, pending, raw_fd, FirstBytes, Linger, Returned};
use super::service::{ConnState, Tracked};
use super::stats::HttpStats;
use super::wake::OnWake;
use super::Shared;
use crate::handover::Offer;
use crate::{BoxError, Connection};

/// The state an HTTP/1 connection moves with: the successor serves it as HTTP/1 at once, the bytes
/// hyper had read (part of a next request) first.
const H1_STATE: &[u8] = b"http/1.1";
/// The state of a connection moved before its first byte: the successor looks at its first bytes.
const NEW_STATE: &[u8] = b"http";
/// While a move waits for a busy connection to become idle, how often it looks.
const MOVE_TICK: Duration = Duration::from_millis(5);

/// Which hyper connection serves a connection.
#[derive(Clone, Copy)]
enum Kind {
    /// HTTP/1 by its first bytes (or resumed as HTTP/1): hyper's own HTTP/1 connection, which gives
    /// the socket back between requests, so it can move at a restart.
    H1,
    /// HTTP/1 or HTTP/2 as hyper-util tells from the first bytes (h2c prior knowledge, TLS without ALPN).
    Auto,
    /// ALPN said `http/1.1`.
    AlpnH1,
    /// ALPN said `h2`.
    AlpnH2,
}

pub(super) async fn serve<S, B>(mut conn: Connection, service: S, http: Arc<Shared>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stats = &http.stats;
    let options = &http.options;
    HttpStats::add(&stats.connections);
    let entry = conn.entry().clone();
    let drain = OnWake::new(entry.shared.drain.draining.clone().cancelled_owned());
    tokio::pin!(drain);
    let movable = conn.movable();
    let mut offer = movable.then(|| OnWake::new(conn.hand_over_signal()));
    let mut kind = match conn.tls().and_then(|t| t.alpn).as_deref() {
        Some(b"h2") => Kind::AlpnH2,
        Some(b"http/1.1") => Kind::AlpnH1,
        _ => Kind::Auto,
    };
    let mut prefix = Bytes::new();
    if movable {
        match conn.resumed_state() {
            Some(state) if state[..] == *H1_STATE => {
                prefix = conn.take_read_ahead();
                kind = Kind::H1;
            }
            _ => match first(
                &conn,
                drain.as_mut(),
                &mut offer,
                options.keep_alive_timeout,
            )
            .await
            {
                First::Bytes(FirstBytes::Http1) => kind = Kind::H1,
                First::Bytes(FirstBytes::Undecided) | First::Draining | First::Failed => {}
                First::Offered => {
                    offer = None;
                    match conn.hand_over(NEW_STATE).await {
                        Ok(()) => {
                            HttpStats::add(&stats.handed_over);
                            return;
                        }
                        Err(refused) => conn = refused.connection,
                    }
                }
                First::Quiet => {
                    HttpStats::add(&stats.idle_closed);
                    if linger(conn, options.linger).await == Linger::TimedOut {
                        HttpStats::add(&stats.linger_timeouts);
                    }
                    return;
                }
            },
        }
    }
    let fd = raw_fd(conn.stream());
    let state = Arc::new(ConnState::new(stats.clone()));
    let mut service = Some(Tracked {
        inner: Box::new(service),
        state: state.clone(),
    });
    let moved = || entry.bytes_in.load(Relaxed) + entry.bytes_out.load(Relaxed);
    // One timer: the keep-alive timeout, or during a drain the quiet period. When it fires, the
    // connection is idle if no request is in progress and no byte moved since it was set.
    let period = |draining: bool| {
        if draining {
            Some(options.drain_quiet)
        } else {
            options.keep_alive_timeout
        }
    };
    let mut draining = false;
    // Once per hyper connection: a move the successor refused gives the connection back, and it is
    // served on by a new HTTP/1 connection, its read-ahead first.
    loop {
        let Some(svc) = service.take() else { return };
        let keep_open = Arc::new(AtomicBool::new(false));
        let (io, back) = Returned::new(conn, std::mem::take(&mut prefix), keep_open.clone());
        let io = TokioIo::new(io);
        let mut served = match kind {
            Kind::H1 => Served::H1(http.http1.serve_connection(io, svc), PhantomData),
            Kind::Auto => Served::Auto(Box::pin(http.auto.serve_connection(io, svc))),
            Kind::AlpnH1 => Served::Auto(Box::pin(http.h1.serve_connection(io, svc))),
            Kind::AlpnH2 => Served::Auto(Box::pin(http.h2.serve_connection(io, svc))),
        };
        let h1 = matches!(kind, Kind::H1);
        if draining {
            state.closing.store(true, Relaxed);
        }
        let timer = OnWake::new(tokio::time::sleep(period(draining).unwrap_or_default()));
        tokio::pin!(timer);
        let tick = tokio::time::sleep(MOVE_TICK);
        tokio::pin!(tick);
        let mut seen = moved();
        let mut ended = false;
        // Offered, waiting for the connection to be idle between requests.
        let mut pending_move = false;
        // Ended by us to move: hyper gives the socket back unclosed.
        let mut moving = false;
        let result = loop {
            tokio::select! {
                biased;
                r = &mut served => break r,
                () = offered(&mut offer), if h1 && !ended => {
                    offer = None;
                    pending_move = true;
                    tick.as_mut().reset(Instant::now());
                }
                () = drain.as_mut(), if !draining => {
                    draining = true;
                    if pending_move {
                        // The move comes first; if it cannot happen, the drain goes on from there.
                        continue;
                    }
                    state.closing.store(true, Relaxed);
                    if state.h2.load(Relaxed) {
                        served.graceful_shutdown();
                        HttpStats::add(&stats.goaway_sent);
                        ended = true;
                    } else {
                        seen = moved();
                        timer.as_mut().inner_mut().reset(Instant::now() + options.drain_quiet);
                    }
                }
                () = tick.as_mut(), if pending_move && !ended => {
                    if !entry.shared.handover.taking() {
                        // The window closed (or the successor went): serve on, drain if draining.
                        pending_move = false;
                        if draining {
                            state.closing.store(true, Relaxed);
                            seen = moved();
                            timer.as_mut().inner_mut().reset(Instant::now() + options.drain_quiet);
                        }
                    } else if state.in_flight.load(Relaxed) == 0 {
                        // Between requests: hyper stops (reading nothing more) and keeps the socket open.
                        keep_open.store(true, Relaxed);
                        served.graceful_shutdown();
                        ended = true;
                        moving = true;
                    } else {
                        tick.as_mut().reset(Instant::now() + MOVE_TICK);
                    }
                }
                () = timer.as_mut(), if !ended && !pending_move && period(draining).is_some() => {
                    let now = moved();
                    let h2 = state.h2.load(Relaxed);
                    let idle = state.in_flight.load(Relaxed) == 0 && now == seen;
                    // HTTP/1: nothing may wait in the socket, or a request is arriving: answer it first.
                    let quiet = idle && (h2 || !fd.is_some_and(pending));
                    if (draining && h2) || quiet {
                        served.graceful_shutdown();
                        ended = true;
                        if h2 {
                            HttpStats::add(&stats.goaway_sent);
                        }
                        if !draining {
                            HttpStats::add(&stats.idle_closed);
                        } else if !h2 {
                            HttpStats::add(&stats.drain_closed_idle);
                        }
                    } else {
                        seen = now;
                        if let Some(p) = period(draining) {
                            timer.as_mut().inner_mut().reset(Instant::now() + p);
                        }
                    }
                }
            }
        };
        if let (true, Ok(()), Served::H1(c, _)) = (moving, &result, served) {
            let parts = c.into_parts();
            let (taken, rest) = parts.io.into_inner().into_parts();
            let Some(taken) = taken else { return };
            let mut ahead = BytesMut::from(parts.read_buf);
            ahead.extend_from_slice(&rest);
            match taken.hand_over_with(H1_STATE, &ahead).await {
                Ok(()) => {
                    HttpStats::add(&stats.handed_over);
                    return;
                }
                Err(refused) => {
                    tracing::debug!(reason = %refused.reason, "http: not handed over; served on");
                    conn = refused.connection;
                    prefix = ahead.freeze();
                    service = Some(parts.service);
                    continue;
                }
            }
        }
        // `served` is gone here and hyper gave the connection back.
        if let Err(e) = result {
            count_error(stats, &*e);
        }
        if let Ok(conn) = back.await {
            if linger(conn, options.linger).await == Linger::TimedOut {
                HttpStats::add(&stats.linger_timeouts);
            }
        }
        return;
    }
}

/// What the wait for a new connection's first bytes ended with.
enum First {
    Bytes(FirstBytes),
    /// The server drains: serve it as before a hand-over existed.
    Draining,
    /// A successor takes connections, and this one has sent nothing yet.
    Offered,
    /// Nothing arrived within the keep-alive timeout.
    Quiet,
    /// The socket failed; hyper will see it too.
    Failed,
}

/// Waits for a new connection's first bytes, the drain, the hand-over offer or the keep-alive timeout.
async fn first(
    conn: &Connection,
    drain: Pin<&mut Drain>,
    offer: &mut Option<OnWake<Offer>>,
    keep_alive: Option<Duration>,
) -> First {
    let quiet = async {
        match keep_alive {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = offered(offer) => First::Offered,
        () = drain => First::Draining,
        r = first_bytes(conn.stream()) => r.map_or(First::Failed, First::Bytes),
        () = quiet => First::Quiet,
    }
}

/// The hand-over offer, if this connection listens for it; never otherwise.
fn offered(offer: &mut Option<OnWake<Offer>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match offer {
        Some(o) => Pin::new(o).poll(cx),
        None => Poll::Pending,
    })
}

type Io = TokioIo<Returned>;
type H1Connection<S> = hyper::server::conn::http1::Connection<Io, Tracked<Box<S>>>;
type AutoConnection<'a, S> = auto::Connection<'a, Io, Tracked<Box<S>>, TokioExecutor>;

/// The hyper connection serving one of ours: hyper's HTTP/1 connection (which can give the socket
/// back), or hyper-util's (HTTP/2, or HTTP/1 told apart by it).
// HTTP/1, the common case, stays inline in the (already boxed) handler future: no allocation more.
#[allow(clippy::large_enum_variant)]
enum Served<'a, S, B>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    H1(H1Connection<S>, PhantomData<fn() -> B>),
    Auto(Pin<Box<AutoConnection<'a, S>>>),
}

impl<S, B> Served<'_, S, B>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(&mut self) {
        match self {
            Served::H1(c, _) => Pin::new(c).graceful_shutdown(),
            Served::Auto(c) => c.as_mut().graceful_shutdown(),
        }
    }
}

impl<S, B> Future for Served<'_, S, B>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Served::H1(c, _) => Pin::new(c).poll(cx).map_err(Into::into),
            Served::Auto(c) => c.as_mut().poll(cx),
        }
    }
}

/// The drain signal.
type Drain = OnWake<WaitForCancellationFutureOwned>;

/// Counts the errors that say something about the peer; resets and early closes are its right.
fn count_error(stats: &HttpStats, e: &(dyn std::error::Error + 'static)) {
    let Some(e) = e.downcast_ref::<hyper::Error>() else {
        tracing::trace!(error = %e, "http connection ended");
        return;
    };
    if e.is_timeout() {
        HttpStats::add(&stats.header_timeouts);
        tracing::debug!("http: request head not complete within the header timeout; closed");
    } else if e.is_parse() || e.is_parse_too_large() {
        HttpStats::add(&stats.protocol_errors);
        tracing::debug!(error = %e, "http: malformed request; closed");
    } else {
        tracing::trace!(error = %e, "http connection ended");
    }
}
