//! The service wrapper each connection runs: it counts requests in progress (how the connection's loop
//! knows it is idle), notes the protocol, and asks for `Connection: close` on HTTP/1 answers once the
//! server drains.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::stats::{HttpStats, Requests};

/// A service `lariat::http` serves on a connection's loop (named once: every function of the loop
/// needs the same bounds).
pub(crate) trait HttpService<B>:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<crate::BoxError>,
    > + Send
    + 'static
{
}

impl<S, B> HttpService<B> for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<crate::BoxError>,
{
}

/// An answer's body such a service gives.
pub(crate) trait ResponseBody:
    Body<Data: Send, Error: Into<crate::BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
{
}

/// What the connection's loop and its service share.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The handler's counters, and this connection's count of requests in them (reached through
    /// here so a request clones one `Arc`, not two).
    pub(crate) requests: Requests,
    /// Requests handed to the service whose answer's body is not finished yet. On HTTP/1 its one
    /// writer is the connection's task (hyper calls the service and drops the answer there), so it
    /// moves with a plain load and store; HTTP/2 answers finish in their streams' tasks.
    pub(crate) in_flight: AtomicU32,
    /// Set when the drain begins: HTTP/1 answers from now on carry `Connection: close`.
    pub(crate) closing: AtomicBool,
    /// Set on the first HTTP/2 request.
    pub(crate) h2: AtomicBool,
    /// Set when the current hyper connection is ended to move or hibernate: its shutdown then only
    /// flushes and the socket stays open (see `io::Returned`).
    pub(crate) keep_open: AtomicBool,
}

impl ConnState {
    pub(crate) fn new(stats: Arc<HttpStats>) -> ConnState {
        ConnState {
            requests: Requests::new(stats),
            in_flight: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            keep_open: AtomicBool::new(false),
        }
    }

    /// The handler's counters.
    pub(crate) fn stats(&self) -> &HttpStats {
        self.requests.stats()
    }

    /// A request handed to the service.
    #[inline]
    fn begin(&self, h1: bool) {
        if h1 {
            self.in_flight
                .store(self.in_flight.load(Relaxed).wrapping_add(1), Relaxed);
        } else {
            self.in_flight.fetch_add(1, Relaxed);
        }
    }

    /// Its answer finished (or it failed, or the connection went away).
    #[inline]
    fn end(&self, h1: bool) {
        if h1 {
            self.in_flight
                .store(self.in_flight.load(Relaxed).wrapping_sub(1), Relaxed);
        } else {
            self.in_flight.fetch_sub(1, Relaxed);
        }
    }
}

/// The user's service, wrapped.
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    pub(crate) state: Arc<ConnState>,
}

impl<S> Tracked<Box<S>> {
    /// Wraps a connection's service, with a fresh state (nothing in flight) that counts into `stats`.
    /// The service is boxed: the connection's loop carries a pointer.
    pub(crate) fn new(service: S, stats: Arc<HttpStats>) -> Self {
        Tracked {
            inner: Box::new(service),
            state: Arc::new(ConnState::new(stats)),
        }
    }

    /// The service alone, for a connection that falls asleep: its state holds nothing a quiet
    /// connection needs (nothing is in flight, the flags are set anew by the next hyper connection),
    /// so a sleeper keeps the service unboxed in its one allocation and its next wake-up wraps it
    /// again ([`Tracked::new`]).
    pub(crate) fn into_service(self) -> S {
        *self.inner
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.state.requests.add_one();
        let h1 = req.version() < Version::HTTP_2;
        if !h1 {
            self.state.h2.store(true, Relaxed);
        }
        self.state.begin(h1);
        TrackedFuture {
            inner: self.inner.call(req),
            done: Some(Done {
                state: self.state.clone(),
                h1,
            }),
        }
    }
}

/// Decrements the in-flight count when dropped: with the answer's body, or with the future if the
/// service failed or the connection went away first.
#[derive(Debug)]
pub(crate) struct Done {
    state: Arc<ConnState>,
    h1: bool,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.state.end(self.h1);
    }
}

pin_project_lite::pin_project! {
    /// The service's future; its answer leaves with `Connection: close` when the server drains.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        done: Option<Done>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Taken apart at once: the parts move once into the new answer (`Response::map` moved them
        // through more copies).
        let (mut parts, inner) = match ready!(this.inner.poll(cx)) {
            Ok(res) => res.into_parts(),
            Err(e) => return Poll::Ready(Err(e)),
        };
        let done = this.done.take();
        if let Some(done) = &done {
            if done.h1 && done.state.closing.load(Relaxed) {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                HttpStats::add(&done.state.stats().drain_closed_after_answer);
            }
        }
        Poll::Ready(Ok(Response::from_parts(parts, TrackedBody { inner, done })))
    }
}

pin_project_lite::pin_project! {
    /// The answer's body; the request counts as finished when hyper drops it.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        done: Option<Done>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
