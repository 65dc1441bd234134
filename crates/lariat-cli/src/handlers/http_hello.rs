//! `http-hello`: answers every HTTP/1.x request with a short `200 OK`, keeping the connection alive as the
//! request asks, with pipelining, so wrk and h2load can drive it.
//!
//! Not a web server: request bodies with `Content-Length` are read and dropped as they stream (a body
//! costs no memory, however long), chunked bodies get `501` and a close, a head over [`MAX_HEAD`] bytes
//! gets `431` and a close, garbage gets `400` and a close.
//!
//! A request must keep moving: its head must arrive whole within the request timeout of its first
//! byte, and its body at [`MIN_BODY_RATE`] on average after a first timeout's worth of grace, or the
//! client gets `408` and a close. Without this a client sending a byte now and then would hold its slot
//! forever, since every byte resets the idle timeout.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use lariat::Connection;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// The largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// The slowest average rate a request body may arrive at, after the first request timeout.
pub const MIN_BODY_RATE: u64 = 1024;
/// How much is read from the socket at once.
const READ_SIZE: usize = 4096;
const MAX_HEADERS: usize = 64;
/// Later than any request deadline a running server reaches (about thirty years).
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
const BODY: &str = "Hello, world!";

/// Why a connection was closed with an error response.
#[derive(Debug)]
pub enum HttpError {
    /// Socket error.
    Io(io::Error),
    /// The client sent something that is not HTTP/1.x, or a feature this handler does not take.
    Rejected(&'static str),
}

impl std::error::Error for HttpError {}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Rejected(why) => write!(f, "rejected request: {why}"),
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// What to do after parsing the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A whole request head of `head` bytes, announcing a body of `body` bytes; answer once the body
    /// is read, keeping the connection alive or not.
    Request {
        head: usize,
        body: u64,
        keep_alive: bool,
    },
    /// Need more bytes.
    Partial,
    /// Answer with this status line and close.
    Reject(&'static str, &'static str),
}

fn parse(buf: &[u8]) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Step::Reject("431 Request Header Fields Too Large", "head too large")
        }
        Ok(httparse::Status::Partial) => return Step::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Step::Reject("431 Request Header Fields Too Large", "too many headers")
        }
        Err(_) => return Step::Reject("400 Bad Request", "malformed request"),
    };
    let http10 = req.version == Some(0);
    let mut keep_alive = !http10;
    let mut body = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (n, body) {
                (Some(n), None) => body = Some(n),
                // Repeated with the same value is allowed (RFC 9112 §6.3); differing values are not.
                (Some(n), Some(m)) if n == m => {}
                _ => return Step::Reject("400 Bad Request", "bad content-length"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Step::Reject("501 Not Implemented", "chunked bodies not supported");
        }
    }
    Step::Request {
        head,
        body: body.unwrap_or(0),
        keep_alive,
    }
}

fn respond(out: &mut Vec<u8>, keep_alive: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ");
    out.extend_from_slice(BODY.len().to_string().as_bytes());
    out.extend_from_slice(if keep_alive {
        b"\r\n\r\n".as_slice()
    } else {
        b"\r\nconnection: close\r\n\r\n".as_slice()
    });
    out.extend_from_slice(BODY.as_bytes());
}

/// Where the connection is within a request.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Between requests: nothing of the next one has arrived (the idle timeout applies).
    Idle,
    /// The head's first bytes arrived at `since`.
    Head { since: Instant },
    /// Skipping a body: `left` bytes still to come, `got` so far, the head complete at `since`.
    Body {
        left: u64,
        got: u64,
        since: Instant,
        keep_alive: bool,
    },
}

impl Phase {
    /// When the request in progress must have made more progress; `None` between requests.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let (since, allowed) = match *self {
            Phase::Idle => return None,
            Phase::Head { since } => (since, timeout),
            Phase::Body { got, since, .. } => (
                since,
                timeout.saturating_add(Duration::from_secs(got / MIN_BODY_RATE)),
            ),
        };
        // A huge timeout is "never", not an overflow.
        Some(since.checked_add(allowed).unwrap_or(since + FAR))
    }
}

/// Serves requests until the peer closes or asks to close; `timeout` is the request timeout (see the
/// module docs).
pub async fn http_hello(mut conn: Connection, timeout: Duration) -> Result<(), HttpError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut phase = Phase::Idle;
    loop {
        // Answer every complete request already buffered (pipelining), then write once.
        loop {
            if let Phase::Body {
                left,
                got,
                since,
                keep_alive,
            } = phase
            {
                // The body is dropped as it arrives: a body never costs more than one read.
                let n = left.min(buf.len() as u64);
                buf.advance(n as usize);
                if n < left {
                    phase = Phase::Body {
                        left: left - n,
                        got: got + n,
                        since,
                        keep_alive,
                    };
                    break;
                }
                phase = Phase::Idle;
                respond(&mut out, keep_alive);
                if !keep_alive {
                    conn.write_all(&out).await?;
                    conn.flush().await?;
                    return Ok(());
                }
                continue;
            }
            if buf.is_empty() {
                break;
            }
            match parse(&buf) {
                Step::Request {
                    head,
                    body,
                    keep_alive,
                } => {
                    buf.advance(head);
                    phase = Phase::Body {
                        left: body,
                        got: 0,
                        since: Instant::now(),
                        keep_alive,
                    };
                }
                Step::Partial => {
                    if let Phase::Idle = phase {
                        phase = Phase::Head {
                            since: Instant::now(),
                        };
                    }
                    break;
                }
                Step::Reject(status, why) => return reject(&mut conn, &mut out, status, why).await,
            }
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            // Under TLS, the records go out now (a no-op on plain sockets).
            conn.flush().await?;
            out.clear();
        }
        if buf.is_empty() {
            // Idle between requests, or waiting for body bytes: give the buffers back.
            buf = BytesMut::new();
            out = Vec::new();
        }
        let ready = match phase.deadline(timeout) {
            None => conn.readable().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, conn.readable()).await {
                Ok(ready) => ready,
                Err(_) => {
                    return reject(
                        &mut conn,
                        &mut out,
                        "408 Request Timeout",
                        "request too slow",
                    )
                    .await
                }
            },
        };
        ready?;
        buf.reserve(READ_SIZE);
        match conn.try_read_buf(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Answers with `status` and closes.
async fn reject(
    conn: &mut Connection,
    out: &mut Vec<u8>,
    status: &'static str,
    why: &'static str,
) -> Result<(), HttpError> {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    conn.write_all(out).await?;
    conn.flush().await?;
    Err(HttpError::Rejected(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rules() {
        let get11 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse(get11),
            Step::Request {
                head: get11.len(),
                body: 0,
                keep_alive: true
            }
        );
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert_eq!(
            parse(close),
            Step::Request {
                head: close.len(),
                body: 0,
                keep_alive: false
            }
        );
        let get10 = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            parse(get10),
            Step::Request {
                head: get10.len(),
                body: 0,
                keep_alive: false
            }
        );
        let get10ka = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            parse(get10ka),
            Step::Request {
                head: get10ka.len(),
                body: 0,
                keep_alive: true
            }
        );
    }

    #[test]
    fn bodies_partials_and_garbage() {
        let post = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse(post),
            Step::Request {
                head: post.len() - 5,
                body: 5,
                keep_alive: true
            }
        );
        // The head is enough: the body is skipped as it streams, so a huge one is no error.
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\n";
        assert!(matches!(
            parse(huge),
            Step::Request {
                body: 10_000_000_000,
                ..
            }
        ));
        let differing = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(matches!(parse(differing), Step::Reject(s, _) if s.starts_with("400")));
        assert_eq!(parse(b"GET / HTT"), Step::Partial);
        assert!(
            matches!(parse(b"\x16\x03\x01 garbage\r\n\r\n"), Step::Reject(s, _) if s.starts_with("400"))
        );
        let huge = vec![b'a'; MAX_HEAD + 1];
        let mut req = b"GET /".to_vec();
        req.extend_from_slice(&huge);
        assert!(matches!(parse(&req), Step::Reject(s, _) if s.starts_with("431")));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(chunked), Step::Reject(s, _) if s.starts_with("501")));
    }

    #[test]
    fn response_is_well_formed() {
        let mut out = Vec::new();
        respond(&mut out, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.ends_with("\r\n\r\nHello, world!"));
        assert!(text.contains("content-length: 13\r\n"));
    }
}
