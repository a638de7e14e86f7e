//! README promises about what the log keeps and what is looked up again,
//! each checked where a user would look: the audit log and the tenant.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use tollgate::audit::query;
use tollgate::sandbox::seed::*;

use crate::harness::{Harness, item};

async fn events(h: &Harness, id: &str) -> Vec<Value> {
    h.audit.flush().await;
    query::show(&h.store, id)
        .await
        .expect("show")
        .into_iter()
        .map(|e| e["event"].clone())
        .collect()
}

/// `audit.max_body`: the tenant's answer is kept up to that many bytes,
/// and marked truncated.
#[tokio::test]
async fn outcome_bodies_are_capped_at_audit_max_body() {
    let h = Harness::with_config("[audit]\nmax_body = 16\n").await;
    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.len() > 16, "the client gets the whole answer");
    let evs = events(&h, &a.audit_id()).await;
    let outcome = &evs[1]["data"];
    assert_eq!(outcome["body_truncated"], true);
    assert_eq!(
        outcome["body"].as_str().map(str::len),
        Some(16),
        "{outcome}"
    );
}

/// An ungoverned write is recorded with its method, path and status, never
/// its bodies (client secrets travel there).
#[tokio::test]
async fn ungoverned_writes_are_recorded_without_their_bodies() {
    let h = Harness::start().await;
    let secret = "client-secret-value-0123";
    let a = h
        .send(
            Method::POST,
            "/api/v2/clients",
            Some(&format!(r#"{{"name":"ci","client_secret":"{secret}"}}"#)),
        )
        .await;
    let evs = events(&h, &a.audit_id()).await;
    assert_eq!(evs.len(), 2, "{evs:?}");
    // Named by its operation in the registry.
    assert_eq!(evs[0]["operation"], "client.create");
    assert_eq!(evs[0]["data"]["method"], "POST");
    assert_eq!(evs[0]["data"]["path"], "/api/v2/clients");
    assert!(evs[0]["data"]["request_body"].is_null());
    assert_eq!(evs[1]["data"]["status"], a.status.as_u16());
    assert!(evs[1]["data"]["body"].is_null());
    let all = serde_json::to_string(&evs).expect("json");
    assert!(!all.contains(secret));
    // A method in lower case is forwarded as sent (a tenant may read it as
    // POST) and named as what it may be.
    let lower = http::Method::from_bytes(b"post").expect("method");
    let a = h
        .send(lower, "/api/v2/roles", Some(r#"{"name":"r"}"#))
        .await;
    let evs = events(&h, &a.audit_id()).await;
    assert_eq!(evs[0]["operation"], "role.create", "{evs:?}");
}

type Headers = &'static [(&'static str, &'static str)];

/// Requests tollgate refuses itself have their decision alone, with the
/// answer they got, and nothing reaches the tenant.
#[tokio::test]
async fn refusals_are_recorded_with_their_decision_alone() {
    let h = Harness::with_config("[limits]\nmax_body = 64\n").await;
    let cases: [(Headers, Vec<u8>, u16); 3] = [
        (
            &[
                ("authorization", crate::harness::TOKEN),
                ("content-type", "application/json"),
            ],
            format!(r#"{{"organization_connection_name":"{}"}}"#, "x".repeat(80)).into_bytes(),
            413,
        ),
        (
            &[
                ("authorization", crate::harness::TOKEN),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            b"show_as_button=false".to_vec(),
            415,
        ),
        (
            &[
                ("authorization", crate::harness::TOKEN),
                ("content-type", "application/json"),
                ("x-http-method-override", "DELETE"),
            ],
            br#"{"show_as_button":false}"#.to_vec(),
            400,
        ),
    ];
    for (headers, body, status) in cases {
        let a = h.send_with(Method::PATCH, &item(), headers, &body).await;
        assert_eq!(a.status.as_u16(), status);
        let evs = events(&h, &a.audit_id()).await;
        assert_eq!(evs.len(), 1, "{status}: {evs:?}");
        assert_eq!(evs[0]["kind"], "decision");
        assert_eq!(evs[0]["decision"], "invalid");
        assert_eq!(evs[0]["data"]["error"]["status"], status);
    }
    assert!(h.received().is_empty(), "nothing reached the tenant");

    let h = Harness::with_config("[routes]\nother = \"deny\"\n").await;
    let a = h.send(Method::GET, "/api/v2/clients", None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let evs = events(&h, &a.audit_id()).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["decision"], "deny");
    assert_eq!(
        evs[0]["data"]["error"]["errorCode"],
        "tollgate_route_denied"
    );
}

/// `context.cache_ttl`: a connection's facts are looked up again once it
/// has passed.
#[tokio::test]
async fn cached_facts_expire_after_cache_ttl() {
    let rule = "[[rule]]\nid = \"no-oidc\"\noperations = [\"organization_connection.update\"]\ndeny = 'connection.strategy == \"oidc\"'\nmessage = \"m\"\n";
    // Long enough that the two first changes fall within it on a loaded
    // machine; the point is the expiry, not its precision.
    let h = Harness::with_rule("[context]\ncache_ttl = \"2s\"\n", rule).await;
    let lookups = || {
        h.received()
            .iter()
            .filter(|r| {
                r.method == Method::GET && r.target == format!("/api/v2/connections/{CON_SAML}")
            })
            .count()
    };
    for _ in 0..2 {
        let a = h.patch(r#"{"show_as_button":false}"#).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    assert_eq!(lookups(), 1, "the second change used the cached connection");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let a = h.patch(r#"{"show_as_button":true}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(lookups(), 2, "looked up again after the ttl");
}

/// Rules read `request` and `org` (resolved from an id or from a name).
#[tokio::test]
async fn rules_read_the_request_and_the_organization() {
    let rules = r#"
[[rule]]
id = "no-scripts"
deny = 'request.user_agent == "evil-script/1.0"'
message = "this client may not change connections"

[[rule]]
id = "acme-frozen"
operations = ["organization_connection.update"]
deny = 'org.name == "acme" && body.show_as_button == false'
message = "acme's buttons stay"
"#;
    let h = Harness::with_policies("", &[("r.toml", rules)]).await;
    let headers = |ua: &'static str| {
        [
            ("authorization", crate::harness::TOKEN),
            ("content-type", "application/json"),
            ("user-agent", ua),
        ]
    };
    let a = h
        .send_with(
            Method::PATCH,
            &item(),
            &headers("evil-script/1.0"),
            br#"{"show_as_button":true}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["rules"][0]["id"], "no-scripts");
    // By id: resolved to its name.
    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["rules"][0]["id"], "acme-frozen");
    // By name: resolved the same way.
    let a = h
        .patch_at(
            &format!("/api/v2/organizations/acme/connections/{CON_SAML}"),
            r#"{"show_as_button":false}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["rules"][0]["id"], "acme-frozen");
    assert_eq!(h.forwarded(Method::PATCH), 0, "nothing forwarded");
}

/// A `warn` rule whose expression fails at run time forwards, and says so
/// in the `Warning` header, naming the rule and the error.
#[tokio::test]
async fn a_failing_warn_rule_forwards_with_its_error() {
    let rule =
        "[[rule]]\nid = \"shaky\"\ndeny = 'body.nope == 1'\nmessage = \"m\"\nmode = \"warn\"\n";
    let h = Harness::with_policies("", &[("r.toml", rule)]).await;
    let a = h.patch(r#"{"show_as_button":true}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    let warning = a.headers["warning"].to_str().expect("ascii");
    assert!(
        warning.starts_with(r#"299 tollgate "shaky: rule shaky could not be evaluated"#),
        "{warning}"
    );
    let evs = events(&h, &a.audit_id()).await;
    assert_eq!(evs[0]["decision"], "warn");
}

/// Everything the log and the audit store hold for a run, as text.
async fn log_and_store(served: crate::harness::Served, db: &str) -> String {
    let log = served.log();
    crate::harness::terminate(served.child).await;
    log + &crate::harness::stored_events(db).await.1
}

/// Tokens, API keys and the broker's credentials never reach the log or the
/// audit store, even at `RUST_LOG=debug`.
#[tokio::test]
async fn credentials_are_never_logged_or_recorded() {
    let (tenant, addr) = crate::harness::start_sandbox().await;
    let upstream = format!("http://{addr}");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = tempfile::tempdir().expect("dir");

    // Passthrough: the caller's own token.
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let served = crate::harness::Served::start(
        dir.path(),
        &[],
        &[
            ("TOLLGATE_UPSTREAM_URL", upstream.clone()),
            ("TOLLGATE_AUDIT_URL", db.clone()),
            ("TOLLGATE_POLICY_DIR", policies.display().to_string()),
            ("RUST_LOG", "debug".into()),
        ],
    )
    .await;
    let token = "tok-SECRET-passthrough-0123456789";
    let headers = [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_owned()),
    ];
    let send = |method: Method, path: String, body: &'static str| {
        let headers = headers.clone();
        let addr = served.addr.clone();
        async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"));
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            let req = req
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    body.as_bytes(),
                )))
                .expect("request");
            client.request(req).await.expect("answer").status()
        }
    };
    assert_eq!(
        send(Method::PATCH, item(), r#"{"show_as_button":false}"#).await,
        200
    );
    assert_eq!(
        send(
            Method::PATCH,
            item(),
            r#"{"organization_access_level":"full"}"#
        )
        .await,
        403
    );
    assert_eq!(send(Method::PATCH, item(), r#"{"x":1}"#).await, 400);
    assert_eq!(
        send(Method::POST, "/api/v2/clients".into(), r#"{"name":"x"}"#).await,
        404
    );
    let all = log_and_store(served, &db).await;
    assert!(!all.contains(token), "the token was logged or recorded");
    assert!(
        all.contains("token_fingerprint"),
        "the record names the token by fingerprint"
    );

    // Broker: API keys in, tollgate's own token out.
    let (key, hash) = tollgate::identity::new_key();
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[identity]\nmode = \"broker\"\nclient_id = \"tollgate-m2m\"\nclient_secret = \"m2m-SECRET-9876\"\n\
             [[identity.keys]]\nname = \"ci\"\nhash = \"{hash}\"\n"
        ),
    )
    .expect("write");
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let served = crate::harness::Served::start(
        dir.path(),
        &["--config", config.to_str().expect("utf-8")],
        &[
            ("TOLLGATE_UPSTREAM_URL", upstream),
            ("TOLLGATE_AUDIT_URL", db.clone()),
            ("TOLLGATE_POLICY_DIR", policies.display().to_string()),
            ("RUST_LOG", "debug".into()),
        ],
    )
    .await;
    let a = served.patch(&item(), r#"{"show_as_button":true}"#).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "the harness token is no key"
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::patch(format!("http://{}{}", served.addr, item()))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"show_as_button":true}"#,
        )))
        .expect("request");
    assert_eq!(client.request(req).await.expect("answer").status(), 200);
    assert!(tenant.tokens_issued() >= 1);
    let metrics = Harness::client_get(&served.admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("tollgate_broker_token_refreshes_total 1"),
        "the broker's token fetch is counted:\n{text}"
    );
    let all = log_and_store(served, &db).await;
    for secret in [key.as_str(), "m2m-SECRET-9876", "sandbox-mgmt-token-"] {
        assert!(!all.contains(secret), "{secret} was logged or recorded");
    }
}

/// A store that cannot record: the change is refused (503, `Retry-After`),
/// nothing is forwarded, and the failure is counted on `/metrics`.
#[tokio::test]
async fn audit_write_failures_are_refused_and_counted() {
    let (tenant, addr) = crate::harness::start_sandbox().await;
    let (served, _dir, db) = crate::harness::Served::in_front_of(addr, &[]).await;
    let store = tollgate::audit::Store::open(&db).await.expect("store");
    let tollgate::audit::Store::Sqlite(pool) = &store else {
        panic!("sqlite")
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "ALTER TABLE audit_events RENAME TO away",
    ))
    .execute(pool)
    .await
    .expect("rename");
    let a = served.patch(&item(), r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.error_code(), "tollgate_audit_unavailable");
    assert_eq!(a.headers["retry-after"], "1");
    assert!(
        !tenant.received().iter().any(|r| r.method == Method::PATCH),
        "nothing forwarded"
    );
    let metrics = Harness::client_get(&served.admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tollgate_audit_write_failures_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    crate::harness::terminate(served.child).await;
}
