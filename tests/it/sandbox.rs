//! The sandbox behaves like a tenant where the Auth0 clients look: lists
//! paged both ways with totals, the token endpoint form-encoded, clients
//! and client grants, unset fields left out. Through the gateway, as a
//! client sees it.

use http::{Method, StatusCode};
use serde_json::json;
use tollgate::sandbox::seed::*;

use crate::harness::Harness;

#[tokio::test]
async fn lists_are_paged_as_the_management_api_pages_them() {
    let h = Harness::start().await;
    let get = |path: String| {
        let h = &h;
        async move {
            let a = h.send(Method::GET, &path, None).await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {a:?}");
            a.json()
        }
    };
    // Checkpoints: `from`/`take`, `next` until the end.
    let first = get("/api/v2/organizations?include_totals=true&take=1".into()).await;
    assert_eq!(first["organizations"][0]["id"], ORG_ACME);
    assert_eq!(first["next"], ORG_GLOBEX);
    let last = get(format!("/api/v2/organizations?take=1&from={ORG_GLOBEX}")).await;
    assert_eq!(last["organizations"][0]["id"], ORG_GLOBEX);
    assert!(last.get("next").is_none(), "{last}");
    // Offset pages with totals.
    let page = get(format!(
        "/api/v2/organizations/{ORG_ACME}/enabled_connections?page=0&per_page=1&include_totals=true"
    ))
    .await;
    assert_eq!(page["start"], 0);
    assert_eq!(page["limit"], 1);
    assert_eq!(page["total"], 1);
    assert_eq!(page["enabled_connections"][0]["connection_id"], CON_SAML);
    let page = get(format!(
        "/api/v2/organizations/{ORG_ACME}/connections?include_totals=true"
    ))
    .await;
    assert_eq!(page["connections"][0]["connection_id"], CON_SAML);
    // A name never given is left out, as the tenant leaves it out.
    assert!(
        page["connections"][0]
            .get("organization_connection_name")
            .is_none(),
        "{page}"
    );
    // Without paging parameters: a bare array.
    let all = get("/api/v2/connections".into()).await;
    assert_eq!(all.as_array().map(Vec::len), Some(4));
    let clients = get("/api/v2/clients?include_totals=true".into()).await;
    assert_eq!(clients["clients"][0]["client_id"], SANDBOX_CLIENT);
    let grants = get("/api/v2/client-grants?take=50".into()).await;
    assert_eq!(grants["client_grants"][0]["client_id"], SANDBOX_CLIENT);
}

#[tokio::test]
async fn the_token_endpoint_takes_the_form_the_sdks_send() {
    let h = Harness::start().await;
    let form = h
        .send_with(
            Method::POST,
            "/oauth/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"grant_type=client_credentials&client_id=sandbox-client&client_secret=s%26cret&audience=https%3A%2F%2Fx%2Fapi%2Fv2%2F",
        )
        .await;
    assert_eq!(form.status, StatusCode::OK, "{form:?}");
    assert!(form.json()["access_token"].is_string());
    let body = json!({"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"});
    let as_json = h
        .send_with(
            Method::POST,
            "/oauth/token",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(as_json.status, StatusCode::OK);
    let refused = h
        .send_with(
            Method::POST,
            "/oauth/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"grant_type=client_credentials&client_id=sandbox-client",
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

/// The sandbox's tokens name their client, as the tenant's do: a change
/// made with one is recorded under that caller, and a request only an
/// approvable rule denies gets an approval to ask for.
#[tokio::test]
async fn sandbox_tokens_name_their_client() {
    let h = Harness::setup()
        .rule(
            "[[rule]]\nid = \"no-full\"\ndeny = 'after.organization_access_level == \"full\"'\nmessage = \"m\"\napprovable = true\n",
        )
        .start()
        .await;
    let token = h
        .send_with(
            Method::POST,
            "/oauth/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"grant_type=client_credentials&client_id=ci-bot&client_secret=s",
        )
        .await
        .json()["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let auth = format!("Bearer {token}");
    let allowed = h.patch_as(&auth, br#"{"show_as_button":false}"#).await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed:?}");
    let denied = h
        .patch_as(&auth, br#"{"organization_access_level":"full"}"#)
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        denied.json()["approval"]["id"].is_string(),
        "an approval to ask for: {}",
        denied.json()
    );
    h.audit.flush().await;
    let events = tollgate::audit::query::show(&h.store, &allowed.audit_id())
        .await
        .expect("show");
    assert_eq!(events[0]["event"]["caller"], "ci-bot", "{events:?}");
}
