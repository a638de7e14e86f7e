//! The request pipeline, stage by stage.
//!
//! Governed requests: screen → classify → read body → validate → identify →
//! fetch context → judge → record decision → forward what was judged →
//! record outcome → answer. Everything else: screen → classify → apply
//! `routes.other` (→ record) → stream through.
//!
//! Each stage either hands the next one a stricter value or ends the
//! exchange with a [`Refusal`], answered in the tenant's error shape by
//! `error.rs` and recorded in the audit log.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tracing::{Instrument, error, info, warn};
use uuid::Uuid;

use crate::audit::AuditLog;
use crate::audit::events::{Facts, Refused};
use crate::body::{self, BodyError};
use crate::config::{AuditFailure, Config, OtherRoutes};
use crate::context::{self, ContextClient, ContextError, RequestFacts};
use crate::error::Refusal;
use crate::identity::{Identity, IdentityError};
use crate::lock::{AssociationLocks, Held};
use crate::policy::postcheck::{self, PostCheck};
use crate::policy::reload::Policies;
use crate::policy::{self, Decision, Input, Mode, Outcome, PolicySet};
use crate::route::{self, Governed, Route};
use crate::schema::{self, OrgRef, Validated};
use crate::server::Peer;
use crate::upstream::{self, SetupError, Upstream, UpstreamError};
use crate::{BoxBody, full};

/// The id of the exchange, on every response (DESIGN §3).
pub static AUDIT_ID: HeaderName = HeaderName::from_static("x-tollgate-audit-id");
/// The same id on the forwarded request, so the tenant's logs link back.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Headers that could make the tenant apply another method than the one
/// judged; refused on every request.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The gateway: configuration, the tenant client, the policies in force and
/// the audit log, shared by every connection.
pub struct Gateway {
    config: Arc<Config>,
    upstream: Upstream,
    policies: Arc<Policies>,
    context: ContextClient,
    locks: AssociationLocks,
    audit: Arc<AuditLog>,
    identity: Identity,
}

impl Gateway {
    /// A gateway for a validated configuration whose `upstream.url` is set,
    /// judging by `policies` and recording in `audit`.
    pub fn new(
        config: Config,
        policies: Arc<Policies>,
        audit: Arc<AuditLog>,
    ) -> Result<Gateway, SetupError> {
        let url = config
            .upstream
            .url
            .clone()
            .ok_or_else(|| SetupError::Url("is required (or run `serve --sandbox`)".into()))?;
        let upstream = Upstream::new(
            &url,
            config.upstream.timeout.0,
            config.upstream.ca_file.as_deref(),
        )?;
        let context = ContextClient::new(
            upstream.clone(),
            config.context.cache_ttl.0,
            usize::try_from(config.upstream.max_concurrent_lookups).unwrap_or(usize::MAX),
        );
        let identity = Identity::new(&config.identity, &upstream, &url)?;
        // A waiter gives up after the time one tenant call may take.
        // Replicas agree on the tenant however its URL is spelled (case,
        // trailing slash, default port). Host spellings (`localhost` vs
        // `127.0.0.1`) are not resolved: give replicas one `upstream.url`.
        let tenant = upstream.uri("/").map_or_else(
            |_| url.clone(),
            |u| {
                let text = u.to_string();
                match (u.scheme_str(), u.port_u16()) {
                    (Some("https"), Some(443)) => text.replacen(":443/", "/", 1),
                    (Some("http"), Some(80)) => text.replacen(":80/", "/", 1),
                    _ => text,
                }
            },
        );
        let locks = AssociationLocks::for_store(
            &config.audit.url,
            &tenant.to_ascii_lowercase(),
            config.upstream.timeout.0,
        )
        .map_err(|e| SetupError::Url(e.to_string()))?;
        Ok(Gateway {
            config: Arc::new(config),
            upstream,
            policies,
            context,
            locks,
            audit,
            identity,
        })
    }

    /// The tenant client (for readiness checks).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Serves one exchange. Never fails: every refusal is an answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let started = Instant::now();
        let mut facts = start_facts(&req);
        let id = facts.exchange_id.clone();
        let span = tracing::info_span!(
            "tollgate.exchange",
            audit_id = %id,
            method = %facts.method,
            operation = tracing::field::Empty,
            decision = tracing::field::Empty,
            org = tracing::field::Empty,
            connection = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let result = self
            .exchange(req, &mut facts)
            .instrument(span.clone())
            .await;
        let (mut resp, decision) = match result {
            Ok(resp) => {
                let decision = facts
                    .decision
                    .as_ref()
                    .map_or("pass", |d| d.outcome.as_str());
                (resp, decision)
            }
            Err(refusal) => {
                let status = refusal.status();
                let _in = span.enter();
                if status.is_server_error() {
                    warn!(audit_id = %id, method = %facts.method, path = %facts.path, %status, error = %refusal, "refused");
                } else {
                    info!(audit_id = %id, method = %facts.method, path = %facts.path, %status, reason = %refusal, "refused");
                }
                drop(_in);
                let decision = refusal_decision(&refusal);
                self.record_refusal(&facts, &refusal, decision)
                    .instrument(span.clone())
                    .await;
                (
                    refusal.into_response(&id).map(full),
                    decision.unwrap_or("error"),
                )
            }
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(AUDIT_ID.clone(), v);
        }
        let operation = facts.operation.clone().unwrap_or_else(|| "unknown".into());
        span.record("operation", operation.as_str());
        span.record("decision", decision);
        span.record("status", resp.status().as_u16());
        if let Some(org) = &facts.org_id {
            span.record("org", org.as_str());
        }
        if let Some(c) = &facts.connection_id {
            span.record("connection", c.as_str());
        }
        let class = format!("{}xx", resp.status().as_u16() / 100);
        metrics::counter!("tollgate_requests_total", "operation" => operation.clone(), "decision" => decision, "status" => class)
            .increment(1);
        metrics::histogram!("tollgate_request_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        resp
    }

    async fn exchange(
        &self,
        req: Request<Incoming>,
        facts: &mut Facts,
    ) -> Result<Response<BoxBody>, Refusal> {
        // Screen: headers that could turn any request into a governed one at
        // the tenant are refused before classification can be fooled by them.
        screen(req.headers())?;
        // Classify, with the tenant's routing semantics.
        let route = route::classify(req.method(), req.uri().path(), req.uri().query())?;
        match route {
            Route::Governed(g) => self.governed(req, g, facts).await,
            Route::Other => self.other(req, facts).await,
        }
    }

    async fn governed(
        &self,
        req: Request<Incoming>,
        route: Governed,
        facts: &mut Facts,
    ) -> Result<Response<BoxBody>, Refusal> {
        facts.operation = Some(route.operation.id().to_owned());
        facts.path = route.path.clone();
        // An SSO ticket's `{id}` is its self-service profile: its
        // organizations come from the body.
        if route.operation != route::Operation::SsoTicketCreate {
            facts.org_id = route.id.clone();
        }
        facts.connection_id = route.connection_id.clone();
        let (parts, body) = req.into_parts();
        // Identify the caller before anything else: an unverified token or an
        // unknown key gets nothing but a 401. (A refused request still
        // records whatever the token names.)
        let caller = self
            .identify(&parts.headers, Some(route.operation), facts)
            .await?;
        // Read the body: media type, encoding and size before any parsing.
        let (body, literals) = match self.read_body(&parts.headers, body, &route, facts).await? {
            Some((map, literals)) => (Some(map), literals),
            None => (None, Vec::new()),
        };
        // Validate against the schema before any rule runs, so rules only
        // ever see well-typed values.
        let validated = schema::validate(&route, body, self.config.schema.unknown_fields)?;
        // Each element may cost tenant lookups: bounded before any is made.
        schema::check_elements(&validated, self.config.limits.max_elements)?;
        // The text forwarded and recorded: the judged value, re-serialised,
        // each number spelled as the client spelled it.
        let text = validated
            .body
            .as_ref()
            .map(|map| schema::to_json_text(map, &literals));
        note_validated(facts, &validated, text.as_deref());
        // Fetch the context the applicable rules read. One policy set judges
        // the whole exchange, even if a reload lands meanwhile.
        let policy = self.policies.current();
        let request = RequestFacts {
            caller: caller.to_value(),
            request: request_value(&parts, &route),
            now: facts.time,
        };
        // The credential the tenant sees: the caller's, or the broker's.
        let auth = self.identity.tenant_authorization(&parts.headers).await?;
        // One change per association at a time, then the context the rules
        // read, `before` fresh, inside the locks.
        let (held, inputs) = self
            .lock_and_fetch(&policy, &route, &validated, auth.as_ref(), &request)
            .await?;
        // The record keeps the rules' view; everything below borrows it.
        facts.changes = inputs;
        // Indexed by the organization's id, however the request named it.
        if let Some(id) = facts
            .changes
            .first()
            .and_then(|c| c.org.get("id"))
            .and_then(Value::as_str)
        {
            facts.org_id = Some(id.to_owned());
        }
        // Judge every change by every applicable rule.
        let decision = tracing::info_span!("policy.evaluate", rules = policy.rules.len())
            .in_scope(|| policy::evaluate(&policy, &facts.changes));
        let verdict = decision.outcome;
        if verdict == Outcome::Deny {
            facts.decision = Some(decision.clone());
            return Err(Refusal::PolicyDenied(decision));
        }
        facts.decision = Some(decision);
        // Record the decision, durably, before anything leaves: a request the
        // tenant received always has its record.
        self.record_decision(facts, verdict.as_str()).await?;
        // Forward exactly what was judged: canonical method and path, the
        // body re-serialised, framing recomputed.
        let forwarded = forward_request(
            &self.upstream,
            &parts.headers,
            auth,
            &route,
            text,
            &facts.exchange_id,
        )?;
        let started = Instant::now();
        let call = async {
            let mut forwarded = forwarded;
            crate::telemetry::inject_trace_context(forwarded.headers_mut());
            self.upstream.send_buffered(forwarded).await
        };
        let sent = call.instrument(tracing::info_span!("upstream.call")).await;
        self.release(held, sent.is_ok());
        metrics::histogram!("tollgate_upstream_duration_seconds", "operation" => route.operation.id())
            .record(started.elapsed().as_secs_f64());
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                self.record_failure(facts, &e, started).await;
                return Err(e.into());
            }
        };
        // Judge what the tenant says it did.
        let post_check = match facts.changes.as_slice() {
            [judged] if resp.status().is_success() && postcheck::applies(judged) => {
                Some(post_check(&policy, facts, judged, resp.body()))
            }
            _ => None,
        };
        // Record the outcome; the exchange is over whatever the store says.
        let max = usize::try_from(self.config.audit.max_body).unwrap_or(usize::MAX);
        let kept = recorded_answer(route.operation, resp.body());
        let outcome = facts.outcome_event(
            resp.status().as_u16(),
            resp.headers(),
            Some(&kept),
            started.elapsed(),
            max,
            post_check.as_ref(),
        );
        self.audit.record_later(outcome).await;
        info!(
            audit_id = %facts.exchange_id,
            operation = %route.operation,
            path = %route.path,
            decision = verdict.as_str(),
            status = resp.status().as_u16(),
            "forwarded"
        );
        // A new organization may be one a cached lookup did not find.
        if resp.status().is_success() && route.operation == route::Operation::OrganizationCreate {
            self.context.invalidate();
        }
        // Answer with the tenant's status, headers and body, unchanged but
        // for hop-by-hop headers and the warnings of `warn` rules.
        let (mut parts, bytes) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        if let Some(decision) = &facts.decision {
            add_warnings(&mut parts.headers, decision);
        }
        Ok(Response::from_parts(parts, full(bytes)))
    }

    /// Locks every association the request changes, then fetches the
    /// context its rules read. The locks come first and stay until the
    /// tenant has answered, so no other change through tollgate (this
    /// process, or a replica on the same Postgres) lands between the read
    /// of `before` and this change: `after` is where it really leads.
    async fn lock_and_fetch(
        &self,
        policy: &PolicySet,
        route: &Governed,
        validated: &Validated,
        auth: Option<&HeaderValue>,
        request: &RequestFacts,
    ) -> Result<(Held, Vec<Input>), Refusal> {
        let fetch = || {
            self.context
                .inputs(policy, route, validated, auth, request)
                .instrument(tracing::info_span!("context.fetch"))
        };
        let pairs = context::pairs(validated);
        let mut held = self
            .locks
            .acquire(&pairs)
            .instrument(tracing::info_span!("association.lock"))
            .await?;
        let mut inputs = fetch().await?;
        // A path may name its organization by name: once resolved, the
        // association is locked under its id too (as a change naming the id
        // would lock it), and `before` read again inside that lock.
        let extra = context::resolved_pairs(&inputs, &pairs);
        if !extra.is_empty() {
            self.locks
                .extend(&mut held, &extra)
                .instrument(tracing::info_span!("association.lock"))
                .await?;
            inputs = fetch().await?;
        }
        Ok((held, inputs))
    }

    /// Releases the associations once the tenant has answered. If it did not
    /// (a timeout, a connection lost), the change may still land: they stay
    /// locked for another deadline, so the next change reads `before` after
    /// it.
    fn release(&self, held: Held, answered: bool) {
        if answered {
            return;
        }
        let settle = self.upstream.timeout();
        tokio::spawn(async move {
            tokio::time::sleep(settle).await;
            drop(held);
        });
    }

    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        route: &Governed,
        facts: &mut Facts,
    ) -> Result<Option<(Map<String, Value>, Vec<String>)>, Refusal> {
        body::check_encoding(headers)?;
        let limit = self.config.limits.max_body;
        // A client that trickles its body holds a connection and a task:
        // it gets the body deadline, not the tenant's patience.
        let deadline = self.config.limits.body_timeout.0;
        let read = |body| async move {
            tokio::time::timeout(deadline, body::read_limited(headers, body, limit))
                .await
                .map_err(|_| BodyError::Timeout(deadline))?
        };
        if route.operation.is_delete() {
            let bytes = read(body).await?;
            if !bytes.is_empty() {
                facts.request_body = Some(raw_text(&bytes, self.config.audit.max_body));
                return Err(BodyError::Unexpected.into());
            }
            return Ok(None);
        }
        body::check_json_media_type(headers)?;
        let bytes = read(body).await?;
        match schema::parse_strict(&bytes) {
            Ok(map) => {
                // parse_strict accepted it, so it is UTF-8: no copy needed.
                let literals = std::str::from_utf8(&bytes)
                    .map(schema::number_literals)
                    .unwrap_or_default();
                Ok(Some((map, literals)))
            }
            Err(e) => {
                // Kept as text: the attempt is evidence, parseable or not.
                facts.request_body = Some(raw_text(&bytes, self.config.audit.max_body));
                Err(e.into())
            }
        }
    }

    async fn other(
        &self,
        req: Request<Incoming>,
        facts: &mut Facts,
    ) -> Result<Response<BoxBody>, Refusal> {
        facts.operation = Some("other".into());
        self.identify(req.headers(), None, facts).await?;
        let mode = self.config.other_routes(req.method());
        if mode == OtherRoutes::Deny {
            return Err(Refusal::OtherRouteDenied);
        }
        if mode == OtherRoutes::Audit {
            self.record_decision(facts, Outcome::Allow.as_str()).await?;
        }
        let (mut parts, body) = req.into_parts();
        let parts_method = parts.method.clone();
        // The target as sent: `facts.path` is the recorded, redacted one.
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = self.upstream.uri(&target)?;
        parts.version = http::Version::HTTP_11;
        upstream::strip_hop_by_hop(&mut parts.headers);
        set_correlation_id(&mut parts.headers, &facts.exchange_id);
        let auth = self.identity.tenant_authorization(&parts.headers).await?;
        set_authorization(&mut parts.headers, auth);
        let body = body.map_err(Into::into).boxed();
        crate::telemetry::inject_trace_context(&mut parts.headers);
        let started = Instant::now();
        let sent = self
            .upstream
            .send(Request::from_parts(parts, body))
            .instrument(tracing::info_span!("upstream.call"))
            .await;
        metrics::histogram!("tollgate_upstream_duration_seconds", "operation" => "other")
            .record(started.elapsed().as_secs_f64());
        let resp = match sent {
            Ok(resp) => {
                if resp.status().is_success() && changes_facts(&parts_method, &target) {
                    self.context.invalidate();
                }
                resp
            }
            Err(e) => {
                if mode == OtherRoutes::Audit {
                    self.record_failure(facts, &e, started).await;
                }
                return Err(e.into());
            }
        };
        if mode == OtherRoutes::Audit {
            // The body streams through unrecorded: ungoverned answers can
            // carry secrets (client secrets, keys) the log must not keep.
            let max = usize::try_from(self.config.audit.max_body).unwrap_or(usize::MAX);
            let outcome = facts.outcome_event(
                resp.status().as_u16(),
                resp.headers(),
                None,
                started.elapsed(),
                max,
                None,
            );
            self.audit.record_later(outcome).await;
        }
        let (mut parts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed(),
        ))
    }

    /// Identifies the caller into `facts`; a refused caller is still named
    /// there as far as the request tells (token claims, or the key's name).
    async fn identify(
        &self,
        headers: &HeaderMap,
        operation: Option<route::Operation>,
        facts: &mut Facts,
    ) -> Result<crate::identity::Caller, Refusal> {
        match self.identity.identify(headers, operation).await {
            Ok(caller) => {
                facts.caller = caller.clone();
                Ok(caller)
            }
            Err(e) => {
                facts.caller = crate::identity::passthrough(headers);
                if let IdentityError::KeyForbidden { key, .. } = &e {
                    facts.caller.client_id = None;
                    facts.caller.key = Some(key.clone());
                }
                Err(e.into())
            }
        }
    }

    /// Records the decision to forward, durably. Under `audit.on_failure =
    /// "reject"` a failure refuses the request (503) and nothing is sent.
    async fn record_decision(&self, facts: &Facts, decision: &str) -> Result<(), Refusal> {
        let write = self.audit.record(facts.decision_event(decision, None));
        match write.instrument(tracing::info_span!("audit.write")).await {
            Ok(()) => Ok(()),
            Err(e) if self.config.audit.on_failure == AuditFailure::Forward => {
                error!(audit_id = %facts.exchange_id, error = %e, "decision not recorded; forwarding anyway (audit.on_failure = forward)");
                Ok(())
            }
            Err(e) => Err(Refusal::AuditUnavailable(e)),
        }
    }

    async fn record_failure(&self, facts: &Facts, e: &UpstreamError, started: Instant) {
        let kind = match e {
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Protocol(_) => "protocol",
        };
        let event = facts.failed_outcome_event(kind, &e.public_message(), started.elapsed());
        self.audit.record_later(event).await;
    }

    /// Records a request tollgate answered itself. Nothing was forwarded, so
    /// the answer does not wait on the store: a failure is logged.
    async fn record_refusal(&self, facts: &Facts, refusal: &Refusal, decision: Option<&str>) {
        let Some(decision) = decision else { return };
        let code = match refusal {
            Refusal::Context(ContextError::Refused(_)) => "tenant_refused_credentials".to_owned(),
            Refusal::Context(ContextError::RateLimited(_)) => "tenant_rate_limited".to_owned(),
            other => other.error_code().to_owned(),
        };
        let refused = Refused {
            status: refusal.status().as_u16(),
            code,
            message: refusal.to_string(),
        };
        if let Err(e) = self
            .audit
            .record(facts.decision_event(decision, Some(&refused)))
            .await
        {
            error!(audit_id = %facts.exchange_id, error = %e, "refusal not recorded");
        }
    }
}

/// The post-check of a successful change: the tenant's answer judged again.
/// A violation is counted and logged; nothing is reverted, the outcome
/// records it.
fn post_check(policy: &PolicySet, facts: &Facts, judged: &Input, answer: &[u8]) -> PostCheck {
    let check = postcheck::check(policy, judged, answer);
    if check.verdict == postcheck::Verdict::Violated {
        let rules: Vec<&str> = check.rules.iter().map(|r| r.id.as_str()).collect();
        metrics::counter!("tollgate_post_check_violations_total", "operation" => judged.operation.id())
            .increment(1);
        error!(
            audit_id = %facts.exchange_id,
            path = %facts.path,
            rules = %rules.join(","),
            "post-check violated: the tenant reports a state the policy forbids (changed at the tenant meanwhile, or more applied than asked)"
        );
    }
    check
}

/// The decision a refusal is recorded with; `None`: not recorded here
/// (upstream failures are recorded as outcomes; an audit failure cannot be).
fn refusal_decision(refusal: &Refusal) -> Option<&'static str> {
    match refusal {
        Refusal::Upstream(_) | Refusal::AuditUnavailable(_) => None,
        Refusal::PolicyDenied(_)
        | Refusal::OtherRouteDenied
        | Refusal::Context(ContextError::Refused(_)) => Some("deny"),
        // Not a verdict on the request: what it needed could not be had.
        Refusal::Context(ContextError::Unavailable(_) | ContextError::RateLimited(_))
        | Refusal::Locked(_)
        | Refusal::Identity(
            IdentityError::JwksUnavailable(_) | IdentityError::TokenUnavailable(_),
        ) => Some("unavailable"),
        Refusal::Identity(
            IdentityError::MissingToken
            | IdentityError::InvalidToken(_)
            | IdentityError::UnknownKey,
        ) => Some("invalid"),
        Refusal::Identity(_) => Some("deny"),
        _ => Some("invalid"),
    }
}

/// The tenant's answer as the log keeps it. An SSO ticket's answer is a
/// bearer credential (`{"ticket": "https://…?ticket=…"}`): the append-only
/// log keeps its URL with the query values redacted, never the ticket.
fn recorded_answer(operation: route::Operation, body: &Bytes) -> Bytes {
    if operation != route::Operation::SsoTicketCreate {
        return body.clone();
    }
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(body) else {
        // Not the JSON object the tenant documents: keep nothing of it.
        return Bytes::from_static(b"\"<not recorded: an SSO ticket answer>\"");
    };
    if let Some(Value::String(url)) = answer.get("ticket") {
        let redacted = route::redact_target(url);
        answer.insert("ticket".into(), Value::String(redacted));
    }
    Bytes::from(Value::Object(answer).to_string())
}

/// Whether an ungoverned request may alter a fact the context cache keeps
/// (an organization renamed or removed, a connection created or removed).
fn changes_facts(method: &http::Method, target: &str) -> bool {
    if method.is_safe() {
        return false;
    }
    // Read as the tenant reads it: `%6Frganizations` is `organizations`.
    let path = target.split('?').next().unwrap_or_default();
    let Ok(segments) = route::decode_segments(path) else {
        return true;
    };
    let is = |i: usize, name: &str| {
        segments
            .get(i)
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    is(0, "api") && is(1, "v2") && (is(2, "organizations") || is(2, "connections"))
}

/// What is known of a request before any stage runs.
fn start_facts(req: &Request<Incoming>) -> Facts {
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Facts {
        exchange_id: Uuid::now_v7().to_string(),
        time: chrono::Utc::now(),
        method: req.method().to_string(),
        // Recorded and logged without query-string values (secrets).
        path: req
            .uri()
            .path_and_query()
            .map(|pq| route::redact_target(pq.as_str()))
            .unwrap_or_else(|| "/".into()),
        source_ip: req.extensions().get::<Peer>().map(|p| p.0.ip().to_string()),
        user_agent: header(header::USER_AGENT),
        ..Facts::default()
    }
}

/// Notes what validation established: the judged body, and the
/// organization and connection the record is indexed by.
fn note_validated(facts: &mut Facts, validated: &Validated, text: Option<&str>) {
    facts.request_body = text.and_then(|t| RawValue::from_string(t.to_owned()).ok());
    facts.unknown_fields = validated.unknown_fields.clone();
    if let Some(first) = validated.changes.first() {
        if facts.org_id.is_none()
            && let OrgRef::Existing(org) = &first.org
        {
            facts.org_id = Some(org.clone());
        }
        if facts.connection_id.is_none() {
            facts.connection_id = first.connection_id.clone();
        }
    }
}

/// A body that could not be parsed, as text for the record (a JSON
/// string), capped.
fn raw_text(bytes: &[u8], max: u64) -> Box<RawValue> {
    let max = usize::try_from(max).unwrap_or(usize::MAX).min(bytes.len());
    let text = Value::String(String::from_utf8_lossy(&bytes[..max]).into_owned());
    // A string always serialises, and its JSON is a valid raw value.
    serde_json::value::to_raw_value(&text).expect("a JSON string serialises")
}

fn screen(headers: &HeaderMap) -> Result<(), Refusal> {
    for name in METHOD_OVERRIDES {
        if headers.contains_key(name) {
            return Err(Refusal::MethodOverride(name));
        }
    }
    Ok(())
}

/// The `request` variable of DESIGN §4.
fn request_value(parts: &http::request::Parts, route: &Governed) -> Value {
    let source_ip = parts.extensions.get::<Peer>().map(|p| p.0.ip().to_string());
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    serde_json::json!({
        "method": route.method.as_str(),
        "path": route.path,
        "source_ip": source_ip,
        "user_agent": user_agent,
    })
}

/// `Warning: 299 tollgate "rule-id: message"` for each violated `warn` rule.
fn add_warnings(headers: &mut HeaderMap, decision: &Decision) {
    let mut seen = Vec::new();
    for r in decision.violations().filter(|r| r.mode == Mode::Warn) {
        if seen.contains(&&r.id) {
            continue;
        }
        seen.push(&r.id);
        let text: String = format!("{}: {}", r.id, r.message)
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect::<String>()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 tollgate \"{text}\"")) {
            headers.append(header::WARNING, v);
        }
    }
}

/// Puts the tenant's credential in place of the caller's.
fn set_authorization(headers: &mut HeaderMap, auth: Option<HeaderValue>) {
    headers.remove(header::AUTHORIZATION);
    if let Some(a) = auth {
        headers.insert(header::AUTHORIZATION, a);
    }
}

fn set_correlation_id(headers: &mut HeaderMap, id: &str) {
    headers.remove(&CORRELATION_ID);
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(CORRELATION_ID.clone(), v);
    }
}

/// The request the tenant receives for a judged governed request.
fn forward_request(
    upstream: &Upstream,
    client_headers: &HeaderMap,
    auth: Option<HeaderValue>,
    route: &Governed,
    text: Option<String>,
    id: &str,
) -> Result<Request<BoxBody>, Refusal> {
    let mut headers = client_headers.clone();
    upstream::strip_hop_by_hop(&mut headers);
    set_authorization(&mut headers, auth);
    for h in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::HOST,
        header::EXPECT,
    ] {
        headers.remove(h);
    }
    set_correlation_id(&mut headers, id);
    // The answer is judged again (the post-check) and recorded: it must come
    // back as plain JSON, whatever encodings the client would accept.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let body = match text {
        Some(text) => {
            let bytes = text.into_bytes();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed()
        }
        None => Empty::new().map_err(|never| match never {}).boxed(),
    };
    let mut req = Request::new(body);
    *req.method_mut() = route.method.clone();
    *req.uri_mut() = upstream.uri(&route.path)?;
    *req.headers_mut() = headers;
    Ok(req)
}
