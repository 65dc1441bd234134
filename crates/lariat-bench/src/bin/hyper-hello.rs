//! The baseline for `lariat serve --handler http-hello`: the same hyper service on a plain tokio
//! `TcpListener` and hyper-util's auto builder (HTTP/1.1 and h2c), with no drain and no cap: what
//! `lariat::http` is measured against. Its hyper settings mirror `lariat::http`'s (the header timer,
//! the header read timeout, the head and header-count limits, no `Date` header, and HTTP/1 answers
//! written flattened: head and body in one buffer, one write), so the comparison is like for like.

// The global allocator `lariat` ships with, so the comparison stays like for like.
#[path = "../../../lariat-cli/src/allocator.rs"]
mod allocator;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Reads and drops the body as it streams, then answers, as `http-hello` does.
async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = req.into_body();
    while !body.is_end_stream() {
        match body.frame().await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    let mut res = Response::new(Full::new(Bytes::from_static(b"Hello, world!")));
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(13));
    Ok(res)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on tcp://{}", listener.local_addr()?);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .max_headers(100)
        .auto_date_header(false)
        .writev(false);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(200)
        .max_header_list_size(64 * 1024)
        .auto_date_header(false);
    let builder = std::sync::Arc::new(builder);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(hello);
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
