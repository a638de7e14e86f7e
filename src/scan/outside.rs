//! Changes made outside tollgate. The tenant's log (`GET /api/v2/logs`,
//! from a checkpoint kept in the store, one per tenant) holds a `sapi`
//! event for every write; each write to an organization connection is
//! matched to an exchange tollgate forwarded and the tenant accepted — by
//! correlation id where the event carries one, otherwise by method,
//! canonical path and body, decided at most [`WINDOW_US`] before the event —
//! and each exchange explains one event only, ever (a claim in the store).
//! What matches nothing is an outside change: recorded once as an
//! `observed` event (who, what, when), judged by the policy in force.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Reader, ScanError};
use crate::audit::query::Filter;
use crate::audit::{AuditLog, Index, Kind, NewEvent, Store};
use crate::identity::Caller;
use crate::policy::input::{Connection, Org, Request as RequestVariable};
use crate::policy::{ChangeInput, Decision, Needs, PolicySet, RuleInput, evaluate, state};
use crate::route::{self, Route};
use crate::schema::{OrgRef, UnknownFields};

/// The checkpoint's name in the store, for the tenant at `url`.
pub fn checkpoint_name(url: &str) -> String {
    format!(
        "tenant_logs:{}",
        url.trim_end_matches('/').to_ascii_lowercase()
    )
}
/// Log events asked for per page (Auth0's most).
const TAKE: usize = 100;
/// How long before its log event a forwarded exchange may have been
/// decided (the tenant logs a change after it is made; a little clock skew
/// the other way is allowed).
pub const WINDOW_US: i64 = 2 * 60 * 1_000_000;
const SKEW_US: i64 = 5 * 1_000_000;

/// A change to an organization connection that did not pass through
/// tollgate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outside {
    /// The `observed` event's id (`observed-LOG_ID`).
    pub exchange_id: String,
    pub log_id: String,
    pub date: String,
    pub operation: String,
    pub org_id: Option<String>,
    pub connection_id: Option<String>,
    /// Who: the client and, for the dashboard, the user.
    pub client_id: Option<String>,
    pub client_name: Option<String>,
    pub user: Option<String>,
    pub method: String,
    pub path: String,
    pub body: Value,
    pub status: Option<u64>,
    /// What the policy in force says of it.
    pub decision: Decision,
    pub rules: Vec<String>,
    pub policy_version: String,
}

/// Where outside changes are matched and recorded.
pub struct Log<'a> {
    pub store: &'a Store,
    pub audit: &'a AuditLog,
}

/// Reads the tenant's log from `checkpoint` to its end; returns the
/// outside changes found (each recorded once).
pub(crate) async fn read(
    reader: &mut Reader<'_>,
    log: &Log<'_>,
    policy: &PolicySet,
    checkpoint: &str,
) -> Result<Vec<Outside>, ScanError> {
    let store_err = |e: crate::audit::StoreError| ScanError::Audit(e.to_string());
    let mut from = log.store.checkpoint(checkpoint).await.map_err(store_err)?;
    let mut found = Vec::new();
    loop {
        let mut path = format!("/api/v2/logs?take={TAKE}");
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", route::encode_segment(f)));
        }
        let events = match reader.get(&path).await? {
            Some(Value::Array(events)) => events,
            Some(other) => {
                return Err(ScanError::Tenant {
                    path,
                    message: format!(
                        "not a list of log events: {}",
                        other.to_string().chars().take(80).collect::<String>()
                    ),
                });
            }
            None => Vec::new(),
        };
        let before = from.clone();
        found.extend(judge_batch(&events, log, policy, true).await?);
        if let Some(id) = events
            .iter()
            .rev()
            .find_map(|e| e.get("log_id").and_then(Value::as_str))
        {
            from = Some(id.to_owned());
        }
        // Moved once the page's events are recorded: a crash reads the page
        // again, and the claims keep its events from being recorded twice.
        if let Some(f) = &from {
            log.store
                .set_checkpoint(checkpoint, f)
                .await
                .map_err(store_err)?;
        }
        // A full page that moved the checkpoint: there may be more. (A
        // tenant ignoring `from` would serve the same page forever.)
        if events.len() < TAKE || from == before {
            return Ok(found);
        }
    }
}

/// Log events, in the tenant's order: the outside changes among them
/// (each recorded here, once). Events are first matched to exchanges
/// decided before them; only the events left are matched allowing for
/// clock skew, so a change made at the dashboard just before the same change
/// through tollgate cannot take tollgate's exchange from it.
///
/// `from_tenant`: the events were read from the tenant's log with
/// tollgate's credential. Events pushed to tollgate (the log stream) are
/// claims nobody has confirmed: they may be matched to exchanges but never
/// claim one, so a forged event cannot take an exchange away from the
/// tenant's real event of it.
pub async fn judge_batch(
    events: &[Value],
    log: &Log<'_>,
    policy: &PolicySet,
    from_tenant: bool,
) -> Result<Vec<Outside>, ScanError> {
    let audit_err = |e: &dyn std::fmt::Display| ScanError::Audit(e.to_string());
    let mut left = Vec::new();
    for seen in events.iter().filter_map(Seen::of) {
        if !forwarded(&seen, log.store, 0, from_tenant)
            .await
            .map_err(|e| audit_err(&e))?
        {
            left.push(seen);
        }
    }
    let mut found = Vec::new();
    for seen in left {
        if let Some(outside) = judge(seen, log, policy, from_tenant).await? {
            found.push(outside);
        }
    }
    Ok(found)
}

/// One log event tollgate did not forward as decided before it: `None` if
/// it is one it forwarded allowing for clock skew, or is recorded already.
async fn judge(
    seen: Seen<'_>,
    log: &Log<'_>,
    policy: &PolicySet,
    from_tenant: bool,
) -> Result<Option<Outside>, ScanError> {
    let audit_err = |e: &dyn std::fmt::Display| ScanError::Audit(e.to_string());
    // An event dated beyond the clock skew allowed is not the tenant's:
    // it would sit on top of every view for ever.
    if seen.date.timestamp_micros() > Utc::now().timestamp_micros() + SKEW_US {
        tracing::warn!(log_id = %seen.log_id, date = %seen.date, "a log event dated in the future: refused");
        return Ok(None);
    }
    if forwarded(&seen, log.store, SKEW_US, from_tenant)
        .await
        .map_err(|e| audit_err(&e))?
    {
        return Ok(None);
    }
    // The event's id and content: a forged event claiming a real event's
    // log_id does not keep the real one from being recorded.
    let id = format!("observed-{}-{}", seen.log_id, &seen.fingerprint[..16]);
    if !log
        .store
        .claim(&id, &seen.log_id)
        .await
        .map_err(|e| audit_err(&e))?
    {
        return Ok(None);
    }
    let outside = seen.judged(policy, id.clone());
    if let Err(e) = log.audit.record(outside_event(&outside, &seen)).await {
        let _ = log.store.release_claim(&id).await;
        return Err(audit_err(&e));
    }
    metrics::counter!("tollgate_outside_changes_total", "operation" => outside.operation.clone())
        .increment(1);
    Ok(Some(outside))
}

/// A governed write, as the tenant's log shows it.
struct Seen<'a> {
    event: &'a Value,
    log_id: String,
    date: DateTime<Utc>,
    route: route::Governed,
    method: String,
    body: Value,
    correlation_id: Option<String>,
    /// SHA-256 of the event as received, hex.
    fingerprint: String,
}

impl<'a> Seen<'a> {
    fn of(event: &'a Value) -> Option<Seen<'a>> {
        if event.get("type").and_then(Value::as_str) != Some("sapi") {
            return None;
        }
        let request = event.pointer("/details/request")?;
        let method = request.get("method")?.as_str()?.to_ascii_uppercase();
        let path = request.get("path")?.as_str()?;
        let m = http::Method::from_bytes(method.as_bytes()).ok()?;
        let Ok(Route::Governed(route)) = route::classify(&m, path, None) else {
            return None;
        };
        let date = event.get("date")?.as_str()?;
        Some(Seen {
            event,
            log_id: event.get("log_id")?.as_str()?.to_owned(),
            date: DateTime::parse_from_rfc3339(date).ok()?.with_timezone(&Utc),
            route,
            method,
            body: request.get("body").cloned().unwrap_or(Value::Null),
            correlation_id: request
                .get("correlation_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            fingerprint: hex::encode(Sha256::digest(event.to_string().as_bytes())),
        })
    }

    fn text(&self, pointer: &str) -> Option<String> {
        self.event
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The change judged by the policy in force: `after` is the association
    /// the tenant answered with (or the body over the tenant's defaults).
    fn judged(&self, policy: &PolicySet, exchange_id: String) -> Outside {
        let op = self.route.operation;
        let body = match &self.body {
            Value::Object(m) => Some(m.clone()),
            _ => None,
        };
        let validated = crate::schema::validate(
            &self.route,
            body.filter(|_| !op.is_delete()),
            UnknownFields::Forward,
        );
        let answered = self
            .event
            .pointer("/details/response/body")
            .and_then(Value::as_object)
            .filter(|m| m.contains_key("connection_id"));
        let changes: Vec<ChangeInput> = match &validated {
            Ok(v) => v
                .changes
                .iter()
                .map(|c| {
                    let org = match &c.org {
                        OrgRef::Existing(id) => Org {
                            id: Some(id.clone()),
                            name: None,
                        },
                        OrgRef::New(name) => Org {
                            id: None,
                            name: name.clone(),
                        },
                    };
                    // The tenant's answer names the connection (the log does
                    // not carry the association as it stood before).
                    let named = answered.and_then(|a| a.get("connection"));
                    let text = |k: &str| {
                        named
                            .and_then(|n| n.get(k))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    };
                    let connection =
                        Connection::new(c.connection_id.clone(), text("name"), text("strategy"));
                    let fetched = Needs {
                        org: false,
                        connection: named.is_some(),
                        before: false,
                    };
                    let mut input = ChangeInput::of(c, org, connection, None, fetched);
                    if let Some(a) = answered {
                        input.after = state::before(Some(a));
                    }
                    input
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let caller = Caller {
            client_id: self.text("/client_id"),
            subject: self.text("/details/request/auth/user/user_id"),
            ..Caller::default()
        };
        let request = RequestVariable {
            method: Some(self.method.clone()),
            path: Some(self.route.path.clone()),
            ..RequestVariable::default()
        };
        let judgement = evaluate(
            policy,
            &RuleInput::new(op, caller, request, self.date, changes),
        );
        let mut rules: Vec<String> = judgement.violations().map(|r| r.id.clone()).collect();
        rules.dedup();
        let first_org = validated.as_ref().ok().and_then(|v| {
            v.changes.iter().find_map(|c| match &c.org {
                OrgRef::Existing(id) => Some(id.clone()),
                OrgRef::New(_) => None,
            })
        });
        Outside {
            exchange_id,
            log_id: self.log_id.clone(),
            date: crate::audit::format_time(self.date),
            operation: op.id().to_owned(),
            org_id: first_org,
            connection_id: self.route.connection_id.clone().or_else(|| {
                self.body
                    .get("connection_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }),
            client_id: self.text("/client_id"),
            client_name: self.text("/client_name"),
            user: self
                .text("/details/request/auth/user/email")
                .or_else(|| self.text("/user_name")),
            method: self.method.clone(),
            path: self.route.path.clone(),
            body: self.body.clone(),
            status: self
                .event
                .pointer("/details/response/statusCode")
                .and_then(Value::as_u64),
            decision: judgement.decision,
            rules,
            policy_version: judgement.policy_version.clone(),
        }
    }
}

/// Whether tollgate forwarded this write and the tenant accepted it: an
/// exchange with its correlation id, or else one with the same method,
/// canonical path and body, decided within [`WINDOW_US`] before the event
/// (and up to `skew_us` after it), answered 2xx, and not claimed by another
/// event before.
async fn forwarded(
    seen: &Seen<'_>,
    store: &Store,
    skew_us: i64,
    claim: bool,
) -> Result<bool, crate::audit::StoreError> {
    let take = |exchange_id: String| async move {
        if claim {
            store
                .claim(&format!("exchange:{exchange_id}"), &seen.log_id)
                .await
        } else {
            // Unconfirmed: matched, and the exchange left for the tenant's
            // own event of it.
            Ok(true)
        }
    };
    // A correlation id names an exchange; it claims that exchange only if
    // the exchange is the very request the event shows — forwarded, the
    // same method, canonical path and body, answered 2xx. An event pointing
    // at a denied exchange, or at another request, claims nothing.
    if let Some(id) = &seen.correlation_id {
        let events = store.exchange_events(id).await?;
        let decision = events.iter().find(|e| e.kind == "decision");
        if decision.is_some_and(|d| same_request(d, seen)) && accepted(store, id).await? {
            return take(id.clone()).await;
        }
    }
    let at = seen.date.timestamp_micros();
    let filter = Filter {
        since_us: Some(at - WINDOW_US),
        until_us: Some(at + skew_us + 1),
        operation: Some(seen.route.operation.id().to_owned()),
        limit: 10_000,
        ..Filter::default()
    };
    let mut decisions = store.decisions(&filter).await?;
    // The earliest first: events and exchanges pair up in order.
    decisions.reverse();
    for row in decisions {
        if !same_request(&row, seen) || !accepted(store, &row.exchange_id).await? {
            continue;
        }
        if take(row.exchange_id.clone()).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a decision event is of a forwarded request that is the one the
/// log event shows: the same method, canonical path and body.
fn same_request(row: &crate::audit::Row, seen: &Seen<'_>) -> bool {
    if !row.index.decision.is_some_and(Decision::forwards) {
        return false;
    }
    let Ok(body) = serde_json::from_str::<Value>(&row.body) else {
        return false;
    };
    let data = &body["data"];
    data["method"].as_str() == Some(seen.method.as_str())
        && data["path"].as_str() == Some(seen.route.path.as_str())
        && data["request_body"] == seen.body
}

/// Whether the tenant accepted the exchange (its outcome is a 2xx).
async fn accepted(store: &Store, exchange_id: &str) -> Result<bool, crate::audit::StoreError> {
    let outcomes = store.outcomes(&[exchange_id.to_owned()]).await?;
    Ok(outcomes.iter().any(|o| {
        serde_json::from_str::<Value>(&o.body)
            .ok()
            .and_then(|b| b["data"]["status"].as_u64())
            .is_some_and(|s| (200..300).contains(&s))
    }))
}

/// The `observed` event of an outside change.
fn outside_event(outside: &Outside, seen: &Seen<'_>) -> NewEvent {
    NewEvent {
        exchange_id: outside.exchange_id.clone(),
        kind: Kind::Observed,
        time: seen.date,
        index: Index {
            operation: Some(outside.operation.clone()),
            org_id: outside.org_id.clone(),
            connection_id: outside.connection_id.clone(),
            caller: outside.client_id.clone(),
            decision: Some(outside.decision),
            rules: outside.rules.clone(),
        },
        // Strings, numbers and the log's JSON: it serialises.
        data: serde_json::value::to_raw_value(&ObservedData {
            outside,
            log: &redacted(seen.event),
        })
        .expect("an observed event serialises"),
    }
}

#[derive(Serialize)]
struct ObservedData<'a> {
    #[serde(flatten)]
    outside: &'a Outside,
    /// The tenant's log event, as read.
    log: &'a Value,
}

/// The log event as the audit log keeps it: an SSO ticket's URL (a bearer
/// credential) with its query values redacted, as tollgate's own records
/// keep it.
fn redacted(event: &Value) -> Value {
    let mut event = event.clone();
    if let Some(Value::String(url)) = event.pointer_mut("/details/response/body/ticket") {
        *url = route::redact_target(url);
    }
    event
}

/// An `observed` event read back.
pub fn from_row(row: &crate::audit::Row) -> Option<Outside> {
    let body: Value = serde_json::from_str(&row.body).ok()?;
    let mut data = body.get("data")?.clone();
    if let Value::Object(m) = &mut data {
        m.remove("log");
    }
    serde_json::from_value(data).ok()
}
