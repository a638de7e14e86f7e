//! The simulated tenant's data and behaviour: organizations, connections,
//! associations, and the Management API's answers about them.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{Received, association_defaults};
use crate::association::{self, ACCESS_LEVELS, Type};
use crate::schema;

#[derive(Clone, Debug)]
pub(super) struct Organization {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) display_name: String,
}

#[derive(Clone, Debug)]
pub(super) struct Connection {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) strategy: String,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) organizations: Vec<Organization>,
    pub(super) connections: Vec<Connection>,
    /// (organization id, connection id) → the association's fields.
    pub(super) associations: BTreeMap<(String, String), Map<String, Value>>,
    pub(super) profiles: Vec<String>,
    /// What `/clients` and `/client-grants` list.
    pub(super) clients: Vec<Value>,
    pub(super) client_grants: Vec<Value>,
    pub(super) received: Vec<Received>,
    pub(super) next_id: u64,
    /// What `/.well-known/jwks.json` serves.
    pub(super) jwks: Value,
    /// `expires_in` of the tokens `/oauth/token` issues.
    pub(super) token_ttl: u64,
    pub(super) tokens_issued: u64,
    /// Whether the tenant refuses signup without membership (Auth0 does).
    pub(super) lenient: bool,
    /// Applied on top of every association update: a tenant that does more
    /// than it was asked.
    pub(super) extra_change: Option<Map<String, Value>>,
    /// The bearer tokens accepted; `None`: any non-empty one.
    pub(super) tokens: Option<Vec<String>>,
    /// The rate limit, enforced (`None`: advertised only).
    pub(super) bucket: Option<Bucket>,
    /// The tenant's log: a `sapi` event for every successful write.
    pub(super) logs: Vec<Value>,
    /// Which client each issued token belongs to.
    pub(super) token_clients: std::collections::HashMap<String, String>,
}

/// Who made a change, as the tenant's log names it.
pub(super) struct Actor {
    pub(super) client_id: String,
    pub(super) client_name: String,
    pub(super) user: Option<String>,
}

impl State {
    /// Logs a successful write as Auth0 does: a `sapi` event with the
    /// request and the response.
    pub(super) fn log_write(
        &mut self,
        method: &http::Method,
        path: &str,
        body: &[u8],
        status: StatusCode,
        answer: &Value,
        actor: Actor,
    ) {
        let n = self.logs.len() + 1;
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut auth = json!({"strategy": "jwt", "credentials": {"scopes": []}});
        if let Some(user) = &actor.user {
            auth["user"] = json!({"email": user, "name": user, "user_id": format!("auth0|{user}")});
        }
        self.logs.push(json!({
            "log_id": format!("9002{n:020}"),
            "date": date,
            "type": "sapi",
            "description": format!("{} {}", method.as_str(), path),
            "client_id": actor.client_id,
            "client_name": actor.client_name,
            "ip": "127.0.0.1",
            "details": {
                "request": {
                    "method": method.as_str().to_ascii_lowercase(),
                    "path": path,
                    "query": {},
                    "body": body,
                    "channel": if actor.user.is_some() { "https://manage.auth0.com/" } else { "api" },
                    "auth": auth,
                },
                "response": {"statusCode": status.as_u16(), "body": answer},
            },
        }));
    }

    /// `GET /api/v2/logs?from=LOG_ID&take=N`: the events after `from`,
    /// oldest first.
    pub(super) fn logs_after(&self, from: Option<&str>, take: usize) -> Vec<Value> {
        self.logs
            .iter()
            .filter(|l| from.is_none_or(|f| l["log_id"].as_str().is_some_and(|id| id > f)))
            .take(take.clamp(1, 100))
            .cloned()
            .collect()
    }
}

/// A token bucket: `limit` requests, refilled at `limit` per second, as
/// the Management API's `x-ratelimit-*` headers describe it.
pub(super) struct Bucket {
    pub(super) limit: f64,
    pub(super) tokens: f64,
    pub(super) at: std::time::Instant,
    /// Requests refused with 429.
    pub(super) refused: u64,
}

impl Bucket {
    /// Takes one request's token; `false`: none left (a 429).
    pub(super) fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.limit;
        self.tokens = (self.tokens + refill).min(self.limit);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Seconds until the bucket is full again.
    pub(super) fn until_full(&self) -> f64 {
        (self.limit - self.tokens) / self.limit
    }
}

/// A Management API token as the tenant issues them: a JWT naming the
/// client (`azp`, `sub` `CLIENT@clients`, `gty`), so the gateway has a
/// caller to record, to scope exceptions by and to ask approvals for. It
/// is unsigned (its third part is `sandbox-mgmt-token-N`): the sandbox
/// accepts any token, and tollgate reads a passthrough caller's claims
/// without verifying them (`identity.verify` is for real tenants).
fn client_token(client_id: &str, n: u64, ttl: u64) -> String {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let header = json!({"alg": "none", "typ": "JWT", "kid": "sandbox"});
    let claims = json!({
        "iss": "tollgate-sandbox",
        "sub": format!("{client_id}@clients"),
        "aud": "tollgate-sandbox/api/v2/",
        "azp": client_id,
        "gty": "client-credentials",
        "scope": "read:organizations update:organizations",
        "iat": now,
        "exp": now + ttl,
    });
    format!("{}.{}.sandbox-mgmt-token-{n}", b64(header), b64(claims))
}

impl State {
    /// The client-credentials grant: any client id with a non-empty secret.
    pub(super) fn issue_token(&mut self, body: &Map<String, Value>) -> (StatusCode, Value) {
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
        let token = client_token(s("client_id"), self.tokens_issued, self.token_ttl);
        self.token_clients
            .insert(token.clone(), s("client_id").to_owned());
        (
            StatusCode::OK,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl,
                   "scope": "read:organizations update:organizations"}),
        )
    }

    pub(super) fn org(&self, id: &str) -> Option<&Organization> {
        self.organizations.iter().find(|o| o.id == id)
    }

    pub(super) fn connection(&self, id: &str) -> Option<&Connection> {
        self.connections.iter().find(|c| c.id == id)
    }

    pub(super) fn fresh_id(&mut self) -> u64 {
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
            // The tenant leaves unset fields out (a name never given).
            if v.is_null() {
                continue;
            }
            if !legacy || association::field_named(k).is_some_and(|f| f.legacy) {
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

    pub(super) fn list_associations(&self, org: &str, legacy: bool) -> Vec<Value> {
        self.associations
            .iter()
            .filter(|((o, _), _)| o == org)
            .map(|((o, c), f)| self.association_json(o, c, f, legacy))
            .collect()
    }

    pub(super) fn get_association(
        &self,
        org: &str,
        cid: &str,
        legacy: bool,
    ) -> (StatusCode, Value) {
        match self.associations.get(&(org.to_owned(), cid.to_owned())) {
            Some(f) => (StatusCode::OK, self.association_json(org, cid, f, legacy)),
            None => no_association(),
        }
    }

    pub(super) fn create_association(
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
        if !self.lenient
            && let Err(e) = tenant_rules(&fields)
        {
            return invalid(&e);
        }
        let answer = self.association_json(org, &cid, &fields, legacy);
        self.associations.insert(key, fields);
        (StatusCode::CREATED, answer)
    }

    pub(super) fn update_association(
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
        if let Some(extra) = &self.extra_change {
            merge(&mut fields, extra);
        }
        if !self.lenient
            && let Err(e) = tenant_rules(&fields)
        {
            return invalid(&e);
        }
        let answer = self.association_json(org, cid, &fields, legacy);
        self.associations.insert(key, fields);
        (StatusCode::OK, answer)
    }

    pub(super) fn delete_association(&mut self, org: &str, cid: &str) -> (StatusCode, Value) {
        match self.associations.remove(&(org.to_owned(), cid.to_owned())) {
            Some(_) => (StatusCode::NO_CONTENT, Value::Null),
            None => no_association(),
        }
    }

    pub(super) fn create_org(&mut self, body: Map<String, Value>) -> (StatusCode, Value) {
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
        let ty = match association::field_named(k) {
            Some(f) if f.ty == Type::Id && create => f.ty,
            Some(f) if f.ty != Type::Id && (f.legacy || !legacy) => f.ty,
            _ => return Err(format!("Additional properties not allowed: {k}")),
        };
        let ok = match ty {
            Type::Id => v.is_string(),
            Type::Bool => v.is_boolean(),
            Type::Name => {
                v.is_null()
                    || v.as_str()
                        .is_some_and(|s| (1..=50).contains(&s.encode_utf16().count()))
            }
            Type::AccessLevel => {
                (v.is_null() && !create) || v.as_str().is_some_and(|s| ACCESS_LEVELS.contains(&s))
            }
            Type::NullableOnUpdateBool => v.is_boolean() || (v.is_null() && !create),
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

pub(super) fn with_body(
    body: &[u8],
    f: impl FnOnce(Map<String, Value>) -> (StatusCode, Value),
) -> (StatusCode, Value) {
    match schema::parse_strict(body) {
        Ok(map) => f(map),
        Err(e) => invalid(&e.to_string()),
    }
}

pub(super) fn org_json(o: &Organization) -> Value {
    json!({"id": o.id, "name": o.name, "display_name": o.display_name})
}

pub(super) fn connection_json(c: &Connection) -> Value {
    json!({
        "id": c.id, "name": c.name, "strategy": c.strategy,
        "enabled_clients": [], "realms": [c.name], "is_domain_connection": false,
    })
}

pub(super) fn error(status: StatusCode, message: &str, code: Option<&str>) -> (StatusCode, Value) {
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

pub(super) fn invalid(message: &str) -> (StatusCode, Value) {
    error(
        StatusCode::BAD_REQUEST,
        &format!("Payload validation error: '{message}'."),
        Some("invalid_body"),
    )
}

pub(super) fn not_found() -> (StatusCode, Value) {
    error(StatusCode::NOT_FOUND, "Not Found", None)
}

pub(super) fn no_org() -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "No organization found by that id or name",
        Some("inexistent_organization"),
    )
}

pub(super) fn no_connection() -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "The connection does not exist",
        Some("inexistent_connection"),
    )
}

pub(super) fn no_association() -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "The connection is not enabled for this organization",
        Some("inexistent_organization_connection"),
    )
}
