//! The change judged is the change that lands, under what production does
//! to a gateway: a database that ends the lock's session, renames between
//! the judgement and the forward, a tenant that does more than asked, an
//! outside writer, and callers flooding an association with bad tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Barrier, Notify};
use tollgate::BoxBody;
use tollgate::audit::query;
use tollgate::sandbox::Sandbox;
use tollgate::sandbox::seed::*;
use tollgate::server::{self, Handler};

use crate::harness::{Answer, Backend, Harness, TOKEN, start_sandbox};

/// Signup needs membership; signup members get no access level.
const RULES: &str = r#"
[[rule]]
id = "signup-needs-membership"
deny = 'after.is_signup_enabled == true && after.assign_membership_on_login != true'
message = "signup needs membership"

[[rule]]
id = "no-full-access"
deny = 'after.organization_access_level == "full"'
message = "no full access"
"#;

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Membership on: signup alone is allowed from here.
fn with_membership() -> Map<String, Value> {
    let mut m = tollgate::sandbox::association_defaults();
    m.insert("assign_membership_on_login".into(), json!(true));
    m
}

fn db_path(org: &str) -> String {
    format!("/api/v2/organizations/{org}/connections/{CON_DATABASE}")
}

/// The decision and outcome events' data of an exchange.
async fn recorded(h: &Harness, id: &str) -> (Value, Value) {
    h.audit.flush().await;
    let evs = query::show(&h.store, id).await.expect("show");
    let of = |kind: &str| {
        evs.iter()
            .find(|e| e["event"]["kind"] == kind)
            .map(|e| e["event"].clone())
            .unwrap_or(Value::Null)
    };
    (of("decision"), of("outcome"))
}

/// A tenant that, unlike Auth0, takes an organization's *name* in a path
/// (resolved when the request arrives) and renames organizations: the
/// tenant the rename attack needs.
#[derive(Clone)]
struct NamesInPaths {
    sandbox: Sandbox,
    names: Arc<Mutex<HashMap<String, String>>>,
    resolved: Arc<Notify>,
}

impl NamesInPaths {
    fn new(sandbox: Sandbox) -> NamesInPaths {
        let names = [("acme", ORG_ACME), ("globex", ORG_GLOBEX)]
            .map(|(n, id)| (n.to_owned(), id.to_owned()));
        NamesInPaths {
            sandbox,
            names: Arc::new(Mutex::new(HashMap::from(names))),
            resolved: Arc::new(Notify::new()),
        }
    }

    fn id_of(&self, name: &str) -> Option<String> {
        self.names.lock().expect("names").get(name).cloned()
    }

    fn name_of(&self, id: &str) -> Option<String> {
        let names = self.names.lock().expect("names");
        names.iter().find(|(_, i)| *i == id).map(|(n, _)| n.clone())
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<BoxBody> {
    let mut r = Response::new(tollgate::full(bytes::Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

impl Handler for NamesInPaths {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.split('/').collect();
        match (req.method().clone(), segs.as_slice()) {
            (Method::GET, ["", "api", "v2", "organizations", "name", name]) => {
                let found = self.id_of(name);
                self.resolved.notify_waiters();
                return match found {
                    Some(id) => json_response(StatusCode::OK, &json!({"id": id, "name": name})),
                    None => json_response(StatusCode::NOT_FOUND, &json!({"statusCode": 404})),
                };
            }
            (Method::GET, ["", "api", "v2", "organizations", id]) if id.starts_with("org_") => {
                let name = self.name_of(id);
                return json_response(StatusCode::OK, &json!({"id": id, "name": name}));
            }
            (Method::PATCH, ["", "api", "v2", "organizations", id]) => {
                use http_body_util::BodyExt;
                let id = (*id).to_owned();
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let name = v["name"].as_str().unwrap_or_default().to_owned();
                let mut names = self.names.lock().expect("names");
                names.retain(|_, i| *i != id);
                names.insert(name.clone(), id.clone());
                return json_response(StatusCode::OK, &json!({"id": id, "name": name}));
            }
            _ => {}
        }
        // A name where an id goes: the organization that has it now.
        let (mut parts, body) = req.into_parts();
        if let ["", "api", "v2", "organizations", org, rest @ ..] = segs.as_slice()
            && !rest.is_empty()
            && let Some(id) = self.id_of(org)
        {
            let target = format!("/api/v2/organizations/{id}/{}", rest.join("/"));
            parts.uri = target.parse().expect("uri");
        }
        self.sandbox.handle(Request::from_parts(parts, body)).await
    }
}

/// A change addressed by an organization's name is locked, judged,
/// forwarded and recorded under the id it resolved to: two renames between
/// the judgement and the forward cannot move it to another organization.
#[tokio::test]
async fn a_rename_cannot_redirect_a_change_judged_by_name() {
    let sandbox = Sandbox::new();
    sandbox.set_lenient(true);
    sandbox.set_association(ORG_ACME, CON_DATABASE, with_membership());
    // globex: signup there would break signup-needs-membership.
    sandbox.set_association(
        ORG_GLOBEX,
        CON_DATABASE,
        tollgate::sandbox::association_defaults(),
    );
    let tenant = NamesInPaths::new(sandbox.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(tenant.clone()),
        64,
        std::future::pending(),
    ));
    let h = Harness::setup()
        .rule(RULES)
        .tenant_at(addr, sandbox.clone())
        .start()
        .await;
    // Reads are slow: `before` is read well after the name was resolved.
    sandbox.set_latencies(Duration::from_millis(300), Duration::from_millis(1));
    let resolved = tenant.resolved.notified();
    let by_name = db_path("acme");
    let change = h.patch_at(&by_name, r#"{"is_signup_enabled":true}"#);
    let renames = async {
        resolved.await;
        // Through tollgate: ungoverned writes, forwarded.
        for (id, name) in [(ORG_ACME, "acme-old"), (ORG_GLOBEX, "acme")] {
            let a = h
                .send(
                    Method::PATCH,
                    &format!("/api/v2/organizations/{id}"),
                    Some(&json!({"name": name}).to_string()),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK);
        }
    };
    let (answer, ()) = tokio::join!(change, renames);
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        tenant.id_of("acme").as_deref(),
        Some(ORG_GLOBEX),
        "the renames happened"
    );
    // It landed where it was judged, and nowhere else.
    let acme = sandbox.association(ORG_ACME, CON_DATABASE).expect("acme");
    assert_eq!(acme["is_signup_enabled"], true);
    let globex = sandbox
        .association(ORG_GLOBEX, CON_DATABASE)
        .expect("globex");
    assert_eq!(globex["is_signup_enabled"], false, "globex untouched");
    let patched: Vec<String> = sandbox
        .received()
        .into_iter()
        .filter(|r| r.method == Method::PATCH && r.target.contains("/connections/"))
        .map(|r| r.target)
        .collect();
    assert_eq!(patched, vec![db_path(ORG_ACME)], "forwarded by id");
    let (decision, outcome) = recorded(&h, &answer.audit_id()).await;
    assert_eq!(decision["org_id"], ORG_ACME);
    assert_eq!(decision["data"]["path"], db_path(ORG_ACME));
    assert_eq!(outcome["data"]["status"], 200);
}

/// A gateway on a fresh Postgres store whose sessions are named `tag`.
async fn tagged(tag: &str) -> Harness {
    let dir = tempfile::tempdir().expect("dir");
    let store = crate::harness::fresh_store_url(Backend::Postgres, dir.path()).await;
    Harness::setup()
        .store_url(&format!("{store}&application_name={tag}"))
        .rule(RULES)
        .start()
        .await
}

/// The lock sessions of the gateway tagged `tag`, seen from another
/// connection.
async fn lock_sessions(admin: &sqlx::PgPool, tag: &str) -> Vec<(i32, String)> {
    sqlx::query_as::<_, (i32, String)>(
        "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(format!("{tag}/tollgate-lock"))
    .fetch_all(admin)
    .await
    .expect("pg_stat_activity")
}

/// Waits until a lock session sits in its transaction (a change holds the
/// lock), and ends it as a failover or `pg_terminate_backend` would.
async fn terminate_the_held_lock(admin: &sqlx::PgPool, tag: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held: Vec<i32> = lock_sessions(admin, tag)
            .await
            .into_iter()
            .filter(|(_, state)| state == "idle in transaction")
            .map(|(pid, _)| pid)
            .collect();
        if !held.is_empty() {
            for pid in held {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(admin)
                    .await
                    .expect("terminate");
            }
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no lock was held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn admin_pool() -> sqlx::PgPool {
    sqlx::PgPool::connect(&crate::harness::postgres_base_url())
        .await
        .expect("postgres")
}

/// A lock whose session the database ended while the context was read is
/// not proof of anything: nothing is forwarded, 503, `unavailable`.
#[tokio::test]
async fn a_lock_session_terminated_before_the_forward_forwards_nothing() {
    let h = tagged("before-forward").await;
    h.tenant.set_lenient(true);
    h.tenant
        .set_association(ORG_ACME, CON_DATABASE, with_membership());
    // `before` takes a while to read: the lock is held meanwhile.
    h.tenant
        .set_latencies(Duration::from_millis(500), Duration::from_millis(1));
    let admin = admin_pool().await;
    let p = db_path(ORG_ACME);
    let (answer, ()) = tokio::join!(
        h.patch_at(&p, r#"{"is_signup_enabled":true}"#),
        terminate_the_held_lock(&admin, "before-forward"),
    );
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.error_code(), "tollgate_context_unavailable");
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(h.forwarded(Method::PATCH), 0, "nothing forwarded");
    let (decision, outcome) = recorded(&h, &answer.audit_id()).await;
    assert_eq!(decision["decision"], "unavailable");
    assert!(outcome.is_null());
    // The pool recovers: the next change goes through.
    h.tenant
        .set_latencies(Duration::from_millis(1), Duration::from_millis(1));
    let next = h
        .patch_at(&db_path(ORG_ACME), r#"{"is_signup_enabled":true}"#)
        .await;
    assert_eq!(
        next.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&next.body)
    );
}

/// A lock lost while the tenant applies the change: the change may have
/// landed unserialised, and the outcome says so.
#[tokio::test]
async fn a_lock_lost_while_the_tenant_answers_is_on_the_outcome() {
    let h = tagged("after-forward").await;
    h.tenant.set_lenient(true);
    h.tenant
        .set_association(ORG_ACME, CON_DATABASE, with_membership());
    h.tenant
        .set_latencies(Duration::from_millis(1), Duration::from_millis(800));
    let admin = admin_pool().await;
    let kill_after_forward = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while h.forwarded(Method::PATCH) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never forwarded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        terminate_the_held_lock(&admin, "after-forward").await;
    };
    let p = db_path(ORG_ACME);
    let (answer, ()) = tokio::join!(
        h.patch_at(&p, r#"{"is_signup_enabled":true}"#),
        kill_after_forward,
    );
    assert_eq!(answer.status, StatusCode::OK, "the tenant's answer");
    let (decision, outcome) = recorded(&h, &answer.audit_id()).await;
    assert_eq!(decision["decision"], "allow");
    assert_eq!(outcome["data"]["lock_lost"], true, "{outcome}");
}

/// A database that ends idle transactions after 300 ms, a tenant answering
/// in 400 ms, two replicas given the two halves of a forbidden change,
/// released together: never the forbidden state.
#[tokio::test]
async fn an_idle_transaction_timeout_does_not_end_the_replicas_lock() {
    let (tenant, addr) = start_sandbox().await;
    tenant.set_lenient(true);
    let url = format!("http://{addr}");
    let dir = tempfile::tempdir().expect("dir");
    let store = crate::harness::fresh_store_url(Backend::Postgres, dir.path()).await;
    let strict = format!("{store}&options[idle_in_transaction_session_timeout]=300ms");
    let a = Harness::setup()
        .store_url(&strict)
        .rule(RULES)
        .upstream(&url, tenant.clone())
        .start()
        .await;
    let b = Harness::setup()
        .store_url(&strict)
        .rule(RULES)
        .upstream(&url, tenant.clone())
        .start()
        .await;
    tenant.set_latency(Duration::from_millis(400));
    for i in 0..4 {
        let mut start = with_membership();
        start.insert("assign_membership_on_login".into(), json!(true));
        tenant.set_association(ORG_ACME, CON_DATABASE, start);
        let barrier = Barrier::new(2);
        let p = db_path(ORG_ACME);
        let (x, y) = tokio::join!(
            async {
                barrier.wait().await;
                a.send(Method::PATCH, &p, Some(r#"{"is_signup_enabled":true}"#))
                    .await
            },
            async {
                barrier.wait().await;
                b.send(
                    Method::PATCH,
                    &p,
                    Some(r#"{"assign_membership_on_login":false}"#),
                )
                .await
            },
        );
        let state = tenant
            .association(ORG_ACME, CON_DATABASE)
            .expect("association");
        let forbidden =
            state["is_signup_enabled"] == true && state["assign_membership_on_login"] != true;
        assert!(
            !forbidden,
            "#{i}: forbidden state {state:?} ({} / {})",
            x.status, y.status
        );
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::FORBIDDEN], "#{i}");
    }
}

/// The legacy family's answers carry three fields: a tenant that sets
/// `organization_access_level` as a side effect is caught by reading the
/// association back, and the record holds what the tenant reported.
#[tokio::test]
async fn a_legacy_change_with_a_side_effect_is_caught_by_the_read_back() {
    let h = Harness::setup().rule(RULES).start().await;
    h.tenant.set_lenient(true);
    h.tenant
        .set_association(ORG_ACME, CON_DATABASE, with_membership());
    h.tenant
        .set_extra_change(Some(fields(json!({"organization_access_level": "full"}))));
    let legacy = format!("/api/v2/organizations/{ORG_ACME}/enabled_connections/{CON_DATABASE}");
    let a = h.patch_at(&legacy, r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    let (_, outcome) = recorded(&h, &a.audit_id()).await;
    let data = &outcome["data"];
    assert_eq!(data["post_check"], "violated", "{data}");
    assert_eq!(data["post_check_rules"][0]["id"], "no-full-access");
    assert_eq!(data["association"]["organization_access_level"], "full");
    assert_eq!(data["association"]["show_as_button"], false);
}

/// An outside writer between the read of `before` and the forward: the
/// legacy change's answer says nothing of the access level, the read-back
/// does.
#[tokio::test]
async fn an_outside_write_under_a_legacy_change_is_caught_by_the_read_back() {
    let h = Harness::setup().rule(RULES).start().await;
    h.tenant.set_lenient(true);
    h.tenant
        .set_association(ORG_ACME, CON_DATABASE, with_membership());
    h.tenant
        .set_latencies(Duration::from_millis(1), Duration::from_millis(300));
    let legacy = format!("/api/v2/organizations/{ORG_ACME}/enabled_connections/{CON_DATABASE}");
    let outside = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while h.forwarded(Method::PATCH) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never forwarded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The dashboard, another credential: not tollgate.
        let mut full = with_membership();
        full.insert("organization_access_level".into(), json!("full"));
        h.tenant.set_association(ORG_ACME, CON_DATABASE, full);
    };
    let (a, ()) = tokio::join!(h.patch_at(&legacy, r#"{"show_as_button":false}"#), outside);
    assert_eq!(a.status, StatusCode::OK);
    let (_, outcome) = recorded(&h, &a.audit_id()).await;
    assert_eq!(
        outcome["data"]["post_check"], "violated",
        "{}",
        outcome["data"]
    );
    assert_eq!(
        outcome["data"]["association"]["organization_access_level"],
        "full"
    );
}

/// With the association unreadable after the change, nothing is claimed:
/// `partial`, naming the fields left unverified, and none recorded as if
/// the tenant had reported it.
#[tokio::test]
async fn a_legacy_change_whose_read_back_fails_is_partial() {
    let sandbox = Sandbox::new();
    sandbox.set_lenient(true);
    sandbox.set_association(ORG_ACME, CON_DATABASE, with_membership());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(NoReadAfterWrite::new(sandbox.clone())),
        64,
        std::future::pending(),
    ));
    let h = Harness::setup()
        .rule(RULES)
        .tenant_at(addr, sandbox)
        .start()
        .await;
    let legacy = format!("/api/v2/organizations/{ORG_ACME}/enabled_connections/{CON_DATABASE}");
    let a = h.patch_at(&legacy, r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    let (_, outcome) = recorded(&h, &a.audit_id()).await;
    let data = &outcome["data"];
    assert_eq!(data["post_check"], "partial", "{data}");
    assert_eq!(
        data["post_check_unverified"],
        json!(["organization_access_level"])
    );
    assert!(
        data["association"]
            .get("organization_access_level")
            .is_none(),
        "{data}"
    );
    assert_eq!(data["association"]["show_as_button"], false);
}

/// A tenant whose reads fail once a write has been made.
struct NoReadAfterWrite {
    sandbox: Sandbox,
    written: std::sync::atomic::AtomicBool,
}

impl NoReadAfterWrite {
    fn new(sandbox: Sandbox) -> NoReadAfterWrite {
        NoReadAfterWrite {
            sandbox,
            written: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Handler for NoReadAfterWrite {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        use std::sync::atomic::Ordering;
        if req.method() == Method::GET && self.written.load(Ordering::SeqCst) {
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"statusCode": 500}),
            );
        }
        if req.method() == Method::PATCH {
            self.written.store(true, Ordering::SeqCst);
        }
        self.sandbox.handle(req).await
    }
}

/// 200 clients looping with a token the tenant refuses, all on one
/// association: none of them takes its lock, and a legitimate change goes
/// through in its usual time, every time.
#[tokio::test]
async fn invalid_tokens_cannot_hold_an_association() {
    let h = Arc::new(Harness::setup().rule(RULES).start().await);
    h.tenant.set_lenient(true);
    h.tenant
        .set_association(ORG_ACME, CON_DATABASE, with_membership());
    h.tenant.set_tokens(Some(vec!["test-token".into()]));
    h.tenant.set_latency(Duration::from_millis(20));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..200 {
        let (h, stop) = (h.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let token = format!("Bearer garbage-{i}");
            let mut refused = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a: Answer = h.patch_as(&token, br#"{"show_as_button":true}"#).await;
                assert_eq!(
                    a.status,
                    StatusCode::UNAUTHORIZED,
                    "{}",
                    String::from_utf8_lossy(&a.body)
                );
                refused += 1;
            }
            refused
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let started = std::time::Instant::now();
        let body = if i % 2 == 0 {
            r#"{"show_as_button":false}"#
        } else {
            r#"{"show_as_button":true}"#
        };
        let a = h.patch_as(TOKEN, body.as_bytes()).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "#{i}: {}",
            String::from_utf8_lossy(&a.body)
        );
        worst = worst.max(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for f in flood {
        refused += f.await.expect("join");
    }
    assert!(refused > 200, "the flood ran: {refused} refusals");
    assert!(
        worst < Duration::from_secs(1),
        "a legitimate change took {worst:?}"
    );
}

/// `organization.create` naming one connection twice (in any case) is
/// refused: each element would be judged alone, the outcome left to how the
/// tenant merges them.
#[tokio::test]
async fn an_organization_created_with_a_connection_twice_is_refused() {
    let h = Harness::setup().rule(RULES).start().await;
    let body = json!({"name": "initech", "enabled_connections": [
        {"connection_id": CON_DATABASE, "organization_access_level": "none"},
        {"connection_id": CON_DATABASE.to_uppercase(), "organization_access_level": "full"}]});
    let a = h
        .send(
            Method::POST,
            "/api/v2/organizations",
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error_code(), "invalid_body");
    assert_eq!(a.json()["field"], "/enabled_connections/1/connection_id");
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicate")
    );
    assert_eq!(h.forwarded(Method::POST), 0);
}

/// A path naming an organization the tenant knows neither by id nor by
/// name is the tenant's 404: never forwarded under a name some
/// organization may have by the time it lands.
#[tokio::test]
async fn a_path_organization_the_tenant_does_not_know_is_not_forwarded() {
    let h = Harness::setup().rule(RULES).start().await;
    for org in ["ghost", "ORG_ACME"] {
        let a = h
            .patch_at(&db_path(org), r#"{"is_signup_enabled":true}"#)
            .await;
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "{org}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.error_code(), "inexistent_organization");
    }
    assert_eq!(h.forwarded(Method::PATCH), 0);
}

/// A tenant whose legacy answers leave out the fields they document.
struct ThinLegacyAnswers(Sandbox);

impl Handler for ThinLegacyAnswers {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let thin =
            req.method() == Method::PATCH && req.uri().path().contains("/enabled_connections/");
        let resp = self.0.handle(req).await;
        if !thin || resp.status() != StatusCode::OK {
            return resp;
        }
        json_response(StatusCode::OK, &json!({"connection_id": CON_DATABASE}))
    }
}

/// What an answer leaves out is not vouched for: the read-back (the later
/// word) is judged, and it shows the forbidden state the tenant made.
#[tokio::test]
async fn a_thin_answer_does_not_hide_what_the_read_back_shows() {
    let sandbox = Sandbox::new();
    sandbox.set_lenient(true);
    sandbox.set_association(ORG_ACME, CON_DATABASE, with_membership());
    sandbox.set_extra_change(Some(fields(json!({"is_signup_enabled": true}))));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(ThinLegacyAnswers(sandbox.clone())),
        64,
        std::future::pending(),
    ));
    let h = Harness::setup()
        .rule(RULES)
        .tenant_at(addr, sandbox)
        .start()
        .await;
    let legacy = format!("/api/v2/organizations/{ORG_ACME}/enabled_connections/{CON_DATABASE}");
    let a = h
        .patch_at(&legacy, r#"{"assign_membership_on_login":false}"#)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let (_, outcome) = recorded(&h, &a.audit_id()).await;
    let data = &outcome["data"];
    assert_eq!(data["post_check"], "violated", "{data}");
    assert_eq!(data["association"]["is_signup_enabled"], true);
    assert_eq!(data["association"]["assign_membership_on_login"], false);
}

/// The lock's session ended while the decision was being written (a store
/// slow to commit, as in a failover): checked again after the record, so
/// nothing is forwarded, and the outcome says why.
#[tokio::test]
async fn a_lock_lost_while_the_decision_is_written_forwards_nothing() {
    let h = tagged("slow-store").await;
    h.tenant.set_lenient(true);
    h.tenant
        .set_association(ORG_ACME, CON_DATABASE, with_membership());
    let schema = h
        .store_url
        .split("options[search_path]=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("schema")
        .to_owned();
    let admin = admin_pool().await;
    // Hold the audit table: the decision's commit waits.
    let mut blocker = admin.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {schema}.audit_events IN SHARE MODE"
    )))
    .execute(&mut *blocker)
    .await
    .expect("lock table");
    let p = db_path(ORG_ACME);
    let release = async {
        // The audit writer waits on the table; the change holds its lock.
        crate::harness::until_a_commit_waits(&admin, "slow-store").await;
        terminate_the_held_lock(&admin, "slow-store").await;
        blocker.rollback().await.expect("release");
    };
    let (answer, ()) = tokio::join!(h.patch_at(&p, r#"{"is_signup_enabled":true}"#), release);
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.error_code(), "tollgate_context_unavailable");
    assert_eq!(h.forwarded(Method::PATCH), 0, "nothing forwarded");
    let (decision, outcome) = recorded(&h, &answer.audit_id()).await;
    assert_eq!(
        decision["decision"], "allow",
        "decided before the lock was lost"
    );
    assert_eq!(outcome["data"]["error"]["kind"], "lock_lost", "{outcome}");
}
