//! Strict JSON and the seed's field rules: bytes → a judged body, or a 400
//! that names the field.
//!
//! Strictness is about agreement: a duplicate key, a BOM or trailing data is
//! a body two JSON parsers may read differently, so the value tollgate judged
//! might not be the value the tenant applies. Such bodies are refused; what
//! is forwarded is the judged value re-serialised, never the bytes as sent.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::route::{Governed, Operation};

/// How deep objects and arrays may nest. The seed's bodies are two levels
/// deep; organization bodies carry metadata and branding a few more.
pub const MAX_DEPTH: usize = 32;

pub use crate::association::ACCESS_LEVELS;
use crate::association::{self, Type};

/// What to do with a field the schema does not know (`schema.unknown_fields`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// Refuse with 400: a field nobody reviewed is a capability nobody governs.
    #[default]
    Reject,
    /// Forward it and record it.
    Forward,
}

/// A body that is not strict JSON.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    #[error("the body starts with a byte-order mark; send plain UTF-8 JSON")]
    ByteOrderMark,
    #[error("the body is not valid UTF-8")]
    InvalidUtf8,
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("the body is empty; send a JSON object")]
    Empty,
    #[error("invalid JSON: {0}")]
    Syntax(String),
}

/// A body that breaks a field rule of DESIGN §1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Payload validation error: '{message}' on property {pointer}")]
pub struct SchemaError {
    /// JSON pointer of the offending field (`/organization_access_level`).
    pub pointer: String,
    pub message: String,
}

/// Parses a body as one strict JSON object: no BOM, valid UTF-8, no
/// duplicate keys at any depth (after unescaping, so `"a"` and `"\u0061"`
/// collide), nesting at most [`MAX_DEPTH`], nothing after the value.
pub fn parse_strict(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(JsonError::ByteOrderMark);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Err(JsonError::Empty);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict { depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| JsonError::Syntax(e.to_string()))?;
    de.end().map_err(|e| JsonError::Syntax(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

/// Where each number of a JSON text is: byte ranges, in document order.
/// Strings are skipped (a digit inside one is no number).
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                spans.push((start, i));
            }
            _ => i += 1,
        }
    }
    spans
}

/// Every number of a JSON text, as written, in document order.
pub fn number_literals(text: &str) -> Vec<String> {
    number_spans(text)
        .into_iter()
        .map(|(a, b)| text[a..b].to_owned())
        .collect()
}

/// `map` as JSON text, each number spelled as the client spelled it.
///
/// serde_json keeps a number's digits (`arbitrary_precision`) but writes its
/// exponent its own way (`1E2` becomes `1e+2`). A body parsed from a text
/// holds its numbers in that text's order, and re-serialising keeps the
/// order, so the n-th number written is the n-th one read: its literal goes
/// back in its place. The value is the same either way; this keeps the
/// client's bytes.
pub fn to_json_text(map: &Map<String, Value>, literals: &[String]) -> String {
    // A map of JSON values always serialises.
    let text = serde_json::to_string(map).unwrap_or_default();
    let spans = number_spans(&text);
    if spans.len() != literals.len() {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for ((a, b), literal) in spans.into_iter().zip(literals) {
        out.push_str(&text[at..a]);
        out.push_str(literal);
        at = b;
    }
    out.push_str(&text[at..]);
    out
}

/// The key serde_json (with `arbitrary_precision`) gives a number under.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A number's text, as serde_json hands it over: an owned string. A JSON
/// string value in the request (an object using the reserved key) arrives
/// borrowed or escaped instead, and is refused.
struct NumberText;

impl<'de> DeserializeSeed<'de> for NumberText {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NumberText {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<Value, E> {
        serde_json::from_str::<serde_json::Number>(&text)
            .map(Value::Number)
            .map_err(|_| E::custom("invalid number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Value, E> {
        Err(E::custom(format_args!(
            "the key {NUMBER_TOKEN:?} is reserved"
        )))
    }
    fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Value, E> {
        Err(E::custom(format_args!(
            "the key {NUMBER_TOKEN:?} is reserved"
        )))
    }
}

/// A JSON value that refuses duplicate keys and deep nesting.
struct Strict {
    depth: usize,
}

impl Strict {
    fn nested<E: de::Error>(&self) -> Result<Strict, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(Strict {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.nested()?)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // serde_json hands a number over as a one-entry map under this
            // key, its text as the value, so it is kept exactly as written
            // (`-0`, `1E2`, `18446744073709551616`). An object a client
            // sends with the same key is told apart by how its value comes.
            if out.is_empty() && key == NUMBER_TOKEN {
                return map.next_value_seed(NumberText);
            }
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(self.nested()?)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Where an association change takes place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrgRef {
    /// An existing organization, by id or name as the request named it.
    Existing(String),
    /// The organization `POST /organizations` is creating, by its `name`.
    New(Option<String>),
}

/// One association change a request asks for: a single one for the
/// association routes, one per array element for `organization.create` and
/// `sso_ticket.create`. Each is judged on its own; one violation denies all.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The association operation this change is judged as.
    pub operation: Operation,
    pub org: OrgRef,
    /// The connection, where the request names one.
    pub connection_id: Option<String>,
    /// The association fields the request sets (without the id fields).
    pub fields: Map<String, Value>,
    /// The object as sent for this change: the body, or the array element.
    pub body: Map<String, Value>,
    /// JSON pointer of this change in the body ("" for the whole body).
    pub pointer: String,
}

/// A governed request that passed the schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// The judged body, forwarded re-serialised (`None`: no body, a delete).
    pub body: Option<Map<String, Value>>,
    pub changes: Vec<Change>,
    /// JSON pointers of fields the schema does not know, let through by
    /// `schema.unknown_fields = "forward"`.
    pub unknown_fields: Vec<String>,
}

/// Longest id accepted in a body (`connection_id`, `organization_id`).
const MAX_ID: usize = 50;

/// Validates a governed request's body against DESIGN §1.
pub fn validate(
    route: &Governed,
    body: Option<Map<String, Value>>,
    unknown: UnknownFields,
) -> Result<Validated, SchemaError> {
    use Operation::*;
    let mut v = Validator {
        unknown,
        unknown_fields: Vec::new(),
    };
    let id = route.id.clone().unwrap_or_default();
    let op = route.operation;
    if op.is_delete() {
        if body.is_some() {
            return Err(err("", "a delete takes no body"));
        }
        let change = Change {
            operation: op,
            org: OrgRef::Existing(id),
            connection_id: route.connection_id.clone(),
            fields: Map::new(),
            body: Map::new(),
            pointer: String::new(),
        };
        return Ok(Validated {
            body: None,
            changes: vec![change],
            unknown_fields: Vec::new(),
        });
    }
    let body = body.ok_or_else(|| err("", "a JSON object body is required"))?;
    let changes = match op {
        OrganizationConnectionCreate | OrganizationEnabledConnectionCreate => {
            let (cid, fields) = v.association(&body, "", op, Some("connection_id"))?;
            vec![change(op, OrgRef::Existing(id), cid, fields, &body, "")]
        }
        OrganizationConnectionUpdate | OrganizationEnabledConnectionUpdate => {
            let (_, fields) = v.association(&body, "", op, None)?;
            let cid = route.connection_id.clone();
            vec![change(op, OrgRef::Existing(id), cid, fields, &body, "")]
        }
        OrganizationCreate => {
            let name = body.get("name").and_then(Value::as_str).map(str::to_owned);
            v.elements(&body, "enabled_connections", "connection_id", |cid| {
                (OrgRef::New(name.clone()), Some(cid))
            })?
        }
        SsoTicketCreate => {
            let cid = match body.get("connection_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(err("/connection_id", "Expected type string")),
            };
            v.elements(&body, "enabled_organizations", "organization_id", |org| {
                (OrgRef::Existing(org), cid.clone())
            })?
        }
        OrganizationConnectionDelete | OrganizationEnabledConnectionDelete => {
            unreachable!("deletes returned above")
        }
    };
    Ok(Validated {
        body: Some(body),
        changes,
        unknown_fields: v.unknown_fields,
    })
}

fn change(
    operation: Operation,
    org: OrgRef,
    connection_id: Option<String>,
    fields: Map<String, Value>,
    body: &Map<String, Value>,
    pointer: &str,
) -> Change {
    Change {
        operation,
        org,
        connection_id,
        fields,
        body: body.clone(),
        pointer: pointer.to_owned(),
    }
}

fn err(pointer: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        pointer: if pointer.is_empty() {
            "/".into()
        } else {
            pointer.into()
        },
        message: message.into(),
    }
}

/// Whether `key` names an association field, in any case or with spaces
/// around it.
fn governed_elsewhere(key: &str) -> bool {
    let key = key.trim();
    association::FIELDS
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case(key))
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

struct Validator {
    unknown: UnknownFields,
    unknown_fields: Vec<String>,
}

impl Validator {
    /// Validates one association object; returns its id field (when `id_key`
    /// names a required one) and its association fields.
    fn association(
        &mut self,
        obj: &Map<String, Value>,
        at: &str,
        op: Operation,
        id_key: Option<&str>,
    ) -> Result<(Option<String>, Map<String, Value>), SchemaError> {
        let create = op.is_create();
        let legacy = matches!(
            op,
            Operation::OrganizationEnabledConnectionCreate
                | Operation::OrganizationEnabledConnectionUpdate
        );
        let mut id = None;
        let mut fields = Map::new();
        for (key, value) in obj {
            let pointer = format!("{at}/{}", pointer_token(key));
            if Some(key.as_str()) == id_key {
                id = Some(check_id(value, &pointer)?);
            } else if let Some(field) = association::settable(legacy).find(|f| f.name == key) {
                check_field(field.ty, value, create, &pointer)?;
                fields.insert(key.clone(), value.clone());
            } else if self.unknown == UnknownFields::Reject || governed_elsewhere(key) {
                // A field of the association is governed whatever the
                // setting: sent where this route does not take it (the other
                // family's field, or spelled in another case), it is refused,
                // never forwarded unjudged.
                return Err(err(
                    &pointer,
                    format!("Additional properties not allowed: {key}"),
                ));
            } else {
                self.unknown_fields.push(pointer);
            }
        }
        if let Some(id_key) = id_key
            && id.is_none()
        {
            return Err(err(
                &format!("{at}/{id_key}"),
                format!("Missing required property: {id_key}"),
            ));
        }
        Ok((id, fields))
    }

    /// Validates the array `key` of an organization or SSO-ticket body: each
    /// element is an association change with a required `id_key`.
    fn elements(
        &mut self,
        body: &Map<String, Value>,
        key: &str,
        id_key: &str,
        place: impl Fn(String) -> (OrgRef, Option<String>),
    ) -> Result<Vec<Change>, SchemaError> {
        // Another spelling of the array's key (`Enabled_Connections`,
        // `enabled_connections `) is refused: the tenant might read it as
        // the array, and it would reach it unjudged.
        if let Some(other) = body
            .keys()
            .find(|k| k.as_str() != key && k.trim().eq_ignore_ascii_case(key))
        {
            return Err(err(
                &format!("/{}", pointer_token(other)),
                format!("Additional properties not allowed: {other}"),
            ));
        }
        let items = match body.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(err(&format!("/{key}"), "Expected type array")),
        };
        let mut out = Vec::with_capacity(items.len());
        // Ids as the tenant compares them (case-insensitively), each with
        // where it was first named.
        let mut seen: Vec<(String, String)> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("/{key}/{i}");
            let Value::Object(obj) = item else {
                return Err(err(&at, "Expected type object"));
            };
            let (id, fields) = self.association(
                obj,
                &at,
                Operation::OrganizationConnectionCreate,
                Some(id_key),
            )?;
            let id = id.unwrap_or_default();
            // One element per association: two would each be judged alone,
            // and the outcome left to how the tenant merges them.
            let folded = id.to_lowercase();
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == folded) {
                return Err(err(
                    &format!("{at}/{id_key}"),
                    format!("duplicate {id_key} {id:?}: already named at {first}"),
                ));
            }
            seen.push((folded, at.clone()));
            let (org, cid) = place(id);
            out.push(change(
                Operation::OrganizationConnectionCreate,
                org,
                cid,
                fields,
                obj,
                &at,
            ));
        }
        Ok(out)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Refuses a request asking for more than `max` association changes
/// (`limits.max_elements`): every element is judged, and judging may cost
/// tenant lookups, all charged to the tenant's rate limit.
pub fn check_elements(validated: &Validated, max: u64) -> Result<(), SchemaError> {
    let n = validated.changes.len() as u64;
    if n <= max {
        return Ok(());
    }
    let pointer = validated
        .changes
        .first()
        .and_then(|c| c.pointer.rsplit_once('/'))
        .map_or("/", |(array, _)| array);
    Err(err(
        pointer,
        format!("{n} elements; at most {max} are accepted per request (limits.max_elements)"),
    ))
}

/// A string's length as the tenant counts it: JavaScript's `length`, in
/// UTF-16 code units (an emoji outside the Basic Multilingual Plane is 2).
/// Counting code points here would let through names the tenant refuses.
pub fn tenant_length(s: &str) -> usize {
    s.encode_utf16().count()
}

fn check_id(value: &Value, pointer: &str) -> Result<String, SchemaError> {
    let Value::String(s) = value else {
        return Err(err(
            pointer,
            format!("Expected type string but found type {}", type_name(value)),
        ));
    };
    let n = tenant_length(s);
    if n == 0 || n > MAX_ID {
        return Err(err(
            pointer,
            format!("String length must be 1 to {MAX_ID} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(err(pointer, "String must not contain control characters"));
    }
    Ok(s.clone())
}

fn check_field(kind: Type, value: &Value, create: bool, pointer: &str) -> Result<(), SchemaError> {
    let mismatch = |expected: &str| {
        err(
            pointer,
            format!(
                "Expected type {expected} but found type {}",
                type_name(value)
            ),
        )
    };
    match (kind, value) {
        (Type::Id, _) => check_id(value, pointer).map(drop),
        (Type::Name, Value::Null) => Ok(()),
        (Type::Name, Value::String(s)) => {
            let n = tenant_length(s);
            if !(1..=50).contains(&n) {
                Err(err(
                    pointer,
                    "String length must be 1 to 50 characters (UTF-16 code units, as the tenant counts)",
                ))
            } else if s.contains('\0') {
                Err(err(pointer, "String must not contain NUL"))
            } else {
                Ok(())
            }
        }
        (Type::Name, _) => Err(mismatch("string or null")),
        (Type::Bool, Value::Bool(_)) => Ok(()),
        (Type::Bool, _) => Err(mismatch("boolean")),
        (Type::NullableOnUpdateBool, Value::Bool(_)) => Ok(()),
        (Type::NullableOnUpdateBool, Value::Null) if !create => Ok(()),
        (Type::NullableOnUpdateBool, _) => {
            Err(mismatch(if create { "boolean" } else { "boolean or null" }))
        }
        (Type::AccessLevel, Value::String(s)) => {
            if ACCESS_LEVELS.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(err(
                    pointer,
                    format!(
                        "No enum match for: {s:?}; expected one of none, readonly, limited, full"
                    ),
                ))
            }
        }
        (Type::AccessLevel, Value::Null) if !create => Ok(()),
        (Type::AccessLevel, _) => Err(mismatch(if create { "string" } else { "string or null" })),
    }
}

#[cfg(test)]
mod tests;
