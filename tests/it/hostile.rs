//! Hostile clients and an unwell tenant: slow connections, fan-out, secrets
//! in query strings, method case, lengths, tenant rate limits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tollgate::BoxBody;
use tollgate::audit::query;
use tollgate::sandbox::seed::*;
use tollgate::server::Handler;

use crate::harness::{Harness, Served, item, serve_on_port_0};
use crate::observability::Collector;

/// A connection to `addr` from the loopback address `from` (127.0.0.x).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source");
    socket.connect(addr).await.expect("connect")
}

/// Reads from `stream` until it closes or `within` passes; what was read.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_and_idle_clients_do_not_lock_out_a_normal_one() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let served = Served::start(
        dir.path(),
        &["--sandbox"],
        &[
            ("TOLLGATE_AUDIT_URL", db),
            ("TOLLGATE_POLICY_DIR", policies.display().to_string()),
            ("TOLLGATE_LIMITS_MAX_CONNECTIONS", "64".into()),
            ("TOLLGATE_LIMITS_MAX_CONNECTIONS_PER_IP", "16".into()),
            ("TOLLGATE_LIMITS_HEADER_TIMEOUT", "2s".into()),
            ("TOLLGATE_LIMITS_BODY_TIMEOUT", "1s".into()),
        ],
    )
    .await;
    let addr: SocketAddr = served.addr.parse().expect("addr");

    // A half-sent body is answered 408 at its deadline, and the connection
    // closed.
    let mut slow = connect_from([127, 0, 0, 9], addr).await;
    slow.write_all(
        format!(
            "PATCH {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
             Content-Type: application/json\r\nContent-Length: 39\r\n\r\n{{\"show",
            item()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let started = Instant::now();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("the half-sent body is dropped at its deadline");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Idle connections from 8 addresses, more than the cap, plus far more
    // than its share from one of them.
    let mut idle = Vec::new();
    for x in 2..10u8 {
        for _ in 0..16 {
            idle.push(connect_from([127, 0, 0, x], addr).await);
        }
    }
    for _ in 0..100 {
        idle.push(connect_from([127, 0, 0, 2], addr).await);
    }
    // Slow bodies from the same addresses keep exchanges busy.
    for x in 2..6u8 {
        let mut s = connect_from([127, 0, 0, x], addr).await;
        let _ = s
            .write_all(
                format!(
                    "PATCH {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
                     Content-Type: application/json\r\nContent-Length: 39\r\n\r\n{{",
                    item()
                )
                .as_bytes(),
            )
            .await;
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let a = served.patch(&item(), r#"{"show_as_button":false}"#).await;
        worst = worst.max(started.elapsed());
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
    }
    // Locked out, it would wait for a slot made at the 2 s header
    // deadline at best; served, it takes milliseconds (1.5 s leaves a
    // loaded machine room without letting the lock-out through).
    assert!(
        worst < Duration::from_millis(1500),
        "a normal client waited {worst:?}"
    );

    // A connection that never finishes its headers is closed at the deadline.
    let mut partial = connect_from([127, 0, 0, 1], addr).await;
    partial
        .write_all(b"GET /api/v2/organizations HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(
        read_until_closed(&mut partial, Duration::from_secs(5))
            .await
            .is_some(),
        "closed at the header deadline"
    );
    drop(idle);
    crate::harness::terminate(served.child).await;
}

/// A query string's values never reach the database, the log or the spans.
#[tokio::test]
async fn query_string_values_are_never_recorded() {
    let collector = Collector::default();
    let otlp = serve_on_port_0(collector.clone()).await;
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let served = Served::start(
        dir.path(),
        &["--sandbox"],
        &[
            ("TOLLGATE_AUDIT_URL", db.clone()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ],
    )
    .await;
    let secrets = [
        "eyJSECRETgoverned",
        "SECRETclientsecret",
        "SECRETread",
        "SECRETbare",
    ];
    let governed = served
        .patch(
            &format!("{}?access_token={}", item(), secrets[0]),
            r#"{"show_as_button":false}"#,
        )
        .await;
    assert_eq!(governed.status, StatusCode::BAD_REQUEST);
    let token = Harness::client_send(
        &served.addr,
        Method::POST,
        &format!("/oauth/token?client_secret={}", secrets[1]),
        r#"{"grant_type":"client_credentials"}"#,
    )
    .await;
    assert_ne!(
        token.status,
        StatusCode::BAD_REQUEST,
        "ungoverned: forwarded"
    );
    let read = Harness::client_get(
        &served.addr,
        &format!("/api/v2/organizations?q={}&{}", secrets[2], secrets[3]),
    )
    .await;
    assert_eq!(
        read.status,
        StatusCode::UNAUTHORIZED,
        "forwarded, without a token"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = served.log();
    crate::harness::terminate(served.child).await;

    let (exchanges, recorded) = crate::harness::stored_events(&db).await;
    assert!(
        exchanges >= 2,
        "the refusal and the ungoverned write are recorded"
    );
    assert!(recorded.contains("access_token=<redacted>"), "{recorded}");
    assert!(recorded.contains("client_secret=<redacted>"), "{recorded}");
    let spans: Vec<u8> = collector
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .flat_map(|b| b.to_vec())
        .collect();
    assert!(!spans.is_empty(), "spans were exported");
    for secret in secrets {
        assert!(!recorded.contains(secret), "{secret} in the audit log");
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(
            !spans.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the spans"
        );
    }
}

#[tokio::test]
async fn method_case_variants_are_never_forwarded_unjudged() {
    let h = Harness::start().await;
    for (method, path) in [
        ("post", "/api/v2/organizations".to_owned()),
        (
            "Post",
            format!("/api/v2/self-service-profiles/{SELF_SERVICE_PROFILE}/sso-ticket"),
        ),
        ("PUT", "/api/v2/organizations".to_owned()),
        ("patch", item()),
    ] {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let a = h.send(m, &path, Some(r#"{"name":"x"}"#)).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(a.error_code(), "method_not_allowed");
    }
    assert!(h.received().is_empty(), "nothing reached the tenant");
}

#[tokio::test]
async fn array_elements_are_bounded_and_lookups_deduplicated() {
    // A rule that reads the organization: every element needs it.
    let rule = "[[rule]]\nid = \"known-orgs\"\ndeny = 'org.name == null'\nmessage = \"unknown organization\"\n";
    let h = Harness::with_rule(
        "[limits]\nmax_elements = 50\n[context]\ncache_ttl = \"0s\"\n",
        rule,
    )
    .await;
    let ticket = format!("/api/v2/self-service-profiles/{SELF_SERVICE_PROFILE}/sso-ticket");
    let body = |ids: Vec<String>| {
        let orgs: Vec<Value> = ids
            .into_iter()
            .map(|id| json!({"organization_id": id}))
            .collect();
        json!({"connection_id": CON_SAML, "enabled_organizations": orgs}).to_string()
    };
    let distinct = |n: usize| (0..n).map(|i| format!("org_{i}")).collect::<Vec<_>>();
    let over = h
        .send(Method::POST, &ticket, Some(&body(distinct(51))))
        .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.json()["field"], "/enabled_organizations");
    assert!(
        over.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("limits.max_elements"),
        "{}",
        over.json()
    );
    assert!(h.received().is_empty(), "zero tenant calls");

    // An organization named twice (in any case) is refused: each element
    // would be judged alone.
    let twice = h
        .send(
            Method::POST,
            &ticket,
            Some(&body(vec![ORG_ACME.into(), ORG_ACME.to_uppercase()])),
        )
        .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        twice.json()["field"],
        "/enabled_organizations/1/organization_id"
    );
    assert!(h.received().is_empty(), "zero tenant calls");

    let at = h
        .send(
            Method::POST,
            &ticket,
            Some(&body(vec![ORG_ACME.into(), ORG_GLOBEX.into()])),
        )
        .await;
    assert_eq!(
        at.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&at.body)
    );
    // Two organizations looked up once each (before the lock, reused for
    // the rules), and the ticket itself.
    let calls = h.received().len();
    assert_eq!(calls, 3, "one lookup per organization");
}

/// A tenant out of rate limit: every call is answered 429.
#[derive(Clone)]
struct Exhausted;

impl Handler for Exhausted {
    async fn handle(&self, _req: Request<Incoming>) -> Response<BoxBody> {
        let body = json!({"statusCode": 429, "error": "Too Many Requests",
                          "message": "Global limit has been reached", "errorCode": "too_many_requests"});
        let mut resp = Response::new(tollgate::full(Bytes::from(body.to_string())));
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let h = resp.headers_mut();
        h.insert("content-type", "application/json".parse().expect("value"));
        h.insert("x-ratelimit-limit", "50".parse().expect("value"));
        h.insert("x-ratelimit-remaining", "0".parse().expect("value"));
        h.insert("x-ratelimit-reset", "1796000000".parse().expect("value"));
        h.insert("retry-after", "3".parse().expect("value"));
        resp
    }
}

#[tokio::test]
async fn a_tenant_429_during_a_lookup_reaches_the_caller_as_429() {
    let tenant = serve_on_port_0(Exhausted).await;
    let rule = "[[rule]]\nid = \"no-full-access\"\ndeny = 'after.organization_access_level == \"full\"'\nmessage = \"m\"\n";
    let h = Harness::setup()
        .rule(rule)
        .upstream(
            &format!("http://{tenant}"),
            tollgate::sandbox::Sandbox::new(),
        )
        .start()
        .await;
    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "3");
    assert_eq!(a.headers["x-ratelimit-remaining"], "0");
    assert_eq!(a.headers["x-ratelimit-reset"], "1796000000");
    assert_eq!(a.json()["statusCode"], 429);
    h.audit.flush().await;
    let evs = query::show(&h.store, &a.audit_id()).await.expect("show");
    assert_eq!(evs[0]["event"]["decision"], "unavailable", "not a denial");
    assert_eq!(
        evs[0]["event"]["data"]["error"]["errorCode"],
        "tenant_rate_limited"
    );
}

/// A tenant with large answers (`GET /api/v2/big`, 8 MiB; `/huge`, 32 MiB) and the
/// sandbox behind everything else.
#[derive(Clone)]
struct Big(tollgate::sandbox::Sandbox);

impl Handler for Big {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        if req.uri().path() == "/api/v2/big" {
            return Response::new(tollgate::full(Bytes::from(vec![b'x'; 8 << 20])));
        }
        if req.uri().path() == "/api/v2/huge" {
            return Response::new(tollgate::full(Bytes::from(vec![b'x'; 32 << 20])));
        }
        self.0.handle(req).await
    }
}

/// Clients that stop reading their answers (HTTP/1 and HTTP/2) cannot hold
/// the gateway's slots: at the cap they are dropped to make room, and an
/// idle HTTP/2 connection is closed at the header deadline.
#[tokio::test]
async fn clients_that_stop_reading_do_not_hold_the_slots() {
    let tenant = serve_on_port_0(Big(tollgate::sandbox::Sandbox::new())).await;
    let (served, _dir, _db) = Served::in_front_of(
        tenant,
        &[
            ("TOLLGATE_LIMITS_MAX_CONNECTIONS", "3"),
            ("TOLLGATE_LIMITS_HEADER_TIMEOUT", "2s"),
        ],
    )
    .await;
    let addr: SocketAddr = served.addr.parse().expect("addr");
    // HTTP/1: a large answer asked for and never read.
    let mut h1 = connect_from([127, 0, 0, 2], addr).await;
    h1.write_all(b"GET /api/v2/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n")
        .await
        .expect("write");
    // HTTP/2 (prior knowledge): the same, its stream never read.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let stalled = h2
        .request(
            Request::get(format!("http://{addr}/api/v2/big"))
                .header("authorization", "Bearer t")
                .body(http_body_util::Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("answer head");
    // One more that sends nothing at all.
    let _silent = connect_from([127, 0, 0, 3], addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let started = Instant::now();
        let a = served.patch(&item(), r#"{"show_as_button":false}"#).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "waited {:?}",
            started.elapsed()
        );
    }
    // An HTTP/2 connection left idle is closed at the header deadline.
    let idle = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Full<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(idle),
        )
        .await
        .expect("h2 handshake");
    let closed = tokio::spawn(connection);
    let _ = sender.ready().await;
    let ended = tokio::time::timeout(Duration::from_secs(6), closed).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was closed");
    drop(stalled);
    crate::harness::terminate(served.child).await;
}

/// An SSO ticket is a bearer credential: the append-only log keeps its URL
/// without the ticket, and indexes the exchange by the organization.
#[tokio::test]
async fn sso_tickets_are_not_kept_in_the_log() {
    let h = Harness::start().await;
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/self-service-profiles/{SELF_SERVICE_PROFILE}/sso-ticket"),
            Some(&json!({"enabled_organizations": [{"organization_id": ORG_ACME}]}).to_string()),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let ticket = a.json()["ticket"].as_str().unwrap_or_default().to_owned();
    let secret = ticket.split("ticket=").nth(1).expect("a ticket").to_owned();
    h.audit.flush().await;
    let rows = h.store.exchange_events(&a.audit_id()).await.expect("rows");
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(!r.body.contains(&secret), "{}", r.body);
        assert_eq!(r.index.org_id.as_deref(), Some(ORG_ACME));
    }
    assert!(
        rows[1].body.contains("ticket=<redacted>"),
        "{}",
        rows[1].body
    );
}

/// A client that reads a long answer slowly, but steadily, keeps its
/// connection: taking parts of the answer is activity.
#[tokio::test]
async fn an_honest_slow_reader_is_not_cut() {
    let tenant = serve_on_port_0(Big(tollgate::sandbox::Sandbox::new())).await;
    let (served, _dir, _db) =
        Served::in_front_of(tenant, &[("TOLLGATE_LIMITS_HEADER_TIMEOUT", "1s")]).await;
    let addr: SocketAddr = served.addr.parse().expect("addr");
    let mut reader = connect_from([127, 0, 0, 1], addr).await;
    reader
        .write_all(b"GET /api/v2/huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => total += n,
            Ok(Err(_)) => break,
        }
        // About 6 MB/s: the whole answer (more than the socket buffers
        // hold) takes longer than the deadline and its grace together.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(total > 32 << 20, "read {total} bytes of a 32 MiB answer");
    crate::harness::terminate(served.child).await;
}

/// The sandbox, each of its GETs taking 50 ms; counts how many it has in
/// hand at once.
#[derive(Clone)]
struct Lookups {
    sandbox: tollgate::sandbox::Sandbox,
    now: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Handler for Lookups {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        use std::sync::atomic::Ordering::SeqCst;
        if req.method() != Method::GET {
            return self.sandbox.handle(req).await;
        }
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(n, SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let resp = self.sandbox.handle(req).await;
        self.now.fetch_sub(1, SeqCst);
        resp
    }
}

/// SSO tickets for 30 organizations each, `n` at once, through a gateway
/// with `upstream.max_concurrent_lookups = limit`; the most lookups the
/// tenant had in hand at once.
async fn peak_lookups(limit: usize, n: usize) -> usize {
    let sandbox = tollgate::sandbox::Sandbox::new();
    sandbox.add_organizations(30, 0);
    let lookups = Lookups {
        sandbox: sandbox.clone(),
        now: Default::default(),
        peak: Default::default(),
    };
    let addr = serve_on_port_0(lookups.clone()).await;
    let rule = "[[rule]]\nid = \"known-orgs\"\ndeny = 'org.name == null'\nmessage = \"unknown organization\"\n";
    let h = Harness::setup()
        .config(&format!(
            "[upstream]\nmax_concurrent_lookups = {limit}\n[context]\ncache_ttl = \"0s\"\n"
        ))
        .rule(rule)
        .tenant_at(addr, sandbox)
        .start()
        .await;
    let ticket = format!("/api/v2/self-service-profiles/{SELF_SERVICE_PROFILE}/sso-ticket");
    let orgs: Vec<Value> = (0..30)
        .map(|i| json!({"organization_id": format!("org_scan_{i:04}")}))
        .collect();
    let body = json!({"connection_id": CON_SAML, "enabled_organizations": orgs}).to_string();
    // One ticket alone first: the tenant accepts the caller's credential,
    // which then has the whole budget (an unproven one gets a quarter).
    let proven = h.send(Method::POST, &ticket, Some(&body)).await;
    assert_eq!(proven.status, StatusCode::CREATED);
    lookups.peak.store(0, std::sync::atomic::Ordering::SeqCst);
    let answers =
        futures_util::future::join_all((0..n).map(|_| h.send(Method::POST, &ticket, Some(&body))))
            .await;
    for a in &answers {
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
    }
    lookups.peak.load(std::sync::atomic::Ordering::SeqCst)
}

/// A request's lookups run at most 8 at once, and all requests' at most
/// `upstream.max_concurrent_lookups`: one caller's large array cannot
/// take the tenant's whole rate limit at once, nor many callers together.
#[tokio::test]
async fn lookups_are_bounded_per_request_and_overall() {
    let one = peak_lookups(64, 1).await;
    assert!((2..=8).contains(&one), "one request: {one} lookups at once");
    let many = peak_lookups(4, 3).await;
    assert!(
        (2..=4).contains(&many),
        "three requests, a limit of 4: {many} at once"
    );
}
