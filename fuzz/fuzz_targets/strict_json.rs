//! Strict JSON on arbitrary bytes: never panics; what it accepts
//! re-serialises to bytes that parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::schema::parse_strict;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = parse_strict(data) {
        let out = serde_json::to_vec(&map).expect("serialise");
        assert_eq!(parse_strict(&out).expect("re-parse"), map);
    }
});
