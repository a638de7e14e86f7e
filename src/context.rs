//! Tenant context for rules: the organization, the connection and the
//! association as it stands, fetched with the caller's credentials, only
//! when an applicable rule reads them (or a record must keep them).
//!
//! Two kinds of context, kept apart on purpose:
//!
//! - **Facts a change to an association does not alter**: an
//!   organization's id and name, a connection's name and strategy. These are
//!   cached for `context.cache_ttl`, keyed by the credential that fetched
//!   them as well as the resource (a caller never gets a verdict
//!   computed from what another credential could read). A lookup that
//!   started before an invalidation does not store its answer (a generation
//!   check), so a slow lookup cannot resurrect what was forgotten.
//! - **The association as it stands** (`before`): read fresh from the
//!   tenant by [`inputs`](ContextClient::inputs), after the gateway has
//!   locked the association, and never cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::lock::Pair;
use crate::policy::input::{Connection, Org};
use crate::policy::postcheck::Reported;
use crate::policy::{ChangeInput, Needs, PolicySet};
use crate::route::Governed;
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
    /// The tenant's rate limit was reached: its answer (429, with its
    /// `x-ratelimit-*` and `Retry-After` headers) is the caller's, so
    /// clients back off as they would from the tenant.
    #[error("the tenant's rate limit was reached while fetching context")]
    RateLimited(Box<Response<Bytes>>),
}

/// Lookups one request may have in flight at once.
const PER_REQUEST: usize = 8;

/// A cached answer: when it was fetched, and what it was (`None`: 404).
type Entry = (Instant, Option<Value>);

#[derive(Default)]
struct Cache {
    /// (credential fingerprint, path) → answer.
    entries: HashMap<(String, String), Entry>,
    /// Bumped by every invalidation.
    generation: u64,
}

/// Lookups against the tenant, with a cache for facts.
pub struct ContextClient {
    upstream: Upstream,
    ttl: Duration,
    cache: Mutex<Cache>,
    /// Lookups in flight, all requests together.
    in_flight: tokio::sync::Semaphore,
    /// Lookups in flight made with credentials the tenant has not accepted
    /// lately: a quarter of the budget, so that a flood of bad tokens
    /// cannot take every lookup slot from callers the tenant knows.
    unproven_in_flight: tokio::sync::Semaphore,
    /// Credentials (fingerprints) the tenant accepted, and when.
    proven: Mutex<HashMap<String, Instant>>,
}

/// How long a credential the tenant accepted counts as proven.
const PROVEN_FOR: Duration = Duration::from_secs(600);

/// The credential one request's lookups are made with, its fingerprint
/// (the cache key), and the request's share of concurrent lookups.
pub struct Credential<'a> {
    header: Option<&'a HeaderValue>,
    fingerprint: String,
    in_flight: tokio::sync::Semaphore,
}

impl<'a> Credential<'a> {
    pub fn new(header: Option<&'a HeaderValue>) -> Credential<'a> {
        let fingerprint = match header {
            Some(h) => hex::encode(Sha256::digest(h.as_bytes())),
            None => String::new(),
        };
        Credential {
            header,
            fingerprint,
            in_flight: tokio::sync::Semaphore::new(PER_REQUEST),
        }
    }
}

fn enc(s: &str) -> String {
    crate::route::encode_segment(s)
}

impl ContextClient {
    /// A client making at most `max_in_flight` lookups at once.
    pub fn new(upstream: Upstream, ttl: Duration, max_in_flight: usize) -> ContextClient {
        ContextClient {
            upstream,
            ttl,
            cache: Mutex::new(Cache::default()),
            in_flight: tokio::sync::Semaphore::new(max_in_flight.max(1)),
            unproven_in_flight: tokio::sync::Semaphore::new((max_in_flight / 4).max(1)),
            proven: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, key: &(String, String)) -> Option<Option<Value>> {
        let found = self
            .cache()
            .entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone());
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("tollgate_context_cache_total", "result" => result).increment(1);
        found
    }

    /// Stores an answer unless an invalidation happened since `generation`.
    fn store(&self, key: (String, String), generation: u64, value: Option<Value>) {
        let mut cache = self.cache();
        if cache.generation != generation {
            return;
        }
        if cache.entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            cache.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.entries.len() >= MAX_ENTRIES {
                cache.entries.clear();
            }
        }
        cache.entries.insert(key, (Instant::now(), value));
    }

    /// Forgets every cached fact (after a change that may have altered one:
    /// an organization renamed, a connection replaced). Lookups still in
    /// flight will not store their answers.
    pub fn invalidate(&self) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.entries.clear();
    }

    /// A fact: cached per credential for `context.cache_ttl`.
    async fn fact(
        &self,
        path: String,
        cred: &Credential<'_>,
    ) -> Result<Option<Value>, ContextError> {
        if self.ttl.is_zero() {
            return self.fetch(&path, cred).await;
        }
        let key = (cred.fingerprint.clone(), path);
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let generation = self.cache().generation;
        let value = self.fetch(&key.1, cred).await?;
        self.store(key, generation, value.clone());
        Ok(value)
    }

    /// GETs a resource from the tenant: `Some` on 200, `None` on 404. At
    /// most [`PER_REQUEST`] per request and `upstream.max_concurrent_lookups`
    /// overall are in flight; a lookup that cannot start within the
    /// upstream deadline fails.
    async fn fetch(
        &self,
        path: &str,
        cred: &Credential<'_>,
    ) -> Result<Option<Value>, ContextError> {
        let deadline = self.upstream.timeout();
        let proven = self.is_proven(&cred.fingerprint);
        let permits = tokio::time::timeout(deadline, async {
            let mine = cred.in_flight.acquire().await;
            let unproven = if proven {
                None
            } else {
                Some(self.unproven_in_flight.acquire().await)
            };
            let ours = self.in_flight.acquire().await;
            (mine, unproven, ours)
        })
        .await;
        let Ok((Ok(_mine), unproven, Ok(_ours))) = permits else {
            return Err(ContextError::Unavailable(format!(
                "GET {path}: too many lookups in flight"
            )));
        };
        if let Some(Err(_)) = unproven {
            return Err(ContextError::Unavailable(format!(
                "GET {path}: too many lookups in flight"
            )));
        }
        let auth = cred.header;
        let resp = self
            .upstream
            .get_json(path, auth)
            .await
            .map_err(|e| ContextError::Unavailable(format!("GET {path}: {e}")))?;
        if matches!(resp.status(), StatusCode::OK | StatusCode::NOT_FOUND) {
            self.prove(&cred.fingerprint);
        }
        match resp.status() {
            StatusCode::OK => Ok(Some(serde_json::from_slice(resp.body()).map_err(|e| {
                ContextError::Unavailable(format!("GET {path}: not JSON: {e}"))
            })?)),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(ContextError::Refused(Box::new(resp)))
            }
            StatusCode::TOO_MANY_REQUESTS => Err(ContextError::RateLimited(Box::new(resp))),
            s => Err(ContextError::Unavailable(format!(
                "GET {path}: the tenant answered {s}"
            ))),
        }
    }

    fn is_proven(&self, fingerprint: &str) -> bool {
        let proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        proven
            .get(fingerprint)
            .is_some_and(|at| at.elapsed() < PROVEN_FOR)
    }

    /// Remembers that the tenant accepted this credential.
    fn prove(&self, fingerprint: &str) {
        let mut proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        if proven.len() >= MAX_ENTRIES {
            proven.retain(|_, at| at.elapsed() < PROVEN_FOR);
            if proven.len() >= MAX_ENTRIES {
                proven.clear();
            }
        }
        proven.insert(fingerprint.to_owned(), Instant::now());
    }

    /// The organization named by id, or else (`by_name`) by name; `None`:
    /// the tenant knows it neither way.
    async fn org_found(
        &self,
        id_or_name: &str,
        by_name: bool,
        cred: &Credential<'_>,
    ) -> Result<Option<Org>, ContextError> {
        let by_id = self
            .fact(format!("/api/v2/organizations/{}", enc(id_or_name)), cred)
            .await?;
        let found = match by_id {
            Some(v) => Some(v),
            None if !by_name => None,
            // Which organization a name means changes with every rename,
            // anywhere: it is asked each time, never cached, since the
            // association whose `before` is read depends on it.
            None => {
                self.fetch(
                    &format!("/api/v2/organizations/name/{}", enc(id_or_name)),
                    cred,
                )
                .await?
            }
        };
        Ok(found.map(|o| Org {
            id: text(&o, "id"),
            name: text(&o, "name"),
        }))
    }

    /// The organization named by id, or else (`by_name`: a path may name it
    /// either way) by name; one the tenant does not know keeps the id given.
    async fn org(
        &self,
        id_or_name: &str,
        by_name: bool,
        cred: &Credential<'_>,
    ) -> Result<Org, ContextError> {
        Ok(self
            .org_found(id_or_name, by_name, cred)
            .await?
            .unwrap_or_else(|| Org {
                id: Some(id_or_name.to_owned()),
                name: None,
            }))
    }

    /// The connection named by id.
    async fn connection(
        &self,
        id: &str,
        cred: &Credential<'_>,
    ) -> Result<Connection, ContextError> {
        let found = self
            .fact(format!("/api/v2/connections/{}", enc(id)), cred)
            .await?;
        let field = |k: &str| found.as_ref().and_then(|c| text(c, k));
        Ok(Connection::new(
            Some(id.to_owned()),
            field("name"),
            field("strategy"),
        ))
    }

    /// The association as it stands, read fresh through the current
    /// family's route, falling back to the legacy one.
    async fn association(
        &self,
        org_id: &str,
        connection_id: &str,
        cred: &Credential<'_>,
    ) -> Result<Option<Map<String, Value>>, ContextError> {
        Ok(self
            .association_reported(org_id, connection_id, cred)
            .await?
            .map(|r| r.fields))
    }

    /// The association as it stands, and which family's route answered.
    async fn association_reported(
        &self,
        org_id: &str,
        connection_id: &str,
        cred: &Credential<'_>,
    ) -> Result<Option<Reported>, ContextError> {
        for (family, legacy) in [("connections", false), ("enabled_connections", true)] {
            let path = format!(
                "/api/v2/organizations/{}/{family}/{}",
                enc(org_id),
                enc(connection_id)
            );
            // Anything but an association of the expected shape (or a 404)
            // fails closed: `before` is what the rules judge from.
            match self.fetch(&path, cred).await? {
                None => continue,
                Some(Value::Object(m)) => {
                    crate::association::check_shape(&m).map_err(|e| {
                        ContextError::Unavailable(format!(
                            "GET {path}: unexpected association: {e}"
                        ))
                    })?;
                    return Ok(Some(Reported { fields: m, legacy }));
                }
                Some(other) => {
                    return Err(ContextError::Unavailable(format!(
                        "GET {path}: the tenant answered {other} instead of an association"
                    )));
                }
            }
        }
        Ok(None)
    }

    /// The id of every existing organization the changes name, by the
    /// name or id the request gave (the path's may be a name): asked with
    /// the caller's credential, so that a credential the tenant refuses is
    /// refused here, before any lock is taken, and so that the change is
    /// locked, judged and forwarded under the id the tenant will apply it
    /// to — a rename cannot redirect it. An organization found neither way
    /// keeps the id given (the tenant will answer 404).
    ///
    /// Organizations found neither way are listed apart: a change to an
    /// organization that does not exist is not forwarded under a name some
    /// organization may take by the time it lands.
    pub async fn resolve(
        &self,
        validated: &Validated,
        auth: Option<&HeaderValue>,
    ) -> Result<(HashMap<String, Org>, Vec<String>), ContextError> {
        let cred = Credential::new(auth);
        let mut named: Vec<(&str, bool)> = Vec::new();
        for change in &validated.changes {
            if let OrgRef::Existing(id) = &change.org
                && !named.iter().any(|(o, _)| o == id)
            {
                named.push((id, by_name(change)));
            }
        }
        let orgs = try_join_all(
            named
                .iter()
                .map(|(given, by_name)| self.org_found(given, *by_name, &cred)),
        )
        .await?;
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for ((given, _), org) in named.into_iter().zip(orgs) {
            match org {
                Some(mut org) => {
                    org.id.get_or_insert_with(|| given.to_owned());
                    found.insert(given.to_owned(), org);
                }
                None => missing.push(given.to_owned()),
            }
        }
        Ok((found, missing))
    }

    /// The association as the tenant now reports it, read back after a
    /// change whose answer did not carry every field (the legacy family's).
    pub async fn read_back(
        &self,
        org_id: &str,
        connection_id: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<Option<Reported>, ContextError> {
        let cred = Credential::new(auth);
        self.association_reported(org_id, connection_id, &cred)
            .await
    }

    /// The rules' view of every change a request asks for, fetching what the
    /// applicable rules need. Call it with the changes' associations locked
    /// (see [`pairs`]): `before` is read here, fresh. Each organization and
    /// connection is looked up once per request, however many elements name
    /// it.
    pub async fn inputs(
        &self,
        policy: &PolicySet,
        route: &Governed,
        validated: &Validated,
        auth: Option<&HeaderValue>,
        resolved: &HashMap<String, Org>,
    ) -> Result<Vec<ChangeInput>, ContextError> {
        let cred = Credential::new(auth);
        let needs: Vec<Needs> = validated
            .changes
            .iter()
            .map(|change| needs_of(policy, route, change))
            .collect();
        let (orgs, connections) = self
            .facts(&validated.changes, &needs, &cred, resolved)
            .await?;
        try_join_all(validated.changes.iter().zip(needs).map(|(change, needs)| {
            let org = match &change.org {
                OrgRef::New(name) => Org {
                    id: None,
                    name: name.clone(),
                },
                OrgRef::Existing(id) => orgs
                    .get(id.as_str())
                    .or_else(|| resolved_org(resolved, id))
                    .cloned()
                    .unwrap_or(Org {
                        id: Some(id.clone()),
                        name: None,
                    }),
            };
            let cid = change.connection_id.as_deref();
            let connection = cid
                .and_then(|c| connections.get(c).cloned())
                .unwrap_or_else(|| Connection::new(cid.map(str::to_owned), None, None));
            self.input(change, needs, org, connection, &cred)
        }))
        .await
    }

    /// The organizations and connections the changes need, each looked up
    /// once, all at once.
    async fn facts<'c>(
        &self,
        changes: &'c [Change],
        needs: &[Needs],
        cred: &Credential<'_>,
        resolved: &HashMap<String, Org>,
    ) -> Result<(HashMap<&'c str, Org>, HashMap<&'c str, Connection>), ContextError> {
        let mut org_ids: Vec<(&str, bool)> = Vec::new();
        let mut connection_ids: Vec<&str> = Vec::new();
        for (change, needs) in changes.iter().zip(needs) {
            if let OrgRef::Existing(id) = &change.org
                && (needs.org || (needs.before && !change.operation.is_create()))
                && resolved_org(resolved, id).is_none()
                && !org_ids.iter().any(|(o, _)| o == id)
            {
                org_ids.push((id, by_name(change)));
            }
            if let Some(cid) = change.connection_id.as_deref()
                && needs.connection
                && !connection_ids.contains(&cid)
            {
                connection_ids.push(cid);
            }
        }
        let (orgs, connections) = tokio::try_join!(
            try_join_all(
                org_ids
                    .iter()
                    .map(|(id, by_name)| self.org(id, *by_name, cred))
            ),
            try_join_all(connection_ids.iter().map(|id| self.connection(id, cred))),
        )?;
        Ok((
            org_ids.into_iter().map(|(id, _)| id).zip(orgs).collect(),
            connection_ids.into_iter().zip(connections).collect(),
        ))
    }

    /// One change's input: `before` read fresh when a rule needs it.
    async fn input(
        &self,
        change: &Change,
        needs: Needs,
        org: Org,
        connection: Connection,
        cred: &Credential<'_>,
    ) -> Result<ChangeInput, ContextError> {
        let op = change.operation;
        // Creates start from the tenant's defaults, not from what exists.
        let current = match (&change.org, change.connection_id.as_deref()) {
            (OrgRef::Existing(_), Some(cid)) if needs.before && !op.is_create() => {
                let org_id = org.id.as_deref().unwrap_or_default();
                self.association(org_id, cid, cred).await?
            }
            _ => None,
        };
        // What the record can vouch for: fetched, or known without asking
        // (a new organization; no connection named; no `before` for a create).
        let fetched = Needs {
            org: needs.org
                || (needs.before && !op.is_create())
                || matches!(change.org, OrgRef::New(_)),
            connection: needs.connection || change.connection_id.is_none(),
            before: needs.before || op.is_create(),
        };
        Ok(ChangeInput::of(
            change,
            org,
            connection,
            current.as_ref(),
            fetched,
        ))
    }
}

/// The organization resolved (before the lock) under its id `id`.
fn resolved_org<'r>(resolved: &'r HashMap<String, Org>, id: &str) -> Option<&'r Org> {
    resolved.values().find(|o| o.id.as_deref() == Some(id))
}

/// A string field of a tenant answer.
fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// What the applicable rules read of a change's context. A delete's record
/// keeps what it removed, whatever the rules read: compliance asks "what
/// was removed", and replay can judge delete rules written later.
fn needs_of(policy: &PolicySet, route: &Governed, change: &Change) -> Needs {
    if change.operation.is_delete() {
        Needs {
            org: true,
            connection: true,
            before: true,
        }
    } else {
        policy.needs(route.operation, change.operation)
    }
}

/// Whether judging `validated` reads the organization or the association
/// as it stands (a delete always reads what it removes): then its
/// organizations are resolved to ids and its associations locked. A
/// request judged by its body and the connection alone reads nothing that
/// a concurrent change could alter: nothing is resolved, nothing locked.
pub fn reads_tenant(policy: &PolicySet, route: &Governed, validated: &Validated) -> bool {
    validated.changes.iter().any(|change| {
        let needs = needs_of(policy, route, change);
        needs.org || needs.before
    })
}

/// Whether a change names its organization where a name is accepted too:
/// the path's `{id}`. Array elements carry `organization_id`, an id.
fn by_name(change: &Change) -> bool {
    change.pointer.is_empty()
}

/// The associations a request changes, as the request names them, compared
/// case-insensitively: the pairs the gateway locks before it reads anything.
/// A new organization has none yet; an SSO ticket without a connection
/// creates the connection later. (An organization a path names by name is
/// locked again under its id once resolved: see [`resolved_pairs`].)
pub fn pairs(validated: &Validated) -> Vec<Pair> {
    validated
        .changes
        .iter()
        .filter_map(|c| match (&c.org, &c.connection_id) {
            (OrgRef::Existing(org), Some(cid)) => Some((org.to_lowercase(), cid.to_lowercase())),
            _ => None,
        })
        .collect()
}

/// The pairs of `inputs` under their organizations' resolved ids that
/// `locked` does not hold yet.
pub fn resolved_pairs(inputs: &[ChangeInput], locked: &[Pair]) -> Vec<Pair> {
    let mut extra: Vec<Pair> = Vec::new();
    for input in inputs {
        if let (Some(org), Some(cid)) = (&input.org.id, &input.connection.id) {
            let pair = (org.to_lowercase(), cid.to_lowercase());
            if !locked.contains(&pair) && !extra.contains(&pair) {
                extra.push(pair);
            }
        }
    }
    extra
}
