//! Admission by address: a deny list and a per-address limit, with clients on several loopback addresses.

use crate::common;

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

/// A server reading PROXY v1 headers from loopback, with these rules.
fn behind_proxy(rules: Admission) -> (lariat::Server, SocketAddr) {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .proxy_protocol(Some(lariat::proxy::ProxyConfig::new(
            lariat::proxy::ProxyMode::V1,
        )))
        .admission(Some(rules))
        .serve([listener], echo)
        .unwrap();
    (server, addr)
}

/// Connects from loopback as a balancer would, naming `client` in a PROXY v1 header.
async fn connect_as(client: &str, server: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if client.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    let header = format!("PROXY {family} {client} {dst} 4000 80\r\n");
    stream.write_all(header.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_per_ip_limit_counts_each_client_the_header_names() {
    let (server, addr) = behind_proxy(Admission {
        max_per_ip: Some(1),
        ..Admission::default()
    });
    // Every connection comes from the one balancer; the clients differ.
    let mut a = connect_as("192.0.2.1", addr).await;
    let mut b = connect_as("192.0.2.2", addr).await;
    assert!(served(&mut a).await, "the first client was refused");
    assert!(
        served(&mut b).await,
        "a second client behind the same balancer was refused"
    );
    let mut a_again = connect_as("192.0.2.1", addr).await;
    assert!(
        !served(&mut a_again).await,
        "a client over its limit was served"
    );
    drop(a);
    let handle = server.handle().clone();
    assert!(eventually(Duration::from_secs(5), || handle.stats().active == 1).await);
    let mut a_later = connect_as("192.0.2.1", addr).await;
    assert!(
        served(&mut a_later).await,
        "the client was not let back in once its connection closed"
    );
    assert_eq!(handle.stats().admission_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_deny_blocks_the_client_the_header_names() {
    let (server, addr) = behind_proxy(Admission {
        deny: vec!["192.0.2.66/32".parse().unwrap()],
        ..Admission::default()
    });
    let mut bad = connect_as("192.0.2.66", addr).await;
    let mut good = connect_as("192.0.2.1", addr).await;
    assert!(!served(&mut bad).await, "a denied client was served");
    assert!(served(&mut good).await);
    let handle = server.handle();
    assert!(
        eventually(Duration::from_secs(5), || handle.stats().admission_refused
            == 1)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_limited_per_64_not_per_address() {
    let (server, addr) = behind_proxy(Admission {
        max_per_ip: Some(1),
        ..Admission::default()
    });
    let mut first = connect_as("2001:db8:0:1::1", addr).await;
    assert!(served(&mut first).await);
    let mut same_64 = connect_as("2001:db8:0:1:ffff::2", addr).await;
    assert!(
        !served(&mut same_64).await,
        "another address in the same /64 escaped the limit"
    );
    let mut other_64 = connect_as("2001:db8:0:2::1", addr).await;
    assert!(served(&mut other_64).await);
    assert_eq!(server.handle().stats().admission_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_rule_matches_the_ipv4_client() {
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .admission(Some(Admission {
            deny: vec!["::ffff:127.0.0.3/128".parse().unwrap()],
            ..Admission::default()
        }))
        .serve([listener], echo)
        .unwrap();
    let mut bad = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr).await;
    assert!(!served(&mut bad).await, "the mapped rule did not match");
    let mut good = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    assert!(served(&mut good).await);
    assert_eq!(server.handle().stats().admission_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_peers_of_other_users_are_refused_when_users_are_named() {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("lariat-admission-uid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (tag, uids, admitted) in [
        ("other", vec![me.wrapping_add(1)], false),
        ("mine", vec![me], true),
    ] {
        let path = dir.join(format!("{tag}.sock"));
        let endpoint: lariat::Endpoint = format!("unix:{}", path.display()).parse().unwrap();
        let listener = lariat::Listener::bind(&endpoint).unwrap();
        let server = Server::builder()
            .admission(Some(Admission {
                unix_uids: uids,
                ..Admission::default()
            }))
            .serve([listener], echo)
            .unwrap();
        let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let answered = client.write_all(b"ping").await.is_ok() && {
            let mut back = [0u8; 4];
            matches!(
                tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back)).await,
                Ok(Ok(_))
            )
        };
        assert_eq!(answered, admitted, "{tag}");
        assert_eq!(
            server.handle().stats().admission_refused,
            u64::from(!admitted),
            "{tag}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
