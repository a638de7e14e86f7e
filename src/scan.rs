//! `tollgate scan`: the tenant's associations as they stand, judged by the
//! policy in force. What the gateway never saw (the dashboard, other
//! credentials, everything configured before tollgate) is judged here.
//!
//! Each association is judged as a state: `before` and `after` are the
//! association, `body` is empty, `request.method` is `"SCAN"` (so a rule can
//! tell a scan from a change), and only rules on creating or updating
//! associations that do not say `scan = false` apply.
//!
//! The tenant's rate limit is shared with the automation tollgate protects:
//! calls are paced to use at most `scan.rate_share` of the limit the
//! `x-ratelimit-*` headers announce, a scan pauses while the bucket is
//! below the part left to others, and a 429 waits for the reset.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::audit::{Index, Kind, NewEvent};
use crate::config::{Config, Secret};
use crate::identity::Caller;
use crate::identity::Identity;
use crate::policy::input::{Connection, Org, Request as RequestVariable};
use crate::policy::{ChangeInput, Mode, Needs, PolicySet, RuleInput, evaluate_scan};
use crate::route::{Operation, encode_segment};
use crate::upstream::Upstream;

pub mod outside;

/// Entries asked for per page.
const PAGE: usize = 100;
/// How often one call is tried when the tenant answers 429.
const ATTEMPTS: u32 = 6;
/// The most pages one list is read in (a guard against a tenant that never
/// says it is done).
const MAX_PAGES: usize = 100_000;

/// A scan could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("GET {path}: {message}")]
    Tenant { path: String, message: String },
    #[error("the tenant refused the scan's credentials ({status}) on GET {path}")]
    Refused { path: String, status: StatusCode },
    #[error("organization {0} does not exist")]
    NoOrganization(String),
    #[error("the audit log: {0}")]
    Audit(String),
}

/// One association that breaks a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: String,
    pub mode: Mode,
    pub org_id: String,
    pub org_name: Option<String>,
    pub connection_id: String,
    pub connection_name: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub started: String,
    pub duration_ms: u64,
    pub policy_version: String,
    pub organizations: usize,
    pub associations: usize,
    /// Calls made to the tenant, and how many it answered 429.
    pub tenant_calls: u64,
    pub rate_limited: u64,
    pub violations: Vec<Violation>,
    /// Changes to organization connections the tenant's log shows that did
    /// not pass through tollgate, read since the last scan.
    #[serde(default)]
    pub outside: Vec<outside::Outside>,
}

impl Report {
    /// Violations of rules in `mode`.
    pub fn count(&self, mode: Mode) -> usize {
        self.violations.iter().filter(|v| v.mode == mode).count()
    }

    /// The `scan` event: the summary and the violations, chained like the
    /// rest of the log.
    pub fn event(&self) -> NewEvent {
        let mut rules: Vec<String> = self.violations.iter().map(|v| v.rule.clone()).collect();
        rules.sort();
        rules.dedup();
        let time = chrono::DateTime::parse_from_rfc3339(&self.started)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        NewEvent {
            exchange_id: self.id.clone(),
            kind: Kind::Scan,
            time,
            index: Index {
                operation: Some("scan".into()),
                rules,
                ..Index::default()
            },
            // A report holds strings and numbers: it serialises.
            data: serde_json::value::to_raw_value(self).expect("a scan report serialises"),
        }
    }
}

/// Scans the tenant behind `upstream` with `auth`, judging by `policy`;
/// `orgs`: only these organizations (ids), all when empty.
pub async fn scan(
    upstream: &Upstream,
    auth: Option<HeaderValue>,
    policy: &PolicySet,
    orgs: &[String],
    rate_share: f64,
) -> Result<Report, ScanError> {
    scan_with_log(upstream, auth, policy, orgs, rate_share, None).await
}

/// As [`scan`], reading in `store` (the audit log) who last changed each
/// association, where an exception is scoped by caller.
pub async fn scan_with_log(
    upstream: &Upstream,
    auth: Option<HeaderValue>,
    policy: &PolicySet,
    orgs: &[String],
    rate_share: f64,
    store: Option<&crate::audit::Store>,
) -> Result<Report, ScanError> {
    let by_caller = policy.exceptions.iter().any(|e| !e.callers.is_empty());
    let started = Instant::now();
    let started_at = crate::audit::format_time(Utc::now());
    let mut reader = Reader {
        upstream,
        auth,
        pacer: Pacer::new(rate_share),
        calls: 0,
        rate_limited: 0,
    };
    let connections = reader.connections().await?;
    let organizations = if orgs.is_empty() {
        reader
            .checkpoint_list("/api/v2/organizations", "organizations")
            .await?
    } else {
        let mut found = Vec::new();
        for id in orgs {
            let path = format!("/api/v2/organizations/{}", encode_segment(id));
            match reader.get(&path).await? {
                Some(org) => found.push(org),
                None => return Err(ScanError::NoOrganization(id.clone())),
            }
        }
        found
    };
    let mut violations = Vec::new();
    let mut associations = 0;
    for org in &organizations {
        let org = Org {
            id: text(org, "id"),
            name: text(org, "name"),
        };
        let Some(org_id) = org.id.clone() else {
            continue;
        };
        let path = format!(
            "/api/v2/organizations/{}/connections",
            encode_segment(&org_id)
        );
        for association in reader.offset_list(&path, "connections").await? {
            let Value::Object(fields) = association else {
                continue;
            };
            associations += 1;
            let caller = match store.filter(|_| by_caller) {
                Some(store) => last_writer(store, &org_id, &fields).await?,
                None => Caller::default(),
            };
            violations.extend(judge(policy, &org, &fields, &connections, caller));
        }
    }
    Ok(Report {
        id: uuid::Uuid::now_v7().to_string(),
        started: started_at,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        policy_version: policy.version.clone(),
        organizations: organizations.len(),
        associations,
        tenant_calls: reader.calls,
        rate_limited: reader.rate_limited,
        violations,
        outside: Vec::new(),
    })
}

/// One scan of the tenant `config` names, with `token` or the configured
/// credentials.
pub async fn run(
    config: &Config,
    policy: &PolicySet,
    orgs: &[String],
    token: Option<&Secret>,
    log: &outside::Log<'_>,
) -> anyhow::Result<Report> {
    let url = config
        .upstream
        .url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("upstream.url is required to scan a tenant"))?;
    let upstream = Upstream::new(
        &url,
        config.upstream.timeout.0,
        config.upstream.ca_file.as_deref(),
    )?;
    let auth = credentials(
        config,
        &upstream,
        &url,
        token.or(config.scan.token.as_ref()),
    )
    .await?;
    // The tenant's log first: a change made outside tollgate is on record
    // before the associations are judged, so a caller-scoped exception no
    // longer covers a state someone else changed since.
    let mut reader = Reader {
        upstream: &upstream,
        auth: Some(auth.clone()),
        pacer: Pacer::new(config.scan.rate_share),
        calls: 0,
        rate_limited: 0,
    };
    let checkpoint = outside::checkpoint_name(&url);
    // Outcomes this process queued (a scan inside `serve`) are written
    // first: an exchange is matched only once its 2xx is on record.
    log.audit.flush().await;
    let outside = outside::read(&mut reader, log, policy, &checkpoint).await?;
    log.audit.flush().await;
    let mut report = scan_with_log(
        &upstream,
        Some(auth),
        policy,
        orgs,
        config.scan.rate_share,
        Some(log.store),
    )
    .await?;
    report.outside = outside;
    report.tenant_calls += reader.calls;
    report.rate_limited += reader.rate_limited;
    Ok(report)
}

/// The token a scan reads with: given, or the broker's.
async fn credentials(
    config: &Config,
    upstream: &Upstream,
    url: &str,
    token: Option<&Secret>,
) -> anyhow::Result<HeaderValue> {
    if let Some(t) = token {
        return Ok(HeaderValue::from_str(&format!("Bearer {}", t.expose()))?);
    }
    match Identity::new(&config.identity, upstream, url)? {
        identity @ Identity::Broker(_) => identity
            .tenant_authorization(&http::HeaderMap::new())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the broker gave no token")),
        Identity::Passthrough { .. } => anyhow::bail!(
            "a scan needs a Management API token with read:organizations, \
             read:organization_connections, read:connections and read:logs: \
             --token, scan.token (TOLLGATE_SCAN_TOKEN), or identity.mode = \"broker\""
        ),
    }
}

/// Who made an association what it is, for exceptions scoped by caller:
/// the caller of the last change tollgate forwarded to it that the tenant
/// accepted — unless a change made outside tollgate came after it (then
/// nobody in particular: no caller-scoped exception covers the state).
/// What a caller-scoped exception means for a state at rest: the state is
/// exempted while the last change to it was that caller's.
async fn last_writer(
    store: &crate::audit::Store,
    org_id: &str,
    fields: &Map<String, Value>,
) -> Result<Caller, ScanError> {
    let audit_err = |e: crate::audit::StoreError| ScanError::Audit(e.to_string());
    let Some(cid) = text(&Value::Object(fields.clone()), "connection_id") else {
        return Ok(Caller::default());
    };
    let filter = crate::audit::query::Filter {
        org: Some(org_id.to_owned()),
        connection: Some(cid),
        limit: 50,
        ..Default::default()
    };
    let outside = store
        .filtered("observed", &filter)
        .await
        .map_err(audit_err)?;
    let since = outside.first().map_or(i64::MIN, |o| o.time_us);
    // Only decisions that forwarded, each kind asked of the store: a flood
    // of denials cannot push the last change out of view.
    let mut forwarded = Vec::new();
    for d in crate::policy::Decision::ALL
        .into_iter()
        .filter(|d| d.forwards())
    {
        let f = crate::audit::query::Filter {
            decision: Some(d),
            ..filter.clone()
        };
        forwarded.extend(store.decisions(&f).await.map_err(audit_err)?);
    }
    forwarded.sort_by_key(|r| std::cmp::Reverse(r.time_us));
    for row in forwarded {
        if row.time_us < since {
            break;
        }
        let accepted = store
            .outcomes(std::slice::from_ref(&row.exchange_id))
            .await
            .map_err(audit_err)?
            .iter()
            .any(|o| {
                serde_json::from_str::<Value>(&o.body)
                    .ok()
                    .and_then(|b| b["data"]["status"].as_u64())
                    .is_some_and(|s| (200..300).contains(&s))
            });
        if accepted {
            // The index names the caller by client id or API key name.
            return Ok(Caller {
                client_id: row.index.caller.clone(),
                key: row.index.caller.clone(),
                ..Caller::default()
            });
        }
    }
    Ok(Caller::default())
}

/// One association, judged as it stands, as last changed by `caller`.
fn judge(
    policy: &PolicySet,
    org: &Org,
    fields: &Map<String, Value>,
    connections: &HashMap<String, (Option<String>, Option<String>)>,
    caller: Caller,
) -> Vec<Violation> {
    let cid = text(&Value::Object(fields.clone()), "connection_id");
    let (name, strategy) = cid
        .as_ref()
        .and_then(|c| connections.get(c).cloned())
        .unwrap_or_default();
    let state = crate::policy::state::before(Some(fields));
    let change = ChangeInput {
        operation: Operation::OrganizationConnectionUpdate,
        pointer: String::new(),
        org: org.clone(),
        connection: Connection::new(cid.clone(), name.clone(), strategy),
        body: Value::Object(Map::new()),
        before: state.clone(),
        after: state,
        fetched: Needs {
            org: true,
            connection: true,
            before: true,
        },
    };
    let request = RequestVariable {
        method: Some("SCAN".into()),
        ..RequestVariable::default()
    };
    let input = RuleInput::new(
        Operation::OrganizationConnectionUpdate,
        caller,
        request,
        Utc::now(),
        vec![change],
    );
    evaluate_scan(policy, &input)
        .violations()
        .map(|r| Violation {
            rule: r.id.clone(),
            mode: r.mode,
            org_id: org.id.clone().unwrap_or_default(),
            org_name: org.name.clone(),
            connection_id: cid.clone().unwrap_or_default(),
            connection_name: name.clone(),
            field: r.field.clone(),
            message: r.message.clone(),
        })
        .collect()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads the tenant, paced.
pub(crate) struct Reader<'a> {
    upstream: &'a Upstream,
    auth: Option<HeaderValue>,
    pacer: Pacer,
    calls: u64,
    rate_limited: u64,
}

impl Reader<'_> {
    /// Every connection's name and strategy, by id.
    async fn connections(
        &mut self,
    ) -> Result<HashMap<String, (Option<String>, Option<String>)>, ScanError> {
        let all = self
            .checkpoint_list("/api/v2/connections", "connections")
            .await?;
        Ok(all
            .iter()
            .filter_map(|c| Some((text(c, "id")?, (text(c, "name"), text(c, "strategy")))))
            .collect())
    }

    /// A list paged by checkpoints (`from`, `take`, `next`).
    async fn checkpoint_list(&mut self, path: &str, key: &str) -> Result<Vec<Value>, ScanError> {
        let mut items = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut target = format!("{path}?include_totals=true&take={PAGE}");
            if let Some(f) = &from {
                target.push_str(&format!("&from={}", encode_segment(f)));
            }
            let page = self.get(&target).await?.unwrap_or(Value::Null);
            items.extend(page_items(&page, key, &target)?);
            match page.get("next").and_then(Value::as_str) {
                Some(next) if !next.is_empty() && Some(next) != from.as_deref() => {
                    from = Some(next.to_owned());
                }
                _ => return Ok(items),
            }
        }
    }

    /// A list paged by offset (`page`, `per_page`, `include_totals`).
    async fn offset_list(&mut self, path: &str, key: &str) -> Result<Vec<Value>, ScanError> {
        let mut items: Vec<Value> = Vec::new();
        for page_number in 0..MAX_PAGES {
            let target = format!("{path}?page={page_number}&per_page={PAGE}&include_totals=true");
            let page = self.get(&target).await?.unwrap_or(Value::Null);
            let got = page_items(&page, key, &target)?;
            let n = got.len();
            // A tenant that ignores `page` answers the first page again.
            if page_number > 0 && n > 0 && got.first() == items.first() {
                return Err(ScanError::Tenant {
                    path: target,
                    message: "the tenant answered the same page again (paging ignored)".into(),
                });
            }
            items.extend(got);
            let total = page.get("total").and_then(Value::as_u64);
            let done = n < PAGE || total.is_some_and(|t| items.len() as u64 >= t);
            if done {
                break;
            }
        }
        Ok(items)
    }

    /// GETs `path`: `Some` on 200, `None` on 404. A 429 waits for the reset
    /// and tries again.
    pub(crate) async fn get(&mut self, path: &str) -> Result<Option<Value>, ScanError> {
        let fail = |message: String| ScanError::Tenant {
            path: path.to_owned(),
            message,
        };
        for _ in 0..ATTEMPTS {
            self.pacer.wait().await;
            let resp = self
                .upstream
                .get_json(path, self.auth.as_ref())
                .await
                .map_err(|e| fail(e.to_string()))?;
            self.calls += 1;
            self.pacer.observe(resp.headers());
            match resp.status() {
                StatusCode::OK => {
                    return serde_json::from_slice(resp.body())
                        .map(Some)
                        .map_err(|e| fail(format!("not JSON: {e}")));
                }
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::TOO_MANY_REQUESTS => {
                    self.rate_limited += 1;
                    self.pacer.back_off(resp.headers());
                }
                s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(ScanError::Refused {
                        path: path.to_owned(),
                        status: s,
                    });
                }
                s => return Err(fail(format!("the tenant answered {s}"))),
            }
        }
        Err(fail(format!(
            "still rate limited after {ATTEMPTS} attempts"
        )))
    }
}

/// The entries of a page: the wrapped list, or a bare array. Anything
/// else is an answer the scan cannot read: it fails rather than report a
/// tenant with nothing in it.
fn page_items(page: &Value, key: &str, path: &str) -> Result<Vec<Value>, ScanError> {
    match page {
        Value::Array(items) => Ok(items.clone()),
        other => other
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| ScanError::Tenant {
                path: path.to_owned(),
                message: format!("the answer holds no `{key}` list"),
            }),
    }
}

/// Paces calls to a share of the tenant's rate limit.
struct Pacer {
    share: f64,
    /// Between two calls: a second over the share of the limit.
    interval: Duration,
    next: Instant,
    /// Until the bucket refills (a 429, or too little left for others).
    paused_until: Option<Instant>,
}

impl Pacer {
    fn new(share: f64) -> Pacer {
        Pacer {
            share: share.clamp(0.01, 1.0),
            interval: Duration::ZERO,
            next: Instant::now(),
            paused_until: None,
        }
    }

    async fn wait(&mut self) {
        let mut at = self.next;
        if let Some(p) = self.paused_until.take() {
            at = at.max(p);
        }
        tokio::time::sleep_until(at.into()).await;
        self.next = Instant::now() + self.interval;
    }

    /// Learns the limit from an answer's `x-ratelimit-*` headers.
    fn observe(&mut self, headers: &HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let Some(limit) = number("x-ratelimit-limit").filter(|l| *l > 0.0) else {
            return;
        };
        self.interval = Duration::from_secs_f64(1.0 / (limit * self.share));
        // The rest of the bucket is the automation's: below it, wait.
        if let Some(remaining) = number("x-ratelimit-remaining")
            && remaining < limit * (1.0 - self.share)
        {
            self.paused_until = Some(reset_at(number("x-ratelimit-reset")));
        }
    }

    /// After a 429: wait for `Retry-After`, or for the reset.
    fn back_off(&mut self, headers: &HeaderMap) {
        let retry = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let reset = headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        // At least a second: a reset in the past (clock skew) must not turn
        // the retries into a burst.
        let at = match retry {
            Some(s) => Instant::now() + Duration::from_secs(s.min(60)),
            None => reset_at(reset),
        };
        self.paused_until = Some(at.max(Instant::now() + Duration::from_secs(1)));
    }
}

/// When a reset given in seconds since the epoch comes (at most a minute
/// away; a second when unknown).
fn reset_at(reset: Option<f64>) -> Instant {
    let now_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let wait = reset.map_or(1.0, |r| (r - now_epoch).clamp(0.0, 60.0));
    Instant::now() + Duration::from_secs_f64(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(limit: u32, remaining: u32) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from(limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        h
    }

    #[test]
    fn the_pace_is_a_share_of_the_limit() {
        let mut p = Pacer::new(0.2);
        p.observe(&headers(50, 50));
        assert_eq!(p.interval, Duration::from_millis(100));
        assert!(p.paused_until.is_none());
        // Less than 80 % left: the rest is the automation's.
        p.observe(&headers(50, 39));
        assert!(p.paused_until.is_some());
    }
}
