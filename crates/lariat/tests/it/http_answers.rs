//! `lariat::http` writes HTTP/1 answers flattened (head and body copied into hyper's write buffer, one
//! write): large answers, in one frame or in many, still arrive whole, and the connection serves on.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use lariat::http::Http;
use lariat::Server;
use tokio::net::TcpStream;

use crate::common::bind_loopback;

const PATIENCE: Duration = Duration::from_secs(20);
const FRAME: usize = 64 * 1024;
const FRAMES: usize = 64;

/// `FRAMES` frames of `FRAME` bytes, one per poll.
struct Frames {
    left: usize,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(pattern(FRAME)))))
    }
}

/// Bytes that show a lost, doubled or reordered piece: their position, modulo a prime.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn answer(
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let body = match req.uri().path() {
        "/one" => Full::new(pattern(FRAME * FRAMES)).boxed(),
        "/many" => Frames { left: FRAMES }.boxed(),
        _ => Full::new(Bytes::from_static(b"hi")).boxed(),
    };
    Ok(Response::new(body))
}

/// A 4 MiB answer in one frame, the same in 64 frames (chunked), then a small one, on one keep-alive
/// connection: each arrives whole, in order, and the connection stays open for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_arrive_whole_on_a_keep_alive_connection() {
    let (listener, addr) = bind_loopback();
    let http = Http::new(hyper::service::service_fn(answer));
    let _server = Server::builder().serve([listener], http.clone()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    for (path, want) in [
        ("/one", FRAME * FRAMES),
        ("/many", FRAME * FRAMES),
        ("/small", 2),
    ] {
        let req = Request::get(path)
            .header("host", "a")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let got = tokio::time::timeout(PATIENCE, async {
            let res = sender.send_request(req).await.unwrap();
            assert!(res.status().is_success(), "{path}: {}", res.status());
            res.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: no whole answer within {PATIENCE:?}"));
        assert_eq!(got.len(), want, "{path}");
        if path == "/small" {
            assert_eq!(&got[..], b"hi");
        } else {
            // Each frame's pattern starts over (64 KiB is not a multiple of 251).
            let one = pattern(FRAME * FRAMES);
            let many: Vec<u8> = (0..FRAMES).flat_map(|_| pattern(FRAME)).collect();
            let expected = if path == "/one" { &one[..] } else { &many[..] };
            assert!(got[..] == *expected, "{path}: the bytes differ");
        }
    }
    // One connection served the three: hyper's client would have failed a request on a closed one.
    assert_eq!(http.stats().connections, 1);
    drop(sender);
    let _ = driver.await;
}
