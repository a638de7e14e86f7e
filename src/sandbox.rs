//! The simulated tenant behind `serve --sandbox`, and the tenant the test
//! suite talks to.
//!
//! It behaves like the Management API where tollgate can tell the
//! difference: case-insensitive routing with one optional trailing slash,
//! percent-decoded segments, bearer authentication, Auth0's error bodies and
//! status codes (200/201/204/400/401/404/409), rate-limit headers, and the
//! tenant's own rule that signup needs membership on login. It records every
//! request it receives, so tests can show what reached the tenant.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

pub mod cert;
mod pages;
mod state;

use state::{
    Connection, Organization, State, connection_json, error, no_connection, no_org, not_found,
    org_json, with_body,
};

use crate::route::decode_segments;
use crate::server::Handler;
use crate::{BoxBody, full};

/// A request as the tenant received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    /// Path and query, as sent on the wire.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The simulated tenant.
#[derive(Clone)]
pub struct Sandbox {
    state: Arc<Mutex<State>>,
    /// Added to each answer to a read and to a write (the network between),
    /// and whether it varies.
    latency: Arc<Mutex<(std::time::Duration, std::time::Duration, bool)>>,
}

/// The seed data: two organizations; connections of four strategies.
pub mod seed {
    pub const ORG_ACME: &str = "org_acme";
    pub const ORG_GLOBEX: &str = "org_globex";
    pub const CON_DATABASE: &str = "con_database";
    pub const CON_SAML: &str = "con_saml";
    pub const CON_GOOGLE: &str = "con_google";
    pub const CON_OIDC: &str = "con_oidc";
    pub const SELF_SERVICE_PROFILE: &str = "ssp_sandbox";
    /// The Machine-to-Machine application `/clients` lists (any client id
    /// with a non-empty secret gets a token).
    pub const SANDBOX_CLIENT: &str = "sandbox-client";
}

pub use crate::association::tenant_defaults as association_defaults;

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    /// A tenant with the seed data.
    pub fn new() -> Sandbox {
        use seed::*;
        let org = |id: &str, name: &str, display: &str| Organization {
            id: id.into(),
            name: name.into(),
            display_name: display.into(),
        };
        let con = |id: &str, name: &str, strategy: &str| Connection {
            id: id.into(),
            name: name.into(),
            strategy: strategy.into(),
        };
        let mut state = State {
            organizations: vec![
                org(ORG_ACME, "acme", "Acme Corp"),
                org(ORG_GLOBEX, "globex", "Globex"),
            ],
            connections: vec![
                con(CON_DATABASE, "Username-Password-Authentication", "auth0"),
                con(CON_SAML, "acme-saml", "samlp"),
                con(CON_GOOGLE, "google-oauth2", "google-oauth2"),
                con(CON_OIDC, "globex-oidc", "oidc"),
            ],
            profiles: vec![SELF_SERVICE_PROFILE.into()],
            clients: vec![json!({
                "client_id": SANDBOX_CLIENT, "name": "tollgate sandbox automation",
                "app_type": "non_interactive", "is_first_party": true,
                "grant_types": ["client_credentials"],
            })],
            client_grants: vec![json!({
                "id": "cgr_sandbox", "client_id": SANDBOX_CLIENT,
                "audience": "https://sandbox.tollgate.invalid/api/v2/",
                "scope": ["read:organizations", "update:organizations", "create:organizations",
                          "read:organization_connections", "update:organization_connections",
                          "create:organization_connections", "delete:organization_connections",
                          "read:connections", "read:clients", "read:client_grants"],
            })],
            next_id: 1,
            jwks: json!({"keys": []}),
            token_ttl: 86400,
            ..State::default()
        };
        let mut existing = association_defaults();
        existing.insert("organization_access_level".into(), json!("readonly"));
        state
            .associations
            .insert((ORG_ACME.into(), CON_SAML.into()), existing);
        Sandbox {
            state: Arc::new(Mutex::new(state)),
            latency: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Sets the signing keys `/.well-known/jwks.json` serves.
    pub fn set_jwks(&self, jwks: Value) {
        self.lock().jwks = jwks;
    }

    /// Sets the lifetime of the tokens `/oauth/token` issues.
    pub fn set_token_ttl(&self, seconds: u64) {
        self.lock().token_ttl = seconds;
    }

    /// How many tokens `/oauth/token` has issued.
    pub fn tokens_issued(&self) -> u64 {
        self.lock().tokens_issued
    }

    /// Delays each answer by up to this long (at least a quarter), as a
    /// tenant across a network does.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.set_latencies(latency, latency);
    }

    /// Delays answers to reads (GET, HEAD) and to writes differently.
    pub fn set_latencies(&self, reads: std::time::Duration, writes: std::time::Duration) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = (reads, writes, true);
    }

    /// Makes every write wait this long before the tenant acts on it (and
    /// answers): a tenant that stalls, and applies a change after the
    /// caller gave up. Reads are answered at once.
    pub fn set_stall(&self, delay: std::time::Duration) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) =
            (std::time::Duration::ZERO, delay, false);
    }

    /// Stops (or resumes) refusing signup without membership: a tenant that
    /// enforces less than the policy does.
    pub fn set_lenient(&self, lenient: bool) {
        self.lock().lenient = lenient;
    }

    /// Applies `extra` on top of every association update from now on: a
    /// tenant that does more than it was asked (`None`: stop).
    pub fn set_extra_change(&self, extra: Option<Map<String, Value>>) {
        self.lock().extra_change = extra;
    }

    /// Sets an association's fields at the tenant directly, as the dashboard
    /// or another credential would (no request passes through tollgate).
    pub fn set_association(&self, org: &str, connection: &str, fields: Map<String, Value>) {
        self.lock()
            .associations
            .insert((org.to_owned(), connection.to_owned()), fields);
    }

    /// Enforces a rate limit of `per_second` requests (a bucket that size,
    /// refilled each second): past it, 429 with `Retry-After` and the
    /// `x-ratelimit-*` headers, as the tenant answers. `None`: the headers
    /// only (the default).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.lock().bucket = per_second.map(|n| state::Bucket {
            limit: f64::from(n.max(1)),
            tokens: f64::from(n.max(1)),
            at: std::time::Instant::now(),
            refused: 0,
        });
    }

    /// Requests refused with 429 by the enforced rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.lock().bucket.as_ref().map_or(0, |b| b.refused)
    }

    /// Adds `n` organizations (`org_scan_0000`, …), each with the first
    /// `per_org` connections enabled with the tenant's defaults.
    pub fn add_organizations(&self, n: usize, per_org: usize) {
        let mut st = self.lock();
        let connections: Vec<String> = st.connections.iter().map(|c| c.id.clone()).collect();
        for i in 0..n {
            let id = format!("org_scan_{i:04}");
            st.organizations.push(Organization {
                id: id.clone(),
                name: format!("scan-{i:04}"),
                display_name: format!("Scan {i}"),
            });
            for cid in connections.iter().take(per_org) {
                st.associations
                    .insert((id.clone(), cid.clone()), association_defaults());
            }
        }
    }

    /// Accepts only these bearer tokens from now on (`None`: any non-empty
    /// one, the default).
    pub fn set_tokens(&self, tokens: Option<Vec<String>>) {
        self.lock().tokens = tokens;
    }

    /// The association's current fields, if it exists.
    pub fn association(&self, org: &str, connection: &str) -> Option<Map<String, Value>> {
        self.lock()
            .associations
            .get(&(org.to_owned(), connection.to_owned()))
            .cloned()
    }

    /// Logs a successful write (of the Management API, or at the
    /// dashboard) in the tenant's log.
    fn log(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        status: StatusCode,
        value: &Value,
    ) {
        let mut st = self.lock();
        // The tenant routes case-insensitively: so does its log.
        let lower = path.to_ascii_lowercase();
        let (path, actor) = if lower.starts_with("/sandbox/dashboard/") {
            let rest = &path["/sandbox/dashboard/".len()..];
            let actor = state::Actor {
                client_id: "sandbox-dashboard".into(),
                client_name: "Auth0 Management Dashboard".into(),
                user: Some("admin@sandbox.example".into()),
            };
            (format!("/api/v2/{rest}"), actor)
        } else if lower.starts_with("/api/v2/") {
            let token = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            let client = st
                .token_clients
                .get(token)
                .cloned()
                .unwrap_or_else(|| "sandbox-api-client".into());
            let actor = state::Actor {
                client_name: client.clone(),
                client_id: client,
                user: None,
            };
            (path.to_owned(), actor)
        } else {
            return;
        };
        st.log_write(method, &path, body, status, value, actor);
    }

    fn answer(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let (path, query) = (uri.path(), uri.query());
        // The authentication endpoints take no bearer token.
        if method == Method::GET && path == "/.well-known/jwks.json" {
            return (StatusCode::OK, self.lock().jwks.clone());
        }
        if method == Method::POST && path == "/oauth/token" {
            // The SDKs send the grant form-encoded; curl users send JSON.
            let form = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| {
                    t.to_ascii_lowercase()
                        .starts_with("application/x-www-form-urlencoded")
                });
            if form {
                let fields: Map<String, Value> = pages::params(std::str::from_utf8(body).ok())
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                return self.lock().issue_token(&fields);
            }
            return with_body(body, |b| self.lock().issue_token(&b));
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.trim().is_empty());
        let Some(token) = token else {
            return error(StatusCode::UNAUTHORIZED, "Missing authentication", None);
        };
        if let Some(accepted) = &self.lock().tokens
            && !accepted.iter().any(|a| a == token)
        {
            return error(StatusCode::UNAUTHORIZED, "Invalid token", None);
        }
        let Ok(segments) = decode_segments(path) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid request URI",
                Some("invalid_uri"),
            );
        };
        let segs: Vec<String> = segments.iter().map(|s| s.to_owned()).collect();
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let mut st = self.lock();
        match (method.clone(), l.as_slice()) {
            (Method::GET, ["api", "v2", "organizations"]) => {
                let list: Vec<Value> = st.organizations.iter().map(org_json).collect();
                pages::list(list, query, "organizations", true)
            }
            (Method::POST, ["api", "v2", "organizations"]) => with_body(body, |b| st.create_org(b)),
            (Method::GET, ["api", "v2", "organizations", "name", _]) => {
                match st.organizations.iter().find(|o| o.name == segs[4]) {
                    Some(o) => (StatusCode::OK, org_json(o)),
                    None => no_org(),
                }
            }
            // No organization grants access to an API here: an empty list.
            (Method::GET, ["api", "v2", "organizations", _, "client-grants"]) => {
                match st.org(&segs[3]) {
                    Some(_) => pages::list(Vec::new(), query, "client_grants", false),
                    None => no_org(),
                }
            }
            (Method::GET, ["api", "v2", "organizations", _]) => match st.org(&segs[3]) {
                Some(o) => (StatusCode::OK, org_json(o)),
                None => no_org(),
            },
            (
                m,
                [
                    "api",
                    "v2",
                    "organizations",
                    _,
                    family @ ("connections" | "enabled_connections"),
                    rest @ ..,
                ],
            ) => {
                let legacy = *family == "enabled_connections";
                let org = segs[3].clone();
                if st.org(&org).is_none() {
                    return no_org();
                }
                match (m, rest) {
                    (Method::GET, []) => {
                        let key = if legacy {
                            "enabled_connections"
                        } else {
                            "connections"
                        };
                        pages::list(st.list_associations(&org, legacy), query, key, false)
                    }
                    (Method::POST, []) => {
                        with_body(body, |b| st.create_association(&org, b, legacy))
                    }
                    (Method::GET, [_]) => st.get_association(&org, &segs[5], legacy),
                    (Method::PATCH, [_]) => {
                        with_body(body, |b| st.update_association(&org, &segs[5], b, legacy))
                    }
                    (Method::DELETE, [_]) => st.delete_association(&org, &segs[5]),
                    _ => not_found(),
                }
            }
            (Method::GET, ["api", "v2", "connections"]) => {
                let list: Vec<Value> = st.connections.iter().map(connection_json).collect();
                pages::list(list, query, "connections", true)
            }
            (Method::GET, ["api", "v2", "clients"]) => {
                pages::list(st.clients.clone(), query, "clients", false)
            }
            (Method::GET, ["api", "v2", "clients", _]) => {
                match st
                    .clients
                    .iter()
                    .find(|c| c["client_id"] == segs[3].as_str())
                {
                    Some(c) => (StatusCode::OK, c.clone()),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "The client does not exist",
                        Some("inexistent_client"),
                    ),
                }
            }
            (Method::GET, ["api", "v2", "logs"]) => {
                let params = pages::params(query);
                let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                let take = get("take").and_then(|t| t.parse().ok()).unwrap_or(50);
                (
                    StatusCode::OK,
                    Value::Array(st.logs_after(get("from"), take)),
                )
            }
            // The dashboard, or any credential that is not tollgate's: a
            // change made at the tenant directly.
            (Method::PATCH, ["sandbox", "dashboard", "organizations", _, "connections", _]) => {
                let (org, cid) = (segs[3].clone(), segs[5].clone());
                with_body(body, |b| st.update_association(&org, &cid, b, false))
            }
            (Method::GET, ["api", "v2", "client-grants"]) => {
                pages::list(st.client_grants.clone(), query, "client_grants", true)
            }
            (Method::GET, ["api", "v2", "connections", _]) => match st.connection(&segs[3]) {
                Some(c) => (StatusCode::OK, connection_json(c)),
                None => no_connection(),
            },
            (Method::POST, ["api", "v2", "self-service-profiles", _, "sso-ticket"]) => {
                if !st.profiles.contains(&segs[3]) {
                    return error(
                        StatusCode::NOT_FOUND,
                        "The self-service profile does not exist",
                        Some("inexistent_self_service_profile"),
                    );
                }
                with_body(body, |_| {
                    let n = st.fresh_id();
                    (
                        StatusCode::CREATED,
                        json!({"ticket": format!("https://sandbox.tollgate.invalid/self-service/connections-flow?ticket=tkt_{n}")}),
                    )
                })
            }
            _ => not_found(),
        }
    }
}

impl Handler for Sandbox {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        self.lock().received.push(Received {
            method: parts.method.clone(),
            target,
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        let (reads, writes, varies) = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let latency = if parts.method.is_safe() {
            reads
        } else {
            writes
        };
        // A stalled tenant acts late: the change lands after the wait.
        if !varies && !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        // An enforced rate limit answers before anything is done.
        let limited = self.lock().bucket.as_mut().is_some_and(|b| !b.take());
        let (status, value) = if limited {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "Global limit has been reached",
                Some("too_many_requests"),
            )
        } else {
            self.answer(&parts.method, &parts.uri, &parts.headers, &body)
        };
        if status.is_success() && !parts.method.is_safe() {
            self.log(
                &parts.method,
                parts.uri.path(),
                &parts.headers,
                &body,
                status,
                &value,
            );
        }
        // Otherwise the answer travels back over a network: it reflects the
        // state when it was computed, and arrives some time later (jittered,
        // so answers overtake each other as they do across a real network).
        if varies && !latency.is_zero() {
            tokio::time::sleep(jitter(latency)).await;
        }
        let mut resp = if status == StatusCode::NO_CONTENT {
            Response::new(full(Bytes::new()))
        } else {
            let mut r = Response::new(full(Bytes::from(value.to_string())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            r
        };
        *resp.status_mut() = status;
        let st = self.lock();
        match &st.bucket {
            Some(b) => {
                let reset = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| (d.as_secs_f64() + b.until_full()).ceil() as u64)
                    .unwrap_or_default();
                let h = resp.headers_mut();
                h.insert("x-ratelimit-limit", HeaderValue::from(b.limit as u64));
                h.insert("x-ratelimit-remaining", HeaderValue::from(b.tokens as u64));
                h.insert("x-ratelimit-reset", HeaderValue::from(reset));
                if limited {
                    h.insert(http::header::RETRY_AFTER, HeaderValue::from(1));
                }
            }
            None => rate_limit_headers(resp.headers_mut(), st.received.len()),
        }
        drop(st);
        resp
    }
}

/// A random duration between a quarter and the whole of `max`.
fn jitter(max: std::time::Duration) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let fraction = 0.25 + (random % 1000) as f64 * 0.00075;
    max.mul_f64(fraction)
}

/// Auth0's rate-limit headers: a bucket of 50 that refills each second.
fn rate_limit_headers(headers: &mut HeaderMap, served: usize) {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 1)
        .unwrap_or_default();
    let remaining = 49 - (served % 50);
    headers.insert("x-ratelimit-limit", HeaderValue::from(50));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
}
