//! What the rules read (DESIGN §4), as types: one [`RuleInput`] per
//! request, one [`ChangeInput`] per association it changes.
//!
//! The gateway builds it from the request and the tenant, `policy test` and
//! `policy explain` from a hand-written case, `policy replay` from the
//! record, all through [`RuleInput::new`] and (for a validated change)
//! [`ChangeInput::of`]. The record keeps each change exactly as serialised
//! here, so replay reads back what was judged.
//!
//! A new rule variable is a field here, its conversion in
//! the `variables` method beside it, and its name in [`VARIABLES`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Needs, state};
use crate::identity::Caller;
use crate::route::Operation;
use crate::schema::Change;

/// The variables rules can read (DESIGN §4).
pub const VARIABLES: [&str; 9] = [
    "operation",
    "org",
    "connection",
    "body",
    "before",
    "after",
    "caller",
    "request",
    "now",
];

/// `org`: the organization a change concerns. A new organization has no id
/// yet; one the tenant does not know has no name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// `connection`: the connection a change concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub id: Option<String>,
    pub name: Option<String>,
    /// Whether `strategy` is `auth0` (a database connection).
    #[serde(default)]
    pub is_database: bool,
    pub strategy: Option<String>,
}

impl Connection {
    pub fn new(id: Option<String>, name: Option<String>, strategy: Option<String>) -> Connection {
        Connection {
            id,
            name,
            is_database: strategy.as_deref() == Some("auth0"),
            strategy,
        }
    }
}

/// `request`: the HTTP request, canonical method and path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    pub method: Option<String>,
    pub path: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// One association change as the rules see it. Serialised as the record's
/// `changes[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeInput {
    /// The association operation the change is judged as (the request's,
    /// but for the elements of `organization.create` and `sso_ticket.create`).
    pub operation: Operation,
    /// JSON pointer of the change in the body ("" for the whole body).
    pub pointer: String,
    pub org: Org,
    pub connection: Connection,
    /// The change's body (null for a delete).
    pub body: Value,
    /// The association as it stands: every field, or null if none exists.
    pub before: Value,
    /// The association as the change would leave it (null for a delete).
    pub after: Value,
    /// Which context was fetched from the tenant (what was not is null in
    /// `org`, `connection` or `before`).
    pub fetched: Needs,
}

impl ChangeInput {
    /// The rules' view of a validated change, given its organization, its
    /// connection and the association as it stands (`current`; ignored for
    /// creates, which start from the tenant's defaults).
    pub fn of(
        change: &Change,
        org: Org,
        connection: Connection,
        current: Option<&Map<String, Value>>,
        fetched: Needs,
    ) -> ChangeInput {
        let op = change.operation;
        let current = if op.is_create() { None } else { current };
        let cid = change.connection_id.as_deref().or(connection.id.as_deref());
        ChangeInput {
            operation: op,
            pointer: change.pointer.clone(),
            body: if op.is_delete() {
                Value::Null
            } else {
                Value::Object(change.body.clone())
            },
            before: state::before(current),
            after: state::after(op, cid, current, &change.fields),
            org,
            connection,
            fetched,
        }
    }
}

/// Everything the rules read about one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleInput {
    /// The request's operation: the `operation` variable.
    pub operation: Operation,
    pub caller: Caller,
    pub request: Request,
    pub now: DateTime<Utc>,
    pub changes: Vec<ChangeInput>,
}

impl RuleInput {
    /// The one way a rule input is made: at the gateway, in `policy test`
    /// and `policy explain`, and in `policy replay`.
    pub fn new(
        operation: Operation,
        caller: Caller,
        request: Request,
        now: DateTime<Utc>,
        changes: Vec<ChangeInput>,
    ) -> RuleInput {
        RuleInput {
            operation,
            caller,
            request,
            now,
            changes,
        }
    }

    /// The same request with other changes (the post-check judges the
    /// tenant's answer in place of `after`).
    pub fn with_changes(&self, changes: Vec<ChangeInput>) -> RuleInput {
        RuleInput {
            operation: self.operation,
            caller: self.caller.clone(),
            request: self.request.clone(),
            now: self.now,
            changes,
        }
    }

    /// The request-wide variables `wanted` names, as CEL values.
    pub(super) fn variables(&self, wanted: &[&str]) -> Vec<(&'static str, cel::Value)> {
        let mut out = Vec::new();
        if wanted.contains(&"operation") {
            out.push(("operation", cel::Value::from(self.operation.id())));
        }
        if wanted.contains(&"caller") {
            out.push(("caller", typed(&self.caller.rule_view())));
        }
        if wanted.contains(&"request") {
            out.push(("request", typed(&self.request)));
        }
        if wanted.contains(&"now") {
            out.push(("now", cel::Value::Timestamp(self.now.fixed_offset())));
        }
        out
    }
}

impl ChangeInput {
    /// The change's variables `wanted` names, as CEL values.
    pub(super) fn variables(&self, wanted: &[&str]) -> Vec<(&'static str, cel::Value)> {
        let mut out = Vec::new();
        if wanted.contains(&"org") {
            out.push(("org", typed(&self.org)));
        }
        if wanted.contains(&"connection") {
            out.push(("connection", typed(&self.connection)));
        }
        for (name, value) in [
            ("body", &self.body),
            ("before", &self.before),
            ("after", &self.after),
        ] {
            if wanted.contains(&name) {
                out.push((name, to_cel(value)));
            }
        }
        out
    }
}

/// A typed variable (strings, booleans, lists of strings) as CEL sees it.
fn typed<T: Serialize>(value: &T) -> cel::Value {
    // These types hold only strings, booleans and lists of them.
    cel::to_value(value).unwrap_or(cel::Value::Null)
}

/// A JSON value as CEL sees it. Numbers are kept as written in the request
/// (serde_json's `arbitrary_precision`), so they are converted by value here:
/// an integer that fits is `int` (or `uint`), anything else `double`.
pub(super) fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        Value::Array(items) => {
            cel::Value::List(std::sync::Arc::new(items.iter().map(to_cel).collect()))
        }
        Value::Object(map) => {
            let entries: std::collections::HashMap<String, cel::Value> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(entries)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_kept_as_written_are_judged_by_value() {
        let n = |text: &str| to_cel(&serde_json::from_str::<Value>(text).expect("json"));
        assert_eq!(n("-0"), cel::Value::Int(0));
        assert_eq!(n("1E2"), cel::Value::Float(100.0));
        assert_eq!(n("42"), cel::Value::Int(42));
        assert_eq!(n("18446744073709551615"), cel::Value::UInt(u64::MAX));
        assert_eq!(
            n("18446744073709551616"),
            cel::Value::Float(18446744073709551616.0)
        );
        assert_eq!(n("1e-7"), cel::Value::Float(1e-7));
    }

    #[test]
    fn a_rule_input_reads_back_as_serialised() {
        let input = RuleInput::new(
            Operation::OrganizationConnectionUpdate,
            Caller {
                client_id: Some("ci".into()),
                ..Caller::default()
            },
            Request {
                method: Some("PATCH".into()),
                ..Request::default()
            },
            Utc::now(),
            vec![ChangeInput {
                operation: Operation::OrganizationConnectionUpdate,
                pointer: String::new(),
                org: Org {
                    id: Some("org_1".into()),
                    name: None,
                },
                connection: Connection::new(Some("con_1".into()), None, Some("auth0".into())),
                body: serde_json::json!({"show_as_button": false}),
                before: Value::Null,
                after: Value::Null,
                fetched: Needs::default(),
            }],
        );
        let text = serde_json::to_string(&input).expect("serialises");
        assert!(text.contains(r#""operation":"organization_connection.update""#));
        let back: RuleInput = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, input);
        assert!(back.changes[0].connection.is_database);
    }
}
