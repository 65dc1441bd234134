//! The axum adapter serves requests through lariat's acceptor.
#![cfg(feature = "axum")]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn axum_serves_through_lariat() {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello from axum" }));
    let listener = lariat::axum::Listener::bind("127.0.0.1:0").unwrap();
    let handle = listener.handle().clone();
    let addr = match axum::serve::Listener::local_addr(&listener).unwrap() {
        lariat::PeerAddr::Tcp(addr) => addr,
        other => panic!("{other:?}"),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("hello from axum"), "{response}");
    assert_eq!(handle.stats().accepted, 1);
    assert!(
        handle.stats().bytes_in + handle.connections().iter().map(|c| c.bytes_in).sum::<u64>() > 0
    );
}
