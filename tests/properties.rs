//! Properties of the parsers that stand between a client and the tenant,
//! checked on generated inputs (a fuzzing pass in every test run; the
//! coverage-guided targets are in fuzz/).

use proptest::prelude::*;
use tollgate::route::{Route, classify};
use tollgate::schema::{UnknownFields, number_literals, parse_strict, to_json_text, validate};

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

/// A literal path segment as a client might spell it: any case, and any
/// one of its characters percent-encoded.
fn spelled(literal: &'static str) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(any::<bool>(), literal.len()),
        0..=literal.len(),
    )
        .prop_map(move |(upper, encode_at)| {
            literal
                .chars()
                .zip(upper)
                .enumerate()
                .map(|(i, (c, up))| {
                    let c = if up { c.to_ascii_uppercase() } else { c };
                    if i == encode_at {
                        format!("%{:02X}", c as u32)
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
}

/// An id as Auth0 spells them (letters, digits, `_`, `|`, `-`).
fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_|-]{1,24}"
}

/// A governed request: its method and a path naming one of the governed
/// routes, spelled with case, percent-encoding and trailing-slash variations.
fn governed() -> impl Strategy<Value = (http::Method, String)> {
    let family = || prop_oneof![spelled("connections"), spelled("enabled_connections")];
    let prefix = || (spelled("api"), spelled("v2"));
    let slash = prop_oneof![Just(""), Just("/")];
    prop_oneof![
        (prefix(), spelled("organizations"), slash.clone())
            .prop_map(|((a, v), o, s)| (http::Method::POST, format!("/{a}/{v}/{o}{s}"))),
        (
            prefix(),
            spelled("organizations"),
            id(),
            family(),
            slash.clone()
        )
            .prop_map(|((a, v), o, i, f, s)| (
                http::Method::POST,
                format!("/{a}/{v}/{o}/{i}/{f}{s}")
            )),
        (
            prefix(),
            spelled("organizations"),
            id(),
            family(),
            id(),
            prop_oneof![Just(http::Method::PATCH), Just(http::Method::DELETE)],
            slash.clone()
        )
            .prop_map(|((a, v), o, i, f, c, m, s)| (m, format!("/{a}/{v}/{o}/{i}/{f}/{c}{s}"))),
        (
            prefix(),
            spelled("self-service-profiles"),
            id(),
            spelled("sso-ticket"),
            slash
        )
            .prop_map(|((a, v), p, i, t, s)| (
                http::Method::POST,
                format!("/{a}/{v}/{p}/{i}/{t}{s}")
            )),
    ]
}

/// A JSON number as a client might write it.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "-?[1-9][0-9]{18,30}",
        "-?(0|[1-9][0-9]{0,5})\\.[0-9]{1,8}",
        "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,4})?[eE][+-]?[0-9]{1,3}",
        Just("-0".to_owned()),
    ]
}

/// A JSON value of the shapes association bodies hold, and then some.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        number(),
        prop_oneof![
            Just("none"),
            Just("readonly"),
            Just("limited"),
            Just("full"),
            Just("limit\\u0065d"),
            Just("\\ud83d\\ude00"),
            Just("x\\\"y"),
        ]
        .prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4).prop_map(|m| {
                let fields: Vec<String> =
                    m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A JSON object with the association fields (each with a value of any
/// shape), maybe an id, maybe unknown keys; written with varying spaces.
fn body() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("organization_connection_name"),
        Just("assign_membership_on_login"),
        Just("show_as_button"),
        Just("is_signup_enabled"),
        Just("organization_access_level"),
        Just("organization_member_access_level"),
        Just("is_enabled"),
        Just("connection_id"),
        Just("name"),
        Just("metadata"),
    ];
    let space = prop_oneof![Just(""), Just(" "), Just("\n\t")];
    (prop::collection::btree_map(field, value(), 0..8), space).prop_map(|(fields, sp)| {
        let fields: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{sp}\"{k}\"{sp}:{sp}{v}"))
            .collect();
        format!("{{{}{sp}}}", fields.join(","))
    })
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

    /// Classification never panics on path-ish input, and a governed
    /// request's canonical path classifies to the same operation.
    #[test]
    fn canonical_paths_are_stable(m in method(), p in path()) {
        if let Ok(Route::Governed(g)) = classify(&m, &p, None) {
            let again = classify(&m, &g.path, None);
            prop_assert_eq!(again, Ok(Route::Governed(g.clone())));
        }
    }

    /// Every spelling of a governed route (case, `%XX`, one trailing slash)
    /// is governed, and forwarded on a canonical path that classifies to the
    /// same operation: what is forwarded is what was judged.
    #[test]
    fn governed_spellings_are_governed_and_canonical((m, p) in governed()) {
        let Ok(Route::Governed(g)) = classify(&m, &p, None) else {
            return Err(TestCaseError::fail(format!("{m} {p} not governed")));
        };
        let again = classify(&m, &g.path, None);
        prop_assert_eq!(again, Ok(Route::Governed(g.clone())));
        prop_assert!(!g.path.contains("//") && !g.path.ends_with('/'));
        prop_assert!(g.path.starts_with("/api/v2/"), "{}", g.path);
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

    /// Strict parsing never panics on any bytes.
    #[test]
    fn strict_parsing_is_total(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_strict(&bytes);
    }

    /// Every generated body parses, and re-serialises to text that parses to
    /// the same value, every number spelled exactly as it was written.
    #[test]
    fn accepted_json_round_trips(text in body()) {
        let map = parse_strict(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let literals = number_literals(&text);
        let out = to_json_text(&map, &literals);
        prop_assert_eq!(parse_strict(out.as_bytes()).expect("re-parse"), map);
        prop_assert_eq!(number_literals(&out), literals);
    }

    /// JSON-shaped inputs with repeated keys are always refused.
    #[test]
    fn duplicate_keys_are_refused(key in "[a-z_]{1,12}", a in any::<bool>(), b in any::<bool>(), depth in 0usize..5) {
        let inner = format!(r#"{{"{key}":{a},"{key}":{b}}}"#);
        let body = (0..depth).fold(inner, |acc, i| format!(r#"{{"k{i}":{acc}}}"#));
        prop_assert!(parse_strict(body.as_bytes()).is_err());
    }

    /// Validation never panics on any association-shaped body for any
    /// governed route, and what it accepts carries only values of the
    /// schema's types.
    #[test]
    fn validation_is_total((m, p) in governed(), text in body()) {
        let Ok(Route::Governed(g)) = classify(&m, &p, None) else {
            return Err(TestCaseError::fail(format!("{m} {p} not governed")));
        };
        let map = parse_strict(text.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Ok(v) = validate(&g, Some(map), UnknownFields::Reject) {
            for change in &v.changes {
                for (field, value) in &change.fields {
                    let ok = match field.as_str() {
                        "assign_membership_on_login" | "show_as_button" | "is_signup_enabled" => value.is_boolean(),
                        "is_enabled" => value.is_boolean() || value.is_null(),
                        _ => value.is_string() || value.is_null(),
                    };
                    prop_assert!(ok, "{} = {} accepted", field, value);
                }
            }
        }
    }
}
