//! lariat's own TLS 1.3 record layer, for the life of a session after its handshake.
//!
//! rustls runs the handshake; once it is done and its last flight (session tickets included) is on the
//! wire, the session's traffic keys are taken out of rustls
//! (`UnbufferedServerConnection::dangerous_into_kernel_connection`, the hand-off kernel TLS would use)
//! and lariat frames, seals and opens the records itself, with the AEAD of the negotiated suite as
//! rustls builds it (no cryptography here: only framing). rustls keeps what a session still needs it
//! for, its key schedule (a [`KernelConnection`]), to answer the peer's key updates.
//!
//! Why: an idle session then shrinks to its keys. Between bursts the AEAD objects (the expanded key
//! schedules, about 560 B each) are dropped and only each direction's key, IV and sequence number stay
//! ([`Records::rest`]); they are built again when bytes arrive or a write comes. This is also where a
//! kernel TLS hand-off would plug in: the same keys and sequence numbers, given to `TLS_TX`/`TLS_RX`.
//!
//! rustls 0.23 builds a 16-byte (AES-128-GCM) key only inside its own key schedule, so a session on
//! that suite keeps its two AEAD objects while idle; AES-256-GCM and ChaCha20-Poly1305 sessions (32-byte
//! keys) rest on their key bytes.
//!
//! With the aws-lc-rs provider, AWS-LC's TLS 1.3 AES-GCM sealing key takes the first nonce it seals as
//! sequence number 0 and refuses any later nonce that does not grow from there, so a sealer can only
//! start at sequence 0. A sealer built at any other number (the first write after the take-over, whose
//! session tickets used numbers already, or the first after a sleep) seals exactly one record with it,
//! a KeyUpdate that asks for nothing, and goes on under the next keys from 0. An idle connection
//! resting in its task therefore keeps its sealer under aws-lc-rs (resting it would cost a KeyUpdate
//! per burst); one asleep in the parking lot drops it ([`Records::sleep`]).
//!
//! What the peer may send after the handshake: application data, alerts (close_notify ends the stream
//! cleanly; user_canceled is ignored; any other is an error) and KeyUpdate (answered with our own when
//! it asks). Anything else (another handshake message, a ChangeCipherSpec, a record over 2^14 + 256
//! bytes, a tag that does not verify) fails the session with the matching alert. Sequence numbers
//! never wrap: a direction at the end of its numbers fails first, and a direction at its suite's
//! confidentiality limit updates its keys before the next record.

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage, Tls13AeadAlgorithm,
};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, HandshakeType, InvalidMessage,
    PeerMisbehaved, ProtocolVersion, SupportedCipherSuite, Tls13CipherSuite,
};
use zeroize::Zeroize;

use super::scratch::Out;

/// A record's header: content type, legacy version, length.
pub(crate) const HEADER: usize = 5;
/// The largest plaintext fragment.
const MAX_FRAGMENT: usize = 1 << 14;
/// The largest ciphertext a TLS 1.3 peer may send (RFC 8446, 5.2).
pub(crate) const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
const APPLICATION_DATA: u8 = 23;
const CHANGE_CIPHER_SPEC: u8 = 20;

/// One direction's key and IV while its AEAD object is not built. Zeroed when dropped.
struct KeyBytes {
    key: [u8; 32],
    iv: [u8; 12],
}

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

/// Whether a sealer built at a sequence number other than 0 fails (see the module's documentation).
const SEALER_STARTS_AT_ZERO: bool = cfg!(feature = "aws-lc-rs");

/// One direction: its sequence number, and its AEAD object (built when first used) or the bytes to
/// build it from (kept while idle).
struct Keys<T: ?Sized> {
    material: Material,
    built: Option<Box<T>>,
    seq: u64,
}

/// What a direction's AEAD object is built from.
enum Material {
    /// A 32-byte key and its IV, kept: the object can be dropped and built again.
    Bytes(KeyBytes),
    /// A 16-byte key, which rustls' public API cannot rebuild from bytes: used once, and the object
    /// it builds stays.
    Once(AeadKey, Iv),
    /// The 16-byte key was used.
    Used,
}

type Sealer = Keys<dyn MessageEncrypter>;
type Opener = Keys<dyn MessageDecrypter>;

impl<T: ?Sized> Keys<T> {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Keys<T>, Error> {
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => {
                return Err(Error::General(
                    "cipher suite not supported by lariat's record layer".into(),
                ))
            }
        };
        let material = if key.as_ref().len() == 32 && iv.as_ref().len() == 12 {
            let mut bytes = KeyBytes {
                key: [0; 32],
                iv: [0; 12],
            };
            bytes.key.copy_from_slice(key.as_ref());
            bytes.iv.copy_from_slice(iv.as_ref());
            Material::Bytes(bytes)
        } else {
            Material::Once(key, iv)
        };
        Ok(Keys {
            material,
            built: None,
            seq,
        })
    }

    /// The AEAD object, built if it was not (from the key bytes, or the 16-byte key kept for it).
    fn get(
        &mut self,
        aead: &dyn Tls13AeadAlgorithm,
        build: fn(&dyn Tls13AeadAlgorithm, AeadKey, Iv) -> Box<T>,
    ) -> &mut T {
        if self.built.is_none() {
            let made = match std::mem::replace(&mut self.material, Material::Used) {
                Material::Once(key, iv) => build(aead, key, iv),
                Material::Bytes(b) => {
                    let made = build(aead, AeadKey::from(b.key), Iv::from(b.iv));
                    self.material = Material::Bytes(b);
                    made
                }
                Material::Used => unreachable!("a used 16-byte key's object is never dropped"),
            };
            self.built = Some(made);
        }
        match &mut self.built {
            Some(built) => built,
            None => unreachable!("built above"),
        }
    }

    /// Drops the AEAD object if it can be built again.
    fn rest(&mut self) {
        if matches!(self.material, Material::Bytes(_)) {
            self.built = None;
        }
    }
}

fn encrypter(aead: &dyn Tls13AeadAlgorithm, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
    aead.encrypter(key, iv)
}

fn decrypter(aead: &dyn Tls13AeadAlgorithm, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
    aead.decrypter(key, iv)
}

/// A TLS 1.3 session's record layer after its handshake (see the module's documentation).
pub(crate) struct Records {
    /// rustls' key schedule, for key updates; `None` only in the fuzzing harness (key updates then fail).
    kernel: Option<KernelConnection<ServerConnectionData>>,
    suite: &'static Tls13CipherSuite,
    tx: Sealer,
    rx: Opener,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("suite", &self.suite.common.suite)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .finish_non_exhaustive()
    }
}

/// What [`Records::read`] did with its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Read {
    /// Bytes of the input used: whole records (a partial one at the end is left).
    pub(crate) consumed: usize,
    /// The peer's close_notify arrived: nothing after it is read.
    pub(crate) closed: bool,
}

/// How one record ended.
enum Opened {
    Data,
    Closed,
}

/// Whether rustls' session can be taken over: a completed TLS 1.3 handshake.
pub(crate) fn can_take_over(conn: &UnbufferedServerConnection) -> bool {
    !conn.is_handshaking()
        && conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
        && matches!(
            conn.negotiated_cipher_suite(),
            Some(SupportedCipherSuite::Tls13(_))
        )
}

impl Records {
    /// Takes the record layer out of rustls' session (see [`can_take_over`]; its outgoing records
    /// must all have been taken, and the configuration must allow secret extraction).
    pub(crate) fn take_over(conn: UnbufferedServerConnection) -> Result<Records, Error> {
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            return Err(Error::General("not a TLS 1.3 session".into()));
        };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        Records::new(suite, secrets.tx, secrets.rx, Some(kernel))
    }

    fn new(
        suite: &'static Tls13CipherSuite,
        tx: (u64, ConnectionTrafficSecrets),
        rx: (u64, ConnectionTrafficSecrets),
        kernel: Option<KernelConnection<ServerConnectionData>>,
    ) -> Result<Records, Error> {
        Ok(Records {
            tx: Keys::new(tx)?,
            rx: Keys::new(rx)?,
            kernel,
            suite,
        })
    }

    /// For a connection waiting in its task: drops the AEAD objects (their expanded key schedules)
    /// that can be built again without a KeyUpdate (all but an aws-lc-rs sealer), keeping the keys,
    /// IVs and sequence numbers.
    pub(crate) fn rest(&mut self) {
        if !SEALER_STARTS_AT_ZERO {
            self.tx.rest();
        }
        self.rx.rest();
    }

    /// For a connection going to sleep in the parking lot: drops every AEAD object that can be built
    /// again (an aws-lc-rs sealer is, with a KeyUpdate on the first write after the wake-up).
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // for the parking lot (`lariat::http`)
    pub(crate) fn sleep(&mut self) {
        self.tx.rest();
        self.rx.rest();
    }

    /// Opens the whole records at the start of `input` (decrypting in place): application data is
    /// appended to `plain`, our answers (a KeyUpdate) to `out`. Stops at a partial record or after the
    /// peer's close_notify. On error, how far the input was used and why (answer it with
    /// [`alert`](Self::alert)).
    pub(super) fn read(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Out<'_>,
    ) -> Result<Read, (usize, Error)> {
        let mut at = 0;
        loop {
            let len = match header(&input[at..]) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    return Ok(Read {
                        consumed: at,
                        closed: false,
                    })
                }
                Err(e) => return Err((at, e)),
            };
            let end = at + HEADER + len;
            match self.open(&mut input[at + HEADER..end], plain, out) {
                Ok(Opened::Data) => at = end,
                Ok(Opened::Closed) => {
                    return Ok(Read {
                        consumed: end,
                        closed: true,
                    })
                }
                Err(e) => return Err((end, e)),
            }
        }
    }

    fn open(
        &mut self,
        payload: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Out<'_>,
    ) -> Result<Opened, Error> {
        let seq = self.rx.seq;
        if seq == u64::MAX {
            return Err(Error::General(
                "the peer's record sequence numbers ran out".into(),
            ));
        }
        let opener = self.rx.get(self.suite.aead_alg, decrypter);
        let message = opener.decrypt(
            InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                payload,
            ),
            seq,
        )?;
        self.rx.seq += 1;
        match message.typ {
            ContentType::ApplicationData => {
                plain.extend_from_slice(message.payload);
                Ok(Opened::Data)
            }
            ContentType::Alert => match *message.payload {
                [_, 0] => Ok(Opened::Closed),
                // user_canceled: a warning, followed by close_notify.
                [_, 90] => Ok(Opened::Data),
                [_, desc] => Err(Error::AlertReceived(AlertDescription::from(desc))),
                _ => Err(InvalidMessage::MessageTooShort.into()),
            },
            ContentType::Handshake => self.handshake(message.payload, out).map(|()| Opened::Data),
            other => Err(Error::InappropriateMessage {
                expect_types: vec![
                    ContentType::ApplicationData,
                    ContentType::Alert,
                    ContentType::Handshake,
                ],
                got_type: other,
            }),
        }
    }

    /// The handshake message of one record: a KeyUpdate, whole and alone (a key change may not share
    /// its record with what follows it; any other message is refused).
    fn handshake(&mut self, message: &[u8], out: &mut Out<'_>) -> Result<(), Error> {
        let [typ, a, b, c, rest @ ..] = message else {
            // Empty, or split across records: only the client's KeyUpdate may come, and it is 5 bytes.
            return Err(InvalidMessage::MessageTooShort.into());
        };
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if rest.len() < len {
            return Err(InvalidMessage::MessageTooShort.into());
        }
        let (body, after) = rest.split_at(len);
        match HandshakeType::from(*typ) {
            HandshakeType::KeyUpdate if !after.is_empty() => {
                Err(PeerMisbehaved::KeyEpochWithPendingFragment.into())
            }
            HandshakeType::KeyUpdate => {
                let requested = match body {
                    [0] => false,
                    [1] => true,
                    _ => return Err(InvalidMessage::InvalidKeyUpdate.into()),
                };
                let (seq, secrets) = self.kernel()?.update_rx_secret()?;
                self.rx = Keys::new((seq, secrets))?;
                if requested {
                    self.update_tx(out)?;
                }
                Ok(())
            }
            got_type => Err(Error::InappropriateHandshakeMessage {
                expect_types: vec![HandshakeType::KeyUpdate],
                got_type,
            }),
        }
    }

    fn kernel(&mut self) -> Result<&mut KernelConnection<ServerConnectionData>, Error> {
        self.kernel
            .as_mut()
            .ok_or_else(|| Error::General("no key schedule for a key update".into()))
    }

    /// Sends our KeyUpdate (not asking the peer for one) under the current keys, then moves to the next.
    fn update_tx(&mut self, out: &mut Out<'_>) -> Result<(), Error> {
        // KeyUpdate, length 1, update_not_requested.
        self.seal(ContentType::Handshake, &[24, 0, 0, 1, 0], out)?;
        let (seq, secrets) = self.kernel()?.update_tx_secret()?;
        self.tx = Keys::new((seq, secrets))?;
        Ok(())
    }

    /// Seals `data` as application data records (16 KiB of plaintext each) into `out`.
    pub(super) fn write(&mut self, data: &[u8], out: &mut Out<'_>) -> Result<(), Error> {
        if SEALER_STARTS_AT_ZERO && self.tx.built.is_none() && self.tx.seq != 0 && !data.is_empty()
        {
            // A new sealer seals one record (the KeyUpdate) at this number, then starts at 0.
            self.update_tx(out)?;
        }
        for fragment in data.chunks(MAX_FRAGMENT) {
            if self.tx.seq >= self.suite.common.confidentiality_limit {
                self.update_tx(out)?;
            }
            self.seal(ContentType::ApplicationData, fragment, out)?;
        }
        Ok(())
    }

    /// Seals a close_notify alert into `out`.
    pub(super) fn close_notify(&mut self, out: &mut Out<'_>) -> Result<(), Error> {
        self.seal(ContentType::Alert, &[1, 0], out)
    }

    /// Seals the fatal alert that answers `error` into `out`, if it calls for one (not for the peer's
    /// own alert). Best effort: the session is failing.
    pub(super) fn alert(&mut self, error: &Error, out: &mut Out<'_>) {
        if let Some(desc) = alert_for(error) {
            let _ = self.seal(ContentType::Alert, &[2, u8::from(desc)], out);
        }
    }

    fn seal(&mut self, typ: ContentType, payload: &[u8], out: &mut Out<'_>) -> Result<(), Error> {
        let seq = self.tx.seq;
        if seq == u64::MAX {
            return Err(Error::EncryptError);
        }
        let sealer = self.tx.get(self.suite.aead_alg, encrypter);
        let record = sealer.encrypt(
            OutboundPlainMessage {
                typ,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(payload),
            },
            seq,
        )?;
        self.tx.seq += 1;
        out.push(&record.encode());
        Ok(())
    }
}

/// The length of the whole record at the start of `bytes`; `None` until it is all there. The header is
/// checked as soon as its bytes arrive: after the handshake every record is application data (its
/// real type inside), under legacy version 3.x, at most [`MAX_CIPHERTEXT`] long and never empty.
pub(crate) fn header(bytes: &[u8]) -> Result<Option<usize>, Error> {
    match bytes.first() {
        None | Some(&APPLICATION_DATA) => {}
        Some(&CHANGE_CIPHER_SPEC) => {
            return Err(PeerMisbehaved::IllegalMiddleboxChangeCipherSpec.into())
        }
        Some(&other) => {
            return Err(Error::InappropriateMessage {
                expect_types: vec![ContentType::ApplicationData],
                got_type: ContentType::from(other),
            })
        }
    }
    if bytes.get(1).is_some_and(|&major| major != 3) {
        return Err(InvalidMessage::UnknownProtocolVersion.into());
    }
    let [_, _, _, a, b, ..] = *bytes else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([a, b]));
    if len > MAX_CIPHERTEXT {
        return Err(Error::PeerSentOversizedRecord);
    }
    if len == 0 {
        return Err(InvalidMessage::InvalidEmptyPayload.into());
    }
    Ok((bytes.len() >= HEADER + len).then_some(len))
}

/// The alert that tells the peer why the session failed; `None` for the peer's own alert.
fn alert_for(error: &Error) -> Option<AlertDescription> {
    Some(match error {
        Error::AlertReceived(_) => return None,
        Error::DecryptError => AlertDescription::BadRecordMac,
        Error::PeerSentOversizedRecord => AlertDescription::RecordOverflow,
        Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate) => {
            AlertDescription::IllegalParameter
        }
        Error::InvalidMessage(_) => AlertDescription::DecodeError,
        Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerMisbehaved(_) => AlertDescription::UnexpectedMessage,
        _ => AlertDescription::InternalError,
    })
}

/// For the fuzzing harness (`fuzz/`): a record layer over fixed keys, no key schedule.
#[doc(hidden)]
#[path = "records_fuzzing.rs"]
pub mod fuzzing;

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
