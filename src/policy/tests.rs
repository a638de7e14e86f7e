use serde_json::{Map, Value, json};

use super::load::load_sources;
use super::testcases::{Given, judge};
use super::*;

fn set(rules: &str) -> PolicySet {
    match load_sources(&[("rules.toml".to_owned(), rules.to_owned())]) {
        Ok(s) => s,
        Err(e) => panic!("{e:?}"),
    }
}

fn errors(rules: &str) -> Vec<String> {
    load_errors(rules).unwrap_or_else(|| panic!("loaded: {rules}"))
}

/// The load errors of one file; `None` when it loads.
fn load_errors(rules: &str) -> Option<Vec<String>> {
    match load_sources(&[("rules.toml".to_owned(), rules.to_owned())]) {
        Ok(_) => None,
        Err(e) => Some(e.iter().map(ToString::to_string).collect()),
    }
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn given(op: &str, body: Value) -> Given {
    Given {
        operation: op.into(),
        body: obj(body),
        ..Given::default()
    }
}

fn rule(deny: &str) -> String {
    format!("[[rule]]\nid = \"r\"\ndeny = '{deny}'\nmessage = \"m\"\n")
}

fn outcome(rules: &str, g: &Given) -> Decision {
    judge(&set(rules), g).expect("judged").decision
}

const UPDATE: &str = "organization_connection.update";
const CREATE: &str = "organization_connection.create";

#[test]
fn every_variable_is_visible() {
    let mut g = given(UPDATE, json!({"show_as_button": false}));
    g.connection = obj(json!({"id": "con_1", "name": "acme-saml", "strategy": "samlp"}));
    g.org = obj(json!({"id": "org_1", "name": "acme"}));
    g.before = Some(obj(json!({"organization_access_level": "readonly"})));
    g.caller = obj(json!({"client_id": "ci", "scopes": ["update:organizations"]}));
    for expr in [
        r#"operation == "organization_connection.update""#,
        r#"org.id == "org_1" && org.name == "acme""#,
        r#"connection.strategy == "samlp" && connection.is_database == false && connection.name == "acme-saml""#,
        r#"body.show_as_button == false && size(body) == 1"#,
        r#"before.organization_access_level == "readonly" && before.is_enabled == null"#,
        r#"after.organization_access_level == "readonly" && after.show_as_button == false"#,
        r#"caller.client_id == "ci" && "update:organizations" in caller.scopes && caller.verified == false"#,
        r#"request.method == null"#,
        r#"now > timestamp("2020-01-01T00:00:00Z")"#,
    ] {
        assert_eq!(outcome(&rule(expr), &g), Decision::Deny, "{expr}");
    }
}

#[test]
fn before_and_after_carry_every_field() {
    let g = given(UPDATE, json!({}));
    let mut with_before = g.clone();
    with_before.before = Some(Map::new());
    for field in crate::association::FIELDS.map(|f| f.name) {
        let expr = format!("has(after.{field}) && has(before.{field})");
        assert_eq!(
            outcome(&rule(&expr), &with_before),
            Decision::Deny,
            "{field}"
        );
    }
    // No association yet: before is null.
    assert_eq!(outcome(&rule("before == null"), &g), Decision::Deny);
}

#[test]
fn merge_semantics_per_operation() {
    // Update: before merged with body.
    let mut g = given(UPDATE, json!({"is_signup_enabled": true}));
    g.before = Some(obj(
        json!({"assign_membership_on_login": true, "organization_access_level": "full"}),
    ));
    let r = rule(
        r#"after.is_signup_enabled && after.assign_membership_on_login && after.organization_access_level == "full""#,
    );
    assert_eq!(outcome(&r, &g), Decision::Deny);

    // Create: the tenant's defaults merged with the body; before is null even
    // if a `before` is given.
    let mut g = given(
        CREATE,
        json!({"connection_id": "c", "organization_access_level": "limited"}),
    );
    g.before = Some(obj(json!({"organization_access_level": "full"})));
    let r = rule(
        r#"before == null && after.organization_access_level == "limited" && after.show_as_button == true && after.connection_id == "c""#,
    );
    assert_eq!(outcome(&r, &g), Decision::Deny);

    // Delete: after is null; before is the association.
    let mut g = given("organization_connection.delete", json!({}));
    g.before = Some(obj(json!({"organization_access_level": "full"})));
    let r = "[[rule]]\nid = \"r\"\noperations = [\"organization_connection.delete\"]\ndeny = 'after == null && before.organization_access_level == \"full\" && body == null'\nmessage = \"m\"\n";
    assert_eq!(outcome(r, &g), Decision::Deny);

    // Legacy family: the access level is unknown (null), never missing.
    let mut g = given(
        "organization_enabled_connection.update",
        json!({"show_as_button": true}),
    );
    g.before = Some(obj(json!({"show_as_button": false})));
    assert_eq!(
        outcome(
            &rule("after.organization_access_level == null && after.show_as_button"),
            &g
        ),
        Decision::Deny
    );
}

#[test]
fn array_elements_are_judged_one_by_one() {
    let body = json!({"name": "acme", "enabled_connections": [
        {"connection_id": "a"}, {"connection_id": "b", "organization_access_level": "full"}]});
    let d = judge(
        &set(&rule(r#"after.organization_access_level == "full""#)),
        &given("organization.create", body),
    )
    .expect("judged");
    assert_eq!(d.decision, Decision::Deny);
    let v: Vec<_> = d.violations().collect();
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0].field.as_deref(),
        Some("/enabled_connections/1/organization_access_level")
    );
    // The organization being created is named.
    let g = given(
        "organization.create",
        json!({"name": "acme", "enabled_connections": [{"connection_id": "a"}]}),
    );
    assert_eq!(
        outcome(
            &rule(r#"org.name == "acme" && org.id == null && body.connection_id == "a""#),
            &g
        ),
        Decision::Deny
    );
    // The SSO ticket's organizations.
    let g = given(
        "sso_ticket.create",
        json!({"connection_id": "c", "enabled_organizations": [{"organization_id": "org_9"}]}),
    );
    assert_eq!(
        outcome(&rule(r#"org.id == "org_9" && connection.id == "c""#), &g),
        Decision::Deny
    );
}

#[test]
fn operations_select_rules() {
    let r = "[[rule]]\nid = \"r\"\noperations = [\"organization_enabled_connection.update\"]\ndeny = 'true'\nmessage = \"m\"\n";
    assert_eq!(outcome(r, &given(UPDATE, json!({}))), Decision::Allow);
    assert_eq!(
        outcome(
            r,
            &given("organization_enabled_connection.update", json!({}))
        ),
        Decision::Deny
    );
    // Without operations: creates and updates, not deletes.
    assert_eq!(
        outcome(
            &rule("true"),
            &given("organization_connection.delete", json!({}))
        ),
        Decision::Allow
    );
    assert_eq!(
        outcome(
            &rule("true"),
            &given(
                "organization_enabled_connection.create",
                json!({"connection_id": "c"})
            )
        ),
        Decision::Deny
    );
    // Rules about association creates reach the elements of organization.create.
    let r = "[[rule]]\nid = \"r\"\noperations = [\"organization_connection.create\"]\ndeny = 'true'\nmessage = \"m\"\n";
    let g = given(
        "organization.create",
        json!({"name": "x", "enabled_connections": [{"connection_id": "a"}]}),
    );
    assert_eq!(outcome(r, &g), Decision::Deny);
}

#[test]
fn when_is_a_precondition() {
    let r = "[[rule]]\nid = \"r\"\nwhen = 'caller.client_id != \"break-glass\"'\ndeny = 'true'\nmessage = \"m\"\n";
    let mut g = given(UPDATE, json!({}));
    assert_eq!(outcome(r, &g), Decision::Deny);
    g.caller = obj(json!({"client_id": "break-glass"}));
    let d = judge(&set(r), &g).expect("judged");
    assert_eq!(d.decision, Decision::Allow);
    assert_eq!(d.results[0].verdict, Verdict::Skipped);
}

#[test]
fn modes_decide_the_outcome() {
    let rules = |a: &str, b: &str| {
        format!(
            "[[rule]]\nid = \"a\"\nmode = \"{a}\"\ndeny = 'true'\nmessage = \"m\"\n[[rule]]\nid = \"b\"\nmode = \"{b}\"\ndeny = 'true'\nmessage = \"m\"\n"
        )
    };
    let g = given(UPDATE, json!({}));
    assert_eq!(outcome(&rules("warn", "dry-run"), &g), Decision::Warn);
    assert_eq!(
        outcome(&rules("dry-run", "dry-run"), &g),
        Decision::DryRunDeny
    );
    assert_eq!(outcome(&rules("warn", "enforce"), &g), Decision::Deny);
    // Every rule is evaluated and recorded, even after a denial.
    let d = judge(&set(&rules("enforce", "warn")), &g).expect("judged");
    assert_eq!(d.violations().count(), 2);
}

#[test]
fn runtime_errors_deny_and_name_the_rule() {
    let g = given(UPDATE, json!({}));
    for deny in [
        "body.missing == 1",
        "1 / 0 == 1",
        // Not a boolean, though no load check can tell (a constant or a
        // field alone is refused at load).
        "1 + 1",
        "after.organization_access_level > 3",
    ] {
        let d = judge(&set(&rule(deny)), &g).expect("judged");
        assert_eq!(d.decision, Decision::Deny, "{deny}");
        let r = &d.results[0];
        assert!(matches!(r.verdict, Verdict::Error(_)), "{deny}: {r:?}");
        assert!(r.message.contains("rule r"), "{}", r.message);
    }
}

#[test]
fn load_errors_name_file_rule_and_position() {
    let e = errors("[[rule]]\nid = \"r\"\ndeny = 'after.x ==== 1'\nmessage = \"m\"\n");
    assert!(
        e[0].starts_with("rules.toml: rule r: deny: line 1, column"),
        "{e:?}"
    );
    let e = errors("[[rule]]\nid = \"r\"\ndeny = 'true'\nmessage = \"m\"\nseverity = \"high\"\n");
    assert!(e[0].contains("severity"), "{e:?}");
    let e = errors(
        "[[rule]]\nid = \"r\"\ndeny = 'true'\nmessage = \"m\"\n[[rule]]\nid = \"r\"\ndeny = 'false'\nmessage = \"m\"\n",
    );
    assert!(e[0].contains("duplicate rule id"), "{e:?}");
    let e = errors("[[rule]]\nid = \"No_Caps\"\ndeny = 'true'\nmessage = \"m\"\n");
    assert!(e[0].contains("[a-z0-9-]+"), "{e:?}");
    let e = errors(
        "[[rule]]\nid = \"r\"\noperations = [\"organisation.create\"]\ndeny = 'true'\nmessage = \"m\"\n",
    );
    assert!(e[0].contains("unknown operation"), "{e:?}");
    // A real operation tollgate does not judge yet is named as such.
    let e = errors(
        "[[rule]]\nid = \"r\"\noperations = [\"organization.delete\"]\ndeny = 'true'\nmessage = \"m\"\n",
    );
    assert!(
        e[0].contains("(DELETE /api/v2/organizations/{id}) is recorded but not yet judged"),
        "{e:?}"
    );
    // Fields the input never has, values that are no verdict, comparisons
    // that never hold: every evaluation would fail (and deny) or the rule
    // never fire, so they fail the load.
    let e = errors(
        "[[rule]]\nid = \"r\"\ndeny = 'after.organisation_access_level == \"full\"'\nmessage = \"m\"\n",
    );
    assert!(
        e[0].contains(
            "deny: after.organisation_access_level is no field of after (did you mean after.organization_access_level?)"
        ),
        "{e:?}"
    );
    let e = errors(
        "[[rule]]\nid = \"r\"\nwhen = 'connection.stratgy == \"auth0\"'\ndeny = 'true'\nmessage = \"m\"\n",
    );
    assert!(
        e[0].contains(
            "when: connection.stratgy is no field of connection (did you mean connection.strategy?)"
        ),
        "{e:?}"
    );
    let e =
        errors("[[rule]]\nid = \"r\"\ndeny = 'org.metadata.tier == \"gold\"'\nmessage = \"m\"\n");
    assert!(
        e[0].contains("org.metadata is no field of org (its fields: id, name)"),
        "{e:?}"
    );
    let e =
        errors("[[rule]]\nid = \"r\"\ndeny = 'after.organization_access_level'\nmessage = \"m\"\n");
    assert!(
        e[0].contains("deny: after.organization_access_level is a value, not a boolean verdict"),
        "{e:?}"
    );
    let e = errors("[[rule]]\nid = \"r\"\ndeny = '\"full\"'\nmessage = \"m\"\n");
    assert!(
        e[0].contains("deny: the expression is a constant, not a boolean verdict"),
        "{e:?}"
    );
    for (deny, said) in [
        (
            r#"after["organisation_access_level"] == "full""#,
            r#"after["organisation_access_level"] is no field of after (did you mean after.organization_access_level?)"#,
        ),
        (
            r#"after.?organisation_access_level == "full""#,
            r#"after["organisation_access_level"] is no field of after"#,
        ),
        (
            r#"after.organization_access_level == "FULL""#,
            r#"after.organization_access_level is never "FULL": it is one of none, readonly, limited, full"#,
        ),
        (
            r#"after.is_signup_enabled == "true""#,
            "after.is_signup_enabled is a boolean",
        ),
        (
            r#"operation == "client.update" && true"#,
            r#"operation is never "client.update""#,
        ),
        (
            r#"operation != "organisation_connection.update""#,
            r#"unknown operation "organisation_connection.update""#,
        ),
    ] {
        let e = load_errors(&rule(deny)).unwrap_or_else(|| panic!("{deny} loaded"));
        assert!(e[0].contains(said), "{deny}: {e:?}");
    }
    // What they may read loads: boolean fields as verdicts, fields inside
    // macros, names bound by macros, `has()`.
    for ok in [
        "after.is_signup_enabled",
        "before != null && before.show_as_button && !after.show_as_button",
        "[\"full\", \"limited\"].exists(l, after.organization_access_level == l)",
        "has(body.organization_access_level) && connection.is_database",
        "caller.client_id == \"x\" || org.name.startsWith(\"test-\")",
    ] {
        let e = load_errors(&format!(
            "[[rule]]\nid = \"r\"\ndeny = '{ok}'\nmessage = \"m\"\n"
        ));
        assert!(e.is_none(), "{ok}: {e:?}");
    }
    let e = errors("[[rule]]\nid = \"r\"\nmode = \"audit\"\ndeny = 'true'\nmessage = \"m\"\n");
    assert!(e[0].contains("mode") || e[0].contains("audit"), "{e:?}");
    let e = errors("[[rule]]\nid = \"r\"\nwhen = '(('\ndeny = 'true'\nmessage = \"m\"\n");
    assert!(e[0].contains("when:"), "{e:?}");
    let e = errors("[[rule]]\nid = \"r\"\nmessage = \"m\"\n");
    assert!(e[0].contains("deny"), "{e:?}");
}

#[test]
fn needs_follow_the_variables_rules_read() {
    let s = set(&rule(r#"connection.strategy == "x""#));
    let op = crate::route::Operation::OrganizationConnectionUpdate;
    assert_eq!(
        s.needs(op, op),
        Needs {
            org: false,
            connection: true,
            before: false
        }
    );
    let s = set(&rule(r#"after.is_enabled == false"#));
    assert_eq!(
        s.needs(op, op),
        Needs {
            org: false,
            connection: false,
            before: true
        }
    );
    let s = set(&rule(r#"org.name == "x""#));
    assert_eq!(
        s.needs(op, op),
        Needs {
            org: true,
            connection: false,
            before: false
        }
    );
}

#[test]
fn the_version_is_the_hash_of_the_files() {
    let a = set(&rule("true"));
    let b = set(&rule("true"));
    let c = set(&rule("false"));
    assert_eq!(a.version, b.version);
    assert_ne!(a.version, c.version);
    assert_eq!(a.version.len(), 64);
}

#[test]
fn macros_and_comprehension_variables_work() {
    let mut g = given(UPDATE, json!({}));
    g.caller = obj(json!({"scopes": ["read:x", "admin"]}));
    assert_eq!(
        outcome(&rule(r#"caller.scopes.exists(s, s == "admin")"#), &g),
        Decision::Deny
    );
    assert_eq!(
        outcome(&rule(r#"caller.scopes.all(s, s.startsWith("read:"))"#), &g),
        Decision::Allow
    );
    assert_eq!(
        outcome(&rule(r#"has(body.show_as_button)"#), &g),
        Decision::Allow
    );
}

#[test]
fn unknown_variables_are_load_errors() {
    let e = errors(&rule("aftr.organization_access_level == \"full\""));
    assert!(e[0].contains("unknown variable aftr"), "{e:?}");
}

/// A case can give the `request` the gateway would see.
#[test]
fn a_case_gives_the_request() {
    let rule = rule(r#"request.method == "PATCH" && request.path.contains("org_globex")"#);
    let mut g = given(UPDATE, json!({"show_as_button": true}));
    assert_eq!(outcome(&rule, &g), Decision::Allow);
    g.request = serde_json::from_value(
        json!({"method": "PATCH", "path": "/api/v2/organizations/org_globex/connections/con_oidc"}),
    )
    .expect("request");
    assert_eq!(outcome(&rule, &g), Decision::Deny);
}

const EXEMPT: &str = r#"
[[rule]]
id = "no-full-access"
deny = 'after.organization_access_level == "full"'
message = "no full access"

[[exception]]
id = "acme-sso-migration"
rules = ["no-full-access"]
orgs = ["org_1"]
connections = ["con_saml"]
callers = ["terraform-ci"]
operations = ["organization_connection.update"]
expires = "EXPIRES"
reason = "SSO migration, full access until cut-over"
ticket = "CHG-1234"
"#;

fn exempting(expires: &str) -> PolicySet {
    set(&EXEMPT.replace("EXPIRES", expires))
}

fn full_access(org: &str, connection: &str, caller: &str, op: &str) -> Given {
    let mut g = given(
        op,
        json!({"organization_access_level": "full", "connection_id": connection}),
    );
    if op == UPDATE {
        g.body = obj(json!({"organization_access_level": "full"}));
    }
    g.org = obj(json!({"id": org, "name": "acme"}));
    g.connection = obj(json!({"id": connection, "strategy": "samlp"}));
    g.caller = obj(json!({"client_id": caller}));
    g
}

/// An exception applies inside its scope and validity only.
#[test]
fn an_exception_exempts_inside_its_scope_and_validity_only() {
    let later = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    let s = exempting(&later);
    let inside = judge(
        &s,
        &full_access("org_1", "con_saml", "terraform-ci", UPDATE),
    )
    .expect("judged");
    assert_eq!(inside.decision, Decision::Exempted);
    assert_eq!(
        inside.results[0].verdict,
        Verdict::Exempted("acme-sso-migration".into())
    );
    for (org, con, caller, op) in [
        ("org_2", "con_saml", "terraform-ci", UPDATE),
        ("org_1", "con_oidc", "terraform-ci", UPDATE),
        ("org_1", "con_saml", "someone-else", UPDATE),
        ("org_1", "con_saml", "terraform-ci", CREATE),
    ] {
        let d = judge(&s, &full_access(org, con, caller, op)).expect("judged");
        assert_eq!(d.decision, Decision::Deny, "{org} {con} {caller} {op}");
    }
    // After `expires`: denied.
    let earlier = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let d = judge(
        &exempting(&earlier),
        &full_access("org_1", "con_saml", "terraform-ci", UPDATE),
    )
    .expect("judged");
    assert_eq!(d.decision, Decision::Deny);
    // By the organization's name too.
    let by_name = set(&EXEMPT
        .replace("EXPIRES", &later)
        .replace(r#"orgs = ["org_1"]"#, r#"orgs = ["acme"]"#));
    let d = judge(
        &by_name,
        &full_access("org_1", "con_saml", "terraform-ci", UPDATE),
    )
    .expect("judged");
    assert_eq!(d.decision, Decision::Exempted);
    // An entry shaped like an id is an id: an organization whose *name* is
    // `org_1` (anyone creating or renaming one may choose it) is not org_1.
    let mut named_like_the_id = full_access("org_9", "con_saml", "terraform-ci", UPDATE);
    named_like_the_id.org = obj(json!({"id": "org_9", "name": "org_1"}));
    let d = judge(&s, &named_like_the_id).expect("judged");
    assert_eq!(d.decision, Decision::Deny);
    // A name entry matches only the name, never an id.
    let mut id_like_the_name = full_access("acme", "con_saml", "terraform-ci", UPDATE);
    id_like_the_name.org = obj(json!({"id": "acme", "name": "other"}));
    let d = judge(&by_name, &id_like_the_name).expect("judged");
    assert_eq!(d.decision, Decision::Deny);
    // `policy check` says a name can be moved by a rename.
    let now = chrono::Utc::now();
    let (_, warnings) = by_name.exceptions[0].problems(now, 90);
    assert!(warnings[0].contains("by name"), "{warnings:?}");
}

/// The instant an exception ends is the same for every judge: what
/// decides is the input's time (the exchange's, in replay).
#[test]
fn an_exception_is_judged_at_the_time_of_what_is_judged() {
    let expires = chrono::Utc::now() + chrono::Duration::days(1);
    let s = exempting(&expires.to_rfc3339());
    let mut input =
        super::testcases::input(&full_access("org_1", "con_saml", "terraform-ci", UPDATE))
            .expect("input");
    input.now = expires - chrono::Duration::seconds(1);
    assert_eq!(evaluate(&s, &input).decision, Decision::Exempted);
    input.now = expires;
    assert_eq!(evaluate(&s, &input).decision, Decision::Deny);
}

#[test]
fn exceptions_are_checked_when_loaded_and_by_policy_check() {
    let later = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    let e = errors(&EXEMPT.replace("EXPIRES", &later).replace(
        r#"rules = ["no-full-access"]"#,
        r#"rules = ["no-such-rule"]"#,
    ));
    assert!(e[0].contains("no rule \"no-such-rule\""), "{e:?}");
    let e = errors(&EXEMPT.replace("expires = \"EXPIRES\"\n", ""));
    assert!(e[0].contains("expires"), "{e:?}");
    let e = errors(&EXEMPT.replace("EXPIRES", "next tuesday"));
    assert!(e[0].contains("RFC 3339"), "{e:?}");
    let now = chrono::Utc::now();
    let problems = |days: i64| {
        exempting(&(now + chrono::Duration::days(days)).to_rfc3339()).exceptions[0]
            .problems(now, 90)
    };
    assert!(problems(-1).0[0].contains("expired"));
    assert!(problems(120).0[0].contains("max_exception_days"));
    let (errors, warnings) = problems(3);
    assert!(errors.is_empty() && warnings[0].contains("within 7 days"));
    assert_eq!(problems(30), (vec![], vec![]));
}

/// An exception for an organization does not cover creating a new one with
/// that name.
#[test]
fn a_new_organization_is_in_no_organization_scope() {
    let later = (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339();
    let s = set(&EXEMPT
        .replace("EXPIRES", &later)
        .replace("operations = [\"organization_connection.update\"]\n", "")
        .replace("connections = [\"con_saml\"]\n", "")
        .replace("callers = [\"terraform-ci\"]\n", ""));
    let mut g = given(
        "organization.create",
        json!({"name": "org_1", "enabled_connections": [{"connection_id": "con_saml", "organization_access_level": "full"}]}),
    );
    g.connection = obj(json!({"strategy": "samlp"}));
    assert_eq!(judge(&s, &g).expect("judged").decision, Decision::Deny);
}

/// Enforce rules that fail on an ordinary request of an operation they
/// apply to fail the load of a directory (a failing enforce rule denies
/// every such request); warn rules that fail only say so at run time.
#[test]
fn rules_that_fail_on_ordinary_requests_do_not_load() {
    let probe = |rules: &str| {
        let set = set(rules);
        super::load::probe(&set)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    for (deny, ops, said) in [
        (
            r#"before.organization_access_level == "full""#,
            "",
            "fails on an ordinary organization_connection.create request",
        ),
        (
            r#"after.organization_access_level == "full""#,
            r#""organization_connection.delete""#,
            "organization_connection.delete",
        ),
        (
            r#"org.id.startsWith("org_")"#,
            r#""organization.create""#,
            "guard with",
        ),
        (
            r#"body.organization_access_level == "full""#,
            "",
            "test it with has(body.field)",
        ),
        (
            "size(after.organization_connection_name) > 0",
            r#""organization_connection.update""#,
            "",
        ),
        ("1 + 1", "", "expected a boolean"),
        (
            r#"[after].exists(a, a.organisation_access_level == "full")"#,
            "",
            "No such key",
        ),
        ("after.organization_access_level.foo == 1", "", ""),
    ] {
        let operations = if ops.is_empty() {
            String::new()
        } else {
            format!("operations = [{ops}]\n")
        };
        let e = probe(&format!(
            "[[rule]]\nid = \"r\"\n{operations}deny = '{deny}'\nmessage = \"m\"\n"
        ));
        assert!(!e.is_empty() && e[0].contains(said), "{deny}: {e:?}");
    }
    for fine in [
        r#"before != null && before.organization_access_level == "full""#,
        r#"has(body.organization_access_level) && body.organization_access_level == "full""#,
        r#"after.organization_access_level == "full""#,
        r#"org.id != null && org.id.startsWith("org_")"#,
        r#"caller.client_id.startsWith("ci-")"#,
    ] {
        let e = probe(&rule(fine));
        assert!(e.is_empty(), "{fine}: {e:?}");
    }
    // A warn rule that fails forwards with its error: not a load error.
    let warn = "[[rule]]\nid = \"r\"\nmode = \"warn\"\ndeny = 'body.nope == 1'\nmessage = \"m\"\n";
    assert!(probe(warn).is_empty());
}
