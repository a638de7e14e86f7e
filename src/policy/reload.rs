//! The policy set in force, and its reloading: on a change in the directory
//! (debounced) and on SIGHUP. A set that does not load leaves the last good
//! one in force; swaps are atomic, so no request sees a half-loaded set.
//!
//! A guardrail without rules forwards everything, so an empty set is an
//! error unless `policy.allow_empty` says otherwise: at start (the gateway
//! refuses to run) and on reload (the last good set stays).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use tracing::{error, info, warn};

use super::load::absolute;
use super::{LoadError, PolicySet, load_dir, load_sources};

/// The starter set shipped in `policies/`, built into the binary: what
/// `serve --sandbox` enforces when there is no policy directory.
pub const STARTER: [(&str, &str); 2] = [
    ("access.toml", include_str!("../../policies/access.toml")),
    ("signup.toml", include_str!("../../policies/signup.toml")),
];

/// How long the directory must be quiet before a reload: an editor's save
/// is several events.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The policy set in force.
pub struct Policies {
    /// Where the set is read from; `None`: built in, never reloaded.
    dir: Option<PathBuf>,
    allow_empty: bool,
    current: ArcSwap<PolicySet>,
}

/// Keeps the directory watch alive; dropping it stops watching.
pub struct Watch {
    // Behind a mutex only so an `App` holding it can be shared.
    _debouncer: std::sync::Mutex<Box<dyn std::any::Any + Send>>,
}

impl Policies {
    /// Loads the directory; fails if it does not load, or holds no rule and
    /// `allow_empty` is false.
    pub fn load(dir: &Path, allow_empty: bool) -> Result<Policies, Vec<LoadError>> {
        let set = load_dir(dir)?;
        if set.rules.is_empty() && !allow_empty {
            return Err(vec![no_rules(dir)]);
        }
        warn_of_exceptions(&set);
        Ok(Policies {
            dir: Some(dir.to_owned()),
            allow_empty,
            current: ArcSwap::from_pointee(set),
        })
    }

    /// The starter set built into the binary ([`STARTER`]).
    pub fn starter() -> Policies {
        let files: Vec<(String, String)> = STARTER
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        // The starter files are this repository's and tested: they compile.
        let set = load_sources(&files).unwrap_or_else(|_| PolicySet::empty());
        Policies::fixed(set)
    }

    /// A fixed set (tests, `policy explain`).
    pub fn fixed(set: PolicySet) -> Policies {
        Policies {
            dir: None,
            allow_empty: true,
            current: ArcSwap::from_pointee(set),
        }
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// The directory the set is read from (`None`: built in).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reloads the directory. On failure (or no rule, unless
    /// `policy.allow_empty`) the set in force stays, the reason is logged
    /// and counted. A built-in set stays as it is.
    pub fn reload(&self) -> Result<Arc<PolicySet>, Vec<LoadError>> {
        let Some(dir) = &self.dir else {
            return Ok(self.current());
        };
        let loaded = load_dir(dir).and_then(|set| {
            if set.rules.is_empty() && !self.allow_empty {
                Err(vec![no_rules(dir)])
            } else {
                Ok(set)
            }
        });
        match loaded {
            Ok(set) => {
                let changed = set.version != self.current.load().version;
                let set = Arc::new(set);
                self.current.store(set.clone());
                metrics::counter!("tollgate_policy_reloads_total", "result" => "success")
                    .increment(1);
                if changed {
                    info!(version = %set.version, rules = set.rules.len(), "policy set loaded");
                    warn_of_exceptions(&set);
                }
                Ok(set)
            }
            Err(errors) => {
                metrics::counter!("tollgate_policy_reloads_total", "result" => "failure")
                    .increment(1);
                for e in &errors {
                    error!(error = %e, "policy set not loaded; the previous set stays in force");
                }
                Err(errors)
            }
        }
    }

    /// Reloads on every change in the directory, until the returned
    /// [`Watch`] is dropped. (SIGHUP reloads through `App::reload`.)
    pub fn watch(self: &Arc<Self>) -> notify::Result<Watch> {
        let Some(dir) = self.dir.clone() else {
            return Err(notify::Error::generic(
                "a built-in policy set is not reloaded",
            ));
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut debouncer = notify_debouncer_full::new_debouncer(DEBOUNCE, None, move |res| {
            if let Ok(events) = res {
                let events: Vec<notify_debouncer_full::DebouncedEvent> = events;
                if events.iter().any(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            }
        })?;
        debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let Some(policies) = this.upgrade() else {
                    break;
                };
                let _ = policies.reload();
            }
        });
        Ok(Watch {
            _debouncer: std::sync::Mutex::new(Box::new(debouncer)),
        })
    }
}

fn no_rules(dir: &Path) -> LoadError {
    LoadError {
        file: absolute(dir),
        rule: None,
        message: "the policy directory holds no rule; tollgate does not run without rules \
                  (set policy.allow_empty = true to allow it)"
            .into(),
    }
}

/// Logs the exceptions of a set just put in force that have expired (they
/// exempt nothing any more: `policy check` refuses them) or expire within
/// [`EXPIRING_DAYS`](crate::policy::exception::EXPIRING_DAYS) days.
fn warn_of_exceptions(set: &PolicySet) {
    let now = chrono::Utc::now();
    let soon = chrono::Duration::days(crate::policy::exception::EXPIRING_DAYS);
    for e in &set.exceptions {
        let expires = crate::audit::format_time(e.expires);
        if e.expires <= now {
            warn!(exception = %e.id, %expires, "an exception in the policy set has expired: it exempts nothing (remove it)");
        } else if e.expires - now <= soon {
            warn!(exception = %e.id, %expires, "an exception in the policy set expires soon");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_starter_set_is_the_shipped_policy_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let shipped = load_dir(&dir).expect("the shipped set loads");
        let starter = Policies::starter().current();
        assert_eq!(
            starter.version, shipped.version,
            "STARTER lists every file of policies/"
        );
        assert_eq!(starter.rules.len(), shipped.rules.len());
        assert!(!starter.rules.is_empty());
    }

    #[test]
    fn an_empty_or_missing_directory_is_refused_unless_allowed() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err = Policies::load(empty.path(), false).err().expect("refused");
        assert!(err[0].message.contains("holds no rule"), "{}", err[0]);
        assert!(Path::new(&err[0].file).is_absolute());
        assert!(Policies::load(empty.path(), true).is_ok());
        let missing = empty.path().join("nope");
        let err = Policies::load(&missing, true).err().expect("refused");
        assert!(err[0].message.contains("does not exist"), "{}", err[0]);
    }

    #[test]
    fn a_reload_to_zero_rules_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.toml");
        std::fs::write(
            &file,
            "[[rule]]\nid = \"r\"\ndeny = \"true\"\nmessage = \"m\"\n",
        )
        .expect("write");
        let policies = Policies::load(dir.path(), false).expect("loads");
        std::fs::remove_file(&file).expect("remove");
        assert!(policies.reload().is_err());
        assert_eq!(policies.current().rules.len(), 1);
    }
}
