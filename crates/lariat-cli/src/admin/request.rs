//! What the `--metrics` endpoint reads of a request: the method, the path and the headers the access
//! checks look at. No route takes a body; one is read (bounded) and dropped, so that closing after
//! the answer does not reset the connection.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, AUTHORIZATION, HOST, ORIGIN};

use super::access::Credentials;
use super::answer::Answer;

/// The largest request body read (and discarded: no route takes one).
pub(super) const MAX_BODY: usize = 64 * 1024;

/// A request, as the routes see it.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) credentials: Credentials,
}

impl Request {
    /// Reads `req`'s head and skips its body; `Err` is the answer to a request refused before any
    /// route sees it.
    pub(super) async fn read(req: hyper::Request<Incoming>) -> Result<Request, Answer> {
        let (parts, body) = req.into_parts();
        let request = Request::from_head(&parts.method, &parts.uri, &parts.headers)?;
        if Limited::new(body, MAX_BODY).collect().await.is_err() {
            return Err(Answer::text(413, "body too large\n"));
        }
        Ok(request)
    }

    fn from_head(
        method: &hyper::Method,
        uri: &hyper::Uri,
        headers: &HeaderMap,
    ) -> Result<Request, Answer> {
        let credentials = Credentials {
            host: one(headers, &HOST)?,
            origin: one(headers, &ORIGIN)?,
            authorization: one(headers, &AUTHORIZATION)?,
        };
        Ok(Request {
            method: method.as_str().to_owned(),
            // The query string, if any, changes nothing.
            path: uri.path().to_owned(),
            credentials,
        })
    }
}

/// The value of `name`, if the request has it; two values could be read differently by two checks.
fn one(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, Answer> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Answer::text(
            400,
            "a repeated Host, Origin or Authorization\n",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Answer::text(400, "a header that is not text\n"))?;
    Ok(Some(value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[(&str, &str)], target: &str) -> Result<Request, u16> {
        let mut headers = HeaderMap::new();
        for (name, value) in raw {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Request::from_head(&hyper::Method::GET, &target.parse().unwrap(), &headers)
            .map_err(|a| a.status)
    }

    #[test]
    fn reads_the_checked_headers_once_and_strips_queries() {
        let r = head(
            &[
                ("host", "a:1"),
                ("origin", "http://a:1"),
                ("authorization", "Bearer t"),
            ],
            "/metrics?x=1",
        )
        .unwrap();
        assert_eq!(r.path, "/metrics");
        assert_eq!(
            r.credentials,
            Credentials {
                host: Some("a:1".into()),
                origin: Some("http://a:1".into()),
                authorization: Some("Bearer t".into()),
            }
        );
        // Two Hosts (or Origins, or Authorizations) could be read differently by two checks.
        assert_eq!(head(&[("host", "a"), ("host", "b")], "/").unwrap_err(), 400);
        assert_eq!(
            head(&[("origin", "a"), ("origin", "b")], "/").unwrap_err(),
            400
        );
        assert_eq!(head(&[], "/").unwrap().credentials, Credentials::default());
    }
}
