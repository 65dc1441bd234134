//! Push delivery: a connection as a stream of framed messages, Erlang's `{active, false | once | N |
//! true}`, without its two dangers.
//!
//! - **No early bytes, no stranger's bytes.** Nothing is read from the socket until the handler polls the
//!   stream (or calls [`Messages::recv`]), and only the handler holds it, so every byte reaches its owner
//!   (no fast first packet lost to a hand-off that reads ahead). [`Messages::into_inner`] gives back
//!   every byte read but not yet delivered, so switching back to plain reads loses and reorders nothing.
//! - **Bounded memory, real back-pressure.** Undelivered bytes are kept raw and decoded one message at a
//!   time as it is delivered, so the "mailbox" is a byte buffer bounded by [`FlowControl`]: reading ahead
//!   stops at the high watermark and resumes at the low one; a handler that falls behind stops the reads
//!   altogether, the kernel's receive buffer fills, the TCP window closes and the sender blocks.
//!   An idle connection holds no buffer.
//!
//! Modes ([`Mode`]) decide what [`Stream::poll_next`](futures_util::Stream) delivers: `Passive` nothing
//! (pull with [`Messages::recv`]), `Once` one message then passive, `Count(n)` n messages then a
//! [`Event::Passive`] event, `Push` everything. [`Messages::set_mode`] changes it at any time.
//!
//! - **`Push` is already back-pressured**: nothing is read unless the stream is polled, so a handler that
//!   is busy reads nothing. `Count(n)` is worth its re-arm only when the handler wants a checkpoint every
//!   n messages (to re-check a rate limit or a quota, switch framings, or hand the connection over) in
//!   the same loop as its data.
//! - **`Passive` returns `Pending` from `poll_next` without registering a waker** (nothing can change
//!   until the mode does, which takes `&mut self`): in a `select!` it simply never fires. Pull with
//!   [`Messages::recv`] instead. (With [`Messages::with_drain_event`], the drain alone can still wake it.)
//! - **Cancel-safe**: [`Messages::recv`] and `StreamExt::next` keep every byte read and every decoded
//!   message in the `Messages` itself, so dropping the future (a `select!` whose other branch won)
//!   loses nothing; the next call carries on.
//! - **Writing frames**: every [`Framing`] is also a `tokio_util` `Encoder` (`FramedWrite::new(writer,
//!   Framing::lines())`), and an [`Outbox`] is a cloneable writer with a bounded queue for fan-out:
//!   many tasks send to one connection, and a client that does not read cannot make the server buffer
//!   without bound.
//! - **The drain as an event**: [`Messages::with_drain_event`] delivers [`Event::Draining`] once when
//!   the server begins to drain, in the same loop as the data (Erlang's one mailbox).
//!   [`Messages::meta`] gives the connection's metadata and its [`DrainSignal`](crate::DrainSignal).
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use lariat::delivery::{Event, Framing, Messages, Mode};
//! use tokio::io::AsyncWriteExt;
//!
//! async fn handler(conn: lariat::Connection) -> std::io::Result<()> {
//!     let (messages, mut writer) = Messages::new(conn, Framing::lines(), Mode::Push);
//!     let mut messages = messages.with_drain_event();
//!     while let Some(event) = messages.next().await {
//!         match event {
//!             Event::Data(line) => writer.write_all(&[&line[..], b"\n"].concat()).await?,
//!             // The server is draining: say goodbye and end the conversation.
//!             Event::Draining => {
//!                 writer.write_all(b"bye\n").await?;
//!                 break;
//!             }
//!             Event::Passive => messages.set_mode(Mode::Count(100)),
//!             Event::Closed => break,
//!             Event::Error(e) => return Err(std::io::Error::other(e)),
//!         }
//!     }
//!     Ok(())
//! }
//! ```

mod framing;
mod handover;
mod outbox;
mod prefixed;

pub use framing::{FrameError, Framing, FramingDecoder, DEFAULT_MAX_FRAME};
pub use handover::MessagesHandOverError;
pub use outbox::{Outbox, SendError};
pub use prefixed::Prefixed;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut as _, BytesMut};
use tokio_util::codec::Decoder;

use crate::connection::split::{ReadHalf, WriteHalf};
use crate::Connection;

/// What [`Messages::new`] takes to cut bytes into messages: a [`Framing`] (which gets a fresh
/// [`FramingDecoder`] per connection) or any `tokio_util` [`Decoder`].
pub trait IntoDecoder {
    /// The decoder.
    type Decoder: Decoder;

    /// The decoder for one connection.
    fn into_decoder(self) -> Self::Decoder;

    /// The most one unfinished frame can buffer, when the framing guarantees a bound of its own.
    fn max_buffered(&self) -> Option<usize> {
        None
    }
}

impl IntoDecoder for Framing {
    type Decoder = FramingDecoder;

    fn into_decoder(self) -> FramingDecoder {
        FramingDecoder::new(self)
    }

    fn max_buffered(&self) -> Option<usize> {
        Some(Framing::max_buffered(self))
    }
}

impl<D: Decoder> IntoDecoder for D {
    type Decoder = D;

    fn into_decoder(self) -> D {
        self
    }
}

/// What the message stream delivers on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing; pull with [`Messages::recv`]. Erlang's `{active, false}`.
    Passive,
    /// One message, then `Passive`. Erlang's `{active, once}`.
    Once,
    /// This many messages, then an [`Event::Passive`] and `Passive`. Erlang's `{active, N}`.
    Count(u32),
    /// Every message as it comes, with back-pressure. Erlang's `{active, true}`, made safe.
    Push,
}

/// What the stream yields.
#[derive(Debug)]
pub enum Event<T, E = FrameError> {
    /// A message.
    Data(T),
    /// A `Count` budget ran out; the stream is passive until [`Messages::set_mode`].
    Passive,
    /// The server began to drain: say goodbye in the protocol and finish. Delivered once, in every
    /// mode, and only after [`Messages::with_drain_event`]; the stream goes on delivering data after it.
    Draining,
    /// The peer closed the connection cleanly (after every complete message was delivered).
    Closed,
    /// The peer broke the framing (an oversized frame, an endless line, a truncated frame) or the socket
    /// failed. The stream ends after it; dropping it closes the connection.
    Error(E),
}

/// Bounds on the bytes read ahead of the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    /// Reading ahead stops once this many undelivered bytes are buffered. Default 64 KiB.
    pub high_watermark: usize,
    /// Reading ahead resumes once the buffer has drained to this. Default 16 KiB.
    pub low_watermark: usize,
    /// Bytes asked of the socket per read. Default 16 KiB.
    pub read_size: usize,
    /// The most a single unfinished frame may buffer before it is an error: a guard for decoders without
    /// limits of their own. A [`Framing`] with a larger limit raises it to that limit. Default 1 MiB.
    pub max_buffer: usize,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            high_watermark: 64 * 1024,
            low_watermark: 16 * 1024,
            read_size: 16 * 1024,
            max_buffer: 1024 * 1024,
        }
    }
}

/// A connection's incoming bytes as a stream of [`Event`]s; see the [module docs](self).
#[derive(Debug)]
pub struct Messages<D = FramingDecoder> {
    read: ReadHalf,
    decoder: D,
    /// The framing's own bound on an unfinished frame, if it has one: the buffer guard never undercuts it.
    framing_limit: Option<usize>,
    /// Bytes read and not yet delivered, undecoded.
    buf: BytesMut,
    mode: Mode,
    flow: FlowControl,
    /// An `Event::Passive` is owed.
    passive_due: bool,
    /// The peer closed its side.
    eof: bool,
    /// A read failed; reported once the buffered messages are delivered.
    failed: Option<io::Error>,
    /// The stream has ended.
    done: bool,
    /// Waits for the drain, when [`Messages::with_drain_event`] asked for [`Event::Draining`]; gone
    /// once delivered. Boxed: most handlers do not ask.
    drain: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

impl<D> Messages<D>
where
    D: Decoder,
    D::Error: From<io::Error>,
{
    /// Splits `conn` into a message stream (decoded by `decoder`, delivering per `mode`) and its write
    /// half. Nothing is read yet.
    ///
    /// On a connection a restart's predecessor handed over ([`Messages::hand_over`]), the stream
    /// starts with the bytes it carried, in the mode it carried (`mode` is for a fresh connection).
    pub fn new(
        mut conn: Connection,
        decoder: impl IntoDecoder<Decoder = D>,
        mode: Mode,
    ) -> (Messages<D>, WriteHalf) {
        let (carried, carried_mode) = handover::resumed(&mut conn);
        let (read, write) = conn.into_split();
        let mut messages = Messages::from_read_half(read, decoder, mode);
        messages.buf = carried;
        if let Some((mode, passive_due)) = carried_mode {
            messages.mode = mode;
            messages.passive_due = passive_due;
        }
        (messages, write)
    }

    /// A message stream over an already split read half.
    pub fn from_read_half(
        read: ReadHalf,
        decoder: impl IntoDecoder<Decoder = D>,
        mode: Mode,
    ) -> Messages<D> {
        let framing_limit = decoder.max_buffered();
        let mut messages = Messages {
            read,
            decoder: decoder.into_decoder(),
            framing_limit,
            buf: BytesMut::new(),
            mode: Mode::Passive,
            flow: FlowControl::default(),
            passive_due: false,
            eof: false,
            failed: None,
            done: false,
            drain: None,
        };
        messages.set_mode(mode);
        messages
    }

    /// Replaces the flow-control bounds (a low watermark above the high one is lowered to it).
    pub fn with_flow_control(mut self, mut flow: FlowControl) -> Self {
        flow.low_watermark = flow.low_watermark.min(flow.high_watermark);
        flow.read_size = flow.read_size.max(1);
        self.flow = flow;
        self
    }

    /// Changes the delivery mode, as `inet:setopts(S, [{active, …}])` does. `Count(0)` is passive at once
    /// and owes an [`Event::Passive`], like Erlang's `{active, 0}`.
    pub fn set_mode(&mut self, mode: Mode) {
        if mode == Mode::Count(0) {
            self.mode = Mode::Passive;
            self.passive_due = true;
        } else {
            self.mode = mode;
        }
    }

    /// Delivers [`Event::Draining`] once when the server begins to drain (at the first poll if it has
    /// already), so a handler sees the drain in the same loop as its messages instead of a `select!`
    /// beside it. In every mode, including `Passive` and [`recv`](Self::recv).
    pub fn with_drain_event(mut self) -> Self {
        self.drain = Some(Box::pin(self.read.meta().drain_signal().wait_owned()));
        self
    }

    /// The connection's metadata (peer, TLS, age, bytes, the drain signal), shared with the write half.
    pub fn meta(&self) -> &crate::ConnectionMeta {
        self.read.meta()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bytes read from the socket and not yet delivered.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Pulls the next event whatever the mode (Erlang's `gen_tcp:recv`). `None` once the stream ended.
    /// Cancel-safe (see the [module docs](self)).
    pub async fn recv(&mut self) -> Option<Event<D::Item, D::Error>> {
        std::future::poll_fn(|cx| self.poll_event(cx, true)).await
    }

    /// Ends the message view: the read half, and every byte read but not delivered (front first). Give
    /// both to [`Prefixed`] (after [`ReadHalf::reunite`]) to go back to plain reads with nothing lost.
    pub fn into_inner(self) -> (ReadHalf, BytesMut) {
        (self.read, self.buf)
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        pull: bool,
    ) -> Poll<Option<Event<D::Item, D::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(drain) = &mut self.drain {
                if drain.as_mut().poll(cx).is_ready() {
                    self.drain = None;
                    return Poll::Ready(Some(Event::Draining));
                }
            }
            if self.passive_due && !pull {
                self.passive_due = false;
                return Poll::Ready(Some(Event::Passive));
            }
            if self.mode == Mode::Passive && !pull {
                // Nothing is read or delivered until the mode changes (which needs `&mut self`, so the
                // caller drops this poll's future first) or the handler pulls.
                return Poll::Pending;
            }
            // Read ahead, without waiting, while the buffer is at or below the low watermark.
            if !self.eof && self.failed.is_none() && self.buf.len() <= self.flow.low_watermark {
                self.read_ahead();
            }
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(item)) => return Poll::Ready(Some(self.deliver(item, pull))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(self.end(Event::Error(e)))),
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Some(self.end(Event::Error(e.into()))));
            }
            if self.eof {
                return Poll::Ready(Some(match self.decoder.decode_eof(&mut self.buf) {
                    Ok(Some(item)) => self.deliver(item, pull),
                    Ok(None) => self.end(Event::Closed),
                    Err(e) => self.end(Event::Error(e)),
                }));
            }
            let limit = self
                .flow
                .max_buffer
                .max(self.framing_limit.map_or(0, |l| l + 1));
            if self.buf.len() >= limit {
                let e = io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("an unfinished frame exceeds the {limit} byte buffer limit"),
                );
                return Poll::Ready(Some(self.end(Event::Error(e.into()))));
            }
            // No whole message buffered: wait for the socket, holding no buffer if there is nothing in it.
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            ready!(self.read.poll_read_ready(cx))
                .map_err(|e| self.failed = Some(e))
                .ok();
            if self.failed.is_none() {
                self.read_once();
            }
        }
    }

    /// One read into the buffer (after readiness): sets `eof` or `failed`; `WouldBlock` leaves both.
    fn read_once(&mut self) {
        self.buf.reserve(self.flow.read_size);
        match self.read.try_read_buf(&mut self.buf) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.failed = Some(e),
        }
    }

    /// Reads what is available now, up to the high watermark.
    fn read_ahead(&mut self) {
        while self.buf.len() < self.flow.high_watermark {
            let room = (self.flow.high_watermark - self.buf.len()).min(self.flow.read_size);
            self.buf.reserve(room);
            match self.read.try_read_buf(&mut (&mut self.buf).limit(room)) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.failed = Some(e);
                    return;
                }
            }
        }
    }

    fn deliver(&mut self, item: D::Item, pull: bool) -> Event<D::Item, D::Error> {
        if !pull {
            match self.mode {
                Mode::Once => self.mode = Mode::Passive,
                Mode::Count(n) if n <= 1 => {
                    self.mode = Mode::Passive;
                    self.passive_due = true;
                }
                Mode::Count(n) => self.mode = Mode::Count(n - 1),
                Mode::Passive | Mode::Push => {}
            }
        }
        Event::Data(item)
    }

    fn end(&mut self, event: Event<D::Item, D::Error>) -> Event<D::Item, D::Error> {
        self.done = true;
        self.buf = BytesMut::new();
        event
    }
}

impl<D> futures_util::Stream for Messages<D>
where
    D: Decoder + Unpin,
    D::Error: From<io::Error>,
{
    type Item = Event<D::Item, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx, false)
    }
}
