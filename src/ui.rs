//! The reviewers' page on the admin listener (`/ui/`): server-rendered,
//! read-only HTML, no JavaScript. Compliance staff log in with the reviewer
//! token (`admin.reviewer_token`, distinct from the admin token), which
//! sets an HttpOnly, SameSite=Strict cookie; every value shown is escaped.
//!
//! Pages: the exchanges with filters (and their CSV), one exchange (each
//! rule's verdict, before → after with the changed fields marked, the
//! tenant's answer, its place in the chain), the chains' verification, the
//! newest scan and the changes made outside tollgate.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::audit::signing::Keys;
use crate::audit::{Store, query, verify};
use crate::config::Secret;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_review";

/// How long a session lasts.
const SESSION: std::time::Duration = std::time::Duration::from_secs(8 * 3600);

/// Failed logins a source address may make before it must wait; each
/// further failure doubles the wait, up to [`LOCKOUT_MAX`].
const FREE_FAILURES: u32 = 5;
const LOCKOUT_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// Addresses remembered for their failures, at most.
const MAX_ADDRESSES: usize = 10_000;

/// The sessions of logged-in reviewers: random ids, kept in memory (a
/// restart logs everyone out), each for [`SESSION`]; and the failed logins
/// of each source address.
#[derive(Default)]
pub struct Sessions {
    open: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Source address → (failures in a row, when it may try again).
    failures: std::sync::Mutex<HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

impl Sessions {
    /// A new session, its id drawn from the operating system's random
    /// source; `None` if that fails (no session is better than a guessable
    /// one).
    fn open(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).ok()?;
        let id = hex::encode(bytes);
        let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, at| at.elapsed() < SESSION);
        map.insert(id.clone(), std::time::Instant::now());
        Some(id)
    }

    fn valid(&self, id: &str) -> bool {
        let map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).is_some_and(|at| at.elapsed() < SESSION)
    }

    fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// How long `ip` must still wait before it may try a token.
    fn locked_out(&self, ip: std::net::IpAddr) -> Option<std::time::Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (_, until) = map.get(&ip)?;
        until.checked_duration_since(std::time::Instant::now())
    }

    /// Notes a wrong token from `ip`.
    fn failed(&self, ip: std::net::IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            let now = std::time::Instant::now();
            map.retain(|_, (_, until)| *until + LOCKOUT_MAX > now);
        }
        let (n, until) = map.entry(ip).or_insert((0, std::time::Instant::now()));
        *n += 1;
        if *n > FREE_FAILURES {
            let wait = std::time::Duration::from_secs(1 << (*n - FREE_FAILURES - 1).min(9));
            *until = std::time::Instant::now() + wait.min(LOCKOUT_MAX);
        }
    }

    fn succeeded(&self, ip: std::net::IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

/// What the page needs.
/// Who may read the reviewers' page, and what it verifies with.
pub struct Reviewers {
    pub token: Secret,
    /// The checkpoints' public keys (`audit.signing_key`'s and
    /// `audit.retired_keys`).
    pub key: Option<Keys>,
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// The admin listener serves HTTPS: the cookie is `Secure`.
    pub secure: bool,
}

pub struct Ui<'a> {
    pub store: &'a Store,
    /// The reviewer token (an empty one is no token).
    pub token: Option<&'a Secret>,
    pub key: Option<&'a Keys>,
    /// Checkpoints kept outside the store (`audit.checkpoint_dir`): the
    /// chains are verified against them too, as `audit verify` does.
    pub checkpoint_dir: Option<&'a std::path::Path>,
    /// The admin listener serves HTTPS: the cookie is `Secure`.
    pub secure: bool,
    pub sessions: &'a Sessions,
}

/// Escapes text for HTML (element content and quoted attributes).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The session id a request's cookie carries.
fn cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl Ui<'_> {
    fn token(&self) -> Option<&Secret> {
        self.token.filter(|t| !t.expose().is_empty())
    }

    /// Whether the request carries a live session's cookie.
    pub fn signed_in(&self, headers: &http::HeaderMap) -> bool {
        self.token().is_some() && cookie(headers).is_some_and(|id| self.sessions.valid(&id))
    }

    /// `POST /ui/logout`: the session ends (only the session's own cookie
    /// ends it: a cross-site form carries none).
    pub fn logout(&self, headers: &http::HeaderMap) -> Response<Bytes> {
        match cookie(headers) {
            Some(id) => {
                self.sessions.close(&id);
                logout()
            }
            None => redirect("/ui/login"),
        }
    }

    /// `POST /ui/login` with `token=…` (form-encoded), from `ip`. An
    /// address that keeps giving wrong tokens waits, longer each time.
    pub fn login(&self, form: &HashMap<String, String>, ip: std::net::IpAddr) -> Response<Bytes> {
        if let Some(wait) = self.sessions.locked_out(ip) {
            let secs = wait.as_secs() + 1;
            let mut r = page(
                StatusCode::TOO_MANY_REQUESTS,
                "Log in",
                &login_form(Some(&format!(
                    "Too many wrong tokens from this address: try again in {secs} s."
                ))),
                false,
            );
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        let given = form.get("token").map(String::as_str).unwrap_or_default();
        let ok = self.token().is_some_and(|t| {
            Sha256::digest(given.as_bytes()) == Sha256::digest(t.expose().as_bytes())
        });
        if !ok {
            self.sessions.failed(ip);
            metrics::counter!("tollgate_ui_login_failures_total").increment(1);
            tracing::warn!(%ip, "reviewers' page: a wrong token");
            return page(
                StatusCode::UNAUTHORIZED,
                "Log in",
                &login_form(Some("That is not the reviewer token.")),
                false,
            );
        }
        let Some(session) = self.sessions.open() else {
            tracing::error!("reviewers' page: no random session id could be drawn; login refused");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Log in",
                &login_form(Some("No session could be opened; try again.")),
                false,
            );
        };
        self.sessions.succeeded(ip);
        let cookie = format!(
            "{COOKIE}={session}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
            SESSION.as_secs(),
            if self.secure { "; Secure" } else { "" }
        );
        let mut r = redirect("/ui/");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    /// The login form (or, without a reviewer token, why there is none).
    pub fn login_page(&self) -> Response<Bytes> {
        if self.token().is_none() {
            return page(
                StatusCode::NOT_FOUND,
                "Reviewers",
                "<p>The reviewers' page is off: set <code>admin.reviewer_token</code>.</p>",
                false,
            );
        }
        page(StatusCode::OK, "Log in", &login_form(None), false)
    }

    /// `/ui/`: the exchanges matching the filter (`outside=true`: changes
    /// made outside tollgate).
    pub async fn exchanges(&self, params: &HashMap<String, String>) -> Response<Bytes> {
        let (rows, error) = match crate::admin::filter_from(params) {
            Ok(filter) => {
                let rows = if params.get("outside").map(String::as_str) == Some("true") {
                    query::outside(self.store, &filter).await
                } else {
                    query::exchanges(self.store, &filter).await
                };
                match rows {
                    Ok(r) => (r, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                }
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        let mut body = filter_form(params);
        if let Some(e) = error {
            let _ = write!(body, "<p class=\"error\">{}</p>", esc(&e));
        }
        let csv = params
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let _ = write!(
            body,
            "<p>{} exchange(s). <a href=\"/ui/export.csv?{}\">Download CSV</a></p>",
            rows.len(),
            esc(&csv)
        );
        body.push_str("<table><tr><th>Time</th><th>Exchange</th><th>Operation</th><th>Organization</th><th>Connection</th><th>Caller</th><th>Decision</th><th>Rules</th><th>Status</th></tr>");
        for r in &rows {
            let o = |v: &Option<String>| esc(v.as_deref().unwrap_or("-"));
            let decision = r.decision.map_or("-".to_owned(), |d| d.to_string());
            // Who let an approved request through, and why, where reviewers look.
            let shown = match (&r.approver, &r.approval_reason) {
                (Some(who), Some(why)) => format!("{decision} by {who}: {why}"),
                (Some(who), None) => format!("{decision} by {who}"),
                _ => decision.clone(),
            };
            // A write that names no association (audited, or refused before
            // it could): its method and path say what it was.
            let operation = match (&r.org_id, &r.method, &r.path) {
                (None, Some(m), Some(p)) => {
                    format!("{} {m} {p}", r.operation.as_deref().unwrap_or("-"))
                }
                _ => r.operation.clone().unwrap_or_else(|| "-".to_owned()),
            };
            let _ = write!(
                body,
                "<tr class=\"{}\"><td>{}</td><td><a href=\"/ui/exchanges/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&decision),
                esc(&r.time),
                esc(&enc(&r.exchange_id)),
                esc(&r.exchange_id),
                esc(&operation),
                o(&r.org_id),
                o(&r.connection_id),
                o(&r.caller),
                esc(&shown),
                esc(&r.rules.join(", ")),
                esc(&r
                    .status
                    .map_or_else(|| r.outcome.clone(), |s| s.to_string())),
            );
        }
        body.push_str("</table>");
        page(StatusCode::OK, "Exchanges", &body, true)
    }

    /// `/ui/export.csv`: the current filter's rows.
    pub async fn csv(&self, params: &HashMap<String, String>) -> Response<Bytes> {
        let filter = match crate::admin::filter_from(params) {
            Ok(f) => f,
            Err(e) => return page(StatusCode::BAD_REQUEST, "Export", &esc(&e), true),
        };
        let rows = if params.get("outside").map(String::as_str) == Some("true") {
            query::outside(self.store, &filter).await
        } else {
            query::exchanges(self.store, &filter).await
        };
        match rows {
            Ok(rows) => {
                let mut r = Response::new(Bytes::from(query::render(&rows, query::Format::Csv)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                );
                r.headers_mut().insert(
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"tollgate-exchanges.csv\""),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                r
            }
            Err(e) => page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Export",
                &esc(&e.to_string()),
                true,
            ),
        }
    }

    /// `/ui/exchanges/{id}`: every event of one exchange.
    pub async fn exchange(&self, id: &str) -> Response<Bytes> {
        let rows = match self.store.exchange_events(id).await {
            Ok(r) => r,
            Err(e) => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Exchange",
                    &esc(&e.to_string()),
                    true,
                );
            }
        };
        if rows.is_empty() {
            return page(
                StatusCode::NOT_FOUND,
                "Exchange",
                "<p>No such exchange.</p>",
                true,
            );
        }
        let mut body = format!("<p>Audit id <code>{}</code></p>", esc(id));
        for row in &rows {
            let event: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
            let data = &event["data"];
            let _ = write!(
                body,
                "<section class=\"event\"><h3>{} — {}</h3><p class=\"chain\">chain <code>{}</code>, seq {}, prev_hash <code>{}</code>, hash <code>{}</code></p>",
                esc(&row.kind),
                esc(event["time"].as_str().unwrap_or_default()),
                esc(&row.chain_id),
                row.seq,
                esc(&row.prev_hash),
                esc(&row.hash)
            );
            match row.kind.as_str() {
                "decision" => decision_html(&mut body, &event, data),
                "outcome" => outcome_html(&mut body, data),
                _ => {
                    let _ = write!(body, "<pre>{}</pre>", esc(&pretty(data)));
                }
            }
            body.push_str("</section>");
        }
        page(StatusCode::OK, "Exchange", &body, true)
    }

    /// `/ui/chains`: every chain verified, with the checkpoints' key when
    /// one is configured, and against the checkpoints kept as files.
    pub async fn chains(&self) -> Response<Bytes> {
        let unavailable =
            |e: String| page(StatusCode::SERVICE_UNAVAILABLE, "Chains", &esc(&e), true);
        let kept = match self
            .checkpoint_dir
            .map(crate::audit::signing::checkpoints_in)
        {
            None => Vec::new(),
            Some(Ok(kept)) => kept,
            Some(Err(e)) => return unavailable(e.to_string()),
        };
        let report = match verify::verify_with(self.store, self.key, &kept).await {
            Ok(r) => r,
            Err(e) => return unavailable(e.to_string()),
        };
        let mut body = format!(
            "<p class=\"{}\">{}/{} events valid, {}/{} chains valid, {}/{} checkpoints verified{}.</p>",
            if report.ok() { "ok" } else { "broken" },
            report.valid_events,
            report.events,
            report.valid_chains,
            report.chains,
            report.verified_checkpoints,
            report.checkpoints,
            if self.key.is_none() {
                " (no signing key configured)"
            } else {
                ""
            }
        );
        body.push_str("<table><tr><th>Chain</th><th>Seq</th><th>Reason</th></tr>");
        for b in &report.breaks {
            let _ = write!(
                body,
                "<tr class=\"deny\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&b.chain_id),
                b.seq,
                esc(&b.reason)
            );
        }
        body.push_str("</table>");
        for note in report.notes() {
            let _ = write!(body, "<p>{}.</p>", esc(&note));
        }
        page(StatusCode::OK, "Chains", &body, true)
    }

    /// `/ui/scan`: the newest scan and the changes made outside tollgate.
    pub async fn scan(&self) -> Response<Bytes> {
        let latest = match self.store.latest("scan").await {
            Ok(r) => r,
            Err(e) => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Scan",
                    &esc(&e.to_string()),
                    true,
                );
            }
        };
        let Some(row) = latest else {
            return page(
                StatusCode::OK,
                "Scan",
                "<p>No scan has run yet (<code>tollgate scan</code>, or <code>scan.interval</code>).</p>",
                true,
            );
        };
        let event: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
        let r = &event["data"];
        let s = |v: &Value| esc(v.as_str().unwrap_or("-"));
        let mut body = format!(
            "<p>Scan <code>{}</code> at {}: {} organizations, {} associations, {} tenant calls.</p><h3>Violations</h3><table><tr><th>Rule</th><th>Mode</th><th>Organization</th><th>Connection</th><th>Field</th><th>Message</th></tr>",
            s(&r["id"]),
            s(&r["started"]),
            esc(&r["organizations"].to_string()),
            esc(&r["associations"].to_string()),
            esc(&r["tenant_calls"].to_string())
        );
        for v in r["violations"].as_array().into_iter().flatten() {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s(&v["rule"]),
                s(&v["mode"]),
                s(&v["org_id"]),
                s(&v["connection_id"]),
                s(&v["field"]),
                s(&v["message"])
            );
        }
        body.push_str("</table><h3>Changes made outside tollgate</h3><p><a href=\"/ui/?outside=true&amp;since=30d\">All of them</a></p><table><tr><th>When</th><th>Operation</th><th>Organization</th><th>Who</th><th>Decision</th><th>Rules</th></tr>");
        for o in r["outside"].as_array().into_iter().flatten() {
            let who = o["user"]
                .as_str()
                .or(o["client_id"].as_str())
                .unwrap_or("-");
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s(&o["date"]),
                s(&o["operation"]),
                s(&o["org_id"]),
                esc(who),
                s(&o["decision"]),
                esc(&o["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
            );
        }
        body.push_str("</table>");
        page(StatusCode::OK, "Scan", &body, true)
    }
}

/// The decision event: request, every rule's verdict, each change's
/// before → after.
fn decision_html(body: &mut String, event: &Value, data: &Value) {
    let s = |v: &Value| esc(v.as_str().unwrap_or("-"));
    let _ = write!(
        body,
        "<p><b>{}</b> {} — decision <b class=\"{}\">{}</b>, caller {}, policy version <code>{}</code></p>",
        s(&data["method"]),
        s(&data["path"]),
        s(&event["decision"]),
        s(&event["decision"]),
        esc(data["caller"]["client_id"]
            .as_str()
            .or(data["caller"]["key"].as_str())
            .unwrap_or("-")),
        s(&data["policy_version"])
    );
    if let Some(e) = data["error"].as_object() {
        let _ = write!(
            body,
            "<p class=\"error\">Answered by tollgate: {} {} — {}</p>",
            esc(&e.get("status").map(Value::to_string).unwrap_or_default()),
            esc(e
                .get("errorCode")
                .and_then(Value::as_str)
                .unwrap_or_default()),
            esc(e.get("message").and_then(Value::as_str).unwrap_or_default())
        );
    }
    body.push_str("<h4>Rules</h4><table><tr><th>Rule</th><th>Mode</th><th>Verdict</th><th>Field</th><th>Message</th></tr>");
    for r in data["rules"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s(&r["verdict"]),
            s(&r["id"]),
            s(&r["mode"]),
            s(&r["verdict"]),
            s(&r["field"]),
            s(&r["message"])
        );
    }
    body.push_str("</table>");
    for c in data["changes"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<h4>{} {} / {}</h4><table class=\"diff\"><tr><th>Field</th><th>Before</th><th>After</th></tr>",
            s(&c["operation"]),
            esc(c["org"]["name"]
                .as_str()
                .or(c["org"]["id"].as_str())
                .unwrap_or("-")),
            esc(c["connection"]["name"]
                .as_str()
                .or(c["connection"]["id"].as_str())
                .unwrap_or("-"))
        );
        let fields = crate::association::FIELDS.iter().map(|f| f.name);
        for f in fields {
            let (b, a) = (&c["before"][f], &c["after"][f]);
            let _ = write!(
                body,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td></tr>",
                if b != a { " class=\"changed\"" } else { "" },
                esc(f),
                esc(&b.to_string()),
                esc(&a.to_string())
            );
        }
        body.push_str("</table>");
    }
    let _ = write!(
        body,
        "<h4>Request body</h4><pre>{}</pre>",
        esc(&pretty(&data["request_body"]))
    );
}

fn outcome_html(body: &mut String, data: &Value) {
    let _ = write!(
        body,
        "<p>The tenant answered <b>{}</b> in {} ms{}.</p><pre>{}</pre>",
        esc(&data["status"].to_string()),
        esc(&data["latency_ms"].to_string()),
        data["post_check"]
            .as_str()
            .map(|p| format!(", post-check {}", esc(p)))
            .unwrap_or_default(),
        esc(&pretty(&data["body"]))
    );
    if let Some(e) = data["error"].as_object() {
        let _ = write!(
            body,
            "<p class=\"error\">{}: {}</p>",
            esc(e.get("kind").and_then(Value::as_str).unwrap_or_default()),
            esc(e.get("message").and_then(Value::as_str).unwrap_or_default())
        );
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn enc(s: &str) -> String {
    crate::route::encode_segment(s)
}

fn login_form(error: Option<&str>) -> String {
    let mut out = String::from("<form method=\"post\" action=\"/ui/login\">");
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"error\">{}</p>", esc(e));
    }
    out.push_str("<label>Reviewer token <input type=\"password\" name=\"token\" autofocus></label> <button type=\"submit\">Log in</button></form>");
    out
}

fn filter_form(params: &HashMap<String, String>) -> String {
    let v = |k: &str| esc(params.get(k).map(String::as_str).unwrap_or_default());
    let mut out = String::from("<form method=\"get\" action=\"/ui/\" class=\"filters\">");
    for (name, label, placeholder) in [
        ("since", "Since", "24h"),
        ("until", "Until", "now"),
        ("org", "Organization", "org_…"),
        ("connection", "Connection", "con_…"),
        ("caller", "Caller", "client id"),
        ("operation", "Operation", "organization_connection.update"),
        ("rule", "Rule", "rule id"),
    ] {
        let _ = write!(
            out,
            "<label>{label} <input name=\"{name}\" value=\"{}\" placeholder=\"{}\"></label> ",
            v(name),
            esc(placeholder)
        );
    }
    out.push_str("<label>Decision <select name=\"decision\"><option value=\"\">any</option>");
    for d in crate::policy::Decision::ALL {
        let selected = if params.get("decision").map(String::as_str) == Some(d.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{selected}>{}</option>", d.as_str());
    }
    out.push_str("</select></label> ");
    let checked = if params.get("outside").map(String::as_str) == Some("true") {
        " checked"
    } else {
        ""
    };
    let _ = write!(
        out,
        "<label><input type=\"checkbox\" name=\"outside\" value=\"true\"{checked}> outside tollgate</label> <button type=\"submit\">Filter</button></form>"
    );
    out
}

fn redirect(to: &'static str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

/// A page: the layout around `body`, with headers that keep it from being
/// framed, cached or running anything.
pub fn page(status: StatusCode, title: &str, body: &str, nav: bool) -> Response<Bytes> {
    let nav = if nav {
        "<nav><a href=\"/ui/\">Exchanges</a> <a href=\"/ui/?outside=true&amp;since=30d\">Outside changes</a> <a href=\"/ui/scan\">Scan</a> <a href=\"/ui/chains\">Chains</a> <form method=\"post\" action=\"/ui/logout\"><button type=\"submit\">Log out</button></form></nav>"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate — {}</title><style>{STYLE}</style></head><body><header><h1>tollgate</h1>{nav}</header><main><h2>{}</h2>{body}</main></body></html>",
        esc(title),
        esc(title)
    );
    let mut r = Response::new(Bytes::from(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// The answer to a logout: the cookie expires.
fn logout() -> Response<Bytes> {
    let mut r = redirect("/ui/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "tollgate_review=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d1d1f}header{background:#20232a;color:#fff;padding:.5em 1em;display:flex;gap:2em;align-items:center}header h1{font-size:1.2em;margin:0}nav a{color:#9cdcfe;margin-right:1em}nav form{display:inline}main{padding:1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}tr.deny td,tr.violated td,b.deny{background:#fde2e2}tr.warn td,b.warn{background:#fff4d6}tr.changed td{background:#fff4d6;font-weight:bold}.error{color:#b00020}pre{background:#f5f5f5;padding:.5em;overflow:auto}form.filters label{margin-right:.5em}";
