//! Tenant context for rules: the organization, the connection and the
//! association as it stands, fetched with the caller's credentials, only
//! when an applicable rule reads them, concurrently, and cached.
//!
//! The cache keeps answers for `context.cache_ttl` and forgets an
//! association as soon as a change to it through tollgate succeeds, so a
//! second PATCH is judged against the state the first one produced.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::policy::{Input, Needs, PolicySet, state};
use crate::route::{Governed, Operation};
use crate::schema::{Change, OrgRef, Validated};
use crate::upstream::Upstream;

/// The most entries the cache holds; past it, expired entries are dropped
/// and, if still full, the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// Context could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The tenant could not be asked, or answered with an error.
    #[error("context needed by a rule could not be fetched: {0}")]
    Unavailable(String),
    /// The tenant refused the caller's credentials: its answer is the caller's.
    #[error("the tenant refused the caller's credentials ({})", .0.status())]
    Refused(Box<Response<Bytes>>),
}

/// Lookups against the tenant, with a cache.
pub struct ContextClient {
    upstream: Upstream,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<Value>)>>,
}

/// What one request is, besides its body: for `request` and `caller`.
pub struct RequestFacts {
    pub caller: Value,
    pub request: Value,
    pub now: chrono::DateTime<chrono::Utc>,
}

fn enc(s: &str) -> String {
    crate::route::encode_segment(s)
}

impl ContextClient {
    pub fn new(upstream: Upstream, ttl: Duration) -> ContextClient {
        ContextClient {
            upstream,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, path: &str) -> Option<Option<Value>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let found = cache
            .get(path)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone());
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("tollgate_context_cache_total", "result" => result).increment(1);
        found
    }

    fn store(&self, path: &str, value: Option<Value>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(path.to_owned(), (Instant::now(), value));
    }

    /// Forgets what is cached about an association (after a change to it).
    pub fn invalidate(&self, org_id: &str, connection_id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for family in ["connections", "enabled_connections"] {
            cache.remove(&format!(
                "/api/v2/organizations/{}/{family}/{}",
                enc(org_id),
                enc(connection_id)
            ));
        }
    }

    /// GETs a resource: `Some` on 200, `None` on 404.
    async fn get(
        &self,
        path: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<Option<Value>, ContextError> {
        if self.ttl > Duration::ZERO
            && let Some(v) = self.cached(path)
        {
            return Ok(v);
        }
        let uri = self
            .upstream
            .uri(path)
            .map_err(|e| ContextError::Unavailable(e.to_string()))?;
        let mut req = Request::new(crate::full(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri;
        if let Some(auth) = auth {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let resp = self
            .upstream
            .send_buffered(req)
            .await
            .map_err(|e| ContextError::Unavailable(format!("GET {path}: {e}")))?;
        let value = match resp.status() {
            StatusCode::OK => Some(
                serde_json::from_slice(resp.body())
                    .map_err(|e| ContextError::Unavailable(format!("GET {path}: not JSON: {e}")))?,
            ),
            StatusCode::NOT_FOUND => None,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(ContextError::Refused(Box::new(resp)));
            }
            s => {
                return Err(ContextError::Unavailable(format!(
                    "GET {path}: the tenant answered {s}"
                )));
            }
        };
        if self.ttl > Duration::ZERO {
            self.store(path, value.clone());
        }
        Ok(value)
    }

    /// The organization named by id, or else by name: `{id, name}`.
    async fn org(
        &self,
        id_or_name: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<Value, ContextError> {
        let by_id = self
            .get(&format!("/api/v2/organizations/{}", enc(id_or_name)), auth)
            .await?;
        let found = match by_id {
            Some(v) => Some(v),
            None => {
                self.get(
                    &format!("/api/v2/organizations/name/{}", enc(id_or_name)),
                    auth,
                )
                .await?
            }
        };
        Ok(match found {
            Some(o) => json!({"id": o.get("id"), "name": o.get("name")}),
            None => json!({"id": id_or_name, "name": null}),
        })
    }

    /// The connection: `{id, name, strategy, is_database}`.
    async fn connection(
        &self,
        id: Option<&str>,
        auth: Option<&HeaderValue>,
    ) -> Result<Value, ContextError> {
        let Some(id) = id else {
            return Ok(json!({"id": null, "name": null, "strategy": null, "is_database": false}));
        };
        let found = self
            .get(&format!("/api/v2/connections/{}", enc(id)), auth)
            .await?;
        let strategy = found
            .as_ref()
            .and_then(|c| c.get("strategy"))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(json!({
            "id": id,
            "name": found.as_ref().and_then(|c| c.get("name")).cloned().unwrap_or(Value::Null),
            "is_database": strategy == "auth0",
            "strategy": strategy,
        }))
    }

    /// The association as it stands, through the current family's route,
    /// falling back to the legacy one.
    async fn association(
        &self,
        org_id: &str,
        connection_id: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<Option<Map<String, Value>>, ContextError> {
        for family in ["connections", "enabled_connections"] {
            let path = format!(
                "/api/v2/organizations/{}/{family}/{}",
                enc(org_id),
                enc(connection_id)
            );
            if let Some(Value::Object(m)) = self.get(&path, auth).await? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// The rules' view of every change a request asks for, fetching what the
    /// applicable rules need.
    pub async fn inputs(
        &self,
        policy: &PolicySet,
        route: &Governed,
        validated: &Validated,
        auth: Option<&HeaderValue>,
        facts: &RequestFacts,
    ) -> Result<Vec<Input>, ContextError> {
        try_join_all(validated.changes.iter().map(|change| {
            let mut needs = policy.needs(route.operation, change.operation);
            // A delete's record keeps what it removed, whatever the rules
            // read: compliance asks "what was removed", and replay can judge
            // delete rules written later.
            if change.operation.is_delete() {
                needs = Needs {
                    org: true,
                    connection: true,
                    before: true,
                };
            }
            self.input(route.operation, change, needs, auth, facts)
        }))
        .await
    }

    async fn input(
        &self,
        operation: Operation,
        change: &Change,
        needs: Needs,
        auth: Option<&HeaderValue>,
        facts: &RequestFacts,
    ) -> Result<Input, ContextError> {
        let cid = change.connection_id.as_deref();
        let op = change.operation;
        let org_fut = async {
            match &change.org {
                OrgRef::New(name) => Ok(json!({"id": null, "name": name})),
                OrgRef::Existing(id) if needs.org || needs.before => self.org(id, auth).await,
                OrgRef::Existing(id) => Ok(json!({"id": id, "name": null})),
            }
        };
        let connection_fut = async {
            if needs.connection {
                self.connection(cid, auth).await
            } else {
                Ok(json!({"id": cid, "name": null, "strategy": null, "is_database": false}))
            }
        };
        let (org, connection) = tokio::try_join!(org_fut, connection_fut)?;
        // Creates start from the tenant's defaults, not from what exists.
        let current = match (&change.org, cid) {
            (OrgRef::Existing(_), Some(cid)) if needs.before && !op.is_create() => {
                let org_id = org
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.association(&org_id, cid, auth).await?
            }
            _ => None,
        };
        Ok(Input {
            operation,
            change_operation: op,
            pointer: change.pointer.clone(),
            org,
            connection,
            body: if op.is_delete() {
                Value::Null
            } else {
                Value::Object(change.body.clone())
            },
            before: state::before(current.as_ref()),
            after: state::after(op, cid, current.as_ref(), &change.fields),
            caller: facts.caller.clone(),
            request: facts.request.clone(),
            now: facts.now,
            // What the record can vouch for: fetched, or known without asking
            // (a new organization; no connection named; no `before` for a create).
            fetched: Needs {
                org: needs.org || needs.before || matches!(change.org, OrgRef::New(_)),
                connection: needs.connection || cid.is_none(),
                before: needs.before || op.is_create(),
            },
        })
    }
}
