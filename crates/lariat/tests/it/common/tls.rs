//! TLS helpers: throwaway certificates (rcgen) written as PEM files, and rustls clients (tokio-rustls).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost`, as PEM files in a fresh directory.
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: CertificateDer<'static>,
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lariat-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestCert {
    /// A new key and certificate, written to `dir/cert.pem` and `dir/key.pem` (replacing what is there).
    pub fn write(dir: &std::path::Path) -> TestCert {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
        TestCert {
            cert_path,
            key_path,
            der: cert.der().clone(),
        }
    }

    /// A rustls client that trusts only this certificate, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// Connects and completes a TLS handshake for `localhost`.
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Writes `data` (and flushes) while reading `back_len` bytes back, so neither side's buffers fill;
/// panics if the answer does not come within 10 s.
pub async fn exchange<S>(stream: &mut S, data: &[u8], back_len: usize) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut r, mut w) = tokio::io::split(stream);
    let mut back = vec![0u8; back_len];
    let (_, read) = tokio::join!(
        async {
            w.write_all(data).await.unwrap();
            w.flush().await.unwrap();
        },
        tokio::time::timeout(std::time::Duration::from_secs(10), r.read_exact(&mut back))
    );
    read.expect("an answer in time").unwrap();
    back
}

/// Echoes with plain reads, flushing each write (a TLS handler must, before it waits), and shuts down
/// (close_notify) at EOF.
pub async fn echo_flush(mut conn: lariat::Connection) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return conn.shutdown().await;
        }
        conn.write_all(&buf[..n]).await?;
        conn.flush().await?;
    }
}
