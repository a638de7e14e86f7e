//! Policy evaluation and request validation: the CPU a governed request
//! costs before it is forwarded.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use tollgate::policy::testcases::{Given, input};
use tollgate::policy::{PolicySet, evaluate, load_sources};
use tollgate::route::{Route, classify};
use tollgate::schema::{UnknownFields, parse_strict, validate};

/// `n` rules in the style of the starter set, all applicable to an update.
fn rules(n: usize) -> PolicySet {
    let mut text = String::new();
    let exprs = [
        r#"after.organization_access_level == "full""#,
        r#"after.is_signup_enabled == true && connection.strategy != "auth0""#,
        r#"after.is_signup_enabled == true && after.assign_membership_on_login != true"#,
        r#"caller.client_id == "blocked-client" && after.show_as_button == false"#,
        r#"after.organization_member_access_level in ["full", "limited"] && !("admin" in caller.scopes)"#,
    ];
    for i in 0..n {
        text.push_str(&format!(
            "[[rule]]\nid = \"rule-{i}\"\ndeny = '{}'\nmessage = \"m\"\n\n",
            exprs[i % exprs.len()]
        ));
    }
    load_sources(&[("bench.toml".to_owned(), text)]).unwrap_or_else(|e| panic!("{e:?}"))
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn policy(c: &mut Criterion) {
    let given = Given {
        operation: "organization_connection.update".into(),
        body: obj(json!({"organization_access_level": "limited", "is_signup_enabled": false})),
        connection: obj(json!({"id": "con_1", "name": "acme-saml", "strategy": "samlp"})),
        org: obj(json!({"id": "org_1", "name": "acme"})),
        before: Some(obj(
            json!({"organization_access_level": "readonly", "assign_membership_on_login": true}),
        )),
        caller: obj(json!({"client_id": "ci-bot", "scopes": ["update:organization_connections"]})),
        request: Default::default(),
    };
    let input = input(&given).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("policy_evaluate");
    for n in [1, 20, 100] {
        let set = rules(n);
        group.bench_function(format!("{n}_rules"), |b| {
            b.iter(|| evaluate(black_box(&set), black_box(&input)))
        });
    }
    group.finish();
}

fn parse_and_validate(c: &mut Criterion) {
    let body = br#"{"organization_connection_name":"Acme SSO","assign_membership_on_login":true,"show_as_button":true,"is_signup_enabled":false,"organization_access_level":"limited","organization_member_access_level":"readonly","is_enabled":true}"#;
    let method = http::Method::PATCH;
    let path = "/api/v2/organizations/org_acme/connections/con_saml";
    c.bench_function("classify_parse_validate", |b| {
        b.iter(|| {
            let Ok(Route::Governed(route)) = classify(black_box(&method), black_box(path), None)
            else {
                panic!("governed")
            };
            let map = parse_strict(black_box(body)).unwrap_or_else(|e| panic!("{e}"));
            validate(&route, Some(map), UnknownFields::Reject).unwrap_or_else(|e| panic!("{e}"))
        })
    });
}

/// Finding an ungoverned write's operation in the registry (what an
/// audited write pays on top of its record): the first lookup parses the
/// table once; the figure is the steady state.
fn registry_lookup(c: &mut Criterion) {
    let registry = tollgate::registry::registry();
    let method = http::Method::PATCH;
    let path = "/api/v2/clients/abc123DEF456ghi789";
    c.bench_function("registry_classify_write", |b| {
        b.iter(|| {
            registry
                .classify(black_box(&method), black_box(path))
                .expect("decodes")
                .expect("matches")
                .op
                .id
                .len()
        })
    });
}

criterion_group!(benches, policy, parse_and_validate, registry_lookup);
criterion_main!(benches);
