//! The built-in framings: raw chunks, lines, and Erlang's `{packet, 1 | 2 | 4}` (a big-endian length
//! header). Each is a `tokio_util` [`Decoder`] with a hard size limit, so a peer can never make a frame
//! buffer grow without bound: an oversized frame is an error, not an allocation.
//!
//! Each is an [`Encoder`] too (both [`Framing`] and [`FramingDecoder`]), so writing frames is
//! `FramedWrite::new(write_half, Framing::lines())` or an [`Outbox`](super::Outbox), never a
//! hand-built `[len, payload]` or `line + "\n"`. The encoder refuses what the peer's decoder would:
//! a frame over the limit, a line holding a newline.
//!
//! ```no_run
//! use futures_util::SinkExt;
//! use lariat::delivery::{FrameError, Framing};
//! use tokio_util::codec::FramedWrite;
//!
//! async fn greet(conn: lariat::Connection) -> Result<(), FrameError> {
//!     let (_read, write) = conn.into_split();
//!     let mut out = FramedWrite::new(write, Framing::packet(2));
//!     out.send("hello").await?; // b"\x00\x05hello"
//!     Ok(())
//! }
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The default largest frame (and raw chunk, and line): 64 KiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// How the bytes of a connection are cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Whatever arrived, in chunks of at most `max` bytes.
    Raw {
        /// The largest chunk delivered at once.
        max: usize,
    },
    /// Lines ending in `\n` (a preceding `\r` is kept); the terminator is not part of the message.
    Lines {
        /// The longest line, terminator excluded. Longer is an error.
        max: usize,
    },
    /// A big-endian length header of 1, 2 or 4 bytes, then that many bytes (Erlang's `{packet, N}`).
    Packet {
        /// The header's size: 1, 2 or 4.
        header: u8,
        /// The largest payload. A header announcing more is an error, found before anything is buffered.
        max: usize,
    },
}

/// A frame the peer sent broke the framing's limits or rules.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A line longer than the limit (no terminator within it).
    #[error("line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// A length header announcing more than the limit.
    #[error("frame of {len} bytes announced, limit {max}")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer closed in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
    /// A message to send does not fit the framing (a line holding a newline; a packet longer than its
    /// header can announce): sending it would break the stream for the peer.
    #[error("cannot send as a frame: {0}")]
    Unencodable(&'static str),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Framing {
    /// Raw chunks of at most [`DEFAULT_MAX_FRAME`].
    pub fn raw() -> Framing {
        Framing::Raw {
            max: DEFAULT_MAX_FRAME,
        }
    }

    /// Lines of at most [`DEFAULT_MAX_FRAME`].
    pub fn lines() -> Framing {
        Framing::Lines {
            max: DEFAULT_MAX_FRAME,
        }
    }

    /// `{packet, header}` frames of at most [`DEFAULT_MAX_FRAME`].
    ///
    /// # Panics
    /// If `header` is not 1, 2 or 4.
    pub fn packet(header: u8) -> Framing {
        assert!(
            matches!(header, 1 | 2 | 4),
            "a packet header is 1, 2 or 4 bytes"
        );
        Framing::Packet {
            header,
            max: DEFAULT_MAX_FRAME,
        }
    }

    /// Appends `payload` to `dst` as one frame: raw as is, a line with its `\n`, a packet behind its
    /// big-endian length. Refused, with nothing appended, when it is over the limit (`max`) or does not
    /// fit the framing.
    pub fn encode_frame(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        match *self {
            Framing::Raw { .. } => dst.extend_from_slice(payload),
            Framing::Lines { max } => {
                if payload.len() > max {
                    return Err(FrameError::LineTooLong { max });
                }
                if payload.contains(&b'\n') {
                    return Err(FrameError::Unencodable("a line holds a newline"));
                }
                dst.reserve(payload.len() + 1);
                dst.extend_from_slice(payload);
                dst.put_u8(b'\n');
            }
            Framing::Packet { header, max } => {
                let len = payload.len();
                if len > max {
                    return Err(FrameError::FrameTooLarge { len, max });
                }
                dst.reserve(header as usize + len);
                match header {
                    1 => dst.put_u8(u8::try_from(len).map_err(|_| {
                        FrameError::Unencodable("over 255 bytes for a 1-byte header")
                    })?),
                    2 => dst.put_u16(u16::try_from(len).map_err(|_| {
                        FrameError::Unencodable("over 65535 bytes for a 2-byte header")
                    })?),
                    _ => {
                        dst.put_u32(u32::try_from(len).map_err(|_| {
                            FrameError::Unencodable("over 4 GiB for a 4-byte header")
                        })?)
                    }
                }
                dst.extend_from_slice(payload);
            }
        }
        Ok(())
    }

    /// The most bytes this framing may hold for one unfinished frame.
    pub fn max_buffered(&self) -> usize {
        match *self {
            Framing::Raw { max } => max,
            Framing::Lines { max } => max + 1,
            Framing::Packet { header, max } => max + header as usize,
        }
    }
}

/// The decoder for one connection's [`Framing`]: the framing plus how far a line search got, so bytes
/// arriving one at a time are scanned once each, not again on every read (a slow peer must not make
/// the server rescan a long line thousands of times).
#[derive(Debug, Clone)]
pub struct FramingDecoder {
    framing: Framing,
    /// Bytes at the front of the buffer already searched for `\n`.
    scanned: usize,
}

impl FramingDecoder {
    /// A decoder for `framing`.
    pub fn new(framing: Framing) -> FramingDecoder {
        FramingDecoder {
            framing,
            scanned: 0,
        }
    }

    /// The framing it decodes.
    pub fn framing(&self) -> Framing {
        self.framing
    }
}

impl Decoder for FramingDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.framing {
            Framing::Raw { max } => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len().min(max.max(1));
                Ok(Some(buf.split_to(n).freeze()))
            }
            Framing::Lines { max } => {
                // Only the first `max + 1` bytes can hold the terminator of a line within the limit, and
                // the first `scanned` of them are known to hold none.
                let window_end = buf.len().min(max + 1);
                let from = self.scanned.min(window_end);
                match buf[from..window_end].iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        let end = from + at;
                        self.scanned = 0;
                        let line = buf.split_to(end + 1).freeze();
                        Ok(Some(line.slice(..end)))
                    }
                    None if buf.len() > max => Err(FrameError::LineTooLong { max }),
                    None => {
                        self.scanned = window_end;
                        Ok(None)
                    }
                }
            }
            Framing::Packet { header, max } => {
                let header = header as usize;
                if buf.len() < header {
                    return Ok(None);
                }
                let len = match header {
                    1 => buf[0] as usize,
                    2 => u16::from_be_bytes([buf[0], buf[1]]) as usize,
                    _ => u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
                };
                if len > max {
                    return Err(FrameError::FrameTooLarge { len, max });
                }
                if buf.len() < header + len {
                    // The buffer grows with what arrives, never with what a header only announces:
                    // reserving the announced length would let a 4-byte header cost `max` bytes.
                    return Ok(None);
                }
                buf.advance(header);
                Ok(Some(buf.split_to(len).freeze()))
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: buf.len(),
            }),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for Framing {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_frame(item.as_ref(), dst)
    }
}

/// The same encoder as [`Framing`]'s, so one value serves `tokio_util`'s `Framed` both ways.
impl<T: AsRef<[u8]>> Encoder<T> for FramingDecoder {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.framing.encode_frame(item.as_ref(), dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, bytes: &[u8]) -> Result<Vec<Bytes>, FrameError> {
        let mut framing = FramingDecoder::new(framing);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = framing.decode_eof(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn every_framing_decodes_what_it_encodes_and_refuses_what_would_break_it() {
        for framing in [
            Framing::raw(),
            Framing::lines(),
            Framing::packet(1),
            Framing::packet(2),
            Framing::packet(4),
        ] {
            let mut wire = BytesMut::new();
            let mut encoder = framing;
            for msg in [&b"one"[..], b"", b"three\r"] {
                encoder.encode(msg, &mut wire).unwrap();
            }
            let frames = decode_all(framing, &wire).unwrap();
            let expect: Vec<&[u8]> = match framing {
                // Raw has no boundaries: the bytes come back in one chunk.
                Framing::Raw { .. } => vec![b"onethree\r"],
                _ => vec![b"one", b"", b"three\r"],
            };
            assert_eq!(frames, expect, "{framing:?}");
        }
        let mut wire = BytesMut::new();
        assert!(matches!(
            Framing::lines().encode(&b"a\nb"[..], &mut wire),
            Err(FrameError::Unencodable(_))
        ));
        assert!(matches!(
            Framing::Lines { max: 2 }.encode(&b"abc"[..], &mut wire),
            Err(FrameError::LineTooLong { max: 2 })
        ));
        assert!(matches!(
            Framing::Packet {
                header: 1,
                max: 1000
            }
            .encode(vec![0u8; 256], &mut wire),
            Err(FrameError::Unencodable(_))
        ));
        assert!(matches!(
            Framing::packet(2).encode(vec![0u8; DEFAULT_MAX_FRAME + 1], &mut wire),
            Err(FrameError::FrameTooLarge { .. })
        ));
        assert!(wire.is_empty(), "a refused frame appends nothing");
    }

    #[test]
    fn raw_chunks_are_bounded() {
        let frames = decode_all(Framing::Raw { max: 4 }, b"abcdefghij").unwrap();
        assert_eq!(frames, vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn lines_split_and_keep_cr() {
        let frames = decode_all(Framing::lines(), b"one\ntwo\r\n\n").unwrap();
        assert_eq!(frames, vec!["one", "two\r", ""]);
        assert!(matches!(
            decode_all(Framing::lines(), b"unterminated"),
            Err(FrameError::Truncated { buffered: 12 })
        ));
    }

    #[test]
    fn an_endless_line_is_an_error_at_the_limit() {
        let mut framing = FramingDecoder::new(Framing::Lines { max: 8 });
        let mut buf = BytesMut::from(&b"12345678"[..]);
        assert!(framing.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"9");
        assert!(matches!(
            framing.decode(&mut buf),
            Err(FrameError::LineTooLong { max: 8 })
        ));
        // A line of exactly the limit passes.
        let mut buf = BytesMut::from(&b"12345678\n"[..]);
        assert_eq!(framing.decode(&mut buf).unwrap().unwrap(), "12345678");
    }

    #[test]
    fn a_line_fed_a_byte_at_a_time_is_scanned_once() {
        let mut framing = FramingDecoder::new(Framing::Lines { max: 1 << 20 });
        let mut buf = BytesMut::new();
        for _ in 0..100_000 {
            buf.extend_from_slice(b"x");
            assert!(framing.decode(&mut buf).unwrap().is_none());
            assert_eq!(framing.scanned, buf.len());
        }
        buf.extend_from_slice(b"\nnext");
        assert_eq!(framing.decode(&mut buf).unwrap().unwrap().len(), 100_000);
        assert_eq!(framing.scanned, 0);
        assert_eq!(&buf[..], b"next");
    }

    #[test]
    fn packets_of_each_header_size() {
        assert_eq!(
            decode_all(Framing::packet(1), b"\x03abc\x00\x01z").unwrap(),
            vec!["abc", "", "z"]
        );
        assert_eq!(
            decode_all(Framing::packet(2), b"\x00\x02hi").unwrap(),
            vec!["hi"]
        );
        assert_eq!(
            decode_all(Framing::packet(4), b"\x00\x00\x00\x01!").unwrap(),
            vec!["!"]
        );
    }

    #[test]
    fn an_announced_length_reserves_nothing_before_it_arrives() {
        let max = 64 << 20;
        let mut framing = FramingDecoder::new(Framing::Packet { header: 4, max });
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&(max as u32).to_be_bytes());
        buf.extend_from_slice(b"x");
        assert!(framing.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() < 4096,
            "a 64 MiB header with one byte sent grew the buffer to {} bytes",
            buf.capacity()
        );
    }

    #[test]
    fn an_oversized_header_is_refused_before_buffering() {
        let mut framing = FramingDecoder::new(Framing::Packet {
            header: 4,
            max: 1024,
        });
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xff"[..]);
        assert!(matches!(
            framing.decode(&mut buf),
            Err(FrameError::FrameTooLarge {
                len: 4294967295,
                max: 1024
            })
        ));
        assert!(buf.capacity() < 4096);
    }
}
