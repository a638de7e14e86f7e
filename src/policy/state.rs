//! The association as rules see it: `before` and `after` always carry every
//! field of DESIGN §1 (null where unknown), so a rule never fails on a
//! missing key, and `after` is where the request leads.

use serde_json::{Map, Value};

use crate::route::Operation;

/// The fields of an association, as `before` and `after` carry them.
pub const ASSOCIATION_FIELDS: [&str; 8] = [
    "connection_id",
    "organization_connection_name",
    "assign_membership_on_login",
    "show_as_button",
    "is_signup_enabled",
    "organization_access_level",
    "organization_member_access_level",
    "is_enabled",
];

/// The values the tenant gives a new association's unset fields.
pub fn tenant_defaults() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("assign_membership_on_login".into(), Value::Bool(false));
    m.insert("show_as_button".into(), Value::Bool(true));
    m.insert("is_signup_enabled".into(), Value::Bool(false));
    m.insert("organization_connection_name".into(), Value::Null);
    m.insert("organization_access_level".into(), Value::from("none"));
    m.insert(
        "organization_member_access_level".into(),
        Value::from("none"),
    );
    m.insert("is_enabled".into(), Value::Bool(true));
    m
}

/// Checks that an association as the tenant answered it has the shape rules
/// rely on: every field it carries of the declared type, or null. A tenant
/// answering `"is_signup_enabled": "yes"` must not read as "not enabled".
pub fn check_shape(association: &Map<String, Value>) -> Result<(), String> {
    for (field, value) in association {
        let ok = match field.as_str() {
            "assign_membership_on_login"
            | "show_as_button"
            | "is_signup_enabled"
            | "is_enabled" => value.is_boolean() || value.is_null(),
            "connection_id"
            | "organization_connection_name"
            | "organization_access_level"
            | "organization_member_access_level" => value.is_string() || value.is_null(),
            _ => true,
        };
        if !ok {
            return Err(format!("{field} is {value}, not of its type"));
        }
    }
    Ok(())
}

/// Every association field, from `source` where it has it, else null.
pub fn normalize(source: &Map<String, Value>) -> Map<String, Value> {
    ASSOCIATION_FIELDS
        .iter()
        .map(|f| {
            (
                (*f).to_owned(),
                source.get(*f).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

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
