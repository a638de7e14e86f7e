//! `tollgate scan`: the tenant as it stands, judged by the policy in force.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::sandbox::seed::*;

use crate::harness::{Harness, Served, start_sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The starter rules, a rule only about changes (`scan = false`), and a
/// warn rule only about scans.
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    let starter = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for f in ["access.toml", "signup.toml"] {
        std::fs::copy(starter.join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(
        dir.path().join("scan.toml"),
        r#"
[[rule]]
id = "changes-only"
deny = 'true'
message = "never judged by a scan"
scan = false

[[rule]]
id = "buttons-in-scans"
deny = 'request.method == "SCAN" && after.show_as_button == false'
message = "hidden connection found by a scan"
mode = "warn"
"#,
    )
    .expect("write");
    dir
}

/// Runs `tollgate ARGS` on the log at `db` (no configuration file).
async fn on_log(db: &str, args: &[&str]) -> std::process::Output {
    let config = tempfile::NamedTempFile::new().expect("config");
    tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("TOLLGATE_CONFIG", config.path())
        .env("TOLLGATE_AUDIT_URL", db)
        .output()
        .await
        .expect("run tollgate")
}

/// Runs `tollgate scan ARGS` against the tenant at `tenant`.
async fn scan(
    tenant: std::net::SocketAddr,
    policies: &Path,
    db: &str,
    args: &[&str],
) -> (i32, String) {
    let config = tempfile::NamedTempFile::new().expect("config");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .arg("scan")
            .args(args)
            .env_clear()
            .env("TOLLGATE_CONFIG", config.path())
            .env("TOLLGATE_UPSTREAM_URL", format!("http://{tenant}"))
            .env("TOLLGATE_SCAN_TOKEN", "scan-token")
            .env("TOLLGATE_POLICY_DIR", policies)
            .env("TOLLGATE_AUDIT_URL", db)
            .output(),
    )
    .await
    .expect("scanned in time")
    .expect("run tollgate scan");
    assert!(
        out.stderr.is_empty() || out.status.code().is_some(),
        "{:?}",
        out
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_scan_finds_what_was_planted_at_the_tenant_and_nothing_on_a_clean_one() {
    let (tenant, addr) = start_sandbox().await;
    let policies = policy_dir();
    let db = format!("sqlite://{}", policies.path().join("audit.db").display());

    let (code, out) = scan(addr, policies.path(), &db, &["--format", "json"]).await;
    assert_eq!(code, 0, "a clean tenant: {out}");
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["violations"], json!([]), "{report}");
    assert_eq!(report["organizations"], 2);
    assert_eq!(report["associations"], 1);

    // Planted at the tenant, as the dashboard would: full access, and a
    // hidden button.
    let mut planted = tollgate::sandbox::association_defaults();
    planted.insert("organization_access_level".into(), json!("full"));
    planted.insert("show_as_button".into(), json!(false));
    tenant.set_association(ORG_GLOBEX, CON_OIDC, planted);

    let (code, out) = scan(addr, policies.path(), &db, &["--format", "jsonl"]).await;
    assert_eq!(code, 1, "an enforce rule is violated: {out}");
    let found: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect();
    let rules: Vec<&str> = found.iter().filter_map(|v| v["rule"].as_str()).collect();
    assert_eq!(rules, ["no-full-access", "buttons-in-scans"], "{out}");
    assert_eq!(found[0]["org_id"], ORG_GLOBEX);
    assert_eq!(found[0]["connection_id"], CON_OIDC);
    assert_eq!(found[0]["connection_name"], "globex-oidc");
    assert_eq!(found[0]["field"], "/organization_access_level");
    assert_eq!(found[1]["mode"], "warn");

    // Only the other organization: nothing found there.
    let (code, _) = scan(addr, policies.path(), &db, &["--org", ORG_ACME]).await;
    assert_eq!(code, 0);
    // Warn-level failing, or never failing.
    let (code, _) = scan(addr, policies.path(), &db, &["--fail-on", "never"]).await;
    assert_eq!(code, 0);
    let (code, out) = scan(addr, policies.path(), &db, &["--format", "table"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("no-full-access") && out.contains("globex"),
        "{out}"
    );

    // Every scan is in the log, chained like the rest.
    let verify = on_log(&db, &["audit", "verify"]).await;
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    assert!(text.contains("5/5 events valid"), "{text}");
}

/// A scan shares the tenant's rate limit: 2,000 organizations with three
/// connections each, against a tenant that refuses (429) past its limit,
/// read at a fifth of the limit and never refused.
#[tokio::test]
async fn a_scan_of_2000_organizations_stays_within_the_rate_limit() {
    let (tenant, addr) = start_sandbox().await;
    tenant.add_organizations(2000, 3);
    tenant.set_rate_limit(Some(2000));
    let upstream =
        tollgate::upstream::Upstream::new(&format!("http://{addr}"), Duration::from_secs(10), None)
            .expect("upstream");
    let policy =
        tollgate::policy::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .expect("policies");
    let auth = http::HeaderValue::from_static("Bearer scan");
    let report = tollgate::scan::scan(&upstream, Some(auth), &policy, &[], 0.2)
        .await
        .expect("scanned");
    assert_eq!(report.organizations, 2002);
    assert_eq!(report.associations, 6001);
    // One page of connections, 21 of organizations, one per organization.
    assert_eq!(report.tenant_calls, 1 + 21 + 2002, "{report:?}");
    assert_eq!(report.rate_limited, 0);
    assert_eq!(tenant.rate_limited(), 0, "the tenant never refused a call");
    // At a fifth of 2,000 per second, 2,024 calls take about five seconds.
    assert!(
        report.duration_ms >= 4000,
        "paced: {} ms",
        report.duration_ms
    );
    println!(
        "scan: {} organizations, {} associations, {} tenant calls in {} ms",
        report.organizations, report.associations, report.tenant_calls, report.duration_ms
    );
}

/// With `scan.interval`, `serve` scans on its own: the newest report at
/// `/v1/scan`, its violations in `tollgate_scan_violations`, the changes
/// made at the tenant outside it in `tollgate_outside_changes_total`.
#[tokio::test]
async fn serve_scans_on_its_own_and_shows_the_result() {
    let (tenant, addr) = start_sandbox().await;
    let mut planted = tollgate::sandbox::association_defaults();
    planted.insert("organization_access_level".into(), json!("full"));
    tenant.set_association(ORG_GLOBEX, CON_OIDC, planted);
    dashboard_change(addr, ORG_ACME, CON_SAML, r#"{"show_as_button":false}"#).await;
    let (served, _dir, _db) = Served::in_front_of(
        addr,
        &[
            ("TOLLGATE_SCAN_INTERVAL", "1h"),
            ("TOLLGATE_SCAN_TOKEN", "scan-token"),
            ("TOLLGATE_ADMIN_TOKEN", "admin-secret"),
        ],
    )
    .await;
    let report = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let a =
                Harness::client_get_with(&served.admin, "/v1/scan", "Bearer admin-secret").await;
            if a.status == http::StatusCode::OK {
                return a.json();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a scan ran");
    assert_eq!(
        report["violations"][0]["rule"], "no-full-access",
        "{report}"
    );
    let metrics = Harness::client_get(&served.admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("tollgate_scan_violations 1"), "{text}");
    let outside = text
        .lines()
        .find(|l| l.starts_with("tollgate_outside_changes_total{"))
        .unwrap_or_else(|| panic!("no outside changes counted:\n{text}"));
    assert!(outside.ends_with(" 1"), "{outside}");
    crate::harness::terminate(served.child).await;
}

/// A scheduled scan that cannot reach the tenant is counted in
/// `tollgate_scan_failures_total` (and `serve` goes on).
#[tokio::test]
async fn a_scheduled_scan_that_fails_is_counted() {
    let (_reserved, addr) = crate::harness::refused_address();
    let (served, _dir, _db) = Served::in_front_of(
        addr,
        &[
            ("TOLLGATE_SCAN_INTERVAL", "1h"),
            ("TOLLGATE_SCAN_TOKEN", "scan-token"),
        ],
    )
    .await;
    let text = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let metrics = Harness::client_get(&served.admin, "/metrics").await;
            let text = String::from_utf8_lossy(&metrics.body).into_owned();
            if text.contains("tollgate_scan_failures_total") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the scan failed and was counted");
    assert!(text.contains("tollgate_scan_failures_total 1"), "{text}");
    assert!(served.log().contains("scan failed"), "{}", served.log());
    crate::harness::terminate(served.child).await;
}

/// `serve` in front of `tenant`, accepting its log stream
/// (`stream-secret`) and the admin API (`admin-secret`).
async fn with_log_stream(tenant: std::net::SocketAddr) -> (Served, tempfile::TempDir, String) {
    Served::in_front_of(
        tenant,
        &[
            ("TOLLGATE_SCAN_LOG_STREAM_TOKEN", "stream-secret"),
            ("TOLLGATE_ADMIN_TOKEN", "admin-secret"),
        ],
    )
    .await
}

/// A change at the tenant directly, as the dashboard makes it.
async fn dashboard_change(tenant: std::net::SocketAddr, org: &str, cid: &str, body: &str) {
    let a = Harness::client_send_with(
        &tenant.to_string(),
        http::Method::PATCH,
        &format!("/sandbox/dashboard/organizations/{org}/connections/{cid}"),
        body,
        "Bearer dashboard",
    )
    .await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
}

fn scan_config(tenant: std::net::SocketAddr) -> tollgate::config::Config {
    let env = [
        (
            "TOLLGATE_UPSTREAM_URL".to_owned(),
            format!("http://{tenant}"),
        ),
        ("TOLLGATE_SCAN_TOKEN".to_owned(), "scan-token".to_owned()),
    ];
    tollgate::config::Config::load("", "scan.toml", env).expect("config")
}

on_both_backends! {
// Changes made at the tenant are found in its log and attributed; changes
// tollgate forwarded are not reported, though the log carries no
// correlation id; nothing is reported twice.
async fn outside_changes_are_found_and_attributed_and_forwarded_ones_are_not(backend: Backend) {
    let rule =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/access.toml"))
            .expect("rule");
    let h = Harness::setup().backend(backend).rule(&rule).start().await;
    let tenant = h.tenant_addr();
    // Through tollgate: allowed, forwarded, in the tenant's log.
    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, http::StatusCode::OK);
    let a = h
        .patch_at(
            &format!("/api/v2/organizations/{ORG_GLOBEX}/enabled_connections"),
            r#"{"x":1}"#,
        )
        .await;
    assert_eq!(a.status, http::StatusCode::METHOD_NOT_ALLOWED);
    // At the tenant: what the policy forbids.
    dashboard_change(
        tenant,
        ORG_ACME,
        CON_SAML,
        r#"{"organization_access_level":"full"}"#,
    )
    .await;

    let policy = h.policies.current();
    let log = tollgate::scan::outside::Log {
        store: &h.store,
        audit: &h.audit,
    };
    let config = scan_config(tenant);
    let report = tollgate::scan::run(&config, &policy, &[], None, &log)
        .await
        .expect("scan");
    assert_eq!(report.outside.len(), 1, "{:?}", report.outside);
    let o = &report.outside[0];
    assert_eq!(o.operation, "organization_connection.update");
    assert_eq!(o.org_id.as_deref(), Some(ORG_ACME));
    assert_eq!(o.connection_id.as_deref(), Some(CON_SAML));
    assert_eq!(o.client_id.as_deref(), Some("sandbox-dashboard"));
    assert_eq!(o.user.as_deref(), Some("admin@sandbox.example"));
    assert_eq!(o.decision, tollgate::policy::Decision::Deny);
    assert_eq!(o.rules, ["no-full-access"]);
    // The state it left is a violation the same scan reports.
    assert_eq!(report.violations[0].rule, "no-full-access");

    // Read once: a second scan finds nothing new.
    let again = tollgate::scan::run(&config, &policy, &[], None, &log)
        .await
        .expect("scan");
    assert!(again.outside.is_empty(), "{:?}", again.outside);
    h.audit.flush().await;
    let filter = tollgate::audit::query::Filter {
        limit: 100,
        ..Default::default()
    };
    let listed = tollgate::audit::query::outside(&h.store, &filter)
        .await
        .expect("query");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].caller.as_deref(), Some("sandbox-dashboard"));
    assert_eq!(listed[0].outcome, "outside");
}
}

on_both_backends! {
// The log's checkpoint lives in the store: separate `tollgate scan` runs
// (restarts) read every event once, across page boundaries.
async fn the_log_checkpoint_survives_restarts_without_duplicates_or_gaps(backend: Backend) {
    let (_tenant, addr) = start_sandbox().await;
    let policies = policy_dir();
    let db = crate::harness::fresh_store_url(backend, policies.path()).await;
    dashboard_change(addr, ORG_ACME, CON_SAML, r#"{"show_as_button":false}"#).await;
    let (_, out) = scan(
        addr,
        policies.path(),
        &db,
        &["--format", "json", "--fail-on", "never"],
    )
    .await;
    let first: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        first["outside"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    // More than a page of the tenant's log between two runs.
    for i in 0..150 {
        let value = if i % 2 == 0 { "true" } else { "false" };
        dashboard_change(
            addr,
            ORG_ACME,
            CON_SAML,
            &format!(r#"{{"show_as_button":{value}}}"#),
        )
        .await;
    }
    let (_, out) = scan(
        addr,
        policies.path(),
        &db,
        &["--format", "json", "--fail-on", "never"],
    )
    .await;
    let second: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(second["outside"].as_array().map(Vec::len), Some(150));
    let (_, out) = scan(
        addr,
        policies.path(),
        &db,
        &["--format", "json", "--fail-on", "never"],
    )
    .await;
    let third: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(third["outside"], json!([]));
    // The log lists each once.
    let listed = on_log(
        &db,
        &["audit", "query", "--outside", "--format", "jsonl", "--limit", "1000"],
    )
    .await;
    let rows: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect();
    assert_eq!(rows.len(), 151);
    let mut ids: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["exchange_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 151, "no event recorded twice");
}
}

/// An Auth0 log stream (custom webhook) on the admin listener: outside
/// changes recorded as they happen, listed at /v1/exchanges?outside=true.
#[tokio::test]
async fn a_log_stream_reports_outside_changes_within_seconds() {
    let (_tenant, addr) = start_sandbox().await;
    let (served, _dir, _db) = with_log_stream(addr).await;
    dashboard_change(
        addr,
        ORG_ACME,
        CON_SAML,
        r#"{"organization_access_level":"full"}"#,
    )
    .await;
    // What the tenant streams: its log events, wrapped.
    let logs = Harness::client_get_with(&addr.to_string(), "/api/v2/logs", "Bearer x").await;
    let batch: Vec<Value> = logs
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| json!({"log_id": e["log_id"], "data": e}))
        .collect();
    let body = Value::Array(batch).to_string();
    let refused = Harness::client_send_with(
        &served.admin,
        http::Method::POST,
        "/v1/log-stream",
        &body,
        "Bearer nope",
    )
    .await;
    assert_eq!(refused.status, http::StatusCode::UNAUTHORIZED);
    let a = Harness::client_send_with(
        &served.admin,
        http::Method::POST,
        "/v1/log-stream",
        &body,
        "Bearer stream-secret",
    )
    .await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
    assert_eq!(a.json()["outside"], 1);
    // Sent twice (a stream retries): recorded once.
    let again = Harness::client_send_with(
        &served.admin,
        http::Method::POST,
        "/v1/log-stream",
        &body,
        "Bearer stream-secret",
    )
    .await;
    assert_eq!(again.json()["outside"], 0);
    let listed = Harness::client_get_with(
        &served.admin,
        "/v1/exchanges?outside=true",
        "Bearer admin-secret",
    )
    .await;
    let rows = listed.json();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["decision"], "deny");
    assert_eq!(rows[0]["caller"], "sandbox-dashboard");
    crate::harness::terminate(served.child).await;
}

/// The ways an outside change could hide behind tollgate's own exchanges,
/// each closed: one exchange explains one log event only, ever; an
/// exchange the tenant refused explains none; an event before an exchange
/// is not explained by it (and is attributed to whoever made it).
#[tokio::test]
async fn an_outside_change_cannot_hide_behind_a_forwarded_one() {
    let rule =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/access.toml"))
            .expect("rule");
    let h = Harness::setup().rule(&rule).start().await;
    let tenant = h.tenant_addr();
    let policy = h.policies.current();
    let log = tollgate::scan::outside::Log {
        store: &h.store,
        audit: &h.audit,
    };
    let config = scan_config(tenant);
    let scan = || tollgate::scan::run(&config, &policy, &[], None, &log);
    let same = r#"{"organization_access_level":"none"}"#;

    // One forwarded change, then the identical change twice at the
    // dashboard, a scan after each: both dashboard changes are reported.
    assert_eq!(h.patch(same).await.status, http::StatusCode::OK);
    assert!(scan().await.expect("scan").outside.is_empty());
    dashboard_change(tenant, ORG_ACME, CON_SAML, same).await;
    assert_eq!(scan().await.expect("scan").outside.len(), 1);
    dashboard_change(tenant, ORG_ACME, CON_SAML, same).await;
    assert_eq!(scan().await.expect("scan").outside.len(), 1);

    // The dashboard first, then the same change through tollgate: the
    // dashboard's change is the outside one, and it is the dashboard's.
    let both = r#"{"organization_access_level":"limited","show_as_button":false}"#;
    dashboard_change(tenant, ORG_ACME, CON_SAML, both).await;
    assert_eq!(h.patch(both).await.status, http::StatusCode::OK);
    let found = scan().await.expect("scan").outside;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].client_id.as_deref(), Some("sandbox-dashboard"));

    // A create made at the tenant directly, then tried through tollgate
    // (the tenant answers 409): the refused exchange explains nothing.
    let create = r#"{"connection_id":"con_google","organization_access_level":"limited"}"#;
    let direct = Harness::client_send_with(
        &tenant.to_string(),
        http::Method::POST,
        &format!("/api/v2/organizations/{ORG_GLOBEX}/connections"),
        create,
        "Bearer someone-else",
    )
    .await;
    assert_eq!(direct.status, http::StatusCode::CREATED);
    let through = h
        .send(
            http::Method::POST,
            &format!("/api/v2/organizations/{ORG_GLOBEX}/connections"),
            Some(create),
        )
        .await;
    assert_eq!(through.status, http::StatusCode::CONFLICT);
    let found = scan().await.expect("scan").outside;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].operation, "organization_connection.create");
    assert_eq!(found[0].client_id.as_deref(), Some("sandbox-api-client"));
}

/// A log stream cannot keep a real event from being recorded by posting a
/// forged one with its `log_id` first; an event delivered many times at
/// once is recorded once.
#[tokio::test]
async fn forged_and_redelivered_stream_events_are_recorded_once_each() {
    let (_tenant, addr) = start_sandbox().await;
    let (served, _dir, _db) = with_log_stream(addr).await;
    let post = |body: String| {
        let admin = served.admin.clone();
        async move {
            Harness::client_send_with(
                &admin,
                http::Method::POST,
                "/v1/log-stream",
                &body,
                "Bearer stream-secret",
            )
            .await
        }
    };
    dashboard_change(
        addr,
        ORG_ACME,
        CON_SAML,
        r#"{"organization_access_level":"full"}"#,
    )
    .await;
    let logs = Harness::client_get_with(&addr.to_string(), "/api/v2/logs", "Bearer x")
        .await
        .json();
    let real = logs[0].clone();
    // A forged event with the real one's log_id, harmless-looking.
    let mut forged = real.clone();
    forged["details"]["request"]["body"] = json!({"show_as_button": true});
    forged["client_id"] = json!("terraform-ci");
    assert_eq!(post(json!([forged]).to_string()).await.json()["outside"], 1);
    // The real event, delivered twelve times at once.
    let deliveries: Vec<_> = (0..12).map(|_| post(json!([real]).to_string())).collect();
    let answers = futures_util::future::join_all(deliveries).await;
    let recorded: u64 = answers
        .iter()
        .filter_map(|a| a.json()["outside"].as_u64())
        .sum();
    assert_eq!(recorded, 1, "recorded once: {answers:?}");
    let listed = Harness::client_get_with(
        &served.admin,
        "/v1/exchanges?outside=true",
        "Bearer admin-secret",
    )
    .await;
    assert_eq!(listed.json().as_array().map(Vec::len), Some(2));
    assert_eq!(
        Harness::client_get_with(
            &served.admin,
            "/v1/exchanges?outside=yes",
            "Bearer admin-secret"
        )
        .await
        .status,
        http::StatusCode::BAD_REQUEST
    );
    crate::harness::terminate(served.child).await;
}

/// An outside change the policy forbids fails the scan even when it was
/// undone before the scan read the tenant.
#[tokio::test]
async fn a_forbidden_outside_change_fails_the_scan_even_when_undone() {
    let (_tenant, addr) = start_sandbox().await;
    let policies = policy_dir();
    let db = format!("sqlite://{}", policies.path().join("audit.db").display());
    dashboard_change(
        addr,
        ORG_ACME,
        CON_SAML,
        r#"{"organization_access_level":"full"}"#,
    )
    .await;
    dashboard_change(
        addr,
        ORG_ACME,
        CON_SAML,
        r#"{"organization_access_level":"readonly"}"#,
    )
    .await;
    let (code, out) = scan(addr, policies.path(), &db, &["--format", "json"]).await;
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        report["violations"],
        json!([]),
        "the tenant is clean: {report}"
    );
    assert_eq!(report["outside"][0]["decision"], "deny");
    assert_eq!(
        code, 1,
        "a forbidden outside change fails the scan: {report}"
    );
}

/// Forged stream events hide nothing and stay nowhere: a correlation id
/// pointing at a *denied* exchange does not explain an outside change away,
/// and an event dated in the future is refused.
#[tokio::test]
async fn forged_stream_events_neither_hide_changes_nor_stay_on_top() {
    let (_tenant, addr) = start_sandbox().await;
    let (served, _dir, _db) = with_log_stream(addr).await;
    // Denied through tollgate: its audit id is what a forger would point at.
    let denied = served
        .patch(
            &format!("/api/v2/organizations/{ORG_ACME}/connections/{CON_SAML}"),
            r#"{"organization_access_level":"full"}"#,
        )
        .await;
    assert_eq!(denied.status, http::StatusCode::FORBIDDEN);
    // The same change, made at the tenant.
    dashboard_change(
        addr,
        ORG_ACME,
        CON_SAML,
        r#"{"organization_access_level":"full"}"#,
    )
    .await;
    let logs = Harness::client_get_with(&addr.to_string(), "/api/v2/logs", "Bearer x").await;
    let mut events: Vec<Value> = logs.json().as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty());
    for e in &mut events {
        e["details"]["request"]["correlation_id"] = json!(denied.audit_id());
    }
    let mut future = events[0].clone();
    future["log_id"] = json!("forged-2099");
    future["date"] = json!("2099-01-01T00:00:00.000Z");
    let post = |events: &[Value]| {
        let batch: Vec<Value> = events
            .iter()
            .map(|e| json!({"log_id": e["log_id"], "data": e}))
            .collect();
        let admin = served.admin.clone();
        async move {
            Harness::client_send_with(
                &admin,
                http::Method::POST,
                "/v1/log-stream",
                &Value::Array(batch).to_string(),
                "Bearer stream-secret",
            )
            .await
        }
    };
    let a = post(&events).await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
    assert_eq!(
        a.json()["outside"],
        1,
        "a denied exchange explains nothing away: {}",
        a.json()
    );
    let a = post(&[future]).await;
    assert_eq!(
        a.json()["outside"],
        0,
        "an event from the future is refused: {}",
        a.json()
    );
    crate::harness::terminate(served.child).await;
}

on_both_backends! {
/// An exception scoped by caller means the same at the gateway and in a
/// scan: the state a caller made under it is exempted while the last change
/// to it is that caller's; once someone else changes it (at the tenant),
/// the state is a violation again.
async fn a_caller_scoped_exception_means_the_same_in_the_gateway_and_the_scan(backend: Backend) {
    let rules = format!(
        "{}\n[[exception]]\nid = \"ci-migration\"\nrules = [\"no-full-access\"]\ncallers = [\"terraform-ci\"]\nexpires = \"{}\"\nreason = \"cut-over\"\n",
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/access.toml")).expect("rule"),
        (chrono::Utc::now() + chrono::Duration::days(20)).to_rfc3339()
    );
    let h = Harness::setup().backend(backend).rule(&rules).start().await;
    let tenant = h.tenant_addr();
    let token = |client: &str| {
        use base64::Engine;
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "Bearer {}.{}.c2ln",
            enc(br#"{"alg":"RS256","typ":"JWT"}"#),
            enc(json!({"azp": client, "sub": format!("{client}@clients")}).to_string().as_bytes())
        )
    };
    let full = br#"{"organization_access_level":"full"}"#;
    // Someone else: denied. The exception's caller: exempted, forwarded.
    assert_eq!(h.patch_as(&token("other-bot"), full).await.status, http::StatusCode::FORBIDDEN);
    let a = h.patch_as(&token("terraform-ci"), full).await;
    assert_eq!(a.status, http::StatusCode::OK, "{a:?}");
    h.audit.flush().await;
    let policy = h.policies.current();
    let log = tollgate::scan::outside::Log { store: &h.store, audit: &h.audit };
    let config = scan_config(tenant);
    let report = tollgate::scan::run(&config, &policy, &[ORG_ACME.to_owned()], None, &log)
        .await
        .expect("scan");
    assert!(
        !report.violations.iter().any(|v| v.rule == "no-full-access" && v.connection_id == CON_SAML),
        "{backend:?}: the scan agrees with the gateway: {:?}",
        report.violations
    );
    // Denied requests by someone else change nothing at the tenant, and
    // nothing in the scan's reading of who made the state.
    for _ in 0..60 {
        assert_eq!(h.patch_as(&token("other-bot"), full).await.status, http::StatusCode::FORBIDDEN);
    }
    h.audit.flush().await;
    let report = tollgate::scan::run(&config, &policy, &[ORG_ACME.to_owned()], None, &log)
        .await
        .expect("scan");
    assert!(
        !report.violations.iter().any(|v| v.rule == "no-full-access" && v.connection_id == CON_SAML),
        "{backend:?}: a flood of denials moved the scan: {:?}",
        report.violations
    );
    // Changed at the tenant since: no longer the exempted caller's state.
    dashboard_change(tenant, ORG_ACME, CON_SAML, r#"{"show_as_button":false}"#).await;
    let report = tollgate::scan::run(&config, &policy, &[ORG_ACME.to_owned()], None, &log)
        .await
        .expect("scan");
    assert!(
        report.violations.iter().any(|v| v.rule == "no-full-access" && v.connection_id == CON_SAML),
        "{backend:?}: {:?}",
        report.violations
    );
}
}

on_both_backends! {
/// A forged stream event copying a change tollgate forwarded steals
/// nothing: pushed events never claim an exchange, so the tenant's own
/// event of that change, read by the next scan, still finds it, and the
/// gateway's change is not reported as made outside.
async fn a_forged_stream_event_cannot_steal_an_exchange(backend: Backend) {
    let rule =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/access.toml"))
            .expect("rule");
    let h = Harness::setup().backend(backend).rule(&rule).start().await;
    let tenant = h.tenant_addr();
    assert_eq!(h.patch(r#"{"show_as_button":false}"#).await.status, http::StatusCode::OK);
    h.audit.flush().await;
    let logs = Harness::client_get_with(&tenant.to_string(), "/api/v2/logs", "Bearer x").await;
    let real = logs
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e["type"] == "sapi")
        .expect("the tenant logged the change");
    let mut forged = real.clone();
    forged["log_id"] = json!("forged-0001");
    let policy = h.policies.current();
    let log = tollgate::scan::outside::Log { store: &h.store, audit: &h.audit };
    let pushed = tollgate::scan::outside::judge_batch(&[forged], &log, &policy, false)
        .await
        .expect("stream");
    assert!(pushed.is_empty(), "{pushed:?}");
    let report = tollgate::scan::run(&scan_config(tenant), &policy, &[], None, &log)
        .await
        .expect("scan");
    assert!(report.outside.is_empty(), "{backend:?}: the gateway's own change reported as outside: {:?}", report.outside);
}
}
