//! Policies: TOML rule files → compiled CEL programs → a [`Decision`] for a
//! request. Evaluation is pure: the tenant context it needs is fetched by
//! `context.rs` and handed in.
//!
//! Rules judge `after`, the state the request would produce, not the request
//! itself: two harmless-looking PATCHes cannot add up to a forbidden state
//! when each is judged by where it leads.

mod eval;
mod load;
pub mod postcheck;
pub mod reload;
pub mod state;
pub mod testcases;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use eval::{Decision, Input, Outcome, RuleResult, Verdict, evaluate};
pub use load::{LoadError, absolute, load_dir, load_sources};

use crate::route::Operation;

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
}

/// A loaded policy set: every rule of a directory, and its version.
pub struct PolicySet {
    pub rules: Vec<Rule>,
    /// SHA-256 of the files (names and contents, in name order), hex.
    pub version: String,
    /// The files, by name.
    pub files: Vec<String>,
    env: Arc<cel::Env>,
}

impl PolicySet {
    /// An empty set (no file yet): everything is allowed.
    pub fn empty() -> PolicySet {
        PolicySet {
            rules: Vec::new(),
            version: load::version_of(&[]),
            files: Vec::new(),
            env: Arc::new(cel::Env::stdlib()),
        }
    }

    /// What the rules that apply to these operations need from the tenant.
    pub fn needs(&self, request_op: Operation, change_op: Operation) -> Needs {
        self.rules
            .iter()
            .filter(|r| r.applies(request_op, change_op))
            .fold(Needs::default(), |n, r| n.union(r.needs))
    }
}

/// The variables rules can read (DESIGN §4).
pub const VARIABLES: [&str; 9] = [
    "operation",
    "org",
    "connection",
    "body",
    "before",
    "after",
    "caller",
    "request",
    "now",
];

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
