//! Policies judged through the gateway against the sandbox tenant.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tollgate::BoxBody;
use tollgate::sandbox::Sandbox;
use tollgate::sandbox::seed::*;
use tollgate::server::{self, Handler};

use crate::harness::{Answer, Harness, NO_FULL_ACCESS, item};

/// The repository's starter policy set.
fn starter() -> Vec<(&'static str, String)> {
    ["access.toml", "signup.toml"]
        .into_iter()
        .map(|f| {
            let path = format!("{}/policies/{f}", env!("CARGO_MANIFEST_DIR"));
            (f, std::fs::read_to_string(path).expect("starter policy"))
        })
        .collect()
}

async fn with_starter() -> Harness {
    let files = starter();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Harness::with_policies("", &refs).await
}

/// Governed requests the tenant received (context GETs left out).
fn changes(h: &Harness) -> Vec<tollgate::sandbox::Received> {
    h.received()
        .into_iter()
        .filter(|r| r.method != Method::GET)
        .collect()
}

fn assert_denied(a: &Answer, rules: &[&str]) {
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    let j = a.json();
    assert_eq!(j["errorCode"], "tollgate_policy_denied");
    assert_eq!(j["error"], "Forbidden");
    let got: Vec<&str> = j["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(got, rules, "{j}");
    assert!(
        j["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("denied by rule"),
        "{j}"
    );
    assert_eq!(j["audit_id"], a.audit_id().as_str());
}

#[tokio::test]
async fn the_starter_rules_guard_every_route() {
    let h = with_starter().await;
    let full = r#"{"organization_access_level":"full"}"#;
    // Denied on each route that can grant full access.
    let a = h.send(Method::PATCH, &item(), Some(full)).await;
    assert_denied(&a, &["no-full-access"]);
    assert_eq!(a.json()["rules"][0]["field"], "/organization_access_level");
    assert_eq!(
        a.json()["message"],
        "denied by rule no-full-access: organization_access_level 'full' is not allowed; use 'limited' or lower"
    );
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{ORG_ACME}/connections"),
            Some(
                &json!({"connection_id": CON_OIDC, "organization_access_level": "full"})
                    .to_string(),
            ),
        )
        .await;
    assert_denied(&a, &["no-full-access"]);
    let a = h
        .send(
            Method::POST,
            "/api/v2/organizations",
            Some(&json!({"name": "initech", "enabled_connections": [
                {"connection_id": CON_GOOGLE}, {"connection_id": CON_OIDC, "organization_access_level": "full"}]}).to_string()),
        )
        .await;
    assert_denied(&a, &["no-full-access"]);
    assert_eq!(
        a.json()["rules"][0]["field"],
        "/enabled_connections/1/organization_access_level"
    );

    // Signup outside database connections, on both families and in tickets.
    let signup = r#"{"is_signup_enabled":true,"assign_membership_on_login":true}"#;
    let a = h.send(Method::PATCH, &item(), Some(signup)).await;
    assert_denied(&a, &["signup-on-database-only"]);
    let a = h
        .send(
            Method::PATCH,
            &format!("/api/v2/organizations/{ORG_ACME}/enabled_connections/{CON_SAML}"),
            Some(signup),
        )
        .await;
    assert_denied(&a, &["signup-on-database-only"]);
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{ORG_GLOBEX}/enabled_connections"),
            Some(&json!({"connection_id": CON_OIDC, "is_signup_enabled": true}).to_string()),
        )
        .await;
    assert_denied(&a, &["signup-on-database-only", "signup-needs-membership"]);
    assert_eq!(
        h.received()
            .iter()
            .filter(|r| r.method != Method::GET)
            .count(),
        0
    );
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/self-service-profiles/{SELF_SERVICE_PROFILE}/sso-ticket"),
            Some(
                &json!({"connection_id": CON_SAML, "enabled_organizations": [
                {"organization_id": ORG_ACME, "organization_access_level": "full"}]})
                .to_string(),
            ),
        )
        .await;
    assert_denied(&a, &["no-full-access"]);
    assert!(
        changes(&h).is_empty(),
        "no denied change reached the tenant"
    );

    // Allowed: the same routes within the rules.
    let a = h.patch(r#"{"organization_access_level":"limited"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{ORG_ACME}/connections"),
            Some(&json!({"connection_id": CON_DATABASE, "is_signup_enabled": true, "assign_membership_on_login": true}).to_string()),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let a = h.send(Method::DELETE, &item(), None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(changes(&h).len(), 3);
}

#[tokio::test]
async fn two_harmless_steps_to_a_forbidden_state_are_denied_at_the_second() {
    let h = with_starter().await;
    let create = json!({"connection_id": CON_DATABASE, "is_signup_enabled": true, "assign_membership_on_login": true});
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{ORG_ACME}/connections"),
            Some(&create.to_string()),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    // The second step only turns membership off; the result breaks a rule.
    let a = h
        .patch_at(
            &format!("/api/v2/organizations/{ORG_ACME}/connections/{CON_DATABASE}"),
            r#"{"assign_membership_on_login":false}"#,
        )
        .await;
    assert_denied(&a, &["signup-needs-membership"]);
    assert_eq!(changes(&h).len(), 1);
}

#[tokio::test]
async fn context_is_fetched_with_the_callers_credentials_and_cached() {
    let h = with_starter().await;
    let path = item();
    let a = h.patch_at(&path, r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    let gets: Vec<_> = h
        .received()
        .into_iter()
        .filter(|r| r.method == Method::GET)
        .collect();
    let targets: Vec<&str> = gets.iter().map(|r| r.target.as_str()).collect();
    assert!(
        targets.contains(&format!("/api/v2/connections/{CON_SAML}").as_str()),
        "{targets:?}"
    );
    assert!(targets.contains(&path.as_str()), "{targets:?}");
    for g in &gets {
        assert_eq!(g.headers["authorization"], crate::harness::TOKEN);
    }
    // The connection is cached; the association was changed, so it is
    // fetched again.
    let before = h.received().len();
    let a = h.patch_at(&path, r#"{"show_as_button":true}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    let new: Vec<String> = h.received()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(new, vec![format!("GET {path}"), format!("PATCH {path}")]);
}

#[tokio::test]
async fn warn_forwards_with_a_warning_and_dry_run_forwards_silently() {
    let rules = r#"
[[rule]]
id = "prefer-buttons"
deny = 'after.show_as_button == false'
message = "hidden connections confuse users"
mode = "warn"

[[rule]]
id = "candidate-no-readonly"
deny = 'after.organization_access_level == "readonly"'
message = "readonly is being phased out"
mode = "dry-run"
"#;
    let h = Harness::with_policies("", &[("r.toml", rules)]).await;
    let path = item();
    let a = h.patch_at(&path, r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["warning"],
        r#"299 tollgate "prefer-buttons: hidden connections confuse users""#
    );
    // The sandbox's association is readonly: the dry-run rule matches, and
    // the request is forwarded without a word.
    let a = h.patch_at(&path, r#"{"show_as_button":true}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.headers.contains_key("warning"));
    assert_eq!(changes(&h).len(), 2);
    // The record says what would have been denied.
    h.audit.flush().await;
    let evs = tollgate::audit::query::show(&h.store, &a.audit_id())
        .await
        .expect("show");
    assert_eq!(evs[0]["event"]["decision"], "dry_run_deny");
    assert_eq!(evs[0]["event"]["rules"][0], "candidate-no-readonly");
}

/// The sandbox, failing every connection lookup.
struct NoConnections(Sandbox);

impl Handler for NoConnections {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        if req.method() == Method::GET && req.uri().path().starts_with("/api/v2/connections/") {
            let mut r = Response::new(tollgate::full(bytes::Bytes::from_static(
                b"{\"statusCode\":500}",
            )));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        }
        self.0.handle(req).await
    }
}

#[tokio::test]
async fn context_that_cannot_be_fetched_fails_closed() {
    let tenant = Sandbox::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(NoConnections(tenant.clone())),
        8,
        std::future::pending(),
    ));
    let files = starter();
    let h = Harness::in_front_of("", &format!("http://{addr}"), tenant).await;
    for (name, text) in &files {
        std::fs::write(h.policy_dir.path().join(name), text).expect("write");
    }
    h.policies.reload().await.expect("reload");
    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
    assert_eq!(a.error_code(), "tollgate_context_unavailable");
    assert!(changes(&h).is_empty(), "nothing forwarded");
}

#[tokio::test]
async fn reloads_keep_the_last_good_set_and_pick_up_new_files() {
    let h = Harness::with_policies("", &[]).await;
    let _watch = h.policies.watch().expect("watch");
    let path = item();
    let hide = Some(r#"{"show_as_button":false}"#);
    assert_eq!(
        h.send(Method::PATCH, &path, hide).await.status,
        StatusCode::OK
    );

    // A new file is picked up without a restart.
    let rule = "[[rule]]\nid = \"keep-buttons\"\ndeny = 'after.show_as_button == false'\nmessage = \"keep the button\"\n";
    std::fs::write(h.policy_dir.path().join("buttons.toml"), rule).expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = h.send(Method::PATCH, &path, hide).await;
        if a.status == StatusCode::FORBIDDEN {
            assert_denied(&a, &["keep-buttons"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let good = h.policies.current().version.clone();

    // A broken file leaves the last good set in force.
    std::fs::write(
        h.policy_dir.path().join("broken.toml"),
        "[[rule]]\nid = \"x\"\ndeny = '(('\n",
    )
    .expect("write");
    assert!(h.policies.reload().await.is_err());
    assert_eq!(h.policies.current().version, good);
    assert_eq!(
        h.send(Method::PATCH, &path, hide).await.status,
        StatusCode::FORBIDDEN
    );
}

/// An exception at the gateway: the exempted change is forwarded, its
/// record names the exception, the caller is told; the same change outside
/// the exception's scope is denied.
#[tokio::test]
async fn an_exception_lets_its_change_through_and_only_it() {
    let expires = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let rules = format!(
        r#"{NO_FULL_ACCESS}
[[exception]]
id = "acme-sso-migration"
rules = ["no-full-access"]
orgs = ["acme"]
connections = ["acme-saml"]
expires = "{expires}"
reason = "SSO migration"
ticket = "CHG-1234"
"#
    );
    let h = Harness::with_policies("", &[("r.toml", &rules)]).await;
    let a = h.patch(r#"{"organization_access_level":"full"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let warning = a.headers["warning"].to_str().expect("warning");
    assert!(
        warning.contains("no-full-access: exempted by acme-sso-migration"),
        "{warning}"
    );
    // Another organization: no exception there.
    let other = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{ORG_GLOBEX}/connections"),
            Some(r#"{"connection_id":"con_saml","organization_access_level":"full"}"#),
        )
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    h.audit.flush().await;
    let filter = tollgate::audit::query::Filter {
        decision: Some(tollgate::policy::Decision::Exempted),
        limit: 10,
        ..Default::default()
    };
    let rows = tollgate::audit::query::exchanges(&h.store, &filter)
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].exchange_id, a.audit_id());
    let events = tollgate::audit::query::show(&h.store, &a.audit_id())
        .await
        .expect("show");
    let verdict = &events[0]["event"]["data"]["rules"][0];
    assert_eq!(verdict["verdict"], "exempted");
    assert_eq!(verdict["detail"], "acme-sso-migration");
}

/// An exception for `org_acme` (an id) does not reach an organization
/// someone created with the *name* `org_acme`: the forbidden change is
/// denied and the tenant keeps nothing of it.
#[tokio::test]
async fn an_exception_by_id_is_not_taken_by_an_organization_named_like_it() {
    let expires = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let rules = format!(
        r#"{NO_FULL_ACCESS}
[[exception]]
id = "acme-sso-migration"
rules = ["no-full-access"]
orgs = ["org_acme"]
expires = "{expires}"
reason = "SSO migration"
"#
    );
    let h = Harness::with_policies("", &[("r.toml", &rules)]).await;
    let created = h
        .send(
            Method::POST,
            "/api/v2/organizations",
            Some(r#"{"name":"org_acme"}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.json()["id"].as_str().expect("id").to_owned();
    assert_ne!(id, "org_acme");
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{id}/connections"),
            Some(r#"{"connection_id":"con_saml","organization_access_level":"full"}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert_eq!(
        h.forwarded(Method::POST),
        1,
        "only the organization was created"
    );
}

/// `: > signup.toml` — the first moment of `cat >`, of many editors and of
/// rsync — is not a policy change: the file's rules stay in force, the
/// reload is refused naming the file, and forbidden changes are still
/// denied, through the watcher as through a reload asked for.
#[tokio::test]
async fn a_policy_file_emptied_mid_rewrite_keeps_its_rules() {
    let files = starter();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let h = Harness::with_policies("", &refs).await;
    let _watch = h.policies.watch().expect("watch");
    let signup = r#"{"is_signup_enabled":true}"#;
    assert_denied(
        &h.patch(signup).await,
        &["signup-on-database-only", "signup-needs-membership"],
    );
    let version = h.policies.current().version.clone();
    std::fs::write(h.policy_dir.path().join("signup.toml"), "").expect("truncate");
    // However long the file stays empty, each attempt is still denied.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        assert_denied(
            &h.patch(signup).await,
            &["signup-on-database-only", "signup-needs-membership"],
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Err(refused) = h.policies.reload().await else {
        panic!("an emptied file was put in force");
    };
    assert_eq!(refused[0].file, "signup.toml");
    assert_eq!(h.policies.current().version, version);
    assert!(changes(&h).is_empty(), "nothing forwarded");
    // Written whole again: in force, no gap.
    std::fs::write(h.policy_dir.path().join("signup.toml"), &files[1].1).expect("write");
    h.policies.reload().await.expect("reloads");
    assert_denied(
        &h.patch(signup).await,
        &["signup-on-database-only", "signup-needs-membership"],
    );
}
