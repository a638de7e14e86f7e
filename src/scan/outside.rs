//! Changes made outside tollgate. The tenant's log (`GET /api/v2/logs`,
//! from a checkpoint kept in the store) holds a `sapi` event for every
//! write; each write to an organization connection is matched to an
//! exchange tollgate forwarded — by correlation id where the event carries
//! one, otherwise by method, canonical path, body and time — and what
//! matches nothing is an outside change: recorded as an `observed` event
//! (who, what, when), judged by the policy in force.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Reader, ScanError};
use crate::audit::query::Filter;
use crate::audit::{AuditLog, Index, Kind, NewEvent, Store};
use crate::identity::Caller;
use crate::policy::input::{Connection, Org, Request as RequestVariable};
use crate::policy::{ChangeInput, Decision, Needs, PolicySet, RuleInput, evaluate, state};
use crate::route::{self, Route};
use crate::schema::{OrgRef, UnknownFields};

/// The checkpoint's name in the store.
pub const CHECKPOINT: &str = "tenant_logs";
/// Log events asked for per page (Auth0's most).
const TAKE: usize = 100;
/// How far apart a forwarded exchange and its log event may be.
const WINDOW_US: i64 = 5 * 60 * 1_000_000;

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
}

/// Where outside changes are matched and recorded.
pub struct Log<'a> {
    pub store: &'a Store,
    pub audit: &'a AuditLog,
}

/// Reads the tenant's log from the checkpoint to its end; returns the
/// outside changes found (each recorded once).
pub(crate) async fn read(
    reader: &mut Reader<'_>,
    log: &Log<'_>,
    policy: &PolicySet,
) -> Result<Vec<Outside>, ScanError> {
    let store_err = |e: crate::audit::StoreError| ScanError::Audit(e.to_string());
    let mut from = log.store.checkpoint(CHECKPOINT).await.map_err(store_err)?;
    let mut matched = HashSet::new();
    let mut found = Vec::new();
    loop {
        let mut path = format!("/api/v2/logs?take={TAKE}");
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", route::encode_segment(f)));
        }
        let events = match reader.get(&path).await? {
            Some(Value::Array(events)) => events,
            _ => Vec::new(),
        };
        for event in &events {
            if let Some(outside) = judge(event, log, policy, &mut matched).await? {
                found.push(outside);
            }
            if let Some(id) = event.get("log_id").and_then(Value::as_str) {
                from = Some(id.to_owned());
            }
        }
        // Moved once the page's events are recorded: a crash reads the page
        // again, and `observed-LOG_ID` keeps its events from being recorded
        // twice.
        if let Some(f) = &from {
            log.store
                .set_checkpoint(CHECKPOINT, f)
                .await
                .map_err(store_err)?;
        }
        if events.len() < TAKE {
            return Ok(found);
        }
    }
}

/// One log event: `None` unless it is an outside change to an organization
/// connection (recorded here, once).
pub async fn judge(
    event: &Value,
    log: &Log<'_>,
    policy: &PolicySet,
    matched: &mut HashSet<String>,
) -> Result<Option<Outside>, ScanError> {
    let audit_err = |e: &dyn std::fmt::Display| ScanError::Audit(e.to_string());
    let Some(seen) = Seen::of(event) else {
        return Ok(None);
    };
    if forwarded(&seen, log.store, matched)
        .await
        .map_err(|e| audit_err(&e))?
    {
        return Ok(None);
    }
    let id = format!("observed-{}", seen.log_id);
    let recorded = log
        .store
        .exchange_events(&id)
        .await
        .map_err(|e| audit_err(&e))?;
    if !recorded.is_empty() {
        return Ok(None);
    }
    let outside = seen.judged(policy, id);
    log.audit
        .record(outside_event(&outside, &seen))
        .await
        .map_err(|e| audit_err(&e))?;
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
                    let connection = Connection::new(c.connection_id.clone(), None, None);
                    let mut input = ChangeInput::of(c, org, connection, None, Needs::default());
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
        Outside {
            exchange_id,
            log_id: self.log_id.clone(),
            date: crate::audit::format_time(self.date),
            operation: op.id().to_owned(),
            org_id: self.route.id.clone(),
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
        }
    }
}

/// Whether tollgate forwarded this write: an exchange with its correlation
/// id, or else one not yet matched with the same method, canonical path and
/// body, decided within the window around the event.
async fn forwarded(
    seen: &Seen<'_>,
    store: &Store,
    matched: &mut HashSet<String>,
) -> Result<bool, crate::audit::StoreError> {
    if let Some(id) = &seen.correlation_id
        && !store.exchange_events(id).await?.is_empty()
    {
        matched.insert(id.clone());
        return Ok(true);
    }
    let at = seen.date.timestamp_micros();
    let filter = Filter {
        since_us: Some(at - WINDOW_US),
        until_us: Some(at + WINDOW_US),
        operation: Some(seen.route.operation.id().to_owned()),
        limit: 10_000,
        ..Filter::default()
    };
    for row in store.decisions(&filter).await? {
        if matched.contains(&row.exchange_id) || !row.index.decision.is_some_and(Decision::forwards)
        {
            continue;
        }
        let Ok(body) = serde_json::from_str::<Value>(&row.body) else {
            continue;
        };
        let data = &body["data"];
        let same = data["method"].as_str() == Some(seen.method.as_str())
            && data["path"].as_str() == Some(seen.route.path.as_str())
            && data["request_body"] == seen.body;
        if same {
            matched.insert(row.exchange_id.clone());
            return Ok(true);
        }
    }
    Ok(false)
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
            log: seen.event,
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

/// An `observed` event read back.
pub fn from_row(row: &crate::audit::Row) -> Option<Outside> {
    let body: Value = serde_json::from_str(&row.body).ok()?;
    let mut data = body.get("data")?.clone();
    if let Value::Object(m) = &mut data {
        m.remove("log");
    }
    serde_json::from_value(data).ok()
}
