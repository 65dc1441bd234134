//! `http-hello`: a hyper service on [`lariat::http`] that answers every request with `200 Hello, world!`,
//! over HTTP/1.1 (keep-alive, pipelining) and HTTP/2 (h2c with prior knowledge on the same port, or `h2`
//! by ALPN under TLS), so wrk, h2load and curl drive the real integration, drains and restarts included.
//!
//! Request bodies are read as they stream and dropped (one frame at a time: bounded memory), up to
//! [`MAX_BODY`]; a larger one gets `413` and the connection closes after it. A body must arrive at
//! [`MIN_BODY_RATE`] on average after a grace of the request timeout, or the client gets `408`: each
//! byte resets the idle timeout, so a trickling body would otherwise hold its slot for ever.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use lariat::http::{Http, HttpOptions};
use lariat::Handler;

/// The largest request body read (and discarded) before the answer.
pub const MAX_BODY: u64 = 1024 * 1024;
/// The slowest a request body may arrive, in bytes per second on average (after the grace).
pub const MIN_BODY_RATE: u64 = 1024;
const BODY: &str = "Hello, world!";

/// The handler, with the HTTP layer's timeouts from the command line: `request_timeout` bounds the
/// head, and is the grace before a body's rate is enforced; 0 turns `keep_alive` and `hibernate_after`
/// off.
pub fn http_hello(
    request_timeout: Duration,
    keep_alive: Duration,
    hibernate_after: Duration,
) -> impl Handler + Clone {
    let options = HttpOptions::default()
        .header_timeout(Some(request_timeout))
        .keep_alive_timeout((!keep_alive.is_zero()).then_some(keep_alive))
        .hibernate_after((!hibernate_after.is_zero()).then_some(hibernate_after))
        // The answer stays the same bytes whatever the clock says (benchmarks compare it byte for byte).
        .date_header(false);
    let http = Http::with_options(
        hyper::service::service_fn(move |req| hello(req, request_timeout)),
        options,
    );
    if !hibernate_after.is_zero() {
        let counted = http.clone();
        // Hibernations free hyper's state; closes at the keep-alive or header deadline, and the ends of
        // lingering closes the peer never answered, free what the wake-up and the close touched: each
        // is purged once its period ends.
        crate::trim::after_hibernation(move || {
            let stats = counted.stats();
            stats.hibernated + stats.idle_closed + stats.header_timeouts + stats.linger_timeouts
        });
    }
    http
}

async fn hello(
    req: Request<Incoming>,
    grace: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = req.into_body();
    if body.is_end_stream() {
        // Most requests: no body, no clock to read.
        return Ok(answer(StatusCode::OK, BODY));
    }
    let mut read = 0u64;
    let began = tokio::time::Instant::now();
    while !body.is_end_stream() {
        // What has arrived buys time at MIN_BODY_RATE; a far deadline never overflows.
        let earned = Duration::from_millis(read.saturating_mul(1000) / MIN_BODY_RATE);
        let deadline = began
            .checked_add(grace.saturating_add(earned))
            .unwrap_or_else(|| began + Duration::from_secs(86_400 * 365));
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            tracing::debug!(read, "request body too slow: 408");
            return Ok(answer(StatusCode::REQUEST_TIMEOUT, ""));
        };
        match frame {
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > MAX_BODY {
                    return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, ""));
                }
            }
            // The client went away or sent a broken body; hyper ends the connection.
            Some(Err(_)) | None => break,
        }
    }
    Ok(answer(StatusCode::OK, BODY))
}

/// Inlined: built in a call of its own, the answer was copied once more on its way out, on every
/// request.
#[inline(always)]
fn answer(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_hello() {
        let res = answer(StatusCode::OK, BODY);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[CONTENT_LENGTH], "13");
        assert_eq!(res.headers()[CONTENT_TYPE], "text/plain");
    }
}
