//! The association as rules see it: `before` and `after` always carry every
//! field of DESIGN §1 (null where unknown), so a rule never fails on a
//! missing key, and `after` is where the request leads.

use serde_json::{Map, Value};

use crate::route::Operation;

use crate::association::{normalize, tenant_defaults};

/// `before`: the association as it stands, or null when it does not exist.
pub fn before(current: Option<&Map<String, Value>>) -> Value {
    current.map_or(Value::Null, |m| Value::Object(normalize(m)))
}

/// `after`: the association as it will stand if the request succeeds —
/// `before` merged with the body for updates, the tenant's defaults merged
/// with the body for creates, null for deletes.
pub fn after(
    op: Operation,
    connection_id: Option<&str>,
    before: Option<&Map<String, Value>>,
    body: &Map<String, Value>,
) -> Value {
    if op.is_delete() {
        return Value::Null;
    }
    let mut state = if op.is_create() {
        tenant_defaults()
    } else {
        before.cloned().unwrap_or_default()
    };
    for (k, v) in body {
        state.insert(k.clone(), v.clone());
    }
    if let Some(cid) = connection_id {
        state.insert("connection_id".into(), Value::from(cid));
    }
    Value::Object(normalize(&state))
}
