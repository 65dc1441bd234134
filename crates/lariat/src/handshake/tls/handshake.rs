//! The server side of a TLS handshake, driven over the accepted socket in the connection's task.

use std::io::ErrorKind::WouldBlock;
use std::sync::Arc;

use rustls::ServerConfig;

use super::session::Session;
use super::{TlsError, TlsStream};
use crate::Stream;

/// Runs the handshake on `io` (a plain socket) and returns the session over it. No deadline here: the
/// caller bounds the whole connection set-up with the handshake timeout.
///
/// Records that arrive with the client's last flight are decrypted into the session's plaintext and
/// read first by the connection. On a protocol error the client is told why (rustls' alert), if the
/// socket takes it now.
pub(crate) async fn handshake(
    io: Stream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream, TlsError> {
    let kernel_tls = config.enable_secret_extraction;
    let mut session = Box::new(Session::new(config)?);
    loop {
        loop {
            match session.send(&io) {
                Ok(()) => break,
                Err(e) if e.kind() == WouldBlock => io.writable().await?,
                Err(e) if session.error().is_some() => {
                    tracing::trace!(error = %e, "the TLS alert was not sent");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(e) = session.error() {
            return Err(TlsError::Rustls(e.clone()));
        }
        if !session.is_handshaking() {
            break;
        }
        match session.receive(&io) {
            Ok(()) if session.read_ended() && session.error().is_none() => {
                return Err(TlsError::Closed)
            }
            Ok(()) => {}
            Err(e) if e.kind() == WouldBlock => io.readable().await?,
            // Recorded in the session: the loop sends the alert, then reports it.
            Err(_) if session.error().is_some() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if kernel_tls {
        super::kernel::fall_back();
    }
    Ok(TlsStream::new(io, session))
}
