//! The two stores: SQLite (embedded, the default) and Postgres (teams,
//! replicas). Two concrete pools behind one type; the SQL is the same text
//! for both, so each function is written once and run on either pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::QueryBuilder;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{Index, Row, rules_column};
use crate::policy::Decision;

/// The store could not do what was asked. The text is for logs and the
/// operator's terminal, never for a response body.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit.url: {0}")]
    Url(String),
    #[error("audit store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("audit store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    InUse(String),
    /// A read command was pointed at a store that does not exist.
    #[error("{0}")]
    Missing(String),
}

/// Whether a SQLite filename names an in-memory database: sqlx names
/// `sqlite://:memory:` `file:sqlx-in-memory-N`, a file nobody should find
/// (or create) beside the process.
fn in_memory(path: &std::path::Path) -> bool {
    let name = path.to_string_lossy();
    name.is_empty() || name.contains(":memory:") || name.starts_with("file:sqlx-in-memory")
}

/// Claims a SQLite store for one gateway: an exclusive lock on `PATH.lock`,
/// held while the returned file is open. A second `serve` on the same file
/// would judge against the same `before` as the first without either
/// knowing (the association locks live in each process's memory), so it is
/// refused. `Ok(None)`: nothing to claim (Postgres, which shares its locks
/// across replicas, or an in-memory database). Commands that only read the
/// store (`audit query`, `audit verify`) do not claim it. Call it once the
/// store is open (the file exists), so its real path is known.
pub fn claim(url: &str) -> Result<Option<std::fs::File>, StoreError> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let options =
        SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
    let path = options.get_filename();
    if in_memory(path) {
        return Ok(None);
    }
    // One file, however it is named: a symbolic link resolves to it. (A
    // hard link is another name the file system cannot tell apart.)
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let lock_path = {
        let mut p = path.as_os_str().to_owned();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::InUse(format!("{}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(format!(
            "audit store {} is in use by another tollgate serve: a SQLite store serves one \
             instance (two would judge changes to one association against the same state); \
             run replicas on Postgres",
            crate::policy::absolute(path)
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::InUse(format!("{}: {e}", lock_path.display())))
        }
    }
}

/// An audit store.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on whichever pool the store has.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

const COLUMNS: &str = "chain_id, seq, event_id, exchange_id, kind, time_us, operation, org_id, \
                       connection_id, caller, decision, rules, prev_hash, hash, body";

/// How long a connection may be waited for before the store counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A writer's chain, registered with its first events.
#[derive(Clone, Debug)]
pub struct Opening {
    pub chain_id: String,
    pub started_us: i64,
    pub host: String,
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing, WAL) or
    /// `postgres://…`, without migrating.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before the decision is acknowledged.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(ACQUIRE_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Store::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options =
                PgConnectOptions::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(StoreError::Url(
                "must start with sqlite:// or postgres://".into(),
            ))
        }
    }

    /// Opens a store that must exist already (commands that read the log):
    /// a SQLite file that is not there, or a Postgres schema without the
    /// log's tables, is an error naming the URL — never a new, empty log
    /// that reads as a clean one.
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        let shown = super::redact_url(url);
        let missing = |why: &str| {
            StoreError::Missing(format!(
                "no audit log at {shown} ({why}): run the command where `tollgate serve` runs, or set audit.url (TOLLGATE_AUDIT_URL or --config)"
            ))
        };
        if url.starts_with("sqlite:") {
            let options =
                SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
            let path = options.get_filename();
            if !in_memory(path) && !path.exists() {
                return Err(missing("the file does not exist"));
            }
        }
        let store = Store::connect(url).await?;
        if let Store::Postgres(pool) = &store {
            let found: Option<String> =
                sqlx::query_scalar("SELECT to_regclass('audit_events')::text")
                    .fetch_one(pool)
                    .await?;
            if found.is_none() {
                return Err(missing("it holds no audit_events table"));
            }
        }
        store.migrate().await?;
        Ok(store)
    }

    /// Connects and applies the embedded migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations (idempotent; Postgres serialises
    /// concurrent runs with an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
            Store::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Which backend this is.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Whether the store answers and holds the log.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query("SELECT 1 FROM audit_events LIMIT 1").execute(pool).await?; });
        Ok(())
    }

    /// The registered chains.
    pub async fn chains(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT chain_id FROM audit_chains ORDER BY chain_id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// The chains registered together with their first events: each must
    /// still hold events.
    pub async fn chains_with_events(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT chain_id FROM audit_chains WHERE with_events = $1 ORDER BY chain_id")
                .bind(true)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// The last (seq, hash) of a chain, if it has events: where a writer
    /// resumes after a failed commit whose fate it cannot know.
    pub async fn chain_head(&self, chain_id: &str) -> Result<Option<(i64, String)>, StoreError> {
        let head: Option<(i64, String)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT seq, hash FROM audit_events WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1")
                .bind(chain_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(head)
    }

    /// Appends rows in one transaction: all are durable, or none.
    pub async fn append(&self, rows: &[Row]) -> Result<(), StoreError> {
        self.append_opening(rows, None).await
    }

    /// As [`Store::append`]; with `opening`, also registers the chain, in
    /// the same transaction as its first events (again after a commit whose
    /// fate was unknown: registered once).
    pub async fn append_opening(
        &self,
        rows: &[Row],
        opening: Option<&Opening>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let chunks = chunks(rows, self.max_statement_bytes());
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(o) = opening {
                sqlx::query("INSERT INTO audit_chains (chain_id, started_us, host, with_events) VALUES ($1, $2, $3, $4) ON CONFLICT (chain_id) DO NOTHING")
                    .bind(&o.chain_id)
                    .bind(o.started_us)
                    .bind(&o.host)
                    .bind(true)
                    .execute(&mut *tx)
                    .await?;
            }
            for chunk in chunks {
                let mut qb = QueryBuilder::new(format!("INSERT INTO audit_events ({COLUMNS}) "));
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(r.chain_id.clone())
                        .push_bind(r.seq)
                        .push_bind(r.event_id.clone())
                        .push_bind(r.exchange_id.clone())
                        .push_bind(r.kind.clone())
                        .push_bind(r.time_us)
                        .push_bind(r.index.operation.clone())
                        .push_bind(r.index.org_id.clone())
                        .push_bind(r.index.connection_id.clone())
                        .push_bind(r.index.caller.clone())
                        .push_bind(r.index.decision.map(Decision::as_str))
                        .push_bind(rules_column(&r.index.rules))
                        .push_bind(r.prev_hash.clone())
                        .push_bind(r.hash.clone())
                        .push_bind(r.body.clone());
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The most row bytes one INSERT statement carries. Postgres over TCP:
    /// sqlx does not set TCP_NODELAY, and a message larger than the socket's
    /// send buffer goes out in two writes, the second held back by Nagle's
    /// algorithm until the server's delayed ACK (40 ms). Statements that fit
    /// in one write avoid the stall; the transaction still commits once.
    fn max_statement_bytes(&self) -> usize {
        match self {
            Store::Sqlite(_) => usize::MAX,
            Store::Postgres(_) => 12 * 1024,
        }
    }

    /// The chains that hold events.
    pub async fn event_chains(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT DISTINCT chain_id FROM audit_events ORDER BY chain_id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Up to `limit` events of a chain after `after_seq`, in order: the walk
    /// `audit verify` takes, a page at a time along the primary key.
    pub async fn chain_rows(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Row>, StoreError> {
        on_pool!(self, pool => {
            let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events WHERE chain_id = "));
            qb.push_bind(chain_id.to_owned())
                .push(" AND seq > ")
                .push_bind(after_seq)
                .push(" ORDER BY seq LIMIT ")
                .push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, _>>().map_err(Into::into)
        })
    }

    /// Stores a signed checkpoint.
    /// Stores a checkpoint; `false` when one at the same place was there
    /// already (another instance signed that head first).
    pub async fn add_checkpoint(&self, c: &super::signing::Checkpoint) -> Result<bool, StoreError> {
        let body = serde_json::to_string(c).unwrap_or_default();
        let stored = match self {
            Store::Sqlite(pool) => {
                sqlx::query("INSERT INTO audit_checkpoints (chain_id, seq, closed, body) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
                    .bind(&c.chain_id)
                    .bind(c.seq)
                    .bind(i64::from(c.closed))
                    .bind(body)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Store::Postgres(pool) => {
                sqlx::query("INSERT INTO audit_checkpoints (chain_id, seq, closed, body) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                    .bind(&c.chain_id)
                    .bind(c.seq)
                    .bind(c.closed)
                    .bind(body)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        };
        Ok(stored > 0)
    }

    /// The checkpoint stored at (`chain_id`, `seq`, `closed`), read back.
    pub async fn stored_checkpoint(
        &self,
        chain_id: &str,
        seq: i64,
        closed: bool,
    ) -> Result<Option<super::signing::Checkpoint>, StoreError> {
        let body: Option<String> = match self {
            Store::Sqlite(pool) => {
                sqlx::query_scalar("SELECT body FROM audit_checkpoints WHERE chain_id = ? AND seq = ? AND closed = ?")
                    .bind(chain_id)
                    .bind(seq)
                    .bind(i64::from(closed))
                    .fetch_optional(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_scalar("SELECT body FROM audit_checkpoints WHERE chain_id = $1 AND seq = $2 AND closed = $3")
                    .bind(chain_id)
                    .bind(seq)
                    .bind(closed)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// A chain's checkpoint rows, by position, read back (see
    /// [`Store::checkpoints`]).
    pub async fn chain_checkpoints(&self, chain_id: &str) -> Result<Checkpoints, StoreError> {
        let rows: Vec<(String, i64, i64, String)> = on_pool!(self, pool => {
            sqlx::query_as(CHECKPOINT_ROWS_OF_CHAIN)
                .bind(chain_id)
                .fetch_all(pool)
                .await?
        });
        Ok(read_checkpoints(rows))
    }

    /// Per chain with checkpoints: the highest signed seq, and whether the
    /// chain was closed (a final checkpoint).
    pub async fn checkpoint_marks(&self) -> Result<Vec<(String, i64, bool)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT chain_id, CAST(MAX(seq) AS BIGINT), CAST(SUM(CASE WHEN closed THEN 1 ELSE 0 END) AS BIGINT) FROM audit_checkpoints GROUP BY chain_id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(c, seq, closed)| (c, seq, closed > 0))
            .collect())
    }

    /// Every checkpoint row, by chain and position, read back: the
    /// checkpoints, and the rows that are not one (unreadable, or a body
    /// that names another place than its row), which verification reports
    /// instead of failing whole.
    pub async fn checkpoints(&self) -> Result<Checkpoints, StoreError> {
        let rows: Vec<(String, i64, i64, String)> = on_pool!(self, pool => {
            sqlx::query_as(CHECKPOINT_ROWS)
                .fetch_all(pool)
                .await?
        });
        Ok(read_checkpoints(rows))
    }

    /// Takes the claim `name` (for `value`); `false`: it was taken before,
    /// by this process or another.
    pub async fn claim(&self, name: &str, value: &str) -> Result<bool, StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        let done = on_pool!(self, pool => {
            let mut qb = QueryBuilder::new("INSERT INTO tollgate_claims (name, value, at_us) VALUES (");
            qb.push_bind(name.to_owned())
                .push(", ")
                .push_bind(value.to_owned())
                .push(", ")
                .push_bind(now)
                .push(") ON CONFLICT (name) DO NOTHING");
            qb.build().execute(pool).await?.rows_affected()
        });
        Ok(done == 1)
    }

    /// Gives a claim back (what it was taken for did not happen).
    pub async fn release_claim(&self, name: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut qb = QueryBuilder::new("DELETE FROM tollgate_claims WHERE name = ");
            qb.push_bind(name.to_owned());
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// A reader's checkpoint (`None`: it never stopped anywhere yet).
    pub async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError> {
        let value: Option<String> = on_pool!(self, pool => {
            let mut qb = QueryBuilder::new("SELECT value FROM tollgate_checkpoints WHERE name = ");
            qb.push_bind(name.to_owned());
            qb.build_query_scalar().fetch_optional(pool).await?
        });
        Ok(value)
    }

    /// Moves a reader's checkpoint.
    pub async fn set_checkpoint(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        on_pool!(self, pool => {
            let mut qb = QueryBuilder::new("INSERT INTO tollgate_checkpoints (name, value, updated_us) VALUES (");
            qb.push_bind(name.to_owned())
                .push(", ")
                .push_bind(value.to_owned())
                .push(", ")
                .push_bind(now)
                .push(") ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us");
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// The newest event of `kind` (`scan`), if any.
    pub async fn latest(&self, kind: &str) -> Result<Option<Row>, StoreError> {
        on_pool!(self, pool => {
            let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events WHERE kind = "));
            qb.push_bind(kind.to_owned()).push(" ORDER BY time_us DESC LIMIT 1");
            let row = qb.build().fetch_optional(pool).await?;
            row.as_ref().map(decode).transpose().map_err(Into::into)
        })
    }

    /// Every event of an exchange, decision first.
    pub async fn exchange_events(&self, exchange_id: &str) -> Result<Vec<Row>, StoreError> {
        on_pool!(self, pool => {
            let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events WHERE exchange_id = "));
            qb.push_bind(exchange_id.to_owned()).push(" ORDER BY time_us, kind");
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, _>>().map_err(Into::into)
        })
    }

    /// Decision events matching a filter, newest first.
    pub async fn decisions(&self, f: &super::query::Filter) -> Result<Vec<Row>, StoreError> {
        self.filtered("decision", f).await
    }

    /// The events of `kind` matching `f`, newest first, filtered and
    /// limited by the store (not read whole into memory: a flood of one
    /// kind must not push the others out of every view).
    pub async fn filtered(
        &self,
        kind: &str,
        f: &super::query::Filter,
    ) -> Result<Vec<Row>, StoreError> {
        on_pool!(self, pool => {
            let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events WHERE kind = "));
            qb.push_bind(kind.to_owned());
            if let Some(t) = f.since_us {
                qb.push(" AND time_us >= ").push_bind(t);
            }
            if let Some(t) = f.until_us {
                qb.push(" AND time_us < ").push_bind(t);
            }
            for (col, value) in [
                ("org_id", &f.org),
                ("connection_id", &f.connection),
                ("caller", &f.caller),
                ("operation", &f.operation),
                ("decision", &f.decision.map(|d| d.as_str().to_owned())),
            ] {
                if let Some(v) = value {
                    qb.push(format!(" AND {col} = ")).push_bind(v.clone());
                }
            }
            if let Some(rule) = &f.rule {
                qb.push(" AND rules LIKE ").push_bind(format!("%,{rule},%"));
            }
            // Time order alone, so the (org_id, time_us)-style indexes can
            // serve the ORDER BY … LIMIT without sorting every match.
            qb.push(" ORDER BY time_us DESC LIMIT ").push_bind(f.limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, _>>().map_err(Into::into)
        })
    }

    /// The outcome events of these exchanges.
    pub async fn outcomes(&self, exchange_ids: &[String]) -> Result<Vec<Row>, StoreError> {
        if exchange_ids.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut out = Vec::new();
            // Bounded IN lists keep every backend within its bind limit.
            for ids in exchange_ids.chunks(500) {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE kind = 'outcome' AND exchange_id IN ("
                ));
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(id.clone());
                }
                qb.push(")");
                for r in qb.build().fetch_all(pool).await? {
                    out.push(decode(&r)?);
                }
            }
            Ok(out)
        })
    }
}

/// Rows per INSERT at most: 15 bound values each stays under SQLite's
/// 32,766-variable limit (and Postgres's 65,535).
const MAX_ROWS_PER_STATEMENT: usize = 2000;

/// Splits rows into runs of at most `max_bytes` and
/// [`MAX_ROWS_PER_STATEMENT`] rows (at least one row each).
const CHECKPOINT_ROWS: &str = "SELECT chain_id, seq, CAST(CASE WHEN closed THEN 1 ELSE 0 END AS BIGINT), body FROM audit_checkpoints ORDER BY chain_id, seq";
const CHECKPOINT_ROWS_OF_CHAIN: &str = "SELECT chain_id, seq, CAST(CASE WHEN closed THEN 1 ELSE 0 END AS BIGINT), body FROM audit_checkpoints WHERE chain_id = $1 ORDER BY seq";

/// Checkpoint rows read back.
#[derive(Clone, Debug, Default)]
pub struct Checkpoints {
    pub good: Vec<super::signing::Checkpoint>,
    pub bad: Vec<BadCheckpoint>,
}

/// A checkpoint row that is not a checkpoint of its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadCheckpoint {
    pub chain_id: String,
    pub seq: i64,
    pub reason: String,
}

fn read_checkpoints(rows: Vec<(String, i64, i64, String)>) -> Checkpoints {
    let mut out = Checkpoints::default();
    for (chain_id, seq, closed, body) in rows {
        let bad = |reason: String| BadCheckpoint {
            chain_id: chain_id.clone(),
            seq,
            reason,
        };
        match serde_json::from_str::<super::signing::Checkpoint>(&body) {
            Ok(c) if c.chain_id == chain_id && c.seq == seq && c.closed == (closed != 0) => {
                out.good.push(c);
            }
            Ok(c) => out.bad.push(bad(format!(
                "the checkpoint row at seq {seq} holds a checkpoint of another place (chain {}, seq {}{}) (copied)",
                c.chain_id,
                c.seq,
                if c.closed { ", final" } else { "" }
            ))),
            Err(e) => out.bad.push(bad(format!(
                "the checkpoint row at seq {seq} is not a checkpoint ({e}) (altered)"
            ))),
        }
    }
    out
}

fn chunks(rows: &[Row], max_bytes: usize) -> Vec<&[Row]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        let size = r.body.len() + 256;
        if i > start && (bytes + size > max_bytes || i - start >= MAX_ROWS_PER_STATEMENT) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    out.push(&rows[start..]);
    out
}

/// A stored decision: one the enum names, or the row does not decode.
fn decision_column(text: Option<String>) -> Result<Option<Decision>, sqlx::Error> {
    text.map(|t| t.parse::<Decision>())
        .transpose()
        .map_err(|e| sqlx::Error::Decode(format!("decision column: {e}").into()))
}

fn decode<R>(r: &R) -> Result<Row, sqlx::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let rules: Option<String> = r.try_get("rules")?;
    Ok(Row {
        chain_id: r.try_get("chain_id")?,
        seq: r.try_get("seq")?,
        event_id: r.try_get("event_id")?,
        exchange_id: r.try_get("exchange_id")?,
        kind: r.try_get("kind")?,
        time_us: r.try_get("time_us")?,
        index: Index {
            operation: r.try_get("operation")?,
            org_id: r.try_get("org_id")?,
            connection_id: r.try_get("connection_id")?,
            caller: r.try_get("caller")?,
            decision: decision_column(r.try_get("decision")?)?,
            rules: rules
                .map(|s| {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        },
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        body: r.try_get("body")?,
    })
}
