//! Two-person approvals, kept in the store so every replica honours an
//! approval made through any other. An approval binds the exact request
//! that was judged — operation, canonical path, the body's hash, the
//! caller — is used at most once (an atomic update), and expires.

use serde::Serialize;
use sqlx::Row as _;

use super::{Store, StoreError};

/// What an approval is for, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub id: String,
    pub created: String,
    pub expires: String,
    pub operation: String,
    pub path: String,
    pub body_hash: String,
    /// The requester: client id or API key name.
    pub caller: String,
    pub subject: Option<String>,
    /// The approvable rules that denied the request.
    pub rules: Vec<String>,
    /// The fingerprint of the identity that asked (client id and subject,
    /// or API key name) and the tenant: only that identity, in front of
    /// that tenant, may use it. See [`binding`].
    #[serde(skip)]
    pub binding: String,
    /// The denied exchange that asked.
    pub exchange_id: String,
    /// `pending`, `approved` or `used`.
    pub status: String,
    pub approver: Option<String>,
    pub reason: Option<String>,
    /// The exchange it let through.
    pub used_by: Option<String>,
}

impl Approval {
    /// The chained `approval` event of a grant: an approval is honoured
    /// only if the log holds this event for it, so a row written straight
    /// into the approvals table releases nothing.
    pub fn granted_event(&self) -> super::NewEvent {
        super::NewEvent {
            exchange_id: self.id.clone(),
            kind: super::Kind::Approval,
            time: chrono::Utc::now(),
            index: super::Index {
                operation: Some(self.operation.clone()),
                caller: self.approver.clone(),
                rules: self.rules.clone(),
                ..super::Index::default()
            },
            // Strings only: it serialises.
            data: serde_json::value::to_raw_value(&Granted::of(self))
                .expect("an approval serialises"),
        }
    }

    /// Whether `event` (a stored event's body) records this grant.
    pub fn granted_by(&self, stored_body: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(stored_body)
            .ok()
            .and_then(|b| serde_json::from_value::<GrantedOwned>(b["data"].clone()).ok())
            .is_some_and(|g| g.matches(self))
    }
}

/// What a grant's event records.
#[derive(Serialize)]
struct Granted<'a> {
    id: &'a str,
    operation: &'a str,
    path: &'a str,
    body_hash: &'a str,
    caller: &'a str,
    rules: &'a [String],
    binding: &'a str,
    approver: Option<&'a str>,
    reason: Option<&'a str>,
}

impl<'a> Granted<'a> {
    fn of(a: &'a Approval) -> Granted<'a> {
        Granted {
            id: &a.id,
            operation: &a.operation,
            path: &a.path,
            body_hash: &a.body_hash,
            caller: &a.caller,
            rules: &a.rules,
            binding: &a.binding,
            approver: a.approver.as_deref(),
            reason: a.reason.as_deref(),
        }
    }
}

#[derive(serde::Deserialize)]
struct GrantedOwned {
    id: String,
    operation: String,
    path: String,
    body_hash: String,
    caller: String,
    rules: Vec<String>,
    /// Absent from grants made before approvals were bound to the whole
    /// identity: those match no approval.
    #[serde(default)]
    binding: String,
    approver: Option<String>,
    reason: Option<String>,
}

impl GrantedOwned {
    fn matches(&self, a: &Approval) -> bool {
        self.id == a.id
            && self.operation == a.operation
            && self.path == a.path
            && self.body_hash == a.body_hash
            && self.caller == a.caller
            && self.rules == a.rules
            && !self.binding.is_empty()
            && self.binding == a.binding
            && self.approver == a.approver
            && self.reason == a.reason
    }
}

/// The request an approval is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub operation: &'a str,
    pub path: &'a str,
    pub body_hash: &'a str,
    pub caller: &'a str,
    /// The approvable rules that deny it, sorted, comma-joined: an approval
    /// covers only the rules it was asked (and granted) for.
    pub rules: &'a str,
    /// The identity and tenant it is bound to ([`binding`]).
    pub binding: &'a str,
}

/// The fingerprint an approval is bound to: the requester's client id,
/// subject and API key name as the request carried them, and the tenant
/// (`upstream.url`, normalised as the lock keys are). A token with the same
/// client id and another subject is another requester.
pub fn binding(
    client_id: Option<&str>,
    subject: Option<&str>,
    key: Option<&str>,
    tenant: &str,
) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in [client_id, subject, key, Some(tenant)] {
        // A field absent and a field empty are different identities.
        match part {
            Some(p) => {
                h.update([1]);
                h.update(p.as_bytes());
            }
            None => h.update([0]),
        }
        h.update([0xff]);
    }
    hex::encode(h.finalize())
}

/// A name as the self-approval check compares it: Unicode compatibility
/// forms folded, accents and invisible characters dropped, case folded,
/// spaces trimmed, without the `@clients` suffix Auth0 gives a machine
/// client's subject or an identity provider's `provider|` prefix.
pub fn same_identity(a: &str, b: &str) -> bool {
    fn fold(s: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        use unicode_normalization::char::is_combining_mark;
        // Compatibility forms (fullwidth letters, the Kelvin sign) as their
        // plain letters, accents and invisible characters dropped, dotless
        // and dotted i as i: one spelling per name a person would read.
        let plain: String = s
            .nfkd()
            .filter(|c| !is_combining_mark(*c) && !invisible(*c))
            .flat_map(char::to_lowercase)
            .map(|c| if c == 'ı' { 'i' } else { c })
            .collect();
        let s = plain.trim();
        let s = s.strip_suffix("@clients").unwrap_or(s);
        let s = s.rsplit('|').next().unwrap_or(s);
        s.trim().to_owned()
    }
    fn invisible(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
    }
    let (a, b) = (fold(a), fold(b));
    !a.is_empty() && a == b
}

const COLUMNS: &str = "id, created_us, expires_us, operation, path, body_hash, caller, subject, rules, binding, exchange_id, status, approver, reason, used_by";

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(super::format_time)
        .unwrap_or_default()
}

fn decode<R: sqlx::Row>(r: &R) -> Result<Approval, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let rules: String = r.try_get("rules")?;
    let expires_us: i64 = r.try_get("expires_us")?;
    let mut status: String = r.try_get("status")?;
    // Past its time, a pending or approved one is expired.
    if status != "used" && expires_us <= chrono::Utc::now().timestamp_micros() {
        status = "expired".into();
    }
    Ok(Approval {
        id: r.try_get("id")?,
        created: time(r.try_get("created_us")?),
        expires: time(r.try_get("expires_us")?),
        operation: r.try_get("operation")?,
        path: r.try_get("path")?,
        body_hash: r.try_get("body_hash")?,
        caller: r.try_get("caller")?,
        subject: r.try_get("subject")?,
        rules: rules
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        binding: r.try_get("binding")?,
        exchange_id: r.try_get("exchange_id")?,
        status,
        approver: r.try_get("approver")?,
        reason: r.try_get("reason")?,
        used_by: r.try_get("used_by")?,
    })
}

/// ` AND` the clauses binding an approval to `request`, unexpired at `now`.
macro_rules! push_request {
    ($qb:expr, $request:expr, $now:expr) => {
        $qb.push_bind($request.operation.to_owned())
            .push(" AND path = ")
            .push_bind($request.path.to_owned())
            .push(" AND body_hash = ")
            .push_bind($request.body_hash.to_owned())
            .push(" AND caller = ")
            .push_bind($request.caller.to_owned())
            .push(" AND rules = ")
            .push_bind($request.rules.to_owned())
            .push(" AND binding = ")
            .push_bind($request.binding.to_owned())
            .push(" AND expires_us > ")
            .push_bind($now)
    };
}

macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

impl Store {
    /// Asks for an approval of `request` (denied by `rules` in exchange
    /// `exchange_id`), pending until `expires_us`.
    pub async fn ask_approval(
        &self,
        id: &str,
        request: &Request<'_>,
        subject: Option<&str>,
        exchange_id: &str,
        expires_us: i64,
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        on_pool!(self, pool => {
            let mut qb = sqlx::QueryBuilder::new(format!("INSERT INTO tollgate_approvals ({COLUMNS}) VALUES ("));
            let mut list = qb.separated(", ");
            list.push_bind(id.to_owned())
                .push_bind(now)
                .push_bind(expires_us)
                .push_bind(request.operation.to_owned())
                .push_bind(request.path.to_owned())
                .push_bind(request.body_hash.to_owned())
                .push_bind(request.caller.to_owned())
                .push_bind(subject.map(str::to_owned))
                .push_bind(request.rules.to_owned())
                .push_bind(request.binding.to_owned())
                .push_bind(exchange_id.to_owned())
                .push_bind("pending")
                .push_bind(None::<String>)
                .push_bind(None::<String>)
                .push_bind(None::<String>);
            qb.push(")");
            qb.build().execute(pool).await?;
        });
        Ok(())
    }

    /// A pending, unexpired approval of exactly `request`, if one was
    /// asked for already (a client that retries gets the same one).
    pub async fn pending_approval(
        &self,
        request: &Request<'_>,
    ) -> Result<Option<Approval>, StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        on_pool!(self, pool => {
            let mut qb = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM tollgate_approvals WHERE status = 'pending' AND operation = "));
            push_request!(qb, request, now).push(" ORDER BY created_us LIMIT 1");
            let row = qb.build().fetch_optional(pool).await?;
            row.as_ref().map(decode).transpose().map_err(Into::into)
        })
    }

    /// One approval.
    pub async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        on_pool!(self, pool => {
            let mut qb = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM tollgate_approvals WHERE id = "));
            qb.push_bind(id.to_owned());
            let row = qb.build().fetch_optional(pool).await?;
            row.as_ref().map(decode).transpose().map_err(Into::into)
        })
    }

    /// The newest approvals, pending and past.
    pub async fn approvals(&self, limit: i64) -> Result<Vec<Approval>, StoreError> {
        on_pool!(self, pool => {
            // Pending ones first: they are the ones waiting for someone.
            let mut qb = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM tollgate_approvals ORDER BY CASE WHEN status = 'pending' THEN 0 ELSE 1 END, created_us DESC LIMIT "));
            qb.push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, _>>().map_err(Into::into)
        })
    }

    /// Approves a pending, unexpired approval; `false`: it is not one.
    pub async fn approve(
        &self,
        id: &str,
        approver: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        let done = on_pool!(self, pool => {
            let mut qb = sqlx::QueryBuilder::new("UPDATE tollgate_approvals SET status = 'approved', approver = ");
            qb.push_bind(approver.to_owned())
                .push(", reason = ")
                .push_bind(reason.to_owned())
                .push(", approved_us = ")
                .push_bind(now)
                .push(" WHERE id = ")
                .push_bind(id.to_owned())
                .push(" AND status = 'pending' AND expires_us > ")
                .push_bind(now);
            qb.build().execute(pool).await?.rows_affected()
        });
        Ok(done == 1)
    }

    /// Uses an approved, unexpired approval of exactly `request` for
    /// exchange `used_by`: at most once, whichever replica asks first.
    pub async fn use_approval(
        &self,
        request: &Request<'_>,
        used_by: &str,
    ) -> Result<Option<Approval>, StoreError> {
        let now = chrono::Utc::now().timestamp_micros();
        let ids: Vec<String> = on_pool!(self, pool => {
            let mut qb = sqlx::QueryBuilder::new("SELECT id FROM tollgate_approvals WHERE status = 'approved' AND operation = ");
            push_request!(qb, request, now).push(" ORDER BY approved_us");
            qb.build().fetch_all(pool).await?.iter().map(|r| r.try_get::<String, _>("id")).collect::<Result<_, _>>()?
        });
        for id in ids {
            let taken = on_pool!(self, pool => {
                let mut qb = sqlx::QueryBuilder::new("UPDATE tollgate_approvals SET status = 'used', used_by = ");
                qb.push_bind(used_by.to_owned())
                    .push(" WHERE id = ")
                    .push_bind(id.clone())
                    .push(" AND status = 'approved'");
                qb.build().execute(pool).await?.rows_affected()
            });
            if taken == 1 {
                return self.approval(&id).await;
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::same_identity;

    #[test]
    fn self_approval_sees_through_spellings_of_one_name() {
        for spelling in [
            "alice",
            "ALICE",
            " Alice ",
            "alice@clients",
            "auth0|alice",
            "ａｌｉｃｅ",
            "alice\u{200b}",
            "al\u{0131}ce",
            "AL\u{0130}CE",
            "álice",
            "google-oauth2|Alice@clients",
        ] {
            assert!(same_identity(spelling, "alice"), "{spelling:?}");
        }
        assert!(same_identity("k-bot", "\u{212A}-bot"), "the Kelvin sign");
        for other in ["bob", "alice2", "", "   "] {
            assert!(!same_identity(other, "alice"), "{other:?}");
        }
    }
}
