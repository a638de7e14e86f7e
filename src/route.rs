//! Method + path → governed operation, or "other".
//!
//! The tenant's router is case-insensitive, tolerates one trailing slash and
//! percent-decodes each segment before matching. If tollgate matched more
//! strictly than the tenant, `/API/V2/Organizations/o/Connections/c/` would be
//! classified "other" here and still land on the governed handler there. So
//! classification reproduces the tenant's matching, refuses every path whose
//! meaning could differ between the two (dot segments, encoded separators,
//! empty segments, bad UTF-8), and the request is forwarded on the canonical
//! path that was classified, never on the path as sent.

use std::fmt;

use http::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Longest organization id (or name) the seed accepts in a path.
const MAX_ORG_ID: usize = 50;
/// Longest connection id the seed accepts in a path.
const MAX_CONNECTION_ID: usize = 50;

/// The operations of DESIGN §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    OrganizationConnectionCreate,
    OrganizationConnectionUpdate,
    OrganizationConnectionDelete,
    OrganizationEnabledConnectionCreate,
    OrganizationEnabledConnectionUpdate,
    OrganizationEnabledConnectionDelete,
    OrganizationCreate,
    SsoTicketCreate,
}

impl Operation {
    /// Every operation, in the order of DESIGN §1.
    pub const ALL: [Operation; 8] = [
        Operation::OrganizationConnectionCreate,
        Operation::OrganizationConnectionUpdate,
        Operation::OrganizationConnectionDelete,
        Operation::OrganizationEnabledConnectionCreate,
        Operation::OrganizationEnabledConnectionUpdate,
        Operation::OrganizationEnabledConnectionDelete,
        Operation::OrganizationCreate,
        Operation::SsoTicketCreate,
    ];

    /// The operation id users write in policies and read in the audit log.
    pub fn id(self) -> &'static str {
        match self {
            Operation::OrganizationConnectionCreate => "organization_connection.create",
            Operation::OrganizationConnectionUpdate => "organization_connection.update",
            Operation::OrganizationConnectionDelete => "organization_connection.delete",
            Operation::OrganizationEnabledConnectionCreate => {
                "organization_enabled_connection.create"
            }
            Operation::OrganizationEnabledConnectionUpdate => {
                "organization_enabled_connection.update"
            }
            Operation::OrganizationEnabledConnectionDelete => {
                "organization_enabled_connection.delete"
            }
            Operation::OrganizationCreate => "organization.create",
            Operation::SsoTicketCreate => "sso_ticket.create",
        }
    }

    /// Parses an operation id.
    pub fn from_id(id: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.id() == id)
    }
}

/// An operation reads and writes as its id.
impl serde::Serialize for Operation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> serde::Deserialize<'de> for Operation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Operation, D::Error> {
        let id = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Operation::from_id(&id).ok_or_else(|| serde::de::Error::custom(unknown_operation(&id)))
    }
}

/// Why `id` is no operation a rule can name: a typo, or an operation of the
/// Management API tollgate records but does not judge yet (`tollgate
/// routes` lists them), said as such.
pub fn unknown_operation(id: &str) -> String {
    let all: Vec<&str> = Operation::ALL.iter().map(|o| o.id()).collect();
    let known = crate::registry::registry()
        .get(id)
        .filter(|op| op.is_write());
    match known {
        Some(op) => format!(
            "{id:?} ({} {}) is recorded but not yet judged by tollgate; rules can name {}",
            op.method,
            op.path,
            all.join(", ")
        ),
        None => format!("unknown operation {id:?}; known: {}", all.join(", ")),
    }
}

impl Operation {
    /// Whether the operation removes an association (it carries no body).
    pub fn is_delete(self) -> bool {
        matches!(
            self,
            Operation::OrganizationConnectionDelete
                | Operation::OrganizationEnabledConnectionDelete
        )
    }

    /// Whether the operation creates associations (so `before` is absent and
    /// the tenant's defaults apply).
    pub fn is_create(self) -> bool {
        matches!(
            self,
            Operation::OrganizationConnectionCreate
                | Operation::OrganizationEnabledConnectionCreate
                | Operation::OrganizationCreate
                | Operation::SsoTicketCreate
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A request on a governed route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Governed {
    pub operation: Operation,
    /// The method forwarded (upper-case, canonical).
    pub method: Method,
    /// The path forwarded: literal segments in their canonical case, path
    /// parameters percent-encoded, no trailing slash.
    pub path: String,
    /// `{id}` of the path: the organization (or, for SSO tickets, the
    /// self-service profile).
    pub id: Option<String>,
    /// `{connection_id}` of the path, on item routes.
    pub connection_id: Option<String>,
}

impl Governed {
    /// The organization the path names, if it names one (an SSO ticket's
    /// `{id}` is its self-service profile).
    pub fn organization(&self) -> Option<&str> {
        match self.operation {
            Operation::OrganizationCreate | Operation::SsoTicketCreate => None,
            _ => self.id.as_deref(),
        }
    }

    /// The same route naming its organization by `id` (resolved from the
    /// name or spelling the path gave): what is forwarded and recorded.
    pub fn with_organization(mut self, id: &str) -> Governed {
        if self.organization().is_none() {
            return self;
        }
        // A canonical path: "/api/v2/organizations/{id}/…", each parameter
        // percent-encoded, so no segment holds a '/'.
        let mut segments: Vec<String> = self.path.split('/').map(str::to_owned).collect();
        if let Some(s) = segments.get_mut(4) {
            *s = encode_segment(id);
        }
        self.path = segments.join("/");
        self.id = Some(id.to_owned());
        self
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Governed(Governed),
    /// Not governed: forwarded under `routes.other`, with its target as sent
    /// (it passed the same segment checks, so the tenant reads it as we did).
    Other,
}

/// Why a request target was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the request target must be a path starting with '/'")]
    NotOriginForm,
    #[error("path segment {index} is empty ('//'); send the path without empty segments")]
    EmptySegment { index: usize },
    #[error("path segment {index} is a dot segment ('.' or '..'); send the resolved path")]
    DotSegment { index: usize },
    #[error("path segment {index} decodes to a path separator ('/' or '\\')")]
    EncodedSeparator { index: usize },
    #[error("path segment {index} is not valid UTF-8 once percent-decoded")]
    InvalidUtf8 { index: usize },
    #[error("path segment {index} contains a control character")]
    ControlCharacter { index: usize },
    #[error("path parameter {name} must be {min} to {max} characters long")]
    ParamLength {
        name: &'static str,
        min: usize,
        max: usize,
    },
    #[error("query strings are not accepted on governed routes; send the parameters in the body")]
    QueryString,
    #[error("method {method} is not allowed on this route")]
    MethodNotAllowed { method: Method, allow: &'static str },
}

/// Characters kept literal when a decoded segment is re-encoded: RFC 3986
/// unreserved characters plus a few sub-delimiters Auth0 ids carry (`|`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'|')
    .remove(b'@')
    .remove(b':');

/// Splits a path into percent-decoded segments, refusing every form whose
/// meaning could differ between tollgate and the tenant. Applies to every
/// request, governed or not: `/api/v2/users/../organizations/o/connections/c`
/// would otherwise reach a governed handler as "other".
pub fn decode_segments(path: &str) -> Result<Vec<String>, RouteError> {
    let rest = path.strip_prefix('/').ok_or(RouteError::NotOriginForm)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    // One trailing slash is tolerated, as the tenant's router does.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = Vec::new();
    for (index, raw) in rest.split('/').enumerate() {
        if raw.is_empty() {
            return Err(RouteError::EmptySegment { index });
        }
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| RouteError::InvalidUtf8 { index })?;
        if decoded == "." || decoded == ".." {
            return Err(RouteError::DotSegment { index });
        }
        if decoded.contains(['/', '\\']) {
            return Err(RouteError::EncodedSeparator { index });
        }
        if decoded.chars().any(char::is_control) {
            return Err(RouteError::ControlCharacter { index });
        }
        segments.push(decoded.into_owned());
    }
    Ok(segments)
}

/// A request target as it may be recorded and logged: the path, and the
/// query string's parameter names with every value replaced by
/// `<redacted>`. Query strings carry secrets (`?access_token=…`,
/// `?client_secret=…`), and the audit log is append-only: a secret written
/// there can never be purged. A part without `=`, or a name longer than 64
/// bytes, is no parameter name anyone reads; it is redacted whole.
pub fn redact_target(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|part| match part.split_once('=') {
            Some((name, _)) if name.len() <= 64 => format!("{name}=<redacted>"),
            _ if part.is_empty() => String::new(),
            _ => "<redacted>".to_owned(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// Percent-encodes one decoded path segment the canonical way.
pub fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Joins decoded segments into the canonical path.
fn encode_path(segments: &[&str]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.extend(utf8_percent_encode(s, SEGMENT));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn check_len(
    value: &str,
    name: &'static str,
    min: usize,
    max: usize,
) -> Result<String, RouteError> {
    let n = crate::schema::tenant_length(value);
    if n < min || n > max {
        return Err(RouteError::ParamLength { name, min, max });
    }
    Ok(value.to_owned())
}

/// Classifies a request by method, path and query.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let segments = decode_segments(path)?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let governed = match segs.as_slice() {
        [api, v2, rest @ ..] if eq(api, "api") && eq(v2, "v2") => classify_v2(method, rest)?,
        _ => None,
    };
    match governed {
        Some(g) => {
            // A query string is judged by nobody; the tenant might read it.
            if query.is_some() {
                return Err(RouteError::QueryString);
            }
            Ok(Route::Governed(g))
        }
        None => Ok(Route::Other),
    }
}

fn classify_v2(method: &Method, rest: &[&str]) -> Result<Option<Governed>, RouteError> {
    use Operation::*;
    let governed = |operation, path: String, id: Option<String>, cid: Option<String>| Governed {
        operation,
        method: method.clone(),
        path,
        id,
        connection_id: cid,
    };
    match rest {
        [orgs] if eq(orgs, "organizations") => {
            let path = encode_path(&["api", "v2", "organizations"]);
            Ok(by_method(method, &[(Method::POST, OrganizationCreate)])?
                .map(|op| governed(op, path, None, None)))
        }
        [orgs, id, family] if eq(orgs, "organizations") => {
            let Some((create, ..)) = family_ops(family) else {
                return Ok(None);
            };
            let id = check_len(id, "id", 1, MAX_ORG_ID)?;
            let Some(op) = by_method(method, &[(Method::POST, create)])? else {
                return Ok(None);
            };
            let path = encode_path(&["api", "v2", "organizations", &id, canonical(family)]);
            Ok(Some(governed(op, path, Some(id), None)))
        }
        [orgs, id, family, cid] if eq(orgs, "organizations") => {
            let Some((_, update, delete)) = family_ops(family) else {
                return Ok(None);
            };
            let id = check_len(id, "id", 1, MAX_ORG_ID)?;
            let cid = check_len(cid, "connection_id", 1, MAX_CONNECTION_ID)?;
            let table = [(Method::PATCH, update), (Method::DELETE, delete)];
            let Some(op) = by_method(method, &table)? else {
                return Ok(None);
            };
            let path = encode_path(&["api", "v2", "organizations", &id, canonical(family), &cid]);
            Ok(Some(governed(op, path, Some(id), Some(cid))))
        }
        [profiles, id, ticket]
            if eq(profiles, "self-service-profiles") && eq(ticket, "sso-ticket") =>
        {
            let Some(op) = by_method(method, &[(Method::POST, SsoTicketCreate)])? else {
                return Ok(None);
            };
            let id = check_len(id, "id", 1, MAX_ORG_ID)?;
            let path = encode_path(&["api", "v2", "self-service-profiles", &id, "sso-ticket"]);
            Ok(Some(governed(op, path, Some(id), None)))
        }
        _ => Ok(None),
    }
}

/// The operation a method performs on a governed route: `None` for a read
/// (GET, HEAD), which passes through; an error for any other method —
/// `post`, `Post`, PUT…: one the tenant might read as a write, or one it has
/// no route for; either way not passed unjudged.
fn by_method(
    method: &Method,
    writes: &[(Method, Operation)],
) -> Result<Option<Operation>, RouteError> {
    if let Some((_, op)) = writes.iter().find(|(m, _)| m == method) {
        return Ok(Some(*op));
    }
    if *method == Method::GET || *method == Method::HEAD {
        return Ok(None);
    }
    let allow = match writes {
        [(m, _)] if *m == Method::POST => "GET, HEAD, POST",
        _ => "GET, HEAD, PATCH, DELETE",
    };
    Err(RouteError::MethodNotAllowed {
        method: method.clone(),
        allow,
    })
}

/// The (create, update, delete) operations of an association family segment.
fn family_ops(segment: &str) -> Option<(Operation, Operation, Operation)> {
    use Operation::*;
    if eq(segment, "connections") {
        Some((
            OrganizationConnectionCreate,
            OrganizationConnectionUpdate,
            OrganizationConnectionDelete,
        ))
    } else if eq(segment, "enabled_connections") {
        Some((
            OrganizationEnabledConnectionCreate,
            OrganizationEnabledConnectionUpdate,
            OrganizationEnabledConnectionDelete,
        ))
    } else {
        None
    }
}

fn canonical(family: &str) -> &'static str {
    if eq(family, "connections") {
        "connections"
    } else {
        "enabled_connections"
    }
}

#[cfg(test)]
mod tests;
