//! Admission by address: a deny list and a per-address limit, with clients on several loopback addresses.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{bind_loopback, echo, eventually};
use lariat::admission::Admission;
use lariat::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    socket.connect(server).await.unwrap()
}

/// True if the server answers an echo on `stream`; false if it closed it.
async fn served(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && &back == b"ping"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_networks_are_closed_and_counted_others_served() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .admission(Some(Admission {
            deny: vec!["127.0.0.3/32".parse().unwrap()],
            ..Admission::default()
        }))
        .serve([listener], echo)
        .unwrap();
    let mut good = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    let mut bad = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr).await;
    assert!(served(&mut good).await);
    assert!(!served(&mut bad).await, "a denied address was served");
    let handle = server.handle();
    assert!(
        eventually(Duration::from_secs(5), || handle.stats().admission_refused
            == 1)
        .await
    );
    assert_eq!(handle.stats().active, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_limit_others_are_unaffected() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .admission(Some(Admission {
            max_per_ip: Some(2),
            ..Admission::default()
        }))
        .serve([listener], echo)
        .unwrap();
    let greedy = Ipv4Addr::new(127, 0, 0, 4);
    let mut first = connect_from(greedy, addr).await;
    let mut second = connect_from(greedy, addr).await;
    assert!(served(&mut first).await && served(&mut second).await);
    let mut third = connect_from(greedy, addr).await;
    assert!(
        !served(&mut third).await,
        "a third connection from one address was served"
    );
    // Another address is not affected.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 5), addr).await;
    assert!(served(&mut other).await);
    // When one of the first two leaves, the address may connect again.
    drop(first);
    let handle = server.handle().clone();
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 2).await);
    let mut again = connect_from(greedy, addr).await;
    assert!(
        served(&mut again).await,
        "the address was not let back in after one left"
    );
    assert_eq!(handle.stats().admission_refused, 1);
}
