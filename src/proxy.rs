//! The request pipeline, stage by stage.
//!
//! Governed requests: screen → classify → read body → validate → identify →
//! fetch context → judge → forward what was judged → answer. (The audit
//! record of the decision slots in between judge and forward.) Everything
//! else: screen → classify → apply `routes.other` → stream through.
//!
//! Each stage either hands the next one a stricter value or ends the exchange
//! with a [`Refusal`], answered in the tenant's error shape by `error.rs`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tracing::{info, warn};
use uuid::Uuid;

use crate::body::{self, BodyError};
use crate::config::{Config, OtherRoutes};
use crate::context::{ContextClient, RequestFacts};
use crate::error::Refusal;
use crate::identity;
use crate::policy::reload::Policies;
use crate::policy::{self, Decision, Input, Mode, Outcome};
use crate::route::{self, Governed, Route};
use crate::schema::{self, OrgRef, Validated};
use crate::server::Peer;
use crate::upstream::{self, SetupError, Upstream};
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

/// The gateway: configuration and the tenant client, shared by every
/// connection.
pub struct Gateway {
    config: Arc<Config>,
    upstream: Upstream,
    policies: Arc<Policies>,
    context: ContextClient,
}

impl Gateway {
    /// A gateway for a validated configuration whose `upstream.url` is set,
    /// judging by `policies`.
    pub fn new(config: Config, policies: Arc<Policies>) -> Result<Gateway, SetupError> {
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
        let context = ContextClient::new(upstream.clone(), config.context.cache_ttl.0);
        Ok(Gateway {
            config: Arc::new(config),
            upstream,
            policies,
            context,
        })
    }

    /// Serves one exchange. Never fails: every refusal is an answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let id = Uuid::now_v7().to_string();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut resp = match self.exchange(req, &id).await {
            Ok(resp) => resp,
            Err(refusal) => {
                let status = refusal.status();
                if status.is_server_error() {
                    warn!(audit_id = %id, %method, %path, %status, error = %refusal, "refused");
                } else {
                    info!(audit_id = %id, %method, %path, %status, reason = %refusal, "refused");
                }
                refusal.into_response(&id).map(full)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(AUDIT_ID.clone(), v);
        }
        resp
    }

    async fn exchange(
        &self,
        req: Request<Incoming>,
        id: &str,
    ) -> Result<Response<BoxBody>, Refusal> {
        // Screen: headers that could turn any request into a governed one at
        // the tenant are refused before classification can be fooled by them.
        screen(req.headers())?;
        // Classify, with the tenant's routing semantics.
        let route = route::classify(req.method(), req.uri().path(), req.uri().query())?;
        match route {
            Route::Governed(g) => self.governed(req, g, id).await,
            Route::Other => self.other(req, id).await,
        }
    }

    async fn governed(
        &self,
        req: Request<Incoming>,
        route: Governed,
        id: &str,
    ) -> Result<Response<BoxBody>, Refusal> {
        let (parts, body) = req.into_parts();
        // Read the body: media type, encoding and size before any parsing.
        let body = self.read_body(&parts.headers, body, &route).await?;
        // Validate against the schema before any rule runs, so rules only
        // ever see well-typed values.
        let validated = schema::validate(&route, body, self.config.schema.unknown_fields)?;
        // Identify the caller: rules and the record name who asked.
        let caller = identity::passthrough(&parts.headers);
        // Fetch the context the applicable rules read. One policy set judges
        // the whole exchange, even if a reload lands meanwhile.
        let policy = self.policies.current();
        let facts = RequestFacts {
            caller: caller.to_value(),
            request: request_value(&parts, &route),
            now: chrono::Utc::now(),
        };
        let inputs = self
            .context
            .inputs(&policy, &route, &validated, &parts.headers, &facts)
            .await?;
        // Judge every change by every applicable rule.
        let decision = policy::evaluate(&policy, &inputs);
        if decision.outcome == Outcome::Deny {
            return Err(Refusal::PolicyDenied(decision));
        }
        // Forward exactly what was judged: canonical method and path, the
        // body re-serialised, framing recomputed.
        let forwarded = forward_request(&self.upstream, &parts.headers, &route, &validated, id)?;
        let resp = self.upstream.send_buffered(forwarded).await?;
        info!(
            audit_id = %id,
            operation = %route.operation,
            path = %route.path,
            decision = decision.outcome.as_str(),
            status = resp.status().as_u16(),
            "forwarded"
        );
        // A change that took effect makes the cached state stale.
        if resp.status().is_success() {
            self.forget(&validated, &inputs);
        }
        // Answer with the tenant's status, headers and body, unchanged but
        // for hop-by-hop headers and the warnings of `warn` rules.
        let (mut parts, bytes) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        add_warnings(&mut parts.headers, &decision);
        Ok(Response::from_parts(parts, full(bytes)))
    }

    fn forget(&self, validated: &Validated, inputs: &[Input]) {
        for (change, input) in validated.changes.iter().zip(inputs) {
            let Some(cid) = change.connection_id.as_deref() else {
                continue;
            };
            if let OrgRef::Existing(named) = &change.org {
                self.context.invalidate(named, cid);
            }
            if let Some(resolved) = input.org.get("id").and_then(Value::as_str) {
                self.context.invalidate(resolved, cid);
            }
        }
    }

    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        route: &Governed,
    ) -> Result<Option<Map<String, Value>>, Refusal> {
        body::check_encoding(headers)?;
        if route.operation.is_delete() {
            let bytes = body::read_limited(headers, body, self.config.limits.max_body).await?;
            if !bytes.is_empty() {
                return Err(BodyError::Unexpected.into());
            }
            return Ok(None);
        }
        body::check_json_media_type(headers)?;
        let bytes = body::read_limited(headers, body, self.config.limits.max_body).await?;
        Ok(Some(schema::parse_strict(&bytes)?))
    }

    async fn other(&self, req: Request<Incoming>, id: &str) -> Result<Response<BoxBody>, Refusal> {
        if self.config.other_routes(req.method()) == OtherRoutes::Deny {
            return Err(Refusal::OtherRouteDenied);
        }
        let (mut parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        parts.uri = self.upstream.uri(&target)?;
        parts.version = http::Version::HTTP_11;
        upstream::strip_hop_by_hop(&mut parts.headers);
        set_correlation_id(&mut parts.headers, id);
        let body = body.map_err(Into::into).boxed();
        let resp = self.upstream.send(Request::from_parts(parts, body)).await?;
        let (mut parts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed(),
        ))
    }
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
    route: &Governed,
    validated: &Validated,
    id: &str,
) -> Result<Request<BoxBody>, Refusal> {
    let mut headers = client_headers.clone();
    upstream::strip_hop_by_hop(&mut headers);
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
    let body = match &validated.body {
        Some(map) => {
            let bytes = serde_json::to_vec(map).map_err(|e| BodyError::Read(e.to_string()))?;
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
