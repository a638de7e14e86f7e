//! What goes into the log: the `decision` event (before anything is
//! forwarded) and the `outcome` event, built from the facts the pipeline
//! gathered.
//!
//! Secrets stay out: no `Authorization` header, no token, only the token's
//! SHA-256 fingerprint and its non-secret claims.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{Index, Kind, NewEvent};
use crate::identity::Caller;
use crate::policy::{Decision, Input};

/// Response headers worth keeping: rate limits and the content type.
const KEPT_HEADERS: [&str; 4] = [
    "content-type",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// What is known of an exchange when its decision is recorded.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub exchange_id: String,
    pub time: DateTime<Utc>,
    pub method: String,
    /// The canonical path of a governed request; the target as sent otherwise.
    pub path: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The operation id, `other` for ungoverned requests, unknown before
    /// classification.
    pub operation: Option<String>,
    pub org_id: Option<String>,
    pub connection_id: Option<String>,
    pub caller: Caller,
    /// The judged body; for a body that could not be parsed, its text.
    pub request_body: Option<Value>,
    pub unknown_fields: Vec<String>,
    /// The rules' view of each change, with the context used.
    pub changes: Vec<Input>,
    pub decision: Option<Decision>,
}

/// Why tollgate answered itself: `{status, errorCode, message}`.
#[derive(Clone, Debug)]
pub struct Refused {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Facts {
    fn index(&self, decision: Option<&str>) -> Index {
        Index {
            operation: self.operation.clone(),
            org_id: self.org_id.clone(),
            connection_id: self.connection_id.clone(),
            caller: self
                .caller
                .key
                .clone()
                .or_else(|| self.caller.client_id.clone()),
            decision: decision.map(str::to_owned),
            rules: self
                .decision
                .as_ref()
                .map(|d| {
                    let mut ids: Vec<String> = d.violations().map(|r| r.id.clone()).collect();
                    ids.dedup();
                    ids
                })
                .unwrap_or_default(),
        }
    }

    /// The `decision` event: `decision` is `allow`, `deny`, `warn`,
    /// `dry_run_deny` or `invalid`.
    pub fn decision_event(&self, decision: &str, refused: Option<&Refused>) -> NewEvent {
        let mut caller = self.caller.to_value();
        if let Value::Object(m) = &mut caller {
            m.insert(
                "token_fingerprint".into(),
                json!(self.caller.token_fingerprint),
            );
        }
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|c| {
                json!({
                    "operation": c.change_operation.id(),
                    "pointer": c.pointer,
                    "org": c.org,
                    "connection": c.connection,
                    "body": c.body,
                    "before": c.before,
                    "after": c.after,
                    "fetched": c.fetched,
                })
            })
            .collect();
        let (results, version) = match &self.decision {
            Some(d) => (json!(d.results), json!(d.policy_version)),
            None => (json!([]), Value::Null),
        };
        let data = json!({
            "method": self.method,
            "path": self.path,
            "source_ip": self.source_ip,
            "user_agent": self.user_agent,
            "caller": caller,
            "request_body": self.request_body,
            "unknown_fields": self.unknown_fields,
            "changes": changes,
            "rules": results,
            "policy_version": version,
            "error": refused.map(|r| json!({"status": r.status, "errorCode": r.code, "message": r.message})),
        });
        NewEvent {
            exchange_id: self.exchange_id.clone(),
            kind: Kind::Decision,
            time: self.time,
            index: self.index(Some(decision)),
            data,
        }
    }

    /// The `outcome` event of an answer from the tenant. `body` is `None`
    /// when the answer was streamed (ungoverned traffic).
    pub fn outcome_event(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        latency: Duration,
        max_body: usize,
    ) -> NewEvent {
        let mut kept = Map::new();
        for name in KEPT_HEADERS {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                kept.insert(name.into(), json!(v));
            }
        }
        let (body, truncated) = match body {
            None => (Value::Null, false),
            Some(b) if b.len() > max_body => (
                Value::String(String::from_utf8_lossy(&b[..max_body]).into_owned()),
                true,
            ),
            Some([]) => (Value::Null, false),
            Some(b) => (
                serde_json::from_slice(b)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
                false,
            ),
        };
        self.outcome(json!({
            "status": status,
            "headers": kept,
            "body": body,
            "body_truncated": truncated,
            "latency_ms": latency.as_secs_f64() * 1000.0,
            "error": null,
        }))
    }

    /// The `outcome` event of a call to the tenant that failed.
    pub fn failed_outcome_event(&self, kind: &str, message: &str, latency: Duration) -> NewEvent {
        self.outcome(json!({
            "status": null,
            "headers": {},
            "body": null,
            "body_truncated": false,
            "latency_ms": latency.as_secs_f64() * 1000.0,
            "error": {"kind": kind, "message": message},
        }))
    }

    fn outcome(&self, data: Value) -> NewEvent {
        NewEvent {
            exchange_id: self.exchange_id.clone(),
            kind: Kind::Outcome,
            time: Utc::now(),
            index: self.index(None),
            data,
        }
    }
}
