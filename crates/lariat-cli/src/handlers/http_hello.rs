//! `http-hello`: answers every HTTP/1.x request with a short `200 OK`, keeping the connection alive as the
//! request asks, with pipelining, so wrk and h2load can drive it.
//!
//! Not a web server: request bodies with `Content-Length` are skipped, chunked bodies get `501` and a close,
//! a head over [`MAX_HEAD`] bytes gets `431` and a close, garbage gets `400` and a close.

use std::io;

use bytes::{Buf, BytesMut};
use lariat::Connection;
use tokio::io::AsyncWriteExt;

/// The largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest request body skipped.
pub const MAX_BODY: usize = 1024 * 1024;
const MAX_HEADERS: usize = 64;
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
    /// A whole request of this many bytes (head and body); answer, keeping the connection alive or not.
    Request { len: usize, keep_alive: bool },
    /// Need more bytes.
    Partial,
    /// Answer with this status line and close.
    Reject(&'static str, &'static str),
}

fn parse(buf: &[u8]) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
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
    let mut body = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(n) if n <= MAX_BODY => body = n,
                Some(_) => return Step::Reject("413 Content Too Large", "body too large"),
                None => return Step::Reject("400 Bad Request", "bad content-length"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Step::Reject("501 Not Implemented", "chunked bodies not supported");
        }
    }
    if buf.len() < head_len + body {
        return Step::Partial;
    }
    Step::Request {
        len: head_len + body,
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

/// Serves requests until the peer closes or asks to close.
pub async fn http_hello(mut conn: Connection) -> Result<(), HttpError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        // Answer every complete request already buffered (pipelining), then write once.
        loop {
            match parse(&buf) {
                Step::Request { len, keep_alive } => {
                    buf.advance(len);
                    respond(&mut out, keep_alive);
                    if !keep_alive {
                        conn.write_all(&out).await?;
                        conn.flush().await?;
                        return Ok(());
                    }
                }
                Step::Partial => break,
                Step::Reject(status, why) => {
                    out.extend_from_slice(b"HTTP/1.1 ");
                    out.extend_from_slice(status.as_bytes());
                    out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    conn.write_all(&out).await?;
                    conn.flush().await?;
                    return Err(HttpError::Rejected(why));
                }
            }
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            // Under TLS, the records go out now (a no-op on plain sockets).
            conn.flush().await?;
            out.clear();
        }
        if buf.is_empty() {
            // Idle between requests: give the buffers back.
            buf = BytesMut::new();
            out = Vec::new();
        }
        conn.readable().await?;
        buf.reserve(4096);
        match conn.try_read_buf(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
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
                len: get11.len(),
                keep_alive: true
            }
        );
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert_eq!(
            parse(close),
            Step::Request {
                len: close.len(),
                keep_alive: false
            }
        );
        let get10 = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            parse(get10),
            Step::Request {
                len: get10.len(),
                keep_alive: false
            }
        );
        let get10ka = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            parse(get10ka),
            Step::Request {
                len: get10ka.len(),
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
                len: post.len(),
                keep_alive: true
            }
        );
        assert_eq!(parse(&post[..post.len() - 1]), Step::Partial);
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
