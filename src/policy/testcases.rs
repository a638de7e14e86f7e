//! Judging without a tenant: `policy test` cases and `policy explain`.
//! The context a case gives (connection, organization, `before`, caller)
//! stands in for what the gateway would fetch.

use std::fmt::Write as _;
use std::path::Path;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::input::{Connection, Org, Request};
use super::{ChangeInput, Judgement, Needs, PolicySet, RuleInput, evaluate};
use crate::identity::Caller;
use crate::route::{Governed, Operation};
use crate::schema::{self, OrgRef, UnknownFields};

/// Context given by hand for an offline judgement.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    /// The operation id (DESIGN §1).
    pub operation: String,
    /// The request body (for `organization.create` and `sso_ticket.create`,
    /// the whole body; each array element is judged).
    #[serde(default)]
    pub body: Map<String, Value>,
    /// Fields of `connection`: `id`, `name`, `strategy` (`is_database` follows).
    #[serde(default)]
    pub connection: Map<String, Value>,
    /// Fields of `org`: `id`, `name`.
    #[serde(default)]
    pub org: Map<String, Value>,
    /// The association as it stands; absent means it does not exist.
    pub before: Option<Map<String, Value>>,
    /// Fields of `caller`.
    #[serde(default)]
    pub caller: Map<String, Value>,
    /// Fields of `request` (`method`, `path`, `source_ip`, `user_agent`);
    /// absent ones are null.
    #[serde(default)]
    pub request: Request,
}

/// Judges a hand-given request.
pub fn judge(set: &PolicySet, given: &Given) -> Result<Judgement, String> {
    let input = input(given)?;
    Ok(evaluate(set, &input))
}

/// The rules' input for a hand-given request: the body goes through the
/// schema exactly as at the gateway.
pub fn input(given: &Given) -> Result<RuleInput, String> {
    let operation = Operation::from_id(&given.operation)
        .ok_or_else(|| crate::route::unknown_operation(&given.operation))?;
    let text =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let org_id = text(&given.org, "id").unwrap_or_else(|| "org_example".into());
    let connection_id = text(&given.connection, "id").unwrap_or_else(|| "con_example".into());
    let route = Governed {
        operation,
        method: http::Method::POST,
        path: String::new(),
        id: Some(org_id),
        connection_id: (!operation.is_create()).then(|| connection_id.clone()),
    };
    let body = (!operation.is_delete()).then(|| given.body.clone());
    let validated =
        schema::validate(&route, body, UnknownFields::Forward).map_err(|e| e.to_string())?;
    let caller: Caller = serde_json::from_value(Value::Object(given.caller.clone()))
        .map_err(|e| format!("caller: {e}"))?;
    let everything = Needs {
        org: true,
        connection: true,
        before: true,
    };
    let changes = validated
        .changes
        .iter()
        .map(|change| {
            let org = match &change.org {
                OrgRef::New(name) => Org {
                    id: None,
                    name: name.clone(),
                },
                OrgRef::Existing(id) => Org {
                    id: Some(id.clone()),
                    name: text(&given.org, "name"),
                },
            };
            let connection = Connection::new(
                change
                    .connection_id
                    .clone()
                    .or_else(|| text(&given.connection, "id")),
                text(&given.connection, "name"),
                text(&given.connection, "strategy"),
            );
            ChangeInput::of(change, org, connection, given.before.as_ref(), everything)
        })
        .collect();
    Ok(RuleInput::new(
        operation,
        caller,
        given.request.clone(),
        Utc::now(),
        changes,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(flatten)]
    given: Given,
    /// `allow`, `deny`, `warn` or `dry_run_deny`.
    expect: String,
    /// Rules expected among the violated ones (others may be violated too:
    /// adding a rule does not break the cases that do not name it).
    expect_rules: Option<Vec<String>>,
    /// The rules expected to be violated, all of them and no other.
    expect_exact_rules: Option<Vec<String>>,
}

/// The decisions a case may expect.
const DECISIONS: [&str; 7] = [
    "allow",
    "deny",
    "warn",
    "dry_run_deny",
    "exempted",
    "approved",
    "unavailable",
];

/// The result of running a directory's test cases.
pub struct Report {
    /// One line per case.
    pub lines: Vec<String>,
    pub passed: usize,
    pub failed: usize,
}

/// Runs every case of `DIR/tests/*.toml` against `set`.
pub fn run(set: &PolicySet, dir: &Path) -> Report {
    let mut report = Report {
        lines: Vec::new(),
        passed: 0,
        failed: 0,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir.join("tests"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<CaseFile>(&t).map_err(|e| e.to_string()));
        let file = match parsed {
            Ok(f) => f,
            Err(e) => {
                report.failed += 1;
                report.lines.push(format!("FAIL {name}: {}", e.trim_end()));
                continue;
            }
        };
        for case in file.case {
            match check(set, &case) {
                Ok(()) => {
                    report.passed += 1;
                    report.lines.push(format!("ok   {name}: {}", case.name));
                }
                Err(why) => {
                    report.failed += 1;
                    report
                        .lines
                        .push(format!("FAIL {name}: {}: {why}", case.name));
                }
            }
        }
    }
    report
}

fn check(set: &PolicySet, case: &Case) -> Result<(), String> {
    let decision = judge(set, &case.given)?;
    let got = decision.decision.as_str();
    let mut violated: Vec<String> = decision.violations().map(|r| r.id.clone()).collect();
    violated.sort();
    violated.dedup();
    let expect = case.expect.replace('-', "_");
    if !DECISIONS.contains(&expect.as_str()) {
        return Err(format!(
            "expect = {:?} is no decision; one of {}",
            case.expect,
            DECISIONS.join(", ")
        ));
    }
    let mut why = String::new();
    if got != expect {
        let _ = write!(why, "expected {expect}, got {got}");
        // Which rules decided it.
        if !violated.is_empty() {
            let _ = write!(why, " (violated: {})", violated.join(", "));
        }
    }
    let mut note = |text: String| {
        if !why.is_empty() {
            why.push_str("; ");
        }
        why.push_str(&text);
    };
    if let Some(rules) = &case.expect_rules {
        let missing: Vec<&String> = rules.iter().filter(|r| !violated.contains(r)).collect();
        if !missing.is_empty() {
            note(format!(
                "expected rules {missing:?} to be violated, got {violated:?}"
            ));
        }
    }
    if let Some(rules) = &case.expect_exact_rules {
        let mut want = rules.clone();
        want.sort();
        want.dedup();
        if want != violated {
            note(format!("expected exactly rules {want:?}, got {violated:?}"));
        }
    }
    for r in decision.violations() {
        if let super::Verdict::Error(e) = &r.verdict {
            let _ = write!(why, " (rule {} errored: {e})", r.id);
        }
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}
