//! `tollgate scan`: judge the tenant's associations as they stand, print
//! the violations, record the scan.

use std::process::ExitCode;

use super::{FailOn, ScanArgs};
use crate::audit::query::Format;
use crate::audit::{AuditLog, Store};
use crate::config::Config;
use crate::policy::{Decision, Mode, load_dir};
use crate::scan::{Report, run};

pub(super) async fn scan_command(args: ScanArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let policy = if args.starter {
        crate::policy::reload::Policies::starter().current()
    } else {
        std::sync::Arc::new(load_dir(&config.policy.dir).map_err(|e| super::load_errors(&e))?)
    };
    let token = args.token.map(crate::config::Secret::new);
    let store = Store::open(&config.audit.url).await?;
    // A scan's chain is signed like the gateway's (and closed at the end).
    let audit = AuditLog::start_signed(
        store.clone(),
        crate::audit::writer::MAX_BATCH,
        crate::app::signer(config)?,
    )
    .await?;
    let log = crate::scan::outside::Log {
        store: &store,
        audit: &audit,
    };
    let report = run(config, &policy, &args.orgs, token.as_ref(), &log).await?;
    audit.record(report.event()).await?;
    audit.close().await;
    out!("{}", render(&report, args.format));
    // An outside change the policy forbids fails the scan too, even if it
    // was undone before the scan read the tenant.
    let outside = |d: Decision| report.outside.iter().filter(|o| o.decision == d).count();
    let failed = match args.fail_on {
        FailOn::Violation => report.count(Mode::Enforce) + outside(Decision::Deny) > 0,
        FailOn::Warn => {
            report.count(Mode::Enforce)
                + report.count(Mode::Warn)
                + outside(Decision::Deny)
                + outside(Decision::Warn)
                > 0
        }
        FailOn::Never => false,
    };
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The report in a `--format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        Format::Jsonl => report
            .violations
            .iter()
            .filter_map(|v| serde_json::to_string(v).ok())
            .map(|l| l + "\n")
            .collect(),
        Format::Csv => {
            let mut out = String::from(
                "rule,mode,org_id,org_name,connection_id,connection_name,field,message\n",
            );
            for v in &report.violations {
                let fields = [
                    v.rule.clone(),
                    v.mode.to_string(),
                    v.org_id.clone(),
                    v.org_name.clone().unwrap_or_default(),
                    v.connection_id.clone(),
                    v.connection_name.clone().unwrap_or_default(),
                    v.field.clone().unwrap_or_default(),
                    v.message.clone(),
                ];
                let quoted: Vec<String> = fields
                    .iter()
                    .map(|f| crate::audit::query::csv_field(f))
                    .collect();
                out.push_str(&quoted.join(","));
                out.push('\n');
            }
            out
        }
        Format::Table => {
            let mut out = format!(
                "scan {}: {} organizations, {} associations, {} tenant calls, policy version {}\n",
                report.id,
                report.organizations,
                report.associations,
                report.tenant_calls,
                &report.policy_version[..12.min(report.policy_version.len())]
            );
            out.push_str(&outside_table(report));
            if report.violations.is_empty() {
                out.push_str("no violation\n");
                return out;
            }
            out.push_str(&format!(
                "{:<28} {:<8} {:<24} {:<24} {:<34} MESSAGE\n",
                "RULE", "MODE", "ORGANIZATION", "CONNECTION", "FIELD"
            ));
            for v in &report.violations {
                out.push_str(&format!(
                    "{:<28} {:<8} {:<24} {:<24} {:<34} {}\n",
                    v.rule,
                    v.mode.to_string(),
                    v.org_name.as_deref().unwrap_or(&v.org_id),
                    v.connection_name.as_deref().unwrap_or(&v.connection_id),
                    v.field.as_deref().unwrap_or("-"),
                    v.message
                ));
            }
            out
        }
    }
}

/// The outside changes, for the table.
fn outside_table(report: &Report) -> String {
    if report.outside.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{} change(s) made outside tollgate:\n{:<28} {:<34} {:<24} {:<24} {:<12} RULES\n",
        report.outside.len(),
        "WHEN",
        "OPERATION",
        "ORGANIZATION",
        "WHO",
        "DECISION"
    );
    for o in &report.outside {
        let who = o
            .user
            .clone()
            .or_else(|| o.client_id.clone())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<28} {:<34} {:<24} {:<24} {:<12} {}\n",
            o.date,
            o.operation,
            o.org_id.as_deref().unwrap_or("-"),
            who,
            o.decision.to_string(),
            if o.rules.is_empty() {
                "-".to_owned()
            } else {
                o.rules.join(",")
            }
        ));
    }
    out
}
