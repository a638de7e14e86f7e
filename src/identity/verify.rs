//! RS256 verification against the tenant's JWKS: cached, refetched when a
//! token names an unknown `kid`, at most once per `jwks_min_refresh` —
//! failed fetches count too — and single-flight: concurrent requests share
//! one fetch and its result ([`Flight`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::RwLock;

use super::IdentityError;
use super::flight::{Failure, Fetched, Flight, retry_after};
use crate::upstream::{SetupError, Upstream};

#[derive(Clone, Default)]
struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

/// Verifies bearer tokens.
pub struct Verifier {
    upstream: Upstream,
    jwks_uri: Uri,
    issuer: String,
    audience: String,
    min_refresh: Duration,
    keys: RwLock<Keys>,
    /// One refetch at a time; the others share its result.
    refetch: Flight<std::sync::Arc<Keys>>,
}

/// How far in the future a token's `iat` and `nbf` may be (clock skew): the
/// same leeway as `exp`.
const LEEWAY_SECS: u64 = 30;

impl Verifier {
    pub fn new(
        upstream: Upstream,
        jwks_url: &str,
        issuer: String,
        audience: String,
        min_refresh: Duration,
    ) -> Result<Verifier, SetupError> {
        let jwks_uri = jwks_url
            .parse()
            .map_err(|e| SetupError::Url(format!("identity.jwks_url: {e}")))?;
        Ok(Verifier {
            upstream,
            jwks_uri,
            issuer,
            audience,
            min_refresh,
            keys: RwLock::new(Keys::default()),
            refetch: Flight::new("jwks", min_refresh),
        })
    }

    /// The token's claims, if it is a valid RS256 token from the tenant for
    /// the Management API that has not expired.
    pub async fn verify(&self, token: &str) -> Result<Value, IdentityError> {
        let invalid = |m: String| IdentityError::InvalidToken(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        // Only RS256: `none` and HS256 (signed with the public key as a
        // shared secret) are the classic confusions.
        if header.alg != Algorithm::RS256 {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted; RS256 only",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token names no key (kid)".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        // Not yet valid is not valid (RFC 7519 §4.1.5).
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        // A token issued in the future was not issued by a tenant whose
        // clock agrees with ours.
        let now = jsonwebtoken::get_current_timestamp();
        match data.claims.get("iat") {
            None => {}
            Some(iat) => match iat.as_f64() {
                Some(iat) if iat <= (now + LEEWAY_SECS) as f64 => {}
                Some(_) => return Err(invalid("the token was issued in the future (iat)".into())),
                None => return Err(invalid("iat is not a number".into())),
            },
        }
        Ok(data.claims)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, IdentityError> {
        let unknown = || IdentityError::InvalidToken(format!("unknown signing key {kid:?}"));
        {
            let keys = self.keys.read().await;
            if let Some(k) = keys.by_kid.get(kid) {
                return Ok(k.clone());
            }
            if keys.fetched.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return Err(unknown());
            }
        }
        let fetch = JwksRequest {
            upstream: self.upstream.clone(),
            uri: self.jwks_uri.clone(),
        };
        let fetched = self
            .refetch
            .get(move || fetch.send(), self.upstream.timeout())
            .await;
        let fresh = match fetched {
            Fetched::Ok(keys) => keys,
            Fetched::Failed(f) => return Err(IdentityError::JwksUnavailable(f.message)),
            Fetched::BackingOff { message, retry_in } => {
                return Err(IdentityError::JwksUnavailable(format!(
                    "{message}; not fetched again for {retry_in:?} (identity.jwks_min_refresh)"
                )));
            }
            Fetched::TimedOut => {
                return Err(IdentityError::JwksUnavailable(format!(
                    "the JWKS did not answer within {:?}",
                    self.upstream.timeout()
                )));
            }
        };
        let mut keys = self.keys.write().await;
        if keys.fetched < fresh.fetched {
            *keys = (*fresh).clone();
        }
        fresh.by_kid.get(kid).cloned().ok_or_else(unknown)
    }
}

/// One JWKS request, owned so that it runs on its own task.
struct JwksRequest {
    upstream: Upstream,
    uri: Uri,
}

impl JwksRequest {
    async fn send(self) -> Result<std::sync::Arc<Keys>, Failure> {
        let fail = |message: String| Failure {
            message,
            retry_after: None,
        };
        let mut req = Request::new(crate::full(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri;
        req.headers_mut().insert(
            header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let resp = self
            .upstream
            .send_buffered(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(Failure {
                message: format!("the JWKS answered {}", resp.status()),
                retry_after: retry_after(resp.headers()),
            });
        }
        let set: JwkSet = serde_json::from_slice(resp.body()).map_err(|e| fail(e.to_string()))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            if let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) {
                by_kid.insert(kid, key);
            }
        }
        Ok(std::sync::Arc::new(Keys {
            by_kid,
            fetched: Some(Instant::now()),
        }))
    }
}
