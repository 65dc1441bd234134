//! The server side of a TLS handshake, driven over the accepted socket in the connection's task.

use std::io::ErrorKind::WouldBlock;
use std::sync::Arc;

use super::session::Session;
use super::{TlsConfig, TlsError, TlsInfo, TlsStream};
use crate::Stream;

/// Runs the handshake on `io` (a plain socket) and returns the session over it. No deadline here: the
/// caller bounds the whole connection set-up with the handshake timeout.
///
/// Records that arrive with the client's last flight are decrypted into the session's plaintext and
/// read first by the connection. On a protocol error the client is told why (rustls' alert), if the
/// socket takes it now.
///
/// Once the last flight (session tickets included) is on the wire, a TLS 1.3 session's record layer
/// moves to lariat's (unless the configuration keeps sessions in rustls), and what the handshake
/// negotiated is kept once, in the returned [`TlsInfo`] (shared by the stream and the registry).
pub(crate) async fn handshake(io: Stream, tls: &TlsConfig) -> Result<TlsStream, TlsError> {
    let mut session = Box::new(Session::new(tls.server_config().clone())?);
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
    let info = {
        let server_name = session.take_server_name();
        let conn = session.conn();
        TlsInfo {
            server_name,
            alpn: conn.and_then(|c| c.alpn_protocol()).map(<[u8]>::to_vec),
            version: conn
                .and_then(|c| c.protocol_version())
                .map(|v| format!("{v:?}")),
        }
    };
    if tls.own_records() {
        session.take_over_records()?;
    }
    if tls.kernel_tls() {
        super::kernel::fall_back();
    }
    Ok(TlsStream::new(io, session, Arc::new(info)))
}
