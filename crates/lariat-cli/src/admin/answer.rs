//! The `--metrics` endpoint's answers: a status, a small body, and the headers every answer carries.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::access::Refusal;

/// One answer; the connection closes after it.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: String,
    /// One more header (`allow`, `www-authenticate`).
    pub(super) header: Option<(&'static str, &'static str)>,
}

impl Answer {
    pub(super) fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            header: None,
        }
    }

    pub(super) fn json(status: u16, value: &serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: format!("{value}\n"),
            header: None,
        }
    }

    pub(super) fn method_not_allowed(allow: &'static str) -> Answer {
        Answer {
            header: Some(("allow", allow)),
            ..Answer::text(405, "method not allowed\n")
        }
    }

    pub(super) fn refused(refusal: Refusal) -> Answer {
        match refusal {
            Refusal::Forbidden(why) => Answer::text(403, why),
            Refusal::Unauthorized => Answer {
                header: Some(("www-authenticate", "Bearer realm=\"lariat\"")),
                ..Answer::text(401, "a valid Authorization: Bearer TOKEN is needed\n")
            },
        }
    }

    /// The answer as hyper sends it (hyper adds `content-length`, and leaves the body out for `HEAD`).
    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut res = Response::new(Full::new(Bytes::from(self.body)));
        *res.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        if let Some((name, value)) = self.header {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        res
    }

    /// The answer as bytes, for the one answer written without hyper: `408` when the request did not
    /// arrive in time (hyper's own header timeout closes without an answer).
    pub(super) fn into_bytes(self) -> Vec<u8> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_headers() {
        let res = Answer::method_not_allowed("GET, HEAD").into_response();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()["allow"], "GET, HEAD");
        assert_eq!(res.headers()[CONNECTION], "close");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        let text = String::from_utf8(Answer::text(408, "request timeout\n").into_bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        assert!(
            text.contains("content-length: 16\r\n") && text.ends_with("\r\n\r\nrequest timeout\n")
        );
    }
}
