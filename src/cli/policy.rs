//! `tollgate policy check|test|explain|replay`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Map, Value};

use super::{ExplainArgs, PolicyCommand};
use crate::config::Config;
use crate::policy::testcases::{self, Given};
use crate::policy::{self, Verdict};

pub(super) async fn policy_command(
    cmd: PolicyCommand,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let dir_or = |d: Option<PathBuf>| d.unwrap_or_else(|| config.policy.dir.clone());
    let (dir, result) = match cmd {
        PolicyCommand::Check { dir } => {
            let dir = dir_or(dir);
            (
                dir.clone(),
                policy::load_dir(&dir).map(|set| {
                    let now = chrono::Utc::now();
                    let mut failed = false;
                    for e in &set.exceptions {
                        let (errors, warnings) = e.problems(now, config.policy.max_exception_days);
                        for w in warnings {
                            outln!("warning: {}: {w}", e.file);
                        }
                        for x in errors {
                            failed = true;
                            outln!("error: {}: {x}", e.file);
                        }
                    }
                    // An empty file is a file caught mid-write, or rules
                    // lost: the gateway would keep its last set over it.
                    for f in &set.empty_files {
                        failed = true;
                        outln!("error: {f}: holds no rule and no exception (empty, or cut short)");
                    }
                    if !set.rules.is_empty()
                        && set.rules.iter().all(|r| r.mode != policy::Mode::Enforce)
                    {
                        outln!("warning: no rule is enforcing (all warn or dry-run): nothing will be denied");
                    }
                    if failed {
                        return ExitCode::FAILURE;
                    }
                    let exceptions = match set.exceptions.len() {
                        0 => String::new(),
                        1 => " and 1 exception".to_owned(),
                        n => format!(" and {n} exceptions"),
                    };
                    outln!(
                        "ok: {} rules{exceptions} in {} files, version {}",
                        set.rules.len(),
                        set.files.len(),
                        set.version
                    );
                    ExitCode::SUCCESS
                }),
            )
        }
        PolicyCommand::Test { dir } => {
            let dir = dir_or(dir);
            (
                dir.clone(),
                policy::load_dir(&dir).map(|set| {
                    let report = testcases::run(&set, &dir);
                    for line in &report.lines {
                        outln!("{line}");
                    }
                    outln!("{} passed, {} failed", report.passed, report.failed);
                    if report.failed == 0 && report.passed > 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }),
            )
        }
        PolicyCommand::Explain(args) => {
            let dir = dir_or(args.dir.clone());
            let set = match policy::load_dir(&dir) {
                Ok(set) => set,
                Err(errors) => {
                    // Could not judge: 2, not the 1 of a denial.
                    eprintln!("{}: the policy set does not load", dir.display());
                    for e in errors {
                        eprintln!("  {e}");
                    }
                    return Ok(ExitCode::from(2));
                }
            };
            (dir.clone(), Ok(explain(&set, &args)))
        }
        PolicyCommand::Replay { dir, since } => {
            return super::audit::replay(config, &dir, &since).await;
        }
    };
    Ok(match result {
        Ok(code) => code,
        Err(errors) => {
            eprintln!("{}: the policy set does not load", dir.display());
            for e in errors {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    })
}

fn json_object(flag: &str, text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{flag}: expected a JSON object")),
        Err(e) => Err(format!("{flag}: {e}")),
    }
}

fn explain(set: &policy::PolicySet, args: &ExplainArgs) -> ExitCode {
    let given = (|| {
        let mut connection = Map::new();
        if let Some(s) = &args.strategy {
            connection.insert("strategy".into(), Value::from(s.as_str()));
        }
        if let Some(id) = &args.connection {
            connection.insert("id".into(), Value::from(id.as_str()));
        }
        let object = |flag: &str, arg: &Option<String>| {
            arg.as_deref()
                .map(|t| json_object(flag, t))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let request = serde_json::from_value(Value::Object(object("--request", &args.request)?))
            .map_err(|e| format!("--request: {e}"))?;
        Ok::<_, String>(Given {
            operation: args.operation.clone(),
            body: json_object("--body", &args.body)?,
            connection,
            org: object("--org", &args.org)?,
            request,
            before: args
                .before
                .as_deref()
                .map(|b| json_object("--before", b))
                .transpose()?,
            caller: object("--caller", &args.caller)?,
        })
    })();
    let decision = match given.and_then(|g| testcases::judge(set, &g)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    outln!(
        "decision: {} (policy version {})",
        decision.decision,
        decision.policy_version
    );
    let applicable: Vec<&str> = decision.results.iter().map(|r| r.id.as_str()).collect();
    for r in &decision.results {
        let why = match &r.verdict {
            Verdict::Pass => "deny is false".to_owned(),
            Verdict::Skipped => "when is false: not applicable".to_owned(),
            Verdict::Violated => match &r.field {
                Some(f) => format!("{} (at {f})", r.message),
                None => r.message.clone(),
            },
            Verdict::Error(e) => format!("error: {e}"),
            Verdict::Exempted(id) => {
                let e = set.exceptions.iter().find(|e| &e.id == id);
                format!(
                    "{} — exempted by {id} until {} ({})",
                    r.message,
                    e.map(|e| crate::audit::format_time(e.expires))
                        .unwrap_or_default(),
                    e.map(|e| e.reason.as_str()).unwrap_or_default()
                )
            }
        };
        let verdict = match r.verdict {
            Verdict::Pass => "pass",
            Verdict::Skipped => "skipped",
            Verdict::Violated => "violated",
            Verdict::Error(_) => "error",
            Verdict::Exempted(_) => "exempted",
        };
        outln!(
            "  {:<28} {:<8} {:<9} {why}",
            r.id,
            r.mode.to_string(),
            verdict
        );
    }
    for rule in &set.rules {
        if !applicable.contains(&rule.id.as_str()) {
            outln!(
                "  {:<28} {:<8} {:<9} does not apply to {}",
                rule.id,
                rule.mode.to_string(),
                "-",
                args.operation
            );
        }
    }
    // As `policy test` and CI checks read it: a denial is a failure.
    if decision.decision == policy::Decision::Deny {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
