//! `audit verify`: recomputes every chain and reports, in the manner of
//! `aws cloudtrail validate-logs`, how many events and chains are valid and
//! where the first break of each chain is.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{GENESIS, Row, Store, StoreError, chain_hash, rules_column};

/// Rows read per round trip.
const PAGE: i64 = 5000;

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
}

impl Report {
    pub fn ok(&self) -> bool {
        self.breaks.is_empty()
    }
}

#[derive(Default)]
struct ChainWalk {
    expected_seq: i64,
    prev: String,
    broken: bool,
    events: u64,
    valid: u64,
}

/// Walks every chain in order and checks each event: its place (seq, link
/// to the previous hash), its hash, and that its indexed columns say what
/// its hashed body says.
pub async fn verify(store: &Store) -> Result<Report, StoreError> {
    let registered = store.chains().await?;
    let mut walks: BTreeMap<String, ChainWalk> = BTreeMap::new();
    let mut breaks = Vec::new();
    let mut cursor: Option<(String, i64)> = None;
    loop {
        let page = store
            .rows_after(cursor.as_ref().map(|(c, s)| (c.as_str(), *s)), PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        cursor = Some((last.chain_id.clone(), last.seq));
        for row in &page {
            let walk = walks
                .entry(row.chain_id.clone())
                .or_insert_with(|| ChainWalk {
                    expected_seq: 1,
                    prev: GENESIS.to_owned(),
                    ..ChainWalk::default()
                });
            walk.events += 1;
            if walk.broken {
                continue;
            }
            match check(row, walk, &registered) {
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
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    Ok(Report {
        chains: walks.len(),
        valid_chains: walks.values().filter(|w| !w.broken).count(),
        events: walks.values().map(|w| w.events).sum(),
        valid_events: walks.values().map(|w| w.valid).sum(),
        breaks,
    })
}

fn check(row: &Row, walk: &ChainWalk, registered: &[String]) -> Result<(), String> {
    if walk.expected_seq == 1 && !registered.contains(&row.chain_id) {
        return Err("the chain was never registered by a writer (inserted)".into());
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
    let body: Value =
        serde_json::from_str(&row.body).map_err(|_| "the event is not JSON (edited)".to_owned())?;
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    if s("chain_id").as_deref() != Some(&row.chain_id)
        || body.get("seq").and_then(Value::as_i64) != Some(row.seq)
    {
        return Err(
            "the event was hashed at another place in the chain (reordered or moved)".into(),
        );
    }
    let rules: Vec<String> = body
        .get("rules")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let columns_match = s("event_id").as_deref() == Some(&row.event_id)
        && s("exchange_id").as_deref() == Some(&row.exchange_id)
        && s("kind").as_deref() == Some(&row.kind)
        && s("operation") == row.index.operation
        && s("org_id") == row.index.org_id
        && s("connection_id") == row.index.connection_id
        && s("caller") == row.index.caller
        && s("decision") == row.index.decision
        && rules_column(&rules) == rules_column(&row.index.rules)
        && s("time")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_micros())
            == Some(row.time_us);
    if !columns_match {
        return Err("an indexed column differs from the hashed event (edited)".into());
    }
    Ok(())
}
