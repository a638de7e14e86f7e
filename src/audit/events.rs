//! What goes into the log: the `decision` event (before anything is
//! forwarded) and the `outcome` event, built from the [`Exchange`] the
//! pipeline carried.
//!
//! Secrets stay out: no `Authorization` header, no token, only the token's
//! SHA-256 fingerprint and its non-secret claims.

use std::time::Duration;

use chrono::Utc;
use http::HeaderMap;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Index, Kind, NewEvent};
use crate::exchange::Exchange;
use crate::identity::Caller;
use crate::policy::postcheck::{PostCheck, Verdict as PostVerdict};
use crate::policy::{ChangeInput, Mode, RuleResult, Verdict};

/// Response headers worth keeping: rate limits and the content type.
const KEPT_HEADERS: [&str; 4] = [
    "content-type",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// Why tollgate answered itself: `{status, errorCode, message}`.
#[derive(Clone, Debug)]
pub struct Refused {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Exchange {
    fn index(&self, decision: Option<crate::policy::Decision>) -> Index {
        Index {
            operation: self.class.label().map(str::to_owned),
            org_id: self.org_id.clone(),
            connection_id: self.connection_id.clone(),
            caller: self
                .caller
                .key
                .clone()
                .or_else(|| self.caller.client_id.clone()),
            decision,
            rules: self
                .judgement
                .as_ref()
                .map(|d| {
                    let mut ids: Vec<String> = d.violations().map(|r| r.id.clone()).collect();
                    ids.dedup();
                    ids
                })
                .unwrap_or_default(),
        }
    }

    /// The `decision` event, with the exchange's decision; `refused`: why
    /// tollgate answered itself.
    ///
    /// The event's `data` is serialised here, in the request's task, straight
    /// from the exchange: no intermediate `Value` tree, and the single writer
    /// task only frames and hashes it.
    pub fn decision_event(&self, refused: Option<&Refused>) -> NewEvent {
        let data = DecisionData {
            method: &self.method,
            path: &self.path,
            source_ip: self.source_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            caller: &self.caller,
            request_body: self.request_body.as_deref(),
            unknown_fields: &self.unknown_fields,
            changes: self.input.as_ref().map_or(&[], |i| i.changes.as_slice()),
            rules: self
                .judgement
                .as_ref()
                .map(|d| d.results.iter().map(RuleData::of).collect())
                .unwrap_or_default(),
            policy_version: self.judgement.as_ref().map(|d| d.policy_version.as_str()),
            error: refused.map(|r| ErrorData {
                status: r.status,
                error_code: &r.code,
                message: &r.message,
            }),
            approval: self.approval.as_ref(),
        };
        NewEvent {
            exchange_id: self.id.clone(),
            kind: Kind::Decision,
            time: self.time,
            index: self.index(self.decision),
            data: raw(&data),
        }
    }

    /// The `outcome` event of an answer from the tenant. `body` is `None`
    /// when the answer was streamed (ungoverned traffic); `post_check` is the
    /// tenant's answer judged again, where the change was one association.
    pub fn outcome_event(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        latency: Duration,
        max_body: usize,
        post_check: Option<&PostCheck>,
    ) -> NewEvent {
        let mut kept = Map::new();
        for name in KEPT_HEADERS {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                kept.insert(name.into(), Value::String(v.to_owned()));
            }
        }
        // A JSON answer is kept as the tenant sent it (checked, not rebuilt);
        // anything else, or a truncated answer, as text.
        let text = |b: &[u8]| Body::Text(String::from_utf8_lossy(b).into_owned());
        let (body, truncated) = match body {
            None | Some([]) => (Body::None, false),
            Some(b) if b.len() > max_body => (text(&b[..max_body]), true),
            Some(b) => match std::str::from_utf8(b)
                .ok()
                .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
            {
                Some(json) => (Body::Json(json), false),
                None => (text(b), false),
            },
        };
        self.outcome(&OutcomeData {
            status: Some(status),
            headers: &kept,
            body,
            body_truncated: truncated,
            latency_ms: latency.as_secs_f64() * 1000.0,
            error: None,
            post_check: post_check.map(|p| p.verdict),
            post_check_rules: post_check
                .map(|p| p.rules.iter().map(RuleData::of).collect())
                .unwrap_or_default(),
            association: post_check.map(|p| &p.association),
            post_check_unverified: post_check.map_or(&[], |p| p.unverified.as_slice()),
            lock_lost: self.lock_lost,
        })
    }

    /// The `outcome` event of a call to the tenant that failed.
    pub fn failed_outcome_event(&self, kind: &str, message: &str, latency: Duration) -> NewEvent {
        self.outcome(&OutcomeData {
            status: None,
            headers: &Map::new(),
            body: Body::None,
            body_truncated: false,
            latency_ms: latency.as_secs_f64() * 1000.0,
            error: Some(FailureData { kind, message }),
            post_check: None,
            post_check_rules: Vec::new(),
            association: None,
            post_check_unverified: &[],
            lock_lost: self.lock_lost,
        })
    }

    fn outcome(&self, data: &OutcomeData<'_>) -> NewEvent {
        NewEvent {
            exchange_id: self.id.clone(),
            kind: Kind::Outcome,
            time: Utc::now(),
            index: self.index(None),
            data: raw(data),
        }
    }
}

/// Compact JSON of an event's `data`.
fn raw<T: Serialize>(data: &T) -> Box<RawValue> {
    // These types hold strings, numbers, `Value`s and checked JSON: they
    // always serialise.
    serde_json::value::to_raw_value(data).expect("audit event data serialises")
}

// The shapes of `data`, field order as recorded (DESIGN §5).

#[derive(Serialize)]
struct DecisionData<'a> {
    method: &'a str,
    path: &'a str,
    source_ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    caller: &'a Caller,
    request_body: Option<&'a RawValue>,
    unknown_fields: &'a [String],
    changes: &'a [ChangeInput],
    rules: Vec<RuleData<'a>>,
    policy_version: Option<&'a str>,
    error: Option<ErrorData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<&'a crate::exchange::ApprovalNote>,
}

/// A rule's verdict. The message only where the rule matched or failed:
/// DESIGN §5 records "the matching rules with their messages"; a passing
/// rule's message is in the policy set `policy_version` names.
#[derive(Serialize)]
struct RuleData<'a> {
    id: &'a str,
    mode: Mode,
    #[serde(flatten)]
    verdict: &'a Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl<'a> RuleData<'a> {
    fn of(r: &'a RuleResult) -> RuleData<'a> {
        let matched = matches!(
            r.verdict,
            Verdict::Violated | Verdict::Error(_) | Verdict::Exempted(_)
        );
        RuleData {
            id: &r.id,
            mode: r.mode,
            verdict: &r.verdict,
            message: matched.then_some(r.message.as_str()),
            field: r.field.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct ErrorData<'a> {
    status: u16,
    #[serde(rename = "errorCode")]
    error_code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct OutcomeData<'a> {
    status: Option<u16>,
    headers: &'a Map<String, Value>,
    body: Body<'a>,
    body_truncated: bool,
    latency_ms: f64,
    error: Option<FailureData<'a>>,
    /// `passed`, `violated` or `unreadable`: the tenant's answer judged again.
    #[serde(skip_serializing_if = "Option::is_none")]
    post_check: Option<PostVerdict>,
    /// The enforce rules the resulting association violates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    post_check_rules: Vec<RuleData<'a>>,
    /// The association as the tenant says it now stands: what it reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    association: Option<&'a Value>,
    /// Fields enforce rules read that the tenant did not report.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    post_check_unverified: &'a [&'static str],
    /// The association lock was lost while the tenant applied the change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    lock_lost: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    None,
    Json(&'a RawValue),
    Text(String),
}

#[derive(Serialize)]
struct FailureData<'a> {
    kind: &'a str,
    message: &'a str,
}

#[cfg(test)]
mod tests {
    //! The recorded shape is a contract (queries, replay and other tools read
    //! it): these pin it to the `json!` form it was first written in.

    use http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::exchange::Class;
    use crate::policy::input::{Connection, Org, Request};
    use crate::policy::{Decision, Judgement, Needs, RuleInput};
    use crate::route::Operation;

    fn facts() -> Exchange {
        let change = ChangeInput {
            operation: Operation::OrganizationConnectionUpdate,
            pointer: String::new(),
            org: Org {
                id: Some("org_acme".into()),
                name: Some("acme".into()),
            },
            connection: Connection::new(Some("con_saml".into()), None, Some("samlp".into())),
            body: json!({"organization_access_level": "full"}),
            before: json!({"organization_access_level": "readonly", "is_enabled": true}),
            after: json!({"organization_access_level": "full", "is_enabled": true}),
            fetched: Needs {
                org: false,
                connection: true,
                before: true,
            },
        };
        let caller = Caller {
            client_id: Some("ci-bot".into()),
            scopes: vec!["update:organization_connections".into()],
            token_fingerprint: Some("ab12".into()),
            ..Caller::default()
        };
        Exchange {
            id: "x1".into(),
            method: "PATCH".into(),
            path: "/api/v2/organizations/org_acme/connections/con_saml".into(),
            source_ip: Some("127.0.0.1".into()),
            user_agent: None,
            class: Class::Governed(Operation::OrganizationConnectionUpdate),
            org_id: Some("org_acme".into()),
            connection_id: Some("con_saml".into()),
            caller: caller.clone(),
            request_body: Some(raw(&json!({"organization_access_level": "full"}))),
            unknown_fields: vec!["x".into()],
            input: Some(RuleInput::new(
                Operation::OrganizationConnectionUpdate,
                caller,
                Request::default(),
                Utc::now(),
                vec![change],
            )),
            judgement: Some(Judgement {
                decision: Decision::Deny,
                results: vec![
                    RuleResult {
                        id: "no-full-access".into(),
                        mode: Mode::Enforce,
                        verdict: Verdict::Violated,
                        message: "no \"full\"".into(),
                        field: Some("/organization_access_level".into()),
                    },
                    RuleResult {
                        id: "quiet".into(),
                        mode: Mode::Enforce,
                        verdict: Verdict::Pass,
                        message: "not recorded".into(),
                        field: None,
                    },
                    RuleResult {
                        id: "other".into(),
                        mode: Mode::Warn,
                        verdict: Verdict::Error("no such key".into()),
                        message: "m".into(),
                        field: None,
                    },
                ],
                policy_version: "v1".into(),
            }),
            decision: Some(Decision::Deny),
            ..Exchange::default()
        }
    }

    /// How the decision's `data` was built before it was serialised directly.
    fn reference_decision(f: &Exchange, refused: Option<&Refused>) -> Value {
        let c = &f.caller;
        let caller = json!({
            "client_id": c.client_id, "subject": c.subject, "grant_type": c.grant_type,
            "scopes": c.scopes, "verified": c.verified, "key": c.key,
            "token_fingerprint": c.token_fingerprint,
        });
        let changes: Vec<Value> = f
            .input
            .iter()
            .flat_map(|i| &i.changes)
            .map(|c| {
                json!({
                    "operation": c.operation.id(), "pointer": c.pointer,
                    "org": {"id": c.org.id, "name": c.org.name},
                    "connection": {"id": c.connection.id, "name": c.connection.name,
                                   "is_database": c.connection.is_database,
                                   "strategy": c.connection.strategy},
                    "body": c.body, "before": c.before, "after": c.after, "fetched": c.fetched,
                })
            })
            .collect();
        let (results, version) = match &f.judgement {
            Some(d) => (json!(d.results), json!(d.policy_version)),
            None => (json!([]), Value::Null),
        };
        // Since the first format: passing and skipped rules without their message.
        let mut results = results;
        for r in results.as_array_mut().into_iter().flatten() {
            if matches!(r["verdict"].as_str(), Some("pass" | "skipped")) {
                r.as_object_mut().map(|o| o.shift_remove("message"));
            }
        }
        json!({
            "method": f.method, "path": f.path, "source_ip": f.source_ip,
            "user_agent": f.user_agent, "caller": caller, "request_body": f.request_body,
            "unknown_fields": f.unknown_fields, "changes": changes, "rules": results,
            "policy_version": version,
            "error": refused.map(|r| json!({"status": r.status, "errorCode": r.code, "message": r.message})),
        })
    }

    #[test]
    fn decision_data_keeps_its_recorded_shape() {
        let f = facts();
        let refused = Refused {
            status: 403,
            code: "tollgate_policy_denied".into(),
            message: "denied".into(),
        };
        for r in [None, Some(&refused)] {
            let e = f.decision_event(r);
            assert_eq!(e.data.get(), reference_decision(&f, r).to_string());
            assert!(
                !e.data.get().contains("not recorded"),
                "a passing rule's message"
            );
        }
        let bare = Exchange {
            decision: Some(Decision::Invalid),
            ..Exchange::default()
        };
        let e = bare.decision_event(None);
        assert_eq!(e.data.get(), reference_decision(&bare, None).to_string());
    }

    #[test]
    fn outcome_data_keeps_its_recorded_shape() {
        let f = facts();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("9"));
        headers.insert("set-cookie", HeaderValue::from_static("not kept"));
        let latency = Duration::from_micros(1500);
        let outcome = |body: Option<&[u8]>, max: usize| {
            let e = f.outcome_event(200, &headers, body, latency, max, None);
            serde_json::from_str::<Value>(e.data.get()).expect("json")
        };
        let kept = json!({"content-type": "application/json", "x-ratelimit-remaining": "9"});
        let expect = |body: Value, truncated: bool| {
            json!({"status": 200, "headers": kept, "body": body, "body_truncated": truncated,
                   "latency_ms": 1.5, "error": null})
        };
        assert_eq!(
            outcome(Some(br#"{"a": [1, 2]}"#), 1000),
            expect(json!({"a": [1, 2]}), false)
        );
        assert_eq!(
            outcome(Some(b"not json"), 1000),
            expect(json!("not json"), false)
        );
        assert_eq!(
            outcome(Some(b"{\"abc\":1}"), 4),
            expect(json!("{\"ab"), true)
        );
        assert_eq!(outcome(Some(b""), 1000), expect(Value::Null, false));
        assert_eq!(outcome(None, 1000), expect(Value::Null, false));
        // Key order, as recorded.
        let e = f.outcome_event(204, &HeaderMap::new(), None, latency, 10, None);
        assert_eq!(
            e.data.get(),
            r#"{"status":204,"headers":{},"body":null,"body_truncated":false,"latency_ms":1.5,"error":null}"#
        );
        let e = f.failed_outcome_event("timeout", "late", latency);
        assert_eq!(
            e.data.get(),
            r#"{"status":null,"headers":{},"body":null,"body_truncated":false,"latency_ms":1.5,"error":{"kind":"timeout","message":"late"}}"#
        );
    }

    #[test]
    fn canonical_bytes_keep_their_recorded_shape() {
        let f = facts();
        let e = f.decision_event(None);
        let body = super::super::canonical("c1", 7, "e1", &e);
        let reference = json!({
            "chain_id": "c1", "seq": 7, "event_id": "e1", "exchange_id": "x1",
            "kind": "decision", "time": super::super::format_time(f.time),
            "operation": "organization_connection.update", "org_id": "org_acme",
            "connection_id": "con_saml", "caller": "ci-bot", "decision": "deny",
            "rules": ["no-full-access", "other"],
            "data": serde_json::from_str::<Value>(e.data.get()).expect("json"),
        });
        assert_eq!(body, reference.to_string());
    }
}
