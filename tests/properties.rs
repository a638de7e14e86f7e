//! Properties of the parsers that stand between a client and the tenant,
//! checked on generated inputs (a fuzzing pass in every test run; the
//! coverage-guided targets are in fuzz/, run by `fuzz/run.sh`).
//!
//! Each property counts how many of its cases reached the branch it is
//! about and fails below a stated share: a generator that drifts away from
//! what it claims to test fails the test, not silently passes it. The
//! shares are printed (`cargo test --test properties -- --nocapture`).

use std::cell::Cell;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::Value;
use tollgate::association::{self, Type};
use tollgate::route::{Governed, Operation, Route, classify};
use tollgate::schema::{UnknownFields, number_literals, parse_strict, to_json_text, validate};

/// Cases per property.
const CASES: u32 = 2000;

/// Runs `check` on [`CASES`] generated inputs; `check` says whether its
/// input reached the branch the property is about. Fails when a case fails,
/// or when fewer than `floor` of the cases reached the branch.
fn reaching<S: Strategy>(
    name: &str,
    branch: &str,
    floor: f64,
    strategy: S,
    check: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        // Failures are reported in the test output, not written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let (total, reached) = (Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&strategy, |input| {
        total.set(total.get() + 1);
        if check(input)? {
            reached.set(reached.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let share = f64::from(reached.get()) / f64::from(total.get().max(1));
    println!(
        "{name}: {} of {} cases ({:.0} %) {branch} (floor {:.0} %)",
        reached.get(),
        total.get(),
        share * 100.0,
        floor * 100.0
    );
    assert!(
        share >= floor,
        "{name}: only {:.1} % of cases {branch}; the generator no longer tests what it claims",
        share * 100.0
    );
}

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

/// A request to classify: mostly governed spellings, some of them with a
/// segment of noise inserted, and path-ish strings.
fn request() -> impl Strategy<Value = (http::Method, String)> {
    let noisy =
        (governed(), path(), any::<prop::sample::Index>()).prop_map(|((m, p), noise, at)| {
            let mut segments: Vec<&str> = p.split('/').collect();
            let at = 1 + at.index(segments.len());
            segments.insert(at.min(segments.len()), noise.trim_start_matches('/'));
            (m, segments.join("/"))
        });
    prop_oneof![
        6 => governed(),
        2 => noisy,
        2 => (method(), path()),
    ]
}

/// Bytes around JSON objects: generated bodies, mutated (a byte changed,
/// inserted or cut; a prefix or suffix added), and arbitrary bytes.
fn json_ish() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (body(), 0usize..6, any::<prop::sample::Index>(), any::<u8>()).prop_map(
        |(text, how, at, byte)| {
            let mut b = text.into_bytes();
            let i = at.index(b.len().max(1)).min(b.len());
            match how {
                0 => {}
                1 if i < b.len() => b[i] = byte,
                1 | 2 => b.insert(i, byte),
                3 => b.truncate(i),
                4 => b.splice(0..0, [0xEF, 0xBB, 0xBF]).for_each(drop),
                _ => b.extend_from_slice(b" {}"),
            }
            b
        },
    );
    prop_oneof![
        9 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A value of the field's type, or (one time in eight) any value.
fn value_for(ty: Type) -> BoxedStrategy<String> {
    let typed: BoxedStrategy<String> = match ty {
        Type::Id => id().prop_map(|s| format!("\"{s}\"")).boxed(),
        Type::Name => prop_oneof![
            "[a-zA-Z0-9 _-]{1,50}".prop_map(|s| format!("\"{s}\"")),
            Just("null".to_owned()),
        ]
        .boxed(),
        Type::Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Type::NullableOnUpdateBool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Type::AccessLevel => prop::sample::select(association::ACCESS_LEVELS.to_vec())
            .prop_map(|s| format!("\"{s}\""))
            .boxed(),
    };
    prop_oneof![7 => typed, 1 => value()].boxed()
}

/// An association object as `op` takes it, from the field table: some of
/// its settable fields, the id `id_key` when it names one, now and then an
/// unknown key.
fn association_object(legacy: bool, id_key: Option<&'static str>) -> BoxedStrategy<String> {
    let fields: Vec<_> = association::settable(legacy).collect();
    let picks = fields
        .into_iter()
        .map(|f| {
            (any::<bool>(), value_for(f.ty))
                .prop_map(move |(on, v)| on.then(|| format!("\"{}\":{v}", f.name)))
        })
        .collect::<Vec<_>>();
    (picks, id(), prop::bool::weighted(0.05))
        .prop_map(move |(picked, id, unknown)| {
            let mut parts: Vec<String> = picked.into_iter().flatten().collect();
            if let Some(key) = id_key {
                parts.insert(0, format!("\"{key}\":\"{id}\""));
            }
            if unknown {
                parts.push("\"metadata\":{}".to_owned());
            }
            format!("{{{}}}", parts.join(","))
        })
        .boxed()
}

/// A route and a body shaped for it: what its operation takes (arrays of
/// associations for an organization's create and an SSO ticket; no body for
/// a delete), from the same field table the schema uses.
fn route_and_body() -> impl Strategy<Value = (Governed, Option<String>)> {
    governed().prop_flat_map(|(m, p)| {
        let Ok(Route::Governed(g)) = classify(&m, &p, None) else {
            panic!("{m} {p} not governed");
        };
        use Operation::*;
        let body: BoxedStrategy<Option<String>> = match g.operation {
            OrganizationConnectionCreate => association_object(false, Some("connection_id"))
                .prop_map(Some)
                .boxed(),
            OrganizationEnabledConnectionCreate => association_object(true, Some("connection_id"))
                .prop_map(Some)
                .boxed(),
            OrganizationConnectionUpdate => association_object(false, None).prop_map(Some).boxed(),
            OrganizationEnabledConnectionUpdate => {
                association_object(true, None).prop_map(Some).boxed()
            }
            OrganizationConnectionDelete | OrganizationEnabledConnectionDelete => {
                Just(None).boxed()
            }
            OrganizationCreate => (
                "[a-z0-9-]{1,20}",
                prop::collection::vec(association_object(false, Some("connection_id")), 1..4),
            )
                .prop_map(|(name, items)| {
                    Some(format!(
                        "{{\"name\":\"{name}\",\"enabled_connections\":[{}]}}",
                        items.join(",")
                    ))
                })
                .boxed(),
            SsoTicketCreate => {
                prop::collection::vec(association_object(false, Some("organization_id")), 1..4)
                    .prop_map(|items| {
                        Some(format!(
                            "{{\"connection_id\":\"con_1\",\"enabled_organizations\":[{}]}}",
                            items.join(",")
                        ))
                    })
                    .boxed()
            }
        };
        (Just(g), body)
    })
}

/// Whether `value` is of the type `field` takes (on `create` or update).
fn typed(field: &str, value: &Value, create: bool) -> bool {
    let Some(f) = association::field_named(field) else {
        return false;
    };
    match f.ty {
        Type::Id => value.is_string(),
        Type::Name => value.is_string() || value.is_null(),
        Type::Bool => value.is_boolean(),
        Type::NullableOnUpdateBool => value.is_boolean() || (!create && value.is_null()),
        Type::AccessLevel => {
            value
                .as_str()
                .is_some_and(|s| association::ACCESS_LEVELS.contains(&s))
                || (!create && value.is_null())
        }
    }
}

/// Classification never panics, and a governed request's canonical path
/// classifies to the same operation. At least half the cases are governed.
#[test]
fn canonical_paths_are_stable() {
    reaching(
        "canonical_paths_are_stable",
        "classified as governed",
        0.5,
        request(),
        |(m, p)| {
            let Ok(Route::Governed(g)) = classify(&m, &p, None) else {
                return Ok(false);
            };
            let again = classify(&m, &g.path, None);
            prop_assert_eq!(again, Ok(Route::Governed(g.clone())));
            Ok(true)
        },
    );
}

/// Every spelling of a governed route (case, `%XX`, one trailing slash)
/// is governed, and forwarded on a canonical path that classifies to the
/// same operation: what is forwarded is what was judged. (Every case must
/// reach the branch: one that does not fails.)
#[test]
fn governed_spellings_are_governed_and_canonical() {
    reaching(
        "governed_spellings",
        "governed",
        1.0,
        governed(),
        |(m, p)| {
            let Ok(Route::Governed(g)) = classify(&m, &p, None) else {
                return Err(TestCaseError::fail(format!("{m} {p} not governed")));
            };
            let again = classify(&m, &g.path, None);
            prop_assert_eq!(again, Ok(Route::Governed(g.clone())));
            prop_assert!(!g.path.contains("//") && !g.path.ends_with('/'));
            prop_assert!(g.path.starts_with("/api/v2/"), "{}", g.path);
            Ok(true)
        },
    );
}

/// No dot segment or encoded separator survives classification, on any
/// route. At least a third of the cases are ambiguous.
#[test]
fn ambiguous_segments_never_pass() {
    reaching(
        "ambiguous_segments_never_pass",
        "ambiguous and refused",
        0.33,
        (method(), path()),
        |(m, p)| {
            let lower = p.to_ascii_lowercase();
            // One trailing slash is the tenant's too; any other empty segment is not.
            let trimmed = p.strip_suffix('/').unwrap_or(&p);
            let ambiguous = trimmed
                .split('/')
                .skip(1)
                .any(|s| s == ".." || s.is_empty())
                || lower.contains("%2e%2e")
                || lower.contains("%2f")
                || lower.contains("%5c");
            if ambiguous && p != "/" {
                prop_assert!(classify(&m, &p, None).is_err(), "{} accepted", p);
                return Ok(true);
            }
            Ok(false)
        },
    );
}

/// Strict parsing never panics on any bytes, and what it accepts
/// re-serialises to the same value with its numbers as written. At least
/// half the cases get past UTF-8 into the JSON parser with an object's
/// opening brace, and a tenth are accepted.
#[test]
fn strict_parsing_is_total() {
    let accepted = Cell::new(0u32);
    reaching(
        "strict_parsing_is_total",
        "reached the JSON parser at an object",
        0.5,
        json_ish(),
        |bytes| {
            let parsed = parse_strict(&bytes);
            if let Ok(map) = &parsed {
                accepted.set(accepted.get() + 1);
                let text = std::str::from_utf8(&bytes).expect("accepted input is UTF-8");
                let literals = number_literals(text);
                let out = to_json_text(map, &literals);
                prop_assert_eq!(&parse_strict(out.as_bytes()).expect("re-parse"), map);
                prop_assert_eq!(number_literals(&out), literals);
            }
            Ok(std::str::from_utf8(&bytes).is_ok_and(|t| t.trim_start().starts_with('{')))
        },
    );
    let share = f64::from(accepted.get()) / f64::from(CASES);
    println!(
        "strict_parsing_is_total: {:.0} % accepted (floor 10 %)",
        share * 100.0
    );
    assert!(share >= 0.1, "only {:.1} % accepted", share * 100.0);
}

/// Every generated body parses, and re-serialises to text that parses to
/// the same value, every number spelled exactly as it was written.
#[test]
fn accepted_json_round_trips() {
    reaching("accepted_json_round_trips", "parsed", 1.0, body(), |text| {
        let map = parse_strict(text.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let literals = number_literals(&text);
        let out = to_json_text(&map, &literals);
        prop_assert_eq!(parse_strict(out.as_bytes()).expect("re-parse"), map);
        prop_assert_eq!(number_literals(&out), literals);
        Ok(true)
    });
}

/// A key spelled with one character as a `\uXXXX` escape (or not).
fn escaped(key: &str, at: usize) -> String {
    key.chars()
        .enumerate()
        .map(|(i, c)| {
            if i == at {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// JSON-shaped inputs with repeated keys are always refused, however the
/// second is spelled (plainly, or with an escape), at any depth, in objects
/// and in arrays of objects.
#[test]
fn duplicate_keys_are_refused() {
    let strategy = (
        "[a-z_]{1,12}",
        any::<bool>(),
        any::<bool>(),
        0usize..5,
        any::<prop::sample::Index>(),
        any::<bool>(),
        any::<bool>(),
    );
    reaching(
        "duplicate_keys_are_refused",
        "spelled the second key with an escape",
        0.4,
        strategy,
        |(key, a, b, depth, at, escape, in_array)| {
            let second = if escape {
                escaped(&key, at.index(key.len()))
            } else {
                key.clone()
            };
            let inner = format!(r#"{{"{key}":{a},"{second}":{b}}}"#);
            let body = (0..depth).fold(inner, |acc, i| {
                if in_array {
                    format!(r#"{{"k{i}":[1,{acc}]}}"#)
                } else {
                    format!(r#"{{"k{i}":{acc}}}"#)
                }
            });
            prop_assert!(parse_strict(body.as_bytes()).is_err(), "{} accepted", body);
            Ok(escape)
        },
    );
}

/// Validation never panics on bodies shaped for each governed route, and
/// what it accepts carries only values of the schema's types; a body with
/// a value of the wrong type is refused. At least 30 % of the cases are
/// accepted with typed fields checked, and 15 % refused on a type.
#[test]
fn validation_is_total() {
    let refused = Cell::new(0u32);
    reaching(
        "validation_is_total",
        "accepted with typed fields checked",
        0.3,
        route_and_body(),
        |(g, text)| {
            let map = match &text {
                Some(t) => Some(
                    parse_strict(t.as_bytes())
                        .map_err(|e| TestCaseError::fail(format!("{t}: {e}")))?,
                ),
                None => None,
            };
            match validate(&g, map, UnknownFields::Reject) {
                Ok(v) => {
                    let mut checked = false;
                    for change in &v.changes {
                        let create = change.operation.is_create();
                        for (field, value) in &change.fields {
                            prop_assert!(
                                typed(field, value, create),
                                "{} = {} accepted on {:?}",
                                field,
                                value,
                                g.operation
                            );
                            checked = true;
                        }
                    }
                    Ok(checked)
                }
                Err(e) => {
                    if e.message.starts_with("Expected type")
                        || e.message.starts_with("No enum match")
                        || e.message.contains("String length")
                    {
                        refused.set(refused.get() + 1);
                    }
                    Ok(false)
                }
            }
        },
    );
    let share = f64::from(refused.get()) / f64::from(CASES);
    println!(
        "validation_is_total: {:.0} % refused on a type (floor 15 %)",
        share * 100.0
    );
    assert!(
        share >= 0.15,
        "only {:.1} % refused on a type",
        share * 100.0
    );
}
