//! Route classification on arbitrary paths: never panics; a governed
//! request's canonical path classifies to the same operation; nothing with a
//! dot segment or an encoded separator is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::route::{Route, classify};

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let Ok(path) = std::str::from_utf8(rest) else { return };
    let method = [http::Method::GET, http::Method::POST, http::Method::PATCH, http::Method::PUT, http::Method::DELETE]
        [usize::from(m) % 5]
        .clone();
    if let Ok(route) = classify(&method, path, None) {
        let lower = path.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("/../"), "{path}");
        if let Route::Governed(g) = route {
            assert_eq!(classify(&method, &g.path, None), Ok(Route::Governed(g.clone())));
        }
    }
});
