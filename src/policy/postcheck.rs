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
use crate::association::{FIELDS, Field};
use crate::route::Operation;

/// What the post-check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every field an enforce rule reads was reported by the tenant (in its
    /// answer or read back), and the association passes every enforce rule.
    Passed,
    /// It violates an enforce rule.
    Violated,
    /// No violation in what the tenant reported, but fields an enforce
    /// rule reads were not reported (listed in `post_check_unverified`).
    Partial,
    /// The answer did not carry an association to judge.
    Unreadable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Violated => "violated",
            Verdict::Partial => "partial",
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
    /// The association as the tenant reported it (its answer, completed by
    /// a read-back): only what the tenant said, never the prediction.
    pub association: Value,
    /// Fields enforce rules read that the tenant did not report.
    pub unverified: Vec<&'static str>,
}

/// The association as the tenant reported it, and which family's route
/// reported it (the legacy family's carry only its own fields).
#[derive(Clone, Debug, PartialEq)]
pub struct Reported {
    pub fields: Map<String, Value>,
    pub legacy: bool,
}

impl Reported {
    /// Whether this report speaks for `field`: it carries it, or it is a
    /// name the route carries — the tenant leaves a name never given out of
    /// its answers, so there absent is null. Any other field left out is
    /// unknown, not unset.
    fn speaks_for(&self, field: &Field) -> bool {
        let route_carries = field.legacy || !self.legacy;
        self.fields.contains_key(field.name)
            || (route_carries && field.ty == crate::association::Type::Name)
    }
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

/// The tenant's answer to a change on the route of `operation`, as a
/// report; `None` unless it is an association of the documented shape (a
/// field of the wrong type is not a state to vouch for).
pub fn answered(operation: Operation, answer: &[u8]) -> Option<Reported> {
    match serde_json::from_slice::<Value>(answer).ok()? {
        Value::Object(fields) if crate::association::check_shape(&fields).is_ok() => {
            Some(Reported {
                fields,
                legacy: is_legacy(operation),
            })
        }
        _ => None,
    }
}

fn is_legacy(operation: Operation) -> bool {
    matches!(
        operation,
        Operation::OrganizationEnabledConnectionCreate
            | Operation::OrganizationEnabledConnectionUpdate
    )
}

/// The fields the enforce rules that judge `input` read which `report`
/// does not speak for: to read back, or else left unverified.
pub fn unreported(set: &PolicySet, input: &RuleInput, report: &Reported) -> Vec<&'static str> {
    let Some(change) = input.changes.first() else {
        return Vec::new();
    };
    let enforcing = set
        .rules
        .iter()
        .filter(|r| r.mode == Mode::Enforce && r.applies(input.operation, change.operation));
    let mut out: Vec<&'static str> = Vec::new();
    for rule in enforcing {
        for field in FIELDS
            .iter()
            .filter(|f| f.ty != crate::association::Type::Id && !report.speaks_for(f))
        {
            // A rule that reads `after` or `before` other than field by
            // field (`after == …`, a macro over it) may read any field.
            let reads = rule.fields.iter().any(|r| r == field.name)
                || (rule.needs.before && rule.fields.is_empty());
            if reads && !out.contains(&field.name) {
                out.push(field.name);
            }
        }
    }
    out
}

/// Judges what the tenant reported of the change `judged` describes (one
/// that [`applies`]): what `read_back` (made after the answer, under the
/// lock: the later word) reports, and the answer for what it does not. A field neither speaks for keeps its
/// predicted value for the rules (so none fails on a missing key) but is
/// not recorded, and makes a clean verdict `partial` if an enforce rule
/// reads it.
pub fn check(
    set: &PolicySet,
    judged: &RuleInput,
    answer: Option<&Reported>,
    read_back: Option<&Reported>,
) -> PostCheck {
    let (Some(answer), [change]) = (answer, judged.changes.as_slice()) else {
        return PostCheck {
            verdict: Verdict::Unreadable,
            rules: Vec::new(),
            association: Value::Null,
            unverified: Vec::new(),
        };
    };
    let mut reported = Map::new();
    for field in FIELDS.iter() {
        let from = [read_back, Some(answer)]
            .into_iter()
            .flatten()
            .find(|r| r.speaks_for(field));
        if let Some(r) = from {
            let v = r.fields.get(field.name).cloned().unwrap_or(Value::Null);
            reported.insert(field.name.to_owned(), v);
        }
    }
    let mut after = match &change.after {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in &reported {
        after.insert(k.clone(), v.clone());
    }
    let mut answered_change = change.clone();
    answered_change.after = Value::Object(after);
    let judgement = evaluate(set, &judged.with_changes(vec![answered_change]));
    let rules: Vec<RuleResult> = judgement
        .results
        .into_iter()
        .filter(|r| r.is_violation() && r.mode == Mode::Enforce)
        .collect();
    let known = Reported {
        fields: reported.clone(),
        legacy: false,
    };
    let unverified: Vec<&'static str> = unreported(set, judged, answer)
        .into_iter()
        .filter(|f| !known.fields.contains_key(*f))
        .collect();
    let verdict = if !rules.is_empty() {
        Verdict::Violated
    } else if !unverified.is_empty() {
        Verdict::Partial
    } else {
        Verdict::Passed
    };
    PostCheck {
        verdict,
        rules,
        association: Value::Object(reported),
        unverified,
    }
}
