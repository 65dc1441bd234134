//! One connection's life under hyper: serve, watch for the drain and for idleness, end gracefully,
//! close without a reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::io::{linger, pending, raw_fd, Linger, Returned};
use super::service::{ConnState, Tracked};
use super::stats::HttpStats;
use super::Shared;
use crate::{BoxError, Connection};

pub(super) async fn serve<S, B>(conn: Connection, service: S, http: Arc<Shared>)
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
    let drain = DrainWatch::new(entry.shared.drain.draining.clone());
    let fd = raw_fd(conn.stream());
    let builder = match conn.tls().and_then(|t| t.alpn).as_deref() {
        Some(b"h2") => &http.h2,
        Some(b"http/1.1") => &http.h1,
        _ => &http.auto,
    };
    let state = Arc::new(ConnState::new(stats.clone()));
    let (io, back) = Returned::new(conn);
    let service = Tracked {
        inner: service,
        state: state.clone(),
    };
    let moved = || entry.bytes_in.load(Relaxed) + entry.bytes_out.load(Relaxed);

    let result = {
        let served = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(served);
        tokio::pin!(drain);
        // One timer: the keep-alive timeout, or during a drain the quiet period. When it fires, the
        // connection is idle if no request is in progress and no byte moved since it was set.
        let period = |draining: bool| {
            if draining {
                Some(options.drain_quiet)
            } else {
                options.keep_alive_timeout
            }
        };
        let timer = tokio::time::sleep(period(false).unwrap_or_default());
        tokio::pin!(timer);
        let mut seen = moved();
        let mut draining = false;
        let mut ended = false;
        loop {
            tokio::select! {
                biased;
                r = served.as_mut() => break r,
                () = drain.as_mut(), if !draining => {
                    draining = true;
                    state.closing.store(true, Relaxed);
                    if state.h2.load(Relaxed) {
                        served.as_mut().graceful_shutdown();
                        HttpStats::add(&stats.goaway_sent);
                        ended = true;
                    } else {
                        seen = moved();
                        timer.as_mut().reset(Instant::now() + options.drain_quiet);
                    }
                }
                () = timer.as_mut(), if !ended && period(draining).is_some() => {
                    let now = moved();
                    let h2 = state.h2.load(Relaxed);
                    let idle = state.in_flight.load(Relaxed) == 0 && now == seen;
                    // HTTP/1: nothing may wait in the socket, or a request is arriving: answer it first.
                    let quiet = idle && (h2 || !fd.is_some_and(pending));
                    if (draining && h2) || quiet {
                        served.as_mut().graceful_shutdown();
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
                            timer.as_mut().reset(Instant::now() + p);
                        }
                    }
                }
            }
        }
        // `served` drops here and hyper gives the connection back.
    };
    if let Err(e) = result {
        count_error(stats, &*e);
    }
    if let Ok(conn) = back.await {
        if linger(conn, options.linger).await == Linger::TimedOut {
            HttpStats::add(&stats.linger_timeouts);
        }
    }
}

pin_project_lite::pin_project! {
    /// The drain signal, polled cheaply: once its waiter holds this task's waker, later polls (one per
    /// wake-up of the connection, so one per request) only read the token's flag instead of taking the
    /// lock every connection of the server shares.
    struct DrainWatch {
        token: CancellationToken,
        #[pin]
        wait: WaitForCancellationFutureOwned,
        registered: Option<Waker>,
    }
}

impl DrainWatch {
    fn new(token: CancellationToken) -> DrainWatch {
        DrainWatch {
            wait: token.clone().cancelled_owned(),
            token,
            registered: None,
        }
    }
}

impl Future for DrainWatch {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.token.is_cancelled() {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let polled = this.wait.poll(cx);
        *this.registered = Some(cx.waker().clone());
        polled
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
