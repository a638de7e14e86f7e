//! The request pipeline, one method per phase, in the order README draws:
//!
//! governed: screen → classify → identify → read body → validate → lock →
//! fetch context → judge → record decision → forward → post-check →
//! record outcome → answer. Everything else: screen → classify → identify →
//! `routes.other` (→ record) → forward, streamed → (record) → answer.
//!
//! Each phase adds what it established to the request's [`Exchange`], or
//! ends it with a [`Refusal`]: `error.rs` gives every refusal its answer in
//! the tenant's error shape and its recorded decision.

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tracing::{Instrument, error, info, warn};

use crate::audit::AuditLog;
use crate::audit::approvals::Request as Asked;
use crate::body::{self, BodyError};
use crate::config::{AuditFailure, Config, OtherRoutes};
use crate::context::{self, ContextClient};
use crate::error::Refusal;
use crate::exchange::{ApprovalNote, Class, Exchange};
use crate::identity::{Caller, Identity, IdentityError};
use crate::lock::{AssociationLocks, Held};
use crate::policy::input::Org;
use crate::policy::postcheck::{self, PostCheck};
use crate::policy::reload::Policies;
use crate::policy::{self, Decision, Judgement, Mode, PolicySet, RuleInput, Verdict};
use crate::route::{self, Governed, Route};
use crate::schema::{self, Validated};
use crate::server::Hangup;
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
    /// The tenant's URL as replicas agree on it (lock keys, approvals).
    tenant: String,
}

/// A body read and validated: the judged value, and its text as forwarded.
struct Judged {
    validated: Validated,
    text: Option<String>,
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
        let tenant = tenant.to_ascii_lowercase();
        let locks =
            AssociationLocks::for_store(&config.audit.url, &tenant, config.upstream.timeout.0)
                .map_err(|e| SetupError::Url(e.to_string()))?;
        Ok(Gateway {
            config: Arc::new(config),
            upstream,
            policies,
            context,
            locks,
            audit,
            identity,
            tenant,
        })
    }

    /// The tenant client (for readiness checks).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Serves one exchange. Never fails: every refusal is an answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let started = Instant::now();
        let mut ex = Exchange::start(&req);
        let span = tracing::info_span!(
            "tollgate.exchange",
            audit_id = %ex.id,
            method = %ex.method,
            operation = tracing::field::Empty,
            decision = tracing::field::Empty,
            org = tracing::field::Empty,
            connection = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        // Cancelled when the caller leaves: what was not forwarded yet is
        // not forwarded then.
        let hangup = req
            .extensions()
            .get::<Hangup>()
            .cloned()
            .unwrap_or_default();
        let result = self
            .run(req, &mut ex, &hangup)
            .instrument(span.clone())
            .await;
        let (mut resp, unrecorded) = match result {
            Ok(resp) => (resp, "pass"),
            Err(refusal) => {
                self.refused(&mut ex, &refusal)
                    .instrument(span.clone())
                    .await;
                (refusal.into_response(&ex.id).map(full), "error")
            }
        };
        if let Ok(v) = HeaderValue::from_str(&ex.id) {
            resp.headers_mut().insert(AUDIT_ID.clone(), v);
        }
        let operation = ex.class.label().unwrap_or("unknown");
        // Forwarded without a judgement (ungoverned routes): `pass`.
        let decision = match (ex.judgement.is_some(), unrecorded) {
            (false, "pass") => "pass",
            _ => ex.decision.map_or(unrecorded, Decision::as_str),
        };
        span.record("operation", operation);
        span.record("decision", decision);
        span.record("status", resp.status().as_u16());
        if let Some(org) = &ex.org_id {
            span.record("org", org.as_str());
        }
        if let Some(c) = &ex.connection_id {
            span.record("connection", c.as_str());
        }
        let class = format!("{}xx", resp.status().as_u16() / 100);
        metrics::counter!("tollgate_requests_total", "operation" => operation, "decision" => decision, "status" => class)
            .increment(1);
        metrics::histogram!("tollgate_request_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        resp
    }

    /// Screen and classify, then the governed or the other pipeline.
    async fn run(
        &self,
        req: Request<Incoming>,
        ex: &mut Exchange,
        hangup: &Hangup,
    ) -> Result<Response<BoxBody>, Refusal> {
        // Screen: headers that could turn any request into a governed one at
        // the tenant are refused before classification can be fooled by them.
        screen(req.headers())?;
        // Classify, with the tenant's routing semantics.
        match route::classify(req.method(), req.uri().path(), req.uri().query())? {
            Route::Governed(g) => self.governed(req, g, ex, hangup).await,
            Route::Other => self.other(req, ex, hangup).await,
        }
    }

    /// The governed pipeline, phase by phase.
    async fn governed(
        &self,
        req: Request<Incoming>,
        route: Governed,
        ex: &mut Exchange,
        hangup: &Hangup,
    ) -> Result<Response<BoxBody>, Refusal> {
        ex.classified(&route);
        let (parts, body) = req.into_parts();
        // An unverified token or an unknown key gets nothing but a 401.
        let caller = self
            .identify(&parts.headers, Some(route.operation), ex)
            .await?;
        let judged = self
            .read_and_validate(&parts.headers, body, &route, ex)
            .await
            .map_err(|e| match e {
                // The stream or connection broke mid-body: the caller left.
                Refusal::Body(BodyError::Read(_)) => Refusal::Abandoned { recorded: true },
                e => e,
            })?;
        // One policy set judges the whole exchange, even if a reload lands
        // meanwhile.
        let policy = self.policies.current();
        // The credential the tenant sees: the caller's, or the broker's.
        let auth = self.identity.tenant_authorization(&parts.headers).await?;
        // The organizations it names, as ids, asked with that credential:
        // before any lock (a credential the tenant refuses holds none), and
        // so that what is locked, judged, recorded and forwarded is the
        // organization the tenant will change, whatever a rename does.
        let reads_tenant = context::reads_tenant(&policy, &route, &judged.validated);
        // A caller who leaves while tollgate waits for the tenant's context
        // or a lock takes that wait with them.
        let left = || Refusal::Abandoned { recorded: true };
        let (route, validated, resolved) = if reads_tenant {
            tokio::select! {
                r = self.resolve(route, judged.validated, auth.as_ref(), ex) => r?,
                () = hangup.left() => return Err(left()),
            }
        } else {
            (route, judged.validated, Default::default())
        };
        let mut held = tokio::select! {
            held = self.lock_and_fetch(
                &policy,
                (&route, &validated, &resolved),
                auth.as_ref(),
                caller,
                ex,
            ) => held?,
            () = hangup.left() => return Err(left()),
        };
        let decision = self.judge(&policy, ex, judged.text.as_deref()).await?;
        // The locks, proved still held: a lock whose database session ended
        // while the context was read proves nothing about `before`.
        self.locks.confirm(&mut held).await.inspect_err(|e| {
            error!(audit_id = %ex.id, error = %e, "association lock lost before the forward: nothing forwarded");
        })?;
        // Nobody waits for the answer any more: nothing leaves.
        if hangup.has_left() {
            return Err(left());
        }
        // Durably, before anything leaves: a request the tenant received
        // always has its record.
        self.record_decision(ex).await?;
        // The caller, and the locks, once more now that the record is
        // written: a store slow to commit (a failover) must not let a change
        // leave for a caller who left, or under a lock its session lost.
        // The decision is on record; its outcome says why nothing left.
        self.still_awaited(ex, hangup).await?;
        if let Err(e) = self.locks.confirm(&mut held).await {
            error!(audit_id = %ex.id, error = %e, "association lock lost before the forward: nothing forwarded");
            self.not_forwarded(ex, "lock_lost", &e.to_string()).await;
            return Err(e.into());
        }
        let request = forward_request(
            &self.upstream,
            &parts.headers,
            auth.clone(),
            &route,
            judged.text,
            &ex.id,
        )?;
        let sent = self
            .call(ex, true, route.operation.id(), request, |r| {
                self.upstream.send_buffered(r)
            })
            .await;
        let (resp, latency) = match sent {
            Ok(answered) => answered,
            Err(e) => {
                self.release(held, false);
                return Err(e);
            }
        };
        // Held until the tenant answered: if the lock was lost meanwhile,
        // another change may have read `before` while this one was landing.
        if let Err(e) = self.locks.confirm(&mut held).await {
            error!(audit_id = %ex.id, error = %e, "association lock lost while the tenant applied the change: the change may have landed unserialised");
            ex.lock_lost = true;
        }
        let post_check = self.post_check(&policy, ex, &resp, auth.as_ref()).await;
        self.release(held, true);
        let kept = recorded_answer(route.operation, resp.body());
        self.record_outcome(ex, &resp, Some(&kept), latency, post_check.as_ref())
            .await;
        info!(audit_id = %ex.id, operation = %route.operation, path = %route.path, %decision, status = resp.status().as_u16(), "forwarded");
        // A new organization may be one a cached lookup did not find.
        if resp.status().is_success() && route.operation == route::Operation::OrganizationCreate {
            self.context.invalidate();
        }
        Ok(answer(resp, ex.judgement.as_ref()))
    }

    /// Everything else: `routes.other` decides; the body streams through.
    async fn other(
        &self,
        req: Request<Incoming>,
        ex: &mut Exchange,
        hangup: &Hangup,
    ) -> Result<Response<BoxBody>, Refusal> {
        ex.class = Class::Other(api_operation(req.method(), req.uri().path()));
        self.identify(req.headers(), None, ex).await?;
        let mode = self.config.other_routes(req.method());
        if mode == OtherRoutes::Deny {
            return Err(Refusal::OtherRouteDenied);
        }
        // The tenant's credential first: a request that cannot have one is
        // refused (and recorded so) before any decision to forward it.
        let auth = self.identity.tenant_authorization(req.headers()).await?;
        let audited = mode == OtherRoutes::Audit;
        if hangup.has_left() {
            return Err(Refusal::Abandoned { recorded: audited });
        }
        if audited {
            ex.decision = Some(Decision::Allow);
            self.record_decision(ex).await?;
            self.still_awaited(ex, hangup).await?;
        }
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        // The target as sent: `ex.path` is the recorded, redacted one.
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = self.upstream.uri(&target)?;
        parts.version = http::Version::HTTP_11;
        upstream::strip_hop_by_hop(&mut parts.headers);
        set_correlation_id(&mut parts.headers, &ex.id);
        set_authorization(&mut parts.headers, auth);
        let request = Request::from_parts(parts, body.map_err(Into::into).boxed());
        let call = self.call(ex, audited, "other", request, |r| self.upstream.send(r));
        let (resp, latency) = if audited {
            // A write on its way: followed to its outcome, caller or not.
            call.await?
        } else {
            // A read whose caller left serves no one: cancelled at once.
            tokio::select! {
                sent = call => sent?,
                () = hangup.left() => return Err(Refusal::Abandoned { recorded: false }),
            }
        };
        if resp.status().is_success() && changes_facts(&method, &target) {
            self.context.invalidate();
        }
        if audited {
            // The body streams through unrecorded: ungoverned answers can
            // carry secrets (client secrets, keys) the log must not keep.
            self.record_outcome(ex, &resp, None, latency, None).await;
        }
        let (mut parts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed(),
        ))
    }

    /// Identifies the caller into the exchange; a refused caller is still
    /// named there as far as the request tells (token claims, or the key's
    /// name).
    async fn identify(
        &self,
        headers: &HeaderMap,
        operation: Option<route::Operation>,
        ex: &mut Exchange,
    ) -> Result<Caller, Refusal> {
        match self.identity.identify(headers, operation).await {
            Ok(caller) => {
                ex.caller = caller.clone();
                Ok(caller)
            }
            Err(e) => {
                ex.caller = crate::identity::passthrough(headers);
                if let IdentityError::KeyForbidden { key, .. } = &e {
                    ex.caller.client_id = None;
                    ex.caller.key = Some(key.clone());
                }
                Err(e.into())
            }
        }
    }

    /// Reads the body (media type, encoding and size before any parsing)
    /// and validates it against the schema before any rule runs, so rules
    /// only ever see well-typed values.
    async fn read_and_validate(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        route: &Governed,
        ex: &mut Exchange,
    ) -> Result<Judged, Refusal> {
        let (body, literals) = match self.read_body(headers, body, route, ex).await? {
            Some((map, literals)) => (Some(map), literals),
            None => (None, Vec::new()),
        };
        let validated = schema::validate(route, body, self.config.schema.unknown_fields)?;
        // Each element may cost tenant lookups: bounded before any is made.
        schema::check_elements(&validated, self.config.limits.max_elements)?;
        // The text forwarded and recorded: the judged value, re-serialised,
        // each number spelled as the client spelled it.
        let text = validated
            .body
            .as_ref()
            .map(|map| schema::to_json_text(map, &literals));
        ex.validated(&validated, text.as_deref());
        Ok(Judged { validated, text })
    }

    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        route: &Governed,
        ex: &mut Exchange,
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
                ex.request_body = Some(raw_text(&bytes, self.config.audit.max_body));
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
                ex.request_body = Some(raw_text(&bytes, self.config.audit.max_body));
                Err(e.into())
            }
        }
    }

    /// The request with every existing organization it names replaced by
    /// its id ([`ContextClient::resolve`]); the record follows.
    async fn resolve(
        &self,
        route: Governed,
        mut validated: Validated,
        auth: Option<&HeaderValue>,
        ex: &mut Exchange,
    ) -> Result<(Governed, Validated, HashMap<String, Org>), Refusal> {
        let (orgs, missing) = self
            .context
            .resolve(&validated, auth)
            .instrument(tracing::info_span!("context.resolve"))
            .await?;
        // Not forwarded under a name (or a spelling) that no organization
        // has now and one may have by the time it lands: the tenant's 404.
        if let Some(given) = missing.into_iter().next() {
            return Err(Refusal::UnknownOrganization(given));
        }
        let id_of = |given: &str| orgs.get(given).and_then(|o| o.id.clone());
        for change in &mut validated.changes {
            if let schema::OrgRef::Existing(given) = &mut change.org
                && let Some(id) = id_of(given)
            {
                *given = id;
            }
        }
        let route = match route.organization().and_then(id_of) {
            Some(id) if Some(id.as_str()) != route.id.as_deref() => {
                let route = route.with_organization(&id);
                ex.classified(&route);
                route
            }
            _ => route,
        };
        Ok((route, validated, orgs))
    }

    /// Locks every association the request changes, then fetches the
    /// context its rules read. The locks come first and stay until the
    /// tenant has answered, so no other change through tollgate (this
    /// process, or a replica on the same Postgres) lands between the read
    /// of `before` and this change: `after` is where it really leads.
    async fn lock_and_fetch(
        &self,
        policy: &PolicySet,
        (route, validated, resolved): (&Governed, &Validated, &HashMap<String, Org>),
        auth: Option<&HeaderValue>,
        caller: Caller,
        ex: &mut Exchange,
    ) -> Result<Held, Refusal> {
        let fetch = || {
            self.context
                .inputs(policy, route, validated, auth, resolved)
                .instrument(tracing::info_span!("context.fetch"))
        };
        let lock = tracing::info_span!("association.lock");
        // A request whose judging reads nothing of the tenant has nothing
        // to keep consistent: it is not locked (and was not resolved).
        let pairs = if context::reads_tenant(policy, route, validated) {
            context::pairs(validated)
        } else {
            Vec::new()
        };
        // Each caller queues on an association alone: one credential or key
        // cannot hold it busy for everyone.
        let holder = caller
            .key
            .as_deref()
            .or(caller.token_fingerprint.as_deref())
            .unwrap_or_default()
            .to_owned();
        let held = self
            .locks
            .acquire_for(&holder, &pairs)
            .instrument(lock)
            .await?;
        let changes = fetch().await?;
        // The organizations were resolved to ids before the lock; if the
        // tenant now names another one (deleted and its id reused as a name),
        // what was locked is not what would be judged: fail closed.
        if !pairs.is_empty() && !context::resolved_pairs(&changes, &pairs).is_empty() {
            return Err(Refusal::Context(context::ContextError::Unavailable(
                "an organization resolved to another id while the change was being judged".into(),
            )));
        }
        let request = ex.request_variable(route);
        ex.fetched(RuleInput::new(
            route.operation,
            caller,
            request,
            ex.time,
            changes,
        ));
        Ok(held)
    }

    /// Judges every change by every applicable rule; a denial ends the
    /// exchange, unless only approvable rules denied it and an approval of
    /// exactly this request is waiting to be used.
    async fn judge(
        &self,
        policy: &PolicySet,
        ex: &mut Exchange,
        text: Option<&str>,
    ) -> Result<Decision, Refusal> {
        let input = ex.input.as_ref().ok_or_else(|| {
            Refusal::Context(context::ContextError::Unavailable("no rule input".into()))
        })?;
        let judgement = tracing::info_span!("policy.evaluate", rules = policy.rules.len())
            .in_scope(|| policy::evaluate(policy, input));
        if judgement.decision != Decision::Deny {
            return Ok(ex.judged(judgement));
        }
        // The record keeps every verdict; the answer lists the rules.
        ex.judged(judgement.clone());
        let approvable = policy.approvable(&judgement);
        let approval = match &approvable {
            Some(rules) => self.approval(ex, rules, text).await,
            None => None,
        };
        // Why an approvable denial offers no approval.
        let anonymous = ex.caller.client_id.is_none() && ex.caller.key.is_none();
        let no_approval = match (&approvable, &approval) {
            (Some(_), None) if anonymous => Some(
                "only approvable rules denied this request, but approvals are for identified callers: send a token naming its client (azp or client_id) or a broker key",
            ),
            (Some(_), None) => Some(
                "only approvable rules denied this request, but no approval could be recorded (the audit store did not answer); retry later",
            ),
            _ => None,
        };
        match approval {
            Some(note) if note.status == "used" => {
                ex.decision = Some(Decision::Approved);
                ex.approval = Some(note);
                Ok(Decision::Approved)
            }
            note => {
                ex.approval = note.clone();
                Err(Refusal::PolicyDenied(
                    judgement,
                    note.map(Box::new),
                    no_approval,
                ))
            }
        }
    }

    /// For a request only approvable rules deny: the approval of exactly
    /// this request (operation, canonical path, body, caller) if one is
    /// approved and unused — taken now, once — or else a new one asked for.
    /// `None`: the caller is anonymous, or the store cannot say (denied).
    async fn approval(
        &self,
        ex: &Exchange,
        rules: &[String],
        text: Option<&str>,
    ) -> Option<ApprovalNote> {
        let caller = ex
            .caller
            .client_id
            .clone()
            .or_else(|| ex.caller.key.clone())?;
        let body_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            text.unwrap_or_default().as_bytes(),
        ));
        let joined = rules.join(",");
        let binding = crate::audit::approvals::binding(
            ex.caller.client_id.as_deref(),
            ex.caller.subject.as_deref(),
            ex.caller.key.as_deref(),
            &self.tenant,
        );
        let asked = Asked {
            binding: &binding,
            operation: ex.class.label().unwrap_or_default(),
            path: &ex.path,
            body_hash: &body_hash,
            caller: &caller,
            rules: &joined,
        };
        if let ControlFlow::Break(granted) = self.granted_approval(ex, &asked).await {
            return granted;
        }
        // Asked for already (a client retrying): the same approval.
        if let Ok(Some(a)) = self.audit.store().pending_approval(&asked).await {
            return Some(ApprovalNote::of(a, "pending"));
        }
        self.ask_approval(ex, &asked, rules).await
    }

    /// The granted approval of exactly this request, used up by it
    /// (`Break(Some)`); `Break(None)` when approvals cannot be read or the
    /// one found has no grant on record (denied, no new approval offered);
    /// `Continue` when none was granted.
    async fn granted_approval(
        &self,
        ex: &Exchange,
        asked: &Asked<'_>,
    ) -> ControlFlow<Option<ApprovalNote>> {
        let store = self.audit.store();
        match store.use_approval(asked, &ex.id).await {
            Ok(Some(a)) => {
                // Honoured only if the log holds its grant: a row written
                // into the table by other means releases nothing.
                let on_record = store.exchange_events(&a.id).await.is_ok_and(|events| {
                    events
                        .iter()
                        .any(|e| e.kind == "approval" && a.granted_by(&e.body))
                });
                if !on_record {
                    error!(audit_id = %ex.id, approval = %a.id, "an approval with no grant in the audit log: not honoured");
                    return ControlFlow::Break(None);
                }
                ControlFlow::Break(Some(ApprovalNote::of(a, "used")))
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => {
                error!(audit_id = %ex.id, error = %e, "approvals unreadable: denied without one");
                ControlFlow::Break(None)
            }
        }
    }

    /// A new pending approval for this denied request.
    async fn ask_approval(
        &self,
        ex: &Exchange,
        asked: &Asked<'_>,
        rules: &[String],
    ) -> Option<ApprovalNote> {
        let id = uuid::Uuid::now_v7().to_string();
        let ttl = chrono::Duration::from_std(self.config.approvals.ttl.0).unwrap_or_default();
        let expires = chrono::Utc::now() + ttl;
        let subject = ex.caller.subject.as_deref();
        if let Err(e) = self
            .audit
            .store()
            .ask_approval(&id, asked, subject, &ex.id, expires.timestamp_micros())
            .await
        {
            error!(audit_id = %ex.id, error = %e, "approval not asked for: denied without one");
            return None;
        }
        Some(ApprovalNote {
            id,
            status: "pending",
            expires: crate::audit::format_time(expires),
            approver: None,
            reason: None,
            rules: rules.to_vec(),
        })
    }

    /// Sends a request to the tenant: timed, traced, measured. A transport
    /// failure of an audited exchange is recorded as its outcome.
    async fn call<B, T, F>(
        &self,
        ex: &Exchange,
        audited: bool,
        operation: &'static str,
        mut request: Request<B>,
        send: impl FnOnce(Request<B>) -> F,
    ) -> Result<(Response<T>, Duration), Refusal>
    where
        F: Future<Output = Result<Response<T>, UpstreamError>>,
    {
        let started = Instant::now();
        let span = tracing::info_span!("upstream.call");
        span.in_scope(|| crate::telemetry::inject_trace_context(request.headers_mut()));
        let sent = send(request).instrument(span).await;
        let latency = started.elapsed();
        metrics::histogram!("tollgate_upstream_duration_seconds", "operation" => operation)
            .record(latency.as_secs_f64());
        match sent {
            Ok(resp) => Ok((resp, latency)),
            Err(e) => {
                if audited {
                    let kind = match e {
                        UpstreamError::Timeout(_) => "timeout",
                        UpstreamError::Connect(_) => "connect",
                        UpstreamError::Protocol(_) => "protocol",
                    };
                    let event = ex.failed_outcome_event(kind, &e.public_message(), latency);
                    self.audit.record_later(event).await;
                }
                Err(e.into())
            }
        }
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

    /// The tenant's answer to a successful change judged again. A violation
    /// is counted and logged; nothing is reverted, the outcome records it.
    /// Only what the tenant reported is judged: an answer without every
    /// field (the legacy family's carry three) is completed by reading the
    /// association back, still under the lock; fields that could not be
    /// read make the verdict `partial`.
    async fn post_check(
        &self,
        policy: &PolicySet,
        ex: &Exchange,
        resp: &Response<Bytes>,
        auth: Option<&HeaderValue>,
    ) -> Option<PostCheck> {
        let input = ex.input.as_ref()?;
        if !resp.status().is_success() || !postcheck::applies(input) {
            return None;
        }
        let answered = postcheck::answered(input.operation, resp.body());
        let read_back = match (&answered, input.changes.first()) {
            (Some(a), Some(change)) if !postcheck::unreported(policy, input, a).is_empty() => {
                let org = change.org.id.as_deref().unwrap_or_default();
                let cid = change.connection.id.as_deref().unwrap_or_default();
                let read = self.context.read_back(org, cid, auth);
                match read
                    .instrument(tracing::info_span!("post_check.read_back"))
                    .await
                {
                    Ok(found) => found,
                    Err(e) => {
                        warn!(audit_id = %ex.id, error = %e, "post-check: the association could not be read back");
                        None
                    }
                }
            }
            _ => None,
        };
        let mut check = postcheck::check(policy, input, answered.as_ref(), read_back.as_ref());
        // An approved change leads where its approval said: the rules it
        // covers are expected to be violated by the result.
        if let Some(a) = ex.approval.as_ref().filter(|a| a.status == "used") {
            check.rules.retain(|r| !a.rules.contains(&r.id));
            if check.rules.is_empty() && check.verdict == postcheck::Verdict::Violated {
                check.verdict = if check.unverified.is_empty() {
                    postcheck::Verdict::Passed
                } else {
                    postcheck::Verdict::Partial
                };
            }
        }
        if check.verdict == postcheck::Verdict::Violated {
            let rules: Vec<&str> = check.rules.iter().map(|r| r.id.as_str()).collect();
            metrics::counter!("tollgate_post_check_violations_total", "operation" => input.operation.id())
                .increment(1);
            error!(
                audit_id = %ex.id,
                path = %ex.path,
                rules = %rules.join(","),
                "post-check violated: the tenant reports a state the policy forbids (changed at the tenant meanwhile, or more applied than asked)"
            );
        }
        Some(check)
    }

    /// Records the decision to forward, durably. Under `audit.on_failure =
    /// "reject"` a failure refuses the request (503) and nothing is sent.
    async fn record_decision(&self, ex: &mut Exchange) -> Result<(), Refusal> {
        let write = self.audit.record(ex.decision_event(None));
        match write.instrument(tracing::info_span!("audit.write")).await {
            Ok(()) => {
                ex.decision_recorded = true;
                Ok(())
            }
            Err(e) if self.config.audit.on_failure == AuditFailure::Forward => {
                error!(audit_id = %ex.id, error = %e, "decision not recorded; forwarding anyway (audit.on_failure = forward)");
                Ok(())
            }
            Err(e) => Err(Refusal::AuditUnavailable(e)),
        }
    }

    /// After the decision is written (a slow store can take seconds): a
    /// caller who left meanwhile gets nothing forwarded, and the outcome on
    /// record says so.
    async fn still_awaited(&self, ex: &Exchange, hangup: &Hangup) -> Result<(), Refusal> {
        if !hangup.has_left() {
            return Ok(());
        }
        self.not_forwarded(
            ex,
            "abandoned",
            "the caller left while the decision was written",
        )
        .await;
        Err(Refusal::Abandoned { recorded: true })
    }

    /// Records, as the outcome of an exchange whose decision is on record,
    /// that nothing was forwarded, and why (`kind`).
    async fn not_forwarded(&self, ex: &Exchange, kind: &str, why: &str) {
        let event = ex.failed_outcome_event(kind, why, Duration::ZERO);
        self.audit.record_later(event).await;
    }

    /// Records the tenant's answer; the exchange is over whatever the store
    /// says. `body` is `None` for a streamed answer.
    async fn record_outcome<T>(
        &self,
        ex: &Exchange,
        resp: &Response<T>,
        body: Option<&[u8]>,
        latency: Duration,
        post_check: Option<&PostCheck>,
    ) {
        let max = usize::try_from(self.config.audit.max_body).unwrap_or(usize::MAX);
        let event = ex.outcome_event(
            resp.status().as_u16(),
            resp.headers(),
            body,
            latency,
            max,
            post_check,
        );
        self.audit.record_later(event).await;
    }

    /// Logs and records a request tollgate answered itself. Nothing was
    /// forwarded, so the answer does not wait on the store: a failure is
    /// logged.
    async fn refused(&self, ex: &mut Exchange, refusal: &Refusal) {
        if let Refusal::Abandoned { .. } = refusal {
            metrics::counter!("tollgate_abandoned_exchanges_total").increment(1);
        }
        let recorded = refusal.recorded();
        let status = recorded
            .as_ref()
            .and_then(|(_, r)| http::StatusCode::from_u16(r.status).ok())
            .unwrap_or_else(|| refusal.status());
        if status.is_server_error() {
            warn!(audit_id = %ex.id, method = %ex.method, path = %ex.path, %status, error = %refusal, "refused");
        } else {
            info!(audit_id = %ex.id, method = %ex.method, path = %ex.path, %status, reason = %refusal, "refused");
        }
        let Some((decision, recorded)) = recorded else {
            return;
        };
        // Refused after its decision was recorded (its outcome says why):
        // one decision per exchange.
        if ex.decision_recorded {
            return;
        }
        ex.decision = Some(decision);
        let event = ex.decision_event(Some(&recorded));
        if let Err(e) = self.audit.record(event).await {
            error!(audit_id = %ex.id, error = %e, "refusal not recorded");
        }
    }
}

/// The tenant's answer to a judged request, unchanged but for hop-by-hop
/// headers and the warnings of `warn` rules.
fn answer(resp: Response<Bytes>, judgement: Option<&Judgement>) -> Response<BoxBody> {
    let (mut parts, bytes) = resp.into_parts();
    upstream::strip_hop_by_hop(&mut parts.headers);
    if let Some(judgement) = judgement {
        add_warnings(&mut parts.headers, judgement);
    }
    Response::from_parts(parts, full(bytes))
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

/// `Warning: 299 tollgate "rule-id: message"` for each violated `warn` rule,
/// and `"rule-id: exempted by EXCEPTION: message"` for each exempted one.
fn add_warnings(headers: &mut HeaderMap, decision: &Judgement) {
    let mut seen = Vec::new();
    let warned = decision.results.iter().filter_map(|r| match &r.verdict {
        Verdict::Exempted(e) if r.mode == Mode::Enforce => {
            Some((r, format!("{}: exempted by {e}: {}", r.id, r.message)))
        }
        _ if r.is_violation() && r.mode == Mode::Warn => {
            Some((r, format!("{}: {}", r.id, r.message)))
        }
        _ => None,
    });
    for (r, line) in warned {
        if seen.contains(&&r.id) {
            continue;
        }
        seen.push(&r.id);
        let text: String = line
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

/// The Management API operation an ungoverned write addresses, from the
/// registry: what its record and metrics name. Reads are not looked up
/// (they are neither recorded nor judged, and they are most requests).
fn api_operation(method: &http::Method, path: &str) -> Option<&'static str> {
    if matches!(*method, http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let registry = crate::registry::registry();
    // `post` is forwarded as sent, and a tenant may read it as POST: it is
    // named as what it may be.
    let upper;
    let method = if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        upper = http::Method::from_bytes(method.as_str().to_ascii_uppercase().as_bytes()).ok()?;
        if matches!(upper, http::Method::GET | http::Method::HEAD) {
            return None;
        }
        &upper
    } else {
        method
    };
    let found = registry.classify(method, path).ok().flatten()?;
    Some(found.op.id.as_str())
}
