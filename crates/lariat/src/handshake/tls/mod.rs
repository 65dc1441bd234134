//! TLS with rustls, in the connection's own task.
//!
//! [`TlsConfig`] holds a rustls server configuration whose certificate can be replaced while the server
//! runs ([`TlsConfig::reload`]); [`ServerBuilder::tls`](crate::ServerBuilder::tls) (every connection)
//! or a [`Router`](crate::route::Router) route (connections that open with a ClientHello) runs the
//! handshake under the server's handshake timeout, and the handler gets a [`Connection`](crate::Connection)
//! that reads and writes plaintext, with the SNI name and ALPN protocol in
//! [`Connection::tls`](crate::Connection::tls).
//!
//! Nothing the client sends is lost in the hand-off: records that arrive with the handshake's last flight
//! (a client that writes the instant the handshake completes) stay in the rustls session, which moves
//! into the connection and is read before the socket.
//!
//! The stream adapter is lariat's own (a few hundred lines over rustls' sans-I/O API) rather than
//! tokio-rustls, so that a TLS connection keeps what lariat's plain ones offer: buffer-free waiting
//! (`readable`, `try_read`) for cheap idle connections, and split halves for push delivery.
//!
//! After a TLS 1.3 handshake the record layer leaves rustls: lariat seals and opens the records with
//! the suite's AEAD as rustls builds it, and an idle session keeps only its keys (see
//! [`TlsConfig::with_session_in_rustls`]).

mod certs;
mod handshake;
mod hello;
mod kernel;
mod records;
mod scratch;
mod session;
mod stream;

/// The crypto provider, chosen when lariat is compiled: `aws-lc-rs` (faster RSA signing, so more
/// full handshakes per core) when that feature is on, else `ring`. Features add up, so with both on
/// aws-lc-rs is used.
#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as provider;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use rustls::crypto::ring as provider;
#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!(
    "lariat needs a TLS crypto provider: turn on its `ring` (default) or `aws-lc-rs` feature"
);

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;

use certs::CertStore;
pub(crate) use handshake::handshake;
pub use kernel::{kernel_tls_available, kernel_tls_fallbacks};
#[doc(hidden)]
pub use records::fuzzing as records_fuzzing;
#[cfg(feature = "http")]
pub(crate) use records::Records;
pub use stream::TlsStream;

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// rustls refused the configuration or the handshake.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The peer closed before the handshake finished.
    #[error("the peer closed during the TLS handshake")]
    Closed,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A TLS server configuration: rustls' [`ServerConfig`], and where its certificate came from so that it
/// can be reloaded. Cheap to clone (the clones share the certificate).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    store: Option<Arc<CertStore>>,
    /// Kernel TLS was asked for ([`with_kernel_tls`](Self::with_kernel_tls)).
    kernel_tls: bool,
    /// The whole session stays in rustls ([`with_session_in_rustls`](Self::with_session_in_rustls)).
    in_rustls: bool,
}

impl TlsConfig {
    /// Loads a certificate chain and its private key from PEM files (PKCS#8, PKCS#1 or SEC1 key). TLS 1.2
    /// and 1.3, rustls' safe defaults, no client certificates, with the crypto provider lariat was built
    /// with (feature `aws-lc-rs`, else `ring`).
    pub fn from_pem_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<TlsConfig, TlsError> {
        let provider = Arc::new(provider::default_provider());
        let store = Arc::new(CertStore::load(cert.into(), key.into(), provider.clone())?);
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        // lariat's record layer takes the traffic keys after each TLS 1.3 handshake.
        server.enable_secret_extraction = true;
        Ok(TlsConfig {
            server: Arc::new(server),
            store: Some(store),
            kernel_tls: false,
            in_rustls: false,
        })
    }

    /// Wraps a rustls configuration built elsewhere (client certificates, custom resolvers…).
    /// [`reload`](Self::reload) then has no files to read. 0-RTT early data is turned off: lariat does
    /// not read it, and accepting it would lose those bytes (and invite replays). Secret extraction is
    /// turned on for lariat's record layer (see [`with_session_in_rustls`](Self::with_session_in_rustls));
    /// a configuration that had it on already asks for kernel TLS, as
    /// [`with_kernel_tls`](Self::with_kernel_tls) does.
    pub fn from_server_config(mut server: Arc<ServerConfig>) -> TlsConfig {
        if server.max_early_data_size > 0 {
            tracing::warn!("TLS early data (0-RTT) is not supported; turned off");
            Arc::make_mut(&mut server).max_early_data_size = 0;
        }
        let kernel_tls = server.enable_secret_extraction;
        if !kernel_tls {
            Arc::make_mut(&mut server).enable_secret_extraction = true;
        }
        TlsConfig {
            server,
            store: None,
            kernel_tls,
            in_rustls: false,
        }
    }

    /// Keeps every session whole in rustls (`true`), or (`false`, the default) moves a TLS 1.3
    /// session's record layer into lariat after its handshake: rustls' AEAD of the negotiated suite
    /// seals and opens the records, rustls' key schedule answers key updates, and an idle session
    /// keeps only its keys, IVs and sequence numbers (about 1 KiB less per idle connection, and with
    /// `lariat::http` an idle TLS connection sleeps in the server's parking lot like a plain one).
    /// TLS 1.2 sessions always stay in rustls. Keeping them in rustls also keeps
    /// [`TlsStream::with_session`] working after the handshake (client certificates).
    ///
    /// The record layer needs rustls' secret extraction (`enable_secret_extraction`): the traffic
    /// keys leave rustls' state for lariat's, in the same process.
    pub fn with_session_in_rustls(mut self, keep: bool) -> Self {
        self.in_rustls = keep;
        Arc::make_mut(&mut self.server).enable_secret_extraction = !keep || self.kernel_tls;
        self
    }

    /// Whether lariat's record layer takes TLS 1.3 sessions after their handshake.
    pub(crate) fn own_records(&self) -> bool {
        !self.in_rustls && self.server.enable_secret_extraction
    }

    /// Whether kernel TLS was asked for.
    pub(crate) fn kernel_tls(&self) -> bool {
        self.kernel_tls
    }

    /// The ALPN protocols offered, in order of preference (e.g. `h2`, `http/1.1`). The one chosen is in
    /// [`TlsInfo::alpn`].
    pub fn with_alpn<P: Into<Vec<u8>>>(mut self, protocols: impl IntoIterator<Item = P>) -> Self {
        Arc::make_mut(&mut self.server).alpn_protocols =
            protocols.into_iter().map(Into::into).collect();
        self
    }

    /// How returning clients may skip the full handshake (see [`Resumption`]). rustls' default, kept
    /// unless this is called, is [`Resumption::Cache`] of 256 sessions.
    ///
    /// Fails only if the ticket key cannot be made (no system randomness).
    pub fn with_resumption(mut self, resumption: Resumption) -> Result<Self, TlsError> {
        let server = Arc::make_mut(&mut self.server);
        match resumption {
            Resumption::Off => {
                server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                server.ticketer = Arc::new(NoTickets);
                server.send_tls13_tickets = 0;
            }
            Resumption::Cache { sessions } => {
                server.session_storage = rustls::server::ServerSessionMemoryCache::new(sessions);
                server.ticketer = Arc::new(NoTickets);
                server.send_tls13_tickets = 2;
            }
            Resumption::Tickets => {
                let ticketer = provider::Ticketer::new()?;
                server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                server.ticketer = ticketer;
                server.send_tls13_tickets = 2;
            }
        }
        Ok(self)
    }

    /// Asks for kernel TLS: after each handshake the session's keys would go to the kernel
    /// (`TCP_ULP` "tls"), which then encrypts and decrypts, so an idle connection costs the process
    /// nothing but its socket. Sessions stay in user space where the kernel has no `tls` module
    /// ([`kernel_tls_available`]) and, in this version, everywhere (lariat's own record layer, the
    /// place where the kernel hand-off would plug in, serves them): each such connection is counted
    /// ([`kernel_tls_fallbacks`]) and the first logged once. Turns on rustls' secret extraction (a
    /// configuration from [`from_server_config`](Self::from_server_config) with
    /// `enable_secret_extraction` set asks for kernel TLS too).
    pub fn with_kernel_tls(mut self, on: bool) -> Self {
        self.kernel_tls = on;
        Arc::make_mut(&mut self.server).enable_secret_extraction = on || !self.in_rustls;
        self
    }

    /// Reads the certificate and key files again and serves the new pair to every handshake from now on
    /// (connections already established keep theirs). On error the old pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        match &self.store {
            Some(store) => store.reload(),
            None => Ok(()),
        }
    }

    /// The rustls configuration.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }
}

/// How a client that was served before may resume its session with an abbreviated handshake (no
/// certificate signature, no new key exchange for TLS 1.2): cheaper for both sides, at the cost of
/// what the server keeps or encrypts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// Every handshake is a full one; the server keeps nothing and issues no tickets (the cheapest
    /// full handshake: no tickets to encrypt and send).
    Off,
    /// Sessions kept in the server's memory, up to `sessions` (the oldest forgotten first): TLS 1.2
    /// session ids and TLS 1.3 tickets that name a cached session.
    Cache {
        /// How many sessions are kept.
        sessions: usize,
    },
    /// Stateless tickets: the session is encrypted into the ticket with a key that rotates every 6
    /// hours; the server keeps nothing per session. Works across the processes of one server only if
    /// they share the key, which this does not: each process has its own.
    Tickets,
}

/// Issues no tickets (rustls' own type for this is private).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// What a TLS connection negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if it sent one.
    pub server_name: Option<String>,
    /// The application protocol agreed by ALPN, if any.
    pub alpn: Option<Vec<u8>>,
    /// The protocol version, e.g. `TLSv1_3`.
    pub version: Option<String>,
}
