//! RS256 verification against the tenant's JWKS: cached, refetched when a
//! token names an unknown `kid`, at most once per `jwks_min_refresh`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use super::IdentityError;
use crate::upstream::{SetupError, Upstream};

#[derive(Default)]
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
    /// One refetch at a time; the others wait for its result.
    refetch: Mutex<()>,
}

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
            refetch: Mutex::new(()),
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
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(data.claims)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, IdentityError> {
        if let Some(k) = self.keys.read().await.by_kid.get(kid) {
            return Ok(k.clone());
        }
        let _one = self.refetch.lock().await;
        // Someone else may have refetched while we waited.
        {
            let keys = self.keys.read().await;
            if let Some(k) = keys.by_kid.get(kid) {
                return Ok(k.clone());
            }
            if keys.fetched.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return Err(IdentityError::InvalidToken(format!(
                    "unknown signing key {kid:?}"
                )));
            }
        }
        let fresh = self.fetch().await?;
        let mut keys = self.keys.write().await;
        *keys = fresh;
        keys.by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| IdentityError::InvalidToken(format!("unknown signing key {kid:?}")))
    }

    async fn fetch(&self) -> Result<Keys, IdentityError> {
        let unavailable = |m: String| IdentityError::JwksUnavailable(m);
        let mut req = Request::new(crate::full(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.jwks_uri.clone();
        req.headers_mut().insert(
            header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let resp = self
            .upstream
            .send_buffered(req)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("the JWKS answered {}", resp.status())));
        }
        let set: JwkSet =
            serde_json::from_slice(resp.body()).map_err(|e| unavailable(e.to_string()))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            if let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) {
                by_kid.insert(kid, key);
            }
        }
        metrics::counter!("tollgate_jwks_fetches_total").increment(1);
        Ok(Keys {
            by_kid,
            fetched: Some(Instant::now()),
        })
    }
}
