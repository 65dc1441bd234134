//! One connection's life under hyper: its first bytes tell the protocol, then hyper connections
//! serve it one after the other ([`awake`](super::awake)); between them a quiet HTTP/1 connection
//! hibernates, holding only the socket, until its next bytes, the drain, a restart's hand-over offer or
//! its keep-alive timeout.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::awake::{self, Awake, Ctx, Ended, Finish};
use super::io::{close, first_bytes, FirstBytes};
use super::service::{HttpService, ResponseBody, Tracked};
use super::stats::HttpStats;
use super::wake::OnWake;
use super::Shared;
use crate::connection::asleep::{Asleep, Sleeper};
use crate::connection::lot::Wake;
use crate::handover::Offer;
use crate::Connection;

/// The state an HTTP/1 connection moves with: the successor serves it as HTTP/1 at once, the bytes
/// hyper had read (part of a next request) first.
pub(super) const H1_STATE: &[u8] = b"http/1.1";
/// The state of a connection moved before its first byte: the successor looks at its first bytes.
const NEW_STATE: &[u8] = b"http";

/// Which hyper connection serves a connection.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// HTTP/1 by its first bytes, by ALPN (`http/1.1`), or resumed as HTTP/1: hyper's own HTTP/1
    /// connection, which gives the socket back between requests, so it can hibernate and move at a
    /// restart.
    H1,
    /// HTTP/1 or HTTP/2 as hyper-util tells from the first bytes (h2c prior knowledge, or the preface
    /// under TLS without ALPN).
    Auto,
    /// ALPN said `h2`.
    AlpnH2,
}

pub(super) async fn serve<S, B>(mut conn: Connection, service: S, http: Arc<Shared>)
where
    S: HttpService<B>,
    B: ResponseBody,
{
    let stats = &http.stats;
    let options = &http.options;
    HttpStats::add(&stats.connections);
    let movable = conn.movable();
    let mut offer = movable.then(|| OnWake::new(conn.hand_over_signal()));
    // Read in place: `Connection::tls` would copy the whole `TlsInfo` for one field.
    let mut kind = match conn.meta().tls().and_then(|t| t.alpn.as_deref()) {
        Some(b"h2") => Kind::AlpnH2,
        Some(b"http/1.1") => Kind::H1,
        _ => Kind::Auto,
    };
    let mut prefix = Bytes::new();
    if !movable && matches!(kind, Kind::Auto) && matches!(conn.stream(), crate::Stream::Tls(_)) {
        // TLS without ALPN: the first plaintext bytes tell HTTP/1 (whose idle connections hibernate)
        // from HTTP/2's preface, as a plain connection's do.
        match Box::pin(first(&conn, &mut offer, options.keep_alive_timeout)).await {
            First::Bytes(FirstBytes::Http1) => kind = Kind::H1,
            First::Quiet => {
                HttpStats::add(&stats.idle_closed);
                Box::pin(close(conn, &http)).await;
                return;
            }
            // (No offer: a TLS connection does not move.)
            First::Bytes(FirstBytes::Undecided)
            | First::Draining
            | First::Failed
            | First::Offered => {}
        }
    }
    if movable {
        match conn.resumed_state() {
            Some(state) if state[..] == *H1_STATE => {
                prefix = conn.take_read_ahead();
                kind = Kind::H1;
            }
            // Boxed, as every wait with a timer: the serving future stays as small as a hibernated
            // connection needs.
            _ => match Box::pin(first(&conn, &mut offer, options.keep_alive_timeout)).await {
                First::Bytes(FirstBytes::Http1) => kind = Kind::H1,
                First::Bytes(FirstBytes::Undecided) | First::Draining | First::Failed => {}
                First::Offered => {
                    offer = None;
                    match Box::pin(conn.hand_over(NEW_STATE)).await {
                        Ok(()) => {
                            HttpStats::add(&stats.handed_over);
                            return;
                        }
                        Err(refused) => conn = refused.connection,
                    }
                }
                First::Quiet => {
                    HttpStats::add(&stats.idle_closed);
                    Box::pin(close(conn, &http)).await;
                    return;
                }
            },
        }
    }
    // Kept for the connection's life, asleep too (see `crate::memory`).
    let service = crate::memory::keep(|| Tracked::new(service, stats.clone()));
    // Boxed: the handler's future keeps only the wait for the first bytes, and a woken connection's
    // task (spawned by the parking lot) runs the same future.
    Box::pin(serve_on(conn, service, http, kind, prefix, offer, None)).await;
}

/// Serves a connection with hyper connections one after the other, from its first (`asleep_since`:
/// `None`) or from a wake-up in the server's parking lot (`Some(when it fell quiet)`).
async fn serve_on<S, B>(
    mut conn: Connection,
    mut service: Tracked<Box<S>>,
    http: Arc<Shared>,
    kind: Kind,
    mut prefix: Bytes,
    mut offer: Option<OnWake<Offer>>,
    mut asleep_since: Option<Instant>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let stats = &http.stats;
    let options = &http.options;
    let entry = conn.entry().clone();
    let drain = OnWake::new(entry.shared.drain.draining.clone().cancelled_owned());
    tokio::pin!(drain);
    let fd = conn.stream().raw_fd();
    let state = service.state.clone();
    let idle_limit = idle_limit(options);
    let mut draining = false;
    // Once per hyper connection: one ends quiet (HTTP/1), the connection hibernates and a new one
    // serves its next bytes; a move the successor refused gives the connection back, and a new HTTP/1
    // connection serves it on, its read-ahead first.
    loop {
        let since = if let Some(since) = asleep_since.take() {
            // Woken in the lot: the hibernation below tells by what, at once.
            since
        } else {
            let ctx = Ctx {
                http: &http,
                state: &state,
                entry: &entry,
                fd,
                kind,
                may_hibernate: prefix.is_empty(),
            };
            let ended = {
                // Boxed: the timers and hyper's connection are not part of what a hibernated
                // connection keeps (the box is gone before it hibernates).
                let mut awake = Box::pin(Awake::new(
                    ctx,
                    conn,
                    std::mem::take(&mut prefix),
                    service,
                    draining,
                ));
                let result = std::future::poll_fn(|cx| {
                    awake
                        .as_mut()
                        .poll_turns(cx, &mut draining, &mut offer, drain.as_mut())
                })
                .await;
                let finish = awake.as_mut().finish(result);
                drop(awake);
                match finish {
                    Finish::Ended(ended) => ended,
                    Finish::HandOver {
                        conn,
                        service,
                        ahead,
                    } => Box::pin(awake::hand_over(conn, service, ahead, stats)).await,
                    Finish::Close(back) => {
                        Box::pin(awake::close_back(back, &http)).await;
                        Ended::Done
                    }
                }
            };
            let since = match ended {
                Ended::Done => return,
                Ended::Again {
                    conn: c,
                    service: s,
                    prefix: p,
                } => {
                    (conn, service, prefix) = (c, s, p);
                    continue;
                }
                Ended::Quiet {
                    conn: c,
                    service: s,
                    since,
                } => {
                    (conn, service) = (c, s);
                    since
                }
            };
            HttpStats::add(&stats.hibernated);
            if draining {
                since
            } else {
                let listening = offer.is_some();
                match fall_asleep::<S, B>(conn, service, &http, listening, since, idle_limit) {
                    Ok(()) => return,
                    Err(Some((c, s))) => (conn, service) = (c, s),
                    Err(None) => return,
                }
                since
            }
        };
        let limit = idle_limit.map(|l| since + l);
        let woken = loop {
            let quiet = options.drain_quiet;
            match hibernate(&conn, drain.as_mut(), &mut offer, draining, limit, quiet).await {
                // Still hibernated: closed once quiet for the drain's quiet period.
                Woken::Draining => draining = true,
                woken => break woken,
            }
        };
        match woken {
            Woken::Readable | Woken::Draining => {}
            Woken::Offered => {
                offer = None;
                match Box::pin(conn.hand_over_with(H1_STATE, &[])).await {
                    Ok(()) => {
                        HttpStats::add(&stats.handed_over);
                        return;
                    }
                    Err(refused) => {
                        tracing::debug!(reason = %refused.reason, "http: not handed over; served on");
                        conn = refused.connection;
                    }
                }
            }
            Woken::Quiet => {
                let counter = if draining {
                    &stats.drain_closed_idle
                } else if options.keep_alive_timeout.is_some() {
                    &stats.idle_closed
                } else {
                    &stats.header_timeouts
                };
                HttpStats::add(counter);
                Box::pin(close(conn, &http)).await;
                return;
            }
        }
    }
}

/// A hibernated HTTP/1 connection asleep in the server's parking lot: no task, no tokio registration,
/// no timer; what its next hyper connection needs.
struct Sleeping<S, B> {
    asleep: Asleep,
    /// Unboxed, without its per-connection state (see [`Tracked::into_service`]): one allocation per
    /// sleeper, not three.
    service: S,
    http: Arc<Shared>,
    /// Whether it listens for a restart's hand-over offer.
    listening: bool,
    // When it fell quiet is not kept: the lot keeps its deadline (that time + the idle limit) and
    // gives it back on resume. 16 bytes fewer put every sleeping connection's box in the 64-byte size
    // class instead of the 80-byte one.
    _body: PhantomData<fn() -> B>,
}

/// Puts a quiet HTTP/1 connection to sleep in its server's parking lot until its next bytes, the
/// drain, a hand-over offer or the end of its quiet limit (`since + idle_limit`). `Ok`: asleep (the
/// task ends); `Err(Some(..))`: not here (a TLS session in rustls or with bytes buffered, no lot, a
/// signal already fired), hibernate in the task; `Err(None)`: the connection was lost on the way.
#[allow(clippy::type_complexity)]
fn fall_asleep<S, B>(
    conn: Connection,
    service: Tracked<Box<S>>,
    http: &Arc<Shared>,
    listening: bool,
    since: Instant,
    idle_limit: Option<Duration>,
) -> Result<(), Option<(Connection, Tracked<Box<S>>)>>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    let server = conn.entry().shared.clone();
    let Some(lot) = server.lot() else {
        return Err(Some((conn, service)));
    };
    // What the connection sleeps with, and its place in the lot, live as long as its sleep (see
    // `crate::memory`); a refused park drops them at once.
    let parked = crate::memory::keep(|| {
        let asleep = match conn.fall_asleep() {
            Ok(Some(asleep)) => asleep,
            Ok(None) => return Err(None),
            Err(conn) => return Err(Some((conn, service))),
        };
        let fd = asleep.fd();
        let sleeping: Box<dyn Sleeper> = Box::new(Sleeping::<S, B> {
            asleep,
            service: service.into_service(),
            http: http.clone(),
            listening,
            _body: PhantomData,
        });
        let deadline = idle_limit.map(|l| since + l);
        Ok(lot.park(fd, sleeping, deadline).map_err(|s| (s, deadline)))
    })?;
    match parked {
        Ok(()) => {
            HttpStats::add(&http.stats.slept);
            Ok(())
        }
        // Refused (a signal fired): wake it at once in this task.
        Err((sleeping, deadline)) => {
            sleeping.resume(Wake::Signal, false, deadline);
            Ok(())
        }
    }
}

impl<S, B> Sleeper for Sleeping<S, B>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    fn resume(self: Box<Self>, why: Wake, from_lot: bool, deadline: Option<Instant>) {
        let Sleeping {
            asleep,
            service,
            http,
            listening,
            _body,
        } = *self;
        // When it fell quiet: its deadline less the idle limit that made it (none without a limit,
        // when it does not matter).
        let since = deadline
            .zip(idle_limit(&http.options))
            .and_then(|(at, limit)| at.checked_sub(limit))
            .unwrap_or_else(Instant::now);
        if from_lot {
            HttpStats::add(&http.stats.woken);
        }
        // Lives as long as the connection, or until its next sleep (see `crate::memory`).
        let service = crate::memory::keep(|| Tracked::new(service, http.stats.clone()));
        let entry = asleep.entry().clone();
        let task = tokio::spawn(async move {
            tracing::trace!(?why, "http: woken in the parking lot");
            let conn = match asleep.wake() {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::debug!(%error, "http: could not wake a sleeping connection; closed");
                    return;
                }
            };
            let offer = listening.then(|| OnWake::new(conn.hand_over_signal()));
            serve_on::<S, B>(
                conn,
                service,
                http,
                Kind::H1,
                Bytes::new(),
                offer,
                Some(since),
            )
            .await;
        });
        entry.set_task(task.abort_handle());
    }
}

/// The limit of a hibernated connection's quiet: the keep-alive timeout, or else the header timeout
/// (which hyper counts from the end of an answer, and a hibernated connection has no hyper timer).
fn idle_limit(options: &super::HttpOptions) -> Option<Duration> {
    options.keep_alive_timeout.or(options.header_timeout)
}

/// What woke a hibernated HTTP/1 connection.
enum Woken {
    /// Bytes (or an end of stream) wait: serve them in a new hyper connection.
    Readable,
    /// The server began to drain: serve on (answers then carry `Connection: close`), or, once quiet
    /// for the drain's quiet period, close.
    Draining,
    /// A successor takes connections: move.
    Offered,
    /// Quiet past its limit (the keep-alive timeout, or the drain's quiet period): close.
    Quiet,
}

pin_project_lite::pin_project! {
    /// Waits, holding only the connection (no hyper state, no buffer), until bytes arrive, the drain
    /// begins, a successor takes connections or the quiet period ends. A future of its own rather than
    /// a `select!`: it is part of every hibernated connection's state, so it keeps one copy of each.
    struct Hibernation<'a> {
        conn: &'a Connection,
        // `None` once draining.
        drain: Option<Pin<&'a mut DrainWatch>>,
        offer: &'a mut Option<OnWake<Offer>>,
        #[pin]
        quiet: tokio::time::Sleep,
    }
}

/// Far enough to mean never, near enough for tokio's timer.
const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365);

/// Hibernates `conn` until its next bytes, the drain (unless `draining` already), an offer, or the
/// quiet period's end at `limit` (while draining: `drain_quiet` from now).
fn hibernate<'a>(
    conn: &'a Connection,
    drain: Pin<&'a mut DrainWatch>,
    offer: &'a mut Option<OnWake<Offer>>,
    draining: bool,
    limit: Option<Instant>,
    drain_quiet: Duration,
) -> Hibernation<'a> {
    let at = if draining {
        Some(Instant::now() + drain_quiet)
    } else {
        limit
    };
    Hibernation {
        conn,
        drain: (!draining).then_some(drain),
        offer,
        quiet: tokio::time::sleep_until(at.unwrap_or_else(|| Instant::now() + NEVER)),
    }
}

impl Future for Hibernation<'_> {
    type Output = Woken;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woken> {
        let this = self.project();
        if let Some(offer) = this.offer.as_mut() {
            if Pin::new(offer).poll(cx).is_ready() {
                return Poll::Ready(Woken::Offered);
            }
        }
        // An error shows in the next read, which the new hyper connection makes.
        if this.conn.stream().poll_read_ready(cx).is_ready() {
            return Poll::Ready(Woken::Readable);
        }
        if let Some(drain) = this.drain.as_mut() {
            if drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woken::Draining);
            }
        }
        this.quiet.poll(cx).map(|()| Woken::Quiet)
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
    offer: &mut Option<OnWake<Offer>>,
    keep_alive: Option<Duration>,
) -> First {
    let drain = conn.entry().shared.drain.draining.cancelled();
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
pub(super) fn offered(offer: &mut Option<OnWake<Offer>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match offer {
        Some(o) => Pin::new(o).poll(cx),
        None => Poll::Pending,
    })
}

/// The drain signal, polled only when it woke (see [`OnWake`]): the loop wakes once or twice per
/// request, and the token's own check takes a lock every connection of the server shares.
pub(super) type DrainWatch = OnWake<WaitForCancellationFutureOwned>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plain HTTP/1 connection asleep in the lot keeps one of these boxed, its service inside:
    /// with a service of two words (a `service_fn` closure holding an `Arc` and a setting, say) it
    /// must stay in the 64-byte size class (a field more moves it to the 80-byte one).
    #[test]
    fn a_sleeping_connection_fits_64_bytes() {
        assert!(std::mem::size_of::<Sleeping<[usize; 2], ()>>() <= 64);
    }
}
