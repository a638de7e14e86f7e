//! The organization–connection association, declared once: its fields,
//! their types, which family accepts them and the values the tenant gives a
//! new one. The schema validates request bodies by this table, `before` and
//! `after` carry every field of it, the post-check reads it from the
//! tenant's answer, and the sandbox stores and checks associations by it.
//!
//! A new association field is one line here (plus its tests).

use serde_json::{Map, Value};

/// The access levels of the organization-connection family.
pub const ACCESS_LEVELS: [&str; 4] = ["none", "readonly", "limited", "full"];

/// What a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// The connection's id: named by the path, or by a create's body.
    Id,
    /// A string of 1–50 characters (UTF-16 code units) without NUL, or null.
    Name,
    Bool,
    /// One of [`ACCESS_LEVELS`]; null only on update.
    AccessLevel,
    /// A boolean; null only on update.
    NullableOnUpdateBool,
}

impl Type {
    /// Whether a value the tenant answered is of this type (null always is:
    /// an unset field).
    pub fn holds(self, value: &Value) -> bool {
        match self {
            Type::Bool | Type::NullableOnUpdateBool => value.is_boolean() || value.is_null(),
            Type::Id | Type::Name | Type::AccessLevel => value.is_string() || value.is_null(),
        }
    }
}

/// A new association's value for a field the request leaves unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initial {
    /// None: the field names the association (`connection_id`).
    Given,
    Null,
    Bool(bool),
    Text(&'static str),
}

/// One field of the association.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Type,
    /// Accepted by the legacy `enabled_connections` family too.
    pub legacy: bool,
    pub initial: Initial,
}

const fn field(name: &'static str, ty: Type, legacy: bool, initial: Initial) -> Field {
    Field {
        name,
        ty,
        legacy,
        initial,
    }
}

/// Every field, in the order `before` and `after` carry them (DESIGN §1).
pub const FIELDS: [Field; 8] = [
    field("connection_id", Type::Id, false, Initial::Given),
    field(
        "organization_connection_name",
        Type::Name,
        false,
        Initial::Null,
    ),
    field(
        "assign_membership_on_login",
        Type::Bool,
        true,
        Initial::Bool(false),
    ),
    field("show_as_button", Type::Bool, true, Initial::Bool(true)),
    field("is_signup_enabled", Type::Bool, true, Initial::Bool(false)),
    field(
        "organization_access_level",
        Type::AccessLevel,
        false,
        Initial::Text("none"),
    ),
    field(
        "organization_member_access_level",
        Type::AccessLevel,
        false,
        Initial::Text("none"),
    ),
    field(
        "is_enabled",
        Type::NullableOnUpdateBool,
        false,
        Initial::Bool(true),
    ),
];

/// The field called `name`.
pub fn field_named(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The fields a family's body may set (`connection_id` is the create's
/// id, not a field).
pub fn settable(legacy: bool) -> impl Iterator<Item = &'static Field> {
    FIELDS
        .iter()
        .filter(move |f| f.ty != Type::Id && (f.legacy || !legacy))
}

/// The values the tenant gives a new association's unset fields.
pub fn tenant_defaults() -> Map<String, Value> {
    FIELDS
        .iter()
        .filter_map(|f| {
            let value = match f.initial {
                Initial::Given => return None,
                Initial::Null => Value::Null,
                Initial::Bool(b) => Value::Bool(b),
                Initial::Text(t) => Value::from(t),
            };
            Some((f.name.to_owned(), value))
        })
        .collect()
}

/// Checks that an association as the tenant answered it has the shape rules
/// rely on: every field it carries of the declared type, or null. A tenant
/// answering `"is_signup_enabled": "yes"` must not read as "not enabled".
pub fn check_shape(association: &Map<String, Value>) -> Result<(), String> {
    for (name, value) in association {
        if let Some(f) = field_named(name)
            && !f.ty.holds(value)
        {
            return Err(format!("{name} is {value}, not of its type"));
        }
    }
    Ok(())
}

/// Every field, from `source` where it has it, else null.
pub fn normalize(source: &Map<String, Value>) -> Map<String, Value> {
    FIELDS
        .iter()
        .map(|f| {
            (
                f.name.to_owned(),
                source.get(f.name).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_every_field_but_the_id() {
        let d = tenant_defaults();
        assert_eq!(d.len(), FIELDS.len() - 1);
        assert!(!d.contains_key("connection_id"));
        assert_eq!(d["show_as_button"], Value::Bool(true));
        assert_eq!(d["organization_access_level"], Value::from("none"));
    }

    #[test]
    fn the_legacy_family_sets_three_fields() {
        let legacy: Vec<&str> = settable(true).map(|f| f.name).collect();
        assert_eq!(
            legacy,
            [
                "assign_membership_on_login",
                "show_as_button",
                "is_signup_enabled"
            ]
        );
        assert_eq!(settable(false).count(), 7);
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused() {
        let m = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(check_shape(&m(serde_json::json!({"is_signup_enabled": "yes"}))).is_err());
        assert!(check_shape(&m(serde_json::json!({"organization_access_level": 1}))).is_err());
        assert!(check_shape(&m(serde_json::json!({"is_enabled": null, "extra": 1}))).is_ok());
    }
}
