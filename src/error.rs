//! Every answer tollgate writes itself, in the Management API's error shape
//! (DESIGN §3), so SDKs and scripts show it like any tenant error.
//!
//! Modules report what happened as named errors; this is the one place that
//! turns them into a status, an `errorCode` and a message. Classification:
//! the caller's fault is 4xx, the tenant's 502/504, tollgate's own 503/500.
//! Internal error text (database, TLS) never reaches a response body; it is
//! logged instead.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::audit::AuditError;
use crate::audit::events::Refused;
use crate::body::BodyError;
use crate::context::ContextError;
use crate::identity::IdentityError;
use crate::lock::LockError;
use crate::policy::{Decision, Judgement, Mode, RuleResult};
use crate::route::RouteError;
use crate::schema::{JsonError, SchemaError};
use crate::upstream::UpstreamError;

/// Why tollgate answered a request itself instead of forwarding it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("the {0} header is not accepted: it could change the method the tenant applies")]
    MethodOverride(&'static str),
    #[error("this gateway forwards only organization-connection calls (routes.other = \"deny\")")]
    OtherRouteDenied,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{}", denial_message(.0))]
    /// Denied: the approval asked for, if one could be, or why none was.
    PolicyDenied(
        Judgement,
        Option<Box<crate::exchange::ApprovalNote>>,
        Option<&'static str>,
    ),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("the audit log cannot record the attempt; nothing was forwarded")]
    AuditUnavailable(AuditError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The caller left before anything was forwarded; `recorded`: the
    /// exchange is one the log keeps (a governed or audited write).
    #[error("the caller left before the request was forwarded; nothing was forwarded")]
    Abandoned { recorded: bool },
    /// The path or body names an organization the tenant knows neither by
    /// id nor by name.
    #[error("No organization found by that id or name: {0}")]
    UnknownOrganization(String),
}

/// "denied by rule a: message" / "denied by rules a, b: message; message".
fn denial_message(d: &Judgement) -> String {
    let denied: Vec<&RuleResult> = d.violations().filter(|r| r.mode == Mode::Enforce).collect();
    let mut ids: Vec<&str> = denied.iter().map(|r| r.id.as_str()).collect();
    ids.dedup();
    let mut messages: Vec<&str> = denied.iter().map(|r| r.message.as_str()).collect();
    messages.dedup();
    let noun = if ids.len() == 1 { "rule" } else { "rules" };
    format!(
        "denied by {noun} {}: {}",
        ids.join(", "),
        messages.join("; ")
    )
}

/// The parts of an answer, and how the refusal is recorded.
struct Answer {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
    /// The decision recorded; `None`: not recorded as a refusal (the
    /// tenant's failure is the outcome of a forwarded request; a store that
    /// cannot record cannot record this either).
    decision: Option<Decision>,
}

impl Answer {
    /// An answer recorded as `invalid` unless said otherwise.
    fn new(status: StatusCode, code: &'static str, message: String) -> Answer {
        Answer {
            status,
            code,
            message,
            extra: Map::new(),
            decision: Some(Decision::Invalid),
        }
    }

    fn decided(mut self, decision: Option<Decision>) -> Answer {
        self.decision = decision;
        self
    }

    fn with(mut self, key: &str, value: Value) -> Answer {
        self.extra.insert(key.into(), value);
        self
    }
}

impl Refusal {
    /// Every refusal's answer and recorded decision, in one place. A request
    /// that is itself at fault is `invalid`; one the rules or the
    /// configuration refuse is `deny`; one that could not be judged because
    /// something it needed could not be had is `unavailable`.
    fn answer(&self) -> Answer {
        use Decision::Deny;
        let plain = |status, code| self.plain(status, code);
        match self {
            Refusal::Route(RouteError::MethodNotAllowed { .. }) => {
                plain(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            Refusal::Route(_) => plain(StatusCode::BAD_REQUEST, "invalid_uri"),
            Refusal::Body(BodyError::TooLarge { .. }) => {
                plain(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Refusal::Body(BodyError::Timeout(_)) => {
                plain(StatusCode::REQUEST_TIMEOUT, "request_timeout")
            }
            Refusal::Body(BodyError::Encoded(_) | BodyError::MediaType(_)) => {
                plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Refusal::Body(_) | Refusal::Json(_) => plain(StatusCode::BAD_REQUEST, "invalid_body"),
            Refusal::Schema(e) => plain(StatusCode::BAD_REQUEST, "invalid_body")
                .with("field", Value::String(e.pointer.clone())),
            Refusal::MethodOverride(_) => plain(StatusCode::BAD_REQUEST, "invalid_headers"),
            Refusal::OtherRouteDenied => {
                plain(StatusCode::FORBIDDEN, "tollgate_route_denied").decided(Some(Deny))
            }
            Refusal::PolicyDenied(d, approval, none) => self.denied(d, approval.as_deref(), *none),
            Refusal::Context(_) | Refusal::Locked(_) => self.unavailable(),
            Refusal::Identity(e) => self.unidentified(e),
            Refusal::AuditUnavailable(_) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "tollgate_audit_unavailable",
            )
            .decided(None),
            // The tenant's own answer to a change of an organization it
            // does not know, in its shape.
            Refusal::UnknownOrganization(_) => {
                plain(StatusCode::NOT_FOUND, "inexistent_organization")
            }
            Refusal::Abandoned { recorded } => {
                // Nobody reads it: nginx's "client closed request".
                let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
                plain(status, "client_closed_request")
                    .decided(recorded.then_some(Decision::Abandoned))
            }
            Refusal::Upstream(e) => {
                let status = match e {
                    UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                Answer::new(status, "tollgate_upstream_error", e.public_message()).decided(None)
            }
        }
    }

    /// An answer whose message is the refusal's own text, recorded as
    /// `invalid` unless said otherwise.
    fn plain(&self, status: StatusCode, code: &'static str) -> Answer {
        Answer::new(status, code, self.to_string())
    }

    /// The rules denied it: each enforcing rule that was violated, and the
    /// approval a second person may grant when only approvable rules did.
    fn denied(
        &self,
        d: &Judgement,
        approval: Option<&crate::exchange::ApprovalNote>,
        no_approval: Option<&'static str>,
    ) -> Answer {
        let rules: Vec<Value> = d
            .violations()
            .filter(|r| r.mode == Mode::Enforce)
            .map(|r| json!({"id": r.id, "message": r.message, "field": r.field}))
            .collect();
        let mut a = self
            .plain(StatusCode::FORBIDDEN, "tollgate_policy_denied")
            .with("rules", Value::Array(rules))
            .decided(Some(Decision::Deny));
        if let Some(p) = approval {
            a = a.with("approval", json!({"id": p.id, "expires": p.expires}));
        } else if let Some(why) = no_approval {
            // Only approvable rules denied it, yet no approval is offered:
            // the caller is told why rather than left to wonder.
            a = a
                .with("approval", Value::Null)
                .with("approval_unavailable", json!(why));
        }
        a
    }

    /// The tenant's context for judging could not be had (or the
    /// association could not be locked): nothing was judged.
    fn unavailable(&self) -> Answer {
        use Decision::{Deny, Unavailable};
        const CODE: &str = "tollgate_context_unavailable";
        let a = match self {
            Refusal::Context(ContextError::Unavailable(_)) => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                CODE,
                "context needed by a rule could not be fetched from the tenant".into(),
            ),
            Refusal::Locked(LockError::Store(_)) => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                CODE,
                "the association could not be locked for the change".into(),
            ),
            Refusal::Locked(LockError::Lost(_)) => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                CODE,
                "the association's lock was lost before the change could be forwarded \
                 (its database session ended); nothing was forwarded, retry"
                    .into(),
            ),
            // The tenant's own answer is passed back (see `into_response`);
            // the code names it in the record.
            Refusal::Context(ContextError::Refused(resp)) => {
                return Answer::new(resp.status(), "tenant_refused_credentials", String::new())
                    .decided(Some(Deny));
            }
            Refusal::Context(ContextError::RateLimited(resp)) => {
                Answer::new(resp.status(), "tenant_rate_limited", String::new())
            }
            _ => self.plain(StatusCode::SERVICE_UNAVAILABLE, CODE),
        };
        a.decided(Some(Unavailable))
    }

    /// The caller could not be identified, or may not do this.
    fn unidentified(&self, e: &IdentityError) -> Answer {
        use Decision::{Deny, Unavailable};
        match e {
            IdentityError::MissingToken
            | IdentityError::InvalidToken(_)
            | IdentityError::UnknownKey => self.plain(StatusCode::UNAUTHORIZED, "invalid_token"),
            IdentityError::JwksUnavailable(_) => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tollgate_context_unavailable",
                "the tenant's signing keys could not be fetched".into(),
            )
            .decided(Some(Unavailable)),
            IdentityError::TokenUnavailable(_) => Answer::new(
                StatusCode::BAD_GATEWAY,
                "tollgate_upstream_error",
                "a Management API token could not be obtained from the tenant".into(),
            )
            .decided(Some(Unavailable)),
            IdentityError::TokenBackoff(..) => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tollgate_upstream_error",
                "a Management API token could not be obtained from the tenant moments ago; \
                 retry shortly"
                    .into(),
            )
            .decided(Some(Unavailable)),
            _ => self
                .plain(StatusCode::FORBIDDEN, "insufficient_scope")
                .decided(Some(Deny)),
        }
    }

    /// The answer's `errorCode` (for a passed-back tenant answer, the code
    /// the record names it by).
    pub fn error_code(&self) -> &'static str {
        self.answer().code
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.answer().status
    }

    /// The decision the refusal is recorded with, and what the record
    /// keeps of it (`{status, errorCode, message}`); `None`: not recorded
    /// as a decision.
    pub fn recorded(&self) -> Option<(Decision, Refused)> {
        let a = self.answer();
        let refused = Refused {
            status: a.status.as_u16(),
            code: a.code.to_owned(),
            // The full text: the record may keep what the answer does not.
            message: self.to_string(),
        };
        Some((a.decision?, refused))
    }

    /// The answer, with the exchange's audit id in the body.
    pub fn into_response(self, audit_id: &str) -> Response<Bytes> {
        // The tenant refused the caller's own credentials, or its rate limit
        // was reached: its answer, rate-limit headers included, is the
        // caller's to read, as if the request had been forwarded.
        if let Refusal::Context(ContextError::Refused(resp) | ContextError::RateLimited(resp)) =
            self
        {
            let (mut parts, body) = (*resp).into_parts();
            crate::upstream::strip_hop_by_hop(&mut parts.headers);
            return Response::from_parts(parts, body);
        }
        let a = self.answer();
        let mut resp = error_response(a.status, a.code, &a.message, a.extra, audit_id);
        if let Refusal::Route(RouteError::MethodNotAllowed { allow, .. }) = self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        // tollgate's own 503s are momentary (a lock, the store, a lookup):
        // clients that honour Retry-After wait a second instead of hammering.
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if a.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// An error body in the Management API's shape:
/// `{"statusCode","error","errorCode","message",…,"audit_id"}`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    extra: Map<String, Value>,
    audit_id: &str,
) -> Response<Bytes> {
    let mut body = error_body(status, code, message);
    if let Value::Object(map) = &mut body {
        map.extend(extra);
        map.insert("audit_id".into(), Value::String(audit_id.to_owned()));
    }
    json_response(status, &body)
}

/// `{"statusCode","error","errorCode","message"}`: the Management API's
/// error body.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> Value {
    json!({
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "errorCode": code,
        "message": message,
    })
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Bytes> {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(bytes);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}
