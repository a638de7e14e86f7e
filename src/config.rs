//! `tollgate.toml` and its `TOLLGATE_<SECTION>_<KEY>` overrides (DESIGN §8).
//!
//! Reading files and the environment is kept apart from parsing: tests build
//! a [`Config`] from a string and an environment map, with no files and no
//! `set_var`. Every error names the key (or variable) at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schema::UnknownFields;

mod identity;

pub use identity::{ApiKey, Identity, IdentityMode};

/// The whole configuration. Every section and key has a default, so an
/// absent file means built-in defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gateway listener.
    pub listen: Listen,
    /// The tenant tollgate forwards to.
    pub upstream: Upstream,
    /// What happens to requests that are not governed.
    pub routes: Routes,
    /// Request limits.
    pub limits: Limits,
    /// Schema validation of governed bodies.
    pub schema: Schema,
    /// Where the policy files are.
    pub policy: Policy,
    /// Tenant context for rules.
    pub context: ContextConfig,
    /// The audit log.
    pub audit: Audit,
    /// The admin listener (health, metrics, the audit and policy API).
    pub admin: Admin,
    /// Who callers are, and which credential reaches the tenant.
    pub identity: Identity,
    /// Scans of the tenant's associations as they stand.
    pub scan: Scan,
    /// Two-person approvals of requests approvable rules deny.
    pub approvals: Approvals,
}

/// `[approvals]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Approvals {
    /// How long an approval may wait, and then be used.
    pub ttl: HumanDuration,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            ttl: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

/// `[scan]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scan {
    /// `serve` scans the tenant this often (absent: never on its own).
    pub interval: Option<HumanDuration>,
    /// The share of the tenant's rate limit a scan may use (0–1].
    pub rate_share: f64,
    /// The Management API token scans read with (better set as
    /// `TOLLGATE_SCAN_TOKEN`); in broker mode the broker's own token is
    /// used when this is absent.
    pub token: Option<Secret>,
    /// The bearer token an Auth0 log stream (custom webhook) presents at
    /// the admin listener's `POST /v1/log-stream` (absent: no stream).
    pub log_stream_token: Option<Secret>,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            interval: None,
            rate_share: 0.2,
            token: None,
            log_stream_token: None,
        }
    }
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin listener.
    pub addr: SocketAddr,
    /// Bearer token for `/v1/*`. Unset: the API answers 401 to everyone.
    pub token: Option<Secret>,
    /// The reviewers' token for the read-only page at `/ui/` (distinct from
    /// `token`). Unset: no page.
    pub reviewer_token: Option<Secret>,
    /// `[[admin.approver_tokens]]`: who may approve a denied request
    /// (`name`, and the `hash` of their token as `tollgate keys new` prints
    /// it).
    pub approver_tokens: Vec<ApiKey>,
    /// PEM certificate chain: serve the admin API over HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            reviewer_token: None,
            approver_tokens: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A secret from the configuration: never printed by `Debug`, serialised
/// as `<redacted>` (`tollgate config check`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for comparing or sending.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[audit]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    pub url: String,
    /// `reject` (default): a decision that cannot be recorded refuses the
    /// request (503). `forward`: forward anyway and log the failure.
    pub on_failure: AuditFailure,
    /// Largest response body kept in an outcome event, in bytes.
    pub max_body: u64,
    /// The Ed25519 private key (`tollgate keys new --signing`) the writer
    /// signs its chain's head with; absent: no signed checkpoints.
    pub signing_key: Option<PathBuf>,
    /// How often the chain's head is signed (and at shutdown).
    pub checkpoint_interval: HumanDuration,
    /// Also write each checkpoint as a file here: a place the store's
    /// writers cannot rewrite (a WORM bucket mount, another host).
    pub checkpoint_dir: Option<PathBuf>,
    /// A file of the public keys of signing keys since retired (one
    /// `ed25519:<hex>` per line): checkpoints they signed still verify.
    pub retired_keys: Option<PathBuf>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            url: "sqlite://tollgate.db".into(),
            on_failure: AuditFailure::Reject,
            max_body: 64 * 1024,
            signing_key: None,
            checkpoint_interval: HumanDuration(Duration::from_secs(60)),
            checkpoint_dir: None,
            retired_keys: None,
        }
    }
}

/// What to do when the audit log cannot record a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailure {
    #[default]
    Reject,
    Forward,
}

/// `[policy]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Directory of `*.toml` policy files (test cases in its `tests/`).
    pub dir: PathBuf,
    /// Run with no rule at all. Off: `serve` refuses to start when the
    /// directory is missing or holds no rule, and a reload that would leave
    /// no rule keeps the last good set.
    pub allow_empty: bool,
    /// The longest an exception may last, in days (`policy check` refuses
    /// a longer one).
    pub max_exception_days: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            dir: PathBuf::from("policies"),
            allow_empty: false,
            max_exception_days: 90,
        }
    }
}

/// `[context]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// How long tenant lookups are reused (`0s` disables the cache). A
    /// successful change through tollgate forgets its association at once.
    pub cache_ttl: HumanDuration,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            cache_ttl: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// `[listen]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Address the gateway listens on.
    pub addr: SocketAddr,
    /// PEM certificate chain: serve HTTPS (reloaded on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: require client certificates that chain to them.
    pub client_ca: Option<PathBuf>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }
}

/// The TLS files of a listener, if it serves HTTPS.
pub fn tls_files(
    section: &'static str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        })),
        (None, None) if client_ca.is_some() => Err(ConfigError::Invalid {
            key: section,
            message: "client_ca needs tls_cert and tls_key".into(),
        }),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid {
            key: section,
            message: "tls_cert and tls_key go together".into(),
        }),
    }
}

/// `[upstream]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// Base URL of the tenant, e.g. `https://example.eu.auth0.com`. Required
    /// unless `serve --sandbox` supplies its own.
    pub url: Option<String>,
    /// Deadline for one upstream call: connecting, sending and receiving the
    /// answer's headers (and, on governed routes, its body).
    pub timeout: HumanDuration,
    /// PEM file of extra CA certificates trusted for the tenant, on top of the
    /// built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Most context lookups in flight to the tenant at once, all requests
    /// together (each request has at most 8): the tenant's rate limit is
    /// shared by all automation.
    pub max_concurrent_lookups: u64,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            url: None,
            timeout: HumanDuration(Duration::from_secs(10)),
            ca_file: None,
            max_concurrent_lookups: 64,
        }
    }
}

/// `[routes]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// `forward`, `audit` or `deny` for requests that are not governed.
    /// Unset: `audit` for methods that change state, `forward` for reads.
    pub other: Option<OtherRoutes>,
}

/// The policy for ungoverned requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherRoutes {
    /// Forward unchanged.
    Forward,
    /// Forward unchanged and record.
    Audit,
    /// Refuse with 403.
    Deny,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest governed request body, in bytes (413 past it).
    pub max_body: u64,
    /// Most client connections served at once; further ones wait in the
    /// kernel's accept queue.
    pub max_connections: u64,
    /// Most connections one client address may hold open; past it, new ones
    /// are closed at once.
    pub max_connections_per_ip: u64,
    /// How long a connection may take to send a request's headers, and how
    /// long an idle keep-alive connection is kept waiting for the next
    /// request.
    pub header_timeout: HumanDuration,
    /// How long a governed request's body may take to arrive (408 past it).
    pub body_timeout: HumanDuration,
    /// Most array elements (`enabled_connections`, `enabled_organizations`)
    /// judged in one request (400 past it): each may cost tenant lookups.
    pub max_elements: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 64 * 1024,
            max_connections: 1024,
            max_connections_per_ip: 256,
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_timeout: HumanDuration(Duration::from_secs(10)),
            max_elements: 50,
        }
    }
}

/// `[schema]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schema {
    /// `reject` (default) or `forward` fields the schema does not know.
    pub unknown_fields: UnknownFields,
}

/// A configuration that could not be used; says which key and why.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Environment variables with the prefix that are not configuration keys.
const NOT_KEYS: &[&str] = &[
    "TOLLGATE_CONFIG",
    "TOLLGATE_LOG_FORMAT",
    "TOLLGATE_TEST_POSTGRES_URL",
    "TOLLGATE_APPROVER_TOKEN",
];

/// The shortest reviewer token accepted.
pub const MIN_REVIEWER_TOKEN: usize = 16;

impl Config {
    /// Parses a TOML document; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        Config::from_table(table, source_name)
    }

    /// Parses a TOML document, applies `TOLLGATE_<SECTION>_<KEY>` variables
    /// from `env` over it, and validates the result.
    pub fn load(
        text: &str,
        source_name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        let applied = apply_env(&mut table, env)?;
        let config = Config::from_table(table, source_name).map_err(|e| {
            // A key the configuration does not have, set by a variable: the
            // variable is what is misspelled, not the file.
            let ConfigError::Parse { message, .. } = &e else {
                return e;
            };
            applied
                .iter()
                .find(|(_, section, key)| {
                    message.contains(&format!("unknown field `{key}`"))
                        && message.contains(&format!("in `{section}`"))
                })
                .map_or(e.clone(), |(var, section, key)| ConfigError::Env {
                    var: var.clone(),
                    message: format!(
                        "[{section}] has no key {key} ({})",
                        message.split_once(", expected ").map_or(
                            "see the README's configuration table".to_owned(),
                            |(_, rest)| {
                                format!("expected {}", rest.lines().next().unwrap_or(rest))
                            }
                        )
                    ),
                })
        })?;
        config.validate()?;
        Ok(config)
    }

    fn from_table(table: toml::Table, source_name: &str) -> Result<Config, ConfigError> {
        Config::deserialize(table).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_owned(),
            // One line: "unknown field `x`, expected one of … in `limits`".
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, token) in [
            ("admin.token", &self.admin.token),
            ("admin.reviewer_token", &self.admin.reviewer_token),
            ("scan.log_stream_token", &self.scan.log_stream_token),
        ] {
            if token.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must not be empty (unset it instead)".into(),
                });
            }
        }
        // The page's door is a password: one short enough to guess is none.
        if let Some(t) = &self.admin.reviewer_token
            && t.expose().chars().count() < MIN_REVIEWER_TOKEN
        {
            return Err(ConfigError::Invalid {
                key: "admin.reviewer_token",
                message: format!(
                    "must be at least {MIN_REVIEWER_TOKEN} characters (`tollgate keys new reviewer` makes one)"
                ),
            });
        }
        if self.admin.reviewer_token.is_some() && self.admin.reviewer_token == self.admin.token {
            return Err(ConfigError::Invalid {
                key: "admin.reviewer_token",
                message: "must differ from admin.token (reviewers only read)".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.admin.approver_tokens {
            if a.name.trim().is_empty() || !names.insert(a.name.to_ascii_lowercase()) {
                return Err(ConfigError::Invalid {
                    key: "admin.approver_tokens",
                    message: format!(
                        "approver names must be non-empty and distinct ({:?})",
                        a.name
                    ),
                });
            }
            let same = |t: &Option<Secret>| {
                t.as_ref().is_some_and(|t| {
                    <sha2::Sha256 as sha2::Digest>::digest(t.expose().as_bytes()).as_slice()
                        == a.hash.0
                })
            };
            if same(&self.admin.token) || same(&self.admin.reviewer_token) {
                return Err(ConfigError::Invalid {
                    key: "admin.approver_tokens",
                    message: format!("approver {:?} uses the admin or reviewer token", a.name),
                });
            }
            if self.identity.keys.iter().any(|k| k.hash == a.hash) {
                return Err(ConfigError::Invalid {
                    key: "admin.approver_tokens",
                    message: format!("approver {:?} uses a caller's API key", a.name),
                });
            }
        }
        // An approval is for a request someone is waiting on: minutes to
        // days, never forever (and never past what a time can hold).
        let ttl = self.approvals.ttl.0;
        if ttl.is_zero() || ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err(ConfigError::Invalid {
                key: "approvals.ttl",
                message: "must be greater than zero and at most 30d".into(),
            });
        }
        if self.audit.checkpoint_interval.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "audit.checkpoint_interval",
                message: "must be greater than zero".into(),
            });
        }
        if !(self.scan.rate_share > 0.0 && self.scan.rate_share <= 1.0) {
            return Err(ConfigError::Invalid {
                key: "scan.rate_share",
                message: "must be greater than 0 and at most 1".into(),
            });
        }
        if self.scan.interval.is_some_and(|i| i.0.is_zero()) {
            return Err(ConfigError::Invalid {
                key: "scan.interval",
                message: "must be greater than zero".into(),
            });
        }
        if let Some(url) = &self.upstream.url {
            parse_upstream_url(url).map_err(|message| ConfigError::Invalid {
                key: "upstream.url",
                message,
            })?;
        }
        if self.upstream.timeout.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "upstream.timeout",
                message: "must be greater than zero".into(),
            });
        }
        if !(1..=16 * 1024 * 1024).contains(&self.limits.max_body) {
            return Err(ConfigError::Invalid {
                key: "limits.max_body",
                message: "must be between 1 and 16777216 bytes".into(),
            });
        }
        if !(self.audit.url.starts_with("sqlite:")
            || self.audit.url.starts_with("postgres://")
            || self.audit.url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "audit.url",
                message: "must start with sqlite:// or postgres://".into(),
            });
        }
        self.validate_identity()?;
        tls_files(
            "listen",
            &self.listen.tls_cert,
            &self.listen.tls_key,
            &self.listen.client_ca,
        )?;
        tls_files("admin", &self.admin.tls_cert, &self.admin.tls_key, &None)?;
        let at_least_one = [
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            ("limits.max_elements", self.limits.max_elements),
            (
                "upstream.max_concurrent_lookups",
                self.upstream.max_concurrent_lookups,
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1".into(),
                });
            }
        }
        for (key, d) in [
            ("limits.header_timeout", self.limits.header_timeout),
            ("limits.body_timeout", self.limits.body_timeout),
        ] {
            if d.0.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be longer than 0s".into(),
                });
            }
        }
        Ok(())
    }

    /// The policy for ungoverned requests with this method.
    pub fn other_routes(&self, method: &http::Method) -> OtherRoutes {
        self.routes.other.unwrap_or(if method.is_safe() {
            OtherRoutes::Forward
        } else {
            OtherRoutes::Audit
        })
    }
}

/// Checks an upstream base URL: `http` or `https`, a host, no query or
/// fragment. Returns it without a trailing slash.
pub fn parse_upstream_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with https:// (or http:// for a local tenant)".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if uri.query().is_some() {
        return Err("must not carry a query string".into());
    }
    // A bearer token must never cross a network in clear text.
    if uri.scheme_str() == Some("http") && !uri.host().is_some_and(is_loopback) {
        return Err(
            "http:// is allowed only for a tenant on this host (localhost, 127.0.0.1, [::1]); use https://"
                .into(),
        );
    }
    Ok(uri)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Applies `TOLLGATE_<SECTION>_<KEY>` variables to a parsed document. A
/// value's type is the default's type for that key, so `TOLLGATE_LIMITS_MAX_BODY=1024`
/// is a number and `TOLLGATE_ADMIN_TOKEN=1234` stays a string.
/// Applies `TOLLGATE_<SECTION>_<KEY>` variables to the file's table;
/// returns which variable set which `(section, key)`, so an error about a
/// key can name the variable it came from.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String, String)>, ConfigError> {
    let mut applied = Vec::new();
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
        source_name: "defaults".into(),
        message: e.to_string(),
    })?;
    let sections = section_names();
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("TOLLGATE_") && !NOT_KEYS.contains(&k.as_str()))
        .collect();
    for (var, raw) in vars {
        let rest = &var["TOLLGATE_".len()..];
        let env_err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let (section, key) = sections
            .iter()
            .find_map(|s| {
                let upper = s.to_ascii_uppercase();
                rest.strip_prefix(&upper)
                    .and_then(|r| r.strip_prefix('_'))
                    .map(|k| (s.as_str(), k.to_ascii_lowercase()))
            })
            .ok_or_else(|| env_err("not a configuration key (TOLLGATE_<SECTION>_<KEY>)".into()))?;
        let default = defaults
            .get(section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(&key));
        let value = match default {
            Some(toml::Value::Integer(_)) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| env_err("expected an integer".into()))?,
            Some(toml::Value::Boolean(_)) => {
                raw.trim()
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|_| env_err("expected true or false".into()))?
            }
            Some(toml::Value::Array(_)) => {
                let doc: toml::Table = toml::from_str(&format!("v = {raw}"))
                    .map_err(|e| env_err(format!("expected a TOML array: {e}")))?;
                doc.get("v")
                    .cloned()
                    .unwrap_or(toml::Value::Array(Vec::new()))
            }
            _ => toml::Value::String(raw),
        };
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(env_err(format!("[{section}] in the file is not a table")));
        };
        applied.push((var.clone(), section.to_owned(), key.clone()));
        section_table.insert(key, value);
    }
    Ok(applied)
}

/// The sections of the configuration, longest first so that a section whose
/// name prefixes another's never captures its variables.
fn section_names() -> Vec<String> {
    let mut names: Vec<String> = toml::Table::try_from(Config::default())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names
}

/// A duration written as `250ms`, `30s`, `5m`, `12h` or `30d` (a bare number
/// is seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 24h"))?;
        let secs = |mult: u64| Duration::from_secs(n.saturating_mul(mult));
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "" | "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86400),
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
                ));
            }
        };
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(HumanDuration(Duration::from_secs(n))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests;
