//! The policy set in force, and its reloading: on a change in the directory
//! (debounced) and on SIGHUP. A set that does not load leaves the last good
//! one in force; swaps are atomic, so no request sees a half-loaded set.
//!
//! A guardrail without rules forwards everything, so an empty set is an
//! error unless `policy.allow_empty` says otherwise: at start (the gateway
//! refuses to run) and on reload (the last good set stays).
//!
//! Files are rewritten in place by editors, `cat >`, rsync and
//! configuration management: for a moment a file is empty or cut short. A
//! reload therefore reads a directory only once it has settled (no file
//! modified within [`SETTLE`], and nothing changed while it was read), and
//! a file that held rules and now holds none keeps the whole set in force,
//! with an ERROR naming it. Deleting a file is how rules are removed.

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

/// How long ago a file must have last been modified to be read as a
/// version: a write in progress is not one.
pub const SETTLE: Duration = Duration::from_millis(300);

/// How long a reload waits for the directory to settle before it gives up
/// (the set in force stays; the next change tries again).
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// Why a reload did not put a new set in force.
enum Refused {
    /// A file is being written: try again once it has settled.
    Unsettled(String),
    /// The set does not load, or would silently lose rules.
    Invalid(Vec<LoadError>),
}

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
        warn_of_unscoped_exceptions(&set);
        warn_if_nothing_enforces(&set);
        gauge_rules(&set);
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

    /// Reloads the directory once it has settled, waiting for it at most
    /// [`SETTLE_WAIT`]. On failure (or no rule, unless `policy.allow_empty`,
    /// or a file of rules now empty) the set in force stays, the reason is
    /// logged and counted. A built-in set stays as it is.
    pub async fn reload(&self) -> Result<Arc<PolicySet>, Vec<LoadError>> {
        let started = std::time::Instant::now();
        loop {
            match self.try_reload() {
                Ok(set) => return Ok(set),
                Err(Refused::Invalid(errors)) => return Err(errors),
                Err(Refused::Unsettled(file)) if started.elapsed() >= SETTLE_WAIT => {
                    let e = LoadError {
                        file,
                        rule: None,
                        message: format!(
                            "still being written after {SETTLE_WAIT:?}; the previous set stays in force"
                        ),
                    };
                    return Err(self.refuse(vec![e]));
                }
                Err(Refused::Unsettled(_)) => tokio::time::sleep(SETTLE / 2).await,
            }
        }
    }

    /// One attempt: the directory as it stands, if it has settled.
    fn try_reload(&self) -> Result<Arc<PolicySet>, Refused> {
        let Some(dir) = &self.dir else {
            return Ok(self.current());
        };
        let before = stamps(dir);
        if let Some(file) = recently_modified(&before) {
            return Err(Refused::Unsettled(file));
        }
        let loaded = load_dir(dir);
        // Changed while it was read: what was read may be half of it.
        if stamps(dir) != before {
            return Err(Refused::Unsettled(absolute(dir)));
        }
        let checked = loaded.and_then(|set| {
            if set.rules.is_empty() && !self.allow_empty {
                return Err(vec![no_rules(dir)]);
            }
            let emptied = emptied_files(&self.current.load(), &set);
            if emptied.is_empty() {
                Ok(set)
            } else {
                Err(emptied)
            }
        });
        match checked {
            Ok(set) => {
                let changed = set.version != self.current.load().version;
                let set = Arc::new(set);
                self.current.store(set.clone());
                metrics::counter!("tollgate_policy_reloads_total", "result" => "success")
                    .increment(1);
                gauge_rules(&set);
                if changed {
                    info!(version = %set.version, rules = set.rules.len(), "policy set loaded");
                    warn_of_exceptions(&set);
                    warn_of_unscoped_exceptions(&set);
                    warn_if_nothing_enforces(&set);
                }
                Ok(set)
            }
            Err(errors) => Err(Refused::Invalid(self.refuse(errors))),
        }
    }

    /// Logs and counts a reload that left the set in force as it was.
    fn refuse(&self, errors: Vec<LoadError>) -> Vec<LoadError> {
        metrics::counter!("tollgate_policy_reloads_total", "result" => "failure").increment(1);
        for e in &errors {
            error!(file = %e.file, error = %e, "policy set not loaded; the previous set stays in force");
        }
        errors
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
                let _ = policies.reload().await;
            }
        });
        Ok(Watch {
            _debouncer: std::sync::Mutex::new(Box::new(debouncer)),
        })
    }
}

/// Each policy file's modification time and size, in name order.
type Stamps = Vec<(String, Option<std::time::SystemTime>, u64)>;

fn stamps(dir: &Path) -> Stamps {
    let mut out: Stamps = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some((name, meta.modified().ok(), meta.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A file modified within [`SETTLE`]: maybe still being written.
fn recently_modified(stamps: &Stamps) -> Option<String> {
    let now = std::time::SystemTime::now();
    stamps.iter().find_map(|(name, modified, _)| {
        let age = modified.and_then(|m| now.duration_since(m).ok());
        // A time in the future (a clock set back) is recent too.
        (age.is_none_or(|a| a < SETTLE)).then(|| name.clone())
    })
}

/// The files of `next` that held rules in `current` and hold none now.
fn emptied_files(current: &PolicySet, next: &PolicySet) -> Vec<LoadError> {
    next.empty_files
        .iter()
        .filter(|f| current.rules.iter().any(|r| &r.file == *f))
        .map(|f| LoadError {
            file: f.clone(),
            rule: None,
            message: "held rules and now holds none (emptied or cut short while being written?); \
                      delete the file to remove its rules"
                .into(),
        })
        .collect()
}

/// `tollgate_policy_rules{mode}`: the rules in force, by mode.
pub fn gauge_rules(set: &PolicySet) {
    for (mode, n) in set.rules_by_mode() {
        metrics::gauge!("tollgate_policy_rules", "mode" => mode.to_string()).set(n as f64);
    }
}

/// Logs each exception that names no scope (no organization, connection,
/// caller or operation): it exempts its rules for every change — on purpose,
/// or a file caught half-written.
fn warn_of_unscoped_exceptions(set: &PolicySet) {
    for e in set.exceptions.iter().filter(|e| e.is_unscoped()) {
        warn!(exception = %e.id, file = %e.file, "an exception names no organization, connection, caller or operation: it exempts its rules for every change");
    }
}

/// Logs a set in force that denies nothing: every rule warns or is dry-run.
pub fn warn_if_nothing_enforces(set: &PolicySet) {
    if !set.rules.is_empty() && set.rules.iter().all(|r| r.mode != super::Mode::Enforce) {
        warn!(
            rules = set.rules.len(),
            "no rule in the policy set is enforcing (all warn or dry-run): nothing will be denied"
        );
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
        assert!(matches!(policies.try_reload(), Err(Refused::Invalid(_))));
        assert_eq!(policies.current().rules.len(), 1);
    }

    fn age(file: &Path, by: Duration) {
        let f = std::fs::File::options()
            .write(true)
            .open(file)
            .expect("open");
        f.set_modified(std::time::SystemTime::now() - by)
            .expect("set mtime");
    }

    const RULE: &str = "[[rule]]\nid = \"r\"\ndeny = \"true\"\nmessage = \"m\"\n";

    #[test]
    fn a_file_of_rules_emptied_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        std::fs::write(&a, RULE).expect("write");
        std::fs::write(&b, RULE.replace("\"r\"", "\"s\"")).expect("write");
        let policies = Policies::load(dir.path(), false).expect("loads");
        age(&a, SETTLE * 2);
        // `: > b.toml`, the first moment of `cat > b.toml`: zero bytes.
        std::fs::write(&b, "").expect("truncate");
        age(&b, SETTLE * 2);
        match policies.try_reload() {
            Err(Refused::Invalid(e)) => {
                assert_eq!(e[0].file, "b.toml");
                assert!(e[0].message.contains("now holds none"), "{}", e[0]);
            }
            other => panic!("reloaded: {:?}", other.ok().map(|s| s.rules.len())),
        }
        assert_eq!(policies.current().rules.len(), 2);
        // Comments only, or whitespace: still no rule.
        std::fs::write(&b, "# being rewritten\n").expect("write");
        age(&b, SETTLE * 2);
        assert!(matches!(policies.try_reload(), Err(Refused::Invalid(_))));
        // Written whole: in force.
        std::fs::write(&b, RULE.replace("\"r\"", "\"t\"")).expect("write");
        age(&b, SETTLE * 2);
        let set = policies.try_reload().ok().expect("reloads");
        assert_eq!(set.rules.len(), 2);
        // Deleted: its rules go.
        std::fs::remove_file(&b).expect("remove");
        assert_eq!(policies.try_reload().ok().expect("reloads").rules.len(), 1);
    }

    #[test]
    fn a_file_being_written_is_not_read_as_a_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        std::fs::write(&a, RULE).expect("write");
        let policies = Policies::load(dir.path(), false).expect("loads");
        let version = policies.current().version.clone();
        // Half a file, just written: not read until it has settled.
        std::fs::write(&a, &RULE[..RULE.len() / 2]).expect("write");
        assert!(matches!(policies.try_reload(), Err(Refused::Unsettled(f)) if f == "a.toml"));
        assert_eq!(policies.current().version, version);
    }

    #[tokio::test]
    async fn a_reload_waits_for_the_file_to_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        std::fs::write(&a, RULE).expect("write");
        let policies = Policies::load(dir.path(), false).expect("loads");
        std::fs::write(
            &a,
            format!("{RULE}\n[[rule]]\nid = \"s\"\ndeny = \"true\"\nmessage = \"m\"\n"),
        )
        .expect("write");
        let set = policies.reload().await.expect("reloads once settled");
        assert_eq!(set.rules.len(), 2);
    }
}
