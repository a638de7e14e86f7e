//! The audit log: append-only, hash-chained records of every governed
//! exchange, in SQLite or Postgres (DESIGN §5).
//!
//! Each running instance writes one chain: its events carry `seq`,
//! `prev_hash` and `hash = SHA-256(prev_hash ‖ canonical event)`. The
//! canonical bytes are stored exactly as hashed, so verification never
//! depends on how a database hands JSON back. Replicas each have their own
//! chain and never serialise on each other.

pub mod approvals;
pub mod bundle;
pub mod events;
pub mod query;
pub mod replay;
pub mod signing;
pub mod store;
pub mod verify;
pub mod writer;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

pub use store::{Store, StoreError};

use crate::policy::Decision;
pub use writer::{AuditError, AuditLog};

/// The `prev_hash` of a chain's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kinds of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Written and committed before anything is forwarded.
    Decision,
    /// What the tenant answered, or the transport error.
    Outcome,
    /// A scan of the tenant's associations as they stand.
    Scan,
    /// A change the tenant's log shows that did not pass through tollgate.
    Observed,
    /// An approval granted: who, why, and the request it binds.
    Approval,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Outcome => "outcome",
            Kind::Scan => "scan",
            Kind::Observed => "observed",
            Kind::Approval => "approval",
        }
    }
}

/// The indexed facts of an event, kept in columns for the query filters and
/// checked against the hashed body by `audit verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub operation: Option<String>,
    pub org_id: Option<String>,
    pub connection_id: Option<String>,
    /// The caller's client id (or API key name).
    pub caller: Option<String>,
    pub decision: Option<Decision>,
    /// Ids of the rules that matched.
    pub rules: Vec<String>,
}

/// An event before it joins a chain.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub exchange_id: String,
    pub kind: Kind,
    pub time: DateTime<Utc>,
    pub index: Index,
    /// The event's details, already serialised (compact JSON).
    pub data: Box<RawValue>,
}

/// An event in a chain, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub chain_id: String,
    pub seq: i64,
    pub event_id: String,
    pub exchange_id: String,
    pub kind: String,
    pub time_us: i64,
    pub index: Index,
    pub prev_hash: String,
    pub hash: String,
    /// The canonical event, exactly as hashed.
    pub body: String,
}

/// The position at the end of one writer's chain.
#[derive(Clone, Debug)]
pub struct ChainHead {
    pub chain_id: String,
    pub seq: i64,
    pub hash: String,
}

impl ChainHead {
    /// A new chain.
    pub fn new(chain_id: String) -> ChainHead {
        ChainHead {
            chain_id,
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }

    /// Appends an event to the chain, returning its row.
    pub fn link(&mut self, event: &NewEvent) -> Row {
        let seq = self.seq + 1;
        let event_id = uuid::Uuid::now_v7().to_string();
        let body = canonical(&self.chain_id, seq, &event_id, event);
        let hash = chain_hash(&self.hash, &body);
        let row = Row {
            chain_id: self.chain_id.clone(),
            seq,
            event_id,
            exchange_id: event.exchange_id.clone(),
            kind: event.kind.as_str().to_owned(),
            time_us: event.time.timestamp_micros(),
            index: event.index.clone(),
            prev_hash: self.hash.clone(),
            hash: hash.clone(),
            body,
        };
        self.seq = seq;
        self.hash = hash;
        row
    }
}

/// `SHA-256(prev_hash ‖ body)`, hex.
pub fn chain_hash(prev_hash: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// The canonical bytes of an event: compact JSON, keys in a fixed order,
/// `data` as serialised by the event's builder.
fn canonical(chain_id: &str, seq: i64, event_id: &str, e: &NewEvent) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        chain_id: &'a str,
        seq: i64,
        event_id: &'a str,
        exchange_id: &'a str,
        kind: &'a str,
        time: String,
        operation: Option<&'a str>,
        org_id: Option<&'a str>,
        connection_id: Option<&'a str>,
        caller: Option<&'a str>,
        decision: Option<&'a str>,
        rules: &'a [String],
        data: &'a RawValue,
    }
    serde_json::to_string(&Canonical {
        chain_id,
        seq,
        event_id,
        exchange_id: &e.exchange_id,
        kind: e.kind.as_str(),
        time: format_time(e.time),
        operation: e.index.operation.as_deref(),
        org_id: e.index.org_id.as_deref(),
        connection_id: e.index.connection_id.as_deref(),
        caller: e.index.caller.as_deref(),
        decision: e.index.decision.map(Decision::as_str),
        rules: &e.index.rules,
        data: &e.data,
    })
    .expect("strings and checked JSON serialise")
}

/// RFC 3339, UTC, microseconds: what the log shows.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `,a,b,` for the `rules` column, so `LIKE '%,a,%'` finds a rule.
pub fn rules_column(rules: &[String]) -> Option<String> {
    (!rules.is_empty()).then(|| format!(",{},", rules.join(",")))
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    // Query values too: `?password=…`, `?sslkey=…`.
    let url = crate::route::redact_target(url);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.clone(),
            }
        }
        _ => url,
    }
}
