//! Evaluating a policy set against the changes a request asks for.

use serde::Serialize;

use super::input::{ChangeInput, RuleInput};
use super::{Decision, Mode, PolicySet, Rule};

/// One rule's verdict on one change.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "detail")]
pub enum Verdict {
    /// `deny` was false.
    Pass,
    /// `when` was false: the rule does not apply.
    Skipped,
    /// `deny` was true.
    Violated,
    /// An expression failed or did not give a boolean; counts as a violation.
    Error(String),
    /// `deny` was true, and the exception named here exempts the change.
    Exempted(String),
}

/// A rule's verdict, with what a caller and the audit log are told.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleResult {
    pub id: String,
    pub mode: Mode,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub message: String,
    /// JSON pointer of the field involved, where it can be told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl RuleResult {
    /// Whether this result counts against the request.
    pub fn is_violation(&self) -> bool {
        matches!(self.verdict, Verdict::Violated | Verdict::Error(_))
    }
}

/// Every applicable rule's verdict on every change, and the decision they
/// add up to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Judgement {
    /// `allow`, `deny`, `warn` or `dry_run_deny`.
    pub decision: Decision,
    /// Results of every applicable rule, change by change.
    pub results: Vec<RuleResult>,
    pub policy_version: String,
}

impl Judgement {
    /// The results that count against the request.
    pub fn violations(&self) -> impl Iterator<Item = &RuleResult> {
        self.results.iter().filter(|r| r.is_violation())
    }
}

/// Judges every change by every applicable rule. All rules are evaluated,
/// even after a denial, so the record lists every rule a request broke.
pub fn evaluate(set: &PolicySet, input: &RuleInput) -> Judgement {
    evaluate_by(set, input, |rule, change| {
        rule.applies(input.operation, change.operation)
    })
}

/// Judges a scan's input: every association as it stands, by every rule
/// that applies to scans ([`Rule::applies_to_scans`]).
pub fn evaluate_scan(set: &PolicySet, input: &RuleInput) -> Judgement {
    evaluate_by(set, input, |rule, _| rule.applies_to_scans())
}

fn evaluate_by(
    set: &PolicySet,
    input: &RuleInput,
    applies: impl Fn(&Rule, &ChangeInput) -> bool,
) -> Judgement {
    let per_change: Vec<(&ChangeInput, Vec<&Rule>, Vec<&str>)> = input
        .changes
        .iter()
        .map(|change| {
            let applicable: Vec<&Rule> = set.rules.iter().filter(|r| applies(r, change)).collect();
            // Only the variables some applicable rule reads are converted
            // (converting JSON to CEL values is most of the cost of an
            // evaluation).
            let mut wanted: Vec<&str> = applicable
                .iter()
                .flat_map(|r| r.variables.iter().copied())
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            (change, applicable, wanted)
        })
        .collect();
    // Request-wide variables are converted once for all changes.
    let mut all: Vec<&str> = per_change.iter().flat_map(|(_, _, w)| w.clone()).collect();
    all.sort_unstable();
    all.dedup();
    let request_wide = input.variables(&all);
    let mut results = Vec::new();
    for (change, applicable, wanted) in per_change {
        if applicable.is_empty() {
            continue;
        }
        let mut ctx = cel::Context::with_env(set.env.clone());
        for (name, value) in request_wide.iter().filter(|(n, _)| wanted.contains(n)) {
            ctx.add_variable_from_value(*name, value.clone());
        }
        for (name, value) in change.variables(&wanted) {
            ctx.add_variable_from_value(name, value);
        }
        for rule in applicable {
            let mut result = judge(rule, &ctx, change);
            if result.verdict == Verdict::Violated
                && let Some(e) = set
                    .exceptions
                    .iter()
                    .find(|e| e.exempts(&rule.id, input, change))
            {
                result.verdict = Verdict::Exempted(e.id.clone());
            }
            results.push(result);
        }
    }
    let decision = decide(&results);
    Judgement {
        decision,
        results,
        policy_version: set.version.clone(),
    }
}

/// The decision the rules' results add up to.
fn decide(results: &[RuleResult]) -> Decision {
    let violated = |mode| results.iter().any(|r| r.is_violation() && r.mode == mode);
    let exempted = results
        .iter()
        .any(|r| r.mode == Mode::Enforce && matches!(r.verdict, Verdict::Exempted(_)));
    if violated(Mode::Enforce) {
        Decision::Deny
    } else if exempted {
        // Only the exceptions stood between this and a denial.
        Decision::Exempted
    } else if violated(Mode::Warn) {
        Decision::Warn
    } else if violated(Mode::DryRun) {
        Decision::DryRunDeny
    } else {
        Decision::Allow
    }
}

fn run(program: &cel::Program, ctx: &cel::Context) -> Result<bool, String> {
    match program.execute(ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expected a boolean, got {:?}", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

fn judge(rule: &Rule, ctx: &cel::Context, input: &ChangeInput) -> RuleResult {
    let verdict = match rule.when.as_ref().map(|w| run(&w.program, ctx)) {
        Some(Ok(false)) => Verdict::Skipped,
        Some(Err(e)) => Verdict::Error(format!("when: {e}")),
        None | Some(Ok(true)) => match run(&rule.deny.program, ctx) {
            Ok(true) => Verdict::Violated,
            Ok(false) => Verdict::Pass,
            Err(e) => Verdict::Error(format!("deny: {e}")),
        },
    };
    let message = match &verdict {
        Verdict::Error(e) => format!("rule {} could not be evaluated: {e}", rule.id),
        _ => rule.message.clone(),
    };
    let field = matches!(verdict, Verdict::Violated | Verdict::Error(_))
        .then(|| field_of(rule, input))
        .flatten();
    RuleResult {
        id: rule.id.clone(),
        mode: rule.mode,
        verdict,
        message,
        field,
    }
}

/// The field a violation points at: the first field the rule reads that the
/// request sets, else the first it reads.
fn field_of(rule: &Rule, input: &ChangeInput) -> Option<String> {
    let set_by_body = |f: &&String| input.body.get(f.as_str()).is_some();
    let field = rule
        .fields
        .iter()
        .find(set_by_body)
        .or_else(|| rule.fields.first())?;
    Some(format!("{}/{field}", input.pointer))
}
