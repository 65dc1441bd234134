//! A tonic (gRPC) service on `lariat::http`: a stream of unary calls keeps going through hand-overs from
//! one server to the next (a restart's drain), and no call fails. No protoc: the messages are raw bytes
//! through a hand-written codec.
#![cfg(feature = "http")]

use crate::common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::bind_loopback;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lariat::http::Http;
use lariat::{DrainOptions, Server};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Messages are their bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `/test.Echo/Echo`: answers with the request's bytes after a short wait (so calls are in flight
/// when a drain begins).
#[derive(Clone)]
struct EchoServer;

struct EchoCall;

/// Calls the service began: each must have been answered (none processed and then lost).
static BEGAN: AtomicU64 = AtomicU64::new(0);

impl tonic::server::UnaryService<Bytes> for EchoCall {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        BEGAN.fetch_add(1, Relaxed);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(tonic::Response::new(req.into_inner()))
        })
    }
}

impl tower_service::Service<http::Request<hyper::body::Incoming>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != "/test.Echo/Echo" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            Ok(tonic::server::Grpc::new(Raw).unary(EchoCall, req).await)
        })
    }
}

/// A hyper HTTP/2 connection as the service tonic's client sends through.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Result<Self::Response, hyper::Error>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// Whether a failed call never reached the service: refused by a GOAWAY (its stream above the last
/// one accepted), `REFUSED_STREAM`, or never sent because the connection was closing.
fn refused_unprocessed(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// Unary calls, 4 at a time on one connection, until the connection goes away; then a new one.
async fn caller(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let path: http::uri::PathAndQuery = "/test.Echo/Echo".parse().unwrap();
    while !stop.load(Relaxed) {
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => return tally.failures.lock().unwrap().push(format!("connect: {e}")),
        };
        let (send, conn) =
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
            {
                Ok(x) => x,
                Err(e) => {
                    return tally
                        .failures
                        .lock()
                        .unwrap()
                        .push(format!("handshake: {e}"))
                }
            };
        tokio::spawn(conn);
        let origin: http::Uri = format!("http://{addr}").parse().unwrap();
        let calls: Vec<_> = (0..4u8)
            .map(|i| {
                let mut grpc = tonic::client::Grpc::with_origin(H2(send.clone()), origin.clone());
                let (stop, tally, path) = (stop.clone(), tally.clone(), path.clone());
                tokio::spawn(async move {
                    let mut n = 0u32;
                    while !stop.load(Relaxed) {
                        if grpc.ready().await.is_err() {
                            return; // closing: a new connection
                        }
                        n += 1;
                        let msg = Bytes::from(format!("call {i}/{n}"));
                        match grpc
                            .unary(tonic::Request::new(msg.clone()), path.clone(), Raw)
                            .await
                        {
                            Ok(res) if res.get_ref() == &msg => {
                                tally.ok.fetch_add(1, Relaxed);
                            }
                            Ok(res) => tally
                                .failures
                                .lock()
                                .unwrap()
                                .push(format!("wrong answer {:?}", res.get_ref())),
                            Err(status) if refused_unprocessed(&status) => {
                                tally.refused.fetch_add(1, Relaxed);
                                return;
                            }
                            Err(status) => {
                                tally.failures.lock().unwrap().push(format!("{status:?}"));
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
    }
}

/// 4 connections × 4 callers of a tonic unary method through 3 hand-overs (the old server releases
/// the socket to the new one and drains): every call completes or is refused before it was processed
/// (and retried); none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_unary_calls_through_drains_fail_none() {
    let (socket, addr) = bind_loopback();
    let http = Http::tower(EchoServer);
    let generation = || {
        Server::builder()
            .serve([socket.try_clone().unwrap()], http.clone())
            .unwrap()
    };
    let mut serving = generation();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let callers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(caller(addr, stop.clone(), tally.clone())))
        .collect();
    let opts = DrainOptions {
        timeout: Duration::from_secs(10),
        settle: Duration::from_millis(100),
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let next = generation();
        serving.handle().release_listeners();
        let report = serving.handle().drain(opts).await;
        assert_eq!(report.forced, 0, "{report:?}");
        serving = next;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Relaxed);
    for c in callers {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .unwrap()
            .unwrap();
    }
    let failures = tally.failures.lock().unwrap().clone();
    let (ok, refused) = (tally.ok.load(Relaxed), tally.refused.load(Relaxed));
    eprintln!(
        "tonic: {ok} calls ok, {refused} refused unprocessed and retried, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 100, "{ok}");
    // Every call the service began was answered: the refused ones were never processed.
    assert_eq!(BEGAN.load(Relaxed), ok);
    let report = serving.handle().drain(opts).await;
    assert_eq!(report.forced, 0, "{report:?}");
}
