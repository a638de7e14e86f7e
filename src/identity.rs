//! Who is calling, and which credential reaches the tenant (DESIGN §7).
//!
//! Passthrough (default): the caller's bearer token is forwarded; its claims
//! name the caller. With `identity.verify`, the token is verified (RS256)
//! against the tenant's JWKS before anything else, and `caller.verified` is
//! true. Broker: callers present tollgate API keys; tollgate obtains its own
//! Management API token and injects it, so automation never holds the
//! tenant credential. Tokens and keys are never stored or logged: only
//! SHA-256 fingerprints.

mod broker;
pub mod flight;
mod verify;

use base64::Engine;
use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use broker::{Broker, new_key};
pub use verify::Verifier;

use crate::config::{self, IdentityMode};
use crate::route::Operation;
use crate::upstream::{SetupError, Upstream};

/// The caller could not be identified, or may not do this.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("a bearer token is required")]
    MissingToken,
    #[error("the bearer token is not valid: {0}")]
    InvalidToken(String),
    #[error("the tollgate API key is not valid")]
    UnknownKey,
    #[error("API key {key} may not call {operation}")]
    KeyForbidden { key: String, operation: String },
    #[error("the tenant's signing keys could not be fetched: {0}")]
    JwksUnavailable(String),
    #[error("a Management API token could not be obtained: {0}")]
    TokenUnavailable(String),
    /// A token could not be obtained moments ago: not asked for again
    /// until its back-off ends.
    #[error(
        "a Management API token could not be obtained ({0}); the token endpoint is not asked again for {1:?}"
    )]
    TokenBackoff(String, std::time::Duration),
}

/// Identification, as configured.
pub enum Identity {
    Passthrough { verifier: Option<Verifier> },
    Broker(Broker),
}

impl Identity {
    /// Sets up identification for the tenant at `upstream_url`.
    pub fn new(
        cfg: &config::Identity,
        upstream: &Upstream,
        upstream_url: &str,
    ) -> Result<Identity, SetupError> {
        let base = upstream_url.trim_end_matches('/');
        let audience = cfg
            .audience
            .clone()
            .unwrap_or_else(|| format!("{base}/api/v2/"));
        match cfg.mode {
            IdentityMode::Passthrough if cfg.verify => {
                let issuer = cfg.issuer.clone().unwrap_or_else(|| format!("{base}/"));
                let jwks = cfg.jwks_url.clone().unwrap_or_else(|| {
                    format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/'))
                });
                let verifier = Verifier::new(
                    upstream.clone(),
                    &jwks,
                    issuer,
                    audience,
                    cfg.jwks_min_refresh.0,
                )?;
                Ok(Identity::Passthrough {
                    verifier: Some(verifier),
                })
            }
            IdentityMode::Passthrough => Ok(Identity::Passthrough { verifier: None }),
            IdentityMode::Broker => Ok(Identity::Broker(Broker::new(
                cfg,
                upstream.clone(),
                audience,
            ))),
        }
    }

    /// Identifies the caller of a request for `operation` (`None`: an
    /// ungoverned request). Runs before anything else is read.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        operation: Option<Operation>,
    ) -> Result<Caller, IdentityError> {
        match self {
            Identity::Passthrough { verifier: None } => Ok(passthrough(headers)),
            Identity::Passthrough { verifier: Some(v) } => {
                let token = bearer(headers).ok_or(IdentityError::MissingToken)?;
                let claims = v.verify(token).await?;
                let mut caller = Caller {
                    verified: true,
                    token_fingerprint: Some(fingerprint(token)),
                    ..Caller::default()
                };
                apply_claims(&mut caller, &claims);
                Ok(caller)
            }
            Identity::Broker(b) => b.authenticate(headers, operation),
        }
    }

    /// The `Authorization` the tenant receives: the caller's own, or in
    /// broker mode tollgate's token (the caller's key never leaves).
    pub async fn tenant_authorization(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, IdentityError> {
        match self {
            Identity::Passthrough { .. } => Ok(headers.get(header::AUTHORIZATION).cloned()),
            Identity::Broker(b) => {
                let token = b.token().await?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map(Some)
                    .map_err(|_| {
                        IdentityError::TokenUnavailable("the token is not a valid header".into())
                    })
            }
        }
    }
}

/// SHA-256 of a secret, hex.
pub fn fingerprint(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The caller, as far as the request tells. Serialised (with its token
/// fingerprint) into the `decision` event's `data.caller`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// The `caller` variable of DESIGN §4: the caller without its token's
/// fingerprint.
#[derive(serde::Serialize)]
pub struct CallerView<'a> {
    client_id: Option<&'a str>,
    subject: Option<&'a str>,
    grant_type: Option<&'a str>,
    scopes: &'a [String],
    verified: bool,
    key: Option<&'a str>,
}

impl Caller {
    /// The `caller` variable of DESIGN §4.
    pub fn rule_view(&self) -> CallerView<'_> {
        CallerView {
            client_id: self.client_id.as_deref(),
            subject: self.subject.as_deref(),
            grant_type: self.grant_type.as_deref(),
            scopes: &self.scopes,
            verified: self.verified,
            key: self.key.as_deref(),
        }
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
        token_fingerprint: Some(fingerprint(token)),
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
    use serde_json::json;

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
