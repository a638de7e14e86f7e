//! Audit append throughput with and without group commit, on SQLite and
//! Postgres: `cargo bench --bench audit`.
//!
//! Many requests record their decision at once; each waits until its event
//! is durable. With batching off (at most one event per commit) every
//! request pays a commit of its own.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tollgate::audit::{AuditLog, Index, Kind, NewEvent, Store};

const EVENTS: usize = 4000;
const CONCURRENCY: usize = 64;

fn event(i: usize) -> NewEvent {
    NewEvent {
        exchange_id: format!("bench-{i}"),
        kind: Kind::Decision,
        time: chrono::Utc::now(),
        index: Index {
            operation: Some("organization_connection.update".into()),
            org_id: Some("org_acme".into()),
            connection_id: Some("con_saml".into()),
            caller: Some("ci-bot".into()),
            decision: Some(tollgate::policy::Decision::Allow),
            rules: Vec::new(),
        },
        data: serde_json::value::to_raw_value(&json!({"method": "PATCH", "path": "/api/v2/organizations/org_acme/connections/con_saml",
                     "request_body": {"organization_access_level": "limited"}, "changes": [], "rules": []})).expect("json"),
    }
}

async fn run(store: Store, max_batch: usize) -> f64 {
    let log = Arc::new(
        AuditLog::start_with_batch(store, max_batch)
            .await
            .expect("audit log"),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..EVENTS).step_by(CONCURRENCY) {
                log.record(event(i)).await.expect("record");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

async fn postgres(schema: &str) -> Option<Store> {
    let base = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::PgPool::connect(&base).await.ok()?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    )))
    .execute(&pool)
    .await
    .ok()?;
    Store::open(&format!("{base}?options[search_path]={schema}"))
        .await
        .ok()
}

/// `audit verify` and `audit query` over a large log: `LARGE=1000000
/// cargo bench --bench audit` (rows are written directly, in batches).
async fn large(store: Store, n: usize, name: &str) {
    let started = Instant::now();
    let mut head = tollgate::audit::ChainHead::new(uuid::Uuid::now_v7().to_string());
    let opening = tollgate::audit::store::Opening {
        chain_id: head.chain_id.clone(),
        started_us: 0,
        host: "bench".into(),
    };
    let base = chrono::Utc::now() - chrono::Duration::hours(48);
    let mut i = 0;
    while i < n {
        let rows: Vec<_> = (i..(i + 5000).min(n))
            .map(|k| {
                let mut e = event(k);
                e.index.org_id = Some(format!("org_{}", k % 100));
                e.time = base + chrono::Duration::milliseconds((k as i64) * 172_800_000 / n as i64);
                head.link(&e)
            })
            .collect();
        let first = (i == 0).then_some(&opening);
        store.append_opening(&rows, first).await.expect("append");
        i += 5000;
    }
    let filled = started.elapsed();
    // Fresh statistics, as autovacuum would have them on a live database.
    if let Store::Postgres(pool) = &store {
        sqlx::query("ANALYZE audit_events")
            .execute(pool)
            .await
            .expect("analyze");
    }
    let started = Instant::now();
    let report = tollgate::audit::verify::verify(&store)
        .await
        .expect("verify");
    let verify = started.elapsed();
    assert!(report.ok() && report.events == n as u64, "{report:?}");
    let filter = tollgate::audit::query::Filter {
        org: Some("org_42".into()),
        since_us: Some((chrono::Utc::now() - chrono::Duration::hours(24)).timestamp_micros()),
        limit: 100,
        ..Default::default()
    };
    let started = Instant::now();
    let rows = tollgate::audit::query::exchanges(&store, &filter)
        .await
        .expect("query");
    let query = started.elapsed();
    assert_eq!(rows.len(), 100);
    println!(
        "{name:<10} {n} events: written in {filled:.1?}, verify {verify:.2?}, query org + last 24 h (100 rows) {query:.2?}"
    );
}

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs bench binaries with no arguments to check
    // them; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Ok(n) = std::env::var("LARGE") {
        let n: usize = n.parse().expect("LARGE is a number");
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("large.db").display());
        large(Store::open(&url).await.expect("sqlite"), n, "sqlite").await;
        if let Some(pg) = postgres("bench_large").await {
            large(pg, n, "postgres").await;
        }
        return;
    }
    println!(
        "audit append: {EVENTS} events from {CONCURRENCY} concurrent writers, each waiting for durability"
    );
    println!(
        "{:<10} {:>14} {:>14} {:>8}",
        "store", "batch=1 ev/s", "batch=256 ev/s", "ratio"
    );
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = |name: &str| {
        let url = format!("sqlite://{}", dir.path().join(name).display());
        async move { Store::open(&url).await.expect("sqlite") }
    };
    let single = run(sqlite("single.db").await, 1).await;
    let batched = run(sqlite("batched.db").await, 256).await;
    println!(
        "{:<10} {:>14.0} {:>14.0} {:>7.1}x",
        "sqlite",
        single,
        batched,
        batched / single
    );
    match (
        postgres("bench_single").await,
        postgres("bench_batched").await,
    ) {
        (Some(a), Some(b)) => {
            let single = run(a, 1).await;
            let batched = run(b, 256).await;
            println!(
                "{:<10} {:>14.0} {:>14.0} {:>7.1}x",
                "postgres",
                single,
                batched,
                batched / single
            );
        }
        _ => println!("postgres   (not reachable: set TOLLGATE_TEST_POSTGRES_URL)"),
    }
}
