//! The certificates: a self-signed ECDSA P-256 or RSA-2048 pair for `localhost`, made with openssl.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::Cert;

/// A self-signed certificate and key for `localhost`, as PEM files.
pub(super) struct Pair {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

pub(super) fn make_pair(dir: &Path, cert: Cert) -> anyhow::Result<Pair> {
    let tag = match cert {
        Cert::EcdsaP256 => "ecdsa",
        Cert::Rsa2048 => "rsa",
    };
    let pair = Pair {
        cert: dir.join(format!("{tag}-cert.pem")),
        key: dir.join(format!("{tag}-key.pem")),
    };
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(cert.newkey())
        .arg("-keyout")
        .arg(&pair.key)
        .arg("-out")
        .arg(&pair.cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl req (the openssl command makes the certificates)")?;
    if !status.success() {
        bail!("openssl req failed for {}", cert.name());
    }
    Ok(pair)
}
