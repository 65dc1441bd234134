//! The protocol router's matchers (`lariat::route::Matcher`) on untrusted first bytes: they must never
//! panic, and a verdict must be final once given: bytes that match (or cannot match) still do with more
//! bytes after them, since the router decides as soon as a verdict comes and never looks again.
#![no_main]

use std::sync::Arc;

use lariat::route::{Matcher, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    if data.is_empty() {
        return;
    }
    let matchers = [
        Matcher::TlsClientHello,
        Matcher::Http1,
        Matcher::Http2,
        Matcher::ProxyHeader,
        Matcher::Prefix(Arc::from(&b"GAME/1 "[..])),
    ];
    let k = 1 + cut as usize % data.len();
    for m in &matchers {
        let early = m.verdict(&data[..k]);
        let late = m.verdict(data);
        match early {
            Verdict::Match | Verdict::NoMatch => {
                assert_eq!(early, late, "{m:?}: {k} bytes said {early:?}, all {} say {late:?}", data.len())
            }
            Verdict::NeedMore => {}
        }
    }
});
