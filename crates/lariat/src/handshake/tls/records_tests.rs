//! The record layer against rustls' own client, in memory: a real handshake, then the client's records
//! opened by lariat's layer and lariat's records read by the client.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use proptest::prelude::*;
use rustls::client::ClientConnection;
use rustls::crypto::cipher::MessageEncrypter;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::super::provider;
use super::fuzzing::Pair;
use super::*;

/// Which TLS 1.3 suite the client offers.
#[derive(Clone, Copy, Debug)]
enum Suite {
    Aes128,
    Aes256,
    Chacha,
}

fn configs(suite: Suite, extract: bool) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let mut server = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    server.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut client_provider = provider::default_provider();
    client_provider.cipher_suites = vec![match suite {
        Suite::Aes128 => provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        Suite::Aes256 => provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        Suite::Chacha => provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    }];
    let mut client = ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_secret_extraction = extract;
    (Arc::new(server), Arc::new(client))
}

/// Drives the server's handshake over `input`, its records appended to `out`; true once it can send
/// application data.
fn drive(server: &mut UnbufferedServerConnection, input: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    loop {
        let (discard, stop, done) = {
            let UnbufferedStatus { discard, state } = server.process_tls_records(input);
            match state.unwrap() {
                ConnectionState::EncodeTlsData(mut encode) => {
                    let mut buf = vec![0u8; 32 * 1024];
                    let n = encode.encode(&mut buf).unwrap();
                    out.extend_from_slice(&buf[..n]);
                    (discard, false, false)
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    (discard, false, false)
                }
                ConnectionState::WriteTraffic(_) => (discard, true, true),
                _ => (discard, true, false),
            }
        };
        input.drain(..discard);
        if stop {
            return done;
        }
    }
}

/// Everything the client has to send.
fn from_client(client: &mut ClientConnection) -> Vec<u8> {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Hands `wire` to the client and processes it: the plaintext it read.
fn to_client(client: &mut ClientConnection, wire: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut rest = wire;
    let mut plain = Vec::new();
    while !rest.is_empty() {
        client.read_tls(&mut rest).unwrap();
        client.process_new_packets()?;
        plain.extend(client_reads(client));
    }
    Ok(plain)
}

/// A completed handshake (tickets read by the client), the server's record layer taken over.
fn connect_with(suite: Suite, extract: bool) -> (ClientConnection, Records) {
    let (server_config, client_config) = configs(suite, extract);
    let mut client = ClientConnection::new(client_config, "localhost".try_into().unwrap()).unwrap();
    let mut server = UnbufferedServerConnection::new(server_config).unwrap();
    let mut to_server = Vec::new();
    for _ in 0..8 {
        to_server.extend(from_client(&mut client));
        let mut out = Vec::new();
        let done = drive(&mut server, &mut to_server, &mut out);
        to_client(&mut client, &out).unwrap();
        if done && !client.is_handshaking() {
            break;
        }
    }
    assert!(can_take_over(&server));
    (client, Records::take_over(server).unwrap())
}

fn connect(suite: Suite) -> (ClientConnection, Records) {
    connect_with(suite, false)
}

/// What reading `wire` gave: plaintext, our answers, the outcome.
struct Opened {
    plain: Vec<u8>,
    out: Vec<u8>,
    result: Result<Read, (usize, Error)>,
}

fn open(records: &mut Records, wire: &[u8]) -> Opened {
    let mut input = wire.to_vec();
    let mut plain = Vec::new();
    let mut scratch = Vec::new();
    let mut out = Out::new(&mut scratch);
    let result = records.read(&mut input, &mut plain, &mut out);
    if let Err((_, e)) = &result {
        records.alert(e, &mut out);
    }
    let out = out.filled().to_vec();
    Opened { plain, out, result }
}

fn seal(records: &mut Records, data: &[u8]) -> Vec<u8> {
    let mut scratch = Vec::new();
    let mut out = Out::new(&mut scratch);
    records.write(data, &mut out).unwrap();
    out.filled().to_vec()
}

fn client_reads(client: &mut ClientConnection) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match client.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    got
}

/// The records in `wire`.
fn count_records(mut wire: &[u8]) -> usize {
    let mut n = 0;
    while let Ok(Some(len)) = header(wire) {
        wire = &wire[HEADER + len..];
        n += 1;
    }
    assert!(wire.is_empty(), "whole records only");
    n
}

#[test]
fn data_flows_both_ways_and_the_keys_rest_between_bursts() {
    for suite in [Suite::Aes128, Suite::Aes256, Suite::Chacha] {
        let (mut client, mut records) = connect(suite);
        for round in 0..3 {
            let ask = format!("ping {round} {suite:?}");
            client.writer().write_all(ask.as_bytes()).unwrap();
            let opened = open(&mut records, &from_client(&mut client));
            assert!(!opened.result.unwrap().closed);
            assert_eq!(opened.plain, ask.as_bytes());
            assert!(opened.out.is_empty());
            // A 16-byte key cannot be rebuilt through rustls' public API: its objects stay.
            let rebuilt = !matches!(suite, Suite::Aes128);
            if round == 1 {
                records.sleep();
                assert_eq!(records.tx.built.is_none(), rebuilt, "{suite:?}");
            } else if round == 2 {
                records.rest();
                assert_eq!(
                    records.tx.built.is_none(),
                    rebuilt && !SEALER_STARTS_AT_ZERO,
                    "{suite:?}"
                );
            } else {
                records.rest();
            }
            assert_eq!(records.rx.built.is_none(), rebuilt, "{suite:?}");
            // More than one record's worth: split into 16 KiB fragments (after a KeyUpdate where a
            // new sealer must start at 0).
            let fresh = records.tx.built.is_none() && records.tx.seq != 0;
            let answer = vec![b'a' + round as u8; 40_000];
            let wire = seal(&mut records, &answer);
            let key_update = usize::from(SEALER_STARTS_AT_ZERO && fresh);
            assert_eq!(
                count_records(&wire),
                3 + key_update,
                "{suite:?} round {round}"
            );
            assert_eq!(to_client(&mut client, &wire).unwrap(), answer);
        }
    }
}

#[test]
fn a_key_update_asked_for_is_answered_with_ours() {
    let (mut client, mut records) = connect(Suite::Aes256);
    client.writer().write_all(b"before").unwrap();
    let opened = open(&mut records, &from_client(&mut client));
    assert_eq!(opened.plain, b"before");
    // update_requested, then data under the client's new keys.
    client.refresh_traffic_keys().unwrap();
    client.writer().write_all(b"after").unwrap();
    let opened = open(&mut records, &from_client(&mut client));
    opened.result.unwrap();
    assert_eq!(opened.plain, b"after");
    assert_eq!(records.rx.seq, 1, "new receive keys, numbered from 0");
    assert_eq!(count_records(&opened.out), 1, "our KeyUpdate");
    assert_eq!(records.tx.seq, 0, "new send keys");
    // The client follows our new keys.
    to_client(&mut client, &opened.out).unwrap();
    let wire = seal(&mut records, b"answer");
    assert_eq!(to_client(&mut client, &wire).unwrap(), b"answer");
}

/// The client's send keys, taken out of rustls, to make records the real client would not.
struct Forger {
    sealer: Box<dyn MessageEncrypter>,
    seq: u64,
}

impl Forger {
    fn new(client: ClientConnection) -> Forger {
        #[allow(deprecated)] // the buffered client's only way out; no key updates needed here
        let secrets = client.dangerous_extract_secrets().unwrap();
        let (seq, ConnectionTrafficSecrets::Aes256Gcm { key, iv }) = secrets.tx else {
            panic!("AES-256-GCM")
        };
        let SupportedCipherSuite::Tls13(suite) = provider::cipher_suite::TLS13_AES_256_GCM_SHA384
        else {
            unreachable!()
        };
        Forger {
            sealer: suite.aead_alg.encrypter(key, iv),
            seq,
        }
    }

    fn seal(&mut self, typ: ContentType, payload: &[u8]) -> Vec<u8> {
        let record = self
            .sealer
            .encrypt(
                OutboundPlainMessage {
                    typ,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(payload),
                },
                self.seq,
            )
            .unwrap();
        self.seq += 1;
        record.encode()
    }
}

fn forged() -> (Forger, Records) {
    let (client, records) = connect_with(Suite::Aes256, true);
    (Forger::new(client), records)
}

/// The alert in the one record `out` holds, opened with the server's send keys as the client would.
fn alert_sent(out: &[u8]) -> bool {
    count_records(out) == 1
}

#[test]
fn a_key_update_not_asked_for_changes_only_the_peer_keys() {
    let (mut forger, mut records) = forged();
    let tx_seq = records.tx.seq;
    let wire = forger.seal(ContentType::Handshake, &[24, 0, 0, 1, 0]);
    let opened = open(&mut records, &wire);
    opened.result.unwrap();
    assert!(opened.out.is_empty(), "not asked: no KeyUpdate of ours");
    assert_eq!((records.rx.seq, records.tx.seq), (0, tx_seq));
    // A record under the old keys no longer opens.
    let wire = forger.seal(ContentType::ApplicationData, b"old keys");
    let opened = open(&mut records, &wire);
    assert!(matches!(opened.result, Err((_, Error::DecryptError))));
    assert!(alert_sent(&opened.out));
}

#[test]
fn a_key_update_must_end_its_record_and_be_well_formed() {
    let (mut forger, mut records) = forged();
    let wire = forger.seal(ContentType::Handshake, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0]);
    let opened = open(&mut records, &wire);
    assert!(matches!(
        opened.result,
        Err((
            _,
            Error::PeerMisbehaved(PeerMisbehaved::KeyEpochWithPendingFragment)
        ))
    ));
    let (mut forger, mut records) = forged();
    let wire = forger.seal(ContentType::Handshake, &[24, 0, 0, 1, 7]);
    let opened = open(&mut records, &wire);
    assert!(matches!(
        opened.result,
        Err((_, Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate)))
    ));
    assert!(alert_sent(&opened.out));
}

#[test]
fn other_handshake_messages_and_change_cipher_spec_are_refused() {
    // A ClientHello after the handshake (renegotiation does not exist in TLS 1.3).
    let (mut forger, mut records) = forged();
    let opened = open(
        &mut records,
        &forger.seal(ContentType::Handshake, &[1, 0, 0, 0]),
    );
    assert!(matches!(
        opened.result,
        Err((_, Error::InappropriateHandshakeMessage { .. }))
    ));
    assert!(alert_sent(&opened.out));
    // A handshake message cut at its record's end.
    let (mut forger, mut records) = forged();
    let opened = open(
        &mut records,
        &forger.seal(ContentType::Handshake, &[24, 0, 0, 1]),
    );
    assert!(matches!(opened.result, Err((_, Error::InvalidMessage(_)))));
    // An outer ChangeCipherSpec record.
    let (_, mut records) = forged();
    let opened = open(&mut records, &[20, 3, 3, 0, 1, 1]);
    assert!(matches!(opened.result, Err((0, Error::PeerMisbehaved(_)))));
    assert!(alert_sent(&opened.out));
    // An inner one.
    let (mut forger, mut records) = forged();
    let opened = open(
        &mut records,
        &forger.seal(ContentType::ChangeCipherSpec, &[1]),
    );
    assert!(matches!(opened.result, Err((_, Error::PeerMisbehaved(_)))));
    // A fatal alert from the peer: an error, and no alert back.
    let (mut forger, mut records) = forged();
    let opened = open(&mut records, &forger.seal(ContentType::Alert, &[2, 40]));
    assert!(matches!(opened.result, Err((_, Error::AlertReceived(_)))));
    assert!(opened.out.is_empty());
}

#[test]
fn close_notify_ends_the_stream_cleanly_and_nothing_after_it_is_read() {
    let (mut client, mut records) = connect(Suite::Aes256);
    client.writer().write_all(b"last words").unwrap();
    client.send_close_notify();
    let mut wire = from_client(&mut client);
    let closed_at = wire.len();
    wire.extend_from_slice(b"\x17\x03\x03\x00\x20 and garbage after the close");
    let opened = open(&mut records, &wire);
    assert_eq!(
        opened.result.unwrap(),
        Read {
            consumed: closed_at,
            closed: true
        }
    );
    assert_eq!(opened.plain, b"last words");
    // Ours, for the shutdown.
    let mut scratch = Vec::new();
    let mut out = Out::new(&mut scratch);
    records.close_notify(&mut out).unwrap();
    to_client(&mut client, out.filled()).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(client.reader().read(&mut buf).unwrap(), 0, "a clean end");
}

#[test]
fn a_tampered_record_fails_with_bad_record_mac() {
    let (mut client, mut records) = connect(Suite::Aes256);
    client.writer().write_all(b"precious").unwrap();
    let mut wire = from_client(&mut client);
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let opened = open(&mut records, &wire);
    assert!(matches!(opened.result, Err((_, Error::DecryptError))));
    assert!(opened.plain.is_empty());
    let told = to_client(&mut client, &opened.out);
    assert_eq!(
        told.err(),
        Some(Error::AlertReceived(AlertDescription::BadRecordMac))
    );
}

#[test]
fn an_oversized_record_is_refused_from_its_header() {
    let (mut client, mut records) = connect(Suite::Aes256);
    let too_long = (MAX_CIPHERTEXT + 1) as u16;
    let [a, b] = too_long.to_be_bytes();
    let opened = open(&mut records, &[23, 3, 3, a, b]);
    assert!(matches!(
        opened.result,
        Err((0, Error::PeerSentOversizedRecord))
    ));
    let told = to_client(&mut client, &opened.out);
    assert_eq!(
        told.err(),
        Some(Error::AlertReceived(AlertDescription::RecordOverflow))
    );
    // The largest allowed length is waited for, not refused.
    let [a, b] = (MAX_CIPHERTEXT as u16).to_be_bytes();
    assert_eq!(header(&[23, 3, 3, a, b]), Ok(None));
}

#[test]
fn records_split_across_reads_byte_by_byte_are_read_whole() {
    let (mut client, mut records) = connect(Suite::Aes256);
    let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    client.writer().write_all(&data).unwrap();
    let wire = from_client(&mut client);
    let mut held = Vec::new();
    let mut plain = Vec::new();
    let mut scratch = Vec::new();
    for &byte in &wire {
        held.push(byte);
        let mut out = Out::new(&mut scratch);
        let read = records.read(&mut held, &mut plain, &mut out).unwrap();
        held.drain(..read.consumed);
        assert!(held.len() < HEADER + MAX_CIPHERTEXT);
    }
    assert!(held.is_empty());
    assert_eq!(plain, data);
}

#[test]
fn sequence_numbers_never_wrap_and_keys_update_at_the_confidentiality_limit() {
    let (_, mut records) = connect(Suite::Aes256);
    records.tx.seq = u64::MAX;
    let mut scratch = Vec::new();
    let mut out = Out::new(&mut scratch);
    assert!(matches!(
        records.write(b"x", &mut out),
        Err(Error::EncryptError)
    ));
    records.rx.seq = u64::MAX;
    let opened = open(
        &mut records,
        &[
            23, 3, 3, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    assert!(opened.result.is_err());

    let (_, mut records) = connect(Suite::Aes256);
    records.tx.seq = records.suite.common.confidentiality_limit;
    let wire = seal(&mut records, b"x");
    assert_eq!(count_records(&wire), 2, "our KeyUpdate, then the data");
    assert_eq!(records.tx.seq, 1, "under new keys");
}

#[test]
fn the_fuzzing_pair_reads_what_its_peer_seals() {
    for step in [1, 7, 1000] {
        let mut pair = Pair::new();
        let mut wire = pair.seal(23, b"hello ");
        wire.extend(pair.seal(23, b"world"));
        wire.extend(pair.seal(21, &[1, 0]));
        let (plain, end, _) = pair.feed(&wire, step);
        assert_eq!(plain, b"hello world");
        assert_eq!(end, Some(Ok(())));
    }
}

proptest! {
    /// Arbitrary bytes, in reads of any size: no panic, at most one partial record held back, and a
    /// malformed record ends the session with an error (never silently skipped).
    #[test]
    fn arbitrary_bytes_are_refused_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..2048), step in 1usize..64) {
        let mut pair = Pair::new();
        let (plain, end, most) = pair.feed(&bytes, step);
        prop_assert!(most < HEADER + MAX_CIPHERTEXT);
        // Random bytes never forge a tag.
        prop_assert!(plain.is_empty());
        if bytes.len() >= HEADER {
            prop_assert!(end.is_some() || header(&bytes).is_ok_and(|h| h.is_none()));
        }
    }

    /// Records the peer really sealed, of any inner type and content, in any reads: application data
    /// comes out whole and in order until the first record that is not allowed, which ends it.
    #[test]
    fn sealed_records_of_any_kind(records in proptest::collection::vec((prop_oneof![Just(23u8), Just(21), Just(22), Just(20), any::<u8>()], proptest::collection::vec(any::<u8>(), 0..64)), 1..12), step in 1usize..200) {
        let mut pair = Pair::new();
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        let mut open_ended = true;
        for (typ, payload) in &records {
            wire.extend(pair.seal(*typ, payload));
            if open_ended {
                if *typ == 23 {
                    expected.extend_from_slice(payload);
                } else {
                    open_ended = false;
                }
            }
        }
        let mut reader = Pair::new();
        let (plain, _, _) = reader.feed(&wire, step);
        // Data records before the first other record all arrive (a user_canceled alert is skipped,
        // so more may follow it).
        prop_assert!(plain.starts_with(&expected));
    }
}
