//! `audit verify`: recomputes every chain and reports, in the manner of
//! `aws cloudtrail validate-logs`, how many events and chains are valid and
//! where the first break of each chain is.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::signing::{Checkpoint, Keys};
use super::{GENESIS, Row, Store, StoreError, chain_hash, rules_column};
use crate::policy::Decision;

/// Rows read per round trip.
const PAGE: i64 = 5000;

/// The indexed facts of a stored event, read without building the rest
/// (`data` is skipped, not parsed into values).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    chain_id: Cow<'a, str>,
    seq: i64,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    exchange_id: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow)]
    org_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    connection_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    caller: Option<Cow<'a, str>>,
    #[serde(borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rules: Vec<Cow<'a, str>>,
}

/// The first break found in a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Break {
    pub chain_id: String,
    pub seq: i64,
    pub event_id: String,
    pub reason: String,
}

/// What verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub chains: usize,
    pub valid_chains: usize,
    pub events: u64,
    pub valid_events: u64,
    /// The first break of each broken chain, in chain order.
    pub breaks: Vec<Break>,
    /// Signed checkpoints found, and how many verified with the public key
    /// (none when no key was given).
    pub checkpoints: usize,
    pub verified_checkpoints: usize,
    /// Events of each chain beyond its last checkpoint: not yet covered by
    /// a signature.
    pub uncovered: Vec<Uncovered>,
    /// Events of each chain covered only by a checkpoint another instance
    /// signed as it started (the chain's writer crashed, or was running).
    pub adopted: Vec<Adopted>,
}

/// Events signed by another instance than the chain's writer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Adopted {
    pub chain_id: String,
    /// The highest seq the chain's own writer signed (0: none).
    pub own_seq: i64,
    pub seq: i64,
}

/// Events a signature does not cover yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Uncovered {
    pub chain_id: String,
    pub after_seq: i64,
    pub events: i64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.breaks.is_empty()
    }

    /// What a reader should know beyond the breaks, one sentence each:
    /// events no signature covers yet, stretches another instance signed,
    /// and what a log without signed checkpoints cannot show.
    pub fn notes(&self) -> Vec<String> {
        let mut notes: Vec<String> = self
            .uncovered
            .iter()
            .map(|u| {
                format!(
                    "chain {}: {} event(s) after seq {} not yet covered by a signed checkpoint",
                    u.chain_id, u.events, u.after_seq
                )
            })
            .collect();
        notes.extend(self.adopted.iter().map(|a| {
            let own = match a.own_seq {
                // A bundle's stretch may start after the writer's own.
                0 => "no checkpoint of the chain's own writer is in view".to_owned(),
                n => format!("the chain's writer had signed up to seq {n} and not closed the chain"),
            };
            format!(
                "chain {}: seq {}..={} signed by another instance as it started ({own}: it crashed, or was still running); they are vouched for from then on, not from when they were written",
                a.chain_id,
                a.own_seq + 1,
                a.seq,
            )
        }));
        if self.checkpoints == 0 && self.events > 0 {
            notes.push(
                "no signed checkpoints: the chains show no edit made without recomputing hashes; one who can write the store and recomputes them is caught only with audit.signing_key".into(),
            );
        }
        notes
    }
}

#[derive(Default)]
struct ChainWalk {
    expected_seq: i64,
    prev: String,
    broken: bool,
    /// Report every break, not only the first (`audit verify --all`).
    all: bool,
    events: u64,
    valid: u64,
    /// The highest seq seen, and the hash at each signed seq.
    last_seq: i64,
    signed_hashes: std::collections::HashMap<i64, String>,
    /// The time of the event at each signed seq.
    signed_times: std::collections::HashMap<i64, i64>,
}

impl ChainWalk {
    /// Records the chain's first break (later ones are not looked for,
    /// unless `all`).
    fn brk(&mut self, breaks: &mut Vec<Break>, chain: &str, seq: i64, reason: String) {
        if !self.broken || self.all {
            self.broken = true;
            breaks.push(Break {
                chain_id: chain.to_owned(),
                seq,
                event_id: String::new(),
                reason,
            });
        }
    }
}

/// Walks every chain in order and checks each event: its place (seq, link
/// to the previous hash), its hash, and that its indexed columns say what
/// its hashed body says.
pub async fn verify(store: &Store) -> Result<Report, StoreError> {
    verify_with(store, None, &[]).await
}

/// As [`verify`], and checks the signed checkpoints with `key`: a chain
/// shorter than a checkpoint says (truncated), an event other than the one
/// signed (rewritten), events after a final checkpoint (appended after the
/// chain was closed), a signature that does not verify (forged), a
/// checkpoint row that is not one of its place (altered, copied).
///
/// `kept`: checkpoints kept outside the store (`audit.checkpoint_dir`): one
/// the store lost is reported, and counts as if the store had it, so
/// deleting checkpoint rows hides nothing the files still hold.
pub async fn verify_with(
    store: &Store,
    key: Option<&Keys>,
    kept: &[Checkpoint],
) -> Result<Report, StoreError> {
    verify_with_deadline(store, key, kept, None).await
}

/// How far a verification goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Depth {
    /// Events left uncovered longer than this are a break.
    pub overdue: Option<std::time::Duration>,
    /// Every break of every chain, not only each chain's first: after a
    /// break the walk carries on from the event that broke it.
    pub all: bool,
}

/// As [`verify_with`]; with `overdue`, events no checkpoint covers that are
/// older than that (a few checkpoint intervals: a running writer signs
/// every interval) are a break — `checkpoint overdue` — not a note.
pub async fn verify_with_deadline(
    store: &Store,
    key: Option<&Keys>,
    kept: &[Checkpoint],
    overdue: Option<std::time::Duration>,
) -> Result<Report, StoreError> {
    verify_to(
        store,
        key,
        kept,
        Depth {
            overdue,
            all: false,
        },
    )
    .await
}

/// As [`verify_with`], as deep as `depth` says.
pub async fn verify_to(
    store: &Store,
    key: Option<&Keys>,
    kept: &[Checkpoint],
    depth: Depth,
) -> Result<Report, StoreError> {
    let overdue = depth.overdue;
    let mut report = verify_all(store, key, kept, depth.all).await?;
    let Some(overdue) = overdue else {
        return Ok(report);
    };
    let limit_us = chrono::Utc::now().timestamp_micros()
        - i64::try_from(overdue.as_micros()).unwrap_or(i64::MAX);
    for u in report.uncovered.clone() {
        let first = store.chain_rows(&u.chain_id, u.after_seq, 1).await?;
        if let Some(row) = first.first().filter(|r| r.time_us < limit_us) {
            report.valid_chains = report.valid_chains.saturating_sub(usize::from(
                !report.breaks.iter().any(|b| b.chain_id == u.chain_id),
            ));
            report.breaks.push(Break {
                chain_id: u.chain_id.clone(),
                seq: row.seq,
                event_id: row.event_id.clone(),
                reason: format!(
                    "checkpoint overdue: {} event(s) from seq {} on, the first written {}, are covered by no checkpoint (older than {overdue:?}: a running writer signs every interval)",
                    u.events,
                    row.seq,
                    chrono::DateTime::from_timestamp_micros(row.time_us)
                        .map(super::format_time)
                        .unwrap_or_default()
                ),
            });
        }
    }
    Ok(report)
}

async fn verify_all(
    store: &Store,
    key: Option<&Keys>,
    kept: &[Checkpoint],
    all: bool,
) -> Result<Report, StoreError> {
    let registered = store.chains().await?;
    let stored = store.checkpoints().await?;
    let mut chains = store.event_chains().await?;
    let signed = Signed::of(stored, kept);
    for chain in signed.chains() {
        if !chains.contains(&chain) {
            chains.push(chain);
        }
    }
    let mut report = Report::default();
    for chain in &chains {
        verify_one(
            store,
            chain,
            (&signed, key),
            (&registered, all),
            &mut report,
        )
        .await?;
    }
    // A chain is registered with its first events: one left with none had
    // them all deleted.
    for chain in store.chains_with_events().await? {
        if !chains.contains(&chain) {
            report.chains += 1;
            report.breaks.push(Break {
                chain_id: chain,
                seq: 1,
                event_id: String::new(),
                reason: "the chain holds no events, though it was registered with its first ones (deleted)".into(),
            });
        }
    }
    Ok(report)
}

/// As [`verify_with`], for one chain: what an instance checks before it
/// signs that chain's head for it.
pub async fn verify_chain(
    store: &Store,
    chain: &str,
    key: Option<&Keys>,
    kept: &[Checkpoint],
) -> Result<Report, StoreError> {
    let registered = store.chains().await?;
    let stored = store.chain_checkpoints(chain).await?;
    let kept: Vec<Checkpoint> = kept
        .iter()
        .filter(|c| c.chain_id == chain)
        .cloned()
        .collect();
    let signed = Signed::of(stored, &kept);
    let mut report = Report::default();
    verify_one(
        store,
        chain,
        (&signed, key),
        (&registered, false),
        &mut report,
    )
    .await?;
    Ok(report)
}

/// The checkpoints verification goes by, by chain: the store's, those kept
/// as files that the store lost, and the store's rows that are not one.
struct Signed {
    by_chain: std::collections::HashMap<String, Vec<Checkpoint>>,
    lost: std::collections::HashMap<String, Vec<Checkpoint>>,
    bad: Vec<super::store::BadCheckpoint>,
}

impl Signed {
    fn of(stored: super::store::Checkpoints, kept: &[Checkpoint]) -> Signed {
        let known: std::collections::HashSet<&Checkpoint> = stored.good.iter().collect();
        let mut lost: std::collections::HashMap<String, Vec<Checkpoint>> = Default::default();
        for c in kept.iter().filter(|c| !known.contains(c)) {
            lost.entry(c.chain_id.clone()).or_default().push(c.clone());
        }
        let mut by_chain: std::collections::HashMap<String, Vec<Checkpoint>> = Default::default();
        for c in stored
            .good
            .into_iter()
            .chain(lost.values().flatten().cloned())
        {
            by_chain.entry(c.chain_id.clone()).or_default().push(c);
        }
        for list in by_chain.values_mut() {
            list.sort_by_key(|c| (c.seq, c.closed));
        }
        Signed {
            by_chain,
            lost,
            bad: stored.bad,
        }
    }

    /// Every chain a checkpoint or a bad row names.
    fn chains(&self) -> Vec<String> {
        let mut chains: Vec<String> = self
            .by_chain
            .keys()
            .cloned()
            .chain(self.bad.iter().map(|b| b.chain_id.clone()))
            .collect();
        chains.sort();
        chains.dedup();
        chains
    }
}

/// Why a checkpoint file the store does not hold is a break: deleted from
/// the store, or — when no key given signed it — made up.
fn lost_reason(c: &Checkpoint, key: Option<&Keys>) -> String {
    match key.map(|k| k.check(c)) {
        Some(Err(why)) => format!(
            "the checkpoint file at seq {} in the checkpoint directory does not verify{why}: forged, not deleted from the store",
            c.seq
        ),
        _ => format!(
            "the signed checkpoint at seq {} kept in the checkpoint directory is missing from the store (deleted)",
            c.seq
        ),
    }
}

/// Walks one chain and checks its checkpoints, into `report`.
async fn verify_one(
    store: &Store,
    chain: &str,
    (signed, key): (&Signed, Option<&Keys>),
    (registered, all): (&[String], bool),
    report: &mut Report,
) -> Result<(), StoreError> {
    let none = Vec::new();
    let checkpoints: Vec<&Checkpoint> =
        signed.by_chain.get(chain).unwrap_or(&none).iter().collect();
    let mut walk = ChainWalk {
        expected_seq: 1,
        prev: GENESIS.to_owned(),
        all,
        signed_hashes: checkpoints.iter().map(|c| (c.seq, String::new())).collect(),
        ..ChainWalk::default()
    };
    // Pipelined: the next page is read (on the store's side) while this
    // one is checked.
    // From the lowest seq there is, not from 1: rows placed at seq 0 or
    // below are events too, and must not go unseen.
    let mut page = store.chain_rows(chain, i64::MIN, PAGE).await?;
    loop {
        let next_after = page.last().map_or(0, |r| r.seq);
        let more = page.len() as i64 == PAGE;
        let fetch = async {
            if more {
                store.chain_rows(chain, next_after, PAGE).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let walk_page = async { check_page(&page, &mut walk, registered, &mut report.breaks) };
        let (next, ()) = tokio::join!(fetch, walk_page);
        match next? {
            Some(p) => page = p,
            None => break,
        }
    }
    // Every file the store lost (the first is the chain's break; all of
    // them with --all), and every checkpoint row that is not one.
    for c in signed.lost.get(chain).into_iter().flatten() {
        walk.brk(&mut report.breaks, chain, c.seq, lost_reason(c, key));
    }
    for b in signed.bad.iter().filter(|b| b.chain_id == chain) {
        walk.brk(&mut report.breaks, chain, b.seq, b.reason.clone());
    }
    check_checkpoints(chain, &checkpoints, &mut walk, key, true, report);
    report.chains += 1;
    report.valid_chains += usize::from(!walk.broken);
    report.events += walk.events;
    report.valid_events += walk.valid;
    Ok(())
}

/// Verifies chains given as stretches (an export bundle): each from its
/// first event's `prev_hash`, with the checkpoints that fall in it.
pub fn verify_ranges(
    ranges: impl Iterator<Item = (super::bundle::ChainRange, Vec<Row>)>,
    checkpoints: &[Checkpoint],
    key: Option<&Keys>,
) -> Report {
    let mut report = Report::default();
    for (range, rows) in ranges {
        let signed: Vec<&Checkpoint> = checkpoints
            .iter()
            .filter(|c| c.chain_id == range.chain_id)
            .collect();
        let mut walk = ChainWalk {
            expected_seq: range.first_seq,
            prev: range.first_prev_hash.clone(),
            signed_hashes: signed.iter().map(|c| (c.seq, String::new())).collect(),
            ..ChainWalk::default()
        };
        let registered = [range.chain_id.clone()];
        check_page(&rows, &mut walk, &registered, &mut report.breaks);
        if !walk.broken && walk.last_seq < range.last_seq {
            walk.broken = true;
            report.breaks.push(Break {
                chain_id: range.chain_id.clone(),
                seq: walk.last_seq + 1,
                event_id: String::new(),
                reason: format!(
                    "events {}..={} are missing from the bundle",
                    walk.last_seq + 1,
                    range.last_seq
                ),
            });
        }
        // A stretch from the chain's start that no checkpoint in the
        // bundle opens or covers: the bundle vouches for nothing of it.
        if key.is_some() && range.first_seq <= 1 && signed.is_empty() && walk.events > 0 {
            walk.brk(
                &mut report.breaks,
                &range.chain_id,
                range.first_seq,
                "unsigned chain: no checkpoint in the bundle opens or covers it".into(),
            );
        }
        check_checkpoints(&range.chain_id, &signed, &mut walk, key, false, &mut report);
        report.chains += 1;
        report.valid_chains += usize::from(!walk.broken);
        report.events += walk.events;
        report.valid_events += walk.valid;
    }
    report
}

/// A chain's checkpoints against what its walk found.
/// `whole`: the chain from its start (the store), not a stretch of it (a
/// bundle), so its own writer's checkpoints are all in view.
fn check_checkpoints(
    chain: &str,
    signed: &[&Checkpoint],
    walk: &mut ChainWalk,
    key: Option<&Keys>,
    whole: bool,
    report: &mut Report,
) {
    let mut brk = |seq: i64, reason: String, walk: &mut ChainWalk| {
        walk.brk(&mut report.breaks, chain, seq, reason);
    };
    let (mut covered, mut own, mut opened) = (0, 0, false);
    for c in signed {
        // The chain's opening: its writer's signed word that the chain
        // exists, before its first event (not counted as a checkpoint of
        // events: it covers none).
        if c.seq == 0 {
            match key.map(|keys| keys.check(c)) {
                Some(Err(why)) => brk(
                    1,
                    format!("the chain's opening (seq 0) does not verify{why}"),
                    walk,
                ),
                _ if c.hash != GENESIS || c.closed || c.adopted => brk(
                    1,
                    "the chain's opening (seq 0) is not the opening of an empty chain (altered)"
                        .into(),
                    walk,
                ),
                _ => opened = true,
            }
            continue;
        }
        report.checkpoints += 1;
        if let Some(keys) = key {
            if let Err(why) = keys.check(c) {
                brk(
                    c.seq,
                    format!("the checkpoint at seq {} does not verify{why}", c.seq),
                    walk,
                );
                continue;
            }
            report.verified_checkpoints += 1;
        }
        if c.seq > walk.last_seq {
            brk(
                walk.last_seq + 1,
                format!(
                    "truncated: events {}..={} are missing (a checkpoint signed seq {})",
                    walk.last_seq + 1,
                    c.seq,
                    c.seq
                ),
                walk,
            );
        } else if chrono::DateTime::parse_from_rfc3339(&c.time)
            .map(|t| t.timestamp_micros())
            .is_ok_and(|t| {
                walk.signed_times
                    .get(&c.seq)
                    .is_some_and(|at| t + FUTURE_SKEW_US < *at)
            })
        {
            brk(
                c.seq,
                format!(
                    "the checkpoint at seq {} is dated before the event it signs (backdated)",
                    c.seq
                ),
                walk,
            );
        } else if walk.signed_hashes.get(&c.seq) != Some(&c.hash) {
            brk(
                c.seq,
                format!(
                    "the event at seq {} is not the one signed (rewritten)",
                    c.seq
                ),
                walk,
            );
        } else if c.closed && walk.last_seq > c.seq {
            brk(
                c.seq + 1,
                format!(
                    "{} event(s) after the chain's final checkpoint at seq {} (appended after it was closed: forged)",
                    walk.last_seq - c.seq,
                    c.seq
                ),
                walk,
            );
        }
        covered = covered.max(c.seq);
        if !c.adopted {
            own = own.max(c.seq);
        }
    }
    // With keys to check by, a chain that no key of theirs ever signed —
    // no opening, no checkpoint — is not a chain a writer made: rows
    // inserted by other means (or a log written without a signing key).
    if whole && key.is_some() && !opened && covered == 0 && walk.last_seq > 0 {
        brk(
            1,
            "unsigned chain: no checkpoint signed by a key given opens or covers it (inserted by other means, or written without audit.signing_key)".into(),
            walk,
        );
    }
    if whole && own == 0 && covered > 0 {
        // No instance signs a chain its own writer never signed.
        brk(
            covered,
            "signed only by other instances: its own writer never signed it (a chain no writer made)".into(),
            walk,
        );
    } else if covered > own {
        report.adopted.push(Adopted {
            chain_id: chain.to_owned(),
            own_seq: own,
            seq: covered,
        });
    }
    if (key.is_some() || !signed.is_empty()) && walk.last_seq > covered {
        report.uncovered.push(Uncovered {
            chain_id: chain.to_owned(),
            after_seq: covered,
            events: walk.last_seq - covered,
        });
    }
}

fn check_page(page: &[Row], walk: &mut ChainWalk, registered: &[String], breaks: &mut Vec<Break>) {
    for row in page {
        walk.events += 1;
        // After a break, only `--all` goes on checking (from the event
        // that broke the chain, as if it were sound).
        if walk.broken && !walk.all {
            continue;
        }
        match check(row, walk, registered) {
            Ok(()) => walk.valid += 1,
            Err(reason) => {
                walk.broken = true;
                breaks.push(Break {
                    chain_id: row.chain_id.clone(),
                    seq: row.seq,
                    event_id: row.event_id.clone(),
                    reason,
                });
            }
        }
        walk.expected_seq = row.seq + 1;
        walk.prev = row.hash.clone();
        walk.last_seq = walk.last_seq.max(row.seq);
        if let Some(h) = walk.signed_hashes.get_mut(&row.seq) {
            h.clone_from(&row.hash);
            walk.signed_times.insert(row.seq, row.time_us);
        }
    }
}

/// How far in the future an event's time may be (clocks disagree a
/// little; a forged event dated later never grows old enough to be
/// overdue).
const FUTURE_SKEW_US: i64 = 10 * 60 * 1_000_000;

fn check(row: &Row, walk: &ChainWalk, registered: &[String]) -> Result<(), String> {
    if walk.events == 1 && !registered.contains(&row.chain_id) {
        return Err("the chain was never registered by a writer (inserted)".into());
    }
    if row.time_us > chrono::Utc::now().timestamp_micros() + FUTURE_SKEW_US {
        return Err("the event is dated in the future (forged, or a clock far ahead)".into());
    }
    if row.seq != walk.expected_seq {
        return Err(format!(
            "expected seq {} but found {}: events are missing (deleted)",
            walk.expected_seq, row.seq
        ));
    }
    if row.prev_hash != walk.prev {
        return Err(
            "prev_hash does not match the previous event's hash (deleted, inserted or reordered)"
                .into(),
        );
    }
    if chain_hash(&row.prev_hash, &row.body) != row.hash {
        return Err("hash does not match the event's contents (edited)".into());
    }
    let head: Head = serde_json::from_str(&row.body)
        .map_err(|_| "the event is not an event (edited)".to_owned())?;
    if head.chain_id != row.chain_id || head.seq != row.seq {
        return Err(
            "the event was hashed at another place in the chain (reordered or moved)".into(),
        );
    }
    let opt = |a: &Option<Cow<'_, str>>, b: &Option<String>| a.as_deref() == b.as_deref();
    let rules: Vec<String> = head.rules.iter().map(|r| r.to_string()).collect();
    let columns_match = head.event_id == row.event_id
        && head.exchange_id == row.exchange_id
        && head.kind == row.kind
        && opt(&head.operation, &row.index.operation)
        && opt(&head.org_id, &row.index.org_id)
        && opt(&head.connection_id, &row.index.connection_id)
        && opt(&head.caller, &row.index.caller)
        && head.decision.as_deref() == row.index.decision.map(Decision::as_str)
        && rules_column(&rules) == rules_column(&row.index.rules)
        && chrono::DateTime::parse_from_rfc3339(&head.time)
            .map(|t| t.timestamp_micros())
            .ok()
            == Some(row.time_us);
    if !columns_match {
        return Err("an indexed column differs from the hashed event (edited)".into());
    }
    Ok(())
}
