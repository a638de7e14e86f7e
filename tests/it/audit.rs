//! The audit log through the gateway, on SQLite and Postgres both.

use std::str::FromStr;

use http::{Method, StatusCode};

use serde_json::{Value, json};
use tollgate::audit::{Store, query, verify};
use tollgate::sandbox::seed::*;

use crate::harness::{Backend, Harness, item};

/// A bearer JWT whose claims name a CI client.
/// The last ten exchanges, newest first.
async fn latest(h: &Harness) -> Vec<query::Exchange> {
    let filter = query::Filter {
        limit: 10,
        ..Default::default()
    };
    query::exchanges(&h.store, &filter).await.expect("query")
}

/// A gateway denying `full` access, recording in `backend`.
async fn judging_no_full(backend: Backend) -> Harness {
    Harness::setup()
        .backend(backend)
        .rule(NO_FULL)
        .start()
        .await
}

fn jwt() -> String {
    use base64::Engine;
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let claims = json!({"azp": "ci-bot", "sub": "ci-bot@clients", "gty": "client-credentials",
                        "scope": "update:organization_connections"});
    format!(
        "{}.{}.c2lnbmF0dXJl",
        enc(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc(claims.to_string().as_bytes())
    )
}

const NO_FULL: &str = "[[rule]]\nid = \"no-full-access\"\ndeny = 'after.organization_access_level == \"full\"'\nmessage = \"no full access\"\n";

pub(crate) async fn exec(store: &Store, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        Store::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        Store::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Every text the store holds, for searching raw rows.
async fn dump(store: &Store) -> String {
    let sql = "SELECT chain_id || exchange_id || event_id || kind || COALESCE(operation,'') || COALESCE(org_id,'') \
               || COALESCE(connection_id,'') || COALESCE(caller,'') || COALESCE(decision,'') || COALESCE(rules,'') \
               || prev_hash || hash || body FROM audit_events";
    let rows: Vec<String> = match store {
        Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
    }
    .expect("dump");
    rows.join("\n")
}

async fn events(h: &Harness, id: &str) -> Vec<Value> {
    h.audit.flush().await;
    query::show(&h.store, id).await.expect("show")
}

/// SQL that drops the append-only triggers, as someone with write access
/// to the store could.
pub(crate) fn drop_triggers(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete; \
             DROP TRIGGER audit_events_no_replace; \
             DROP TRIGGER audit_chains_no_update; DROP TRIGGER audit_chains_no_delete; \
             DROP TRIGGER audit_chains_no_replace; \
             DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete; \
             DROP TRIGGER audit_checkpoints_no_replace;"
        }
        Backend::Postgres => {
            "DROP TRIGGER audit_events_no_change ON audit_events; \
             DROP TRIGGER audit_chains_no_change ON audit_chains; \
             DROP TRIGGER audit_checkpoints_no_change ON audit_checkpoints;"
        }
    }
}

on_both_backends! {
    async fn a_forwarded_exchange_has_both_events_and_a_denied_one_its_decision(backend: Backend) {
        let h = judging_no_full(backend).await;
        let auth = format!("Bearer {}", jwt());
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("user-agent", "terraform/1.9"),
        ];
        let ok = h
            .send_with(Method::PATCH, &item(), &headers, br#"{"organization_access_level":"limited"}"#)
            .await;
        assert_eq!(ok.status, StatusCode::OK);
        let evs = events(&h, &ok.audit_id()).await;
        assert_eq!(evs.len(), 2, "{backend:?}: {evs:?}");
        let (d, o) = (&evs[0]["event"], &evs[1]["event"]);
        assert_eq!(d["kind"], "decision");
        assert_eq!(o["kind"], "outcome");
        assert_eq!(d["exchange_id"], o["exchange_id"]);
        assert_eq!(d["decision"], "allow");
        assert_eq!(d["operation"], "organization_connection.update");
        assert_eq!(d["org_id"], ORG_ACME);
        assert_eq!(d["connection_id"], CON_SAML);
        assert_eq!(d["caller"], "ci-bot");
        assert_eq!(d["data"]["caller"]["grant_type"], "client-credentials");
        assert_eq!(
            d["data"]["caller"]["token_fingerprint"]
                .as_str()
                .map(str::len),
            Some(64)
        );
        assert_eq!(
            d["data"]["request_body"],
            json!({"organization_access_level": "limited"})
        );
        assert_eq!(d["data"]["path"], item());
        assert_eq!(d["data"]["user_agent"], "terraform/1.9");
        assert_eq!(
            d["data"]["changes"][0]["before"]["organization_access_level"],
            "readonly"
        );
        assert_eq!(
            d["data"]["policy_version"],
            h.policies.current().version.as_str()
        );
        assert_eq!(o["data"]["status"], 200);
        assert_eq!(o["data"]["body"]["organization_access_level"], "limited");
        assert!(o["data"]["headers"]["x-ratelimit-remaining"].is_string());

        let denied = h
            .send_with(
                Method::PATCH,
                &item(),
                &headers,
                br#"{"organization_access_level":"full"}"#,
            )
            .await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        let evs = events(&h, &denied.audit_id()).await;
        assert_eq!(evs.len(), 1, "a denial has its decision alone");
        assert_eq!(evs[0]["event"]["decision"], "deny");
        assert_eq!(evs[0]["event"]["rules"], json!(["no-full-access"]));
        assert_eq!(evs[0]["event"]["data"]["error"]["status"], 403);

        let invalid = h
            .send_with(Method::PATCH, &item(), &headers, br#"{"a":1,"a":2}"#)
            .await;
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
        let evs = events(&h, &invalid.audit_id()).await;
        assert_eq!(evs[0]["event"]["decision"], "invalid");
        assert_eq!(evs[0]["event"]["data"]["request_body"], r#"{"a":1,"a":2}"#);
        assert_eq!(
            evs[0]["event"]["data"]["error"]["errorCode"],
            "invalid_body"
        );

        // The token is nowhere in the store; only its fingerprint.
        let raw = dump(&h.store).await;
        let token = jwt();
        for part in token.split('.') {
            assert!(!raw.contains(part), "{backend:?}: a token part is stored");
        }
        assert!(!raw.to_ascii_lowercase().contains("authorization"));
    }
}

on_both_backends! {
    async fn a_store_that_cannot_record_refuses_and_forwards_nothing(backend: Backend) {
        let h = Harness::setup().backend(backend).start().await;
        exec(
            &h.store,
            "ALTER TABLE audit_events RENAME TO audit_events_away",
        )
        .await;
        let a = h.patch(r#"{"show_as_button":false}"#).await;
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{backend:?}: {a:?}"
        );
        assert_eq!(a.error_code(), "tollgate_audit_unavailable");
        assert!(!a.audit_id().is_empty());
        assert!(
            h.received().is_empty(),
            "{backend:?}: the tenant received nothing"
        );
        // Ungoverned writes are audited by default: refused too.
        let a = h.send(Method::POST, "/api/v2/clients", Some("{}")).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(h.received().is_empty());

        // The store comes back: service resumes by itself, the chain intact.
        exec(
            &h.store,
            "ALTER TABLE audit_events_away RENAME TO audit_events",
        )
        .await;
        let a = h.patch(r#"{"show_as_button":false}"#).await;
        assert_eq!(a.status, StatusCode::OK, "{backend:?}");
        h.audit.flush().await;
        let report = verify::verify(&h.store).await.expect("verify");
        assert!(report.ok(), "{backend:?}: {report:?}");
    }
}

on_both_backends! {
async fn on_failure_forward_forwards_without_a_record(backend: Backend) {
    let h = Harness::setup()
        .backend(backend)
        .config("[audit]\non_failure = \"forward\"\n")
        .start()
        .await;
    exec(
        &h.store,
        "ALTER TABLE audit_events RENAME TO audit_events_away",
    )
    .await;
    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    let got = h.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, Method::PATCH);
    // Its outcome, queued, meets the same store (not the one back below).
    h.audit.flush().await;
    // With the table back, the log holds nothing of that exchange.
    exec(
        &h.store,
        "ALTER TABLE audit_events_away RENAME TO audit_events",
    )
    .await;
    h.audit.flush().await;
    assert!(
        events(&h, &a.audit_id()).await.is_empty(),
        "forwarded without a record"
    );
}
}

on_both_backends! {
    async fn concurrent_exchanges_are_all_recorded_in_one_valid_chain(backend: Backend) {
        let h = std::sync::Arc::new(Harness::setup().backend(backend).start().await);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!(r#"{{"show_as_button":{}}}"#, i % 2 == 0);
                h.patch(&body).await
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            let a = t.await.expect("join");
            assert_eq!(a.status, StatusCode::OK);
            ids.push(a.audit_id());
        }
        h.audit.flush().await;
        let filter = query::Filter {
            limit: 1000,
            ..Default::default()
        };
        let rows = query::exchanges(&h.store, &filter).await.expect("query");
        assert_eq!(rows.len(), 200, "{backend:?}");
        assert!(
            rows.iter()
                .all(|r| r.outcome == "completed" && r.status == Some(200))
        );
        for id in &ids {
            assert!(rows.iter().any(|r| &r.exchange_id == id));
        }
        let report = verify::verify(&h.store).await.expect("verify");
        assert_eq!(
            (report.chains, report.events, report.valid_events),
            (1, 400, 400),
            "{backend:?}"
        );
        assert!(report.ok());
    }
}

#[tokio::test]
async fn two_gateways_on_one_postgres_write_two_valid_chains() {
    let a = Harness::setup().backend(Backend::Postgres).start().await;
    let b = Harness::setup().store_url(&a.store_url).start().await;
    for _ in 0..10 {
        let (x, y) = tokio::join!(
            a.patch(r#"{"show_as_button":true}"#),
            b.patch(r#"{"show_as_button":false}"#),
        );
        assert_eq!((x.status, y.status), (StatusCode::OK, StatusCode::OK));
    }
    a.audit.flush().await;
    b.audit.flush().await;
    assert_ne!(a.audit.chain_id(), b.audit.chain_id());
    let report = verify::verify(&a.store).await.expect("verify");
    assert_eq!(
        (report.chains, report.valid_chains, report.events),
        (2, 2, 40),
        "{report:?}"
    );
}

on_both_backends! {
    /// An instance that recorded nothing leaves no chain behind: nothing
    /// for `audit verify` to mistake for a chain whose events were deleted.
    async fn a_writer_that_records_nothing_leaves_no_chain(backend: Backend) {
        let mut h = Harness::setup().backend(backend).start().await;
        h.shutdown();
        h.stopped().await;
        let r = verify::verify(&h.store).await.expect("verify");
        assert!(r.ok(), "{backend:?}: {r:?}");
        assert_eq!(r.chains, 0, "{r:?}");
    }
}

on_both_backends! {
    /// A store the previous release wrote (chains registered at their
    /// writer's start): after the upgrade, a chain that held events is
    /// marked, so deleting them all is reported, while a chain that never
    /// held any is not; and chains and checkpoints are append-only too.
    async fn an_upgraded_store_knows_which_chains_held_events(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let url = crate::harness::fresh_store_url(backend, dir.path()).await;
        let legacy = "INSERT INTO audit_chains (chain_id, started_us, host) VALUES ('legacy', 0, 'x'), ('idle', 0, 'x'); \
                      INSERT INTO audit_events (chain_id, seq, event_id, exchange_id, kind, time_us, prev_hash, hash, body) \
                      VALUES ('legacy', 1, 'e1', 'x1', 'decision', 0, 'p', 'h', '{}')";
        match backend {
            Backend::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url).expect("url").create_if_missing(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.expect("open");
                sqlx::migrate!("migrations/sqlite").run_to(7, &pool).await.expect("migrate to 7");
                sqlx::raw_sql(legacy).execute(&pool).await.expect("legacy rows");
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&url).await.expect("open");
                sqlx::migrate!("migrations/postgres").run_to(7, &pool).await.expect("migrate to 7");
                sqlx::raw_sql(legacy).execute(&pool).await.expect("legacy rows");
                pool.close().await;
            }
        }
        let store = Store::open(&url).await.expect("upgraded");
        let unmark = sqlx::AssertSqlSafe("UPDATE audit_chains SET with_events = false".to_owned());
        let refused = match &store {
            Store::Sqlite(p) => sqlx::raw_sql(unmark).execute(p).await.is_err(),
            Store::Postgres(p) => sqlx::raw_sql(unmark).execute(p).await.is_err(),
        };
        assert!(refused, "{backend:?}: chains are append-only");
        exec(&store, drop_triggers(backend)).await;
        exec(&store, "DELETE FROM audit_events").await;
        let r = verify::verify(&store).await.expect("verify");
        assert_eq!(r.breaks.len(), 1, "{backend:?}: {r:?}");
        assert_eq!(r.breaks[0].chain_id, "legacy");
        assert!(r.breaks[0].reason.contains("holds no events"), "{r:?}");
    }
}

/// Runs `tamper` on a store holding 3 exchanges (6 events) and returns the
/// verification report.
async fn tampered(backend: Backend, tamper: &str) -> verify::Report {
    let h = Harness::setup().backend(backend).start().await;
    for _ in 0..3 {
        let a = h.patch(r#"{"show_as_button":false}"#).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    h.audit.flush().await;
    assert!(verify::verify(&h.store).await.expect("verify").ok());
    exec(&h.store, drop_triggers(backend)).await;
    exec(&h.store, tamper).await;
    verify::verify(&h.store).await.expect("verify")
}

on_both_backends! {
    async fn verify_detects_every_kind_of_tampering(backend: Backend) {
        let edit = "UPDATE audit_events SET body = REPLACE(body, '\"show_as_button\":false', '\"show_as_button\":true') WHERE seq = 3";
        let r = tampered(backend, edit).await;
        assert_eq!(r.breaks.len(), 1, "{backend:?} edit: {r:?}");
        assert_eq!(r.breaks[0].seq, 3);
        assert!(r.breaks[0].reason.contains("edited"), "{r:?}");

        let r = tampered(
            backend,
            "UPDATE audit_events SET decision = 'deny' WHERE seq = 1",
        )
        .await;
        assert!(
            r.breaks[0].reason.contains("indexed column"),
            "{backend:?}: {r:?}"
        );

        let r = tampered(backend, "DELETE FROM audit_events WHERE seq = 2").await;
        assert_eq!(r.breaks[0].seq, 3, "{backend:?} delete: {r:?}");
        assert!(r.breaks[0].reason.contains("deleted"));

        // Every event of the chain deleted: its registration remains.
        let r = tampered(backend, "DELETE FROM audit_events").await;
        assert!(!r.ok(), "{backend:?} emptied: {r:?}");
        assert_eq!((r.chains, r.valid_chains), (1, 0), "{r:?}");
        assert!(r.breaks[0].reason.contains("holds no events"), "{r:?}");

        // A forged event slipped in after seq 2: later events renumbered.
        let insert = "UPDATE audit_events SET seq = seq + 100 WHERE seq > 2; \
                      UPDATE audit_events SET seq = seq - 99 WHERE seq > 100; \
                      INSERT INTO audit_events (chain_id, seq, event_id, exchange_id, kind, time_us, prev_hash, hash, body) \
                      SELECT chain_id, 3, 'forged', 'forged', 'decision', time_us, hash, hash, body FROM audit_events WHERE seq = 2";
        let r = tampered(backend, insert).await;
        assert_eq!(r.breaks[0].seq, 3, "{backend:?} insert: {r:?}");

        // A chain's events moved under another registered chain's id.
        let moved = "INSERT INTO audit_chains (chain_id, started_us, host) VALUES ('moved-to', 0, 'x'); \
                     UPDATE audit_events SET chain_id = 'moved-to'";
        let r = tampered(backend, moved).await;
        assert!(
            r.breaks
                .iter()
                .any(|b| b.chain_id == "moved-to" && b.reason.contains("moved")),
            "{backend:?} moved: {r:?}"
        );

        // A whole chain written by someone who is no writer.
        let forged_chain = "INSERT INTO audit_events (chain_id, seq, event_id, exchange_id, kind, time_us, prev_hash, hash, body) \
                            SELECT 'forged-chain', seq, event_id || '-f', exchange_id, kind, time_us, prev_hash, hash, body FROM audit_events";
        let r = tampered(backend, forged_chain).await;
        assert!(
            r.breaks
                .iter()
                .any(|b| b.chain_id == "forged-chain" && b.reason.contains("never registered")),
            "{backend:?} forged chain: {r:?}"
        );

        let reorder = "UPDATE audit_events SET seq = 100 WHERE seq = 2; UPDATE audit_events SET seq = 2 WHERE seq = 3; \
                       UPDATE audit_events SET seq = 3 WHERE seq = 100";
        let r = tampered(backend, reorder).await;
        assert_eq!(r.breaks[0].seq, 2, "{backend:?} reorder: {r:?}");
        assert_eq!(
            r.valid_events, 1,
            "only the event before the break counts as valid in that chain"
        );
    }
}

on_both_backends! {
    async fn the_store_refuses_updates_and_deletes(backend: Backend) {
        let h = Harness::setup().backend(backend).start().await;
        h.patch(r#"{"show_as_button":false}"#)
            .await;
        h.audit.flush().await;
        for sql in [
            "UPDATE audit_events SET decision = 'deny'",
            "DELETE FROM audit_events",
        ] {
            let sql = sqlx::AssertSqlSafe(sql);
            let r = match &h.store {
                Store::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
                Store::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            };
            let e = r.expect_err("append-only");
            assert!(e.to_string().contains("append-only"), "{backend:?}: {e}");
        }
    }
}

on_both_backends! {
    async fn queries_filter_and_export(backend: Backend) {
        let h = judging_no_full(backend).await;
        let auth = format!("Bearer {}", jwt());
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let full = h
            .send_with(Method::PATCH, &item(), &headers, br#"{"organization_access_level":"full"}"#)
            .await;
        let ok = h
            .send(
                Method::POST,
                &format!("/api/v2/organizations/{ORG_GLOBEX}/connections"),
                Some(&json!({"connection_id": CON_OIDC}).to_string()),
            )
            .await;
        assert_eq!(ok.status, StatusCode::CREATED);
        h.audit.flush().await;
        let q = |f: query::Filter| {
            let store = h.store.clone();
            async move {
                query::exchanges(&store, &query::Filter { limit: 100, ..f })
                    .await
                    .expect("query")
            }
        };
        let all = q(query::Filter::default()).await;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].exchange_id, ok.audit_id(), "newest first");
        let by = |f: query::Filter| async {
            q(f).await
                .iter()
                .map(|e| e.exchange_id.clone())
                .collect::<Vec<_>>()
        };
        let f = query::Filter::default;
        let cases = [
            (
                query::Filter {
                    org: Some(ORG_ACME.into()),
                    ..f()
                },
                full.audit_id(),
            ),
            (
                query::Filter {
                    connection: Some(CON_OIDC.into()),
                    ..f()
                },
                ok.audit_id(),
            ),
            (
                query::Filter {
                    caller: Some("ci-bot".into()),
                    ..f()
                },
                full.audit_id(),
            ),
            (
                query::Filter {
                    decision: Some(tollgate::policy::Decision::Deny),
                    ..f()
                },
                full.audit_id(),
            ),
            (
                query::Filter {
                    rule: Some("no-full-access".into()),
                    ..f()
                },
                full.audit_id(),
            ),
            (
                query::Filter {
                    operation: Some("organization_connection.create".into()),
                    ..f()
                },
                ok.audit_id(),
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(
                by(filter.clone()).await,
                vec![expected],
                "{backend:?}: {filter:?}"
            );
        }
        let future = chrono::Utc::now().timestamp_micros() + 60_000_000;
        assert!(
            by(query::Filter {
                since_us: Some(future),
                ..Default::default()
            })
            .await
            .is_empty()
        );
        assert_eq!(
            by(query::Filter {
                until_us: Some(future),
                ..Default::default()
            })
            .await
            .len(),
            2
        );

        // Formats.
        let json_out: Value =
            serde_json::from_str(&query::render(&all, query::Format::Json)).expect("json");
        assert_eq!(json_out.as_array().map(Vec::len), Some(2));
        assert_eq!(json_out[1]["decision"], "deny");
        assert_eq!(json_out[1]["outcome"], "refused");
        assert_eq!(json_out[1]["status"], 403);
        let jsonl = query::render(&all, query::Format::Jsonl);
        assert_eq!(jsonl.lines().count(), 2);
        assert!(
            jsonl
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok())
        );
        let csv = query::render(&all, query::Format::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("exchange_id,time,operation"));
        assert!(lines[2].contains(",deny,no-full-access,"), "{csv}");
        let table = query::render(&all, query::Format::Table);
        assert!(table.lines().next().is_some_and(|l| l.starts_with("TIME")));
        assert!(table.contains("201") && table.contains("403"), "{table}");
    }
}

on_both_backends! {
    async fn a_decision_without_outcome_shows_as_unknown(backend: Backend) {
        let h = Harness::setup().backend(backend).start().await;
        // What a crash between the two events leaves behind.
        let exchange = tollgate::exchange::Exchange {
            id: "01a00000-0000-7000-8000-000000000001".into(),
            time: chrono::Utc::now(),
            method: "PATCH".into(),
            path: item(),
            class: tollgate::exchange::Class::Governed(
                tollgate::route::Operation::OrganizationConnectionUpdate,
            ),
            decision: Some(tollgate::policy::Decision::Allow),
            ..Default::default()
        };
        h.audit
            .record(exchange.decision_event(None))
            .await
            .expect("record");
        let rows = latest(&h).await;
        assert_eq!(rows[0].outcome, "unknown", "{backend:?}");
        assert_eq!(rows[0].status, None);
    }
}

on_both_backends! {
async fn a_tenant_that_times_out_leaves_a_failed_outcome(backend: Backend) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let h = Harness::setup()
        .backend(backend)
        .config("[upstream]\ntimeout = \"200ms\"\n")
        .tenant_at(addr, tollgate::sandbox::Sandbox::new())
        .start()
        .await;
    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    let evs = events(&h, &a.audit_id()).await;
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1]["event"]["data"]["error"]["kind"], "timeout");
    let rows = latest(&h).await;
    assert_eq!(rows[0].outcome, "failed");
}
}

/// A key pair in `dir`: the private key's path and the public key.
fn signing_pair(dir: &std::path::Path) -> (std::path::PathBuf, tollgate::audit::signing::Keys) {
    let (private, public) = tollgate::audit::signing::new_pair().expect("pair");
    let path = dir.join("signing.key");
    std::fs::write(&path, private).expect("write");
    (
        path,
        tollgate::audit::signing::Keys::parse(&public).expect("public"),
    )
}

/// `[audit]` signing with `DIR/signing.key` (see [`signing_pair`]), a
/// checkpoint at every clean stop only, and copies in `DIR/checkpoints`.
fn signed_config(dir: &std::path::Path) -> String {
    format!(
        "[audit]\nsigning_key = {:?}\ncheckpoint_interval = \"1h\"\ncheckpoint_dir = {:?}\n",
        dir.join("signing.key").display().to_string(),
        dir.join("checkpoints").display().to_string()
    )
}

/// A gateway signing its chain's head, after three exchanges and a clean
/// stop (a final checkpoint), and the public key. (The harness keeps a
/// SQLite store's directory.)
pub(crate) async fn signed_log(
    backend: Backend,
    dir: &std::path::Path,
) -> (Harness, tollgate::audit::signing::Keys) {
    let (_, public) = signing_pair(dir);
    let checkpoints = dir.join("checkpoints");
    let mut h = Harness::setup()
        .backend(backend)
        .config(&signed_config(dir))
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(
            h.patch(r#"{"show_as_button":true}"#).await.status,
            StatusCode::OK
        );
    }
    h.shutdown();
    h.stopped().await;
    let files: Vec<_> = std::fs::read_dir(&checkpoints)
        .expect("dir")
        .flatten()
        .collect();
    assert_eq!(
        files.len(),
        2,
        "the first and the final checkpoint, as files too"
    );
    (h, public)
}

on_both_backends! {
    async fn signed_checkpoints_catch_truncation_and_forged_appends(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (h, public) = signed_log(backend, dir.path()).await;
        let store = h.store.clone();
        let report = verify::verify_with(&store, Some(&public), &[]).await.expect("verify");
        assert!(report.ok(), "{backend:?}: {report:?}");
        assert_eq!((report.checkpoints, report.verified_checkpoints), (2, 2));
        assert!(report.uncovered.is_empty(), "{report:?}");
        // Checkpoint rows deleted: the copies kept as files still say so.
        let kept = tollgate::audit::signing::checkpoints_in(&dir.path().join("checkpoints")).expect("files");
        exec(&store, drop_triggers(backend)).await;
        exec(&store, "DELETE FROM audit_checkpoints").await;
        let report = verify::verify_with(&store, Some(&public), &kept).await.expect("verify");
        assert!(report.breaks[0].reason.contains("missing from the store"), "{backend:?}: {report:?}");
        for c in &kept {
            let body = serde_json::to_string(c).expect("json");
            let closed = match (backend, c.closed) {
                (Backend::Sqlite, closed) => i64::from(closed).to_string(),
                (Backend::Postgres, closed) => closed.to_string(),
            };
            exec(&store, &format!(
                "INSERT INTO audit_checkpoints (chain_id, seq, closed, body) VALUES ('{}', {}, {closed}, '{body}')",
                c.chain_id, c.seq
            )).await;
        }
        // Another key: the checkpoint does not verify.
        let (_, other) = signing_pair(&dir.path().join("x").tap_mkdir());
        let report = verify::verify_with(&store, Some(&other), &[]).await.expect("verify");
        assert!(report.breaks[0].reason.contains("does not verify"), "{report:?}");

        // A forged event appended after the final checkpoint, its hash
        // computed correctly (the triggers are already dropped).
        let last = store.chain_rows(&store.event_chains().await.expect("chains")[0], 5, 10).await.expect("rows");
        let last = last.last().expect("the last event").clone();
        let mut body: Value = serde_json::from_str(&last.body).expect("body");
        body["seq"] = json!(last.seq + 1);
        body["event_id"] = json!("forged");
        let body = body.to_string();
        let hash = tollgate::audit::chain_hash(&last.hash, &body);
        let mut forged = last.clone();
        forged.seq += 1;
        forged.event_id = "forged".into();
        forged.prev_hash = last.hash.clone();
        forged.hash = hash;
        forged.body = body;
        store.append(&[forged]).await.expect("append");
        let report = verify::verify_with(&store, Some(&public), &[]).await.expect("verify");
        assert!(!report.ok());
        assert!(report.breaks[0].reason.contains("appended after it was closed"), "{backend:?}: {report:?}");

        // The last events deleted: truncation, named.
        exec(&store, &format!("DELETE FROM audit_events WHERE seq >= {}", last.seq - 1)).await;
        let report = verify::verify_with(&store, Some(&public), &[]).await.expect("verify");
        assert!(!report.ok());
        assert!(report.breaks[0].reason.starts_with("truncated"), "{backend:?}: {report:?}");
    }
}

on_both_backends! {
    /// After the signing key is replaced, the checkpoints the old key signed
    /// still verify with its public key listed in `audit.retired_keys` (or
    /// in the `--public-key` file); without it they are reported, naming
    /// the key.
    async fn checkpoints_signed_before_a_key_rotation_still_verify(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (old_log, old) = signed_log(backend, dir.path()).await;
        let (new_key, new) = signing_pair(&dir.path().join("new").tap_mkdir());
        let mut h = Harness::setup()
            .store_url(&old_log.store_url)
            .config(&format!(
                "[audit]\nsigning_key = {:?}\ncheckpoint_interval = \"1h\"\n",
                new_key.display().to_string()
            ))
            .start()
            .await;
        assert_eq!(h.patch(r#"{"show_as_button":true}"#).await.status, StatusCode::OK);
        h.shutdown();
        h.stopped().await;

        let old_id = old.iter().next().expect("key").key_id();
        let report = verify::verify_with(&h.store, Some(&new), &[]).await.expect("verify");
        assert!(!report.ok());
        let reason = &report.breaks[0].reason;
        assert!(reason.contains(&format!("names key {old_id}, not one of the public keys given")), "{backend:?}: {reason}");
        let both = new.clone().and(old.clone());
        let report = verify::verify_with(&h.store, Some(&both), &[]).await.expect("verify");
        assert!(report.ok(), "{backend:?}: {report:?}");
        assert_eq!((report.checkpoints, report.verified_checkpoints), (4, 4));

        // As an operator runs it: the new signing key, the old public key retired.
        let retired = dir.path().join("retired.pub");
        std::fs::write(&retired, format!("# retired 2026-11\n{}", old.to_text())).expect("write");
        let config = tempfile::NamedTempFile::new().expect("config");
        let verify = |retired_keys: Option<&std::path::Path>| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
            cmd.args(["audit", "verify"])
                .env_clear()
                .env("TOLLGATE_CONFIG", config.path())
                .env("TOLLGATE_AUDIT_URL", &old_log.store_url)
                .env("TOLLGATE_AUDIT_SIGNING_KEY", &new_key);
            if let Some(path) = retired_keys {
                cmd.env("TOLLGATE_AUDIT_RETIRED_KEYS", path);
            }
            let out = cmd.output().expect("run");
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let (ok, text) = verify(None);
        assert!(!ok && text.contains(&old_id), "{text}");
        let (ok, text) = verify(Some(&retired));
        assert!(ok && text.contains("4/4 checkpoints verified"), "{text}");
    }
}

on_both_backends! {
    /// A chain whose writer stopped without closing it (a crash) is not
    /// left uncovered for ever: the next instance to start signs its head,
    /// marked as signed by another instance, and a later rewrite of those
    /// events is caught.
    async fn the_next_instance_signs_the_head_a_crashed_writer_left(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let crashed = Crashed::new(backend, dir.path(), &[]).await;
        let (env, store, public, chain) = (&crashed.env, &crashed.store, &crashed.public, &crashed.chain);
        let (first, head) = (crashed.first, crashed.head);

        let next = crate::harness::Served::start(dir.path(), &["--sandbox"], env).await;
        let report = verify::verify_with(store, Some(public), &[]).await.expect("verify");
        assert!(report.ok(), "{backend:?}: {report:?}");
        assert!(report.uncovered.is_empty(), "{backend:?}: {report:?}");
        assert_eq!(report.adopted.len(), 1, "{report:?}");
        assert_eq!(&report.adopted[0].chain_id, chain);
        assert_eq!((report.adopted[0].own_seq, report.adopted[0].seq), (first, head));
        crate::harness::terminate(next.child).await;

        // The adopted head holds: an event rewritten with its hashes
        // recomputed is caught.
        exec(store, drop_triggers(backend)).await;
        rewrite_from(store, chain, 4).await;
        let report = verify::verify_with(store, Some(public), &[]).await.expect("verify");
        assert!(!report.ok(), "{backend:?}: {report:?}");
        assert!(report.breaks[0].reason.contains("not the one signed"), "{backend:?}: {report:?}");
    }
}

on_both_backends! {
    /// A closed chain rewritten with its hashes recomputed, its final
    /// checkpoint row deleted: the next instance does not sign its head
    /// (the checkpoint files say it was closed), and `audit verify` with
    /// those files still reports it.
    async fn a_rewritten_closed_chain_is_not_signed_again(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (signed, public) = signed_log(backend, dir.path()).await;
        let store = signed.store.clone();
        let chain = store.event_chains().await.expect("chains")[0].clone();
        exec(&store, drop_triggers(backend)).await;
        exec(&store, "DELETE FROM audit_checkpoints WHERE closed = true").await;
        rewrite_from(&store, &chain, 3).await;
        let mut next = Harness::setup()
            .store_url(&signed.store_url)
            .config(&signed_config(dir.path()))
            .start()
            .await;
        next.shutdown();
        next.stopped().await;
        let kept = tollgate::audit::signing::checkpoints_in(&dir.path().join("checkpoints")).expect("files");
        assert!(kept.iter().all(|c| !c.adopted), "{backend:?}: nothing signed for the rewritten chain");
        let report = verify::verify_with(&store, Some(&public), &kept).await.expect("verify");
        assert!(!report.ok(), "{backend:?}: {report:?}");
        assert!(report.adopted.is_empty(), "{report:?}");
    }
}

on_both_backends! {
    /// A head two instances sign at once is stored once; the second is told
    /// so (and writes no file for a row that is not there).
    async fn a_head_signed_twice_is_stored_once(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&crate::harness::fresh_store_url(backend, dir.path()).await)
            .await
            .expect("store");
        let (key, _) = signing_pair(dir.path());
        let key = tollgate::audit::signing::SigningKey::load(&key).expect("key");
        let head = tollgate::audit::ChainHead { chain_id: "c".into(), seq: 6, hash: "h".into() };
        use tollgate::audit::signing::{Checkpoint, Kind};
        let adopted = Checkpoint::sign(&key, &head, Kind::Adopted);
        let own = Checkpoint::sign(&key, &head, Kind::Running);
        assert!(store.add_checkpoint(&adopted).await.expect("store"));
        assert!(!store.add_checkpoint(&own).await.expect("store"), "{backend:?}");
        assert_eq!(store.checkpoints().await.expect("read").good, vec![adopted]);
    }
}

/// Rewrites a chain's events from `seq` on (`show_as_button` true → false)
/// with their hashes recomputed, as someone with write access to the store
/// and no signing key could (the triggers dropped already).
async fn rewrite_from(store: &Store, chain: &str, seq: i64) {
    let rows = store.chain_rows(chain, seq - 1, 100).await.expect("rows");
    let mut prev = rows[0].prev_hash.clone();
    for r in &rows {
        let body = r
            .body
            .replace("\"show_as_button\":true", "\"show_as_button\":false");
        let hash = tollgate::audit::chain_hash(&prev, &body);
        exec(store, &format!(
            "UPDATE audit_events SET body = '{}', prev_hash = '{prev}', hash = '{hash}' WHERE chain_id = '{chain}' AND seq = {}",
            body.replace('\'', "''"),
            r.seq
        ))
        .await;
        prev = hash;
    }
}

/// A signing `serve --sandbox` killed after three changes: its chain signed
/// at its first commit and not since (the interval is an hour away).
struct Crashed {
    env: Vec<(&'static str, String)>,
    store: Store,
    public: tollgate::audit::signing::Keys,
    key: tollgate::audit::signing::SigningKey,
    chain: String,
    /// The seq its writer signed, and the chain's head.
    first: i64,
    head: i64,
}

impl Crashed {
    async fn new(
        backend: Backend,
        dir: &std::path::Path,
        extra: &[(&'static str, String)],
    ) -> Crashed {
        let (key, public) = signing_pair(dir);
        let db = crate::harness::fresh_store_url(backend, dir).await;
        let mut env = vec![
            ("TOLLGATE_AUDIT_URL", db.clone()),
            ("TOLLGATE_AUDIT_SIGNING_KEY", key.display().to_string()),
            ("TOLLGATE_AUDIT_CHECKPOINT_INTERVAL", "1h".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        let mut served = crate::harness::Served::start(dir, &["--sandbox"], &env).await;
        for _ in 0..3 {
            let a = served.patch(&item(), r#"{"show_as_button":true}"#).await;
            assert_eq!(a.status, StatusCode::OK);
        }
        served.child.kill().await.expect("kill");
        let store = Store::open(&db).await.expect("store");
        let report = verify::verify_with(&store, Some(&public), &[])
            .await
            .expect("verify");
        assert_eq!(report.uncovered.len(), 1, "{backend:?}: {report:?}");
        let u = &report.uncovered[0];
        assert!(u.after_seq > 0, "signed at its first commit: {report:?}");
        Crashed {
            key: tollgate::audit::signing::SigningKey::load(&key).expect("key"),
            chain: u.chain_id.clone(),
            first: u.after_seq,
            head: u.after_seq + u.events,
            env,
            store,
            public,
        }
    }

    /// Whether any checkpoint of the store was signed by another instance.
    async fn adopted(&self) -> bool {
        self.store
            .checkpoints()
            .await
            .expect("read")
            .good
            .iter()
            .any(|c| c.adopted)
    }
}

on_both_backends! {
    /// Checkpoint rows that are not what their place says (a genuine body
    /// copied to another seq), or a chain only ever signed "for" it: the
    /// chain does not verify, and the next instance signs nothing for it.
    async fn no_head_is_signed_for_a_chain_with_copied_or_borrowed_checkpoints(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let crashed = Crashed::new(backend, dir.path(), &[]).await;
        let store = &crashed.store;
        // A plain INSERT (no trigger dropped): the first checkpoint's body
        // again, at the seq before the head.
        let sqlite = backend == Backend::Sqlite;
        let closed = if sqlite { "0" } else { "false" };
        exec(store, &format!(
            "INSERT INTO audit_checkpoints (chain_id, seq, closed, body) SELECT chain_id, {}, {closed}, body FROM audit_checkpoints WHERE chain_id = '{}' AND seq > 0",
            crashed.head - 1,
            crashed.chain
        )).await;
        assert!(crashed.head - 1 > crashed.first, "{} {}", crashed.head, crashed.first);
        let report = verify::verify_with(store, Some(&crashed.public), &[]).await.expect("verify");
        assert!(report.breaks.iter().any(|b| b.reason.contains("another place")), "{backend:?}: {report:?}");
        let next = crate::harness::Served::start(dir.path(), &["--sandbox"], &crashed.env).await;
        assert!(next.log().contains("does not verify"), "{}", next.log());
        crate::harness::terminate(next.child).await;
        assert!(!crashed.adopted().await, "{backend:?}: nothing signed for it");

        // A chain whose only checkpoint another instance signed (genuinely,
        // with the key): no writer ever vouched for its start.
        let head = tollgate::audit::ChainHead { chain_id: crashed.chain.clone(), seq: crashed.head, hash: String::new() };
        let rows = store.chain_rows(&crashed.chain, crashed.head - 1, 1).await.expect("rows");
        let head = tollgate::audit::ChainHead { hash: rows[0].hash.clone(), ..head };
        exec(store, drop_triggers(backend)).await;
        exec(store, "DELETE FROM audit_checkpoints").await;
        use tollgate::audit::signing::{Checkpoint, Kind};
        store.add_checkpoint(&Checkpoint::sign(&crashed.key, &head, Kind::Adopted)).await.expect("store");
        let report = verify::verify_with(store, Some(&crashed.public), &[]).await.expect("verify");
        assert!(report.breaks.iter().any(|b| b.reason.contains("its own writer never signed it")), "{backend:?}: {report:?}");
    }
}

on_both_backends! {
    /// A checkpoint directory that cannot be read whole (a file that is not
    /// a checkpoint): the next instance signs no other chain's head; and a
    /// checkpoint row that is not one is a break of its chain, not an
    /// outage.
    async fn unreadable_checkpoints_stop_signing_for_others_not_the_gateway(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let cpdir = dir.path().join("cpdir").tap_mkdir();
        let extra = [("TOLLGATE_AUDIT_CHECKPOINT_DIR", cpdir.display().to_string())];
        let crashed = Crashed::new(backend, dir.path(), &extra).await;
        std::fs::write(cpdir.join("zz-partial.json"), r#"{"chain_id":"x"#).expect("write");
        exec(&crashed.store, "INSERT INTO audit_checkpoints (chain_id, seq, closed, body) VALUES ('junk', 1, false, 'not json')").await;
        let next = crate::harness::Served::start(dir.path(), &["--sandbox"], &crashed.env).await;
        assert!(next.log().contains("checkpoint files unreadable"), "{}", next.log());
        crate::harness::terminate(next.child).await;
        assert!(!crashed.adopted().await, "{backend:?}");
        let report = verify::verify_with(&crashed.store, Some(&crashed.public), &[]).await.expect("verify");
        let junk = report.breaks.iter().find(|b| b.chain_id == "junk").expect("junk reported");
        assert!(junk.reason.contains("not a checkpoint"), "{junk:?}");
    }
}

/// A bundle carries the checkpoints kept as files too: exported from a
/// store that lost its checkpoint rows and had a stretch rewritten, it does
/// not verify.
#[tokio::test]
async fn a_bundle_carries_the_checkpoints_kept_as_files() {
    let dir = tempfile::tempdir().expect("dir");
    let (h, public) = signed_log(Backend::Sqlite, dir.path()).await;
    let chain = h.store.event_chains().await.expect("chains")[0].clone();
    exec(&h.store, drop_triggers(Backend::Sqlite)).await;
    exec(&h.store, "DELETE FROM audit_checkpoints").await;
    rewrite_from(&h.store, &chain, 3).await;
    let kept =
        tollgate::audit::signing::checkpoints_in(&dir.path().join("checkpoints")).expect("files");
    let out = dir.path().join("bundle");
    let since = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    let until = chrono::Utc::now().timestamp_micros() + 1;
    let key =
        tollgate::audit::signing::SigningKey::load(&dir.path().join("signing.key")).expect("key");
    tollgate::audit::bundle::export(
        &h.store,
        since,
        until,
        Some(&public),
        Some(&key),
        &kept,
        &out,
    )
    .await
    .expect("export");
    let report = tollgate::audit::bundle::verify(&out, None)
        .expect("verify")
        .report;
    assert!(!report.ok(), "{report:?}");
    assert!(
        report.breaks[0].reason.contains("not the one signed"),
        "{report:?}"
    );
}

/// SQLite's `INSERT OR REPLACE` deletes without firing DELETE triggers: it
/// is refused for events and does nothing for chains and checkpoints.
#[tokio::test]
async fn insert_or_replace_cannot_rewrite_the_log() {
    let h = Harness::setup().backend(Backend::Sqlite).start().await;
    assert_eq!(
        h.patch(r#"{"show_as_button":true}"#).await.status,
        StatusCode::OK
    );
    h.audit.flush().await;
    let Store::Sqlite(pool) = &h.store else {
        panic!("sqlite")
    };
    let replace = "INSERT OR REPLACE INTO audit_events (chain_id, seq, event_id, exchange_id, kind, time_us, prev_hash, hash, body) \
                   SELECT chain_id, seq, event_id, exchange_id, kind, time_us, prev_hash, hash, '{}' FROM audit_events WHERE seq = 1";
    assert!(sqlx::raw_sql(replace).execute(pool).await.is_err());
    sqlx::raw_sql("INSERT OR REPLACE INTO audit_chains (chain_id, started_us, host, with_events) SELECT chain_id, 0, 'x', 0 FROM audit_chains")
        .execute(pool)
        .await
        .expect("ignored");
    let report = verify::verify(&h.store).await.expect("verify");
    assert!(report.ok(), "{report:?}");
    let marked: i64 = sqlx::query_scalar("SELECT with_events FROM audit_chains")
        .fetch_one(pool)
        .await
        .expect("chain");
    assert_eq!(marked, 1, "the chain is still marked as holding events");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}

/// An export bundle verifies elsewhere with the public key alone, and an
/// altered bundle does not.
#[tokio::test]
async fn an_export_bundle_verifies_offline_with_the_public_key() {
    let dir = tempfile::tempdir().expect("dir");
    let (h, public) = signed_log(Backend::Sqlite, dir.path()).await;
    let url = h.store_url.clone();
    let pubfile = dir.path().join("signing.pub");
    std::fs::write(&pubfile, public.to_text()).expect("write");
    let bundle = dir.path().join("bundle");
    let config = tempfile::NamedTempFile::new().expect("config");
    let key = dir.path().join("signing.key");
    let run = |args: Vec<String>, db: Option<String>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(args)
            .env_clear()
            .env("TOLLGATE_CONFIG", config.path());
        if let Some(db) = db {
            // Where the log is, the signing key is too: the bundle is signed.
            cmd.env("TOLLGATE_AUDIT_URL", db);
            cmd.env("TOLLGATE_AUDIT_SIGNING_KEY", &key);
        }
        cmd.output().expect("run")
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let out = run(
        s(&[
            "audit",
            "export",
            "--since",
            "1h",
            "--out",
            &bundle.display().to_string(),
            "--public-key",
            &pubfile.display().to_string(),
        ]),
        Some(url.clone()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // On "another machine": no database, the bundle and the key only.
    let elsewhere = tempfile::tempdir().expect("elsewhere");
    for f in std::fs::read_dir(&bundle).expect("bundle").flatten() {
        std::fs::copy(f.path(), elsewhere.path().join(f.file_name())).expect("copy");
    }
    let verify = |key: &std::path::Path| {
        run(
            s(&[
                "audit",
                "verify",
                "--bundle",
                &elsewhere.path().display().to_string(),
                "--public-key",
                &key.display().to_string(),
            ]),
            None,
        )
    };
    let out = verify(&pubfile);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("6/6 events valid") && text.contains("2/2 checkpoints verified"),
        "{text}"
    );
    // It says what it covers and whose key verified it.
    assert!(text.contains("bundle window: "), "{text}");
    assert!(text.contains("events") && text.contains("chain "), "{text}");
    assert!(
        text.contains("verified with the public key given"),
        "{text}"
    );
    // Without --public-key the bundle's own key proves only that the
    // bundle agrees with itself: a failure, unless the auditor says so.
    let bare = |extra: &[&str]| {
        let mut args = s(&[
            "audit",
            "verify",
            "--bundle",
            &elsewhere.path().display().to_string(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        run(args, None)
    };
    let out = bare(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT TRUSTED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = bare(&["--trust-bundle-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A file the bundle does not hold: refused.
    let stray = elsewhere.path().join("notes.txt");
    std::fs::write(&stray, "x").expect("write");
    let out = verify(&pubfile);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a file of a bundle"));
    std::fs::remove_file(&stray).expect("remove");
    // Stripped of its key, signature and checkpoints: nothing vouches for
    // it, and that is a failure.
    let stripped = tempfile::tempdir().expect("stripped");
    for f in ["events.jsonl", "checkpoints.json"] {
        std::fs::copy(elsewhere.path().join(f), stripped.path().join(f)).expect("copy");
    }
    std::fs::write(stripped.path().join("checkpoints.json"), "[]").expect("write");
    let mut manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(elsewhere.path().join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    manifest["files"]
        .as_object_mut()
        .expect("files")
        .remove("public.key");
    let empty = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"[]"))
    };
    manifest["files"]["checkpoints.json"] = json!(empty);
    std::fs::write(
        stripped.path().join("manifest.json"),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write");
    let out = run(
        s(&[
            "audit",
            "verify",
            "--bundle",
            &stripped.path().display().to_string(),
        ]),
        None,
    );
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT VERIFIED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Another key than the bundle's: refused.
    let (_, other) = tollgate::audit::signing::new_pair().expect("pair");
    let otherfile = dir.path().join("other.pub");
    std::fs::write(&otherfile, other).expect("write");
    let out = verify(&otherfile);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not one given"));
    // An edited event: the manifest's hash says so.
    let events = elsewhere.path().join("events.jsonl");
    let text = std::fs::read_to_string(&events).expect("events");
    let edited = text.replacen("show_as_button", "show_as_buttoN", 1);
    std::fs::write(&events, &edited).expect("write");
    let out = verify(&pubfile);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("events.jsonl does not match"), "{err}");
    // And with the manifest rewritten to match: its signature says so.
    let manifest_path = elsewhere.path().join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).expect("manifest"))
            .expect("json");
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(edited.as_bytes()))
    };
    manifest["files"]["events.jsonl"] = json!(digest);
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write");
    let out = verify(&pubfile);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("not signed by the public key"), "{err}");
}

/// A trigger that silently discards every checkpoint insert (`RAISE
/// (IGNORE)` / `RETURN NULL`): what a database owner would add to switch
/// checkpoints off.
fn discard_checkpoints(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER discard_checkpoints BEFORE INSERT ON audit_checkpoints BEGIN SELECT RAISE(IGNORE); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION discard_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; \
             CREATE TRIGGER discard_checkpoints BEFORE INSERT ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION discard_checkpoint();"
        }
    }
}

on_both_backends! {
    /// Checkpoints switched off from the database: the writer finds its
    /// checkpoint missing when it reads it back, stops acknowledging
    /// (governed changes get 503, nothing forwarded), says so in /readyz,
    /// and acknowledges again once a checkpoint is confirmed.
    async fn checkpoints_switched_off_from_the_database_stop_the_gateway(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        signing_pair(dir.path());
        let h = Harness::setup()
            .backend(backend)
            .config(&signed_config(dir.path()))
            .start()
            .await;
        exec(&h.store, discard_checkpoints(backend)).await;
        // The chain's opening cannot be confirmed: nothing is acknowledged,
        // from the first exchange on.
        let refused = h.patch(r#"{"show_as_button":false}"#).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{backend:?}: {refused:?}");
        assert_eq!(refused.error_code(), "tollgate_audit_unavailable");
        let refused = h.patch(r#"{"show_as_button":true}"#).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{backend:?}: {refused:?}");
        assert_eq!(h.forwarded(Method::PATCH), 0, "nothing forwarded while unconfirmed");
        let admin = h.app.as_ref().expect("running").admin_addr.to_string();
        let ready = Harness::client_get(&admin, "/readyz").await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(ready.json()["checkpoints"].as_str().unwrap_or_default().contains("not in the store"), "{:?}", ready.json());
        assert!(h.audit.unconfirmed().is_some());
        // The trigger removed: the next exchange confirms a checkpoint first.
        let drop = match backend {
            Backend::Sqlite => "DROP TRIGGER discard_checkpoints;",
            Backend::Postgres => "DROP TRIGGER discard_checkpoints ON audit_checkpoints;",
        };
        exec(&h.store, drop).await;
        assert_eq!(h.patch(r#"{"show_as_button":false}"#).await.status, StatusCode::OK);
        assert!(h.audit.unconfirmed().is_none());
        assert_eq!(Harness::client_get(&admin, "/readyz").await.status, StatusCode::OK);
    }
}

on_both_backends! {
    /// A checkpoint file no key of ours signed is reported as forged, not
    /// as a checkpoint the store lost; a file in the directory that is not
    /// a checkpoint is named and skipped, not a reason to report nothing.
    async fn forged_and_junk_checkpoint_files_are_named_for_what_they_are(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (h, public) = signed_log(backend, dir.path()).await;
        let kept_dir = dir.path().join("checkpoints");
        std::fs::write(kept_dir.join("junk.json"), "{\"not\": \"a checkpoint\"}").expect("write");
        let (mut kept, junk) = tollgate::audit::signing::checkpoints_and_junk_in(&kept_dir).expect("read");
        assert_eq!(kept.len(), 2, "{junk:?}");
        assert_eq!(junk.len(), 1);
        assert!(junk[0].contains("junk.json"), "{junk:?}");
        let report = verify::verify_with(&h.store, Some(&public), &kept).await.expect("verify");
        assert!(report.ok(), "{backend:?}: {report:?}");
        // A made-up checkpoint, signed with a key that is not ours.
        let (private, _) = tollgate::audit::signing::new_pair().expect("pair");
        let stranger = dir.path().join("stranger.key");
        std::fs::write(&stranger, private).expect("write");
        let stranger = tollgate::audit::signing::SigningKey::load(&stranger).expect("key");
        let mut forged = kept[0].clone();
        forged.seq = 2;
        forged.time = "2020-01-01T00:00:00.000000Z".into();
        let head = tollgate::audit::ChainHead { chain_id: forged.chain_id.clone(), seq: 2, hash: forged.hash.clone() };
        let forged = tollgate::audit::signing::Checkpoint::sign(&stranger, &head, tollgate::audit::signing::Kind::Running);
        kept.push(forged);
        let report = verify::verify_with(&h.store, Some(&public), &kept).await.expect("verify");
        assert!(!report.ok());
        assert!(report.breaks.iter().any(|b| b.reason.contains("forged, not deleted")), "{backend:?}: {report:?}");
        assert!(!report.breaks.iter().any(|b| b.reason.contains("missing from the store (deleted)")), "{report:?}");
    }
}

on_both_backends! {
    /// A chain forged with INSERT rights alone — a chain row and events
    /// whose hashes are computed correctly — has no opening a key signed:
    /// with the public key, `audit verify` reports it as an unsigned chain.
    async fn a_forged_chain_is_an_unsigned_chain(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (h, public) = signed_log(backend, dir.path()).await;
        let store = h.store.clone();
        let mut head = tollgate::audit::ChainHead::new("01a2forged-chain".into());
        let rows: Vec<_> = (0..3)
            .map(|i| {
                head.link(&tollgate::audit::NewEvent {
                    exchange_id: format!("forged-{i}"),
                    kind: tollgate::audit::Kind::Decision,
                    time: chrono::Utc::now(),
                    index: tollgate::audit::Index {
                        operation: Some("organization_connection.update".into()),
                        ..Default::default()
                    },
                    data: serde_json::value::to_raw_value(&json!({"path": "/forged"})).expect("raw"),
                })
            })
            .collect();
        let opening = tollgate::audit::store::Opening {
            chain_id: "01a2forged-chain".into(),
            started_us: 0,
            host: "db-owner".into(),
        };
        store.append_opening(&rows, Some(&opening)).await.expect("forged");
        let report = verify::verify_with(&store, Some(&public), &[]).await.expect("verify");
        assert!(!report.ok(), "{backend:?}: {report:?}");
        assert!(
            report.breaks.iter().any(|b| b.chain_id == "01a2forged-chain" && b.reason.starts_with("unsigned chain")),
            "{backend:?}: {report:?}"
        );
        // The genuine chain still verifies.
        assert_eq!(report.valid_chains, 1, "{report:?}");
    }
}

on_both_backends! {
    /// Events no checkpoint covers, older than the deadline (a few
    /// checkpoint intervals), mean checkpoints stopped: a break.
    async fn events_left_unsigned_past_the_deadline_are_a_break(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (key, public) = signing_pair(dir.path());
        let h = Harness::setup()
            .backend(backend)
            .config(&format!(
                "[audit]\nsigning_key = {:?}\ncheckpoint_interval = \"1h\"\n",
                key.display().to_string()
            ))
            .start()
            .await;
        for _ in 0..3 {
            assert_eq!(h.patch(r#"{"show_as_button":true}"#).await.status, StatusCode::OK);
        }
        h.audit.flush().await;
        // Within the deadline: a note ("not yet covered"), no break.
        let report = verify::verify_with_deadline(&h.store, Some(&public), &[], Some(std::time::Duration::from_secs(3 * 3600)))
            .await
            .expect("verify");
        assert!(report.ok(), "{backend:?}: {report:?}");
        assert!(!report.uncovered.is_empty());
        // Past it: a break naming it.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let report = verify::verify_with_deadline(&h.store, Some(&public), &[], Some(std::time::Duration::from_millis(10)))
            .await
            .expect("verify");
        assert!(!report.ok());
        assert!(report.breaks.iter().any(|b| b.reason.starts_with("checkpoint overdue")), "{backend:?}: {report:?}");
    }
}

on_both_backends! {
    /// `audit verify --all` reports every break of a chain, not only the
    /// first: two edits, two breaks.
    async fn verify_all_reports_every_break(backend: Backend) {
        let h = Harness::setup().backend(backend).start().await;
        for _ in 0..4 {
            assert_eq!(h.patch(r#"{"show_as_button":true}"#).await.status, StatusCode::OK);
        }
        h.audit.flush().await;
        exec(&h.store, drop_triggers(backend)).await;
        exec(&h.store, "UPDATE audit_events SET body = replace(body, 'show_as_button', 'show_as_buttoN') WHERE seq IN (2, 6)").await;
        let first = verify::verify_to(&h.store, None, &[], verify::Depth::default()).await.expect("verify");
        assert_eq!(first.breaks.len(), 1, "{backend:?}: {first:?}");
        let all = verify::verify_to(&h.store, None, &[], verify::Depth { all: true, ..Default::default() })
            .await
            .expect("verify");
        let seqs: Vec<i64> = all.breaks.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [2, 6], "{backend:?}: {all:?}");
    }
}

on_both_backends! {
    /// Rows a database owner places at seq 0 or below are events too:
    /// verify walks from the lowest seq there is, and a bundle carries them.
    async fn rows_below_seq_one_are_not_invisible(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (h, public) = signed_log(backend, dir.path()).await;
        let store = h.store.clone();
        exec(&store, drop_triggers(backend)).await;
        let chain = store.event_chains().await.expect("chains")[0].clone();
        let first = store.chain_rows(&chain, 0, 1).await.expect("rows")[0].clone();
        let mut forged = first.clone();
        forged.seq = 0;
        forged.event_id = "forged-zero".into();
        forged.exchange_id = "forged-zero".into();
        store.append(&[forged]).await.expect("append");
        let report = verify::verify_with(&store, Some(&public), &[]).await.expect("verify");
        assert!(!report.ok(), "{backend:?}: {report:?}");
    }
}

on_both_backends! {
    /// A writer that records nothing leaves nothing: no opening a forger
    /// could fill with events of their own.
    async fn a_writer_without_traffic_opens_no_chain(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (key, _) = signing_pair(dir.path());
        let mut h = Harness::setup()
            .backend(backend)
            .config(&format!(
                "[audit]\nsigning_key = {:?}\ncheckpoint_interval = \"1h\"\n",
                key.display().to_string()
            ))
            .start()
            .await;
        h.shutdown();
        h.stopped().await;
        let stored = h.store.checkpoints().await.expect("checkpoints");
        assert!(stored.good.is_empty() && stored.bad.is_empty(), "{backend:?}: {:?}", stored.good);
    }
}

on_both_backends! {
    /// A checkpoint whose file cannot be written is not confirmed, however
    /// often it is retried: nothing is acknowledged until the file is there.
    async fn an_unwritable_checkpoint_directory_stops_acknowledgements(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        signing_pair(dir.path());
        let checkpoints = dir.path().join("checkpoints");
        let h = Harness::setup()
            .backend(backend)
            .config(&signed_config(dir.path()))
            .start()
            .await;
        // The directory replaced by a file: no checkpoint file can be written.
        std::fs::remove_dir_all(&checkpoints).ok();
        std::fs::write(&checkpoints, "not a directory").expect("write");
        assert_eq!(h.patch(r#"{"show_as_button":true}"#).await.status, StatusCode::OK);
        h.audit.flush().await;
        for _ in 0..3 {
            let a = h.patch(r#"{"show_as_button":false}"#).await;
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{backend:?}: {a:?}");
        }
        assert!(h.audit.unconfirmed().is_some());
        // The directory back: the retry writes the file, acknowledgements resume.
        std::fs::remove_file(&checkpoints).expect("remove");
        std::fs::create_dir(&checkpoints).expect("mkdir");
        assert_eq!(h.patch(r#"{"show_as_button":false}"#).await.status, StatusCode::OK);
        assert!(std::fs::read_dir(&checkpoints).expect("dir").count() >= 1);
    }
}

/// An export does not launder a forged chain: the bundle of a chain no key
/// opened or covered verifies as an unsigned chain.
#[tokio::test]
async fn a_bundle_of_a_forged_chain_is_not_clean() {
    let dir = tempfile::tempdir().expect("dir");
    let (h, public) = signed_log(Backend::Sqlite, dir.path()).await;
    let store = h.store.clone();
    let mut head = tollgate::audit::ChainHead::new("01a2forged-bundled".into());
    let rows: Vec<_> = (0..3)
        .map(|i| {
            head.link(&tollgate::audit::NewEvent {
                exchange_id: format!("forged-{i}"),
                kind: tollgate::audit::Kind::Decision,
                time: chrono::Utc::now(),
                index: tollgate::audit::Index::default(),
                data: serde_json::value::to_raw_value(&json!({"path": "/forged"})).expect("raw"),
            })
        })
        .collect();
    let opening = tollgate::audit::store::Opening {
        chain_id: "01a2forged-bundled".into(),
        started_us: 0,
        host: "db-owner".into(),
    };
    store
        .append_opening(&rows, Some(&opening))
        .await
        .expect("forged");
    let key =
        tollgate::audit::signing::SigningKey::load(&dir.path().join("signing.key")).expect("key");
    let out = dir.path().join("bundle");
    tollgate::audit::bundle::export(&store, 0, i64::MAX, Some(&public), Some(&key), &[], &out)
        .await
        .expect("export");
    let verified = tollgate::audit::bundle::verify(&out, Some(&public)).expect("verify");
    assert!(
        verified
            .report
            .breaks
            .iter()
            .any(|b| b.chain_id == "01a2forged-bundled" && b.reason.starts_with("unsigned chain")),
        "{:?}",
        verified.report
    );
}

on_both_backends! {
    /// A checkpoint dated before the event it signs — a leaked key dating
    /// its signature into its valid years — is a break.
    async fn a_backdated_checkpoint_is_a_break(backend: Backend) {
        let dir = tempfile::tempdir().expect("dir");
        let (h, public) = signed_log(backend, dir.path()).await;
        let store = h.store.clone();
        let key = tollgate::audit::signing::SigningKey::load(&dir.path().join("signing.key")).expect("key");
        let chain = store.event_chains().await.expect("chains")[0].clone();
        let rows = store.chain_rows(&chain, 0, 100).await.expect("rows");
        let last = rows.last().expect("a row").clone();
        exec(&store, drop_triggers(backend)).await;
        exec(&store, "DELETE FROM audit_checkpoints WHERE seq > 0").await;
        let head = tollgate::audit::ChainHead { chain_id: chain.clone(), seq: last.seq, hash: last.hash.clone() };
        // Signed with the genuine key, dated years before the event.
        let c = tollgate::audit::signing::Checkpoint::sign_at(
            &key,
            &head,
            tollgate::audit::signing::Kind::Final,
            "2020-01-01T00:00:00.000000Z",
        );
        store.add_checkpoint(&c).await.expect("store");
        let report = verify::verify_with(&store, Some(&public), &[]).await.expect("verify");
        assert!(report.breaks.iter().any(|b| b.reason.contains("backdated")), "{backend:?}: {report:?}");
    }
}
