//! Exceptions: scoped, expiring leave from named rules (`[[exception]]` in
//! a policy file). One function, [`Exception::exempts`], decides whether an
//! exception applies; the gateway, `tollgate scan`, `policy test`,
//! `policy explain` and `policy replay` all judge through it, each at the
//! time of what it judges, so an expired exception is expired everywhere
//! at the same instant.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::input::{ChangeInput, RuleInput};
use crate::route::Operation;

/// How close to its end an exception is worth a warning.
pub const EXPIRING_DAYS: i64 = 7;

/// One exception, as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Exception {
    pub id: String,
    /// The rules it exempts.
    pub rules: Vec<String>,
    /// Organizations (ids or names); empty: any.
    pub orgs: Vec<Scope>,
    /// Connections (ids or names); empty: any.
    pub connections: Vec<Scope>,
    /// Callers (client ids, or API key names); empty: any.
    pub callers: Vec<String>,
    /// Operations; empty: any the rules apply to.
    pub operations: Vec<Operation>,
    pub expires: DateTime<Utc>,
    pub reason: String,
    pub ticket: Option<String>,
    /// The file it was read from.
    pub file: String,
}

/// An organization or connection an exception is scoped to. An entry
/// shaped like the tenant's ids (`org_…`, `con_…`) is an id and matches
/// only the id: an organization someone creates with the *name*
/// `org_acme` is not `org_acme`. Any other entry is a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Id(String),
    Name(String),
}

impl Scope {
    fn of(entry: &str, id_prefix: &str) -> Scope {
        match entry.starts_with(id_prefix) {
            true => Scope::Id(entry.to_owned()),
            false => Scope::Name(entry.to_owned()),
        }
    }

    fn matches(&self, id: Option<&String>, name: Option<&String>) -> bool {
        match self {
            Scope::Id(x) => id == Some(x),
            Scope::Name(x) => name == Some(x),
        }
    }
}

/// `[[exception]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExceptionDef {
    pub(super) id: String,
    pub(super) rules: Vec<String>,
    #[serde(default)]
    pub(super) orgs: Vec<String>,
    #[serde(default)]
    pub(super) connections: Vec<String>,
    #[serde(default)]
    pub(super) callers: Vec<String>,
    #[serde(default)]
    pub(super) operations: Vec<String>,
    /// RFC 3339. Required: an exception without an end is a rule change.
    pub(super) expires: String,
    pub(super) reason: String,
    pub(super) ticket: Option<String>,
}

impl ExceptionDef {
    /// The exception, or why it is not one (rules are checked by the set).
    pub(super) fn compile(&self, file: &str) -> Result<Exception, String> {
        let id_ok = !self.id.is_empty()
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !id_ok {
            return Err("id must match [a-z0-9-]+".into());
        }
        if self.rules.is_empty() {
            return Err("rules must name the rules it exempts".into());
        }
        if self.reason.trim().is_empty() {
            return Err("reason must say why".into());
        }
        let expires = DateTime::parse_from_rfc3339(&self.expires)
            .map_err(|e| format!("expires {:?} is not an RFC 3339 time: {e}", self.expires))?
            .with_timezone(&Utc);
        let operations = self
            .operations
            .iter()
            .map(|o| Operation::from_id(o).ok_or_else(|| format!("unknown operation {o:?}")))
            .collect::<Result<_, _>>()?;
        Ok(Exception {
            id: self.id.clone(),
            rules: self.rules.clone(),
            orgs: self.orgs.iter().map(|o| Scope::of(o, "org_")).collect(),
            connections: self
                .connections
                .iter()
                .map(|c| Scope::of(c, "con_"))
                .collect(),
            callers: self.callers.clone(),
            operations,
            expires,
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            file: file.to_owned(),
        })
    }
}

impl Exception {
    /// Whether it names no organization, connection, caller or operation:
    /// it then exempts its rules for every change.
    pub fn is_unscoped(&self) -> bool {
        self.orgs.is_empty()
            && self.connections.is_empty()
            && self.callers.is_empty()
            && self.operations.is_empty()
    }

    /// Whether this exception exempts `rule` for `change` of `input`, at
    /// `input.now`: the rule is one it names, the change is in its scope
    /// (organization, connection, caller, operation) and it has not
    /// expired. The one place this is decided.
    pub fn exempts(&self, rule: &str, input: &RuleInput, change: &ChangeInput) -> bool {
        let scoped = |list: &[Scope], id: &Option<String>, name: &Option<String>| {
            list.is_empty() || list.iter().any(|x| x.matches(id.as_ref(), name.as_ref()))
        };
        let caller = &input.caller;
        let by_caller = self.callers.is_empty()
            || self
                .callers
                .iter()
                .any(|c| Some(c) == caller.client_id.as_ref() || Some(c) == caller.key.as_ref());
        // A new organization (no id yet) is in no organization scope, even
        // one naming it: its name is the caller's to choose.
        let org = if change.org.id.is_some() {
            scoped(&self.orgs, &change.org.id, &change.org.name)
        } else {
            self.orgs.is_empty()
        };
        input.now < self.expires
            && self.rules.iter().any(|r| r == rule)
            && org
            && scoped(
                &self.connections,
                &change.connection.id,
                &change.connection.name,
            )
            && by_caller
            && (self.operations.is_empty()
                || self.operations.contains(&input.operation)
                || self.operations.contains(&change.operation))
    }

    /// What `policy check` says of it at `now`: errors (expired, longer than
    /// `max_days`) and warnings (expiring soon).
    pub fn problems(&self, now: DateTime<Utc>, max_days: u32) -> (Vec<String>, Vec<String>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let left = self.expires - now;
        if left <= chrono::Duration::zero() {
            errors.push(format!(
                "exception {} expired at {} (remove it)",
                self.id,
                crate::audit::format_time(self.expires)
            ));
        } else if left > chrono::Duration::days(i64::from(max_days)) {
            errors.push(format!(
                "exception {} lasts until {}, longer than policy.max_exception_days ({max_days})",
                self.id,
                crate::audit::format_time(self.expires)
            ));
        } else if left <= chrono::Duration::days(EXPIRING_DAYS) {
            warnings.push(format!(
                "exception {} expires at {}, within {EXPIRING_DAYS} days",
                self.id,
                crate::audit::format_time(self.expires)
            ));
        }
        if self.is_unscoped() {
            warnings.push(format!(
                "exception {} names no organization, connection, caller or operation: it exempts its rules for every change",
                self.id
            ));
        }
        for name in self.orgs.iter().filter_map(|o| match o {
            Scope::Name(n) => Some(n),
            Scope::Id(_) => None,
        }) {
            warnings.push(format!(
                "exception {} names organization {name:?} by name: whoever may rename organizations can move it to another; prefer its org_ id",
                self.id
            ));
        }
        (errors, warnings)
    }
}
