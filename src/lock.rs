//! One change per association at a time.
//!
//! Rules judge `after`, the state a change leads to, computed from `before`,
//! the state it starts from. That is sound only if nothing changes the
//! association between tollgate's read of `before` and the tenant applying
//! the change. Two changes through tollgate are kept apart here: an exchange
//! locks every (organization, connection) pair it changes before it reads
//! `before`, and holds the locks until the tenant has answered or the
//! deadline passed.
//!
//! - Within one process: an in-memory lock per pair.
//! - Across replicas sharing a Postgres audit store: a transaction-scoped
//!   Postgres advisory lock per pair, taken after the in-memory one (so one
//!   process waits on Postgres with at most one connection per pair).
//!   Replicas in front of the same tenant compute the same keys.
//! - Pairs are locked in one fixed (sorted) order, so two array operations
//!   sharing pairs cannot deadlock.
//! - A Postgres lock lives as long as its session, and the database can end
//!   a session (`idle_in_transaction_session_timeout`, `pg_terminate_backend`,
//!   a failover) while tollgate waits for the tenant. The lock sessions turn
//!   the idle timeout off for themselves and keep TCP keepalives, and the
//!   gateway [confirms](AssociationLocks::confirm) the locks are still held
//!   immediately before it forwards (and again once the tenant answered):
//!   a lock that cannot be proved held forwards nothing.
//! - One caller (credential or API key) may queue at most
//!   [`PER_CALLER`] changes on one association: nobody can keep an
//!   association busy by flooding it.
//!
//! A change made at the tenant by someone else (the dashboard, another
//! credential) is not kept out by this: the Management API has no
//! conditional update. The gateway's post-check of the tenant's answer
//! detects that case.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::OwnedMutexGuard;

/// Postgres connections this process may hold for advisory locks: one per
/// association being changed concurrently. A change that finds them all
/// taken waits for one, within the same deadline as the lock itself.
const SHARED_CONNECTIONS: u32 = 32;

/// An (organization id, connection id) pair.
pub type Pair = (String, String);

/// Changes one caller may have waiting for, or holding, one association.
pub const PER_CALLER: usize = 16;

/// How long the proof that a lock is still held may take; past it the lock
/// is taken for lost (a session cut off without a reset answers nothing).
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// Settings of every lock session. The server's (or the role's) defaults
/// could end an idle transaction, and with it the lock, while the tenant is
/// answering: off for these sessions. Keepalives make a dead peer an error
/// rather than a silence.
const SESSION_SETTINGS: &str = "SET idle_in_transaction_session_timeout = 0; \
     SET statement_timeout = 0; \
     SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";

/// PostgreSQL 17's `transaction_timeout` would end the lock's transaction
/// too: off where the server has it (set only there: older servers refuse
/// the name).
const TRANSACTION_TIMEOUT_OFF: &str = "SELECT set_config('transaction_timeout', '0', false) \
     FROM (SELECT current_setting('server_version_num')::int AS v) s WHERE v >= 170000";

/// How the lock sessions are named in `pg_stat_activity`: `tollgate-lock`,
/// after the audit URL's own `application_name` if it gives one.
fn lock_session_name(given: Option<&str>) -> String {
    match given {
        Some(name) => format!("{name}/tollgate-lock"),
        None => "tollgate-lock".to_owned(),
    }
}

/// The locks could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another change to the association held it past the deadline.
    #[error(
        "another change to organization {org} connection {connection} is in progress; retry later"
    )]
    Busy { org: String, connection: String },
    /// The shared lock (Postgres) could not be taken.
    #[error("the association lock could not be taken: {0}")]
    Store(String),
    /// The shared lock was held and cannot be proved held any more: its
    /// database session ended (terminated, timed out, failed over).
    #[error("the association lock was lost: {0}")]
    Lost(String),
}

/// The lock table of one gateway.
pub struct AssociationLocks {
    local: Mutex<HashMap<Pair, Weak<tokio::sync::Mutex<()>>>>,
    /// (caller, pair) → that caller's places in the pair's queue: at most
    /// [`PER_CALLER`] of its changes wait for or hold the pair; more wait
    /// here, behind their own, not in front of anyone else's.
    places: Mutex<HashMap<(String, Pair), Weak<tokio::sync::Semaphore>>>,
    shared: Option<PgPool>,
    /// Mixed into the shared keys: the tenant, so that gateways in front of
    /// different tenants sharing one database do not wait on each other.
    namespace: String,
    wait: Duration,
}

/// Locks held; dropping releases them.
pub struct Held {
    local: Vec<OwnedMutexGuard<()>>,
    shared: Option<Transaction<'static, Postgres>>,
    /// The advisory keys taken in `shared`.
    keys: Vec<i64>,
    /// The caller's places in the pairs' queues.
    places: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // A transaction-scoped advisory lock ends with its transaction; end
        // it now rather than whenever the pooled connection is next used.
        if let Some(tx) = self.shared.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = tx.rollback().await;
            });
        }
    }
}

impl AssociationLocks {
    /// In-process locks only (a SQLite store serves one instance).
    pub fn local(wait: Duration) -> AssociationLocks {
        AssociationLocks {
            local: Mutex::new(HashMap::new()),
            places: Mutex::new(HashMap::new()),
            shared: None,
            namespace: String::new(),
            wait,
        }
    }

    /// Locks for the store at `audit_url`: shared through Postgres advisory
    /// locks when it is Postgres, in-process otherwise. `namespace` is the
    /// tenant's URL.
    pub fn for_store(
        audit_url: &str,
        namespace: &str,
        wait: Duration,
    ) -> Result<AssociationLocks, LockError> {
        let mut locks = AssociationLocks::local(wait);
        if audit_url.starts_with("postgres://") || audit_url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(audit_url)
                .map_err(|e| LockError::Store(e.to_string()))?;
            let name = lock_session_name(options.get_application_name());
            let options = options.application_name(&name);
            // The server gives up waiting for a lock at the deadline (SQLSTATE
            // 55P03), so a connection is never left mid-query; set once per
            // connection, it costs no round trip per change.
            let ms = wait.as_millis().max(1);
            let pool = PgPoolOptions::new()
                .max_connections(SHARED_CONNECTIONS)
                .min_connections(4)
                .acquire_timeout(wait)
                .idle_timeout(Duration::from_secs(60))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "SET lock_timeout = '{ms}ms'; {SESSION_SETTINGS}; {TRANSACTION_TIMEOUT_OFF}"
                        )))
                        .execute(conn)
                        .await
                        .map(|_| ())
                    })
                })
                .connect_lazy_with(options);
            // Opening a connection costs tens of milliseconds: open a few
            // now rather than during the first changes.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let warm = pool.clone();
                rt.spawn(async move {
                    let conns =
                        futures_util::future::join_all((0..4).map(|_| warm.acquire())).await;
                    drop(conns);
                });
            }
            locks.shared = Some(pool);
            locks.namespace = namespace.to_owned();
        }
        Ok(locks)
    }

    /// Whether the locks are shared with other replicas.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Locks every pair, in sorted order, waiting at most the deadline.
    pub async fn acquire(&self, pairs: &[Pair]) -> Result<Held, LockError> {
        self.acquire_as(None, pairs).await
    }

    /// Locks every pair for `caller` (a credential's fingerprint or an API
    /// key's name), who may have at most [`PER_CALLER`] changes queued on
    /// or holding each: more wait behind the caller's own (each within the
    /// deadline), so one caller's flood delays another's change by at most
    /// that many.
    pub async fn acquire_for(&self, caller: &str, pairs: &[Pair]) -> Result<Held, LockError> {
        self.acquire_as(Some(caller), pairs).await
    }

    async fn acquire_as(&self, caller: Option<&str>, pairs: &[Pair]) -> Result<Held, LockError> {
        let mut held = Held {
            local: Vec::with_capacity(pairs.len()),
            shared: None,
            keys: Vec::new(),
            places: Vec::with_capacity(pairs.len()),
        };
        let pairs: BTreeSet<&Pair> = pairs.iter().collect();
        if let Some(caller) = caller {
            for pair in &pairs {
                let place = self.place(caller, pair).acquire_owned();
                match tokio::time::timeout(self.wait, place).await {
                    Ok(Ok(p)) => held.places.push(p),
                    _ => return Err(busy(pair)),
                }
            }
        }
        self.extend(&mut held, &pairs.into_iter().cloned().collect::<Vec<_>>())
            .await?;
        Ok(held)
    }

    /// The caller's places in the pair's queue.
    fn place(&self, caller: &str, pair: &Pair) -> Arc<tokio::sync::Semaphore> {
        let key = (caller.to_owned(), pair.clone());
        let mut map = self.places.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        // As the lock table: dead entries swept when the table has doubled.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(tokio::sync::Semaphore::new(PER_CALLER));
        map.insert(key, Arc::downgrade(&s));
        s
    }

    /// Proves the shared locks of `held` are still held. They are
    /// transaction-scoped advisory locks: nothing but the end of their
    /// transaction releases them, and nothing outside the session can end
    /// it without ending the session (a terminated backend, an idle
    /// timeout, a failover all do). So a statement answered on the lock's
    /// own connection, inside its transaction, proves every key is still
    /// held; one that fails (the session is gone, or the transaction was
    /// aborted) or does not answer in time means they may not be. One round
    /// trip, and no read of the server's lock table (`pg_locks` takes every
    /// lock-manager partition: under load that cost every writer).
    /// Without shared locks there is nothing to prove (in-process locks
    /// cannot be lost).
    pub async fn confirm(&self, held: &mut Held) -> Result<(), LockError> {
        let Some(tx) = held.shared.as_mut() else {
            return Ok(());
        };
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut **tx);
        let lost = |why: String| {
            metrics::counter!("tollgate_lock_lost_total").increment(1);
            LockError::Lost(why)
        };
        match tokio::time::timeout(CONFIRM_WITHIN, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(lost(format!("the lock session ended: {e}"))),
            Err(_) => Err(lost(format!(
                "the lock session did not answer within {CONFIRM_WITHIN:?}"
            ))),
        }
    }

    /// Adds `pairs`, in sorted order, to the locks `held` (all of them, for
    /// [`acquire`](Self::acquire); an organization named by name, once
    /// resolved, later), in the same Postgres transaction: an exchange never
    /// holds more than one of the pool's connections. A wait past the
    /// deadline is busy; so is one out of the sorted order, which is how two
    /// requests waiting on each other end.
    pub async fn extend(&self, held: &mut Held, pairs: &[Pair]) -> Result<(), LockError> {
        let pairs: BTreeSet<&Pair> = pairs.iter().collect();
        if pairs.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let left = || self.wait.saturating_sub(started.elapsed());
        for pair in &pairs {
            let mutex = self.local_mutex(pair);
            match tokio::time::timeout(left(), mutex.lock_owned()).await {
                Ok(guard) => held.local.push(guard),
                Err(_) => return Err(busy(pair)),
            }
        }
        let Some(pool) = &self.shared else {
            return Ok(());
        };
        if held.shared.is_none() {
            let tx = tokio::time::timeout(left(), pool.begin())
                .await
                .map_err(|_| LockError::Store("no connection to the store in time".into()))?
                .map_err(|e| LockError::Store(e.to_string()))?;
            held.shared = Some(tx);
        }
        match held.shared.as_mut() {
            Some(tx) => {
                self.lock_shared(tx, &pairs).await?;
                held.keys.extend(pairs.iter().map(|p| self.shared_key(p)));
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn local_mutex(&self, pair: &Pair) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(pair).and_then(Weak::upgrade) {
            return m;
        }
        // Entries die with their last holder or waiter; sweep the dead ones
        // when the table has doubled, so it stays the size of what is in use.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let m = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(pair.clone(), Arc::downgrade(&m));
        m
    }

    /// Takes the advisory lock of each pair in `tx`. The server gives up at
    /// the connection's `lock_timeout` (SQLSTATE 55P03): busy.
    async fn lock_shared(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        pairs: &BTreeSet<&Pair>,
    ) -> Result<(), LockError> {
        // Keys are taken in the pairs' order, which is also the in-process
        // order, so replicas never wait on each other in a cycle.
        for pair in pairs {
            let taken = sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(self.shared_key(pair))
                .execute(&mut **tx)
                .await;
            match taken {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                    return Err(busy(pair));
                }
                Err(e) => return Err(LockError::Store(e.to_string())),
            }
        }
        Ok(())
    }

    /// The advisory-lock key of a pair: 64 bits of SHA-256 over the tenant
    /// and the pair, so replicas in front of one tenant agree.
    fn shared_key(&self, (org, connection): &Pair) -> i64 {
        let mut h = Sha256::new();
        for part in ["tollgate:association", &self.namespace, org, connection] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(bytes)
    }
}

fn busy((org, connection): &Pair) -> LockError {
    LockError::Busy {
        org: org.clone(),
        connection: connection.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(o: &str, c: &str) -> Pair {
        (o.to_owned(), c.to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_change_to_one_pair_waits_for_the_first() {
        let locks = Arc::new(AssociationLocks::local(Duration::from_secs(5)));
        let held = locks.acquire(&[pair("o", "c")]).await.expect("first");
        let l = locks.clone();
        let second = tokio::spawn(async move { l.acquire(&[pair("o", "c")]).await.is_ok() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "the second change waits");
        // Another pair is not held up.
        let other = locks.acquire(&[pair("o", "d")]).await;
        assert!(other.is_ok());
        drop(held);
        assert!(second.await.expect("join"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_held_past_the_deadline_is_busy() {
        let locks = AssociationLocks::local(Duration::from_secs(2));
        let _held = locks.acquire(&[pair("o", "c")]).await.expect("first");
        let err = locks.acquire(&[pair("o", "c")]).await.err().expect("busy");
        assert!(matches!(err, LockError::Busy { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_caller_queues_at_most_per_caller_changes_on_an_association() {
        let locks = Arc::new(AssociationLocks::local(Duration::from_secs(60)));
        let held = locks
            .acquire_for("flood", &[pair("o", "c")])
            .await
            .expect("first");
        let mut waiting = Vec::new();
        for _ in 1..PER_CALLER {
            let l = locks.clone();
            waiting.push(tokio::spawn(async move {
                l.acquire_for("flood", &[pair("o", "c")]).await.is_ok()
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // One more of the same caller waits behind its own, not in the
        // association's queue: another caller's change arriving later goes
        // before it.
        let order = Arc::new(Mutex::new(Vec::new()));
        let (l, o) = (locks.clone(), order.clone());
        let extra = tokio::spawn(async move {
            let h = l.acquire_for("flood", &[pair("o", "c")]).await;
            o.lock().expect("order").push("flood");
            h.is_ok()
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (l, o) = (locks.clone(), order.clone());
        let other = tokio::spawn(async move {
            let h = l.acquire_for("legit", &[pair("o", "c")]).await;
            o.lock().expect("order").push("legit");
            h.is_ok()
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Another association is free.
        assert!(locks.acquire_for("flood", &[pair("o", "d")]).await.is_ok());
        drop(held);
        for w in waiting {
            assert!(w.await.expect("join"));
        }
        assert!(other.await.expect("join"));
        assert!(extra.await.expect("join"));
        assert_eq!(*order.lock().expect("order"), ["legit", "flood"]);
        // Places are given back: the caller may queue again.
        assert!(locks.acquire_for("flood", &[pair("o", "c")]).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_sets_in_opposite_orders_do_not_deadlock() {
        let locks = Arc::new(AssociationLocks::local(Duration::from_secs(60)));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let l = locks.clone();
            tasks.push(tokio::spawn(async move {
                let mut pairs = vec![pair("o", "a"), pair("o", "b"), pair("o", "c")];
                if i % 2 == 0 {
                    pairs.reverse();
                }
                let _h = l.acquire(&pairs).await.expect("no deadlock");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
    }

    #[test]
    fn shared_keys_depend_on_the_tenant_and_the_pair() {
        let mut a = AssociationLocks::local(Duration::from_secs(1));
        a.namespace = "https://a.example".into();
        let mut b = AssociationLocks::local(Duration::from_secs(1));
        b.namespace = "https://b.example".into();
        let p = pair("org_1", "con_1");
        assert_eq!(a.shared_key(&p), a.shared_key(&p.clone()));
        assert_ne!(a.shared_key(&p), b.shared_key(&p));
        assert_ne!(a.shared_key(&p), a.shared_key(&pair("org_1", "con_2")));
        // No ambiguity between where one part ends and the next begins.
        assert_ne!(
            a.shared_key(&pair("ab", "c")),
            a.shared_key(&pair("a", "bc"))
        );
    }
}

#[cfg(test)]
mod timing {
    //! `cargo test --lib lock::timing -- --ignored --nocapture`: how long a
    //! shared (Postgres) lock takes to take and release, distinct keys.
    use super::*;

    #[tokio::test]
    #[ignore = "a measurement, not a test"]
    async fn shared_lock_latency() {
        let url = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let locks =
            AssociationLocks::for_store(&url, "timing", Duration::from_secs(5)).expect("locks");
        let mut took = Vec::new();
        for i in 0..1000 {
            let started = std::time::Instant::now();
            let held = locks
                .acquire(&[(format!("org_{i}"), "con".into())])
                .await
                .expect("lock");
            took.push(started.elapsed());
            drop(held);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.sort();
        println!(
            "p50 {:?} p99 {:?} max {:?}",
            took[500], took[990], took[999]
        );
    }
}
