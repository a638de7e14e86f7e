//! Metrics, readiness and traces.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tollgate::BoxBody;
use tollgate::admin::Admin;
use tollgate::sandbox::seed::*;
use tollgate::server::Handler;
use tollgate::upstream::Upstream;

use crate::harness::{Answer, Harness, item, start_sandbox};

async fn get(addr: SocketAddr, path: &str) -> Answer {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("answer");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn serve_admin(admin: Admin) -> SocketAddr {
    crate::harness::serve_on_port_0(admin).await
}

/// The running binary's own `/metrics` (no recorder shared with other
/// tests): the documented series, the sampled gauges, and a policy reload
/// on SIGHUP with no file changed (the directory watch alone would not
/// reload).
#[tokio::test]
async fn the_binary_serves_its_metrics_and_reloads_policies_on_sighup() {
    let (_, tenant) = start_sandbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    std::fs::write(
        policies.join("r.toml"),
        "[[rule]]\nid = \"saml-only\"\ndeny = 'connection.strategy == \"oidc\"'\nmessage = \"m\"\n",
    )
    .expect("write");
    let served = crate::harness::Served::start(
        dir.path(),
        &[],
        &[
            ("TOLLGATE_UPSTREAM_URL", format!("http://{tenant}")),
            (
                "TOLLGATE_AUDIT_URL",
                format!("sqlite://{}", dir.path().join("a.db").display()),
            ),
        ],
    )
    .await;
    let path = item();
    for _ in 0..2 {
        let a = served.patch(&path, r#"{"show_as_button":false}"#).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let a = served.patch(&path, r#"{"x":1}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // An ungoverned write: recorded (routes.other = audit), forwarded
    // without a judgement: `pass` in the metrics, under its operation in
    // the registry.
    let a = Harness::client_send(&served.addr, Method::POST, "/api/v2/roles", "{}").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let metrics = || async {
        String::from_utf8_lossy(&Harness::client_get(&served.admin, "/metrics").await.body)
            .into_owned()
    };
    let text = metrics().await;
    for series in [
        r#"tollgate_requests_total{operation="organization_connection.update",decision="allow",status="2xx"} 2"#,
        r#"tollgate_requests_total{operation="organization_connection.update",decision="invalid",status="4xx"} 1"#,
        r#"tollgate_requests_total{operation="role.create",decision="pass",status="4xx"} 1"#,
        "tollgate_request_duration_seconds_bucket{operation=\"organization_connection.update\",le=\"0.005\"}",
        "tollgate_upstream_duration_seconds_bucket",
        "tollgate_audit_write_duration_seconds_bucket",
        "tollgate_audit_batch_size_bucket",
        r#"tollgate_context_cache_total{result="hit"} 1"#,
        r#"tollgate_context_cache_total{result="miss"} 1"#,
        "# HELP tollgate_requests_total",
        "# TYPE tollgate_request_duration_seconds histogram",
        "# TYPE tollgate_runtime_alive_tasks gauge",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    for gauge in [
        "tollgate_runtime_alive_tasks",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{gauge} ")))
            .unwrap_or_else(|| panic!("no {gauge} in:\n{text}"))
            .parse()
            .expect("a number");
        assert!(value > 0.0, "{gauge} = {value}");
    }
    assert!(
        !text.contains("tollgate_policy_reloads_total"),
        "no reload yet"
    );
    crate::harness::send_signal(&served.child, "HUP");
    let reloaded = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if metrics()
                .await
                .contains(r#"tollgate_policy_reloads_total{result="success"} 1"#)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reloaded.is_ok(), "SIGHUP reloaded the policies");
    crate::harness::terminate(served.child).await;
}

on_both_backends! {
async fn readiness_follows_the_store_and_the_tenant(backend: Backend) {
    let h = Harness::setup().backend(backend).start().await;
    let (_, tenant) = start_sandbox().await;
    let upstream =
        Upstream::new(&format!("http://{tenant}"), Duration::from_secs(2), None).expect("upstream");
    let addr =
        serve_admin(Admin::new(h.store.clone(), h.policies.clone(), None).with_upstream(upstream))
            .await;
    let r = get(addr, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(get(addr, "/healthz").await.status, StatusCode::OK);

    // The store loses its log.
    let sql = sqlx::AssertSqlSafe("ALTER TABLE audit_events RENAME TO gone");
    match &h.store {
        tollgate::audit::Store::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        tollgate::audit::Store::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
    }
    .expect("rename");
    let r = get(addr, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["audit_store"], "unreachable");

    // A tenant nobody answers for.
    let (_reserved, dead_addr) = crate::harness::refused_address();
    let h2 = Harness::setup().backend(backend).start().await;
    let upstream = Upstream::new(&format!("http://{dead_addr}"), Duration::from_secs(2), None)
        .expect("upstream");
    let addr = serve_admin(
        Admin::new(h2.store.clone(), h2.policies.clone(), None).with_upstream(upstream),
    )
    .await;
    let r = get(addr, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["tenant"], "unreachable");
}
}

/// An OTLP/HTTP receiver: keeps every request body.
#[derive(Clone, Default)]
pub(crate) struct Collector(pub(crate) Arc<Mutex<Vec<Bytes>>>);

impl Handler for Collector {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path().to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        if path == "/v1/traces" {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(body);
        }
        Response::new(tollgate::full(Bytes::new()))
    }
}

/// The binary exports the exchange span and its stages over OTLP, and the
/// tenant receives the trace context.
#[tokio::test]
async fn traces_reach_an_otlp_collector_and_the_tenant() {
    let collector = Collector::default();
    let otlp = crate::harness::serve_on_port_0(collector.clone()).await;
    let (tenant, tenant_addr) = start_sandbox().await;
    let dir = tempfile::tempdir().expect("dir");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let served = crate::harness::Served::start(
        dir.path(),
        &[],
        &[
            ("TOLLGATE_POLICY_DIR", policies.display().to_string()),
            ("TOLLGATE_UPSTREAM_URL", format!("http://{tenant_addr}")),
            (
                "TOLLGATE_AUDIT_URL",
                format!("sqlite://{}", dir.path().join("a.db").display()),
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ],
    )
    .await;
    let (child, addr) = (served.child, served.addr);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::patch(format!(
        "http://{addr}/api/v2/organizations/{ORG_ACME}/connections/{CON_SAML}"
    ))
    .header("authorization", "Bearer t")
    .header("content-type", "application/json")
    .body(http_body_util::Full::new(Bytes::from_static(
        br#"{"show_as_button":false}"#,
    )))
    .expect("request");
    assert_eq!(
        client.request(req).await.expect("answer").status(),
        StatusCode::OK
    );

    let patch = tenant
        .received()
        .into_iter()
        .find(|r| r.method == Method::PATCH)
        .expect("patch");
    let traceparent = patch
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "{traceparent:?}"
    );

    crate::harness::terminate(child).await;
    let bodies = collector
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let all: Vec<u8> = bodies.iter().flat_map(|b| b.to_vec()).collect();
    let has = |s: &str| all.windows(s.len()).any(|w| w == s.as_bytes());
    for span in [
        "tollgate.exchange",
        "context.fetch",
        "policy.evaluate",
        "audit.write",
        "upstream.call",
        "tollgate",
    ] {
        assert!(has(span), "span {span} not exported");
    }
    // The trace the tenant saw is the exported one.
    let trace_id = hex::decode(&traceparent[3..35]).expect("hex");
    assert!(
        all.windows(16).any(|w| w == trace_id.as_slice()),
        "trace id not exported"
    );
    assert!(!has("hyper"), "HTTP-stack spans are not exported");
}

/// `--log-format json`: every line the running binary writes is one JSON
/// object, its fields at the top level (what log shippers index).
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("dir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--log-format", "json", "serve", "--sandbox"])
        .current_dir(dir.path())
        .env_clear()
        .env("TOLLGATE_LISTEN_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_ADDR", "127.0.0.1:0")
        .env(
            "TOLLGATE_AUDIT_URL",
            format!("sqlite://{}", dir.path().join("a.db").display()),
        )
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            // The sandbox's banner for people is not a log line.
            if !line.starts_with('{') {
                continue;
            }
            let event: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            seen.push(event.clone());
            if event["message"] == "tollgate listening" {
                return event;
            }
        }
        panic!("exited before listening: {seen:?}");
    })
    .await
    .expect("listening in time");
    assert_eq!(listening["level"], "INFO");
    assert!(listening["timestamp"].is_string(), "{listening}");
    assert!(
        listening["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{listening}"
    );
    assert!(seen.len() >= 2, "{seen:?}");
    crate::harness::send_signal(&child, "TERM");
    // What it writes while stopping is JSON too.
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("stopped in time");
    for line in rest.iter().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(child.wait().await.expect("wait").success());
}
