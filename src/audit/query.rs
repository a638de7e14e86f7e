//! Reading the log: one row per exchange, its decision and outcome joined,
//! in the formats compliance staff export (table, json, jsonl, csv).

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Row, Store, StoreError};
use crate::config::HumanDuration;
use crate::policy::Decision;

/// The filters of `audit query` and `GET /v1/exchanges`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub org: Option<String>,
    pub connection: Option<String>,
    pub caller: Option<String>,
    pub operation: Option<String>,
    pub decision: Option<Decision>,
    pub rule: Option<String>,
    pub limit: i64,
}

/// Parses a time bound: a duration back from `now` (`24h`, `30d`) or an
/// RFC 3339 instant.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<i64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc).timestamp_micros());
    }
    let d: HumanDuration = text
        .parse()
        .map_err(|_| format!("{text:?} is neither a duration (24h, 30d) nor an RFC 3339 time"))?;
    chrono::Duration::from_std(d.0)
        .ok()
        .and_then(|back| now.checked_sub_signed(back))
        .map(|t| t.timestamp_micros())
        .ok_or_else(|| format!("{text:?} reaches back further than times go"))
}

/// One exchange: its decision and, if recorded, its outcome.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Exchange {
    pub exchange_id: String,
    pub time: String,
    pub operation: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub org_id: Option<String>,
    pub connection_id: Option<String>,
    pub caller: Option<String>,
    pub decision: Option<Decision>,
    pub rules: Vec<String>,
    pub policy_version: Option<String>,
    /// `completed`, `failed` (transport error), `refused` (tollgate
    /// answered itself; nothing was forwarded) or `unknown` (forwarded, but
    /// no outcome was recorded: the process stopped in between).
    pub outcome: String,
    pub status: Option<u64>,
    pub latency_ms: Option<f64>,
    /// Why tollgate answered itself, or the transport error.
    pub error: Option<String>,
    /// For a request an approval let through: who approved it, and why.
    pub approver: Option<String>,
    pub approval_reason: Option<String>,
}

fn data(row: &Row) -> Value {
    serde_json::from_str::<Value>(&row.body)
        .ok()
        .and_then(|v| v.get("data").cloned())
        .unwrap_or(Value::Null)
}

fn time_of(us: i64) -> String {
    Utc.timestamp_micros(us)
        .single()
        .map(super::format_time)
        .unwrap_or_default()
}

/// Joins a decision and its outcome.
pub fn exchange(decision: &Row, outcome: Option<&Row>) -> Exchange {
    let d = data(decision);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let o = outcome.map(data);
    let refused = d.get("error").filter(|e| !e.is_null()).map(|e| {
        format!(
            "{} {}: {}",
            e.get("status").and_then(Value::as_u64).unwrap_or_default(),
            s(e, "errorCode").unwrap_or_default(),
            s(e, "message").unwrap_or_default()
        )
    });
    let transport = o
        .as_ref()
        .and_then(|o| o.get("error"))
        .filter(|e| !e.is_null())
        .map(|e| {
            format!(
                "{}: {}",
                s(e, "kind").unwrap_or_default(),
                s(e, "message").unwrap_or_default()
            )
        });
    let refused_status = d
        .get("error")
        .and_then(|e| e.get("status"))
        .and_then(Value::as_u64);
    let outcome_state = match (&o, &transport) {
        (None, _) if refused.is_some() => "refused",
        (None, _) => "unknown",
        (Some(_), Some(_)) => "failed",
        (Some(_), None) => "completed",
    };
    Exchange {
        exchange_id: decision.exchange_id.clone(),
        time: time_of(decision.time_us),
        operation: decision.index.operation.clone(),
        method: s(&d, "method"),
        path: s(&d, "path"),
        org_id: decision.index.org_id.clone(),
        connection_id: decision.index.connection_id.clone(),
        caller: decision.index.caller.clone(),
        decision: decision.index.decision,
        rules: decision.index.rules.clone(),
        policy_version: s(&d, "policy_version"),
        outcome: outcome_state.to_owned(),
        status: o
            .as_ref()
            .and_then(|o| o.get("status"))
            .and_then(Value::as_u64)
            .or(refused_status),
        latency_ms: o
            .as_ref()
            .and_then(|o| o.get("latency_ms"))
            .and_then(Value::as_f64),
        error: refused.or(transport),
        approver: d.get("approval").and_then(|a| s(a, "approver")),
        approval_reason: d.get("approval").and_then(|a| s(a, "reason")),
    }
}

/// Changes the tenant's log shows that did not pass through tollgate
/// (`observed` events) matching a filter, newest first, as rows of the same
/// shape (`outcome`: `outside`).
pub async fn outside(store: &Store, filter: &Filter) -> Result<Vec<Exchange>, StoreError> {
    // Filtered and limited in the store: a flood of observed events costs
    // one page, and cannot push the ones asked for out of view.
    let rows = store.filtered("observed", filter).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let d = data(r);
            let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
            Exchange {
                exchange_id: r.exchange_id.clone(),
                time: time_of(r.time_us),
                operation: r.index.operation.clone(),
                method: s("method"),
                path: s("path"),
                org_id: r.index.org_id.clone(),
                connection_id: r.index.connection_id.clone(),
                caller: r.index.caller.clone(),
                decision: r.index.decision,
                rules: r.index.rules.clone(),
                policy_version: None,
                outcome: "outside".into(),
                status: d.get("status").and_then(Value::as_u64),
                latency_ms: None,
                error: None,
                approver: None,
                approval_reason: None,
            }
        })
        .collect())
}

/// The exchanges matching a filter, newest first.
pub async fn exchanges(store: &Store, filter: &Filter) -> Result<Vec<Exchange>, StoreError> {
    let decisions = store.decisions(filter).await?;
    let ids: Vec<String> = decisions.iter().map(|r| r.exchange_id.clone()).collect();
    let outcomes = store.outcomes(&ids).await?;
    Ok(decisions
        .iter()
        .map(|d| exchange(d, outcomes.iter().find(|o| o.exchange_id == d.exchange_id)))
        .collect())
}

/// Every event of an exchange, in full: `{chain_id, seq, hash, prev_hash, event}`.
pub async fn show(store: &Store, exchange_id: &str) -> Result<Vec<Value>, StoreError> {
    let rows = store.exchange_events(exchange_id).await?;
    Ok(rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "chain_id": r.chain_id,
                "seq": r.seq,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
                "event": serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
            })
        })
        .collect())
}

/// Output formats of `audit query`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// JSON: an array of rows (for `scan`, the whole report).
    Json,
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header line.
    Csv,
}

const CSV_COLUMNS: [&str; 17] = [
    "exchange_id",
    "time",
    "operation",
    "method",
    "path",
    "org_id",
    "connection_id",
    "caller",
    "decision",
    "rules",
    "policy_version",
    "outcome",
    "status",
    "latency_ms",
    "error",
    "approver",
    "approval_reason",
];

fn fields(e: &Exchange) -> [String; 17] {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        e.exchange_id.clone(),
        e.time.clone(),
        o(&e.operation),
        o(&e.method),
        o(&e.path),
        o(&e.org_id),
        o(&e.connection_id),
        o(&e.caller),
        e.decision.map(|d| d.to_string()).unwrap_or_default(),
        e.rules.join(" "),
        o(&e.policy_version),
        e.outcome.clone(),
        e.status.map(|s| s.to_string()).unwrap_or_default(),
        e.latency_ms.map(|l| format!("{l:.1}")).unwrap_or_default(),
        o(&e.error),
        o(&e.approver),
        o(&e.approval_reason),
    ]
}

/// A CSV field. A value a spreadsheet would take for a formula (`=`, `+`,
/// `-`, `@`, a tab or a carriage return first) is prefixed with `'`: a
/// caller's client id or an organization id from a path is the caller's
/// text, and must not run in a reviewer's spreadsheet.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Renders exchanges in a format.
pub fn render(exchanges: &[Exchange], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(exchanges).unwrap_or_default() + "\n",
        Format::Jsonl => exchanges
            .iter()
            .map(|e| serde_json::to_string(e).unwrap_or_default() + "\n")
            .collect(),
        Format::Csv => {
            let mut out = CSV_COLUMNS.join(",") + "\r\n";
            for e in exchanges {
                let row: Vec<String> = fields(e).iter().map(|f| csv_field(f)).collect();
                out.push_str(&row.join(","));
                out.push_str("\r\n");
            }
            out
        }
        Format::Table => table(exchanges),
    }
}

fn table(exchanges: &[Exchange]) -> String {
    let header = [
        "TIME",
        "EXCHANGE",
        "OPERATION",
        "ORG",
        "CONNECTION",
        "CALLER",
        "DECISION",
        "RULES",
        "STATUS",
    ];
    let rows: Vec<[String; 9]> = exchanges
        .iter()
        .map(|e| {
            let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            [
                e.time.get(..19).unwrap_or(&e.time).replace('T', " "),
                e.exchange_id.clone(),
                o(&e.operation),
                o(&e.org_id),
                o(&e.connection_id),
                o(&e.caller),
                e.decision.map_or_else(|| "-".into(), |d| d.to_string()),
                if e.rules.is_empty() {
                    "-".into()
                } else {
                    e.rules.join(",")
                },
                match (e.status, e.outcome.as_str()) {
                    (Some(s), _) => s.to_string(),
                    (None, "unknown") => "unknown".into(),
                    (None, other) => other.to_owned(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}
