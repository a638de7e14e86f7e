//! Requests that are not governed: forwarded unchanged, or refused under
//! `routes.other = "deny"`.

use http::{Method, StatusCode};
use tollgate::sandbox::seed::*;

use crate::harness::{Harness, TOKEN};

#[tokio::test]
async fn reads_pass_through_with_their_query() {
    let h = Harness::start().await;
    let a = h
        .send_with(
            Method::GET,
            "/api/v2/organizations?page=0&per_page=5",
            &[("authorization", TOKEN)],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json().as_array().map(Vec::len), Some(2));
    assert!(a.headers.contains_key("x-ratelimit-limit"));
    assert!(!a.audit_id().is_empty());
    let got = h.received();
    assert_eq!(got[0].target, "/api/v2/organizations?page=0&per_page=5");
    assert_eq!(got[0].headers["x-correlation-id"], a.audit_id().as_str());

    // A governed path read with GET is not governed.
    let a = h
        .send_with(
            Method::GET,
            &format!("/api/v2/organizations/{ORG_ACME}/connections/{CON_SAML}"),
            &[("authorization", TOKEN)],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["organization_access_level"], "readonly");
}

#[tokio::test]
async fn other_writes_are_forwarded_byte_for_byte() {
    let h = Harness::start().await;
    let body = b"{\"name\" : \"x\",\"name\":\"y\"}";
    let a = h
        .send_with(
            Method::PATCH,
            &format!("/api/v2/organizations/{ORG_ACME}"),
            &[
                ("authorization", TOKEN),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    // The sandbox does not implement organization updates: its 404 comes back.
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(&h.received()[0].body[..], body);
}

#[tokio::test]
async fn hop_by_hop_headers_and_client_correlation_ids_are_dropped() {
    let h = Harness::start().await;
    let a = h
        .send_with(
            Method::GET,
            "/api/v2/connections",
            &[
                ("authorization", TOKEN),
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("proxy-authorization", "Basic eDp5"),
                ("x-correlation-id", "forged"),
                ("auth0-client", "eyJuYW1lIjoibm9kZSJ9"),
            ],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let got = &h.received()[0];
    assert!(!got.headers.contains_key("x-private"));
    assert!(!got.headers.contains_key("proxy-authorization"));
    assert_eq!(got.headers["x-correlation-id"], a.audit_id().as_str());
    assert_eq!(got.headers["auth0-client"], "eyJuYW1lIjoibm9kZSJ9");
}

#[tokio::test]
async fn deny_refuses_everything_but_governed_calls() {
    let h = Harness::with_config("[routes]\nother = \"deny\"\n").await;
    let a = h
        .send_with(
            Method::GET,
            "/api/v2/organizations",
            &[("authorization", TOKEN)],
            b"",
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.error_code(), "tollgate_route_denied");
    assert!(h.received().is_empty());

    let a = h
        .send(
            Method::PATCH,
            &format!("/api/v2/organizations/{ORG_ACME}/connections/{CON_SAML}"),
            Some(r#"{"show_as_button":false}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.received().len(), 1);
}
