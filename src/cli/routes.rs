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
    // The rules column needs rules; the levels do not. A directory that
    // does not load is said so, and the levels are still listed.
    let set = match crate::policy::load_dir(&dir) {
        Ok(set) => Some(set),
        Err(errors) => {
            eprintln!(
                "warning: {}: the policy set does not load ({}); rules are not shown, and serve would not start with it",
                dir.display(),
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            None
        }
    };
    let rules_naming = |id: &str| -> Vec<&str> {
        set.iter()
            .flat_map(|s| s.rules.iter())
            .filter(|r| r.operations.iter().any(|o| o.id() == id))
            .map(|r| r.id.as_str())
            .collect()
    };
    let rows: Vec<(&crate::registry::Op, &str, Vec<&str>)> = registry
        .operations()
        .filter(|op| all || op.is_write())
        .map(|op| (op, level(config, op), rules_naming(&op.id)))
        .collect();
    let source = &registry.source;
    let ops: Vec<serde_json::Value> = rows
        .iter()
        .map(|(op, level, rules)| {
            serde_json::json!({
                "operation": op.id, "method": op.method.as_str(), "path": op.path,
                "level": level, "rules": rules, "scopes": op.scopes, "resource": op.resource,
            })
        })
        .collect();
    match format {
        Format::Jsonl => {
            for op in &ops {
                outln!("{op}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Format::Csv => {
            outln!("operation,method,path,level,rules");
            for (op, level, rules) in &rows {
                // Ids, methods, templates and levels hold no comma or quote.
                outln!(
                    "{},{},{},{level},\"{}\"",
                    op.id,
                    op.method.as_str(),
                    op.path,
                    rules.join(" ")
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Format::Json | Format::Table => {}
    }
    if format == Format::Json {
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
    let of = |write: bool, l: &str| {
        rows.iter()
            .filter(|r| r.0.is_write() == write && r.1 == l)
            .count()
    };
    let of_writes = |l: &str| of(true, l);
    let reads = rows.iter().filter(|r| !r.0.is_write()).count();
    outln!(
        "{} governed, {} audited, {} pass, {} denied{}; rules from {}",
        of_writes("governed"),
        of_writes("audited"),
        of_writes("pass"),
        of_writes("denied"),
        if reads > 0 {
            format!(
                "; and {reads} reads: {} pass, {} audited, {} denied",
                of(false, "pass"),
                of(false, "audited"),
                of(false, "denied")
            )
        } else {
            String::new()
        },
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
