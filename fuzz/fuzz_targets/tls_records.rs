//! lariat's TLS 1.3 record layer (what reads every record a client sends after the handshake) on
//! untrusted bytes: raw bytes off the wire, or records its peer really sealed (any inner content type,
//! any payload, so the fuzzer reaches past the AEAD into alerts, handshake messages and padding), in
//! reads of any size. It must never panic, never hold back more than one partial record, never let
//! unsealed bytes through as data, and end every malformed stream with an error.
#![no_main]

use lariat::tls::records_fuzzing::Pair;
use libfuzzer_sys::fuzz_target;

/// A record's header and the largest ciphertext a TLS 1.3 peer may send.
const MOST_HELD: usize = 5 + (1 << 14) + 256;

fuzz_target!(|input: &[u8]| {
    let Some((&[mode, step], rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let mut pair = Pair::new();
    let sealed = mode & 1 == 1;
    let mut wire = Vec::new();
    let mut payload_bytes = 0;
    if sealed {
        // [inner type, length, payload…] per record.
        let mut r = rest;
        while let [typ, len, tail @ ..] = r {
            let n = usize::from(*len).min(tail.len());
            wire.extend(pair.seal(*typ, &tail[..n]));
            payload_bytes += n;
            r = &tail[n..];
        }
        if mode & 2 == 2 && !wire.is_empty() {
            // One flipped bit somewhere: from there on nothing may come through.
            let at = usize::from(step) * 31 % wire.len();
            wire[at] ^= 1 << (mode >> 5);
        }
    } else {
        wire.extend_from_slice(rest);
    }
    let (plain, end, most) = pair.feed(&wire, 1 + usize::from(step));
    assert!(most < MOST_HELD, "held {most} bytes of a partial record");
    if sealed {
        assert!(plain.len() <= payload_bytes);
    } else {
        assert!(plain.is_empty(), "unsealed bytes came through as data");
        if wire.len() >= MOST_HELD {
            assert!(end.is_some(), "a malformed stream did not end");
        }
    }
});
