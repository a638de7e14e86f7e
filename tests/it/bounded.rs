//! Bounded work for every client: what a caller leaves behind when it
//! resets its streams or hangs up, and what failing token and key
//! endpoints cost, stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tollgate::BoxBody;
use tollgate::audit::query;
use tollgate::sandbox::Sandbox;
use tollgate::sandbox::seed::*;
use tollgate::server::{self, Handler};

use crate::harness::{Harness, Served, TOKEN, item};

/// What the token endpoint and the JWKS do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// 500.
    Fail,
    /// 429 with `Retry-After: 30`.
    Limited,
    /// Answers after this long.
    Slow(Duration),
}

/// The sandbox behind a token endpoint and a JWKS that fail as told, and a
/// `GET /api/v2/clients` that takes 2 s; counts what reached each.
#[derive(Clone)]
struct Faulty {
    sandbox: Sandbox,
    fault: Arc<std::sync::Mutex<Fault>>,
    auth_calls: Arc<AtomicUsize>,
    /// Reads of `/api/v2/clients` in progress at the tenant.
    slow_reads: Arc<AtomicUsize>,
    /// Reads that ever reached the tenant.
    arrived_reads: Arc<AtomicUsize>,
    /// Reads the tenant answered (not cancelled before their 2 s were up).
    answered_reads: Arc<AtomicUsize>,
}

impl Faulty {
    fn new(sandbox: Sandbox) -> Faulty {
        Faulty {
            sandbox,
            fault: Arc::new(std::sync::Mutex::new(Fault::None)),
            auth_calls: Arc::new(AtomicUsize::new(0)),
            slow_reads: Arc::new(AtomicUsize::new(0)),
            arrived_reads: Arc::new(AtomicUsize::new(0)),
            answered_reads: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().expect("fault") = fault;
    }

    async fn serve(&self) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(server::serve(
            listener,
            Arc::new(self.clone()),
            4096,
            std::future::pending(),
        ));
        addr
    }
}

fn answer(status: StatusCode, headers: &[(&str, &str)]) -> Response<BoxBody> {
    let body = json!({"statusCode": status.as_u16(), "error": "fault", "message": "fault"});
    let mut r = Response::new(tollgate::full(bytes::Bytes::from(body.to_string())));
    *r.status_mut() = status;
    for (k, v) in headers {
        r.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    r
}

/// Counts a slow read while it is in progress at the tenant.
struct InProgress(Arc<AtomicUsize>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler for Faulty {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path().to_owned();
        if path == "/api/v2/clients" {
            self.slow_reads.fetch_add(1, Ordering::SeqCst);
            self.arrived_reads.fetch_add(1, Ordering::SeqCst);
            let _counted = InProgress(self.slow_reads.clone());
            // A tenant stops working for a client that closed its
            // connection (this one is served by tollgate's own server,
            // which tells it so).
            let hangup = req.extensions().get::<server::Hangup>().cloned();
            let hangup = hangup.unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                () = hangup.left() => return answer(StatusCode::BAD_GATEWAY, &[]),
            }
            self.answered_reads.fetch_add(1, Ordering::SeqCst);
            return self.sandbox.handle(req).await;
        }
        if path == "/oauth/token" || path == "/.well-known/jwks.json" {
            self.auth_calls.fetch_add(1, Ordering::SeqCst);
            let fault = *self.fault.lock().expect("fault");
            match fault {
                Fault::None => {}
                Fault::Fail => return answer(StatusCode::INTERNAL_SERVER_ERROR, &[]),
                Fault::Limited => {
                    return answer(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "30")]);
                }
                Fault::Slow(d) => tokio::time::sleep(d).await,
            }
        }
        self.sandbox.handle(req).await
    }
}

/// A sample of the served binary's own gauges.
async fn gauges(served: &Served) -> (f64, f64, f64) {
    let text = Harness::client_get(&served.admin, "/metrics").await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{text}"))
    };
    (
        value("tollgate_runtime_alive_tasks"),
        value("process_open_fds"),
        value("process_resident_memory_bytes"),
    )
}

/// One h2c connection: 200 streams that start a slow read, each reset once
/// the tenant has the reads in hand, again and again until thousands were
/// reset. The reads are cancelled with their streams: the tenant never has
/// more than a connection's worth in progress, the process stays within a
/// few hundred tasks and descriptors, and another client is still served.
///
/// Bounded by counts, not by the machine's speed: the flood runs until it
/// has reset 2,000 started streams and been sent away at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_started_streams_leaves_no_work_behind() {
    let faulty = Faulty::new(Sandbox::new());
    let tenant = faulty.serve().await;
    let dir = tempfile::tempdir().expect("dir");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let served = Served::start(
        dir.path(),
        &[],
        &[
            ("TOLLGATE_UPSTREAM_URL", format!("http://{tenant}")),
            (
                "TOLLGATE_AUDIT_URL",
                format!("sqlite://{}", dir.path().join("a.db").display()),
            ),
            ("TOLLGATE_POLICY_DIR", policies.display().to_string()),
        ],
    )
    .await;
    let (tasks_before, fds_before, _) = gauges(&served).await;
    let addr = served.addr.clone();
    let arrived = faulty.arrived_reads.clone();
    let flood = tokio::spawn(async move {
        let give_up = Instant::now() + Duration::from_secs(60);
        let (mut reset, mut goaways) = (0usize, 0usize);
        while (reset < 2000 || goaways == 0) && Instant::now() < give_up {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let Ok((client, conn)) = h2::client::handshake(tcp).await else {
                goaways += 1;
                continue;
            };
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut client = client;
            'conn: while (reset < 2000 || goaways == 0) && Instant::now() < give_up {
                let before = arrived.load(Ordering::SeqCst);
                let mut streams = Vec::with_capacity(200);
                for _ in 0..200 {
                    let Ok(ready) = client.clone().ready().await else {
                        goaways += 1;
                        break 'conn;
                    };
                    client = ready;
                    let req = Request::get(format!("http://{addr}/api/v2/clients"))
                        .header("authorization", TOKEN)
                        .body(())
                        .expect("request");
                    match client.send_request(req, true) {
                        Ok(s) => streams.push(s),
                        Err(_) => {
                            goaways += 1;
                            break 'conn;
                        }
                    }
                }
                // Started: half of this round's reads reached the tenant
                // (or a second has gone by, if this connection is being
                // sent away).
                let started = Instant::now() + Duration::from_secs(1);
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if arrived.load(Ordering::SeqCst) >= before + 100 || Instant::now() >= started {
                        break;
                    }
                }
                for (resp, mut stream) in streams {
                    stream.send_reset(h2::Reason::CANCEL);
                    drop(resp);
                    reset += 1;
                }
            }
        }
        (reset, goaways)
    });
    // Meanwhile another client's reads, and the process's gauges.
    let mut worst = Duration::ZERO;
    let mut peak = (0.0f64, 0.0f64, 0.0f64);
    while !flood.is_finished() {
        let started = Instant::now();
        let a = Harness::client_get_with(&served.addr, "/api/v2/organizations", TOKEN).await;
        assert_eq!(a.status, StatusCode::OK);
        worst = worst.max(started.elapsed());
        let g = gauges(&served).await;
        peak = (peak.0.max(g.0), peak.1.max(g.1), peak.2.max(g.2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (reset, goaways) = flood.await.expect("join");
    assert!(reset >= 2000, "the flood ran: {reset} streams reset");
    assert!(
        peak.0 < tasks_before + 600.0,
        "tasks {tasks_before} → {}",
        peak.0
    );
    assert!(
        peak.1 < fds_before + 300.0,
        "descriptors {fds_before} → {}",
        peak.1
    );
    assert!(peak.2 < 150.0 * 1024.0 * 1024.0, "RSS {} bytes", peak.2);
    // Served, and not behind the flood's 2 s reads (the time itself is
    // the machine's: the load benchmark measures it, not this test).
    assert!(
        worst < Duration::from_secs(2),
        "another client waited {worst:?}"
    );
    // Nothing keeps running at the tenant for callers who left: each read
    // was reset within a second of reaching it and takes two, so a read
    // the tenant answered is one tollgate went on with after its caller
    // left (without cancellation, every one of them).
    let settle = Instant::now() + Duration::from_secs(10);
    while faulty.slow_reads.load(Ordering::SeqCst) > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(faulty.slow_reads.load(Ordering::SeqCst), 0);
    let arrived = faulty.arrived_reads.load(Ordering::SeqCst);
    let answered = faulty.answered_reads.load(Ordering::SeqCst);
    assert!(
        // Hundreds reach it (the rest are reset before they do, more so
        // on a loaded machine).
        arrived >= 200 && answered * 10 < arrived,
        "{answered} of the {arrived} reads that reached the tenant were carried on to their answer"
    );
    let metrics = Harness::client_get(&served.admin, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("tollgate_abandoned_exchanges_total"),
        "{text}"
    );
    assert!(
        goaways >= 1,
        "a connection that keeps resetting started streams is closed"
    );
    crate::harness::terminate(served.child).await;
}

/// A governed change whose caller hangs up while tollgate reads the
/// tenant's context: recorded as abandoned, never forwarded.
#[tokio::test]
async fn a_change_whose_caller_left_before_the_forward_is_abandoned() {
    let h = Harness::setup()
        .rule("[[rule]]\nid = \"no-full\"\ndeny = 'after.organization_access_level == \"full\"'\nmessage = \"m\"\n")
        .start()
        .await;
    h.tenant
        .set_latencies(Duration::from_millis(800), Duration::from_millis(1));
    let body = r#"{"show_as_button":false}"#;
    let request = format!(
        "PATCH {} HTTP/1.1\r\nhost: x\r\nauthorization: {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        item(),
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    // The exchange is reading `before` from the slow tenant: hang up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        h.audit.flush().await;
        let rows = query::exchanges(
            &h.store,
            &query::Filter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("query");
        if let Some(row) = rows.into_iter().next() {
            break row;
        }
        assert!(Instant::now() < deadline, "nothing recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        row.decision,
        Some(tollgate::policy::Decision::Abandoned),
        "{row:?}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        h.forwarded(Method::PATCH),
        0,
        "nothing forwarded for a caller who left"
    );
}

fn broker_config(key: &str, timeout: &str) -> String {
    format!(
        "[upstream]\ntimeout = \"{timeout}\"\n[identity]\nmode = \"broker\"\nclient_id = \"m2m\"\nclient_secret = \"s\"\n[[identity.keys]]\nname = \"ci\"\nhash = \"sha256:{}\"\n",
        tollgate::identity::fingerprint(key)
    )
}

/// 50 concurrent callers at a time against a token endpoint that fails,
/// is rate-limited, or stalls.
async fn fifty(h: &Arc<Harness>, key: &str) -> Vec<(StatusCode, Duration)> {
    let mut all = Vec::new();
    for _ in 0..50 {
        let (h, auth) = (h.clone(), format!("Bearer {key}"));
        all.push(tokio::spawn(async move {
            let started = Instant::now();
            let a = h.patch_as(&auth, br#"{"show_as_button":false}"#).await;
            (a.status, started.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in all {
        out.push(t.await.expect("join"));
    }
    out
}

#[tokio::test]
async fn a_failing_token_endpoint_is_asked_once_for_every_waiting_caller() {
    let (key, _) = tollgate::identity::new_key();
    let faulty = Faulty::new(Sandbox::new());
    let addr = faulty.serve().await;
    let h = Arc::new(
        Harness::setup()
            .config(&broker_config(&key, "2s"))
            .tenant_at(addr, faulty.sandbox.clone())
            .start()
            .await,
    );
    // Failing: one request for all 50, and none again within the back-off.
    faulty.set(Fault::Fail);
    let answers = fifty(&h, &key).await;
    assert_eq!(
        faulty.auth_calls.load(Ordering::SeqCst),
        1,
        "one token request"
    );
    assert!(
        answers.iter().all(|(s, _)| s.is_server_error()),
        "{answers:?}"
    );
    let again = fifty(&h, &key).await;
    assert_eq!(
        faulty.auth_calls.load(Ordering::SeqCst),
        1,
        "within the back-off"
    );
    assert!(
        again
            .iter()
            .all(|(s, d)| *s == StatusCode::SERVICE_UNAVAILABLE && *d < Duration::from_secs(1)),
        "503 at once: {again:?}"
    );
    // A 429's Retry-After is honoured (30 s here): not asked again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    faulty.set(Fault::Limited);
    fifty(&h, &key).await;
    assert_eq!(faulty.auth_calls.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    fifty(&h, &key).await;
    assert_eq!(
        faulty.auth_calls.load(Ordering::SeqCst),
        2,
        "Retry-After: 30 holds"
    );
    assert_eq!(h.forwarded(Method::PATCH), 0);
}

#[tokio::test]
async fn a_stalled_token_endpoint_answers_every_caller_within_one_timeout() {
    let (key, _) = tollgate::identity::new_key();
    let faulty = Faulty::new(Sandbox::new());
    let addr = faulty.serve().await;
    let h = Arc::new(
        Harness::setup()
            .config(&broker_config(&key, "1s"))
            .tenant_at(addr, faulty.sandbox.clone())
            .start()
            .await,
    );
    faulty.set(Fault::Slow(Duration::from_secs(30)));
    let answers = fifty(&h, &key).await;
    assert_eq!(
        faulty.auth_calls.load(Ordering::SeqCst),
        1,
        "one token request"
    );
    for (status, took) in &answers {
        assert!(status.is_server_error(), "{status}");
        // One upstream.timeout (1 s), and the time to answer.
        assert!(
            *took < Duration::from_millis(1900),
            "a caller waited {took:?}"
        );
    }
    // The endpoint recovers: the callers who were answered are gone, and
    // nothing of theirs reaches the tenant.
    faulty.set(Fault::None);
    // Past the failed attempt's back-off (2 s after it timed out).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.forwarded(Method::PATCH), 0);
    let later = h
        .patch_as(&format!("Bearer {key}"), br#"{"show_as_button":false}"#)
        .await;
    assert_eq!(later.status, StatusCode::OK, "{later:?}");
}

#[tokio::test]
async fn a_failing_jwks_is_fetched_once_per_min_refresh() {
    let faulty = Faulty::new(Sandbox::new());
    let addr = faulty.serve().await;
    let h = Arc::new(
        Harness::setup()
            .config("[identity]\nverify = true\njwks_min_refresh = \"30s\"\n")
            .tenant_at(addr, faulty.sandbox.clone())
            .start()
            .await,
    );
    faulty.set(Fault::Fail);
    // A token naming a key: its signature is never checked, the keys
    // cannot be had.
    use base64::Engine;
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let token = format!(
        "Bearer {}.{}.c2ln",
        enc(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
        enc(br#"{"sub":"x"}"#)
    );
    let mut all = Vec::new();
    for _ in 0..50 {
        let (h, token) = (h.clone(), token.clone());
        all.push(tokio::spawn(async move {
            h.patch_as(&token, br#"{"show_as_button":false}"#)
                .await
                .status
        }));
    }
    for t in all {
        assert_eq!(t.await.expect("join"), StatusCode::SERVICE_UNAVAILABLE);
    }
    for _ in 0..20 {
        let a = h.patch_as(&token, br#"{"show_as_button":false}"#).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        faulty.auth_calls.load(Ordering::SeqCst),
        1,
        "one JWKS fetch"
    );
    let _ = (ORG_ACME, item());
}

/// A raw HTTP/1.1 PATCH of the seed association, `body` sent as is after a
/// `content-length` of `declared`.
fn raw_patch(body: &str, declared: usize) -> String {
    format!(
        "PATCH {} HTTP/1.1\r\nhost: x\r\nauthorization: {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n{body}",
        item()
    )
}

/// A caller who leaves while its decision is being written (a store slow
/// to commit): the decision is on record, its outcome says it was not
/// forwarded, and nothing reaches the tenant.
#[tokio::test]
async fn a_caller_who_leaves_while_the_decision_is_written_is_not_forwarded() {
    let dir = tempfile::tempdir().expect("dir");
    let store =
        crate::harness::fresh_store_url(crate::harness::Backend::Postgres, dir.path()).await;
    let schema = store
        .split("options[search_path]=")
        .nth(1)
        .expect("schema")
        .to_owned();
    let h = Harness::setup()
        .store_url(&format!("{store}&application_name=leaves-mid-record"))
        .start()
        .await;
    let admin = sqlx::PgPool::connect(&crate::harness::postgres_base_url())
        .await
        .expect("postgres");
    let mut blocker = admin.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {schema}.audit_events IN SHARE MODE"
    )))
    .execute(&mut *blocker)
    .await
    .expect("lock");
    let body = r#"{"show_as_button":false}"#;
    let mut tcp = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    tcp.write_all(raw_patch(body, body.len()).as_bytes())
        .await
        .expect("write");
    // The decision waits on the table: the caller hangs up.
    crate::harness::until_a_commit_waits(&admin, "leaves-mid-record").await;
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.rollback().await.expect("release");
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        h.audit.flush().await;
        let rows = query::exchanges(
            &h.store,
            &query::Filter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("query");
        if let Some(row) = rows.into_iter().find(|r| r.outcome != "unknown") {
            break row.exchange_id;
        }
        assert!(Instant::now() < deadline, "no outcome recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events = query::show(&h.store, &id).await.expect("show");
    assert_eq!(events[0]["event"]["decision"], "allow");
    assert_eq!(
        events[1]["event"]["data"]["error"]["kind"], "abandoned",
        "{events:?}"
    );
    assert_eq!(
        h.forwarded(Method::PATCH),
        0,
        "nothing forwarded for a caller who left"
    );
}

/// A caller who leaves halfway through its body is recorded as having
/// left, not as having sent a malformed body.
#[tokio::test]
async fn a_caller_who_leaves_mid_body_is_abandoned_not_invalid() {
    let h = Harness::start().await;
    let mut tcp = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    tcp.write_all(raw_patch(r#"{"show_as_bu"#, 100).as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        h.audit.flush().await;
        let rows = query::exchanges(
            &h.store,
            &query::Filter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("query");
        if let Some(row) = rows.into_iter().next() {
            break row;
        }
        assert!(Instant::now() < deadline, "nothing recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        row.decision,
        Some(tollgate::policy::Decision::Abandoned),
        "{row:?}"
    );
    assert_eq!(h.forwarded(Method::PATCH), 0);
}
