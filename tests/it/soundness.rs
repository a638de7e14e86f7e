//! The central promise in time: rules judge the state the tenant will
//! really have. Concurrent changes, stale lookups, changes made at the
//! tenant, a tenant that does more than asked, and a gateway without rules.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::Barrier;
use tollgate::audit::query;
use tollgate::sandbox::Sandbox;
use tollgate::sandbox::seed::*;

use crate::harness::{Backend, Harness, Served, serve_exits, start_sandbox};

/// The tenant's own rule, enforced here by policy only (the tenant below is
/// lenient), and one the tenant never enforces.
const RULES: &str = r#"
[[rule]]
id = "signup-needs-membership"
deny = 'after.is_signup_enabled == true && after.assign_membership_on_login != true'
message = "signup needs membership"

[[rule]]
id = "no-signup-with-access"
deny = 'after.is_signup_enabled == true && after.organization_access_level in ["limited", "full"]'
message = "signup members get no access level"
"#;

fn path(connection: &str) -> String {
    format!("/api/v2/organizations/{ORG_ACME}/connections/{connection}")
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Membership on, signup off, no access level: every single change below
/// is allowed from here; two of them together are not.
fn start_state() -> Map<String, Value> {
    let mut m = tollgate::sandbox::association_defaults();
    m.insert("assign_membership_on_login".into(), json!(true));
    m
}

/// Whether the association breaks either rule.
fn forbidden(state: &Map<String, Value>) -> bool {
    let on = |k: &str| state.get(k) == Some(&Value::Bool(true));
    let level = state
        .get("organization_access_level")
        .and_then(Value::as_str)
        .unwrap_or_default();
    on("is_signup_enabled")
        && (!on("assign_membership_on_login") || matches!(level, "limited" | "full"))
}

/// Asserts the tenant's association breaks no rule.
fn assert_allowed_state(tenant: &Sandbox, label: &str) {
    let state = tenant
        .association(ORG_ACME, CON_DATABASE)
        .expect("association");
    assert!(!forbidden(&state), "{label}: forbidden state {state:?}");
}

/// A lenient tenant a little way off, and the association at its start.
fn lenient_tenant(tenant: &Sandbox) {
    tenant.set_lenient(true);
    tenant.set_latency(Duration::from_millis(2));
    tenant.set_association(ORG_ACME, CON_DATABASE, start_state());
}

/// Sends two PATCHes released together by a barrier, through `a` and `b`.
async fn pair(
    a: &Harness,
    b: &Harness,
    x: &str,
    y: &str,
) -> (crate::harness::Answer, crate::harness::Answer) {
    let barrier = Barrier::new(2);
    let p = path(CON_DATABASE);
    tokio::join!(
        async {
            barrier.wait().await;
            a.send(Method::PATCH, &p, Some(x)).await
        },
        async {
            barrier.wait().await;
            b.send(Method::PATCH, &p, Some(y)).await
        },
    )
}

/// The decision event's data and the outcome event's data of an exchange.
async fn recorded(h: &Harness, id: &str) -> (Value, Value) {
    h.audit.flush().await;
    let evs = query::show(&h.store, id).await.expect("show");
    let of = |kind: &str| {
        evs.iter()
            .find(|e| e["event"]["kind"] == kind)
            .map(|e| e["event"]["data"].clone())
            .unwrap_or(Value::Null)
    };
    (of("decision"), of("outcome"))
}

/// Runs `n` barrier-released pairs of each kind through `a` and `b` and
/// checks every one: never a forbidden state, one 200 and one 403, and the
/// denied exchange judged against the allowed one's result.
async fn race(a: &Harness, b: &Harness, n: usize, label: &str) {
    let pairs = [
        (
            r#"{"is_signup_enabled":true}"#,
            r#"{"assign_membership_on_login":false}"#,
        ),
        (
            r#"{"is_signup_enabled":true}"#,
            r#"{"organization_access_level":"limited"}"#,
        ),
    ];
    for i in 0..n {
        for (x, y) in pairs {
            a.tenant
                .set_association(ORG_ACME, CON_DATABASE, start_state());
            let (ax, ay) = pair(a, b, x, y).await;
            assert_allowed_state(&a.tenant, &format!("{label} #{i} {x} + {y}"));
            let mut statuses = [ax.status, ay.status];
            statuses.sort();
            assert_eq!(
                statuses,
                [StatusCode::OK, StatusCode::FORBIDDEN],
                "{label} #{i} {x} + {y}: {} / {}",
                String::from_utf8_lossy(&ax.body),
                String::from_utf8_lossy(&ay.body)
            );
            let ((allowed, ah), (denied, dh)) = if ax.status == StatusCode::OK {
                ((ax, a), (ay, b))
            } else {
                ((ay, b), (ax, a))
            };
            let (_, outcome) = recorded(ah, &allowed.audit_id()).await;
            let (decision, _) = recorded(dh, &denied.audit_id()).await;
            assert_eq!(outcome["post_check"], "passed");
            assert_eq!(
                decision["changes"][0]["before"], outcome["association"],
                "{label} #{i}: the second change is judged against the first one's result"
            );
        }
    }
}

on_both_backends! {
    async fn concurrent_changes_to_one_association_never_add_up(backend: Backend) {
        let h = Harness::setup()
            .backend(backend)
            .rule(RULES)
            .start()
            .await;
        lenient_tenant(&h.tenant);
        race(&h, &h, 100, &format!("{backend:?}")).await;
    }
}

#[tokio::test]
async fn two_gateways_on_one_postgres_never_add_up() {
    let (tenant, addr) = start_sandbox().await;
    lenient_tenant(&tenant);
    let url = format!("http://{addr}");
    let a = Harness::setup()
        .backend(Backend::Postgres)
        .rule(RULES)
        .upstream(&url, tenant.clone())
        .start()
        .await;
    let b = Harness::setup()
        .store_url(&a.store_url)
        .rule(RULES)
        .upstream(&url, tenant)
        .start()
        .await;
    race(&a, &b, 50, "two gateways").await;
}

/// Lookups that start before a change and end after it must not leave the
/// old state behind for a later change to be judged against.
#[tokio::test]
async fn a_lookup_racing_a_change_does_not_resurrect_the_old_state() {
    let h = Harness::with_rule("[context]\ncache_ttl = \"30s\"\n", RULES).await;
    lenient_tenant(&h.tenant);
    // Slow answers to reads, quick ones to writes: a read answered just
    // before the change lands arrives after the change's own answer.
    h.tenant
        .set_latencies(Duration::from_millis(20), Duration::from_millis(1));
    let p = &path(CON_DATABASE);
    for i in 0..100 {
        h.tenant
            .set_association(ORG_ACME, CON_DATABASE, start_state());
        let barrier = &Barrier::new(9);
        let h = &h;
        let change = async {
            barrier.wait().await;
            h.patch_at(p, r#"{"assign_membership_on_login":false}"#)
                .await
        };
        // Denied (signup without membership... once the change lands; or
        // signup with access before it): each reads the association.
        // Staggered, so that some are answered just before the change lands
        // and arrive just after it.
        let lookups = (0..8u64).map(|n| async move {
            barrier.wait().await;
            tokio::time::sleep(Duration::from_millis(5 * n + 5)).await;
            h.patch_at(
                p,
                r#"{"is_signup_enabled":true,"organization_access_level":"full"}"#,
            )
            .await
        });
        let (changed, denied) = tokio::join!(change, futures_util::future::join_all(lookups));
        assert_eq!(changed.status, StatusCode::OK, "#{i}");
        assert!(
            denied.iter().all(|d| d.status == StatusCode::FORBIDDEN),
            "#{i}"
        );
        let later = h.patch_at(p, r#"{"is_signup_enabled":true}"#).await;
        assert_eq!(
            later.status,
            StatusCode::FORBIDDEN,
            "#{i}: judged against the new state"
        );
        assert_allowed_state(&h.tenant, &format!("#{i}"));
    }
}

/// A change made at the tenant itself (the dashboard, another credential)
/// is seen by the next change through tollgate, however soon.
#[tokio::test]
async fn a_change_made_at_the_tenant_is_judged_against() {
    let (tenant, addr) = start_sandbox().await;
    lenient_tenant(&tenant);
    let h = Harness::setup()
        .config("[context]\ncache_ttl = \"30s\"\n")
        .rule(RULES)
        .tenant_at(addr, tenant)
        .start()
        .await;
    let p = path(CON_DATABASE);
    // Through tollgate first, so any cache holds the association (a denied
    // change invalidates nothing).
    let warm = h
        .patch_at(
            &p,
            r#"{"is_signup_enabled":true,"organization_access_level":"full"}"#,
        )
        .await;
    assert_eq!(warm.status, StatusCode::FORBIDDEN);
    // At the tenant, not through tollgate.
    let direct = reqwest_like_patch(
        &format!("http://{addr}{p}"),
        r#"{"is_signup_enabled":true}"#,
    )
    .await;
    assert_eq!(direct, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = h
        .patch_at(&p, r#"{"assign_membership_on_login":false}"#)
        .await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["rules"][0]["id"], "signup-needs-membership");
    let (decision, _) = recorded(&h, &a.audit_id()).await;
    assert_eq!(decision["changes"][0]["before"]["is_signup_enabled"], true);
    assert_allowed_state(&h.tenant, "after");
}

/// One PATCH straight to the tenant; its status.
async fn reqwest_like_patch(url: &str, body: &str) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::patch(url)
        .header("authorization", "Bearer dashboard")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body.as_bytes(),
        )))
        .expect("request");
    client
        .request(req)
        .await
        .expect("tenant answered")
        .status()
        .as_u16()
}

/// A caller whose token the tenant refuses never gets a verdict computed
/// from what another caller's token could read.
#[tokio::test]
async fn an_invalid_token_gets_no_verdict_from_another_callers_context() {
    // Reads only the connection, a fact the gateway caches.
    let rule = "[[rule]]\nid = \"no-saml-changes\"\noperations = [\"organization_connection.update\"]\n\
                deny = 'connection.strategy == \"samlp\"'\nmessage = \"SAML associations are frozen\"\n";
    let h = Harness::with_rule("[context]\ncache_ttl = \"30s\"\n", rule).await;
    h.tenant.set_tokens(Some(vec!["test-token".into()]));
    let p = path(CON_SAML);
    let body = br#"{"show_as_button":false}"#;
    let valid = h.patch_at(&p, r#"{"show_as_button":false}"#).await;
    assert_eq!(
        valid.status,
        StatusCode::FORBIDDEN,
        "the valid caller is judged"
    );
    let forged = h
        .send_with(
            Method::PATCH,
            &p,
            &[
                ("authorization", "Bearer garbage"),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(
        forged.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&forged.body)
    );
    assert_eq!(
        forged.json()["message"],
        "Invalid token",
        "the tenant's own answer"
    );
    assert!(forged.json().get("rules").is_none(), "no verdict leaks");
    assert_eq!(h.forwarded(Method::PATCH), 0, "nothing was forwarded");
}

/// A tenant that applies more than it was asked: the answer is judged
/// again, and the violation recorded, counted and logged by the binary.
#[tokio::test]
async fn a_tenant_doing_more_than_asked_is_caught_by_the_post_check() {
    let (tenant, addr) = start_sandbox().await;
    tenant.set_extra_change(Some(fields(json!({"organization_access_level": "full"}))));
    let (served, _dir, db) = Served::in_front_of(addr, &[]).await;
    let a = Harness::client_send(
        &served.addr,
        Method::PATCH,
        &path(CON_SAML),
        r#"{"show_as_button":false}"#,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "the tenant answered; nothing is reverted"
    );
    assert_eq!(
        tenant.association(ORG_ACME, CON_SAML).expect("association")["organization_access_level"],
        "full"
    );
    let metrics = Harness::client_get(&served.admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains(
            r#"tollgate_post_check_violations_total{operation="organization_connection.update"} 1"#
        ),
        "{text}"
    );
    let id = a.audit_id();
    let log = served.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("post-check violated") && l.contains(&id)),
        "{log}"
    );
    crate::harness::terminate(served.child).await;
    let store = tollgate::audit::Store::open(&db).await.expect("store");
    let evs = query::show(&store, &id).await.expect("show");
    let outcome = &evs[1]["event"]["data"];
    assert_eq!(outcome["post_check"], "violated");
    assert_eq!(outcome["post_check_rules"][0]["id"], "no-full-access");
    assert_eq!(outcome["association"]["organization_access_level"], "full");
    assert_eq!(outcome["association"]["show_as_button"], false);
}

/// Without rules the gateway does not start; the sandbox falls back to the
/// starter set from any working directory.
#[tokio::test]
async fn no_rules_no_start() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let env = [
        ("TOLLGATE_UPSTREAM_URL", "http://127.0.0.1:9".to_owned()),
        ("TOLLGATE_AUDIT_URL", db.clone()),
    ];
    let (status, log) = serve_exits(dir.path(), &[], &env).await;
    assert!(!status.success());
    let expected = dir.path().join("policies");
    assert!(
        log.contains(&expected.display().to_string()) && log.contains("does not exist"),
        "{log}"
    );
    std::fs::create_dir(&expected).expect("mkdir");
    let (status, log) = serve_exits(dir.path(), &[], &env).await;
    assert!(!status.success());
    assert!(
        log.contains("holds no rule") && log.contains("policy.allow_empty"),
        "{log}"
    );
    // The explicit opt-out starts.
    let mut allow = env.to_vec();
    allow.push(("TOLLGATE_POLICY_ALLOW_EMPTY", "true".into()));
    let served = Served::start(dir.path(), &[], &allow).await;
    crate::harness::terminate(served.child).await;

    // The sandbox, from a directory without policies/.
    let elsewhere = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", elsewhere.path().join("a.db").display());
    let served = Served::start(
        elsewhere.path(),
        &["--sandbox"],
        &[("TOLLGATE_AUDIT_URL", db)],
    )
    .await;
    assert!(
        served.log().contains("built-in starter set"),
        "{}",
        served.log()
    );
    let a = Harness::client_send(
        &served.addr,
        Method::PATCH,
        &path(CON_SAML),
        r#"{"organization_access_level":"full"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["rules"][0]["id"], "no-full-access");
    crate::harness::terminate(served.child).await;
}

/// A SQLite store serves one gateway: the second is refused, saying why.
#[tokio::test]
async fn a_second_serve_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let env = [("TOLLGATE_AUDIT_URL", db)];
    let first = Served::start(dir.path(), &["--sandbox"], &env).await;
    let (status, log) = serve_exits(dir.path(), &["--sandbox"], &env).await;
    assert!(!status.success());
    assert!(
        log.contains("in use by another tollgate serve") && log.contains("Postgres"),
        "{log}"
    );
    crate::harness::terminate(first.child).await;
}

#[tokio::test]
async fn a_busy_association_is_a_503_with_retry_after_recorded_as_unavailable() {
    let h = Harness::with_rule("[upstream]\ntimeout = \"1s\"\n", RULES).await;
    // A stalling tenant: the first change times out after 1 s and keeps the
    // association another second (its change may still land); the second
    // gives up waiting after one deadline.
    h.tenant.set_stall(Duration::from_millis(1500));
    let h = Arc::new(h);
    let p = path(CON_SAML);
    let first = {
        let h = h.clone();
        let p = p.clone();
        tokio::spawn(async move { h.patch_at(&p, r#"{"show_as_button":false}"#).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = h.patch_at(&p, r#"{"show_as_button":true}"#).await;
    let first = first.await.expect("join");
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    assert_eq!(second.error_code(), "tollgate_context_unavailable");
    assert!(
        second.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("in progress")
    );
    assert_eq!(
        second.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    h.audit.flush().await;
    let evs = query::show(&h.store, &second.audit_id())
        .await
        .expect("show");
    assert_eq!(evs[0]["event"]["decision"], "unavailable");
}

/// The tenant's answer must stay readable for the post-check: the client's
/// `Accept-Encoding` is not passed on.
#[tokio::test]
async fn the_answer_to_a_governed_change_is_asked_for_unencoded() {
    let h = Harness::start().await;
    let a = h
        .send_with(
            Method::PATCH,
            &path(CON_SAML),
            &[
                ("authorization", crate::harness::TOKEN),
                ("content-type", "application/json"),
                ("accept-encoding", "gzip, deflate, br"),
            ],
            br#"{"show_as_button":false}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let patch = h
        .received()
        .into_iter()
        .find(|r| r.method == Method::PATCH)
        .expect("forwarded");
    assert_eq!(patch.headers["accept-encoding"], "identity");
    let (_, outcome) = recorded(&h, &a.audit_id()).await;
    assert_eq!(outcome["post_check"], "passed");
}

/// A change that timed out may still land at the tenant: the next change to
/// the association waits until it could have, then reads `before`.
#[tokio::test]
async fn a_change_that_lands_after_its_timeout_is_judged_against() {
    // The tenant applies the first change 3 s after it arrives; tollgate
    // gives up at 2 s and keeps the association locked 2 s more.
    let h = Harness::with_rule("[upstream]\ntimeout = \"2s\"\n", RULES).await;
    lenient_tenant(&h.tenant);
    h.tenant.set_stall(Duration::from_millis(3000));
    let h = Arc::new(h);
    let p = path(CON_DATABASE);
    let first = h.patch_at(&p, r#"{"is_signup_enabled":true}"#).await;
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    // After the timeout, before the change lands: the second waits for the
    // lock (about 1.5 s of its 2 s), then reads `before` as landed. The
    // order comes from the first's answer, not from the machine's speed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = h
        .patch_at(&p, r#"{"assign_membership_on_login":false}"#)
        .await;
    assert_eq!(
        second.status,
        StatusCode::FORBIDDEN,
        "judged after the first change landed: {}",
        String::from_utf8_lossy(&second.body)
    );
    assert_allowed_state(&h.tenant, "after");
}

/// However a request names an association — its ids in any case, the
/// organization by name — it ends up under the same lock.
#[tokio::test]
async fn every_spelling_of_an_association_takes_one_lock() {
    use tollgate::policy::input::{Connection, Org};
    let org = |id: &str, name: &str| Org {
        id: Some(id.into()),
        name: Some(name.into()),
    };
    let input = |org: Org| tollgate::policy::ChangeInput {
        operation: tollgate::route::Operation::OrganizationConnectionUpdate,
        pointer: String::new(),
        org,
        connection: Connection::new(Some("CON_DATABASE".into()), None, None),
        body: json!({}),
        before: Value::Null,
        after: Value::Null,
        fetched: Default::default(),
    };
    let mut keys = Vec::new();
    for named in ["acme", "org_acme", "ORG_ACME"] {
        let method = Method::PATCH;
        let target = format!("/api/v2/organizations/{named}/connections/CON_DATABASE");
        let Ok(tollgate::route::Route::Governed(route)) =
            tollgate::route::classify(&method, &target, None)
        else {
            panic!("governed");
        };
        let body = serde_json::from_str(r#"{"show_as_button":true}"#).expect("json");
        let validated =
            tollgate::schema::validate(&route, Some(body), Default::default()).expect("valid");
        let locked = tollgate::context::pairs(&validated);
        // What the tenant resolves the organization to.
        let resolved = input(org("org_acme", "acme"));
        let extra = tollgate::context::resolved_pairs(&[resolved], &locked);
        let mut all: Vec<_> = locked.into_iter().chain(extra).collect();
        all.sort();
        keys.push(all);
    }
    let by_id = vec![("org_acme".to_owned(), "con_database".to_owned())];
    assert_eq!(keys[1], by_id);
    assert_eq!(keys[2], by_id);
    assert!(
        keys[0].contains(&by_id[0]),
        "by name, locked under the id too: {:?}",
        keys[0]
    );
}

/// An association the tenant answers in an unexpected shape fails closed.
#[tokio::test]
async fn an_odd_association_from_the_tenant_fails_closed() {
    #[derive(Clone)]
    struct Odd(Sandbox);
    impl tollgate::server::Handler for Odd {
        async fn handle(
            &self,
            req: http::Request<hyper::body::Incoming>,
        ) -> http::Response<tollgate::BoxBody> {
            if req.method() == Method::GET
                && req.uri().path().contains("/connections/")
                && req.uri().path().starts_with("/api/v2/organizations/")
            {
                return http::Response::new(tollgate::full(bytes::Bytes::from_static(
                    br#"{"connection_id":"con_database","is_signup_enabled":"yes"}"#,
                )));
            }
            self.0.handle(req).await
        }
    }
    let tenant = Sandbox::new();
    let addr = crate::harness::serve_on_port_0(Odd(tenant.clone())).await;
    let h = Harness::setup()
        .rule(RULES)
        .tenant_at(addr, tenant)
        .start()
        .await;
    let a = h
        .patch_at(
            &path(CON_DATABASE),
            r#"{"assign_membership_on_login":false}"#,
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(h.forwarded(Method::PATCH), 0, "nothing forwarded");
}

/// Two `tollgate serve` processes on one Postgres, in front of one tenant,
/// racing on one association: the advisory lock keeps them apart.
#[tokio::test]
async fn two_serve_processes_on_one_postgres_never_add_up() {
    let (tenant, addr) = start_sandbox().await;
    lenient_tenant(&tenant);
    let dir = tempfile::tempdir().expect("dir");
    let store = crate::harness::fresh_store_url(Backend::Postgres, dir.path()).await;
    std::fs::write(dir.path().join("r.toml"), RULES).expect("rules");
    let env = [
        ("TOLLGATE_UPSTREAM_URL", format!("http://{addr}")),
        ("TOLLGATE_AUDIT_URL", store),
        ("TOLLGATE_POLICY_DIR", dir.path().display().to_string()),
    ];
    let a = Served::start(dir.path(), &[], &env).await;
    let b = Served::start(dir.path(), &[], &env).await;
    let p = path(CON_DATABASE);
    for i in 0..50 {
        tenant.set_association(ORG_ACME, CON_DATABASE, start_state());
        let barrier = Barrier::new(2);
        let (x, y) = tokio::join!(
            async {
                barrier.wait().await;
                Harness::client_send(&a.addr, Method::PATCH, &p, r#"{"is_signup_enabled":true}"#)
                    .await
            },
            async {
                barrier.wait().await;
                Harness::client_send(
                    &b.addr,
                    Method::PATCH,
                    &p,
                    r#"{"assign_membership_on_login":false}"#,
                )
                .await
            },
        );
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::FORBIDDEN], "#{i}");
        assert_allowed_state(&tenant, &format!("#{i}"));
    }
    crate::harness::terminate(a.child).await;
    crate::harness::terminate(b.child).await;
}
