//! Every trick of DESIGN §2 for slipping a change past the gateway: each is
//! refused in the tenant's error shape and the tenant receives nothing (or
//! exactly the judged request).

use http::{Method, StatusCode};
use tollgate::sandbox::seed::*;

use crate::harness::{Answer, Harness, TOKEN, item};

fn assert_refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{a:?}");
    let j = a.json();
    assert_eq!(j["statusCode"], status.as_u16());
    assert_eq!(j["errorCode"], code, "{j}");
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(j["audit_id"], a.audit_id().as_str());
}

#[tokio::test]
async fn dangerous_paths_are_refused() {
    let h = Harness::start().await;
    let body = Some(r#"{"organization_access_level":"full"}"#);
    for path in [
        format!("/api/v2/organizations/{ORG_ACME}%2Fconnections/{CON_SAML}"),
        format!("/api/v2/organizations/{ORG_ACME}%2fconnections%2f{CON_SAML}"),
        format!("/api/v2/organizations/{ORG_ACME}%5Cconnections/{CON_SAML}"),
        format!("/api/v2/users/../organizations/{ORG_ACME}/connections/{CON_SAML}"),
        format!("/api/v2/users/%2E%2E/organizations/{ORG_ACME}/connections/{CON_SAML}"),
        format!("/api/v2/organizations/{ORG_ACME}/./connections/{CON_SAML}"),
        format!("/api/v2//organizations/{ORG_ACME}/connections/{CON_SAML}"),
        format!("/api/v2/organizations/{ORG_ACME}/connections/{CON_SAML}//"),
        format!("/api/v2/organizations/%FF/connections/{CON_SAML}"),
    ] {
        let a = h.send(Method::PATCH, &path, body).await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_uri");
    }
    assert!(h.received().is_empty());
}

#[tokio::test]
async fn ambiguous_json_is_refused() {
    let h = Harness::start().await;
    let bodies: [&[u8]; 7] = [
        br#"{"organization_access_level":"none","organization_access_level":"full"}"#,
        br#"{"organization_access_level":"none","organization\u005Faccess_level":"full"}"#,
        b"\xEF\xBB\xBF{\"organization_access_level\":\"none\"}",
        br#"{"organization_access_level":"none"}{"organization_access_level":"full"}"#,
        br#"{"organization_access_level":"none"} x"#,
        b"{\"organization_connection_name\":\"\xC3\x28\"}",
        br#"[{"organization_access_level":"full"}]"#,
    ];
    for body in bodies {
        let a = h
            .send_with(
                Method::PATCH,
                &item(),
                &[
                    ("authorization", TOKEN),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_body");
    }
    let deep = format!("{}{}", "{\"a\":".repeat(40), "}".repeat(40));
    let a = h
        .send(Method::POST, "/api/v2/organizations", Some(&deep))
        .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_body");
    assert!(h.received().is_empty());
}

#[tokio::test]
async fn only_plain_json_is_accepted() {
    let h = Harness::start().await;
    let json = br#"{"organization_access_level":"full"}"#;
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Headers, &[u8]); 6] = [
        (
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            json,
        ),
        (
            &[
                ("content-type", "application/json"),
                ("content-encoding", "deflate, identity"),
            ],
            json,
        ),
        (
            &[("content-type", "application/x-www-form-urlencoded")],
            b"organization_access_level=full",
        ),
        (&[("content-type", "text/plain")], json),
        (
            &[("content-type", "application/json; charset=iso-8859-1")],
            json,
        ),
        (&[], json),
    ];
    for (extra, body) in cases {
        let mut headers = vec![("authorization", TOKEN)];
        headers.extend_from_slice(extra);
        let a = h.send_with(Method::PATCH, &item(), &headers, body).await;
        assert_refused(
            &a,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
        let message = a.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("application/json") || message.contains("uncompressed"),
            "{message}"
        );
    }
    assert!(h.received().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let h = Harness::with_config("[limits]\nmax_body = 100\n").await;
    let big = format!(
        r#"{{"organization_connection_name":"{}"}}"#,
        "x".repeat(200)
    );
    let a = h.patch_at(&item(), &big).await;
    assert_refused(&a, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Without a Content-Length (chunked), the limit holds while reading.
    let raw = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        item(),
        big.len()
    );
    let out = h.raw(raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(h.received().is_empty());
}

#[tokio::test]
async fn method_overrides_are_refused_everywhere() {
    let h = Harness::start().await;
    for header in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        for (method, path) in [
            (
                Method::POST,
                format!("/api/v2/organizations/{ORG_ACME}/connections"),
            ),
            (Method::GET, format!("/api/v2/organizations/{ORG_ACME}")),
            (Method::POST, "/api/v2/clients".to_owned()),
        ] {
            let a = h
                .send_with(
                    method,
                    &path,
                    &[
                        ("authorization", TOKEN),
                        ("content-type", "application/json"),
                        (header, "PATCH"),
                    ],
                    br#"{"connection_id":"con_saml"}"#,
                )
                .await;
            assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_headers");
        }
    }
    assert!(h.received().is_empty());
}

#[tokio::test]
async fn query_strings_are_refused_on_governed_routes() {
    let h = Harness::start().await;
    let a = h
        .send(
            Method::PATCH,
            &format!("{}?organization_access_level=full", item()),
            Some("{}"),
        )
        .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_uri");
    let a = h.send(Method::DELETE, &format!("{}?", item()), None).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_uri");
    assert!(h.received().is_empty());
}

#[tokio::test]
async fn unlisted_methods_on_governed_paths_are_405() {
    let h = Harness::start().await;
    let a = h
        .send(
            Method::PUT,
            &item(),
            Some(r#"{"organization_access_level":"full"}"#),
        )
        .await;
    assert_refused(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(a.headers["allow"], "GET, HEAD, PATCH, DELETE");
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{ORG_ACME}/enabled_connections/{CON_SAML}"),
            Some("{}"),
        )
        .await;
    assert_refused(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(h.received().is_empty());
}

#[tokio::test]
async fn a_delete_with_a_body_is_refused() {
    let h = Harness::start().await;
    let a = h
        .send(Method::DELETE, &item(), Some(r#"{"cascade":true}"#))
        .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_body");
    assert!(h.received().is_empty());
}

/// hyper resolves `Content-Length` + `Transfer-Encoding` as RFC 9112 §6.3
/// requires: chunked framing wins, the length is discarded and the
/// connection closes after the answer. tollgate re-frames what it forwards,
/// so the tenant can only ever see the judged body with a fresh length.
#[tokio::test]
async fn conflicting_framing_never_reaches_the_tenant_ambiguously() {
    let h = Harness::start().await;
    let smuggled = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        item()
    );
    let inner = r#"{"show_as_button":false}"#;
    let raw = format!(
        "{smuggled}{:x}\r\n{inner}\r\n0\r\n\r\nPATCH {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}",
        inner.len(),
        item()
    );
    let out = h.raw(raw.as_bytes()).await;
    let received = h.received();
    assert_eq!(received.len(), 1, "the judged request alone: {received:?}");
    for r in &received {
        assert_eq!(r.json(), serde_json::json!({"show_as_button": false}));
        assert_eq!(
            r.headers["content-length"],
            r.body.len().to_string().as_str()
        );
        assert!(!r.headers.contains_key("transfer-encoding"));
    }
    // The connection closes after one answer: the trailing request is never served.
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");

    // Two different lengths: refused by the HTTP layer.
    let raw = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 24\r\nConnection: close\r\n\r\n{inner}",
        item()
    );
    let out = h.raw(raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(h.received().len(), 1, "nothing more reached the tenant");
}

#[tokio::test]
async fn absolute_form_targets_and_host_headers_cannot_redirect() {
    let h = Harness::start().await;
    let body = r#"{"show_as_button":false}"#;
    let raw = format!(
        "PATCH http://evil.invalid:81{} HTTP/1.1\r\nHost: evil.invalid\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        item(),
        body.len()
    );
    let out = h.raw(raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = h.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, item());
    let host = got[0].headers["host"].to_str().expect("host");
    assert!(
        host.starts_with("127.0.0.1:"),
        "the tenant's own host: {host}"
    );

    // The absolute form is governed like any other: a bad body is refused.
    let bad = r#"{"organization_access_level":"owner"}"#;
    let raw = format!(
        "PATCH http://evil.invalid{} HTTP/1.1\r\nHost: evil.invalid\r\nAuthorization: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{bad}",
        item(),
        bad.len()
    );
    let out = h.raw(raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(h.received().len(), 1);

    // Authority-form and asterisk-form targets name no path at all.
    let out = h.raw(b"CONNECT evil.invalid:443 HTTP/1.1\r\nHost: evil.invalid:443\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = h
        .raw(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(h.received().len(), 1);
}
