//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and, behind
//! `admin.token`, the audit and policy API (DESIGN §5).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditLog, Store, query};
use crate::config::Secret;
use crate::error::{error_response, json_response};
use crate::policy::reload::Policies;
use crate::server::Handler;
use crate::upstream::Upstream;
use crate::{BoxBody, full};
use metrics_exporter_prometheus::PrometheusHandle;

/// The admin API.
pub struct Admin {
    store: Store,
    policies: Arc<Policies>,
    token: Option<Secret>,
    upstream: Option<Upstream>,
    metrics: Option<PrometheusHandle>,
    /// The Auth0 log stream's bearer token, and where its events are
    /// recorded.
    log_stream: Option<(Secret, Arc<AuditLog>)>,
    /// The reviewers' page.
    reviewers: Option<crate::ui::Reviewers>,
    sessions: crate::ui::Sessions,
    /// Who may approve a denied request: names and their tokens' hashes.
    approvers: Vec<crate::config::ApiKey>,
    /// Where grants are recorded.
    audit: Option<Arc<AuditLog>>,
}

/// How recently the tenant must have answered for `/readyz` not to ask it.
const TENANT_RECENTLY: Duration = Duration::from_secs(30);

impl Admin {
    pub fn new(store: Store, policies: Arc<Policies>, token: Option<Secret>) -> Admin {
        Admin {
            store,
            policies,
            token,
            upstream: None,
            metrics: None,
            log_stream: None,
            reviewers: None,
            sessions: crate::ui::Sessions::default(),
            approvers: Vec::new(),
            audit: None,
        }
    }

    /// Records approvals' grants in `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Admin {
        self.audit = Some(audit);
        self
    }

    /// Approvers may approve denied requests at `POST /v1/approvals/{id}`.
    pub fn with_approvers(mut self, approvers: Vec<crate::config::ApiKey>) -> Admin {
        self.approvers = approvers;
        self
    }

    /// The approver presenting the request's bearer token, if any.
    fn approver(&self, req: &Request<Incoming>) -> Option<String> {
        let given = crate::identity::bearer(req.headers())?;
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        self.approvers
            .iter()
            .find(|a| a.hash.0 == digest)
            .map(|a| a.name.clone())
    }

    /// `POST /v1/approvals/{id}` with `{"reason": …}`, by an approver who
    /// is not the requester.
    async fn approve(&self, req: Request<Incoming>, id: String) -> Response<Bytes> {
        let Some(approver) = self.approver(&req) else {
            return plain_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "an approver's token is required (admin.approver_tokens)",
            );
        };
        let (parts, body) = req.into_parts();
        let reason = match crate::body::read_limited(&parts.headers, body, 16 * 1024).await {
            Ok(b) => serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                .filter(|r| !r.trim().is_empty()),
            Err(e) => return body_error(&e),
        };
        let Some(reason) = reason else {
            return plain_error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "a JSON body with a non-empty \"reason\" is required",
            );
        };
        let approval = match self.store.approval(&id).await {
            Ok(Some(a)) => a,
            Ok(None) => return plain_error(StatusCode::NOT_FOUND, "not_found", "no such approval"),
            Err(e) => return store_error(&e),
        };
        // Never the requester, nor anyone who could use the approval: the
        // same client id, key name or subject, in any spelling of it.
        let same = |x: &str| crate::audit::approvals::same_identity(x, &approver);
        if same(&approval.caller) || approval.subject.as_deref().is_some_and(same) {
            return plain_error(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "the requester cannot approve their own request",
            );
        }
        match self.store.approve(&id, &approver, &reason).await {
            Ok(true) => {
                tracing::info!(approval = %id, %approver, "request approved");
                let granted = match self.store.approval(&id).await {
                    Ok(Some(a)) => a,
                    Ok(None) => {
                        return plain_error(StatusCode::NOT_FOUND, "not_found", "no such approval");
                    }
                    Err(e) => return store_error(&e),
                };
                // The grant goes into the chained log; without it the
                // gateway does not honour the approval.
                let Some(audit) = &self.audit else {
                    return plain_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "tollgate_audit_unavailable",
                        "the grant cannot be recorded",
                    );
                };
                if let Err(e) = audit.record(granted.granted_event()).await {
                    return plain_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "tollgate_audit_unavailable",
                        &format!("the grant was not recorded: {e}"),
                    );
                }
                json_response(StatusCode::OK, &json!(granted))
            }
            Ok(false) => plain_error(
                StatusCode::CONFLICT,
                "approval_closed",
                &format!(
                    "approval {id} is {} (only a pending, unexpired one can be approved)",
                    approval.status
                ),
            ),
            Err(e) => store_error(&e),
        }
    }

    /// Serves the reviewers' page at `/ui/` to holders of their token.
    pub fn with_reviewers(mut self, reviewers: Option<crate::ui::Reviewers>) -> Admin {
        self.reviewers = reviewers;
        self
    }

    fn ui(&self) -> crate::ui::Ui<'_> {
        let r = self.reviewers.as_ref();
        crate::ui::Ui {
            store: &self.store,
            token: r.map(|r| &r.token),
            key: r.and_then(|r| r.key.as_ref()),
            checkpoint_dir: r.and_then(|r| r.checkpoint_dir.as_deref()),
            secure: r.is_some_and(|r| r.secure),
            sessions: &self.sessions,
        }
    }

    /// `/ui/…`: the reviewers' page.
    async fn pages(&self, req: Request<Incoming>) -> Response<Bytes> {
        let ui = self.ui();
        let path = req.uri().path().to_owned();
        let params = query_params(req.uri().query().unwrap_or_default());
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/ui/login") => return ui.login_page(),
            (Method::POST, "/ui/login") => {
                let (parts, body) = req.into_parts();
                let form = match crate::body::read_limited(&parts.headers, body, 4096).await {
                    Ok(b) => query_params(&String::from_utf8_lossy(&b)),
                    Err(e) => {
                        return crate::ui::page(
                            body_error(&e).status(),
                            "Log in",
                            &crate::ui::esc(&e.to_string()),
                            false,
                        );
                    }
                };
                let ip = req_ip(&parts.extensions);
                return ui.login(&form, ip);
            }
            (Method::POST, "/ui/logout") => return ui.logout(req.headers()),
            _ => {}
        }
        if !ui.signed_in(req.headers()) {
            let mut r = Response::new(Bytes::new());
            *r.status_mut() = StatusCode::SEE_OTHER;
            r.headers_mut().insert(
                header::LOCATION,
                http::HeaderValue::from_static("/ui/login"),
            );
            return r;
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/ui" | "/ui/") => ui.exchanges(&params).await,
            (Method::GET, "/ui/export.csv") => ui.csv(&params).await,
            (Method::GET, "/ui/chains") => ui.chains().await,
            (Method::GET, "/ui/scan") => ui.scan().await,
            (Method::GET, p) if p.starts_with("/ui/exchanges/") => {
                let id = percent_decode_str(&p["/ui/exchanges/".len()..])
                    .decode_utf8_lossy()
                    .into_owned();
                ui.exchange(&id).await
            }
            _ => crate::ui::page(
                StatusCode::NOT_FOUND,
                "Not found",
                "<p>No such page.</p>",
                true,
            ),
        }
    }

    /// Accepts an Auth0 log stream (custom webhook) at `POST /v1/log-stream`,
    /// authenticated with its own bearer token (`scan.log_stream_token`).
    pub fn with_log_stream(mut self, token: Option<Secret>, audit: Arc<AuditLog>) -> Admin {
        self.log_stream = token.map(|t| (t, audit));
        self
    }

    /// Readiness also requires the tenant to be reachable.
    pub fn with_upstream(mut self, upstream: Upstream) -> Admin {
        self.upstream = Some(upstream);
        self
    }

    /// `/metrics` renders this recorder.
    pub fn with_metrics(mut self, metrics: Option<PrometheusHandle>) -> Admin {
        self.metrics = metrics;
        self
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        bearer_is(req, self.token.as_ref())
    }

    /// `POST /v1/log-stream`: the tenant's log events as they happen; each
    /// outside change to an organization connection is recorded at once.
    async fn log_stream(&self, req: Request<Incoming>) -> Response<Bytes> {
        let Some((token, audit)) = &self.log_stream else {
            return plain_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no log stream is configured",
            );
        };
        if !bearer_is(&req, Some(token)) {
            return plain_error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "a valid log stream token is required",
            );
        }
        let (parts, body) = req.into_parts();
        let body = match crate::body::read_limited(&parts.headers, body, 4 * 1024 * 1024).await {
            Ok(b) => b,
            Err(e) => return body_error(&e),
        };
        // A JSON array (Auth0's "JSON array" format) or JSON lines; each
        // entry a log event, or `{log_id, data}` around one.
        let entries: Vec<Value> = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(a)) => a,
            Ok(one @ Value::Object(_)) => vec![one],
            Ok(_) => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "expected log events: a JSON array, an object or JSON lines",
                );
            }
            Err(_) => {
                let lines: Result<Vec<Value>, _> = body
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                    .map(serde_json::from_slice)
                    .collect();
                match lines {
                    Ok(l) => l,
                    Err(e) => {
                        return plain_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_body",
                            &format!("not log events: {e}"),
                        );
                    }
                }
            }
        };
        let log = crate::scan::outside::Log {
            store: &self.store,
            audit,
        };
        let policy = self.policies.current();
        let events: Vec<Value> = entries
            .iter()
            .map(|entry| {
                entry
                    .get("data")
                    .filter(|_| entry.get("type").is_none())
                    .unwrap_or(entry)
                    .clone()
            })
            .collect();
        let outside = match crate::scan::outside::judge_batch(&events, &log, &policy, false).await {
            Ok(found) => found.len(),
            Err(e) => {
                return plain_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tollgate_audit_unavailable",
                    &e.to_string(),
                );
            }
        };
        json_response(
            StatusCode::OK,
            &json!({"received": entries.len(), "outside": outside}),
        )
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Bytes> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
            (Method::GET, "/readyz") => self.ready().await,
            (Method::GET, "/metrics") => {
                crate::telemetry::sample_process();
                let text = self
                    .metrics
                    .as_ref()
                    .map(PrometheusHandle::render)
                    .unwrap_or_default();
                let mut r = Response::new(Bytes::from(text));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (Method::POST, "/v1/log-stream") => self.log_stream(req).await,
            (Method::POST, p) if p.starts_with("/v1/approvals/") => {
                let id = percent_decode_str(&p["/v1/approvals/".len()..])
                    .decode_utf8_lossy()
                    .into_owned();
                self.approve(req, id).await
            }
            (Method::GET, "/v1/approvals") if self.approver(&req).is_some() => {
                match self.store.approvals(1000).await {
                    Ok(list) => json_response(StatusCode::OK, &json!(list)),
                    Err(e) => store_error(&e),
                }
            }
            (_, p) if p == "/ui" || p.starts_with("/ui/") => self.pages(req).await,
            (_, p) if p.starts_with("/v1/") || p == "/v1" => {
                if !self.authorized(&req) {
                    let why = if self.token.is_some() {
                        "a valid admin bearer token is required"
                    } else {
                        "the admin API is disabled: set admin.token"
                    };
                    let mut r = error_response(
                        StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        why,
                        Default::default(),
                        "",
                    );
                    strip_audit_id(&mut r);
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                    return r;
                }
                self.api(req).await
            }
            _ => plain_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }

    /// Ready: the audit store answers, a policy set is loaded (always, once
    /// started: a set that fails to load never replaces it), and the tenant
    /// answered recently.
    async fn ready(&self) -> Response<Bytes> {
        let store = self.store.ping().await.is_ok();
        let tenant = match &self.upstream {
            Some(u) => u.reachable(TENANT_RECENTLY).await,
            None => true,
        };
        // A log whose checkpoints cannot be confirmed acknowledges nothing.
        let unconfirmed = self.audit.as_ref().and_then(|a| a.unconfirmed());
        let ready = store && tenant && unconfirmed.is_none();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(
            status,
            &json!({
                "status": if ready { "ready" } else { "unready" },
                "audit_store": if store { "ok" } else { "unreachable" },
                "checkpoints": unconfirmed.map_or_else(|| "ok".to_owned(), |why| format!("unconfirmed: {why}")),
                "tenant": if tenant { "ok" } else { "unreachable" },
                "policy_version": self.policies.current().version,
            }),
        )
    }

    async fn api(&self, req: Request<Incoming>) -> Response<Bytes> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let params = query_params(req.uri().query().unwrap_or_default());
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/v1/exchanges") => self.exchanges(&params).await,
            (Method::GET, p) if p.starts_with("/v1/exchanges/") => {
                let id = percent_decode_str(&p["/v1/exchanges/".len()..])
                    .decode_utf8_lossy()
                    .into_owned();
                match query::show(&self.store, &id).await {
                    Ok(events) if events.is_empty() => {
                        plain_error(StatusCode::NOT_FOUND, "not_found", "no such exchange")
                    }
                    Ok(events) => json_response(
                        StatusCode::OK,
                        &json!({"exchange_id": id, "events": events}),
                    ),
                    Err(e) => store_error(&e),
                }
            }
            (Method::GET, "/v1/policy") => {
                json_response(StatusCode::OK, &policy_json(&self.policies))
            }
            (Method::GET, "/v1/approvals") => match self.store.approvals(1000).await {
                Ok(list) => json_response(StatusCode::OK, &json!(list)),
                Err(e) => store_error(&e),
            },
            // The newest scan's report, as `tollgate scan --format json`.
            (Method::GET, "/v1/scan") => match self.store.latest("scan").await {
                Ok(Some(row)) => {
                    let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
                    json_response(StatusCode::OK, &body["data"])
                }
                Ok(None) => plain_error(StatusCode::NOT_FOUND, "not_found", "no scan has run"),
                Err(e) => store_error(&e),
            },
            (Method::POST, "/v1/policy/reload") => match self.policies.reload().await {
                Ok(_) => json_response(StatusCode::OK, &policy_json(&self.policies)),
                Err(errors) => {
                    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({"statusCode": 422, "error": "Unprocessable Entity", "errorCode": "policy_invalid",
                                "message": "the policy set does not load; the previous set stays in force",
                                "errors": list, "version": self.policies.current().version}),
                    )
                }
            },
            _ => plain_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }

    async fn exchanges(&self, params: &HashMap<String, String>) -> Response<Bytes> {
        let filter = match filter_from(params) {
            Ok(f) => f,
            Err(e) => return plain_error(StatusCode::BAD_REQUEST, "invalid_query_string", &e),
        };
        let outside = match params.get("outside").map(String::as_str) {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(other) => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_query_string",
                    &format!("outside is true or false, not {other:?}"),
                );
            }
        };
        let listed = if outside {
            query::outside(&self.store, &filter).await
        } else {
            query::exchanges(&self.store, &filter).await
        };
        match listed {
            Ok(list) => json_response(StatusCode::OK, &json!(list)),
            Err(e) => store_error(&e),
        }
    }
}

/// Whether the request's bearer token is `token` (never, when unset).
fn bearer_is(req: &Request<Incoming>, token: Option<&Secret>) -> bool {
    // An empty token is no token: nobody gets in with an empty header.
    let Some(token) = token.filter(|t| !t.expose().is_empty()) else {
        return false;
    };
    let given = crate::identity::bearer(req.headers()).unwrap_or_default();
    // Compare digests: equal length, and no early exit on the secret.
    Sha256::digest(given.as_bytes()) == Sha256::digest(token.expose().as_bytes())
}

/// The filter of `GET /v1/exchanges`: the same names as `audit query`.
pub fn filter_from(params: &HashMap<String, String>) -> Result<query::Filter, String> {
    let now = chrono::Utc::now();
    let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    for k in params.keys() {
        if ![
            "since",
            "until",
            "org",
            "connection",
            "caller",
            "operation",
            "decision",
            "rule",
            "limit",
            "outside",
        ]
        .contains(&k.as_str())
        {
            return Err(format!("unknown parameter {k:?}"));
        }
    }
    Ok(query::Filter {
        since_us: Some(query::parse_time(
            &get("since").unwrap_or_else(|| "24h".into()),
            now,
        )?),
        until_us: get("until")
            .map(|u| query::parse_time(&u, now))
            .transpose()?,
        org: get("org"),
        connection: get("connection"),
        caller: get("caller"),
        operation: get("operation"),
        decision: get("decision").map(|d| d.parse()).transpose()?,
        rule: get("rule"),
        limit: match get("limit") {
            Some(l) => l
                .parse()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or("limit must be 1 to 10000")?,
            None => 100,
        },
    })
}

fn query_params(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let d = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect()
}

fn policy_json(policies: &Policies) -> Value {
    let set = policies.current();
    let rules: Vec<Value> = set
        .rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "description": r.description, "file": r.file,
                "operations": r.operations.iter().map(|o| o.id()).collect::<Vec<_>>(),
                "when": r.when.as_ref().map(|w| w.source.clone()), "deny": r.deny.source,
                "message": r.message, "mode": r.mode,
            })
        })
        .collect();
    // A built-in set has no directory: `dir` is null and `builtin` true.
    let dir = policies.dir().map(|d| d.display().to_string());
    json!({"version": set.version, "dir": dir, "builtin": dir.is_none(), "files": set.files, "rules": rules})
}

fn strip_audit_id(r: &mut Response<Bytes>) {
    let body: Value = serde_json::from_slice(r.body()).unwrap_or(Value::Null);
    if let Value::Object(mut m) = body {
        m.remove("audit_id");
        *r.body_mut() = Bytes::from(Value::Object(m).to_string());
    }
}

fn plain_error(status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
    let mut r = error_response(status, code, message, Default::default(), "");
    strip_audit_id(&mut r);
    r
}

/// The client's address (unspecified if unknown: all such share one
/// login budget).
fn req_ip(extensions: &http::Extensions) -> std::net::IpAddr {
    extensions
        .get::<crate::server::Peer>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.ip())
}

/// An admin body that could not be read: 413 naming the limit when it is
/// too large, 400 otherwise.
fn body_error(e: &crate::body::BodyError) -> Response<Bytes> {
    match e {
        crate::body::BodyError::TooLarge { .. } => plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &e.to_string(),
        ),
        _ => plain_error(StatusCode::BAD_REQUEST, "invalid_body", &e.to_string()),
    }
}

fn store_error(e: &audit::StoreError) -> Response<Bytes> {
    tracing::warn!(error = %e, "admin API: audit store error");
    plain_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "tollgate_audit_unavailable",
        "the audit store is unavailable",
    )
}

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        self.route(req).await.map(full)
    }
}
