//! The admin listener: health, readiness and the token-protected API.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use serde_json::Value;
use tollgate::admin::Admin;
use tollgate::config::Secret;
use tollgate::sandbox::seed::*;

use crate::harness::{Answer, Harness};

const TOKEN: &str = "admin-s3cret";

async fn admin(h: &Harness) -> SocketAddr {
    let admin = Admin::new(
        h.store.clone(),
        h.policies.clone(),
        Some(Secret::new(TOKEN)),
    );
    crate::harness::serve_on_port_0(admin).await
}

async fn call(addr: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Answer {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("answer");
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

on_both_backends! {
async fn health_and_readiness_need_no_token(backend: Backend) {
    let h = Harness::setup().backend(backend).start().await;
    let addr = admin(&h).await;
    assert_eq!(
        call(addr, Method::GET, "/healthz", None).await.status,
        StatusCode::OK
    );
    let r = call(addr, Method::GET, "/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["audit_store"], "ok");
}
}

on_both_backends! {
async fn the_api_requires_the_token(backend: Backend) {
    let h = Harness::setup().backend(backend).start().await;
    let addr = admin(&h).await;
    for token in [None, Some("wrong"), Some("admin-s3cre")] {
        let r = call(addr, Method::GET, "/v1/exchanges", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(r.error_code(), "invalid_token");
    }
    // No token configured: the API is closed to everyone.
    let closed = Admin::new(h.store.clone(), h.policies.clone(), None);
    let closed_addr = crate::harness::serve_on_port_0(closed).await;
    let r = call(closed_addr, Method::GET, "/v1/policy", Some("")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
}

on_both_backends! {
    async fn exchanges_can_be_listed_filtered_and_shown(backend: Backend) {
        let h = Harness::setup().backend(backend).start().await;
        let addr = admin(&h).await;
        let a = h.patch(r#"{"show_as_button":false}"#).await;
        let b = h
            .patch_at(&format!("/api/v2/organizations/{ORG_GLOBEX}/connections/{CON_SAML}"), r#"{"show_as_button":false}"#)
            .await;
        assert_eq!(b.status, StatusCode::NOT_FOUND);
        h.audit.flush().await;
        let all = call(addr, Method::GET, "/v1/exchanges", Some(TOKEN)).await;
        assert_eq!(all.status, StatusCode::OK);
        assert_eq!(all.json().as_array().map(Vec::len), Some(2), "{backend:?}");
        let acme = call(
            addr,
            Method::GET,
            &format!("/v1/exchanges?org={ORG_ACME}&since=1h"),
            Some(TOKEN),
        )
        .await;
        let list = acme.json();
        assert_eq!(list.as_array().map(Vec::len), Some(1));
        assert_eq!(list[0]["exchange_id"], a.audit_id().as_str());
        assert_eq!(list[0]["status"], 200);
        let bad = call(addr, Method::GET, "/v1/exchanges?colour=red", Some(TOKEN)).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        // A window reaching back past the calendar: a 400, not a panic.
        let far = call(addr, Method::GET, "/v1/exchanges?since=99999999d", Some(TOKEN)).await;
        assert_eq!(far.status, StatusCode::BAD_REQUEST);
        assert_eq!(far.json()["errorCode"], "invalid_query_string");

        let one = call(
            addr,
            Method::GET,
            &format!("/v1/exchanges/{}", b.audit_id()),
            Some(TOKEN),
        )
        .await;
        assert_eq!(one.status, StatusCode::OK);
        let events = one.json()["events"].clone();
        assert_eq!(events.as_array().map(Vec::len), Some(2));
        assert_eq!(events[1]["event"]["data"]["status"], 404);
        let none = call(addr, Method::GET, "/v1/exchanges/nope", Some(TOKEN)).await;
        assert_eq!(none.status, StatusCode::NOT_FOUND);
    }
}

on_both_backends! {
async fn the_policy_can_be_read_and_reloaded(backend: Backend) {
    let h = Harness::setup().backend(backend).start().await;
    let addr = admin(&h).await;
    let p = call(addr, Method::GET, "/v1/policy", Some(TOKEN))
        .await
        .json();
    assert_eq!(p["rules"], Value::Array(vec![]));
    let empty_version = p["version"].clone();

    std::fs::write(
        h.policy_dir.path().join("r.toml"),
        "[[rule]]\nid = \"no-full-access\"\ndeny = 'after.organization_access_level == \"full\"'\nmessage = \"m\"\n",
    )
    .expect("write");
    let r = call(addr, Method::POST, "/v1/policy/reload", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["rules"][0]["id"], "no-full-access");
    assert_ne!(r.json()["version"], empty_version);
    let good = r.json()["version"].clone();

    std::fs::write(
        h.policy_dir.path().join("bad.toml"),
        "[[rule]]\nid = \"x\"\n",
    )
    .expect("write");
    let r = call(addr, Method::POST, "/v1/policy/reload", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.json()["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("bad.toml")
    );
    assert_eq!(r.json()["version"], good, "the last good set stays");
}
}
