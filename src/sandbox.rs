//! The simulated tenant behind `serve --sandbox`, and the tenant the test
//! suite talks to.
//!
//! It behaves like the Management API where tollgate can tell the
//! difference: case-insensitive routing with one optional trailing slash,
//! percent-decoded segments, bearer authentication, Auth0's error bodies and
//! status codes (200/201/204/400/401/404/409), rate-limit headers, and the
//! tenant's own rule that signup needs membership on login. It records every
//! request it receives, so tests can show what reached the tenant.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::route::decode_segments;
use crate::schema::{self, ACCESS_LEVELS};
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

#[derive(Clone, Debug)]
struct Organization {
    id: String,
    name: String,
    display_name: String,
}

#[derive(Clone, Debug)]
struct Connection {
    id: String,
    name: String,
    strategy: String,
}

#[derive(Default)]
struct State {
    organizations: Vec<Organization>,
    connections: Vec<Connection>,
    /// (organization id, connection id) → the association's fields.
    associations: BTreeMap<(String, String), Map<String, Value>>,
    profiles: Vec<String>,
    received: Vec<Received>,
    next_id: u64,
    /// What `/.well-known/jwks.json` serves.
    jwks: Value,
    /// `expires_in` of the tokens `/oauth/token` issues.
    token_ttl: u64,
    tokens_issued: u64,
}

/// The simulated tenant.
#[derive(Clone)]
pub struct Sandbox {
    state: Arc<Mutex<State>>,
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
}

pub use crate::policy::state::tenant_defaults as association_defaults;

const LEGACY_FIELDS: [&str; 3] = [
    "assign_membership_on_login",
    "is_signup_enabled",
    "show_as_button",
];

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

    /// The association's current fields, if it exists.
    pub fn association(&self, org: &str, connection: &str) -> Option<Map<String, Value>> {
        self.lock()
            .associations
            .get(&(org.to_owned(), connection.to_owned()))
            .cloned()
    }

    fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (StatusCode, Value) {
        // The authentication endpoints take no bearer token.
        if method == Method::GET && path == "/.well-known/jwks.json" {
            return (StatusCode::OK, self.lock().jwks.clone());
        }
        if method == Method::POST && path == "/oauth/token" {
            return with_body(body, |b| self.lock().issue_token(&b));
        }
        let authorized = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| !t.trim().is_empty());
        if !authorized {
            return error(StatusCode::UNAUTHORIZED, "Missing authentication", None);
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
                (StatusCode::OK, Value::Array(list))
            }
            (Method::POST, ["api", "v2", "organizations"]) => with_body(body, |b| st.create_org(b)),
            (Method::GET, ["api", "v2", "organizations", "name", _]) => {
                match st.organizations.iter().find(|o| o.name == segs[4]) {
                    Some(o) => (StatusCode::OK, org_json(o)),
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
                    (Method::GET, []) => st.list_associations(&org, legacy),
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
                (StatusCode::OK, Value::Array(list))
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

impl State {
    /// The client-credentials grant: any client id with a non-empty secret.
    fn issue_token(&mut self, body: &Map<String, Value>) -> (StatusCode, Value) {
        let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
        if s("grant_type") != "client_credentials"
            || s("client_id").is_empty()
            || s("client_secret").is_empty()
        {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                Some("access_denied"),
            );
        }
        self.tokens_issued += 1;
        let token = format!("sandbox-mgmt-token-{}", self.tokens_issued);
        (
            StatusCode::OK,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl,
                   "scope": "read:organizations update:organizations"}),
        )
    }

    fn org(&self, id: &str) -> Option<&Organization> {
        self.organizations.iter().find(|o| o.id == id)
    }

    fn connection(&self, id: &str) -> Option<&Connection> {
        self.connections.iter().find(|c| c.id == id)
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn association_json(
        &self,
        org: &str,
        cid: &str,
        fields: &Map<String, Value>,
        legacy: bool,
    ) -> Value {
        let mut out = Map::new();
        out.insert("connection_id".into(), json!(cid));
        for (k, v) in fields {
            if !legacy || LEGACY_FIELDS.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
        if let Some(c) = self.connection(cid) {
            out.insert(
                "connection".into(),
                json!({"name": c.name, "strategy": c.strategy}),
            );
        }
        let _ = org;
        Value::Object(out)
    }

    fn list_associations(&self, org: &str, legacy: bool) -> (StatusCode, Value) {
        let list: Vec<Value> = self
            .associations
            .iter()
            .filter(|((o, _), _)| o == org)
            .map(|((o, c), f)| self.association_json(o, c, f, legacy))
            .collect();
        (StatusCode::OK, Value::Array(list))
    }

    fn get_association(&self, org: &str, cid: &str, legacy: bool) -> (StatusCode, Value) {
        match self.associations.get(&(org.to_owned(), cid.to_owned())) {
            Some(f) => (StatusCode::OK, self.association_json(org, cid, f, legacy)),
            None => no_association(),
        }
    }

    fn create_association(
        &mut self,
        org: &str,
        body: Map<String, Value>,
        legacy: bool,
    ) -> (StatusCode, Value) {
        let Some(Value::String(cid)) = body.get("connection_id").cloned() else {
            return invalid("Missing required property: connection_id");
        };
        if let Err(e) = check_fields(&body, legacy, true) {
            return invalid(&e);
        }
        if self.connection(&cid).is_none() {
            return no_connection();
        }
        let key = (org.to_owned(), cid.clone());
        if self.associations.contains_key(&key) {
            return error(
                StatusCode::CONFLICT,
                "The connection is already enabled for this organization",
                Some("organization_connection_already_exists"),
            );
        }
        let mut fields = association_defaults();
        merge(&mut fields, &body);
        if let Err(e) = tenant_rules(&fields) {
            return invalid(&e);
        }
        let answer = self.association_json(org, &cid, &fields, legacy);
        self.associations.insert(key, fields);
        (StatusCode::CREATED, answer)
    }

    fn update_association(
        &mut self,
        org: &str,
        cid: &str,
        body: Map<String, Value>,
        legacy: bool,
    ) -> (StatusCode, Value) {
        if let Err(e) = check_fields(&body, legacy, false) {
            return invalid(&e);
        }
        let key = (org.to_owned(), cid.to_owned());
        let Some(current) = self.associations.get(&key) else {
            return no_association();
        };
        let mut fields = current.clone();
        merge(&mut fields, &body);
        if let Err(e) = tenant_rules(&fields) {
            return invalid(&e);
        }
        let answer = self.association_json(org, cid, &fields, legacy);
        self.associations.insert(key, fields);
        (StatusCode::OK, answer)
    }

    fn delete_association(&mut self, org: &str, cid: &str) -> (StatusCode, Value) {
        match self.associations.remove(&(org.to_owned(), cid.to_owned())) {
            Some(_) => (StatusCode::NO_CONTENT, Value::Null),
            None => no_association(),
        }
    }

    fn create_org(&mut self, body: Map<String, Value>) -> (StatusCode, Value) {
        let Some(Value::String(name)) = body.get("name").cloned() else {
            return invalid("Missing required property: name");
        };
        let valid_name = !name.is_empty()
            && name.len() <= 50
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            return invalid("String does not match pattern ^[a-z0-9_-]{1,50}$: name");
        }
        if self.organizations.iter().any(|o| o.name == name) {
            return error(
                StatusCode::CONFLICT,
                "An organization with this name already exists",
                Some("organization_conflict"),
            );
        }
        let items = match body.get("enabled_connections") {
            None => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => return invalid("Expected type array: enabled_connections"),
        };
        let mut associations = Vec::new();
        for item in items {
            let Value::Object(item) = item else {
                return invalid("Expected type object: enabled_connections");
            };
            let Some(Value::String(cid)) = item.get("connection_id").cloned() else {
                return invalid("Missing required property: connection_id");
            };
            if let Err(e) = check_fields(&item, false, true) {
                return invalid(&e);
            }
            if self.connection(&cid).is_none() {
                return no_connection();
            }
            let mut fields = association_defaults();
            merge(&mut fields, &item);
            if let Err(e) = tenant_rules(&fields) {
                return invalid(&e);
            }
            associations.push((cid, fields));
        }
        let id = format!("org_{:016x}", self.fresh_id());
        let display_name = body
            .get("display_name")
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_owned();
        let org = Organization {
            id: id.clone(),
            name,
            display_name,
        };
        let answer = org_json(&org);
        self.organizations.push(org);
        for (cid, fields) in associations {
            self.associations.insert((id.clone(), cid), fields);
        }
        (StatusCode::CREATED, answer)
    }
}

/// The tenant's own validation of association fields (it does not trust
/// callers either).
fn check_fields(body: &Map<String, Value>, legacy: bool, create: bool) -> Result<(), String> {
    for (k, v) in body {
        let ok = match k.as_str() {
            "connection_id" => create && v.is_string(),
            "assign_membership_on_login" | "show_as_button" | "is_signup_enabled" => v.is_boolean(),
            _ if legacy => false,
            "organization_connection_name" => {
                v.is_null()
                    || v.as_str()
                        .is_some_and(|s| (1..=50).contains(&s.chars().count()))
            }
            "organization_access_level" | "organization_member_access_level" => {
                (v.is_null() && !create) || v.as_str().is_some_and(|s| ACCESS_LEVELS.contains(&s))
            }
            "is_enabled" => v.is_boolean() || (v.is_null() && !create),
            _ => return Err(format!("Additional properties not allowed: {k}")),
        };
        if !ok {
            return Err(format!("Invalid value on property {k}"));
        }
    }
    Ok(())
}

/// Auth0 refuses signup on an organization connection that does not assign
/// membership on login.
fn tenant_rules(fields: &Map<String, Value>) -> Result<(), String> {
    let on = |k: &str| fields.get(k) == Some(&Value::Bool(true));
    if on("is_signup_enabled") && !on("assign_membership_on_login") {
        return Err("is_signup_enabled requires assign_membership_on_login to be true".into());
    }
    Ok(())
}

fn merge(fields: &mut Map<String, Value>, body: &Map<String, Value>) {
    for (k, v) in body {
        if k != "connection_id" {
            fields.insert(k.clone(), v.clone());
        }
    }
}

fn with_body(
    body: &[u8],
    f: impl FnOnce(Map<String, Value>) -> (StatusCode, Value),
) -> (StatusCode, Value) {
    match schema::parse_strict(body) {
        Ok(map) => f(map),
        Err(e) => invalid(&e.to_string()),
    }
}

fn org_json(o: &Organization) -> Value {
    json!({"id": o.id, "name": o.name, "display_name": o.display_name})
}

fn connection_json(c: &Connection) -> Value {
    json!({
        "id": c.id, "name": c.name, "strategy": c.strategy,
        "enabled_clients": [], "realms": [c.name], "is_domain_connection": false,
    })
}

fn error(status: StatusCode, message: &str, code: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message,
    });
    if let (Some(code), Value::Object(map)) = (code, &mut body) {
        map.insert("errorCode".into(), json!(code));
    }
    (status, body)
}

fn invalid(message: &str) -> (StatusCode, Value) {
    error(
        StatusCode::BAD_REQUEST,
        &format!("Payload validation error: '{message}'."),
        Some("invalid_body"),
    )
}

fn not_found() -> (StatusCode, Value) {
    error(StatusCode::NOT_FOUND, "Not Found", None)
}

fn no_org() -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "No organization found by that id or name",
        Some("inexistent_organization"),
    )
}

fn no_connection() -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "The connection does not exist",
        Some("inexistent_connection"),
    )
}

fn no_association() -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "The connection is not enabled for this organization",
        Some("inexistent_organization_connection"),
    )
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
        let (status, value) = self.answer(&parts.method, parts.uri.path(), &parts.headers, &body);
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
        rate_limit_headers(resp.headers_mut(), self.lock().received.len());
        resp
    }
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
