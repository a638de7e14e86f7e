//! Caller identity: JWT verification against the tenant's JWKS, and broker
//! mode with tollgate API keys.

use std::sync::Arc;

use base64::Engine;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tollgate::audit::query;
use tollgate::sandbox::seed::*;

use crate::harness::{Harness, item, start_sandbox};

const BODY: &[u8] = br#"{"show_as_button":false}"#;

/// An RSA signing key generated for the test, and its JWK.
struct Signer {
    key: EncodingKey,
    kid: String,
    jwk: Value,
}

fn signer(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("rsa key");
    let key = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).expect("encoding key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    Signer {
        key,
        kid: kid.to_owned(),
        jwk: serde_json::to_value(&jwk).expect("jwk json"),
    }
}

fn sign(s: &Signer, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&header, claims, &s.key).expect("sign")
}

struct Tenant {
    h: Harness,
    base: String,
}

impl Tenant {
    fn claims(&self) -> Value {
        json!({
            "iss": format!("{}/", self.base), "aud": format!("{}/api/v2/", self.base),
            "azp": "ci-bot", "sub": "ci-bot@clients", "gty": "client-credentials",
            "scope": "update:organization_connections",
            "iat": chrono::Utc::now().timestamp(), "exp": chrono::Utc::now().timestamp() + 3600,
        })
    }

    async fn patch(&self, token: &str) -> crate::harness::Answer {
        let auth = format!("Bearer {token}");
        self.h.patch_as(&auth, BODY).await
    }

    fn patches(&self) -> usize {
        self.h
            .received()
            .iter()
            .filter(|r| r.method == Method::PATCH)
            .count()
    }
}

async fn verifying(jwks: Value) -> Tenant {
    let (tenant, addr) = start_sandbox().await;
    tenant.set_jwks(jwks);
    let base = format!("http://{addr}");
    let h = Harness::setup()
        .config("[identity]\nverify = true\njwks_min_refresh = \"0s\"\n")
        .upstream(&base, tenant)
        .start()
        .await;
    Tenant { h, base }
}

fn assert_401(a: &crate::harness::Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
    assert_eq!(a.error_code(), "invalid_token");
    assert_eq!(a.headers["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn verified_tokens_pass_and_every_bad_one_is_refused() {
    let a = signer("key-a");
    let t = verifying(json!({"keys": [a.jwk]})).await;

    let ok = t.patch(&sign(&a, &t.claims())).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(t.patches(), 1);

    let mut expired = t.claims();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let mut wrong_iss = t.claims();
    wrong_iss["iss"] = json!("https://evil.example.com/");
    let mut wrong_aud = t.claims();
    wrong_aud["aud"] = json!("https://other-api/");
    let mut no_exp = t.claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    // Not valid before an hour from now; issued an hour from now.
    let mut not_yet = t.claims();
    not_yet["nbf"] = json!(chrono::Utc::now().timestamp() + 3600);
    let mut issued_later = t.claims();
    issued_later["iat"] = json!(chrono::Utc::now().timestamp() + 3600);
    let mut iat_text = t.claims();
    iat_text["iat"] = json!((chrono::Utc::now().timestamp() + 1_000_000).to_string());
    // Within the 30 s leeway, as for `exp`: accepted.
    let mut skewed = t.claims();
    skewed["nbf"] = json!(chrono::Utc::now().timestamp() + 10);
    skewed["iat"] = json!(chrono::Utc::now().timestamp() + 10);
    let skewed_ok = t.patch(&sign(&a, &skewed)).await;
    assert_eq!(skewed_ok.status, StatusCode::OK, "{skewed_ok:?}");
    // Expired 10 s ago: within the leeway, accepted; 45 s ago: refused
    // (below, with the others).
    let mut just_expired = t.claims();
    just_expired["exp"] = json!(chrono::Utc::now().timestamp() - 10);
    let just_expired_ok = t.patch(&sign(&a, &just_expired)).await;
    assert_eq!(
        just_expired_ok.status,
        StatusCode::OK,
        "{just_expired_ok:?}"
    );
    let mut past_leeway = t.claims();
    past_leeway["exp"] = json!(chrono::Utc::now().timestamp() - 45);
    let impostor = Signer {
        kid: "key-a".into(),
        ..signer("x")
    };
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let none_alg = format!(
        "{}.{}.",
        enc(br#"{"alg":"none","kid":"key-a"}"#),
        enc(t.claims().to_string().as_bytes())
    );
    let hs256 = jsonwebtoken::encode(
        &Header {
            kid: Some("key-a".into()),
            ..Header::new(Algorithm::HS256)
        },
        &t.claims(),
        &EncodingKey::from_secret(b"public-key-as-secret").expect("hmac key"),
    )
    .expect("hs256");
    for (why, token) in [
        ("expired", sign(&a, &expired)),
        ("expired past the leeway", sign(&a, &past_leeway)),
        ("wrong issuer", sign(&a, &wrong_iss)),
        ("wrong audience", sign(&a, &wrong_aud)),
        ("no expiry", sign(&a, &no_exp)),
        ("not yet valid", sign(&a, &not_yet)),
        ("issued in the future", sign(&a, &issued_later)),
        ("iat not a number", sign(&a, &iat_text)),
        ("signed by another key", sign(&impostor, &t.claims())),
        ("alg none", none_alg),
        ("HS256", hs256),
        ("malformed", "not-a-jwt".to_owned()),
    ] {
        let r = t.patch(&token).await;
        assert_401(&r);
        assert!(
            !r.json()["message"].as_str().unwrap_or_default().is_empty(),
            "{why}"
        );
    }
    // No token at all, on a governed and an ungoverned route.
    let r =
        t.h.send_with(
            Method::PATCH,
            &item(),
            &[("content-type", "application/json")],
            BODY,
        )
        .await;
    assert_401(&r);
    let r =
        t.h.send_with(Method::GET, "/api/v2/organizations", &[], b"")
            .await;
    assert_401(&r);
    assert_eq!(t.patches(), 3, "no refused request reached the tenant");

    // The caller is recorded as verified; refusals are recorded too.
    t.h.audit.flush().await;
    let rows = query::exchanges(
        &t.h.store,
        &query::Filter {
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .expect("query");
    assert_eq!(
        rows.iter()
            .filter(|r| r.decision == Some(tollgate::policy::Decision::Invalid))
            .count(),
        14
    );
    let events = query::show(&t.h.store, &ok.audit_id()).await.expect("show");
    assert_eq!(events[0]["event"]["data"]["caller"]["verified"], true);
    assert_eq!(events[0]["event"]["caller"], "ci-bot");
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_jwks() {
    let a = signer("key-a");
    let b = signer("key-b");
    let t = verifying(json!({"keys": [a.jwk]})).await;
    assert_eq!(t.patch(&sign(&a, &t.claims())).await.status, StatusCode::OK);
    // The tenant rotates its keys.
    t.h.tenant.set_jwks(json!({"keys": [a.jwk, b.jwk]}));
    let r = t.patch(&sign(&b, &t.claims())).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let fetches =
        t.h.received()
            .iter()
            .filter(|r| r.target == "/.well-known/jwks.json")
            .count();
    assert_eq!(fetches, 2, "fetched once, refetched once for the new kid");
}

on_both_backends! {
async fn jwks_refetches_are_rate_limited(backend: Backend) {
    let a = signer("key-a");
    let (tenant, addr) = start_sandbox().await;
    tenant.set_jwks(json!({"keys": [a.jwk]}));
    let base = format!("http://{addr}");
    let h = Harness::setup().backend(backend)
        .config("[identity]\nverify = true\njwks_min_refresh = \"1h\"\n")
        .upstream(&base, tenant)
        .start()
        .await;
    let t = Tenant { h, base };
    assert_eq!(t.patch(&sign(&a, &t.claims())).await.status, StatusCode::OK);
    let stranger = signer("key-z");
    for _ in 0..5 {
        assert_401(&t.patch(&sign(&stranger, &t.claims())).await);
    }
    let fetches =
        t.h.received()
            .iter()
            .filter(|r| r.target == "/.well-known/jwks.json")
            .count();
    assert_eq!(
        fetches, 1,
        "unknown kids cannot make tollgate hammer the JWKS"
    );
}
}

fn broker_config(keys: &[(&str, &str, Option<&str>)]) -> String {
    let mut c = "[identity]\nmode = \"broker\"\nclient_id = \"tollgate-m2m\"\nclient_secret = \"m2m-secret\"\n".to_owned();
    for (name, key, ops) in keys {
        c.push_str(&format!(
            "[[identity.keys]]\nname = \"{name}\"\nhash = \"sha256:{}\"\n",
            tollgate::identity::fingerprint(key)
        ));
        if let Some(op) = ops {
            c.push_str(&format!("operations = [\"{op}\"]\n"));
        }
    }
    c
}

on_both_backends! {
async fn broker_mode_injects_its_own_token(backend: Backend) {
    let (ci, _) = tollgate::identity::new_key();
    let (narrow, _) = tollgate::identity::new_key();
    let config = broker_config(&[
        ("terraform-ci", &ci, None),
        ("rotator", &narrow, Some("organization_connection.update")),
    ]);
    let h = Arc::new(Harness::setup().backend(backend).config(&config).start().await);
    let send = |key: &str, method: Method, path: String, body: &'static [u8]| {
        let h = h.clone();
        let auth = format!("Bearer {key}");
        async move {
            h.send_with(
                method,
                &path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };

    // 50 concurrent requests: one token fetch.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        tasks.push(tokio::spawn(send(&ci, Method::PATCH, item(), BODY)));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").status, StatusCode::OK);
    }
    assert_eq!(h.tenant.tokens_issued(), 1);
    // The tenant saw tollgate's token, never the caller's key.
    for r in h.received() {
        if r.target == "/oauth/token" {
            continue;
        }
        let auth = r.headers["authorization"].to_str().expect("text");
        assert!(
            auth.starts_with("Bearer ") && auth.ends_with(".sandbox-mgmt-token-1"),
            "{auth}"
        );
    }
    let all: String = h
        .received()
        .iter()
        .map(|r| format!("{:?}{:?}", r.headers, r.body))
        .collect();
    assert!(!all.contains(&ci), "the API key reached the tenant");

    // Unknown and missing keys.
    assert_401(&send("tg_unknown", Method::PATCH, item(), BODY).await);
    assert_401(
        &h.send_with(
            Method::PATCH,
            &item(),
            &[("content-type", "application/json")],
            BODY,
        )
        .await,
    );
    assert_401(
        &send(
            "tg_unknown",
            Method::GET,
            "/api/v2/organizations".into(),
            b"",
        )
        .await,
    );

    // A key limited to updates may do nothing else.
    assert_eq!(
        send(&narrow, Method::PATCH, item(), BODY).await.status,
        StatusCode::OK
    );
    let create = send(
        &narrow,
        Method::POST,
        format!("/api/v2/organizations/{ORG_ACME}/connections"),
        br#"{"connection_id":"con_oidc"}"#,
    )
    .await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    assert_eq!(create.error_code(), "insufficient_scope");
    let other = send(&narrow, Method::GET, "/api/v2/organizations".into(), b"").await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);

    // Rules and the log see the key's name.
    h.audit.flush().await;
    let rows = query::exchanges(
        &h.store,
        &query::Filter {
            caller: Some("rotator".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .expect("query");
    assert_eq!(rows.len(), 3);
}
}

/// A broker-mode gateway with one key (`ci`, returned) in front of a tenant
/// whose tokens last `ttl` seconds.
async fn broker_with_token_ttl(backend: crate::harness::Backend, ttl: u64) -> (Harness, String) {
    let (ci, _) = tollgate::identity::new_key();
    let (tenant, addr) = start_sandbox().await;
    tenant.set_token_ttl(ttl);
    let h = Harness::setup()
        .backend(backend)
        .config(&broker_config(&[("ci", &ci, None)]))
        .tenant_at(addr, tenant)
        .start()
        .await;
    (h, ci)
}

on_both_backends! {
async fn broker_tokens_are_refreshed_after_expiry(backend: Backend) {
    let (h, ci) = broker_with_token_ttl(backend, 0).await;
    let auth = format!("Bearer {ci}");
    for _ in 0..3 {
        let a = h
            .patch_as(&auth, BODY)
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    assert_eq!(
        h.tenant.tokens_issued(),
        3,
        "an expired token is never reused"
    );
    let last = h
        .received()
        .into_iter()
        .rev()
        .find(|r| r.method == Method::PATCH)
        .expect("patch");
    let auth = last.headers["authorization"].to_str().expect("text");
    assert!(auth.ends_with(".sandbox-mgmt-token-3"), "{auth}");
}
}

#[test]
fn keys_new_prints_a_key_once_and_its_hash() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["keys", "new", "terraform-ci"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("tg_"))
        .expect("a key");
    let hash = text
        .split('"')
        .find(|w| w.starts_with("sha256:"))
        .expect("a hash");
    assert_eq!(
        hash,
        format!("sha256:{}", tollgate::identity::fingerprint(key))
    );
    assert!(text.contains("name = \"terraform-ci\""));
}

// Rules read `caller.key`: the name of the broker key that made the call.
on_both_backends! {
async fn rules_read_the_callers_key_name(backend: Backend) {
    let (ci, _) = tollgate::identity::new_key();
    let (intern, _) = tollgate::identity::new_key();
    let config = broker_config(&[
        ("terraform-ci", &ci, None),
        ("intern-script", &intern, None),
    ]);
    let rule = "[[rule]]\nid = \"ci-only\"\ndeny = 'caller.key != \"terraform-ci\"'\nmessage = \"only the CI pipeline changes connections\"\n";
    let h = Harness::setup()
        .backend(backend)
        .config(&config)
        .rule(rule)
        .start()
        .await;
    let send = |key: String| {
        let h = &h;
        async move {
            let auth = format!("Bearer {key}");
            h.patch_as(&auth, BODY)
            .await
        }
    };
    assert_eq!(send(ci).await.status, StatusCode::OK);
    let denied = send(intern).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.json()["rules"][0]["id"], "ci-only");
}
}

// The broker's token is refreshed a little before it expires (a tenth of
// its lifetime early), never used up to its last instant.
on_both_backends! {
async fn broker_tokens_are_refreshed_before_they_expire(backend: Backend) {
    let (h, ci) = broker_with_token_ttl(backend, 2).await;
    let auth = format!("Bearer {ci}");
    let path = item();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let send = || h.send_with(Method::PATCH, &path, &headers, BODY);
    assert_eq!(send().await.status, StatusCode::OK);
    // The token was issued before that answer came: from here on, times
    // are bounds whatever the machine's speed.
    let issued_by = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(send().await.status, StatusCode::OK);
    assert_eq!(h.tenant.tokens_issued(), 1, "a fresh token is reused");
    // 1.85 s after it was issued at the latest: tollgate lets a 2 s token
    // go 0.2 s early, so it has asked for another.
    tokio::time::sleep(std::time::Duration::from_millis(1850).saturating_sub(issued_by.elapsed()))
        .await;
    assert_eq!(send().await.status, StatusCode::OK);
    assert_eq!(h.tenant.tokens_issued(), 2, "refreshed before expiry");
}
}

on_both_backends! {
// An ungoverned write in broker mode when no tenant token can be had: one
// `unavailable` decision, never an `allow` first (nothing was forwarded).
async fn an_ungoverned_write_without_a_tenant_token_is_recorded_once(backend: Backend) {
    let (ci, _) = tollgate::identity::new_key();
    let (_reserved, addr) = crate::harness::refused_address();
    let h = Harness::setup()
        .backend(backend)
        .config(&broker_config(&[("ci", &ci, None)]))
        .tenant_at(addr, tollgate::sandbox::Sandbox::new())
        .start()
        .await;
    let auth = format!("Bearer {ci}");
    let a = h
        .send_with(
            Method::POST,
            "/api/v2/roles",
            &[("authorization", &auth), ("content-type", "application/json")],
            b"{}",
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{backend:?}: {a:?}");
    h.audit.flush().await;
    let events = query::show(&h.store, &a.audit_id()).await.expect("show");
    let decisions: Vec<&str> = events
        .iter()
        .filter(|e| e["event"]["kind"] == "decision")
        .filter_map(|e| e["event"]["decision"].as_str())
        .collect();
    assert_eq!(decisions, ["unavailable"], "{backend:?}: {events:?}");
}
}
