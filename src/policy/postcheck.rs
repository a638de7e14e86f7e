//! The post-check: the tenant's answer to a successful change, judged again.
//!
//! The gateway predicts `after` from a `before` it read under a lock, but
//! the Management API has no conditional update: a change made at the
//! tenant between that read and the write (the dashboard, another
//! credential), or a tenant that applies more than it was asked, leads
//! somewhere the rules never judged. A PATCH 200 or POST 201 on an
//! association carries the association as it now stands; judging that by
//! the same rules tells whether the promise held. Nothing is reverted: the
//! outcome records what happened, and operators are told.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Mode, PolicySet, RuleInput, RuleResult, evaluate};

/// What the post-check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The resulting association passes every enforce rule.
    Passed,
    /// It violates an enforce rule.
    Violated,
    /// The answer did not carry an association to judge.
    Unreadable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Violated => "violated",
            Verdict::Unreadable => "unreadable",
        }
    }
}

/// The post-check of one exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct PostCheck {
    pub verdict: Verdict,
    /// The enforce rules the resulting association violates.
    pub rules: Vec<RuleResult>,
    /// The association as the tenant says it now stands.
    pub association: Value,
}

/// The one change of `input` that is post-checked, if it is: an
/// association created or updated through its own route (the answer
/// carries the association; the answers to `organization.create` and
/// `sso_ticket.create` do not).
pub fn applies(input: &RuleInput) -> bool {
    match input.changes.as_slice() {
        [change] => change.operation == input.operation && !input.operation.is_delete(),
        _ => false,
    }
}

/// Judges the tenant's answer to the change `judged` describes (one that
/// [`applies`]). The result is the judged `after` overlaid with every
/// association field the answer carries, so a field the answer leaves out
/// (the legacy family's answers carry three) keeps its predicted value
/// instead of reading as null.
pub fn check(set: &PolicySet, judged: &RuleInput, answer: &[u8]) -> PostCheck {
    let (Some(Value::Object(answered)), [change]) = (
        serde_json::from_slice::<Value>(answer).ok(),
        judged.changes.as_slice(),
    ) else {
        return PostCheck {
            verdict: Verdict::Unreadable,
            rules: Vec::new(),
            association: Value::Null,
        };
    };
    let mut result = match &change.after {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for field in crate::association::FIELDS {
        if let Some(v) = answered.get(field.name) {
            result.insert(field.name.to_owned(), v.clone());
        }
    }
    let association = Value::Object(result);
    let mut answered_change = change.clone();
    answered_change.after = association.clone();
    let judgement = evaluate(set, &judged.with_changes(vec![answered_change]));
    let rules: Vec<RuleResult> = judgement
        .results
        .into_iter()
        .filter(|r| r.is_violation() && r.mode == Mode::Enforce)
        .collect();
    PostCheck {
        verdict: if rules.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Violated
        },
        rules,
        association,
    }
}
