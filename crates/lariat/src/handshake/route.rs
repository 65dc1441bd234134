//! Several protocols on one port: a [`Router`] looks at a connection's first bytes, without taking them
//! (`MSG_PEEK`), and hands the connection to the first route whose [`Matcher`] recognises them: a TLS
//! ClientHello (the route runs the handshake, then its handler reads plaintext), an HTTP/1 request line,
//! the HTTP/2 preface, a PROXY header, or a matcher of your own. Nothing recognised: the fallback route,
//! or a counted close.
//!
//! The router is a [`Handler`]: give it to [`ServerBuilder::serve`](crate::ServerBuilder::serve). Its
//! wait for the first bytes and its TLS handshakes share the server's handshake timeout (counted from
//! `accept`) with the PROXY header read before it, so a client that connects and says nothing is closed
//! at that timeout (`handshake_timeouts`). Since nothing is consumed, each handler reads the bytes that
//! were sniffed, every one of them.
//!
//! Server-speaks-first protocols (SMTP, a game's hello) cannot be sniffed, since the client waits: give
//! them their own port, or a fallback route and a short [`Router::sniff_timeout`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::handler::{BoxError, Handler, Outcome};
use crate::handshake::{self, HandshakeError};
use crate::net::peek::{peek_at_least, Peeked};
use crate::server::stats::Stats;
use crate::tls::TlsConfig;
use crate::Connection;

/// The most bytes a router looks at; the HTTP/2 preface (24 bytes) is the longest built-in signature.
pub const MAX_SNIFF: usize = 64;

/// What a matcher makes of the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This route's protocol.
    Match,
    /// Not this route's protocol.
    NoMatch,
    /// Cannot tell yet: wait for more bytes (up to [`MAX_SNIFF`]).
    NeedMore,
}

/// A matcher of your own: judges the first bytes seen so far.
pub type MatchFn = Arc<dyn Fn(&[u8]) -> Verdict + Send + Sync>;

/// Recognises a protocol by its first bytes.
#[derive(Clone)]
pub enum Matcher {
    /// A TLS handshake record (`0x16 0x03 0x00..=0x04`).
    TlsClientHello,
    /// An HTTP/1 request line (`GET `, `POST `, … any standard method and a space).
    Http1,
    /// The HTTP/2 connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
    Http2,
    /// A PROXY protocol v1 or v2 header.
    ProxyHeader,
    /// A literal prefix.
    Prefix(Arc<[u8]>),
    /// Your own: called with every byte seen so far (at least one).
    Custom(MatchFn),
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::TlsClientHello => f.write_str("TlsClientHello"),
            Matcher::Http1 => f.write_str("Http1"),
            Matcher::Http2 => f.write_str("Http2"),
            Matcher::ProxyHeader => f.write_str("ProxyHeader"),
            Matcher::Prefix(p) => f.debug_tuple("Prefix").field(&p).finish(),
            Matcher::Custom(_) => f.write_str("Custom"),
        }
    }
}

const HTTP1_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PROXY_V1: &[u8] = b"PROXY ";
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

impl Matcher {
    /// Judges the bytes seen so far (never empty).
    pub fn verdict(&self, seen: &[u8]) -> Verdict {
        match self {
            Matcher::TlsClientHello => {
                let expected = [Some(0x16u8), Some(0x03)];
                for (i, b) in seen.iter().take(2).enumerate() {
                    if Some(*b) != expected[i] {
                        return Verdict::NoMatch;
                    }
                }
                match seen.get(2) {
                    None => Verdict::NeedMore,
                    Some(minor) if *minor <= 0x04 => Verdict::Match,
                    Some(_) => Verdict::NoMatch,
                }
            }
            Matcher::Http1 => any_prefix(seen, &HTTP1_METHODS),
            Matcher::Http2 => prefix(seen, HTTP2_PREFACE),
            Matcher::ProxyHeader => any_prefix(seen, &[PROXY_V1, PROXY_V2]),
            Matcher::Prefix(p) => prefix(seen, p),
            Matcher::Custom(f) => f(seen),
        }
    }
}

/// `Match` once `seen` starts with `want`, `NeedMore` while it is a prefix of it.
fn prefix(seen: &[u8], want: &[u8]) -> Verdict {
    let n = seen.len().min(want.len());
    if seen[..n] != want[..n] {
        Verdict::NoMatch
    } else if n == want.len() {
        Verdict::Match
    } else {
        Verdict::NeedMore
    }
}

fn any_prefix(seen: &[u8], wants: &[&[u8]]) -> Verdict {
    let mut verdict = Verdict::NoMatch;
    for want in wants {
        match prefix(seen, want) {
            Verdict::Match => return Verdict::Match,
            Verdict::NeedMore => verdict = Verdict::NeedMore,
            Verdict::NoMatch => {}
        }
    }
    verdict
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
type BoxHandler = Arc<dyn Fn(Connection) -> BoxFuture + Send + Sync>;

/// The name [`ConnectionInfo::route`](crate::ConnectionInfo::route) gives the
/// [`fallback`](Router::fallback) route.
pub const FALLBACK: &str = "fallback";

fn boxed<H: Handler>(name: Arc<str>, handler: H) -> BoxHandler {
    Arc::new(move |conn: Connection| {
        // A route's connection stays here at a restart: the successor's router would wait for a
        // first message to sniff again. The name is what the connection list reports.
        let _ = conn.entry().extras().routed.set(name.clone());
        let serve = handler.call(conn);
        Box::pin(async move { serve.await.failure().map_or(Ok(()), Err) })
    })
}

#[derive(Clone)]
struct Route {
    name: Arc<str>,
    matcher: Matcher,
    tls: Option<TlsConfig>,
    handler: BoxHandler,
}

/// Picks a handler by the connection's first bytes. Routes are tried in the order they were added; the
/// first to say [`Verdict::Match`] wins (an earlier route that needs more bytes is waited for).
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<Vec<Route>>,
    fallback: Option<BoxHandler>,
    sniff_timeout: Option<Duration>,
    greeting: Option<Bytes>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.routes.iter().map(|r| (&r.name, &r.matcher)).collect();
        f.debug_struct("Router")
            .field("routes", &names)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Router {
    /// A router with no routes (every connection goes to the fallback, or is closed).
    pub fn new() -> Router {
        Router::default()
    }

    /// Sends connections whose first bytes `matcher` recognises to `handler`. `name` is for logs and
    /// the connection list ([`ConnectionInfo::route`](crate::ConnectionInfo::route)).
    pub fn route(self, name: &str, matcher: Matcher, handler: impl Handler) -> Router {
        let name: Arc<str> = name.into();
        self.push(Route {
            name: name.clone(),
            matcher,
            tls: None,
            handler: boxed(name, handler),
        })
    }

    /// Sends connections that open with a TLS ClientHello through a handshake with `tls`, then to
    /// `handler`, which reads and writes plaintext.
    pub fn tls(self, name: &str, tls: TlsConfig, handler: impl Handler) -> Router {
        let name: Arc<str> = name.into();
        self.push(Route {
            name: name.clone(),
            matcher: Matcher::TlsClientHello,
            tls: Some(tls),
            handler: boxed(name, handler),
        })
    }

    /// Where connections that match no route go (including clients that wait for the server to speak,
    /// once [`sniff_timeout`](Self::sniff_timeout) passes). Without one they are closed and counted
    /// (`sniff_failed`). The connection list names this route [`FALLBACK`].
    pub fn fallback(mut self, handler: impl Handler) -> Router {
        self.fallback = Some(boxed(FALLBACK.into(), handler));
        self
    }

    /// How long to wait for a first byte before giving the connection to the fallback route (for
    /// clients that wait for the server to speak first). Without it, or without a fallback, a silent
    /// client waits until the handshake timeout closes it.
    pub fn sniff_timeout(mut self, timeout: Duration) -> Router {
        self.sniff_timeout = Some(timeout);
        self
    }

    /// Bytes written to each connection once its route is chosen (after a TLS route's handshake, so
    /// inside TLS), before its handler runs: the client learns it was accepted, not just queued. Use
    /// this rather than [`ServerBuilder::greeting`](crate::ServerBuilder::greeting) with a router that
    /// has TLS routes: that greeting is written before the router looks at the first bytes, in the
    /// clear, where a TLS client expects the server's handshake.
    pub fn greeting(mut self, greeting: Option<Bytes>) -> Router {
        self.greeting = greeting.filter(|g| !g.is_empty());
        self
    }

    fn push(mut self, route: Route) -> Router {
        // Routers are built before serving, so the `Arc` is not shared yet and nothing is copied.
        Arc::make_mut(&mut self.routes).push(route);
        self
    }

    /// Sniffs, picks, runs the route's TLS handshake if it has one: the handler and its connection.
    async fn pick(&self, conn: Connection) -> Result<(BoxHandler, Connection), Unrouted> {
        let mut buf = [0u8; MAX_SNIFF];
        let mut want = 1;
        let started = tokio::time::Instant::now();
        loop {
            let peek = peek_at_least(conn.stream(), &mut buf, want);
            let seen = match (self.sniff_timeout, &self.fallback) {
                (Some(limit), Some(fallback)) if want == 1 => {
                    match tokio::time::timeout_at(crate::deadline::after(started, limit), peek)
                        .await
                    {
                        Ok(seen) => seen,
                        // Silent: a client waiting for the server to speak.
                        Err(_) => return self.greet(fallback.clone(), conn).await,
                    }
                }
                _ => peek.await,
            };
            let (seen, closed) = match seen {
                Ok(n) => (n, false),
                Err(Peeked::Closed(n)) => (n, true),
                Err(Peeked::Io(e)) => return Err(Unrouted::Io(e)),
            };
            if seen == 0 {
                return Err(Unrouted::Closed);
            }
            let bytes = &buf[..seen];
            let can_wait = !closed && seen < buf.len();
            let mut chosen = None;
            let mut wait = false;
            for route in self.routes.iter() {
                match route.matcher.verdict(bytes) {
                    Verdict::Match => {
                        chosen = Some(route);
                        break;
                    }
                    // An earlier route that cannot tell yet goes first, while more bytes may come.
                    Verdict::NeedMore if can_wait => {
                        wait = true;
                        break;
                    }
                    Verdict::NeedMore | Verdict::NoMatch => {}
                }
            }
            if wait {
                want = seen + 1;
                continue;
            }
            let Some(route) = chosen else {
                return match &self.fallback {
                    Some(fallback) => self.greet(fallback.clone(), conn).await,
                    None => Err(Unrouted::NoRoute(bytes.len())),
                };
            };
            tracing::trace!(conn = conn.id(), route = %route.name, "routed");
            let conn = match &route.tls {
                Some(tls) => handshake::start_tls(conn, tls)
                    .await
                    .map_err(Unrouted::Tls)?,
                None => conn,
            };
            return self.greet(route.handler.clone(), conn).await;
        }
    }

    /// Writes the greeting, if there is one, to a routed connection.
    async fn greet(
        &self,
        handler: BoxHandler,
        mut conn: Connection,
    ) -> Result<(BoxHandler, Connection), Unrouted> {
        if let Some(greeting) = &self.greeting {
            conn.write_all(greeting).await.map_err(Unrouted::Greeting)?;
            conn.flush().await.map_err(Unrouted::Greeting)?;
        }
        Ok((handler, conn))
    }
}

/// Why a connection reached no handler.
#[derive(Debug, thiserror::Error)]
enum Unrouted {
    #[error("the first {0} bytes match no route, and there is no fallback")]
    NoRoute(usize),
    #[error("the peer closed before sending a byte")]
    Closed,
    #[error(transparent)]
    Tls(crate::tls::TlsError),
    #[error(transparent)]
    Io(std::io::Error),
    #[error("greeting not written: {0}")]
    Greeting(std::io::Error),
}

// Not offered as a hint when a closure fails to be a handler (its future not `Send`, say): the
// closure is what needs fixing, not a reason to reach for a `Router`.
#[diagnostic::do_not_recommend]
impl Handler for Router {
    type Outcome = Result<(), BoxError>;
    type Future = BoxFuture;

    fn call(&self, conn: Connection) -> BoxFuture {
        let router = self.clone();
        Box::pin(async move {
            let entry = conn.entry().clone();
            let picked = match handshake::bounded(&entry, router.pick(conn)).await {
                Ok(Ok(picked)) => picked,
                Ok(Err(Unrouted::Tls(e))) => {
                    handshake::failed(&entry, &HandshakeError::Tls(e));
                    return Ok(());
                }
                Ok(Err(Unrouted::Greeting(e))) => {
                    handshake::failed(&entry, &HandshakeError::Greeting(e));
                    return Ok(());
                }
                Ok(Err(Unrouted::Closed)) => {
                    // Connected and left without a word: a close like any other, not a failure.
                    return Ok(());
                }
                Ok(Err(e)) => {
                    Stats::add(&entry.shared.stats.sniff_failed, 1);
                    tracing::debug!(conn = entry.id, peer = %entry.peer, error = %e, "connection not routed; closing");
                    return Ok(());
                }
                Err(timed_out_or_evicted) => {
                    handshake::failed(&entry, &timed_out_or_evicted);
                    return Ok(());
                }
            };
            let (handler, conn) = picked;
            handler(conn).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_matchers() {
        use Verdict::*;
        let tls = Matcher::TlsClientHello;
        assert_eq!(tls.verdict(&[0x16]), NeedMore);
        assert_eq!(tls.verdict(&[0x16, 0x03, 0x01, 0x02, 0x00]), Match);
        assert_eq!(tls.verdict(&[0x16, 0x03, 0x09]), NoMatch);
        assert_eq!(tls.verdict(b"GET"), NoMatch);

        let h1 = Matcher::Http1;
        assert_eq!(h1.verdict(b"G"), NeedMore);
        assert_eq!(h1.verdict(b"GET / HTTP/1.1"), Match);
        assert_eq!(h1.verdict(b"OPTIONS * HTTP/1.1"), Match);
        assert_eq!(h1.verdict(b"P"), NeedMore, "POST, PUT, PATCH");
        assert_eq!(h1.verdict(b"PRI * HTTP/2.0"), NoMatch);
        assert_eq!(h1.verdict(b"GETX"), NoMatch);

        let h2 = Matcher::Http2;
        assert_eq!(h2.verdict(b"PRI * HTTP/2.0\r\n"), NeedMore);
        assert_eq!(h2.verdict(HTTP2_PREFACE), Match);
        assert_eq!(h2.verdict(b"GET "), NoMatch);

        let proxy = Matcher::ProxyHeader;
        assert_eq!(proxy.verdict(b"PROXY TCP4"), Match);
        assert_eq!(proxy.verdict(b"\r\n\r\n"), NeedMore);
        assert_eq!(proxy.verdict(b"P"), NeedMore);
        assert_eq!(proxy.verdict(b"PRI"), NoMatch);
        assert_eq!(proxy.verdict(b"HELO"), NoMatch);

        let hello = Matcher::Prefix(Arc::from(&b"HELLO"[..]));
        assert_eq!(hello.verdict(b"HEL"), NeedMore);
        assert_eq!(hello.verdict(b"HELLO world"), Match);
    }
}
