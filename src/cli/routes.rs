//! `tollgate routes`: the registry's operations as this configuration and
//! policy treat them.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

/// How tollgate treats one operation.
fn level(config: &Config, op: &crate::registry::Op) -> &'static str {
    use crate::config::OtherRoutes;
    if crate::route::Operation::from_id(&op.id).is_some() {
        return "governed";
    }
    match config.other_routes(&op.method) {
        OtherRoutes::Audit => "audited",
        OtherRoutes::Forward => "pass",
        OtherRoutes::Deny => "denied",
    }
}

/// `tollgate routes`: every write operation of the registry, its level and
/// the rules of the policy directory that name it.
pub(super) fn routes(
    config: &Config,
    all: bool,
    dir: Option<PathBuf>,
    format: crate::audit::query::Format,
) -> anyhow::Result<ExitCode> {
    use crate::audit::query::Format;
    let registry = crate::registry::registry();
    let dir = dir.unwrap_or_else(|| config.policy.dir.clone());
    let set = crate::policy::load_dir(&dir).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}: {}", dir.display(), lines.join("; "))
    })?;
    let rules_naming = |id: &str| -> Vec<&str> {
        set.rules
            .iter()
            .filter(|r| r.operations.iter().any(|o| o.id() == id))
            .map(|r| r.id.as_str())
            .collect()
    };
    let rows: Vec<(&crate::registry::Op, &str, Vec<&str>)> = registry
        .operations()
        .filter(|op| all || op.is_write())
        .map(|op| {
            let level = if op.is_write() {
                level(config, op)
            } else {
                "read"
            };
            (op, level, rules_naming(&op.id))
        })
        .collect();
    let count = |l: &str| rows.iter().filter(|r| r.1 == l).count();
    let source = &registry.source;
    if format == Format::Json || format == Format::Jsonl {
        let ops: Vec<serde_json::Value> = rows
            .iter()
            .map(|(op, level, rules)| {
                serde_json::json!({
                    "operation": op.id, "method": op.method.as_str(), "path": op.path,
                    "level": level, "rules": rules, "scopes": op.scopes, "resource": op.resource,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "schema": {"title": source.title, "version": source.version, "generated": source.generated, "sha256": source.sha256},
            "operations": ops,
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} {} (schema generated {}, sha256 {}): {} write operations",
        source.title.as_deref().unwrap_or("Management API"),
        source.version.as_deref().unwrap_or(""),
        source.generated,
        &source.sha256[..12.min(source.sha256.len())],
        source.writes
    );
    outln!(
        "{} governed, {} audited, {} pass, {} denied; rules from {}",
        count("governed"),
        count("audited"),
        count("pass"),
        count("denied"),
        dir.display()
    );
    outln!("");
    let width = rows.iter().map(|r| r.0.id.len()).max().unwrap_or(0);
    for (op, level, rules) in &rows {
        let rules = if rules.is_empty() {
            String::new()
        } else {
            format!("  rules: {}", rules.join(", "))
        };
        outln!(
            "{level:<9} {:<width$}  {:<6} {}{rules}",
            op.id,
            op.method.as_str(),
            op.path
        );
    }
    Ok(ExitCode::SUCCESS)
}
