//! Evaluating a policy set against the changes a request asks for.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Mode, PolicySet, Rule};
use crate::route::Operation;

/// What one change looks like to the rules (DESIGN §4's variables).
#[derive(Clone, Debug)]
pub struct Input {
    /// The request's operation: the `operation` variable.
    pub operation: Operation,
    /// The association operation the change is judged as (the same, but for
    /// the elements of `organization.create` and `sso_ticket.create`).
    pub change_operation: Operation,
    /// JSON pointer of the change in the body ("" for the whole body).
    pub pointer: String,
    pub org: Value,
    pub connection: Value,
    pub body: Value,
    pub before: Value,
    pub after: Value,
    pub caller: Value,
    pub request: Value,
    pub now: DateTime<Utc>,
    /// Which context was fetched from the tenant for this change (what was
    /// not is null in `org`, `connection` or `before`).
    pub fetched: super::Needs,
}

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

/// The decision on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    Warn,
    DryRunDeny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Warn => "warn",
            Outcome::DryRunDeny => "dry_run_deny",
        }
    }
}

/// Every applicable rule's verdict on every change, and the outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// Results of every applicable rule, change by change.
    pub results: Vec<RuleResult>,
    pub policy_version: String,
}

impl Decision {
    /// The results that count against the request.
    pub fn violations(&self) -> impl Iterator<Item = &RuleResult> {
        self.results.iter().filter(|r| r.is_violation())
    }
}

/// Judges every change by every applicable rule. All rules are evaluated,
/// even after a denial, so the record lists every rule a request broke.
pub fn evaluate(set: &PolicySet, inputs: &[Input]) -> Decision {
    let mut results = Vec::new();
    for input in inputs {
        let applicable: Vec<&Rule> = set
            .rules
            .iter()
            .filter(|r| r.applies(input.operation, input.change_operation))
            .collect();
        if applicable.is_empty() {
            continue;
        }
        let mut wanted: Vec<&str> = applicable
            .iter()
            .flat_map(|r| r.variables.iter().copied())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let ctx = context(set, input, &wanted);
        for rule in applicable {
            results.push(judge(rule, &ctx, input));
        }
    }
    let violated = |mode| results.iter().any(|r| r.is_violation() && r.mode == mode);
    let outcome = if violated(Mode::Enforce) {
        Outcome::Deny
    } else if violated(Mode::Warn) {
        Outcome::Warn
    } else if violated(Mode::DryRun) {
        Outcome::DryRunDeny
    } else {
        Outcome::Allow
    };
    Decision {
        outcome,
        results,
        policy_version: set.version.clone(),
    }
}

/// The CEL context for one change: only the variables some applicable rule
/// reads are converted (converting JSON to CEL values is most of the cost of
/// an evaluation).
fn context<'a>(set: &PolicySet, input: &'a Input, wanted: &[&str]) -> cel::Context<'a, 'a> {
    let mut ctx = cel::Context::with_env(set.env.clone());
    let vars = [
        ("org", &input.org),
        ("connection", &input.connection),
        ("body", &input.body),
        ("before", &input.before),
        ("after", &input.after),
        ("caller", &input.caller),
        ("request", &input.request),
    ];
    for (name, value) in vars {
        if wanted.contains(&name) {
            ctx.add_variable_from_value(name, to_cel(value));
        }
    }
    if wanted.contains(&"operation") {
        ctx.add_variable_from_value("operation", cel::Value::from(input.operation.id()));
    }
    if wanted.contains(&"now") {
        ctx.add_variable_from_value("now", cel::Value::Timestamp(input.now.fixed_offset()));
    }
    ctx
}

/// A JSON value as CEL sees it. Numbers are kept as written in the request
/// (serde_json's `arbitrary_precision`), so they are converted by value here:
/// an integer that fits is `int` (or `uint`), anything else `double`.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        Value::Array(items) => {
            cel::Value::List(std::sync::Arc::new(items.iter().map(to_cel).collect()))
        }
        Value::Object(map) => {
            let entries: std::collections::HashMap<String, cel::Value> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(entries)
        }
    }
}

fn run(program: &cel::Program, ctx: &cel::Context) -> Result<bool, String> {
    match program.execute(ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("expected a boolean, got {:?}", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

fn judge(rule: &Rule, ctx: &cel::Context, input: &Input) -> RuleResult {
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
fn field_of(rule: &Rule, input: &Input) -> Option<String> {
    let set_by_body = |f: &&String| input.body.get(f.as_str()).is_some();
    let field = rule
        .fields
        .iter()
        .find(set_by_body)
        .or_else(|| rule.fields.first())?;
    Some(format!("{}/{field}", input.pointer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_kept_as_written_are_judged_by_value() {
        let n = |text: &str| to_cel(&serde_json::from_str::<Value>(text).expect("json"));
        assert_eq!(n("-0"), cel::Value::Int(0));
        assert_eq!(n("1E2"), cel::Value::Float(100.0));
        assert_eq!(n("42"), cel::Value::Int(42));
        assert_eq!(n("18446744073709551615"), cel::Value::UInt(u64::MAX));
        assert_eq!(
            n("18446744073709551616"),
            cel::Value::Float(18446744073709551616.0)
        );
        assert_eq!(n("1e-7"), cel::Value::Float(1e-7));
    }
}
