//! The TLS measurements' client (this process, pinned to the client CPU): a rustls client that does
//! full handshakes only (no session resumption) and skips certificate and signature checks, so that
//! its CPU goes to the key exchange and the client core is not what limits the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The request each connection sends once: HTTP/1.1, kept alive or closed.
fn request(keep_alive: bool) -> &'static [u8] {
    if keep_alive {
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    }
}

/// The body both servers answer with.
const BODY: &[u8] = b"Hello, world!";

/// A connector for full handshakes only, offering HTTP/1.1 by ALPN.
pub fn connector() -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("rustls client versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoCheck(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects, completes a full handshake, sends one request and reads its answer (or, `echo`, one
/// line echoed).
async fn one(
    connector: &TlsConnector,
    addr: SocketAddr,
    keep_alive: bool,
    echo: bool,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await.context("handshake")?;
    if keep_alive && echo {
        tls.write_all(b"ping\n").await?;
        tls.flush().await?;
        let mut back = [0u8; 5];
        tls.read_exact(&mut back)
            .await
            .context("reading the echo")?;
        if &back != b"ping\n" {
            anyhow::bail!("the echo differs");
        }
        return Ok(tls);
    }
    tls.write_all(request(keep_alive)).await?;
    tls.flush().await?;
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !answer.ends_with(BODY) {
        let n = tls.read(&mut buf).await.context("reading the answer")?;
        if n == 0 {
            anyhow::bail!("closed before the answer");
        }
        answer.extend_from_slice(&buf[..n]);
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        anyhow::bail!("unexpected answer: {}", String::from_utf8_lossy(&answer));
    }
    Ok(tls)
}

/// What the handshake loop did.
#[derive(Debug, Default)]
pub struct Handshakes {
    pub done: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// `concurrency` loops for `duration`, each: connect, full handshake, one request with
/// `Connection: close`, read the answer, close.
pub async fn handshakes(addr: SocketAddr, concurrency: usize, duration: Duration) -> Handshakes {
    let connector = match connector() {
        Ok(c) => c,
        Err(e) => {
            return Handshakes {
                failed: 1,
                first_error: Some(format!("{e:#}")),
                ..Handshakes::default()
            }
        }
    };
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let connector = connector.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut failed, mut first_error) = (0u64, None);
                while Instant::now() < end {
                    match one(&connector, addr, false, false).await {
                        Ok(tls) => {
                            done.fetch_add(1, Relaxed);
                            drop(tls);
                        }
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (failed, first_error)
            })
        })
        .collect();
    let mut result = Handshakes::default();
    for task in tasks {
        if let Ok((failed, err)) = task.await {
            result.failed += failed;
            if result.first_error.is_none() {
                result.first_error = err;
            }
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.done = done.load(Relaxed);
    result
}

/// Opens `count` TLS connections, `concurrency` at a time, each with one keep-alive request
/// answered (or, `echo`, one line echoed), and returns them open (idle), with the failures.
pub async fn open_idle(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    echo: bool,
) -> anyhow::Result<(Vec<TlsStream<TcpStream>>, u64, Option<String>)> {
    let connector = connector()?;
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let connector = connector.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let (mut open, mut failed, mut first_error) = (Vec::new(), 0u64, None);
                while next.fetch_add(1, Relaxed) < count as u64 {
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        one(&connector, addr, true, echo),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => open.push(tls),
                        Ok(Err(e)) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                        Err(_) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| "took over 10 s".to_string());
                        }
                    }
                }
                (open, failed, first_error)
            })
        })
        .collect();
    let (mut all, mut failed, mut first_error) = (Vec::with_capacity(count), 0, None);
    for task in tasks {
        let (open, f, e) = task.await.context("an idle-connection task panicked")?;
        all.extend(open);
        failed += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    Ok((all, failed, first_error))
}

/// Accepts any certificate and signature: the benchmark measures the server, not the client's checks.
#[derive(Debug)]
struct NoCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
