//! Schema validation of arbitrary bodies on every governed route: never
//! panics, and an accepted body's changes all point inside the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::route::{Route, classify};
use tollgate::schema::{UnknownFields, parse_strict, validate};

const ROUTES: [(&str, &str); 8] = [
    ("POST", "/api/v2/organizations/org_1/connections"),
    ("PATCH", "/api/v2/organizations/org_1/connections/con_1"),
    ("DELETE", "/api/v2/organizations/org_1/connections/con_1"),
    ("POST", "/api/v2/organizations/org_1/enabled_connections"),
    ("PATCH", "/api/v2/organizations/org_1/enabled_connections/con_1"),
    ("DELETE", "/api/v2/organizations/org_1/enabled_connections/con_1"),
    ("POST", "/api/v2/organizations"),
    ("POST", "/api/v2/self-service-profiles/ssp_1/sso-ticket"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&r, body)) = data.split_first() else { return };
    let (method, path) = ROUTES[usize::from(r) % ROUTES.len()];
    let Ok(Route::Governed(route)) = classify(&method.parse().expect("method"), path, None) else {
        panic!("seed route not governed")
    };
    let Ok(map) = parse_strict(body) else { return };
    let forward = usize::from(r) & 0x80 != 0;
    let unknown = if forward { UnknownFields::Forward } else { UnknownFields::Reject };
    if let Ok(v) = validate(&route, Some(map), unknown) {
        let value = serde_json::Value::Object(v.body.clone().unwrap_or_default());
        for c in &v.changes {
            assert!(c.pointer.is_empty() || value.pointer(&c.pointer).is_some(), "{}", c.pointer);
        }
    }
});
