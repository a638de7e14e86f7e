//! Each governed operation is forwarded as judged, and the tenant's answer
//! comes back unchanged.

use http::{Method, StatusCode};
use serde_json::json;
use tollgate::sandbox::seed::*;

use crate::harness::{Harness, item};

/// One governed call: what is sent, what the tenant must receive.
struct Case {
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
    expect_status: StatusCode,
}

fn cases() -> Vec<Case> {
    let c = |method, path: String, body, expect_status| Case {
        method,
        path,
        body,
        expect_status,
    };
    vec![
        c(
            Method::POST,
            format!("/api/v2/organizations/{ORG_ACME}/connections"),
            Some(
                json!({"connection_id": CON_DATABASE, "organization_access_level": "limited", "assign_membership_on_login": true}),
            ),
            StatusCode::CREATED,
        ),
        c(
            Method::PATCH,
            item(),
            Some(json!({"organization_access_level": "limited", "show_as_button": false})),
            StatusCode::OK,
        ),
        c(Method::DELETE, item(), None, StatusCode::NO_CONTENT),
        c(
            Method::POST,
            format!("/api/v2/organizations/{ORG_GLOBEX}/enabled_connections"),
            Some(json!({"connection_id": CON_OIDC, "assign_membership_on_login": true})),
            StatusCode::CREATED,
        ),
        c(
            Method::PATCH,
            format!("/api/v2/organizations/{ORG_GLOBEX}/enabled_connections/{CON_OIDC}"),
            Some(json!({"show_as_button": false})),
            StatusCode::OK,
        ),
        c(
            Method::DELETE,
            format!("/api/v2/organizations/{ORG_GLOBEX}/enabled_connections/{CON_OIDC}"),
            None,
            StatusCode::NO_CONTENT,
        ),
        c(
            Method::POST,
            "/api/v2/organizations".into(),
            Some(
                json!({"name": "initech", "display_name": "Initech", "enabled_connections": [{"connection_id": CON_GOOGLE}]}),
            ),
            StatusCode::CREATED,
        ),
        c(
            Method::POST,
            format!("/api/v2/self-service-profiles/{SELF_SERVICE_PROFILE}/sso-ticket"),
            Some(
                json!({"connection_id": CON_SAML, "enabled_organizations": [{"organization_id": ORG_ACME}]}),
            ),
            StatusCode::CREATED,
        ),
    ]
}

#[tokio::test]
async fn each_operation_is_forwarded_as_judged() {
    let h = Harness::start().await;
    for (i, case) in cases().into_iter().enumerate() {
        let body = case.body.as_ref().map(|b| b.to_string());
        let answer = h
            .send(case.method.clone(), &case.path, body.as_deref())
            .await;
        assert_eq!(
            answer.status, case.expect_status,
            "{} {}: {:?}",
            case.method, case.path, answer
        );

        // Context lookups (GETs, which deletes always make) aside, exactly
        // one request per call reached the tenant.
        let received: Vec<_> = h
            .received()
            .into_iter()
            .filter(|r| r.method != Method::GET)
            .collect();
        assert_eq!(
            received.len(),
            i + 1,
            "exactly one request reached the tenant"
        );
        let got = received.last().expect("received");
        assert_eq!(got.method, case.method);
        assert_eq!(got.target, case.path);
        match &case.body {
            Some(b) => {
                assert_eq!(got.json(), *b);
                assert_eq!(got.headers["content-type"], "application/json");
                assert_eq!(
                    got.headers["content-length"],
                    got.body.len().to_string().as_str()
                );
            }
            None => assert!(got.body.is_empty()),
        }
        // The exchange id links the answer and the tenant's request.
        let id = answer.audit_id();
        assert_eq!(id.len(), 36, "a UUID");
        assert_eq!(got.headers["x-correlation-id"], id.as_str());
        assert_eq!(got.headers["authorization"], crate::harness::TOKEN);
        // The tenant's rate-limit headers come back.
        assert!(
            answer.headers.contains_key("x-ratelimit-remaining"),
            "{:?}",
            answer.headers
        );
    }
}

#[tokio::test]
async fn the_tenants_answer_is_returned_unchanged() {
    let (tenant, addr) = crate::harness::start_sandbox().await;
    let h = Harness::in_front_of("", &format!("http://{addr}"), tenant).await;
    // Byte for byte, headers included, as the tenant gives it directly
    // (but for the rate-limit counters, which move with every request,
    // the date, and tollgate's own audit id).
    let path = format!("/api/v2/organizations/{ORG_GLOBEX}/connections/{CON_SAML}");
    let direct = Harness::client_send(
        &addr.to_string(),
        Method::PATCH,
        &path,
        r#"{"show_as_button":true}"#,
    )
    .await;
    let through = h.patch_at(&path, r#"{"show_as_button":true}"#).await;
    assert_eq!(through.status, direct.status);
    assert_eq!(through.body, direct.body);
    let kept = |a: &crate::harness::Answer| {
        let mut v: Vec<(String, String)> = a
            .headers
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "date" | "x-ratelimit-remaining" | "x-ratelimit-reset" | "x-tollgate-audit-id"
                )
            })
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(kept(&through), kept(&direct));
    // A 404 from the tenant: its own error body, not tollgate's.
    let a = h
        .patch_at(
            &format!("/api/v2/organizations/{ORG_GLOBEX}/connections/{CON_SAML}"),
            r#"{"show_as_button":true}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "inexistent_organization_connection");
    assert!(
        a.json().get("audit_id").is_none(),
        "the tenant's body is not rewritten"
    );
    assert!(!a.audit_id().is_empty());

    // A 409 on a duplicate create.
    let a = h
        .send(
            Method::POST,
            &format!("/api/v2/organizations/{ORG_ACME}/connections"),
            Some(&json!({"connection_id": CON_SAML}).to_string()),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);

    // Missing credentials: the tenant's 401 comes back.
    let a = h.send_with(Method::DELETE, &item(), &[], b"").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["message"], "Missing authentication");
}

#[tokio::test]
async fn case_and_trailing_slash_variants_are_governed_and_canonicalised() {
    let h = Harness::start().await;
    let a = h
        .patch_at(
            &format!("/API/V2/Organizations/{ORG_ACME}/CONNECTIONS/{CON_SAML}/"),
            r#"{"organization_access_level":"limited"}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let got = h.received();
    assert_eq!(got[0].target, item());

    // Governed means validated: the same variant with a bad body never leaves.
    let a = h
        .patch_at(
            &format!("/Api/v2/organizations/{ORG_ACME}/Connections/{CON_SAML}/"),
            r#"{"organization_access_level":"owner"}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error_code(), "invalid_body");
    assert_eq!(h.received().len(), 1);

    // Percent-encoded literal segments too.
    let a = h
        .patch_at(
            &format!("/api/v2/%6Frganizations/{ORG_ACME}/connection%73/{CON_SAML}"),
            r#"{"organization_access_level":"owner"}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.received().len(), 1);
}

#[tokio::test]
async fn the_forwarded_body_is_the_reserialised_judged_value() {
    let h = Harness::start().await;
    // Keys out of alphabetical order: the order sent is the order forwarded.
    let sent = "{ \"show_as_button\":false,\n\t\"organization_access_level\" : \"limit\\u0065d\" }";
    let a = h.send(Method::PATCH, &item(), Some(sent)).await;
    assert_eq!(a.status, StatusCode::OK);
    let got = &h.received()[0];
    assert_eq!(
        std::str::from_utf8(&got.body).expect("utf-8"),
        r#"{"show_as_button":false,"organization_access_level":"limited"}"#
    );
    assert_eq!(
        h.tenant.association(ORG_ACME, CON_SAML).expect("exists")["organization_access_level"],
        "limited"
    );
}

/// Numbers outside the judged fields reach the tenant, and the record,
/// exactly as the client wrote them.
#[tokio::test]
async fn numbers_arrive_byte_for_byte() {
    let h = Harness::start().await;
    let numbers = "{\"a\":-0,\"b\":1E2,\"c\":1.0,\"d\":1e-7,\"e\":18446744073709551616,\"f\":1e23,\"g\":12345678901234567890123}";
    let sent = format!("{{\"name\":\"nums\",\"metadata\":{numbers},\"enabled_connections\":[]}}");
    let a = h
        .send(Method::POST, "/api/v2/organizations", Some(&sent))
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let got = &h.received()[0];
    assert_eq!(std::str::from_utf8(&got.body).expect("utf-8"), sent);
    h.audit.flush().await;
    // The stored event, as hashed (a JSON reader would respell exponents).
    let rows = h.store.exchange_events(&a.audit_id()).await.expect("rows");
    assert!(rows[0].body.contains(numbers), "{}", rows[0].body);
}

/// One request per constraint of DESIGN §1's field table: refused with 400
/// in the tenant's shape, naming the field; the tenant receives nothing.
#[tokio::test]
async fn schema_errors_name_the_field_and_forward_nothing() {
    let h = Harness::start().await;
    let update = item();
    let create = format!("/api/v2/organizations/{ORG_ACME}/connections");
    let legacy = format!("/api/v2/organizations/{ORG_ACME}/enabled_connections/{CON_SAML}");
    let long = "x".repeat(51);
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            &update,
            json!({"organization_connection_name": ""}),
            "/organization_connection_name",
        ),
        (
            &update,
            json!({"organization_connection_name": long}),
            "/organization_connection_name",
        ),
        (
            &update,
            json!({"organization_connection_name": "a\u{0}b"}),
            "/organization_connection_name",
        ),
        (
            &update,
            json!({"organization_connection_name": 1}),
            "/organization_connection_name",
        ),
        (
            &update,
            json!({"assign_membership_on_login": "yes"}),
            "/assign_membership_on_login",
        ),
        (&update, json!({"show_as_button": null}), "/show_as_button"),
        (
            &update,
            json!({"is_signup_enabled": 1}),
            "/is_signup_enabled",
        ),
        (
            &update,
            json!({"organization_access_level": "owner"}),
            "/organization_access_level",
        ),
        (
            &update,
            json!({"organization_member_access_level": "Full"}),
            "/organization_member_access_level",
        ),
        (&update, json!({"is_enabled": "true"}), "/is_enabled"),
        (
            &create,
            json!({"connection_id": CON_DATABASE, "organization_access_level": null}),
            "/organization_access_level",
        ),
        (
            &create,
            json!({"connection_id": CON_DATABASE, "is_enabled": null}),
            "/is_enabled",
        ),
        (&create, json!({"show_as_button": true}), "/connection_id"),
        (&create, json!({"connection_id": long}), "/connection_id"),
        (&update, json!({"is_admin": true}), "/is_admin"),
        (
            &legacy,
            json!({"organization_access_level": "full"}),
            "/organization_access_level",
        ),
    ];
    for (path, body, field) in cases {
        let method = if path == create {
            Method::POST
        } else {
            Method::PATCH
        };
        let a = h.send(method, path, Some(&body.to_string())).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        let j = a.json();
        assert_eq!(j["statusCode"], 400);
        assert_eq!(j["error"], "Bad Request");
        assert_eq!(j["errorCode"], "invalid_body");
        assert_eq!(j["field"], field, "{body}");
        assert!(
            j["message"].as_str().unwrap_or_default().contains(field),
            "{j}"
        );
        assert_eq!(j["audit_id"], a.audit_id().as_str());
    }
    // Path parameters have their limits too.
    let a = h
        .patch_at(&format!("/api/v2/organizations/{long}/connections/c"), "{}")
        .await;
    assert_eq!(a.error_code(), "invalid_uri");
    assert!(h.received().is_empty(), "nothing reached the tenant");
}

#[tokio::test]
async fn unknown_fields_can_be_let_through() {
    let h = Harness::with_config("[schema]\nunknown_fields = \"forward\"\n").await;
    let a = h.patch(r#"{"is_admin":true}"#).await;
    // Forwarded; the tenant has its own opinion of it.
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.received()[0].json(), json!({"is_admin": true}));
}
