//! Who is calling: the claims of the caller's bearer token (passthrough
//! mode), as `caller` for rules and the audit log.
//!
//! In passthrough mode the tenant verifies the token; tollgate reads its
//! claims to name the caller and marks them `verified = false`. The token
//! itself is never stored or logged: only its SHA-256 fingerprint.

use base64::Engine;
use http::{HeaderMap, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The caller, as far as the request tells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    /// `azp` (or `client_id`) of the token.
    pub client_id: Option<String>,
    pub subject: Option<String>,
    /// `gty`, e.g. `client-credentials`.
    pub grant_type: Option<String>,
    pub scopes: Vec<String>,
    /// Whether the token's signature was checked by tollgate.
    pub verified: bool,
    /// The tollgate API key's name, in broker mode.
    pub key: Option<String>,
    /// SHA-256 of the bearer token, hex: links requests by one credential
    /// without keeping it.
    pub token_fingerprint: Option<String>,
}

impl Caller {
    /// The `caller` variable of DESIGN §4.
    pub fn to_value(&self) -> Value {
        json!({
            "client_id": self.client_id,
            "subject": self.subject,
            "grant_type": self.grant_type,
            "scopes": self.scopes,
            "verified": self.verified,
            "key": self.key,
        })
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Reads the caller from the request's bearer token without verifying it.
pub fn passthrough(headers: &HeaderMap) -> Caller {
    let Some(token) = bearer(headers) else {
        return Caller::default();
    };
    let mut caller = Caller {
        token_fingerprint: Some(hex::encode(Sha256::digest(token.as_bytes()))),
        ..Caller::default()
    };
    if let Some(claims) = claims(token) {
        apply_claims(&mut caller, &claims);
    }
    caller
}

/// The payload of a JWT, without checking its signature.
fn claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Copies the non-secret claims DESIGN §5 names onto a caller.
pub fn apply_claims(caller: &mut Caller, claims: &Value) {
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    caller.client_id = s("azp").or_else(|| s("client_id"));
    caller.subject = s("sub");
    caller.grant_type = s("gty");
    caller.scopes = match claims.get("scope") {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn token(claims: &Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn claims_name_the_caller() {
        let t = token(
            &json!({"azp": "ci-bot", "sub": "ci-bot@clients", "gty": "client-credentials",
                               "scope": "read:organizations update:organization_connections"}),
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).expect("ascii"),
        );
        let c = passthrough(&h);
        assert_eq!(c.client_id.as_deref(), Some("ci-bot"));
        assert_eq!(c.subject.as_deref(), Some("ci-bot@clients"));
        assert_eq!(c.grant_type.as_deref(), Some("client-credentials"));
        assert_eq!(c.scopes.len(), 2);
        assert!(!c.verified);
        let fp = c.token_fingerprint.expect("fingerprint");
        assert_eq!(fp.len(), 64);
        assert!(!fp.contains(&t));
    }

    #[test]
    fn opaque_or_missing_tokens_name_nobody() {
        let mut h = HeaderMap::new();
        assert_eq!(passthrough(&h), Caller::default());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer opaque"),
        );
        let c = passthrough(&h);
        assert_eq!(c.client_id, None);
        assert!(c.token_fingerprint.is_some());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        assert_eq!(passthrough(&h).token_fingerprint, None);
    }
}
