//! `tollgate audit …` and `tollgate policy replay`: reading the log.

use std::path::Path;
use std::process::ExitCode;

use super::{AuditCommand, load_errors};
use crate::audit::signing::{Keys, SigningKey};
use crate::audit::{Store, query, verify};
use crate::config::Config;
use crate::policy;

/// The public keys checkpoints are verified with: the file given, or the
/// configured ones.
fn public_keys(config: &Config, given: Option<&Path>) -> anyhow::Result<Option<Keys>> {
    Ok(match given {
        Some(path) => Some(Keys::load(path)?),
        None => Keys::configured(&config.audit)?,
    })
}

pub(super) async fn audit_command(cmd: AuditCommand, config: &Config) -> anyhow::Result<ExitCode> {
    // A bundle is verified offline: no database.
    if let AuditCommand::Verify {
        json,
        public_key: key,
        bundle: Some(dir),
        trust_bundle_key,
        ..
    } = &cmd
    {
        let key = key.as_deref().map(Keys::load).transpose()?;
        let verified = crate::audit::bundle::verify(dir, key.as_ref())?;
        return Ok(print_bundle(&verified, *json, *trust_bundle_key));
    }
    // Reading the log: a store that is not there is an error, not an
    // empty log created where the command happened to run.
    let store = Store::open_existing(&config.audit.url).await?;
    match cmd {
        AuditCommand::Query(q) => {
            let now = chrono::Utc::now();
            let time = |t: &str| query::parse_time(t, now).map_err(|e| anyhow::anyhow!(e));
            if q.limit < 1 {
                anyhow::bail!("--limit must be at least 1 (got {})", q.limit);
            }
            // One more than asked: whether the selection was cut is said,
            // never left for the reader to guess.
            let filter = query::Filter {
                since_us: Some(time(&q.since)?),
                until_us: q.until.as_deref().map(time).transpose()?,
                org: q.org,
                connection: q.connection,
                caller: q.caller,
                operation: q.operation,
                decision: q.decision,
                rule: q.rule,
                limit: q.limit.saturating_add(1),
            };
            let mut rows = if q.outside {
                query::outside(&store, &filter).await?
            } else {
                query::exchanges(&store, &filter).await?
            };
            let cut = rows.len() > usize::try_from(q.limit).unwrap_or(usize::MAX);
            rows.truncate(usize::try_from(q.limit).unwrap_or(usize::MAX));
            out!("{}", query::render(&rows, q.format));
            if cut {
                eprintln!(
                    "showing the newest {} exchanges; more match: raise --limit, or narrow --since/--until",
                    q.limit
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show { exchange_id } => {
            let events = query::show(&store, &exchange_id).await?;
            if events.is_empty() {
                eprintln!("no exchange {exchange_id}");
                return Ok(ExitCode::FAILURE);
            }
            let decision = events.iter().find(|e| e["event"]["kind"] == "decision");
            let outcome = events.iter().any(|e| e["event"]["kind"] == "outcome");
            // stdout is the events, as JSON; what is missing is said on stderr.
            outln!("{}", serde_json::to_string_pretty(&events)?);
            if let Some(d) = decision
                && !outcome
            {
                if d["event"]["data"]["error"].is_null() {
                    eprintln!("outcome: unknown (forwarded, but no outcome was recorded)");
                } else {
                    eprintln!("outcome: none (refused: nothing was forwarded)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            json,
            public_key: key,
            checkpoint_dir,
            all,
            allow_empty,
            ..
        } => {
            let key = public_keys(config, key.as_deref())?;
            let kept = match checkpoint_dir.or_else(|| config.audit.checkpoint_dir.clone()) {
                Some(dir) => {
                    let (kept, junk) = crate::audit::signing::checkpoints_and_junk_in(&dir)?;
                    // Reported and skipped: one stray file must not hide
                    // what the others say.
                    for j in junk {
                        eprintln!("note: skipped {j}");
                    }
                    kept
                }
                None => Vec::new(),
            };
            // With keys, events left uncovered for three checkpoint
            // intervals mean checkpoints stopped: a break, not a note.
            let overdue = key.as_ref().map(|_| config.audit.checkpoint_interval.0 * 3);
            let depth = verify::Depth { overdue, all };
            let report = verify::verify_to(&store, key.as_ref(), &kept, depth).await?;
            let code = print_verify(&report, json);
            if report.events == 0 && !allow_empty {
                eprintln!(
                    "the audit log at {} holds no event: nothing was verified (--allow-empty accepts that)",
                    crate::audit::redact_url(&config.audit.url)
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(code)
        }
        AuditCommand::Export {
            since,
            until,
            out,
            public_key: key,
        } => {
            let now = chrono::Utc::now();
            let time = |t: &str| query::parse_time(t, now).map_err(|e| anyhow::anyhow!(e));
            let until_us = until
                .as_deref()
                .map(time)
                .transpose()?
                .unwrap_or(now.timestamp_micros() + 1);
            let key = public_keys(config, key.as_deref())?;
            let signer = config
                .audit
                .signing_key
                .as_deref()
                .map(SigningKey::load)
                .transpose()?;
            let kept = match &config.audit.checkpoint_dir {
                Some(dir) => crate::audit::signing::checkpoints_in(dir)?,
                None => Vec::new(),
            };
            let manifest = crate::audit::bundle::export(
                &store,
                time(&since)?,
                until_us,
                key.as_ref(),
                signer.as_ref(),
                &kept,
                &out,
            )
            .await?;
            let events: i64 = manifest
                .chains
                .iter()
                .map(|c| c.last_seq - c.first_seq + 1)
                .sum();
            outln!(
                "exported {events} events of {} chains to {} ({}); verify with: tollgate audit verify --bundle {} --public-key KEY",
                manifest.chains.len(),
                out.display(),
                if key.is_some() {
                    "with the public key"
                } else {
                    "no public key: no signing key is configured"
                },
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A bundle's report: what it covers, whose key verified it, and the
/// verification. A bundle verified only by its own key (or by none) fails
/// unless the auditor said to trust the bundle's key.
fn print_bundle(v: &crate::audit::bundle::Verified, json: bool, trust: bool) -> ExitCode {
    use crate::audit::bundle::KeySource;
    let trusted = match v.key {
        KeySource::Given => true,
        KeySource::Bundle => trust,
        KeySource::None => false,
    };
    let key_line = match v.key {
        KeySource::Given => "verified with the public key given (--public-key)".to_owned(),
        KeySource::Bundle if trust => "verified with the bundle's own public key (--trust-bundle-key): it shows only that the bundle agrees with itself".to_owned(),
        KeySource::Bundle => "NOT TRUSTED: verified only with the bundle's own public key — whoever could rewrite the bundle could have re-signed it; verify with --public-key KEY (the key you hold), or pass --trust-bundle-key".to_owned(),
        KeySource::None => "NOT VERIFIED: the bundle is not signed and no public key was given: nothing vouches for it".to_owned(),
    };
    if json {
        let mut value = serde_json::to_value(v).unwrap_or_default();
        value["trusted"] = serde_json::Value::Bool(trusted);
        outln!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        outln!("bundle window: {} .. {}", v.since, v.until);
        for (chain, first, last, n) in &v.chains {
            outln!("chain {chain}: seq {first}..={last}, {n} events");
        }
        out!("{}", render_verify(&v.report));
        outln!("{key_line}");
    }
    if v.report.ok() && trusted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_verify(report: &verify::Report, json: bool) -> ExitCode {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        out!("{}", render_verify(report));
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn render_verify(r: &verify::Report) -> String {
    let mut out = format!(
        "Results found for {} events in {} {}:\n{}/{} events valid\n{}/{} chains valid\n",
        r.events,
        r.chains,
        if r.chains == 1 { "chain" } else { "chains" },
        r.valid_events,
        r.events,
        r.valid_chains,
        r.chains
    );
    for b in &r.breaks {
        let event = if b.event_id.is_empty() {
            String::new()
        } else {
            format!(" (event {})", b.event_id)
        };
        out.push_str(&format!(
            "chain {} broken at seq {}{event}: {}\n",
            b.chain_id, b.seq, b.reason
        ));
    }
    if r.checkpoints > 0 {
        if r.verified_checkpoints == r.checkpoints {
            out.push_str(&format!(
                "{}/{} checkpoints verified\n",
                r.verified_checkpoints, r.checkpoints
            ));
        } else if r.verified_checkpoints == 0
            && r.breaks
                .iter()
                .all(|b| !b.reason.contains("does not verify"))
        {
            out.push_str(&format!(
                "{} checkpoints found, not verified (no public key: --public-key FILE)\n",
                r.checkpoints
            ));
        } else {
            out.push_str(&format!(
                "{}/{} checkpoints verified\n",
                r.verified_checkpoints, r.checkpoints
            ));
        }
    }
    for note in r.notes() {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

pub(super) async fn replay(config: &Config, dir: &Path, since: &str) -> anyhow::Result<ExitCode> {
    let candidate = policy::load_dir(dir).map_err(|e| load_errors(&e))?;
    let since_us = query::parse_time(since, chrono::Utc::now()).map_err(|e| anyhow::anyhow!(e))?;
    let store = Store::open_existing(&config.audit.url).await?;
    let result = crate::audit::replay::replay(&store, &candidate, since_us).await?;
    for c in &result.changed {
        let to = c.candidate.map_or_else(
            || "undecidable (context not recorded)".to_owned(),
            |d| d.to_string(),
        );
        outln!(
            "{}  {}  {}  org={} connection={}  {} -> {}  {}",
            c.exchange_id,
            c.time,
            c.operation,
            c.org_id.as_deref().unwrap_or("-"),
            c.connection_id.as_deref().unwrap_or("-"),
            c.recorded,
            to,
            if c.rules.is_empty() {
                "-".into()
            } else {
                c.rules.join(",")
            }
        );
    }
    outln!(
        "{} exchanges re-judged with policy version {}; {} would change",
        result.judged,
        candidate.version,
        result.changed.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use crate::audit::redact_url;

    #[test]
    fn store_and_tenant_urls_are_logged_without_secrets() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db/tollgate?sslmode=require&password=pw2"),
            "postgres://app:***@db/tollgate?sslmode=<redacted>&password=<redacted>"
        );
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:8081"),
            "http://user:***@127.0.0.1:8081"
        );
        assert_eq!(redact_url("sqlite://tollgate.db"), "sqlite://tollgate.db");
    }
}
