//! `TlsConfig` options: session resumption off, cached or by tickets (seen from a real rustls client),
//! and kernel TLS asked for, falling back to user space (counted) where the kernel has no `tls` module.

use crate::common;

use std::time::Duration;

use common::tls::{connect, echo_flush, exchange, temp_dir, TestCert};
use common::{bind_loopback, eventually};
use lariat::tls::{kernel_tls_available, kernel_tls_fallbacks, Resumption, TlsConfig};
use lariat::Server;
use rustls::HandshakeKind;
use tokio::io::AsyncWriteExt;

/// How the second of two connections from one client (sharing its session cache) was set up.
async fn second_handshake(resumption: Option<Resumption>) -> HandshakeKind {
    let cert = TestCert::write(&temp_dir("tls-resumption"));
    let mut config = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path).unwrap();
    if let Some(resumption) = resumption {
        config = config.with_resumption(resumption).unwrap();
    }
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .tls(Some(config))
        .serve([listener], echo_flush)
        .unwrap();
    let connector = cert.client(&[]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut tls = connect(&connector, addr).await.unwrap();
        // Reading the answer also takes in the TLS 1.3 tickets sent after the handshake.
        assert_eq!(exchange(&mut tls, b"ping", 4).await, b"ping");
        kinds.push(tls.get_ref().1.handshake_kind().unwrap());
        tls.shutdown().await.unwrap();
    }
    server.handle().stop();
    assert_eq!(kinds[0], HandshakeKind::Full);
    kinds[1]
}

#[tokio::test]
async fn resumption_off_makes_every_handshake_full() {
    assert_eq!(
        second_handshake(Some(Resumption::Off)).await,
        HandshakeKind::Full
    );
}

#[tokio::test]
async fn resumption_by_cache_or_tickets_skips_the_full_handshake() {
    assert_eq!(second_handshake(None).await, HandshakeKind::Resumed);
    assert_eq!(
        second_handshake(Some(Resumption::Cache { sessions: 16 })).await,
        HandshakeKind::Resumed
    );
    assert_eq!(
        second_handshake(Some(Resumption::Tickets)).await,
        HandshakeKind::Resumed
    );
}

#[tokio::test]
async fn kernel_tls_asked_for_falls_back_to_user_space_and_is_counted() {
    if kernel_tls_available() {
        eprintln!(
            "this kernel offers the tls ULP; this version still keeps sessions in user space, \
             which is what is checked"
        );
    } else {
        eprintln!("this kernel has no tls ULP (net.ipv4.tcp_available_ulp): checking the fallback");
    }
    let cert = TestCert::write(&temp_dir("tls-kernel"));
    let config = TlsConfig::from_pem_files(&cert.cert_path, &cert.key_path)
        .unwrap()
        .with_kernel_tls(true);
    assert!(config.server_config().enable_secret_extraction);
    let (listener, addr) = bind_loopback();
    let server = Server::builder()
        .tls(Some(config))
        .serve([listener], echo_flush)
        .unwrap();
    let before = kernel_tls_fallbacks();
    let connector = cert.client(&[]);
    for i in 0..3 {
        let mut tls = connect(&connector, addr).await.unwrap();
        let line = format!("line {i}\n");
        assert_eq!(
            exchange(&mut tls, line.as_bytes(), line.len()).await,
            line.as_bytes()
        );
        tls.shutdown().await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || kernel_tls_fallbacks()
            >= before + 3)
        .await,
        "{} fallbacks counted, expected 3",
        kernel_tls_fallbacks() - before
    );
    server.handle().stop();
}
