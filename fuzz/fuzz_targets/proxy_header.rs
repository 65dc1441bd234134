//! `lariat::proxy::parse_header` on untrusted bytes, in every mode (the first byte picks it): it must
//! never panic; a header it returns lies within the input, and parsing exactly its bytes again gives the
//! same header and length (what the connection does after peeking: it consumes `len` bytes and no more).
//! Every shorter prefix of those bytes must be "not yet" (`Ok(None)`), never an error or another header:
//! a socket may deliver the header in any pieces. Set `LARIAT_FUZZ_NO_PREFIXES=1` to leave that last
//! check out (to hunt for other failures while a prefix bug is open).
#![no_main]

use std::sync::OnceLock;

use lariat::proxy::{parse_header, ProxyMode};
use libfuzzer_sys::fuzz_target;

fn check_prefixes() -> bool {
    static CHECK: OnceLock<bool> = OnceLock::new();
    *CHECK.get_or_init(|| std::env::var_os("LARIAT_FUZZ_NO_PREFIXES").is_none())
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let mode = match selector % 4 {
        0 => ProxyMode::Off,
        1 => ProxyMode::V1,
        2 => ProxyMode::V2,
        _ => ProxyMode::Any,
    };
    let Ok(Some((header, len))) = parse_header(data, mode) else {
        return;
    };
    assert!(
        len <= data.len(),
        "{mode:?}: header length {len} > input {}",
        data.len()
    );
    assert!(len > 0, "{mode:?}: an empty header");
    assert!(
        matches!(header.version, 1 | 2),
        "{mode:?}: version {}",
        header.version
    );
    match parse_header(&data[..len], mode) {
        Ok(Some((again, again_len))) => {
            assert_eq!(again, header, "{mode:?}: reparsed {len} bytes differently");
            assert_eq!(again_len, len, "{mode:?}: reparsed length differs");
        }
        other => panic!("{mode:?}: the header's own {len} bytes give {other:?}"),
    }
    if check_prefixes() {
        for k in 1..len {
            let prefix = parse_header(&data[..k], mode);
            assert!(
                matches!(prefix, Ok(None)),
                "{mode:?}: {k} of the header's {len} bytes give {prefix:?}, not Ok(None)"
            );
        }
    }
});
