//! `echo` on the message API (`--delivery`): every mode of push delivery, drivable from outside.

use std::future::Future;
use std::io;

use futures_util::StreamExt;
use lariat::delivery::{Event, Framing, Messages, Mode};
use lariat::Connection;
use tokio::io::AsyncWriteExt;

use super::READ_BUFFER;

/// Echoes raw chunks (at most [`READ_BUFFER`] bytes each) until EOF, receiving them in `mode`: `Passive`
/// pulls each chunk; `Once` and `Count(n)` re-arm when spent, as an Erlang handler does. At a restart
/// the stream moves to the successor between two chunks, with the bytes it read ahead and its mode.
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` stores its argument twice
pub fn echo(conn: Connection, mode: Mode) -> impl Future<Output = io::Result<()>> {
    async move {
        let framing = Framing::Raw { max: READ_BUFFER };
        let mut offer = Some(conn.hand_over_signal());
        let (mut messages, mut writer) = Messages::new(conn, framing, mode);
        loop {
            let event = tokio::select! {
                biased;
                _ = async { offer.as_mut().expect("guarded").await }, if offer.is_some() => {
                    // Asked once: a hand-over that fails leaves the connection to drain here.
                    offer = None;
                    match messages.hand_over(writer, b"").await {
                        Ok(()) => return Ok(()),
                        Err(refused) => {
                            tracing::debug!(reason = %refused.reason, "connection stays; it drains here");
                            let refused = *refused;
                            messages = refused.messages;
                            writer = refused.writer;
                        }
                    }
                    continue;
                }
                event = async {
                    match mode {
                        Mode::Passive => messages.recv().await,
                        _ => messages.next().await,
                    }
                } => event,
            };
            match event {
                Some(Event::Data(chunk)) => {
                    writer.write_all(&chunk).await?;
                    // For TLS: send the records now, before waiting for the next message.
                    writer.flush().await?;
                    if mode == Mode::Once {
                        messages.set_mode(Mode::Once);
                    }
                }
                Some(Event::Passive) => messages.set_mode(mode),
                // Not asked for (`with_drain_event`); the drain's deadline still applies.
                Some(Event::Draining) => {}
                Some(Event::Closed) | None => return Ok(()),
                Some(Event::Error(e)) => return Err(io::Error::other(e)),
            }
        }
    }
}
