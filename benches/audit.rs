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
            decision: Some("allow".into()),
            rules: Vec::new(),
        },
        data: json!({"method": "PATCH", "path": "/api/v2/organizations/org_acme/connections/con_saml",
                     "request_body": {"organization_access_level": "limited"}, "changes": [], "rules": []}),
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

#[tokio::main]
async fn main() {
    // `cargo test --benches` runs bench binaries with no arguments to check
    // them; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
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
