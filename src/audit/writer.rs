//! The writer: one task per running instance owns the chain head and
//! commits events in batches (group commit).
//!
//! Requests hand their events to the task and wait for the batch that holds
//! them to be durable. While one batch commits, the next accumulates, so
//! durability before forwarding costs one disk flush per batch, not per
//! request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::signing::{Checkpoint, Kind};
use super::store::Opening;
use super::{ChainHead, NewEvent, Store, StoreError};

/// Most events committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Events waiting for the writer before callers feel back-pressure.
const QUEUE: usize = 8192;
/// How long a caller waits for its event to be durable.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// An event could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit store could not record the event: {0}")]
    Unavailable(String),
    #[error("the audit writer did not confirm the event within {0:?}")]
    Timeout(Duration),
    #[error("the audit writer has stopped")]
    Closed,
    /// The chain's last checkpoint could not be confirmed: nothing is
    /// acknowledged until one is.
    #[error("the audit log's checkpoints cannot be confirmed: {0}")]
    Unconfirmed(String),
}

enum Pending {
    Event {
        event: Box<NewEvent>,
        ack: Option<oneshot::Sender<Result<(), AuditError>>>,
    },
    /// Acknowledged once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
    /// As `Flush`, then the head is signed as final (the writer stops
    /// writing to this chain).
    Close(oneshot::Sender<()>),
}

/// Signs the chain's head: every `interval`, and when the log is closed.
pub struct Signer {
    pub key: super::signing::SigningKey,
    pub interval: Duration,
    /// Also written here, one file per checkpoint.
    pub dir: Option<std::path::PathBuf>,
    /// The keys other chains' checkpoints verify with (this one's and the
    /// retired ones): a head is signed for another chain only where its
    /// last checkpoint verifies.
    pub keys: super::signing::Keys,
}

/// This instance's audit log: its chain and its writer task.
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    chain_id: String,
    store: Store,
    /// Why the last checkpoint could not be confirmed, while it could not:
    /// the writer then acknowledges nothing that waits for it.
    unconfirmed: Arc<std::sync::Mutex<Option<String>>>,
}

impl AuditLog {
    /// Registers a new chain for this instance and starts its writer.
    pub async fn start(store: Store) -> Result<AuditLog, StoreError> {
        AuditLog::start_with_batch(store, MAX_BATCH).await
    }

    /// As [`AuditLog::start`], with at most `max_batch` events per commit (1
    /// turns group commit off: for measurements).
    pub async fn start_with_batch(store: Store, max_batch: usize) -> Result<AuditLog, StoreError> {
        AuditLog::start_signed(store, max_batch, None).await
    }

    /// As [`AuditLog::start`], signing the chain's head with `signer`.
    pub async fn start_signed(
        store: Store,
        max_batch: usize,
        signer: Option<Signer>,
    ) -> Result<AuditLog, StoreError> {
        let chain_id = uuid::Uuid::now_v7().to_string();
        // Registered with its first events (a writer that records nothing
        // leaves no chain): a registered chain without events lost them.
        let opening = Opening {
            chain_id: chain_id.clone(),
            started_us: chrono::Utc::now().timestamp_micros(),
            host: std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()),
        };
        // The store answers now, or the instance does not start.
        store.ping().await?;
        if let Some(signer) = &signer {
            adopt_unsigned_heads(&store, signer).await?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let unconfirmed = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(write_loop(
            store.clone(),
            (ChainHead::new(chain_id.clone()), opening),
            rx,
            max_batch.max(1),
            (signer, unconfirmed.clone()),
        ));
        Ok(AuditLog {
            tx,
            chain_id,
            store,
            unconfirmed,
        })
    }

    /// Why the chain's last checkpoint could not be confirmed, if it could
    /// not (then nothing that waits for the log is acknowledged).
    pub fn unconfirmed(&self) -> Option<String> {
        self.unconfirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This instance's chain.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records an event and waits until it is durable.
    pub async fn record(&self, event: NewEvent) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        let pending = Pending::Event {
            event: Box::new(event),
            ack: Some(ack),
        };
        let wait = async {
            self.tx
                .send(pending)
                .await
                .map_err(|_| AuditError::Closed)?;
            done.await.map_err(|_| AuditError::Closed)?
        };
        tokio::time::timeout(ACK_TIMEOUT, wait)
            .await
            .map_err(|_| AuditError::Timeout(ACK_TIMEOUT))?
    }

    /// Queues an event without waiting for it (outcomes: the exchange is
    /// over; a crash before the commit leaves the decision as "unknown").
    pub async fn record_later(&self, event: NewEvent) {
        if self
            .tx
            .send(Pending::Event {
                event: Box::new(event),
                ack: None,
            })
            .await
            .is_err()
        {
            error!("audit writer stopped; an outcome event was not recorded");
        }
    }

    /// Waits until every event queued so far has been written (or failed).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Pending::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Writes what is queued, then signs the head as final (with a signing
    /// key): nothing may follow it in this chain.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Pending::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn write_loop(
    store: Store,
    (mut head, opening): (ChainHead, Opening),
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    (signer, unconfirmed): (Option<Signer>, Arc<std::sync::Mutex<Option<String>>>),
) {
    let mut resync = false;
    let every = signer
        .as_ref()
        .map_or(Duration::from_secs(3600), |s| s.interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut signed = 0;
    let mut opened = false;
    let mut confirm = Confirm(unconfirmed);
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
            _ = tick.tick(), if signer.is_some() => {
                let r = sign(&store, &head, signer.as_ref(), false, &mut signed).await;
                confirm.note(r);
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        let mut closes = Vec::new();
        for p in batch {
            match p {
                Pending::Event { event, ack } => {
                    events.push(*event);
                    acks.push(ack);
                }
                Pending::Flush(done) => flushes.push(done),
                Pending::Close(done) => closes.push(done),
            }
        }
        // While the last checkpoint is unconfirmed, try again first; if it
        // still cannot be, nothing that waits for the log (a decision about
        // to be forwarded) is acknowledged, and only what records changes
        // already made (outcomes) is written.
        // A chain exists only if a key said so: its opening (a checkpoint
        // of the empty chain) is signed and confirmed before its first
        // event is written.
        if let Some(s) = signer
            .as_ref()
            .filter(|_| !opened && head.seq == 0 && !events.is_empty())
        {
            let r = keep(&store, s, &Checkpoint::sign(&s.key, &head, Kind::Running)).await;
            opened = r.is_ok();
            confirm.note(r);
        } else if confirm.failing() {
            let r = sign(&store, &head, signer.as_ref(), false, &mut signed).await;
            confirm.note(r);
        }
        if let Some(why) = confirm.reason() {
            let (kept, refused): (Vec<_>, Vec<_>) = events
                .into_iter()
                .zip(acks)
                .partition(|(_, ack)| ack.is_none());
            for (_, ack) in refused {
                if let Some(ack) = ack {
                    let _ = ack.send(Err(AuditError::Unconfirmed(why.clone())));
                }
            }
            events = kept.into_iter().map(|(e, _)| e).collect();
            acks = Vec::new();
        }
        if !events.is_empty() {
            let result = commit(&store, &mut head, &opening, &events, &mut resync).await;
            for ack in acks.into_iter().flatten() {
                let _ = ack.send(result.clone());
            }
            // The chain's start is signed at once (once its first events
            // are acknowledged): a writer that dies before its first
            // interval still leaves a checkpoint the next instance can carry
            // on from.
            if result.is_ok() && signed == 0 {
                let r = sign(&store, &head, signer.as_ref(), false, &mut signed).await;
                confirm.note(r);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
        if !closes.is_empty() {
            let r = sign(&store, &head, signer.as_ref(), true, &mut signed).await;
            confirm.note(r);
        }
        for done in closes {
            let _ = done.send(());
        }
    }
}

/// Whether the chain's last checkpoint was confirmed, shared with the
/// [`AuditLog`] (for `/readyz`).
struct Confirm(Arc<std::sync::Mutex<Option<String>>>);

impl Confirm {
    fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failing(&self) -> bool {
        self.reason().is_some()
    }

    /// Notes how a signing went: a failure stops acknowledgements (logged
    /// and counted once per failure), a success resumes them.
    fn note(&mut self, result: Result<(), String>) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                if state.take().is_some() {
                    info!("a checkpoint is confirmed again: acknowledging exchanges again");
                }
            }
            Err(why) => {
                metrics::counter!("tollgate_checkpoint_failures_total").increment(1);
                error!(reason = %why, "checkpoint not confirmed: no exchange is acknowledged (governed changes get 503) until one is");
                *state = Some(why);
            }
        }
    }
}

/// Signs the head if it moved since the last checkpoint (or, `closed`, as
/// the chain's last word), stores it, confirms it and writes its file.
async fn sign(
    store: &Store,
    head: &ChainHead,
    signer: Option<&Signer>,
    closed: bool,
    signed: &mut i64,
) -> Result<(), String> {
    let Some(signer) = signer else { return Ok(()) };
    if head.seq == 0 || (!closed && head.seq == *signed) {
        return Ok(());
    }
    let kind = if closed { Kind::Final } else { Kind::Running };
    keep(store, signer, &Checkpoint::sign(&signer.key, head, kind)).await?;
    *signed = head.seq;
    Ok(())
}

/// Stores a checkpoint, confirms it by reading it back — this one, or one
/// another instance stored first at the same place that signs the same head
/// with a key we trust — and writes its file. Anything else is an error: a
/// row that did not land (a trigger discarding it), another head at its
/// place, a file not written.
async fn keep(store: &Store, signer: &Signer, c: &Checkpoint) -> Result<(), String> {
    store
        .add_checkpoint(c)
        .await
        .map_err(|e| format!("the checkpoint was not stored: {e}"))?;
    let stored = store
        .stored_checkpoint(&c.chain_id, c.seq, c.closed)
        .await
        .map_err(|e| format!("the checkpoint could not be read back: {e}"))?
        .ok_or_else(|| {
            format!(
                "checkpoint {}#{} is not in the store after it was written (discarded by a trigger or a rule?)",
                c.chain_id, c.seq
            )
        })?;
    if stored != *c && (stored.hash != c.hash || signer.keys.check(&stored).is_err()) {
        return Err(format!(
            "checkpoint {}#{} in the store is not the head this writer signed",
            c.chain_id, c.seq
        ));
    }
    // A chain's opening (seq 0) covers no event: it stays in the store,
    // where deleting it makes the chain an unsigned one.
    if c.seq == 0 {
        return Ok(());
    }
    // The file of the checkpoint the store holds for this head — ours, an
    // earlier attempt's, or another instance's: written (again) whoever
    // stored it, so a failed write is retried, never taken as done.
    let c = &stored;
    if let Some(dir) = &signer.dir {
        let suffix = match (c.closed, c.adopted) {
            (true, _) => "-final",
            (_, true) => "-adopted",
            _ => "",
        };
        let name = format!("{}-{:012}{suffix}.json", c.chain_id, c.seq);
        let text = serde_json::to_string_pretty(c).unwrap_or_default();
        write_whole(&dir.join(&name), text.as_bytes())
            .map_err(|e| format!("checkpoint file {name} not written: {e}"))?;
    }
    Ok(())
}

/// Writes a file whole or not at all: into a temporary name, synced, then
/// renamed, so a crash never leaves half a checkpoint for readers to trip
/// on (they read `*.json` only).
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// At start, signs the head of every other chain whose own writer signed
/// part of it, did not close it, and wrote more since (it crashed, or is
/// another replica still running): those events are covered from now on,
/// marked as signed by another instance. Only where the chain verifies as
/// `audit verify` would (with the checkpoints kept as files, when there
/// are): from its first event, with every checkpoint of its own writer's
/// verifying. A chain no writer signed is left as it is.
async fn adopt_unsigned_heads(store: &Store, signer: &Signer) -> Result<(), StoreError> {
    let kept = match &signer.dir {
        Some(dir) => match super::signing::checkpoints_in(dir) {
            Ok(kept) => kept,
            Err(e) => {
                warn!(error = %e, "checkpoint files unreadable: no other chain's head is signed");
                return Ok(());
            }
        },
        None => Vec::new(),
    };
    for (chain, signed, closed) in store.checkpoint_marks().await? {
        // Closed, or vouched for by its opening alone (its writer signed
        // none of its events): never signed for it.
        if closed || signed == 0 {
            continue;
        }
        let Some((seq, hash)) = store.chain_head(&chain).await? else {
            continue;
        };
        if seq <= signed {
            continue;
        }
        let report = super::verify::verify_chain(store, &chain, Some(&signer.keys), &kept).await?;
        if let Some(b) = report.breaks.first() {
            warn!(chain = %chain, seq = b.seq, reason = %b.reason, "a chain that does not verify: its head is not signed for it (run tollgate audit verify)");
            continue;
        }
        let head = ChainHead {
            chain_id: chain.clone(),
            seq,
            hash,
        };
        match keep(
            store,
            signer,
            &Checkpoint::sign(&signer.key, &head, Kind::Adopted),
        )
        .await
        {
            Ok(()) => {
                info!(chain = %chain, seq, after = signed, "signed the head of a chain its writer left unsigned");
            }
            Err(e) => {
                warn!(chain = %chain, error = %e, "the head of a chain its writer left unsigned was not signed")
            }
        }
    }
    Ok(())
}

/// Links the events to the chain and commits them; the head moves only if
/// the commit succeeded.
async fn commit(
    store: &Store,
    head: &mut ChainHead,
    opening: &Opening,
    events: &[NewEvent],
    resync: &mut bool,
) -> Result<(), AuditError> {
    // After a failed commit the rows may or may not be in: ask the store.
    if *resync {
        match store.chain_head(&head.chain_id).await {
            Ok(found) => {
                if let Some((seq, hash)) = found {
                    head.seq = seq;
                    head.hash = hash;
                }
                *resync = false;
            }
            Err(e) => return Err(fail(e, events.len())),
        }
    }
    let mut next = head.clone();
    let rows: Vec<_> = events.iter().map(|e| next.link(e)).collect();
    let started = Instant::now();
    let first = rows.first().is_some_and(|r| r.seq == 1);
    match store.append_opening(&rows, first.then_some(opening)).await {
        Ok(()) => {
            metrics::histogram!("tollgate_audit_write_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("tollgate_audit_batch_size").record(rows.len() as f64);
            *head = next;
            Ok(())
        }
        Err(e) => {
            *resync = true;
            Err(fail(e, events.len()))
        }
    }
}

fn fail(e: StoreError, n: usize) -> AuditError {
    metrics::counter!("tollgate_audit_write_failures_total").increment(n as u64);
    warn!(error = %e, events = n, "audit write failed");
    AuditError::Unavailable(e.to_string())
}
