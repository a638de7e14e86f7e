//! Policies: TOML rule files → compiled CEL programs → a [`Decision`] for a
//! request. Evaluation is pure: the tenant context it needs is fetched by
//! `context.rs` and handed in.
//!
//! Rules judge `after`, the state the request would produce, not the request
//! itself: two harmless-looking PATCHes cannot add up to a forbidden state
//! when each is judged by where it leads.

mod eval;
pub mod exception;
pub mod input;
mod load;
pub mod postcheck;
pub mod reload;
pub mod state;
pub mod testcases;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use eval::{Judgement, RuleResult, Verdict, evaluate, evaluate_scan};
pub use input::{ChangeInput, RuleInput, VARIABLES};
pub use load::{LoadError, absolute, load_dir, load_sources};

use crate::route::Operation;

/// What tollgate decided about an exchange: one kind, from the rules'
/// judgement to the record, the query filters, replay and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Every rule passed: forwarded.
    Allow,
    /// An enforce rule was violated (or the route is denied): refused.
    Deny,
    /// Only warn rules were violated: forwarded with a `Warning` header.
    Warn,
    /// Only dry-run rules were violated: forwarded.
    DryRunDeny,
    /// Enforce rules were violated, every one exempted by an exception in
    /// force: forwarded, with the exception on record.
    Exempted,
    /// Denied only by approvable rules, and approved by a second person:
    /// forwarded once, with the approval on record.
    Approved,
    /// The request itself was refused (malformed, unauthenticated) before
    /// any rule could judge it.
    Invalid,
    /// What judging needed (the tenant's context, a lock, signing keys)
    /// could not be had: refused, not judged.
    Unavailable,
    /// The caller left before anything was forwarded: nothing was.
    Abandoned,
}

impl Decision {
    pub const ALL: [Decision; 9] = [
        Decision::Allow,
        Decision::Deny,
        Decision::Warn,
        Decision::DryRunDeny,
        Decision::Exempted,
        Decision::Approved,
        Decision::Invalid,
        Decision::Unavailable,
        Decision::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Warn => "warn",
            Decision::DryRunDeny => "dry_run_deny",
            Decision::Exempted => "exempted",
            Decision::Approved => "approved",
            Decision::Invalid => "invalid",
            Decision::Unavailable => "unavailable",
            Decision::Abandoned => "abandoned",
        }
    }

    /// Whether the request was forwarded to the tenant.
    pub fn forwards(self) -> bool {
        matches!(
            self,
            Decision::Allow
                | Decision::Warn
                | Decision::DryRunDeny
                | Decision::Exempted
                | Decision::Approved
        )
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Decision {
    type Err = String;

    /// Parses a decision; `dry-run-deny` is accepted for `dry_run_deny`.
    fn from_str(s: &str) -> Result<Decision, String> {
        let s = s.replace('-', "_");
        Decision::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Decision::ALL.iter().map(|d| d.as_str()).collect();
                format!("unknown decision {s:?}; one of {}", all.join(", "))
            })
    }
}

/// What a violation of a rule does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Refuse the request (403).
    #[default]
    Enforce,
    /// Forward it, with a `Warning` header.
    Warn,
    /// Forward it silently; record what would have been denied.
    DryRun,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::DryRun => "dry-run",
        })
    }
}

/// Tenant context a rule reads, so it is fetched only when needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    pub org: bool,
    pub connection: bool,
    /// The association as it stands (`before`, and `after` on updates).
    pub before: bool,
}

impl Needs {
    /// Whether `self` covers everything `other` asks for.
    pub fn covers(self, other: Needs) -> bool {
        (self.org || !other.org)
            && (self.connection || !other.connection)
            && (self.before || !other.before)
    }

    fn union(self, other: Needs) -> Needs {
        Needs {
            org: self.org || other.org,
            connection: self.connection || other.connection,
            before: self.before || other.before,
        }
    }
}

/// One compiled rule.
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    /// The operations it applies to.
    pub operations: Vec<Operation>,
    pub when: Option<Compiled>,
    pub deny: Compiled,
    pub message: String,
    pub mode: Mode,
    /// Whether scans judge the tenant's associations by it.
    pub scan: bool,
    /// Whether a request it denies may be approved by a second person.
    pub approvable: bool,
    /// The file it was read from (its name within the policy directory).
    pub file: String,
    pub needs: Needs,
    /// The variables its expressions read (of [`VARIABLES`]): only those are
    /// converted for CEL when it is evaluated.
    pub variables: Vec<&'static str>,
    /// Association fields the `deny` expression reads (`after.x`, `body.x`),
    /// in order: where a violation points.
    pub fields: Vec<String>,
}

/// A CEL expression and its source.
pub struct Compiled {
    pub source: String,
    pub program: cel::Program,
}

impl Rule {
    /// Whether the rule applies to a change judged as `change_op`, within a
    /// request for `request_op`.
    pub fn applies(&self, request_op: Operation, change_op: Operation) -> bool {
        self.operations.contains(&request_op) || self.operations.contains(&change_op)
    }

    /// Whether a scan judges associations as they stand by it: a rule on
    /// creating or updating an association through its own routes (either
    /// family) that does not opt out with `scan = false`. Rules only about
    /// `organization.create` or `sso_ticket.create` requests judge requests.
    pub fn applies_to_scans(&self) -> bool {
        use Operation::*;
        self.scan
            && self.operations.iter().any(|op| {
                matches!(
                    op,
                    OrganizationConnectionCreate
                        | OrganizationConnectionUpdate
                        | OrganizationEnabledConnectionCreate
                        | OrganizationEnabledConnectionUpdate
                )
            })
    }
}

/// A loaded policy set: every rule of a directory, and its version.
pub struct PolicySet {
    pub rules: Vec<Rule>,
    /// SHA-256 of the files (names and contents, in name order), hex.
    pub version: String,
    /// The files, by name.
    pub files: Vec<String>,
    /// Exceptions from the rules, scoped and expiring.
    pub exceptions: Vec<exception::Exception>,
    /// Files that hold neither a rule nor an exception (empty, or cut
    /// short): `policy check` reports them, and a reload that finds a file
    /// of rules so keeps the set in force.
    pub empty_files: Vec<String>,
    env: Arc<cel::Env>,
}

impl PolicySet {
    /// The approvable rules a denial rests on, if it rests on approvable
    /// rules alone (every violated enforce rule is approvable).
    pub fn approvable(&self, judgement: &Judgement) -> Option<Vec<String>> {
        // A rule that could not be evaluated is not a judgement a person
        // can overrule: it fails closed.
        if judgement
            .violations()
            .any(|r| r.mode == Mode::Enforce && matches!(r.verdict, Verdict::Error(_)))
        {
            return None;
        }
        let mut ids: Vec<String> = judgement
            .violations()
            .filter(|r| r.mode == Mode::Enforce)
            .map(|r| r.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let all = ids
            .iter()
            .all(|id| self.rules.iter().any(|r| &r.id == id && r.approvable));
        (all && !ids.is_empty()).then_some(ids)
    }

    /// An empty set (no file yet): everything is allowed.
    pub fn empty() -> PolicySet {
        PolicySet {
            rules: Vec::new(),
            version: load::version_of(&[]),
            files: Vec::new(),
            exceptions: Vec::new(),
            empty_files: Vec::new(),
            env: Arc::new(cel::Env::stdlib()),
        }
    }

    /// How many rules are in each mode: enforcing, warning, dry-run.
    pub fn rules_by_mode(&self) -> [(Mode, usize); 3] {
        [Mode::Enforce, Mode::Warn, Mode::DryRun]
            .map(|m| (m, self.rules.iter().filter(|r| r.mode == m).count()))
    }

    /// What the rules that apply to these operations need from the tenant.
    pub fn needs(&self, request_op: Operation, change_op: Operation) -> Needs {
        // An exception scoped by organization may name it by name.
        let named_orgs = Needs {
            org: self.exceptions.iter().any(|e| !e.orgs.is_empty()),
            connection: self.exceptions.iter().any(|e| !e.connections.is_empty()),
            ..Needs::default()
        };
        self.rules
            .iter()
            .filter(|r| r.applies(request_op, change_op))
            .fold(named_orgs, |n, r| n.union(r.needs))
    }
}

/// The operations a rule without `operations` applies to: every create and
/// update. Deletes must be named explicitly.
pub fn default_operations() -> Vec<Operation> {
    Operation::ALL
        .into_iter()
        .filter(|op| !op.is_delete())
        .collect()
}

#[cfg(test)]
mod tests;
