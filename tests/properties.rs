//! Properties of the parsers that stand between a client and the tenant,
//! checked on generated inputs (a fuzzing pass in every test run; the
//! coverage-guided targets are in fuzz/).

use proptest::prelude::*;
use tollgate::route::{Route, classify};
use tollgate::schema::{UnknownFields, parse_strict, validate};

/// Path-ish strings: segments of letters, escapes, dots and separators.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("api".to_owned()),
        Just("API".to_owned()),
        Just("v2".to_owned()),
        Just("organizations".to_owned()),
        Just("Organizations".to_owned()),
        Just("connections".to_owned()),
        Just("enabled_connections".to_owned()),
        Just("self-service-profiles".to_owned()),
        Just("sso-ticket".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2E".to_owned()),
        Just("%2F".to_owned()),
        Just("%5c".to_owned()),
        Just("%ff".to_owned()),
        Just("".to_owned()),
        "[a-zA-Z0-9_|%-]{1,12}",
    ];
    prop::collection::vec(segment, 0..8).prop_map(|s| format!("/{}", s.join("/")))
}

fn method() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        Just(http::Method::GET),
        Just(http::Method::POST),
        Just(http::Method::PATCH),
        Just(http::Method::PUT),
        Just(http::Method::DELETE),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Failures are reported in the test output, not written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Classification never panics, and a governed request's canonical path
    /// classifies to the same operation: what is forwarded is what was judged.
    #[test]
    fn canonical_paths_are_stable(m in method(), p in path()) {
        if let Ok(Route::Governed(g)) = classify(&m, &p, None) {
            let again = classify(&m, &g.path, None);
            prop_assert_eq!(again, Ok(Route::Governed(g.clone())));
            prop_assert!(!g.path.contains("//") && !g.path.ends_with('/'));
        }
    }

    /// No dot segment or encoded separator survives classification, on any route.
    #[test]
    fn ambiguous_segments_never_pass(m in method(), p in path()) {
        let lower = p.to_ascii_lowercase();
        // One trailing slash is the tenant's too; any other empty segment is not.
        let trimmed = p.strip_suffix('/').unwrap_or(&p);
        let ambiguous = trimmed.split('/').skip(1).any(|s| s == ".." || s.is_empty())
            || lower.contains("%2e%2e") || lower.contains("%2f") || lower.contains("%5c");
        if ambiguous && p != "/" {
            prop_assert!(classify(&m, &p, None).is_err(), "{} accepted", p);
        }
    }

    /// Strict parsing never panics; what it accepts re-serialises to a body
    /// that parses to the same value (the forwarded bytes mean what was judged).
    #[test]
    fn accepted_json_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(map) = parse_strict(&bytes) {
            let out = serde_json::to_vec(&map).expect("serialise");
            prop_assert_eq!(parse_strict(&out).expect("re-parse"), map);
        }
    }

    /// JSON-shaped inputs with repeated keys are always refused.
    #[test]
    fn duplicate_keys_are_refused(key in "[a-z_]{1,12}", a in any::<bool>(), b in any::<bool>(), depth in 0usize..5) {
        let inner = format!(r#"{{"{key}":{a},"{key}":{b}}}"#);
        let body = (0..depth).fold(inner, |acc, i| format!(r#"{{"k{i}":{acc}}}"#));
        prop_assert!(parse_strict(body.as_bytes()).is_err());
    }

    /// Validation never panics on any object for any governed route.
    #[test]
    fn validation_is_total(m in method(), p in path(), bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        if let (Ok(Route::Governed(g)), Ok(map)) = (classify(&m, &p, None), parse_strict(&bytes)) {
            let _ = validate(&g, Some(map), UnknownFields::Reject);
        }
    }
}
