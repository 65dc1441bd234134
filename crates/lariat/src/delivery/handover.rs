//! Push delivery across a restart: a [`Messages`] stream handed to the successor with its undelivered
//! bytes and its mode, so the successor's stream goes on where this one stopped.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{Messages, Mode};
use crate::connection::split::{ReuniteError, WriteHalf};
use crate::handover::Refusal;
use crate::Connection;

/// Marks a state that carries a message stream's mode (then the handler's own state).
const TAG: &[u8] = b"lariat.messages/1\0";
/// The tag, the mode (kind and count) and the owed `Passive`.
const HEADER: usize = TAG.len() + 1 + 4 + 1;

/// A [`Messages::hand_over`] that did not happen: the stream and its write half, as they were, and why.
#[derive(Debug, thiserror::Error)]
#[error("message stream not handed over: {reason}")]
pub struct MessagesHandOverError<D> {
    /// The stream, undelivered bytes and mode unchanged: serve on.
    pub messages: Messages<D>,
    /// Its write half.
    pub writer: WriteHalf,
    /// Why.
    pub reason: Refusal,
}

impl<D> Messages<D>
where
    D: Decoder,
    D::Error: From<io::Error>,
{
    /// Hands the connection over to a restart's successor (see [`handover`](crate::handover)) with
    /// everything the stream read and did not deliver, its mode (a `Count(n)` budget carries what is
    /// left of it) and `state`. Call it between two messages, with `writer` (the stream's own write half)
    /// done writing. The successor's [`Messages::new`] on the resumed connection delivers the carried
    /// bytes first, in the carried mode; [`resumed_state`](Self::resumed_state) returns `state`.
    pub async fn hand_over(
        self,
        writer: WriteHalf,
        state: &[u8],
    ) -> Result<(), Box<MessagesHandOverError<D>>> {
        let Messages {
            read,
            decoder,
            framing_limit,
            buf,
            mode,
            flow,
            passive_due,
            eof,
            failed,
            done,
            drain,
        } = self;
        let rebuild = |read, writer, buf, reason| {
            Err(Box::new(MessagesHandOverError {
                messages: Messages {
                    read,
                    decoder,
                    framing_limit,
                    buf,
                    mode,
                    flow,
                    passive_due,
                    eof,
                    failed,
                    done,
                    drain,
                },
                writer,
                reason,
            }))
        };
        let conn = match read.reunite(writer) {
            Ok(conn) => conn,
            Err(ReuniteError(read, writer)) => {
                return rebuild(read, writer, buf, Refusal::NotWhole)
            }
        };
        let mut carried = Vec::with_capacity(HEADER + state.len());
        carried.extend_from_slice(TAG);
        let (kind, n) = match mode {
            Mode::Passive => (0, 0),
            Mode::Once => (1, 0),
            Mode::Count(n) => (2, n),
            Mode::Push => (3, 0),
        };
        carried.push(kind);
        carried.extend_from_slice(&n.to_le_bytes());
        carried.push(passive_due as u8);
        carried.extend_from_slice(state);
        match conn.hand_over_with(&carried, &buf).await {
            Ok(()) => Ok(()),
            Err(refused) => {
                let (read, writer) = refused.connection.into_split();
                rebuild(read, writer, buf, refused.reason)
            }
        }
    }

    /// The state the previous process handed this stream's connection over with
    /// ([`Messages::hand_over`]), if it was resumed here.
    pub fn resumed_state(&self) -> Option<Bytes> {
        let state = self.read.resumed_state()?;
        Some(match parse(&state) {
            Some(_) => state.slice(HEADER..),
            None => state,
        })
    }
}

/// The mode and owed `Passive` a state carries, if a message stream handed it over.
fn parse(state: &[u8]) -> Option<(Mode, bool)> {
    let rest = state.strip_prefix(TAG)?;
    let (&kind, rest) = rest.split_first()?;
    let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let passive_due = *rest.get(4)? != 0;
    let mode = match kind {
        0 => Mode::Passive,
        1 => Mode::Once,
        2 => Mode::Count(n),
        3 => Mode::Push,
        _ => return None,
    };
    Some((mode, passive_due))
}

/// What a resumed connection brings to a new message stream: the carried bytes, and the carried mode
/// if a message stream handed it over.
pub(super) fn resumed(conn: &mut Connection) -> (BytesMut, Option<(Mode, bool)>) {
    let read_ahead = conn.take_read_ahead();
    let mode = conn.resumed_state().as_deref().and_then(parse);
    (BytesMut::from(&read_ahead[..]), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_round_trips() {
        for (mode, due) in [
            (Mode::Passive, true),
            (Mode::Once, false),
            (Mode::Count(7), false),
            (Mode::Push, false),
        ] {
            let (kind, n) = match mode {
                Mode::Passive => (0, 0),
                Mode::Once => (1, 0),
                Mode::Count(n) => (2, n),
                Mode::Push => (3, 0),
            };
            let mut s = TAG.to_vec();
            s.push(kind);
            s.extend_from_slice(&n.to_le_bytes());
            s.push(due as u8);
            s.extend_from_slice(b"mine");
            assert_eq!(parse(&s), Some((mode, due)));
        }
        assert_eq!(parse(b"not a message stream"), None);
    }
}
