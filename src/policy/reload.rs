//! The policy set in force, and its reloading: on a change in the directory
//! (debounced) and on SIGHUP. A set that does not load leaves the last good
//! one in force; swaps are atomic, so no request sees a half-loaded set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use tracing::{error, info, warn};

use super::{LoadError, PolicySet, load_dir};

/// How long the directory must be quiet before a reload: an editor's save
/// is several events.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The policy set in force.
pub struct Policies {
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
}

/// Keeps the directory watch alive; dropping it stops watching.
pub struct Watch {
    _debouncer: Box<dyn std::any::Any + Send>,
}

impl Policies {
    /// Loads the directory; fails if it does not load.
    pub fn load(dir: &Path) -> Result<Policies, Vec<LoadError>> {
        let set = load_dir(dir)?;
        Ok(Policies {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(set),
        })
    }

    /// A fixed set (tests, `policy explain`).
    pub fn fixed(set: PolicySet) -> Policies {
        Policies {
            dir: PathBuf::new(),
            current: ArcSwap::from_pointee(set),
        }
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// The directory the set is read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reloads the directory. On failure the set in force stays, the reason
    /// is logged and counted.
    pub fn reload(&self) -> Result<Arc<PolicySet>, Vec<LoadError>> {
        match load_dir(&self.dir) {
            Ok(set) => {
                let changed = set.version != self.current.load().version;
                let set = Arc::new(set);
                self.current.store(set.clone());
                metrics::counter!("tollgate_policy_reloads_total", "result" => "success")
                    .increment(1);
                if changed {
                    info!(version = %set.version, rules = set.rules.len(), "policy set loaded");
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

    /// Reloads on every change in the directory and on SIGHUP, until the
    /// returned [`Watch`] is dropped (the SIGHUP task lives as long as the
    /// runtime).
    pub fn watch(self: &Arc<Self>) -> notify::Result<Watch> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let sighup_tx = tx.clone();
        let mut debouncer = notify_debouncer_full::new_debouncer(DEBOUNCE, None, move |res| {
            if let Ok(events) = res {
                let events: Vec<notify_debouncer_full::DebouncedEvent> = events;
                if events.iter().any(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            }
        })?;
        debouncer.watch(&self.dir, RecursiveMode::NonRecursive)?;
        #[cfg(unix)]
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    while hup.recv().await.is_some() {
                        info!("SIGHUP: reloading policies");
                        if sighup_tx.send(()).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot listen for SIGHUP"),
            }
        });
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
            _debouncer: Box::new(debouncer),
        })
    }
}
