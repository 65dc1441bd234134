//! A record layer and the peer's side of it on fixed keys, for the fuzzing harness (`fuzz/tls_records`)
//! and the record layer's proptests: the peer seals records of any content, the layer reads them in
//! reads of any size as a session does.

use super::*;

/// A record layer and the peer's side of it (its encrypter, to make records the layer accepts),
/// both on fixed AES-256-GCM keys.
pub struct Pair {
    records: Records,
    peer: Box<dyn MessageEncrypter>,
    peer_seq: u64,
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Pair {
    /// Fixed keys; the peer seals what the layer opens.
    pub fn new() -> Pair {
        let SupportedCipherSuite::Tls13(suite) =
            super::super::provider::cipher_suite::TLS13_AES_256_GCM_SHA384
        else {
            unreachable!("a TLS 1.3 suite")
        };
        let secrets = |k: u8| ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([k; 32]),
            iv: Iv::from([k; 12]),
        };
        let records =
            Records::new(suite, (0, secrets(1)), (0, secrets(2)), None).expect("AES-256-GCM keys");
        Pair {
            records,
            peer: suite
                .aead_alg
                .encrypter(AeadKey::from([2; 32]), Iv::from([2; 12])),
            peer_seq: 0,
        }
    }

    /// A record of inner type `typ` holding `payload` (at most 2^14 bytes are sealed), as the peer
    /// would send it.
    pub fn seal(&mut self, typ: u8, payload: &[u8]) -> Vec<u8> {
        let payload = &payload[..payload.len().min(MAX_FRAGMENT)];
        let record = self.peer.encrypt(
            OutboundPlainMessage {
                typ: ContentType::from(typ),
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(payload),
            },
            self.peer_seq,
        );
        self.peer_seq += 1;
        record.map(|r| r.encode()).unwrap_or_default()
    }

    /// Feeds `wire` to the layer in reads of `step` bytes, as the session does (a partial record
    /// kept until the rest comes). Returns the plaintext, whether it ended (cleanly, or with the
    /// error), and the most bytes ever held back as a partial record.
    pub fn feed(
        &mut self,
        wire: &[u8],
        step: usize,
    ) -> (Vec<u8>, Option<Result<(), String>>, usize) {
        let mut plain = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        let mut most = 0;
        let mut scratch = Vec::new();
        for chunk in wire.chunks(step.max(1)) {
            held.extend_from_slice(chunk);
            let mut out = Out::new(&mut scratch);
            match self.records.read(&mut held, &mut plain, &mut out) {
                Ok(read) => {
                    held.drain(..read.consumed);
                    if read.closed {
                        return (plain, Some(Ok(())), most);
                    }
                }
                Err((_, e)) => {
                    self.records.alert(&e, &mut out);
                    return (plain, Some(Err(e.to_string())), most);
                }
            }
            most = most.max(held.len());
            self.records.rest();
        }
        (plain, None, most)
    }
}
