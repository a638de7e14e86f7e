//! Two-person approvals: a request only approvable rules deny may be
//! approved by someone else, and then goes through exactly once.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Answer, Harness, item};

const RULE: &str = r#"
[[rule]]
id = "no-full-access"
deny = 'after.organization_access_level == "full"'
message = "no full access"
approvable = true
"#;

fn config(ttl: &str) -> String {
    let hash = |t: &str| format!("sha256:{}", tollgate::identity::fingerprint(t));
    format!(
        "[approvals]\nttl = \"{ttl}\"\n[[admin.approver_tokens]]\nname = \"alice\"\nhash = \"{}\"\n[[admin.approver_tokens]]\nname = \"ci-bot\"\nhash = \"{}\"\n",
        hash("alice-token"),
        hash("ci-bot-token")
    )
}

/// A token naming its client (`azp`), as a passthrough caller presents it.
fn token(client: &str) -> String {
    use base64::Engine;
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let claims = json!({"azp": client, "sub": format!("{client}@clients")});
    format!(
        "Bearer {}.{}.c2ln",
        enc(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc(claims.to_string().as_bytes())
    )
}

async fn change(h: &Harness, client: &str, body: &str) -> Answer {
    h.patch_as(&token(client), body.as_bytes()).await
}

async fn approve(h: &Harness, id: &str, approver_token: &str) -> Answer {
    let admin = h.app.as_ref().expect("running").admin_addr.to_string();
    Harness::client_send_with(
        &admin,
        Method::POST,
        &format!("/v1/approvals/{id}"),
        r#"{"reason":"SSO cut-over, CHG-1234"}"#,
        &format!("Bearer {approver_token}"),
    )
    .await
}

const FULL: &str = r#"{"organization_access_level":"full"}"#;

fn approval_id(a: &Answer) -> String {
    a.json()["approval"]["id"]
        .as_str()
        .expect("an approval id")
        .to_owned()
}

on_both_backends! {
async fn an_approval_lets_exactly_one_identical_request_through_once(backend: Backend) {
    let h = Harness::setup().backend(backend).config(&config("1h")).rule(RULE).start().await;
    let denied = change(&h, "ci-bot", FULL).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.json()["approval"]["expires"].is_string(), "{}", denied.json());
    let id = approval_id(&denied);

    // Nobody but an approver; never the requester.
    assert_eq!(approve(&h, &id, "not-a-token").await.status, StatusCode::UNAUTHORIZED);
    let own = approve(&h, &id, "ci-bot-token").await;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{:?}", own.json());
    let ok = approve(&h, &id, "alice-token").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.json());
    assert_eq!(approve(&h, &id, "alice-token").await.status, StatusCode::CONFLICT);

    // Another body, another caller: still denied (and the approval kept).
    let other_body = change(&h, "ci-bot", r#"{"organization_access_level":"full","show_as_button":false}"#).await;
    assert_eq!(other_body.status, StatusCode::FORBIDDEN);
    let other_caller = change(&h, "someone-else", FULL).await;
    assert_eq!(other_caller.status, StatusCode::FORBIDDEN);
    // The very request: through, once.
    let through = change(&h, "ci-bot", FULL).await;
    assert_eq!(through.status, StatusCode::OK, "{backend:?}: {}", String::from_utf8_lossy(&through.body));
    let again = change(&h, "ci-bot", FULL).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN, "used once only");
    assert_ne!(approval_id(&again), id, "a new approval is asked for");

    h.audit.flush().await;
    let events = tollgate::audit::query::show(&h.store, &through.audit_id()).await.expect("show");
    assert_eq!(events[0]["event"]["decision"], "approved");
    let approval = &events[0]["event"]["data"]["approval"];
    assert_eq!(approval["id"], json!(id));
    assert_eq!(approval["approver"], "alice");
    assert_eq!(approval["reason"], "SSO cut-over, CHG-1234");
    let asked = tollgate::audit::query::show(&h.store, &denied.audit_id()).await.expect("show");
    assert_eq!(asked[0]["event"]["data"]["approval"]["status"], "pending");
    // One per distinct request asked for: the first, the other body, the
    // other caller, and the repeat after use; a retry gets the same one.
    let retried = change(&h, "ci-bot", FULL).await;
    assert_eq!(approval_id(&retried), approval_id(&again));
    let listed = h.store.approvals(10).await.expect("approvals");
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().any(|a| a.id == id && a.status == "used" && a.used_by.as_deref() == Some(through.audit_id().as_str())));
    // Who approved it, and why, in the rows reviewers query and export.
    let rows = tollgate::audit::query::exchanges(&h.store, &tollgate::audit::query::Filter { limit: 100, ..Default::default() }).await.expect("query");
    let row = rows.iter().find(|r| r.exchange_id == through.audit_id()).expect("the approved exchange");
    assert_eq!(row.approver.as_deref(), Some("alice"));
    assert_eq!(row.approval_reason.as_deref(), Some("SSO cut-over, CHG-1234"));
    let csv = tollgate::audit::query::render(&rows, tollgate::audit::query::Format::Csv);
    assert!(csv.lines().next().is_some_and(|h| h.ends_with(",approver,approval_reason")), "{csv}");
    assert!(csv.contains(",alice,\"SSO cut-over, CHG-1234\""), "{csv}");
    assert!(tollgate::audit::verify::verify(&h.store).await.expect("verify").ok());
}
}

/// An approval expires: approving it afterwards fails, and the request
/// stays denied.
#[tokio::test]
async fn an_expired_approval_is_no_approval() {
    let h = Harness::setup()
        // Long enough to ask and approve within it on a loaded machine.
        .config(&config("3s"))
        .rule(RULE)
        .start()
        .await;
    let id = approval_id(&change(&h, "ci-bot", FULL).await);
    tokio::time::sleep(std::time::Duration::from_millis(3300)).await;
    assert_eq!(
        approve(&h, &id, "alice-token").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        change(&h, "ci-bot", FULL).await.status,
        StatusCode::FORBIDDEN
    );
    // Approved in time, used too late: denied.
    let id = approval_id(&change(&h, "ci-bot", FULL).await);
    assert_eq!(approve(&h, &id, "alice-token").await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(3300)).await;
    assert_eq!(
        change(&h, "ci-bot", FULL).await.status,
        StatusCode::FORBIDDEN
    );
}

/// A replica behind the same Postgres honours an approval made through
/// another.
#[tokio::test]
async fn a_replica_honours_an_approval_made_through_another() {
    // Replicas: one store, one tenant.
    let (tenant, addr) = crate::harness::start_sandbox().await;
    let url = format!("http://{addr}");
    let a = Harness::setup()
        .backend(crate::harness::Backend::Postgres)
        .config(&config("1h"))
        .rule(RULE)
        .upstream(&url, tenant.clone())
        .start()
        .await;
    let b = Harness::setup()
        .store_url(&a.store_url)
        .config(&config("1h"))
        .rule(RULE)
        .upstream(&url, tenant)
        .start()
        .await;
    let id = approval_id(&change(&a, "ci-bot", FULL).await);
    assert_eq!(approve(&a, &id, "alice-token").await.status, StatusCode::OK);
    let through = change(&b, "ci-bot", FULL).await;
    assert_eq!(through.status, StatusCode::OK);
    assert_eq!(
        change(&a, "ci-bot", FULL).await.status,
        StatusCode::FORBIDDEN
    );
    let _ = (item(), Value::Null);
}

const TWO: &str = r#"
[[rule]]
id = "no-full-access"
deny = 'after.organization_access_level == "full"'
message = "no full access"
approvable = true

[[rule]]
id = "buttons-stay"
deny = 'after.show_as_button == false'
message = "hidden connections confuse users"
approvable = true
"#;

/// An approval covers the rules it was granted for: a request that other
/// rules also deny by the time it is sent stays denied. A row written into
/// the approvals table without its grant in the audit log releases
/// nothing. The requester cannot approve in another case either.
#[tokio::test]
async fn an_approval_covers_its_rules_its_record_and_nobody_approves_themselves() {
    let h = Harness::setup()
        .config(&config("1h"))
        .rule(TWO)
        .start()
        .await;
    let id = approval_id(&change(&h, "ci-bot", FULL).await);
    assert_eq!(approve(&h, &id, "alice-token").await.status, StatusCode::OK);
    // Meanwhile, at the tenant: the button hidden. The same body now breaks
    // a rule the approver never saw.
    let mut hidden = tollgate::sandbox::association_defaults();
    hidden.insert("organization_access_level".into(), json!("readonly"));
    hidden.insert("show_as_button".into(), json!(false));
    h.tenant.set_association(
        tollgate::sandbox::seed::ORG_ACME,
        tollgate::sandbox::seed::CON_SAML,
        hidden,
    );
    let denied = change(&h, "ci-bot", FULL).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_ne!(approval_id(&denied), id, "another approval, for both rules");
    // Back as it was: the approval applies, and the result is what it said.
    let mut shown = tollgate::sandbox::association_defaults();
    shown.insert("organization_access_level".into(), json!("readonly"));
    h.tenant.set_association(
        tollgate::sandbox::seed::ORG_ACME,
        tollgate::sandbox::seed::CON_SAML,
        shown,
    );
    let through = change(&h, "ci-bot", FULL).await;
    assert_eq!(through.status, StatusCode::OK);
    h.audit.flush().await;
    let events = tollgate::audit::query::show(&h.store, &through.audit_id())
        .await
        .expect("show");
    assert_eq!(
        events[1]["event"]["data"]["post_check"], "passed",
        "the approved state is not a violation"
    );

    // A forged row: approved, bound to the very request, no grant on record.
    let forged = format!(
        "INSERT INTO tollgate_approvals (id, created_us, expires_us, operation, path, body_hash, caller, subject, rules, exchange_id, status, approver, reason, used_by) \
         VALUES ('forged', 0, 9999999999999999, 'organization_connection.update', '{}', '{}', 'ci-bot', NULL, 'no-full-access', 'x', 'approved', 'alice', 'looks fine', NULL)",
        item(),
        tollgate::identity::fingerprint(FULL)
    );
    match &h.store {
        tollgate::audit::Store::Sqlite(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(forged))
            .execute(p)
            .await
            .map(drop),
        tollgate::audit::Store::Postgres(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(forged))
            .execute(p)
            .await
            .map(drop),
    }
    .expect("insert");
    assert_eq!(
        change(&h, "ci-bot", FULL).await.status,
        StatusCode::FORBIDDEN
    );

    // The requester under another case is still the requester.
    let id = approval_id(&change(&h, "ALICE", FULL).await);
    assert_eq!(
        approve(&h, &id, "alice-token").await.status,
        StatusCode::FORBIDDEN
    );
}

/// A token with these claims, as a passthrough caller presents it.
fn token_of(claims: Value) -> String {
    use base64::Engine;
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "Bearer {}.{}.c2ln",
        enc(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc(claims.to_string().as_bytes())
    )
}

on_both_backends! {
/// Two people behind one client id: alice cannot approve bot2's request and
/// then use that approval as herself, nor approve one she asked for under
/// another spelling of her name.
async fn an_approval_is_bound_to_the_whole_identity_that_asked(backend: Backend) {
    let h = Harness::setup().backend(backend).config(&config("1h")).rule(RULE).start().await;
    let bot = token_of(json!({"azp": "bot2", "sub": "bot2@clients"}));
    let alice_as_bot = token_of(json!({"azp": "bot2", "sub": "alice"}));
    let asked = h.patch_as(&bot, FULL.as_bytes()).await;
    let id = approval_id(&asked);
    // The same client id, another subject: its own approval, not bot2's.
    let retry = h.patch_as(&alice_as_bot, FULL.as_bytes()).await;
    assert_eq!(retry.status, StatusCode::FORBIDDEN);
    let alices = approval_id(&retry);
    assert_ne!(alices, id, "another identity retrying gets its own approval");
    // alice approves bot2's: allowed (she did not ask for it) — but she
    // cannot use it.
    assert_eq!(approve(&h, &id, "alice-token").await.status, StatusCode::OK);
    let used = h.patch_as(&alice_as_bot, FULL.as_bytes()).await;
    assert_eq!(used.status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&used.body));
    // Her own, under any spelling of her name: never.
    for sub in ["alice", "ALICE", "alice@clients", "auth0|alice", " Alice "] {
        let t = token_of(json!({"azp": "bot3", "sub": sub}));
        let mine = h.patch_as(&t, FULL.as_bytes()).await;
        let refused = approve(&h, &approval_id(&mine), "alice-token").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "sub {sub:?}: {:?}", refused.json());
    }
    let refused = approve(&h, &alices, "alice-token").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(h.forwarded(Method::PATCH), 0, "nothing reached the tenant");
    // bot2 itself uses it.
    let through = h.patch_as(&bot, FULL.as_bytes()).await;
    assert_eq!(through.status, StatusCode::OK);
}
}

/// Two deployments in front of two tenants, one store (Postgres: a SQLite
/// store serves one instance): an approval granted through one is not
/// honoured by the other.
#[tokio::test]
async fn an_approval_is_bound_to_its_tenant() {
    let a = Harness::setup()
        .backend(crate::harness::Backend::Postgres)
        .config(&config("1h"))
        .rule(RULE)
        .start()
        .await;
    let b = Harness::setup()
        .store_url(&a.store_url)
        .config(&config("1h"))
        .rule(RULE)
        .start()
        .await;
    let asked = change(&a, "ci-bot", FULL).await;
    let id = approval_id(&asked);
    assert_eq!(approve(&a, &id, "alice-token").await.status, StatusCode::OK);
    let elsewhere = change(&b, "ci-bot", FULL).await;
    assert_eq!(
        elsewhere.status,
        StatusCode::FORBIDDEN,
        "the other tenant's deployment does not honour it"
    );
    assert_ne!(approval_id(&elsewhere), id);
    assert_eq!(b.forwarded(Method::PATCH), 0);
    assert_eq!(change(&a, "ci-bot", FULL).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_approval_body_is_a_413_naming_the_limit() {
    let h = Harness::setup()
        .config(&config("1h"))
        .rule(RULE)
        .start()
        .await;
    let id = approval_id(&change(&h, "ci-bot", FULL).await);
    let admin = h.app.as_ref().expect("running").admin_addr.to_string();
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(200 * 1024));
    let answer = Harness::client_send_with(
        &admin,
        Method::POST,
        &format!("/v1/approvals/{id}"),
        &big,
        "Bearer alice-token",
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), "payload_too_large");
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("16384"),
        "{:?}",
        answer.json()
    );
}

/// A request only approvable rules deny, from a caller with no identity
/// (an opaque token): no approval is offered, and the answer says why.
#[tokio::test]
async fn an_anonymous_caller_is_told_why_no_approval_is_offered() {
    let h = Harness::setup()
        .config(&config("1h"))
        .rule(RULE)
        .start()
        .await;
    let denied = h.patch_as("Bearer opaque-token", FULL.as_bytes()).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let body = denied.json();
    assert!(body["approval"].is_null(), "{body}");
    assert!(
        body["approval_unavailable"]
            .as_str()
            .is_some_and(|w| w.contains("approvals are for identified callers")),
        "{body}"
    );
    assert!(h.store.approvals(10).await.expect("approvals").is_empty());
}
