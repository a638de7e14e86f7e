//! Strict JSON on arbitrary bytes: never panics; what it accepts
//! re-serialises to bytes that parse to the same value, with every number
//! spelled exactly as in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::schema::{number_literals, parse_strict, to_json_text};

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = parse_strict(data) {
        let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
        let literals = number_literals(text);
        let out = to_json_text(&map, &literals);
        assert_eq!(parse_strict(out.as_bytes()).expect("re-parse"), map);
        assert_eq!(number_literals(&out), literals, "numbers forwarded as written");
    }
});
