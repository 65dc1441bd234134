//! The push-delivery framings on untrusted bytes: any framing, any limit, any split of the input into
//! reads. Decoding must never panic, never buffer an unfinished frame beyond the framing's bound, and
//! deliver frames within the limit.
#![no_main]

use bytes::BytesMut;
use lariat::delivery::{Framing, FramingDecoder};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|input: &[u8]| {
    let Some((&[kind, limit, step], bytes)) = input.split_first_chunk::<3>() else {
        return;
    };
    let max = 1 + limit as usize * 4;
    let framing = match kind % 5 {
        0 => Framing::Raw { max },
        1 => Framing::Lines { max },
        2 => Framing::Packet { header: 1, max },
        3 => Framing::Packet { header: 2, max },
        _ => Framing::Packet { header: 4, max },
    };
    let bound = framing.max_buffered();
    let mut decoder = FramingDecoder::new(framing);
    let mut buf = BytesMut::new();
    let step = 1 + step as usize;
    for chunk in bytes.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= max, "frame over the limit"),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // What stays buffered is one unfinished frame, within the framing's bound (plus this read).
        assert!(buf.len() <= bound + step, "{} buffered, bound {bound}", buf.len());
    }
    let _ = decoder.decode_eof(&mut buf);
});
