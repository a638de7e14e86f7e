//! Requests that are not governed: forwarded unchanged, or refused under
//! `routes.other = "deny"`.

use http::{Method, StatusCode};
use tollgate::sandbox::seed::*;

use crate::harness::{Harness, TOKEN, item};

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
        .send_with(Method::GET, &item(), &[("authorization", TOKEN)], b"")
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

    let a = h.patch(r#"{"show_as_button":false}"#).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.received().len(), 1);
}

/// A tenant whose answers carry hop-by-hop headers.
#[derive(Clone)]
struct HopByHop(tollgate::sandbox::Sandbox);

impl tollgate::server::Handler for HopByHop {
    async fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tollgate::BoxBody> {
        let mut resp = self.0.handle(req).await;
        let h = resp.headers_mut();
        h.insert("connection", "x-tenant-private".parse().expect("value"));
        h.insert("x-tenant-private", "internal".parse().expect("value"));
        h.insert("proxy-authenticate", "Basic".parse().expect("value"));
        h.insert("keep-alive", "timeout=5".parse().expect("value"));
        resp
    }
}

/// Hop-by-hop headers describe one connection: dropped on the way back as
/// on the way in, the rest of the tenant's headers kept.
#[tokio::test]
async fn hop_by_hop_headers_are_dropped_on_the_way_back() {
    let tenant = tollgate::sandbox::Sandbox::new();
    let addr = crate::harness::serve_on_port_0(HopByHop(tenant.clone())).await;
    let h = Harness::in_front_of("", &format!("http://{addr}"), tenant).await;
    for (method, path, body) in [
        (Method::GET, "/api/v2/connections".to_owned(), None),
        (
            Method::PATCH,
            "/api/v2/organizations/org_acme/connections/con_saml".to_owned(),
            Some(r#"{"show_as_button":false}"#),
        ),
    ] {
        let a = h.send(method.clone(), &path, body).await;
        assert_eq!(a.status, StatusCode::OK, "{method}");
        for name in ["x-tenant-private", "proxy-authenticate", "keep-alive"] {
            assert!(
                !a.headers.contains_key(name),
                "{method}: {name} passed back"
            );
        }
        assert!(
            a.headers.contains_key("x-ratelimit-limit"),
            "{method}: the rest is kept"
        );
    }
}

/// Every request's path is screened, governed or not: a dot segment is
/// refused before anything is forwarded.
#[tokio::test]
async fn ambiguous_paths_are_refused_on_ungoverned_routes_too() {
    let h = Harness::start().await;
    for path in [
        "/api/v2/users/%2e%2e/organizations/org_acme/connections/con_saml",
        "/api/v2/users/../clients",
        "/api/v2/clients%2Fx",
    ] {
        let a = h.send(Method::GET, path, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(a.error_code(), "invalid_uri", "{path}");
    }
    assert!(h.received().is_empty(), "nothing reached the tenant");
}
