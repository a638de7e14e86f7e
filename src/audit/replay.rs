//! `policy replay`: re-judges recorded requests with a candidate policy set,
//! using the context recorded with each decision, and lists the exchanges
//! whose decision would change.

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::query::Filter;
use super::{Row, Store, StoreError};
use crate::identity::Caller;
use crate::policy::input::Request;
use crate::policy::{ChangeInput, Decision, PolicySet, RuleInput, evaluate};
use crate::route::Operation;

/// One re-judged exchange whose decision differs (or cannot be told).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Change {
    pub exchange_id: String,
    pub time: String,
    pub operation: String,
    pub org_id: Option<String>,
    pub connection_id: Option<String>,
    pub recorded: Decision,
    /// The candidate's decision, or `None` when the candidate's rules read
    /// context that was not fetched (and so not recorded) at the time.
    pub candidate: Option<Decision>,
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

/// The parts of a recorded decision that make up the rules' input.
#[derive(Deserialize)]
struct Recorded {
    method: Option<String>,
    path: Option<String>,
    source_ip: Option<String>,
    user_agent: Option<String>,
    caller: Caller,
    changes: Vec<ChangeInput>,
    policy_version: Option<String>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Event {
    data: Recorded,
}

/// `None`: not a judged governed request. `Some(None)`: same decision.
fn rejudge(row: &Row, candidate: &PolicySet) -> Option<Option<Change>> {
    let recorded = row.index.decision?;
    // Refused before judging (malformed, context unavailable): never judged.
    if !matches!(
        recorded,
        Decision::Allow
            | Decision::Deny
            | Decision::Warn
            | Decision::DryRunDeny
            | Decision::Exempted
    ) {
        return None;
    }
    let operation = Operation::from_id(row.index.operation.as_deref()?)?;
    let data = serde_json::from_str::<Event>(&row.body).ok()?.data;
    if data.error.is_some() && data.policy_version.is_none() {
        return None;
    }
    let now = Utc.timestamp_micros(row.time_us).single()?;
    let undecidable = data
        .changes
        .iter()
        .any(|c| !c.fetched.covers(candidate.needs(operation, c.operation)));
    let request = Request {
        method: data.method,
        path: data.path,
        source_ip: data.source_ip,
        user_agent: data.user_agent,
    };
    let input = RuleInput::new(operation, data.caller, request, now, data.changes);
    let judgement = evaluate(candidate, &input);
    if !undecidable && judgement.decision == recorded {
        return Some(None);
    }
    let mut rules: Vec<String> = judgement.violations().map(|r| r.id.clone()).collect();
    rules.dedup();
    Some(Some(Change {
        exchange_id: row.exchange_id.clone(),
        time: super::format_time(now),
        operation: operation.id().to_owned(),
        org_id: row.index.org_id.clone(),
        connection_id: row.index.connection_id.clone(),
        recorded,
        candidate: (!undecidable).then_some(judgement.decision),
        rules,
    }))
}
