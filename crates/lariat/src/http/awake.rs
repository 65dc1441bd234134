//! One hyper connection's life on a lariat connection: serve until it ends, watching the drain, the
//! hand-over offer and idleness with one timer; end gracefully and close without a reset, move an idle
//! HTTP/1 connection to a restart's successor, or give a quiet HTTP/1 connection back to hibernate.
//!
//! Its state ([`Awake`]) is boxed by [`serve`](super::serve): it holds the timers and hyper's
//! connection, which a hibernated connection does not keep.

use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::io::{close, pending, Returned};
use super::serve::{DrainWatch, Kind, H1_STATE};
use super::service::{ConnState, HttpService, ResponseBody, Tracked};
use super::stats::HttpStats;
use super::wake::{Gate, OnWake};
use super::Shared;
use crate::handover::Offer;
use crate::server::registry::Entry;
use crate::{BoxError, Connection};

/// While a move waits for a busy connection to become idle, how often it looks.
const MOVE_TICK: Duration = Duration::from_millis(5);

/// How a hyper connection ended.
pub(super) enum Ended<S> {
    /// Closed, moved to a successor, or gone: the connection's task ends.
    Done,
    /// HTTP/1, quiet between requests since `since`, nothing read ahead: hibernate.
    Quiet {
        conn: Connection,
        service: Tracked<Box<S>>,
        since: Instant,
    },
    /// HTTP/1, given back with bytes of a next request (`prefix`) to serve first: a move the
    /// successor refused, or bytes that arrived as it was about to hibernate.
    Again {
        conn: Connection,
        service: Tracked<Box<S>>,
        prefix: Bytes,
    },
}

/// What every hyper connection of one lariat connection shares.
pub(super) struct Ctx<'a> {
    pub(super) http: &'a Shared,
    pub(super) state: &'a Arc<ConnState>,
    pub(super) entry: &'a Entry,
    /// The socket, for the look at what waits unread in it.
    pub(super) fd: RawFd,
    pub(super) kind: Kind,
    /// False when this hyper connection starts with bytes read ahead (part of a request head, maybe):
    /// it does not hibernate before its next answer.
    pub(super) may_hibernate: bool,
}

pin_project_lite::pin_project! {
    /// One hyper connection serving a lariat connection, and what its loop watches beside it: the
    /// drain, the hand-over offer and idleness, with one timer. Boxed by [`serve`](super::serve): it
    /// holds the timers and hyper's connection, which a hibernated connection does not keep.
    ///
    /// A future written out (polled by [`Awake::poll_turns`]) rather than an `async fn` with a
    /// `select!`: it runs at every wake-up of the connection's task (once or twice per request), and
    /// each `async` level and the `select!`'s branch bookkeeping cost about as much as the rest of it.
    pub(super) struct Awake<'a, S, B>
    where
        S: HttpService<B>,
        B: ResponseBody,
    {
        http: &'a Shared,
        state: &'a Arc<ConnState>,
        entry: &'a Entry,
        fd: RawFd,
        h1: bool,
        // `hibernate_after`, for HTTP/1 only.
        hibernate_after: Option<Duration>,
        served: Served<'a, S, B>,
        // Where hyper gives the connection back when it drops it.
        back: Option<oneshot::Receiver<Connection>>,
        // One timer: the keep-alive timeout, or during a drain the quiet period. When it fires, the
        // connection is idle if no request is in progress and no byte moved since it was set. An
        // HTTP/1 connection that may hibernate is looked at every `hibernate_after`, so it
        // hibernates between one and two of them after its last byte; the keep-alive timeout counts
        // from `quiet_since`.
        #[pin]
        timer: OnWake<tokio::time::Sleep>,
        // While a move waits for the connection to be idle between requests, how often it looks.
        #[pin]
        tick: tokio::time::Sleep,
        gate: Gate,
        // The next poll polls every watched future: what is watched, or the timer, changed.
        fresh: bool,
        marks: Marks,
        // The bytes moved when the timer was last set.
        seen: u64,
        quiet_since: Instant,
        // Ended by us (gracefully): hyper finishes what it serves, then its connection ends.
        ended: bool,
        // Offered, waiting for the connection to be idle between requests.
        pending_move: bool,
        // Ended by us to move: hyper gives the socket back unclosed.
        moving: bool,
        // Ended by us to hibernate: likewise.
        hibernating: bool,
    }
}

/// What a hyper connection's end leaves to do.
pub(super) enum Finish<S> {
    Ended(Ended<S>),
    /// Move the connection to a restart's successor, `ahead` (bytes hyper had read) with it.
    HandOver {
        conn: Connection,
        service: Tracked<Box<S>>,
        ahead: Bytes,
    },
    /// hyper closed its side: close the connection it gives back (the lingering close).
    Close(Option<oneshot::Receiver<Connection>>),
}

impl<'a, S, B> Awake<'a, S, B>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    /// Serves `conn` (`prefix` first) with a new hyper connection.
    pub(super) fn new(
        ctx: Ctx<'a>,
        conn: Connection,
        prefix: Bytes,
        svc: Tracked<Box<S>>,
        draining: bool,
    ) -> Self {
        let Ctx {
            http,
            state,
            entry,
            fd,
            kind,
            may_hibernate,
        } = ctx;
        let h1 = matches!(kind, Kind::H1);
        let hibernate_after = http.options.hibernate_after.filter(|_| h1);
        state.keep_open.store(false, Relaxed);
        let (io, back) = Returned::new(conn, prefix, state.clone());
        let io = TokioIo::new(io);
        let served = match kind {
            Kind::H1 => Served::H1(Box::new(http.http1.serve_connection(io, svc)), PhantomData),
            Kind::Auto => Served::Auto(Box::pin(http.auto.serve_connection(io, svc))),
            Kind::AlpnH2 => Served::Auto(Box::pin(http.h2.serve_connection(io, svc))),
        };
        if draining {
            state.closing.store(true, Relaxed);
        }
        let period = period(http, hibernate_after, draining).unwrap_or_default();
        Awake {
            http,
            state,
            entry,
            fd,
            h1,
            hibernate_after,
            served,
            back: Some(back),
            timer: OnWake::new(tokio::time::sleep(period)),
            tick: tokio::time::sleep(MOVE_TICK),
            gate: Gate::new(),
            fresh: true,
            marks: Marks::new(entry, may_hibernate),
            seen: moved(entry),
            quiet_since: Instant::now(),
            ended: false,
            pending_move: false,
            moving: false,
            hibernating: false,
        }
    }

    /// Serves until hyper's connection ends, or this loop ends it to move or hibernate it before
    /// its first answer: then [`finish`](Self::finish) with the result.
    pub(super) fn poll_turns(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        draining: &mut bool,
        offer: &mut Option<OnWake<Offer>>,
        mut drain: Pin<&mut DrainWatch>,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            let mut this = self.as_mut().project();
            let http = *this.http;
            let (state, entry) = (*this.state, *this.entry);
            let hibernate_after = *this.hibernate_after;
            if let Poll::Ready(r) = Pin::new(&mut *this.served).poll(cx) {
                return Poll::Ready(r);
            }
            if hibernate_after.is_some() {
                // Notes what was read when an answer went out, after each poll of hyper.
                this.marks.sample(state, entry);
            }
            let ended = *this.ended;
            let pending_move = *this.pending_move;
            let mut event = None;
            // The hand-over offer, the drain and the timer, through one gate: each polled only when
            // it woke. (The timer and the move's tick are never watched together.)
            if let Some(waker) = this.gate.opened(cx, std::mem::take(this.fresh)) {
                let cx = &mut Context::from_waker(&waker);
                if *this.h1
                    && !ended
                    && offer
                        .as_mut()
                        .is_some_and(|o| Pin::new(o).poll(cx).is_ready())
                {
                    event = Some(Event::Offered);
                } else if !*draining && drain.as_mut().poll(cx).is_ready() {
                    event = Some(Event::Drain);
                } else if !ended
                    && !pending_move
                    && period(http, hibernate_after, *draining).is_some()
                    && this.timer.as_mut().poll(cx).is_ready()
                {
                    event = Some(Event::Timer);
                }
            }
            if event.is_none() && pending_move && !ended && this.tick.as_mut().poll(cx).is_ready() {
                event = Some(Event::Tick);
            }
            let Some(event) = event else {
                return Poll::Pending;
            };
            if self.as_mut().on_event(event, draining, offer) {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Acts on what woke the loop beside hyper; `true`: the loop ended hyper's connection before its
    /// first answer, to move or hibernate it. Out of line: it runs a few times in a connection's
    /// life, and kept out of [`poll_turns`](Self::poll_turns), which runs once or twice per request.
    #[inline(never)]
    fn on_event(
        self: Pin<&mut Self>,
        event: Event,
        draining: &mut bool,
        offer: &mut Option<OnWake<Offer>>,
    ) -> bool {
        let mut this = self.project();
        let http = *this.http;
        let (stats, options) = (&http.stats, &http.options);
        let (state, entry) = (*this.state, *this.entry);
        let hibernate_after = *this.hibernate_after;
        let pending_move = *this.pending_move;
        // What is watched may change: the next turn polls all of it.
        *this.fresh = true;
        match event {
            Event::Offered => {
                *offer = None;
                *this.pending_move = true;
                this.tick.as_mut().reset(Instant::now());
            }
            Event::Drain => {
                *draining = true;
                if pending_move {
                    // The move comes first; if it cannot happen, the drain goes on from there.
                    return false;
                }
                state.closing.store(true, Relaxed);
                if state.h2.load(Relaxed) {
                    this.served.graceful_shutdown();
                    HttpStats::add(&stats.goaway_sent);
                    *this.ended = true;
                } else {
                    *this.seen = moved(entry);
                    *this.quiet_since = Instant::now();
                    this.timer
                        .as_mut()
                        .inner_mut()
                        .reset(Instant::now() + options.drain_quiet);
                }
            }
            Event::Timer => {
                let now = moved(entry);
                let h2 = state.h2.load(Relaxed);
                let idle = state.in_flight.load(Relaxed) == 0 && now == *this.seen;
                // HTTP/1: nothing may wait in the socket, or a request is arriving: answer it
                // first.
                let quiet = idle && (h2 || !pending(*this.fd));
                let expired = *draining
                    || options
                        .keep_alive_timeout
                        .is_some_and(|k| this.quiet_since.elapsed() >= k);
                // hyper holds no part of a next request: nothing was read since the last answer.
                let clean = this.marks.in_at_answer == entry.bytes_in.load(Relaxed);
                if quiet && !expired && clean && hibernate_after.is_some() {
                    *this.hibernating = true;
                    if this.marks.fresh(entry) {
                        return true;
                    }
                    // Between requests: hyper stops and gives the socket back with what it read
                    // ahead, if anything arrived meanwhile.
                    state.keep_open.store(true, Relaxed);
                    this.served.graceful_shutdown();
                    *this.ended = true;
                } else if (*draining && h2) || (quiet && expired) {
                    this.served.graceful_shutdown();
                    *this.ended = true;
                    if h2 {
                        HttpStats::add(&stats.goaway_sent);
                    }
                    if !*draining {
                        HttpStats::add(&stats.idle_closed);
                    } else if !h2 {
                        HttpStats::add(&stats.drain_closed_idle);
                    }
                } else {
                    if !quiet {
                        *this.seen = now;
                        *this.quiet_since = Instant::now();
                    }
                    if let Some(p) = period(http, hibernate_after, *draining) {
                        this.timer.as_mut().inner_mut().reset(Instant::now() + p);
                    }
                }
            }
            Event::Tick => {
                if !entry.shared.handover.taking() {
                    // The window closed (or the successor went): serve on, drain if draining.
                    *this.pending_move = false;
                    if *draining {
                        state.closing.store(true, Relaxed);
                        *this.seen = moved(entry);
                        *this.quiet_since = Instant::now();
                        this.timer
                            .as_mut()
                            .inner_mut()
                            .reset(Instant::now() + options.drain_quiet);
                    }
                } else if state.in_flight.load(Relaxed) == 0 {
                    *this.moving = true;
                    if this.marks.fresh(entry) {
                        // Nothing answered yet, perhaps part of a head read: take it as it is.
                        return true;
                    }
                    // Between requests: hyper stops (reading nothing more) and keeps the socket
                    // open.
                    state.keep_open.store(true, Relaxed);
                    this.served.graceful_shutdown();
                    *this.ended = true;
                } else {
                    this.tick.as_mut().reset(Instant::now() + MOVE_TICK);
                }
            }
        }
        false
    }

    /// What the end of hyper's connection (`result`, from [`poll_turns`](Self::poll_turns)) leaves
    /// to do. hyper's connection is gone after it.
    pub(super) fn finish(self: Pin<&mut Self>, result: Result<(), BoxError>) -> Finish<S> {
        let this = self.project();
        let served = std::mem::replace(this.served, Served::Gone);
        if let (true, Ok(()), Served::H1(c, _)) =
            (*this.moving || *this.hibernating, &result, served)
        {
            let parts = (*c).into_parts();
            let (taken, rest) = parts.io.into_inner().into_parts();
            let Some(taken) = taken else {
                return Finish::Ended(Ended::Done);
            };
            let service = parts.service;
            if *this.hibernating && parts.read_buf.is_empty() && rest.is_empty() {
                // `read_buf` is empty but may still own hyper's read buffer: dropped here.
                return Finish::Ended(Ended::Quiet {
                    conn: taken,
                    service,
                    since: *this.quiet_since,
                });
            }
            let mut ahead = BytesMut::from(parts.read_buf);
            ahead.extend_from_slice(&rest);
            if *this.hibernating {
                return Finish::Ended(Ended::Again {
                    conn: taken,
                    service,
                    prefix: ahead.freeze(),
                });
            }
            return Finish::HandOver {
                conn: taken,
                service,
                ahead: ahead.freeze(),
            };
        }
        // hyper's connection is gone here and gave the connection back.
        if let Err(e) = result {
            count_error(&this.http.stats, &*e);
        }
        Finish::Close(this.back.take())
    }
}

/// Moves an HTTP/1 connection between requests to a restart's successor, `ahead` first; served on if
/// the successor refuses.
pub(super) async fn hand_over<S>(
    conn: Connection,
    service: Tracked<Box<S>>,
    ahead: Bytes,
    stats: &HttpStats,
) -> Ended<S> {
    match conn.hand_over_with(H1_STATE, &ahead).await {
        Ok(()) => {
            HttpStats::add(&stats.handed_over);
            Ended::Done
        }
        Err(refused) => {
            tracing::debug!(reason = %refused.reason, "http: not handed over; served on");
            Ended::Again {
                conn: refused.connection,
                service,
                prefix: ahead,
            }
        }
    }
}

/// Closes the connection hyper gave back through `back`, if it did.
pub(super) async fn close_back(back: Option<oneshot::Receiver<Connection>>, http: &Shared) {
    if let Some(back) = back {
        if let Ok(conn) = back.await {
            close(conn, http).await;
        }
    }
}

/// The bytes a connection moved both ways so far.
fn moved(entry: &Entry) -> u64 {
    entry.bytes_in.load(Relaxed) + entry.bytes_out.load(Relaxed)
}

/// The timer's period: the drain's quiet period while draining, else the shorter of the keep-alive
/// timeout and `hibernate_after`; `None`: no timer.
fn period(http: &Shared, hibernate_after: Option<Duration>, draining: bool) -> Option<Duration> {
    let options = &http.options;
    if draining {
        Some(options.drain_quiet)
    } else {
        match (options.keep_alive_timeout, hibernate_after) {
            (Some(k), Some(h)) => Some(k.min(h)),
            (k, h) => k.or(h),
        }
    }
}

type Io = TokioIo<Returned>;
type H1Connection<S> = hyper::server::conn::http1::Connection<Io, Tracked<Box<S>>>;
type AutoConnection<'a, S> = auto::Connection<'a, Io, Tracked<Box<S>>, TokioExecutor>;

/// The hyper connection serving one of ours: hyper's HTTP/1 connection (which can give the socket
/// back), or hyper-util's (HTTP/2, or HTTP/1 told apart by it).
enum Served<'a, S, B>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    H1(Box<H1Connection<S>>, PhantomData<fn() -> B>),
    Auto(Pin<Box<AutoConnection<'a, S>>>),
    /// Taken apart (or dropped) when it ended.
    Gone,
}

impl<S, B> Served<'_, S, B>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    fn graceful_shutdown(&mut self) {
        match self {
            Served::H1(c, _) => Pin::new(&mut **c).graceful_shutdown(),
            Served::Auto(c) => c.as_mut().graceful_shutdown(),
            Served::Gone => {}
        }
    }
}

impl<S, B> Future for Served<'_, S, B>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Served::H1(c, _) => Pin::new(&mut **c).poll(cx).map_err(Into::into),
            Served::Auto(c) => c.as_mut().poll(cx),
            Served::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// What woke a hyper connection's loop with something to do beside hyper.
enum Event {
    /// The hand-over offer.
    Offered,
    /// The drain began.
    Drain,
    /// The timer fired: the keep-alive timeout, the drain's quiet period or the look for idleness.
    Timer,
    /// The move's tick: look whether the connection is idle between requests.
    Tick,
}

/// What one hyper connection read and wrote as its answers went out, noted at each wake-up of its
/// task.
struct Marks {
    /// The bytes written when last noted.
    out_seen: u64,
    /// The bytes read when the last answer went out: while more have been read since, hyper may hold
    /// part of a request head, and stopping it would turn keep-alive off (or, rebuilt, start its
    /// header timeout over). [`Marks::NONE`]: no answer yet on a connection that began with bytes
    /// read ahead.
    in_at_answer: u64,
    /// The bytes written when this hyper connection began.
    out_at_start: u64,
    /// Whether it has begun a request: until it has answered one, hyper's graceful shutdown waits
    /// for a request (its keep-alive state is not idle yet), so a move or a hibernation takes its
    /// parts at once instead; it has written nothing that could wait unflushed.
    began: bool,
}

impl Marks {
    const NONE: u64 = u64::MAX;

    fn new(entry: &Entry, may_hibernate: bool) -> Marks {
        let out = entry.bytes_out.load(Relaxed);
        Marks {
            out_seen: out,
            in_at_answer: if may_hibernate {
                entry.bytes_in.load(Relaxed)
            } else {
                Marks::NONE
            },
            out_at_start: out,
            began: false,
        }
    }

    /// Notes what was read when an answer went out (after each poll of hyper).
    #[inline]
    fn sample(&mut self, state: &ConnState, entry: &Entry) {
        if state.in_flight.load(Relaxed) > 0 {
            self.began = true;
        }
        let out = entry.bytes_out.load(Relaxed);
        if out != self.out_seen {
            self.out_seen = out;
            self.in_at_answer = entry.bytes_in.load(Relaxed);
        }
    }

    /// Nothing begun or written yet by this hyper connection.
    fn fresh(&self, entry: &Entry) -> bool {
        !self.began && entry.bytes_out.load(Relaxed) == self.out_at_start
    }
}

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
