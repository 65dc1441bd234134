//! The server side of a TLS handshake, driven over the accepted socket in the connection's task.

use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use super::stream::{process, SocketReader, SocketWriter};
use super::{TlsError, TlsStream};
use crate::Stream;

/// Runs the handshake on `io` (a plain socket) and returns the session over it. No deadline here: the
/// caller bounds the whole connection set-up with the handshake timeout.
pub(crate) async fn handshake(
    io: Stream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream, TlsError> {
    let mut session = ServerConnection::new(config)?;
    loop {
        while session.wants_write() {
            match session.write_tls(&mut SocketWriter(&io)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => io.writable().await?,
                Err(e) => return Err(e.into()),
            }
        }
        if !session.is_handshaking() {
            break;
        }
        match session.read_tls(&mut SocketReader(&io)) {
            Ok(0) => return Err(TlsError::Closed),
            // On a protocol error the client is told why, if the socket takes the alert now.
            Ok(_) => process(&mut session, &io)?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => io.readable().await?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(TlsStream::new(io, session))
}
