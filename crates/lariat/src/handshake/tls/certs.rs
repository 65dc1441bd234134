//! The certificate a [`TlsConfig`](super::TlsConfig) serves, swappable while the server runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// Hands rustls the current certificate for each handshake; [`reload`](Self::reload) replaces it.
#[derive(Debug)]
pub(crate) struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub(crate) fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<CertStore, TlsError> {
        let current = RwLock::new(Arc::new(read_pair(&cert_path, &key_path, &provider)?));
        Ok(CertStore {
            cert_path,
            key_path,
            provider,
            current,
        })
    }

    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert_path, &self.key_path, &self.provider)?;
        // A poisoned lock only means a panic elsewhere while swapping an `Arc`: the value is whole.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(cert_path, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e.to_string()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| pem_error(key_path, e.to_string()))?;
    let pair = CertifiedKey::new(certs, key);
    // Catches a key that belongs to another certificate now, not at the first handshake.
    pair.keys_match()
        .map_err(|e| pem_error(key_path, format!("does not match the certificate: {e}")))?;
    Ok(pair)
}
