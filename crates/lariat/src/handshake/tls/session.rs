//! [`Session`]: rustls' unbuffered server connection with the buffers lariat owns, and frees whenever
//! they drain, so that an idle TLS connection holds no buffer at all. After a TLS 1.3 handshake the
//! record layer moves out of rustls into lariat's own ([`records`](super::records)), which keeps only
//! the keys while idle; TLS 1.2 sessions (and all sessions when asked) stay in rustls.
//!
//! rustls' buffered `ServerConnection` keeps a read buffer of at least 4 KiB for the whole life of the
//! connection, and queues of its own; with the unbuffered API the session is only its state machine
//! and keys (about 2 KiB after the handshake), and lariat keeps three byte buffers that are empty
//! (unallocated) between bursts:
//! - `incoming`: ciphertext read from the socket and not yet processed (a partial record);
//! - `plaintext`: decrypted bytes not yet read by the handler (or seen by a peek);
//! - `outgoing`: records encrypted and not yet taken by the socket.

use std::io;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::ServerConfig;

use super::hello;
use super::records::{self, Records};
use super::scratch::{encoded, encrypted, with_scratch, Out, Scratch};
use crate::Stream;

/// The largest TLS record on the wire (16 KiB of payload, expansion, header): one socket read's worth.
const READ_SIZE: usize = 16 * 1024 + 2048 + 5;
/// During the handshake, a handshake message may span records up to 64 KiB (rustls' own bound).
const HANDSHAKE_BUFFER_LIMIT: usize = 0x10000 + READ_SIZE;
/// At most this much plaintext is encrypted per write: the bound on `outgoing`, like rustls' buffered
/// limit, so that a peer that stops reading holds up its writer instead of growing a buffer.
pub(super) const WRITE_LIMIT: usize = 64 * 1024;

/// A TLS server session and its buffers (see the module's documentation).
pub(crate) struct Session {
    engine: Engine,
    incoming: Vec<u8>,
    plaintext: Vec<u8>,
    /// How much of `plaintext` has been read.
    plain_at: usize,
    outgoing: Vec<u8>,
    /// How much of `outgoing` the socket has taken.
    out_at: usize,
    server_name: Option<String>,
    /// The first record (the ClientHello) has been looked at for the server name.
    hello_seen: bool,
    /// The peer's close_notify arrived: reads end cleanly once `plaintext` is read.
    peer_closed: bool,
    /// The socket reported end of stream.
    eof: bool,
    /// Our close_notify is queued: nothing more may be written.
    sent_close: bool,
    /// The first TLS error; reported again by every later read or write.
    error: Option<rustls::Error>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("incoming", &self.incoming.len())
            .field("plaintext", &(self.plaintext.len() - self.plain_at))
            .field("outgoing", &(self.outgoing.len() - self.out_at))
            .field("peer_closed", &self.peer_closed)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Who makes and opens the records.
#[allow(clippy::large_enum_variant)] // the record layer is inline on purpose: it is the session's state for its life
enum Engine {
    /// rustls: the handshake, and sessions that stay in rustls (TLS 1.2, or asked for). Boxed: after
    /// a TLS 1.3 handshake its place goes to the much smaller record layer.
    Rustls(Box<UnbufferedServerConnection>),
    /// lariat's record layer, after a TLS 1.3 handshake.
    Records(Records),
    /// Consumed by a take-over that failed; the session has its error.
    Spent,
}

/// What a call into rustls should do once the session can send application data.
enum Write<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

impl Session {
    pub(crate) fn new(config: std::sync::Arc<ServerConfig>) -> Result<Session, rustls::Error> {
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Session::with_engine(Engine::Rustls(Box::new(conn)), false))
    }

    /// A session on `engine` with empty buffers; `hello_seen` once the ClientHello is behind it.
    fn with_engine(engine: Engine, hello_seen: bool) -> Session {
        Session {
            engine,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plain_at: 0,
            outgoing: Vec::new(),
            out_at: 0,
            server_name: None,
            hello_seen,
            peer_closed: false,
            eof: false,
            sent_close: false,
            error: None,
        }
    }

    /// A session resumed from its record layer alone (a connection waking from the parking lot).
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    pub(crate) fn from_records(records: Records) -> Session {
        Session::with_engine(Engine::Records(records), true)
    }

    /// The record layer alone, for a connection going to sleep: only a healthy session on lariat's
    /// record layer with nothing buffered either way; otherwise the session is given back.
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    pub(crate) fn into_records(self) -> Result<Records, Box<Session>> {
        match self.engine {
            Engine::Records(mut records) if self.can_sleep_idle() => {
                records.sleep();
                Ok(records)
            }
            engine => Err(Box::new(Session { engine, ..self })),
        }
    }

    /// Whether [`into_records`](Self::into_records) would take the record layer: a healthy session on
    /// lariat's record layer with nothing buffered either way.
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    pub(crate) fn can_sleep(&self) -> bool {
        matches!(self.engine, Engine::Records(_)) && self.can_sleep_idle()
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    fn can_sleep_idle(&self) -> bool {
        self.incoming.is_empty()
            && self.plaintext.is_empty()
            && !self.wants_write()
            && !self.read_ended()
            && !self.sent_close
    }

    /// rustls' connection (negotiated parameters, peer certificates) while the session is in rustls.
    pub(crate) fn conn(&self) -> Option<&UnbufferedServerConnection> {
        match &self.engine {
            Engine::Rustls(conn) => Some(conn),
            _ => None,
        }
    }

    /// The server name read from the ClientHello, taken out (it is kept once, in the connection's
    /// [`TlsInfo`](super::TlsInfo)).
    pub(crate) fn take_server_name(&mut self) -> Option<String> {
        self.server_name.take()
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        match &self.engine {
            Engine::Rustls(conn) => conn.is_handshaking(),
            _ => false,
        }
    }

    /// After the handshake, with its last flight sent: moves a TLS 1.3 session's record layer out of
    /// rustls. `Ok(false)`: it stays in rustls (TLS 1.2). An error fails the session.
    pub(crate) fn take_over_records(&mut self) -> Result<bool, rustls::Error> {
        match &self.engine {
            Engine::Rustls(conn) if records::can_take_over(conn) && !self.wants_write() => {}
            Engine::Records(_) => return Ok(true),
            _ => return Ok(false),
        }
        let Engine::Rustls(conn) = std::mem::replace(&mut self.engine, Engine::Spent) else {
            unreachable!("matched above")
        };
        match Records::take_over(*conn) {
            Ok(records) => {
                self.engine = Engine::Records(records);
                Ok(true)
            }
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Drops the record layer's AEAD objects while the connection waits (rebuilt on use).
    pub(crate) fn rest(&mut self) {
        if let Engine::Records(records) = &mut self.engine {
            records.rest();
        }
    }

    pub(crate) fn error(&self) -> Option<&rustls::Error> {
        self.error.as_ref()
    }

    /// Decrypted bytes waiting to be read.
    pub(crate) fn plaintext(&self) -> &[u8] {
        &self.plaintext[self.plain_at..]
    }

    /// Nothing more will be read: the peer closed (cleanly or not) or the session failed.
    pub(crate) fn read_ended(&self) -> bool {
        self.peer_closed || self.eof || self.error.is_some()
    }

    /// Hands up to `max` decrypted bytes to `put` and consumes them; the buffer is freed once it is read
    /// to its end.
    pub(crate) fn read_plaintext(&mut self, max: usize, put: impl FnOnce(&[u8])) -> usize {
        let waiting = &self.plaintext[self.plain_at..];
        let n = waiting.len().min(max);
        put(&waiting[..n]);
        self.plain_at += n;
        if self.plain_at == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plain_at = 0;
        }
        n
    }

    /// How a read ends when no plaintext is waiting: `Some(Ok(0))` after the peer's close_notify,
    /// `UnexpectedEof` for a close without one, the session's error; `None` while more may come.
    pub(crate) fn read_end(&self) -> Option<io::Result<usize>> {
        if let Some(e) = &self.error {
            return Some(Err(invalid_data(e.clone())));
        }
        if self.peer_closed {
            return Some(Ok(0));
        }
        if self.eof {
            return Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed connection without sending TLS close_notify",
            )));
        }
        None
    }

    /// Reads what the socket has now (one read) and processes the records; `WouldBlock` (which clears
    /// the socket's readiness) when it has nothing. End of stream is noted, not returned: see
    /// [`read_end`](Self::read_end). Answers (an alert, a key update) go to the socket if it takes them
    /// now, else they are queued. A TLS error is recorded, its alert sent the same way, and returned
    /// as `InvalidData`.
    pub(crate) fn receive(&mut self, io: &Stream) -> io::Result<()> {
        if let Some(e) = &self.error {
            return Err(invalid_data(e.clone()));
        }
        if self.eof {
            return Ok(());
        }
        let limit = if self.is_handshaking() {
            HANDSHAKE_BUFFER_LIMIT
        } else {
            READ_SIZE * 2
        };
        if self.incoming.len() + READ_SIZE > limit {
            let e = rustls::Error::General("TLS message too large".into());
            self.error = Some(e.clone());
            return Err(invalid_data(e));
        }
        with_scratch(|scratch| {
            let Scratch { input, output } = scratch;
            if input.len() < READ_SIZE {
                input.resize(READ_SIZE, 0);
            }
            let n = io.try_read(&mut input[..READ_SIZE])?;
            if n == 0 {
                self.eof = true;
                return Ok(());
            }
            let mut out = Out::new(output);
            let result = if self.incoming.is_empty() {
                // The usual case: whole records, processed where they were read.
                let (consumed, result) =
                    self.process_bytes(&mut input[..n], Write::Nothing, &mut out);
                self.incoming.extend_from_slice(&input[consumed..n]);
                result
            } else {
                self.incoming.extend_from_slice(&input[..n]);
                self.process_incoming(Write::Nothing, &mut out)
            };
            self.emit(out.filled(), Some(io));
            result.map(|_| ()).map_err(invalid_data)
        })
    }

    /// Encrypts up to [`WRITE_LIMIT`] bytes of `data` and sends the records the socket takes now,
    /// queueing the rest; how many bytes were taken.
    pub(crate) fn encrypt(&mut self, data: &[u8], io: &Stream) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(invalid_data(e.clone()));
        }
        if self.sent_close {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session was closed for writing",
            ));
        }
        let data = &data[..data.len().min(WRITE_LIMIT)];
        with_scratch(|scratch| {
            let mut out = Out::new(&mut scratch.output);
            let result = self.process_incoming(Write::Data(data), &mut out);
            self.emit(out.filled(), Some(io));
            match result {
                Ok(true) => Ok(data.len()),
                Ok(false) => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS session cannot send data now",
                )),
                Err(e) => Err(invalid_data(e)),
            }
        })
    }

    /// Queues a close_notify alert (once; not if the session failed or cannot send yet), sent with
    /// the next [`send`](Self::send).
    pub(crate) fn send_close_notify(&mut self) {
        if self.sent_close || self.error.is_some() {
            return;
        }
        with_scratch(|scratch| {
            let mut out = Out::new(&mut scratch.output);
            if let Ok(true) = self.process_incoming(Write::CloseNotify, &mut out) {
                self.sent_close = true;
            }
            self.emit(out.filled(), None);
        });
    }

    /// Records are queued for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.out_at < self.outgoing.len()
    }

    /// Writes queued records until none is left (`Ok`, the buffer freed) or the socket is full
    /// (`WouldBlock`).
    pub(crate) fn send(&mut self, io: &Stream) -> io::Result<()> {
        while self.out_at < self.outgoing.len() {
            match io.try_write(&self.outgoing[self.out_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_at += n,
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.out_at = 0;
        Ok(())
    }

    /// The queued records, taken out (for a task that sends them after the stream is gone).
    pub(crate) fn take_outgoing(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.outgoing);
        out.drain(..self.out_at);
        self.out_at = 0;
        out
    }

    /// Records just made: straight to the socket when nothing is queued before them (as much as it
    /// takes now), the rest queued. A failed write leaves them queued for `send` to report.
    fn emit(&mut self, records: &[u8], io: Option<&Stream>) {
        let mut sent = 0;
        if let (Some(io), false) = (io, self.wants_write()) {
            while sent < records.len() {
                match io.try_write(&records[sent..]) {
                    Ok(n) if n > 0 => sent += n,
                    _ => break,
                }
            }
        }
        if sent < records.len() {
            if !self.wants_write() {
                self.outgoing.clear();
                self.out_at = 0;
            }
            self.outgoing.extend_from_slice(&records[sent..]);
        }
    }

    /// Processes the records in `incoming`, keeping the bytes of a partial record (and freeing the
    /// buffer when none are left), then does `write` if the session can send application data:
    /// `Ok(true)` when it did. The first error is kept.
    fn process_incoming(
        &mut self,
        write: Write<'_>,
        out: &mut Out<'_>,
    ) -> Result<bool, rustls::Error> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let (consumed, result) = self.process_bytes(&mut incoming, write, out);
        incoming.drain(..consumed);
        if !incoming.is_empty() {
            self.incoming = incoming;
        }
        result
    }

    /// Processes `input` (records from the socket, the first of them the ClientHello): how many of its
    /// bytes were consumed, and whether `write` was done. The first error is kept.
    fn process_bytes(
        &mut self,
        input: &mut [u8],
        write: Write<'_>,
        out: &mut Out<'_>,
    ) -> (usize, Result<bool, rustls::Error>) {
        let records = match &mut self.engine {
            Engine::Rustls(_) => None,
            Engine::Records(records) => Some(records),
            Engine::Spent => {
                let e = self
                    .error
                    .clone()
                    .unwrap_or(rustls::Error::HandshakeNotComplete);
                return (0, Err(e));
            }
        };
        if let Some(records) = records {
            let (consumed, result) = match records.read(input, &mut self.plaintext, out) {
                Ok(read) => {
                    self.peer_closed |= read.closed;
                    (read.consumed, Ok(()))
                }
                Err((consumed, e)) => (consumed, Err(e)),
            };
            let result = result.and_then(|()| match write {
                Write::Nothing => Ok(false),
                Write::Data(data) => records.write(data, out).map(|()| true),
                Write::CloseNotify => records.close_notify(out).map(|()| true),
            });
            return match result {
                Ok(wrote) => (consumed, Ok(wrote)),
                Err(e) => (consumed.min(input.len()), Err(self.fail(e, out))),
            };
        }
        if !self.hello_seen {
            self.look_at_hello(input);
        }
        match self.process(input, write, out) {
            Ok((consumed, wrote)) => (consumed, Ok(wrote)),
            Err((consumed, e)) => (consumed.min(input.len()), Err(self.fail(e, out))),
        }
    }

    /// Takes the SNI from the first record once it is whole.
    fn look_at_hello(&mut self, input: &[u8]) {
        if input.len() < 5 {
            return;
        }
        let len = usize::from(u16::from_be_bytes([input[3], input[4]]));
        if input.len() >= 5 + len {
            self.hello_seen = true;
            self.server_name = hello::server_name(input);
        }
    }

    /// Drives rustls over `input` until it needs more bytes or can send: decrypted data goes to
    /// `plaintext`, records to `out`. Returns the bytes of `input` consumed and whether `write` was
    /// done.
    fn process(
        &mut self,
        input: &mut [u8],
        mut write: Write<'_>,
        out: &mut Out<'_>,
    ) -> Result<(usize, bool), (usize, rustls::Error)> {
        let Engine::Rustls(conn) = &mut self.engine else {
            return Err((0, rustls::Error::HandshakeNotComplete));
        };
        let mut at = 0;
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut input[at..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => return Err((at + discard, e)),
            };
            let mut done = false;
            let mut wrote = false;
            let step: Result<(), rustls::Error> = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    let mut result = Ok(());
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => self.plaintext.extend_from_slice(record.payload),
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    result
                }
                ConnectionState::ReadEarlyData(mut records) => {
                    // Early data is turned off in every configuration lariat builds; discarded.
                    while let Some(Ok(_)) = records.next_record() {}
                    Ok(())
                }
                ConnectionState::EncodeTlsData(mut encode) => out
                    .fill(1024, |buf| encoded(encode.encode(buf)))
                    .map_err(|()| rustls::Error::General("TLS record encoding failed".into())),
                ConnectionState::TransmitTlsData(transmit) => {
                    // In `out`, in order, and sent from there.
                    transmit.done();
                    Ok(())
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    Ok(())
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    done = true;
                    Ok(())
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    done = true;
                    match std::mem::replace(&mut write, Write::Nothing) {
                        Write::Nothing => Ok(()),
                        Write::Data(data) => {
                            wrote = true;
                            // Header, content type and tag of each 16 KiB record.
                            let guess = data.len() + (data.len() / (16 * 1024) + 1) * 64;
                            out.fill(guess, |buf| encrypted(traffic.encrypt(data, buf)))
                                .map_err(|()| rustls::Error::EncryptError)
                        }
                        Write::CloseNotify => {
                            wrote = true;
                            out.fill(64, |buf| encrypted(traffic.queue_close_notify(buf)))
                                .map_err(|()| rustls::Error::EncryptError)
                        }
                    }
                }
                // Waiting for the peer's next handshake flight; anything rustls adds later too.
                _ => {
                    done = true;
                    Ok(())
                }
            };
            at += discard;
            if let Err(e) = step {
                return Err((at, e));
            }
            if done {
                return Ok((at, wrote));
            }
        }
    }

    /// Keeps the first error and puts the alert rustls prepared for it, if any, in `out`.
    fn fail(&mut self, e: rustls::Error, out: &mut Out<'_>) -> rustls::Error {
        if self.error.is_none() {
            self.error = Some(e.clone());
        }
        let conn = match &mut self.engine {
            Engine::Rustls(conn) => conn,
            Engine::Records(records) => {
                records.alert(&e, out);
                return e;
            }
            Engine::Spent => return e,
        };
        for _ in 0..4 {
            match conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let _ = out.fill(64, |buf| encoded(encode.encode(buf)));
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => break,
            }
        }
        e
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
