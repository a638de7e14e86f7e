use serde_json::json;

use super::*;
use crate::route::{Route, classify};

fn route(method: &str, path: &str) -> Governed {
    let method = method.parse().expect("test method");
    match classify(&method, path, None) {
        Ok(Route::Governed(g)) => g,
        other => panic!("not governed: {other:?}"),
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

const UPDATE: (&str, &str) = ("PATCH", "/api/v2/organizations/org_1/connections/con_1");
const CREATE: (&str, &str) = ("POST", "/api/v2/organizations/org_1/connections");

fn check(at: (&str, &str), body: Value) -> Result<Validated, SchemaError> {
    validate(&route(at.0, at.1), Some(obj(body)), UnknownFields::Reject)
}

fn refused(at: (&str, &str), body: Value, pointer: &str) {
    match check(at, body.clone()) {
        Err(e) => assert_eq!(e.pointer, pointer, "{body}: {e}"),
        Ok(v) => panic!("{body} was accepted: {v:?}"),
    }
}

#[test]
fn strict_json_refuses_ambiguous_bodies() {
    let cases: &[(&[u8], &str)] = &[
        (br#"{"a":1,"a":2}"#, "duplicate"),
        (br#"{"a":{"b":1,"b":1}}"#, "duplicate"),
        (br#"{"a":[{"b":1,"\u0062":2}]}"#, "duplicate"),
        (
            br#"{"organization_access_level":"none","organization\u005faccess_level":"full"}"#,
            "duplicate",
        ),
        (b"\xEF\xBB\xBF{}", "byte-order"),
        (br#"{"a":1} {"a":2}"#, "trailing"),
        (br#"{"a":1}x"#, "trailing"),
        (b"{\"a\":\"\xff\"}", "UTF-8"),
        (br#"[{"a":1}]"#, "object"),
        (br#""x""#, "object"),
        (b"", "empty"),
        (br#"{"a":"\ud800"}"#, "surrogate"),
        (br#"{"a":1,}"#, "trailing comma"),
    ];
    for (body, why) in cases {
        assert!(
            parse_strict(body).is_err(),
            "{why}: {:?} accepted",
            String::from_utf8_lossy(body)
        );
    }
    let deep = format!(
        "{}1{}",
        "{\"a\":".repeat(MAX_DEPTH + 2),
        "}".repeat(MAX_DEPTH + 2)
    );
    assert!(parse_strict(deep.as_bytes()).is_err());
    assert!(parse_strict(br#"{"a":{"b":[1,2,{"c":null}]}}"#).is_ok());
    assert!(parse_strict(b" {\"a\":true}\n").is_ok());
}

#[test]
fn a_valid_update_yields_one_change() {
    let v = check(
        UPDATE,
        json!({"organization_access_level": "limited", "is_signup_enabled": false, "organization_connection_name": null}),
    )
    .expect("valid");
    assert_eq!(v.changes.len(), 1);
    let c = &v.changes[0];
    assert_eq!(c.operation, Operation::OrganizationConnectionUpdate);
    assert_eq!(c.org, OrgRef::Existing("org_1".into()));
    assert_eq!(c.connection_id.as_deref(), Some("con_1"));
    assert_eq!(c.fields.len(), 3);
}

#[test]
fn organization_connection_name_rules() {
    refused(
        UPDATE,
        json!({"organization_connection_name": ""}),
        "/organization_connection_name",
    );
    refused(
        UPDATE,
        json!({"organization_connection_name": "x".repeat(51)}),
        "/organization_connection_name",
    );
    refused(
        UPDATE,
        json!({"organization_connection_name": "a\u{0}b"}),
        "/organization_connection_name",
    );
    // The tenant counts UTF-16 code units: 26 emoji are 52 of them.
    refused(
        UPDATE,
        json!({"organization_connection_name": "\u{1F600}".repeat(26)}),
        "/organization_connection_name",
    );
    assert!(
        check(
            UPDATE,
            json!({"organization_connection_name": "\u{1F600}".repeat(25)})
        )
        .is_ok()
    );
    refused(
        UPDATE,
        json!({"organization_connection_name": 5}),
        "/organization_connection_name",
    );
    check(
        UPDATE,
        json!({"organization_connection_name": "é".repeat(50)}),
    )
    .expect("50 characters");
    check(
        CREATE,
        json!({"connection_id": "c", "organization_connection_name": null}),
    )
    .expect("null");
}

#[test]
fn boolean_fields_are_booleans() {
    for f in [
        "assign_membership_on_login",
        "show_as_button",
        "is_signup_enabled",
    ] {
        refused(UPDATE, json!({f: "true"}), &format!("/{f}"));
        refused(UPDATE, json!({f: 1}), &format!("/{f}"));
        refused(UPDATE, json!({f: null}), &format!("/{f}"));
        check(UPDATE, json!({f: true})).expect(f);
    }
}

#[test]
fn access_levels_are_an_enum_null_only_on_update() {
    for f in [
        "organization_access_level",
        "organization_member_access_level",
    ] {
        for level in ACCESS_LEVELS {
            check(UPDATE, json!({f: level})).expect(level);
        }
        refused(UPDATE, json!({f: "FULL"}), &format!("/{f}"));
        refused(UPDATE, json!({f: "admin"}), &format!("/{f}"));
        refused(UPDATE, json!({f: true}), &format!("/{f}"));
        check(UPDATE, json!({f: null})).expect("null on update");
        refused(
            CREATE,
            json!({"connection_id": "c", f: null}),
            &format!("/{f}"),
        );
    }
}

#[test]
fn is_enabled_is_nullable_only_on_update() {
    check(UPDATE, json!({"is_enabled": null})).expect("null on update");
    refused(
        CREATE,
        json!({"connection_id": "c", "is_enabled": null}),
        "/is_enabled",
    );
    refused(UPDATE, json!({"is_enabled": "yes"}), "/is_enabled");
}

#[test]
fn creates_require_a_connection_id() {
    refused(
        CREATE,
        json!({"is_signup_enabled": false}),
        "/connection_id",
    );
    refused(CREATE, json!({"connection_id": ""}), "/connection_id");
    refused(
        CREATE,
        json!({"connection_id": "c".repeat(51)}),
        "/connection_id",
    );
    refused(CREATE, json!({"connection_id": 7}), "/connection_id");
    let v = check(CREATE, json!({"connection_id": "con_2"})).expect("valid");
    assert_eq!(v.changes[0].connection_id.as_deref(), Some("con_2"));
    refused(UPDATE, json!({"connection_id": "con_2"}), "/connection_id");
}

#[test]
fn unknown_fields_are_refused_or_recorded() {
    refused(UPDATE, json!({"is_admin": true}), "/is_admin");
    let v = validate(
        &route(UPDATE.0, UPDATE.1),
        Some(obj(json!({"is_admin": true, "show_as_button": true}))),
        UnknownFields::Forward,
    )
    .expect("forward");
    assert_eq!(v.unknown_fields, vec!["/is_admin".to_owned()]);
    // An association field is never "unknown": the other family's field, or
    // one spelled in another case, is refused even when forwarding unknown
    // fields (it would reach the tenant unjudged).
    let legacy = (
        "PATCH",
        "/api/v2/organizations/org_1/enabled_connections/con_1",
    );
    for (at, body, field) in [
        (
            legacy,
            json!({"organization_access_level": "full"}),
            "/organization_access_level",
        ),
        (
            UPDATE,
            json!({"Organization_Access_Level": "full"}),
            "/Organization_Access_Level",
        ),
        (
            UPDATE,
            json!({" organization_access_level": "full"}),
            "/ organization_access_level",
        ),
    ] {
        let e = validate(&route(at.0, at.1), Some(obj(body)), UnknownFields::Forward)
            .expect_err("refused");
        assert_eq!(e.pointer, field);
    }
}

#[test]
fn the_legacy_family_has_three_fields() {
    let at = (
        "PATCH",
        "/api/v2/organizations/org_1/enabled_connections/con_1",
    );
    check(at, json!({"assign_membership_on_login": true, "is_signup_enabled": true, "show_as_button": false}))
        .expect("valid");
    refused(
        at,
        json!({"organization_access_level": "full"}),
        "/organization_access_level",
    );
    let create = ("POST", "/api/v2/organizations/org_1/enabled_connections");
    refused(
        create,
        json!({"assign_membership_on_login": true}),
        "/connection_id",
    );
}

#[test]
fn deletes_take_no_body() {
    let r = route("DELETE", "/api/v2/organizations/org_1/connections/con_1");
    assert!(validate(&r, Some(Map::new()), UnknownFields::Reject).is_err());
    let v = validate(&r, None, UnknownFields::Reject).expect("no body");
    assert_eq!(
        v.changes[0].operation,
        Operation::OrganizationConnectionDelete
    );
}

#[test]
fn organization_create_judges_each_element() {
    let at = ("POST", "/api/v2/organizations");
    let v = check(
        at,
        json!({"name": "acme", "display_name": "Acme", "metadata": {"k": "v"},
               "enabled_connections": [{"connection_id": "a"}, {"connection_id": "b", "organization_access_level": "full"}]}),
    )
    .expect("valid");
    assert_eq!(v.changes.len(), 2);
    assert_eq!(v.changes[1].org, OrgRef::New(Some("acme".into())));
    assert_eq!(v.changes[1].pointer, "/enabled_connections/1");
    assert_eq!(
        v.changes[1].operation,
        Operation::OrganizationConnectionCreate
    );
    refused(
        at,
        json!({"name": "x", "enabled_connections": [{"connection_id": "a", "bogus": 1}]}),
        "/enabled_connections/0/bogus",
    );
    refused(
        at,
        json!({"name": "x", "enabled_connections": [{}]}),
        "/enabled_connections/0/connection_id",
    );
    refused(
        at,
        json!({"name": "x", "enabled_connections": {"connection_id": "a"}}),
        "/enabled_connections",
    );
    refused(
        at,
        json!({"name": "x", "enabled_connections": ["a"]}),
        "/enabled_connections/0",
    );
    // One element per connection, ids compared as the tenant compares
    // them: a second one would be judged alone.
    for second in ["con_db", "CON_DB"] {
        refused(
            at,
            json!({"name": "x", "enabled_connections": [
                {"connection_id": "con_db", "organization_access_level": "none"},
                {"connection_id": second, "organization_access_level": "full"}]}),
            "/enabled_connections/1/connection_id",
        );
    }
    // The rest of the body is the tenant's to validate.
    check(at, json!({"name": "x", "anything": [1, 2]})).expect("other fields pass");
    // But not the array under another spelling: it would pass unjudged.
    let grant = json!([{"connection_id": "a", "organization_access_level": "full"}]);
    for key in [
        "Enabled_Connections",
        "enabled_connections ",
        "ENABLED_CONNECTIONS",
    ] {
        let mut body = json!({"name": "x"});
        body[key] = grant.clone();
        refused(at, body, &format!("/{key}"));
    }
    let ticket = ("POST", "/api/v2/self-service-profiles/ssp_1/sso-ticket");
    refused(
        ticket,
        json!({"Enabled_Organizations": [{"organization_id": "org_1"}]}),
        "/Enabled_Organizations",
    );
}

#[test]
fn sso_ticket_judges_each_organization() {
    let at = ("POST", "/api/v2/self-service-profiles/ssp_1/sso-ticket");
    let v = check(
        at,
        json!({"connection_id": "con_9", "enabled_organizations": [{"organization_id": "org_1", "assign_membership_on_login": true}]}),
    )
    .expect("valid");
    assert_eq!(v.changes[0].org, OrgRef::Existing("org_1".into()));
    assert_eq!(v.changes[0].connection_id.as_deref(), Some("con_9"));
    refused(
        at,
        json!({"enabled_organizations": [{"assign_membership_on_login": true}]}),
        "/enabled_organizations/0/organization_id",
    );
    refused(
        at,
        json!({"enabled_organizations": [{"organization_id": "o", "show_as_button": "no"}]}),
        "/enabled_organizations/0/show_as_button",
    );
}

/// Found by the strict_json fuzz target: an integer beyond u64 becomes a
/// float, and the forwarded text of that float must parse back to the value
/// that was judged (serde_json's `float_roundtrip`).
#[test]
fn numbers_survive_reserialisation() {
    for body in [
        br#"{"a":414444444444244444444}"#.as_slice(),
        br#"{"a":0.1000000000000000055511151231257827}"#,
        br#"{"a":-0.0,"b":1e300,"c":18446744073709551616}"#,
    ] {
        let map = parse_strict(body).expect("valid");
        let out = serde_json::to_vec(&map).expect("serialise");
        assert_eq!(
            parse_strict(&out).expect("re-parse"),
            map,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn numbers_are_kept_exactly_as_written() {
    let text = r#"{"metadata":{"a":-0,"b":1E2,"c":1.0,"d":1e-7,"e":18446744073709551616,"f":1e23,"g":12345678901234567890123}}"#;
    let map = parse_strict(text.as_bytes()).expect("parses");
    let literals = number_literals(text);
    assert_eq!(literals.len(), 7);
    assert_eq!(to_json_text(&map, &literals), text);
    // Spaces, escapes and strings with digits in them change nothing.
    let spaced = "{ \"s\" : \"1E2 \\\" 3\" , \"n\" : [ 1E2 , -0.50e-1 ] }";
    let map = parse_strict(spaced.as_bytes()).expect("parses");
    assert_eq!(
        to_json_text(&map, &number_literals(spaced)),
        r#"{"s":"1E2 \" 3","n":[1E2,-0.50e-1]}"#
    );
}

#[test]
fn the_number_token_is_no_way_to_forge_a_number() {
    for text in [
        r#"{"x":{"$serde_json::private::Number":"5"}}"#,
        r#"{"x":{"$serde_json::private::Number":"\u0035"}}"#,
        r#"{"x":{"\u0024serde_json::private::Number":"5"}}"#,
        r#"{"x":{"$serde_json::private::Number":5}}"#,
    ] {
        assert!(
            parse_strict(text.as_bytes()).is_err(),
            "{text} was accepted"
        );
    }
}
