//! Export bundles: the events of a time window as stored, the signed
//! checkpoints that cover them, the public key and a manifest with the
//! files' hashes — everything an auditor needs to verify the log on another
//! machine, without the database.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::signing::{Checkpoint, Keys};
use super::verify::{self, Report};
use super::{Index, Row, Store, StoreError};

const FORMAT: &str = "tollgate-audit-bundle/1";
const EVENTS: &str = "events.jsonl";
const CHECKPOINTS: &str = "checkpoints.json";
const PUBLIC_KEY: &str = "public.key";
const MANIFEST: &str = "manifest.json";
/// The manifest's Ed25519 signature, hex: the whole bundle, signed.
const SIGNATURE: &str = "manifest.sig";

/// A bundle could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Invalid(String),
}

/// One event as stored, every column.
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    chain_id: String,
    seq: i64,
    event_id: String,
    exchange_id: String,
    kind: String,
    time_us: i64,
    index: Index,
    prev_hash: String,
    hash: String,
    /// The canonical event, exactly as hashed.
    body: String,
}

impl StoredEvent {
    fn of(r: &Row) -> StoredEvent {
        StoredEvent {
            chain_id: r.chain_id.clone(),
            seq: r.seq,
            event_id: r.event_id.clone(),
            exchange_id: r.exchange_id.clone(),
            kind: r.kind.clone(),
            time_us: r.time_us,
            index: r.index.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
            body: r.body.clone(),
        }
    }

    fn row(self) -> Row {
        Row {
            chain_id: self.chain_id,
            seq: self.seq,
            event_id: self.event_id,
            exchange_id: self.exchange_id,
            kind: self.kind,
            time_us: self.time_us,
            index: self.index,
            prev_hash: self.prev_hash,
            hash: self.hash,
            body: self.body,
        }
    }
}

/// A chain's part of the bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChainRange {
    pub chain_id: String,
    pub first_seq: i64,
    pub last_seq: i64,
    /// The hash the first event links to (the genesis, or an event before
    /// the window).
    pub first_prev_hash: String,
}

/// What the bundle holds, with each file's SHA-256.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub created: String,
    pub since: String,
    pub until: String,
    pub chains: Vec<ChainRange>,
    pub files: BTreeMap<String, String>,
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    files: &mut BTreeMap<String, String>,
) -> Result<(), BundleError> {
    std::fs::write(dir.join(name), bytes)
        .map_err(|e| BundleError::Io(format!("{}: {e}", dir.join(name).display())))?;
    files.insert(name.to_owned(), sha256(bytes));
    Ok(())
}

/// Writes the events in `[since_us, until_us)` — each chain's contiguous
/// stretch from the first to the last event in the window — with the
/// checkpoints that fall in it (the store's, and `kept`: those kept as
/// files) and `key`, into `out`.
pub async fn export(
    store: &Store,
    since_us: i64,
    until_us: i64,
    key: Option<&Keys>,
    signer: Option<&super::signing::SigningKey>,
    kept: &[Checkpoint],
    out: &Path,
) -> Result<Manifest, BundleError> {
    std::fs::create_dir_all(out).map_err(|e| BundleError::Io(format!("{}: {e}", out.display())))?;
    // The store's checkpoints, and those kept as files that it lost: the
    // bundle outlives the store with every signature there is.
    let mut checkpoints = store.checkpoints().await?.good;
    let known: std::collections::HashSet<Checkpoint> = checkpoints.iter().cloned().collect();
    checkpoints.extend(kept.iter().filter(|c| !known.contains(*c)).cloned());
    let mut events = String::new();
    let mut chains = Vec::new();
    let mut kept = Vec::new();
    for chain in store.event_chains().await? {
        let mut rows = Vec::new();
        // Every row of the chain, whatever its seq: rows placed at seq 0 or
        // below go into the bundle, where they break the chain.
        let mut after = i64::MIN;
        loop {
            let page = store.chain_rows(&chain, after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            rows.extend(page);
        }
        let inside: Vec<usize> = (0..rows.len())
            .filter(|&i| (since_us..until_us).contains(&rows[i].time_us))
            .collect();
        let (Some(&first), Some(&last)) = (inside.first(), inside.last()) else {
            continue;
        };
        for r in &rows[first..=last] {
            events.push_str(&serde_json::to_string(&StoredEvent::of(r)).unwrap_or_default());
            events.push('\n');
        }
        let range = ChainRange {
            chain_id: chain.clone(),
            first_seq: rows[first].seq,
            last_seq: rows[last].seq,
            first_prev_hash: rows[first].prev_hash.clone(),
        };
        kept.extend(
            checkpoints
                .iter()
                .filter(|c| {
                    // The chain's opening with its first events: what says
                    // a writer, not the store's owner, began it.
                    let opening = c.seq == 0 && range.first_seq <= 1;
                    c.chain_id == chain
                        && (opening || (range.first_seq..=range.last_seq).contains(&c.seq))
                })
                .cloned(),
        );
        chains.push(range);
    }
    let mut files = BTreeMap::new();
    write(out, EVENTS, events.as_bytes(), &mut files)?;
    let signed = serde_json::to_vec_pretty(&kept).unwrap_or_default();
    write(out, CHECKPOINTS, &signed, &mut files)?;
    if let Some(k) = key {
        write(out, PUBLIC_KEY, k.to_text().as_bytes(), &mut files)?;
    }
    let time = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(super::format_time)
            .unwrap_or_default()
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        created: super::format_time(chrono::Utc::now()),
        since: time(since_us),
        until: time(until_us),
        chains,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    std::fs::write(out.join(MANIFEST), &text)
        .map_err(|e| BundleError::Io(format!("{MANIFEST}: {e}")))?;
    // Signed, the manifest vouches for every file it hashes: nothing in
    // the bundle can be changed, added or left out without the key.
    if let Some(signer) = signer {
        std::fs::write(out.join(SIGNATURE), format!("{}\n", signer.sign(&text)))
            .map_err(|e| BundleError::Io(format!("{SIGNATURE}: {e}")))?;
    }
    Ok(manifest)
}

/// Where the key that verified a bundle came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// Given by the auditor (`--public-key`).
    Given,
    /// The bundle's own `public.key`: it proves only that the bundle agrees
    /// with itself.
    Bundle,
    /// None: the bundle is not signed.
    None,
}

/// A bundle verified: the report, what the bundle covers, and whose key
/// verified it.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub report: Report,
    pub since: String,
    pub until: String,
    /// Each chain's stretch and its event count.
    pub chains: Vec<(String, i64, i64, usize)>,
    pub key: KeySource,
}

/// Verifies a bundle offline: the files against the manifest, each chain's
/// stretch, and the checkpoints with `pinned` (or the bundle's own key).
/// A file in the directory that is not the bundle's own is refused.
pub fn verify(dir: &Path, pinned: Option<&Keys>) -> Result<Verified, BundleError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| BundleError::Io(format!("{}: {e}", dir.join(name).display())))
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| BundleError::Io(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ![MANIFEST, SIGNATURE, EVENTS, CHECKPOINTS, PUBLIC_KEY].contains(&name.as_str()) {
            return Err(BundleError::Invalid(format!(
                "{name:?} is not a file of a bundle: a bundle holds {MANIFEST}, {SIGNATURE}, {EVENTS}, {CHECKPOINTS} and {PUBLIC_KEY} only"
            )));
        }
    }
    let manifest_bytes = read(MANIFEST)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| BundleError::Invalid(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Invalid(format!("not a {FORMAT} bundle")));
    }
    // Only the bundle's own files, each listed.
    if let Some(name) = manifest
        .files
        .keys()
        .find(|n| ![EVENTS, CHECKPOINTS, PUBLIC_KEY].contains(&n.as_str()))
    {
        return Err(BundleError::Invalid(format!(
            "{MANIFEST} lists {name:?}, not a bundle file"
        )));
    }
    for name in [EVENTS, CHECKPOINTS] {
        if !manifest.files.contains_key(name) {
            return Err(BundleError::Invalid(format!(
                "{MANIFEST} does not list {name}"
            )));
        }
    }
    for (name, hash) in &manifest.files {
        if sha256(&read(name)?) != *hash {
            return Err(BundleError::Invalid(format!(
                "{name} does not match its hash in the manifest (altered)"
            )));
        }
    }
    let bundled = match manifest.files.contains_key(PUBLIC_KEY) {
        true => Some(
            Keys::parse(&String::from_utf8_lossy(&read(PUBLIC_KEY)?))
                .map_err(|e| BundleError::Invalid(format!("{PUBLIC_KEY}: {e}")))?,
        ),
        false => None,
    };
    // Given keys are the ones trusted: the bundle may not bring others.
    if let (Some(p), Some(b)) = (pinned, &bundled)
        && let Some(k) = b.iter().find(|k| !p.contains(k))
    {
        return Err(BundleError::Invalid(format!(
            "the bundle's public key {} is not one given with --public-key",
            k.key_id()
        )));
    }
    let key = pinned.or(bundled.as_ref());
    // With a key, the manifest must be signed by it: otherwise whoever
    // rewrote the files could have rewritten the manifest too.
    if let Some(key) = key {
        let signature = std::fs::read_to_string(dir.join(SIGNATURE)).map_err(|_| {
            BundleError::Invalid(format!(
                "{SIGNATURE} is missing: the bundle is not signed (export it where audit.signing_key is set)"
            ))
        })?;
        // By a key that was not retired when the bundle was made: a leaked
        // retired key signs no new bundle.
        if !key.iter().any(|k| {
            !key.retired_before(k, &manifest.created)
                && k.verifies(&manifest_bytes, signature.trim())
        }) {
            return Err(BundleError::Invalid(format!(
                "{MANIFEST} is not signed by the public key (altered, or signed by another key)"
            )));
        }
    }
    let checkpoints: Vec<Checkpoint> = serde_json::from_slice(&read(CHECKPOINTS)?)
        .map_err(|e| BundleError::Invalid(format!("{CHECKPOINTS}: {e}")))?;
    let mut by_chain: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&read(EVENTS)?).lines() {
        let e: StoredEvent = serde_json::from_str(line)
            .map_err(|e| BundleError::Invalid(format!("{EVENTS}: {e}")))?;
        by_chain
            .entry(e.chain_id.clone())
            .or_default()
            .push(e.row());
    }
    let counts: Vec<(String, i64, i64, usize)> = manifest
        .chains
        .iter()
        .map(|c| {
            let n = by_chain.get(&c.chain_id).map_or(0, Vec::len);
            (c.chain_id.clone(), c.first_seq, c.last_seq, n)
        })
        .collect();
    let ranges = manifest.chains.iter().map(|c| {
        let rows = by_chain.remove(&c.chain_id).unwrap_or_default();
        (c.clone(), rows)
    });
    let source = match (pinned, key) {
        (Some(_), _) => KeySource::Given,
        (None, Some(_)) => KeySource::Bundle,
        (None, None) => KeySource::None,
    };
    Ok(Verified {
        report: verify::verify_ranges(ranges, &checkpoints, key),
        since: manifest.since,
        until: manifest.until,
        chains: counts,
        key: source,
    })
}
