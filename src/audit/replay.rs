//! `policy replay`: re-judges recorded requests with a candidate policy set,
//! using the context recorded with each decision, and lists the exchanges
//! whose decision would change.

use chrono::{TimeZone, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::query::Filter;
use super::{Row, Store, StoreError};
use crate::policy::{Input, Needs, PolicySet, evaluate};
use crate::route::Operation;

/// One re-judged exchange whose decision differs (or cannot be told).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Change {
    pub exchange_id: String,
    pub time: String,
    pub operation: String,
    pub org_id: Option<String>,
    pub connection_id: Option<String>,
    pub recorded: String,
    /// The candidate's decision, or `None` when the candidate's rules read
    /// context that was not fetched (and so not recorded) at the time.
    pub candidate: Option<String>,
    /// Rules the candidate finds violated.
    pub rules: Vec<String>,
}

/// What a replay found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Replay {
    pub judged: usize,
    pub changed: Vec<Change>,
}

/// Re-judges every recorded decision since `since_us`.
pub async fn replay(
    store: &Store,
    candidate: &PolicySet,
    since_us: i64,
) -> Result<Replay, StoreError> {
    let filter = Filter {
        since_us: Some(since_us),
        limit: 1_000_000,
        ..Filter::default()
    };
    let mut out = Replay::default();
    for row in store.decisions(&filter).await? {
        let Some(verdict) = rejudge(&row, candidate) else {
            continue;
        };
        out.judged += 1;
        if let Some(change) = verdict {
            out.changed.push(change);
        }
    }
    out.changed.reverse();
    Ok(out)
}

/// `None`: not a judged governed request. `Some(None)`: same decision.
fn rejudge(row: &Row, candidate: &PolicySet) -> Option<Option<Change>> {
    let recorded = row.index.decision.clone()?;
    if recorded == "invalid" {
        return None;
    }
    let operation = Operation::from_id(row.index.operation.as_deref()?)?;
    let body: Value = serde_json::from_str(&row.body).ok()?;
    let data = body.get("data")?;
    // A refusal before judging (context unavailable) was never judged.
    if data.get("error").is_some_and(|e| !e.is_null())
        && data.get("policy_version").is_none_or(Value::is_null)
    {
        return None;
    }
    let now = Utc.timestamp_micros(row.time_us).single()?;
    let request = json!({
        "method": data.get("method"), "path": data.get("path"),
        "source_ip": data.get("source_ip"), "user_agent": data.get("user_agent"),
    });
    let mut inputs = Vec::new();
    let mut undecidable = false;
    for c in data.get("changes")?.as_array()? {
        let change_operation = Operation::from_id(c.get("operation")?.as_str()?)?;
        let fetched: Needs = serde_json::from_value(c.get("fetched")?.clone()).ok()?;
        if !fetched.covers(candidate.needs(operation, change_operation)) {
            undecidable = true;
        }
        let field = |k: &str| c.get(k).cloned().unwrap_or(Value::Null);
        inputs.push(Input {
            operation,
            change_operation,
            pointer: c
                .get("pointer")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            org: field("org"),
            connection: field("connection"),
            body: field("body"),
            before: field("before"),
            after: field("after"),
            caller: data.get("caller").cloned().unwrap_or(Value::Null),
            request: request.clone(),
            now,
            fetched,
        });
    }
    let decision = evaluate(candidate, &inputs);
    let candidate_outcome = decision.outcome.as_str().to_owned();
    if !undecidable && candidate_outcome == recorded {
        return Some(None);
    }
    let mut rules: Vec<String> = decision.violations().map(|r| r.id.clone()).collect();
    rules.dedup();
    Some(Some(Change {
        exchange_id: row.exchange_id.clone(),
        time: super::format_time(now),
        operation: operation.id().to_owned(),
        org_id: row.index.org_id.clone(),
        connection_id: row.index.connection_id.clone(),
        recorded,
        candidate: (!undecidable).then_some(candidate_outcome),
        rules,
    }))
}
