//! Broker mode: callers authenticate with tollgate API keys; tollgate holds
//! the Management API credential, obtains a token with the
//! client-credentials grant, caches it until shortly before it expires and
//! refreshes it once for all waiting requests.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use super::{Caller, IdentityError, bearer, fingerprint};
use crate::config::{self, Secret};
use crate::route::Operation;
use crate::upstream::Upstream;

struct Key {
    name: String,
    hash: [u8; 32],
    operations: Option<Vec<Operation>>,
}

/// The API keys and the token tollgate injects.
pub struct Broker {
    keys: Vec<Key>,
    upstream: Upstream,
    client_id: String,
    client_secret: Secret,
    audience: String,
    token: RwLock<Option<(String, Instant)>>,
    refresh: Mutex<()>,
}

impl Broker {
    pub fn new(cfg: &config::Identity, upstream: Upstream, audience: String) -> Broker {
        let keys = cfg
            .keys
            .iter()
            .map(|k| Key {
                name: k.name.clone(),
                hash: k.hash.0,
                operations: k.operations.clone(),
            })
            .collect();
        Broker {
            keys,
            upstream,
            client_id: cfg.client_id.clone().unwrap_or_default(),
            client_secret: cfg.client_secret.clone().unwrap_or_else(|| Secret::new("")),
            audience,
            token: RwLock::new(None),
            refresh: Mutex::new(()),
        }
    }

    /// The caller behind an API key, if the key is known and may call this.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        operation: Option<Operation>,
    ) -> Result<Caller, IdentityError> {
        let presented = bearer(headers).ok_or(IdentityError::MissingToken)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare digests of equal length; which key matched leaks nothing
        // about the key itself.
        let key = self
            .keys
            .iter()
            .find(|k| k.hash == digest)
            .ok_or(IdentityError::UnknownKey)?;
        if let Some(allowed) = &key.operations {
            let ok = operation.is_some_and(|op| allowed.contains(&op));
            if !ok {
                return Err(IdentityError::KeyForbidden {
                    key: key.name.clone(),
                    operation: operation.map_or("ungoverned routes".into(), |o| o.id().to_owned()),
                });
            }
        }
        Ok(Caller {
            verified: true,
            key: Some(key.name.clone()),
            token_fingerprint: Some(fingerprint(presented)),
            ..Caller::default()
        })
    }

    /// A Management API token valid for a while yet.
    pub async fn token(&self) -> Result<String, IdentityError> {
        if let Some(t) = self.valid().await {
            return Ok(t);
        }
        let _one = self.refresh.lock().await;
        if let Some(t) = self.valid().await {
            return Ok(t);
        }
        let (token, lifetime) = self.fetch().await?;
        // Refresh a little before expiry, never after.
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        let expires = Instant::now() + lifetime.saturating_sub(margin);
        *self.token.write().await = Some((token.clone(), expires));
        metrics::counter!("tollgate_broker_token_refreshes_total").increment(1);
        Ok(token)
    }

    async fn valid(&self) -> Option<String> {
        let t = self.token.read().await;
        t.as_ref()
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(tok, _)| tok.clone())
    }

    async fn fetch(&self) -> Result<(String, Duration), IdentityError> {
        let fail = |m: String| IdentityError::TokenUnavailable(m);
        let body = json!({
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose(),
            "audience": self.audience,
        });
        let mut req = Request::new(crate::full(Bytes::from(body.to_string())));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self
            .upstream
            .uri("/oauth/token")
            .map_err(|e| fail(e.to_string()))?;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let resp = self
            .upstream
            .send_buffered(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!(
                "the token endpoint answered {}",
                resp.status()
            )));
        }
        let v: Value = serde_json::from_slice(resp.body()).map_err(|e| fail(e.to_string()))?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no access_token in the answer".into()))?;
        let lifetime = v.get("expires_in").and_then(Value::as_u64).unwrap_or(0);
        Ok((token.to_owned(), Duration::from_secs(lifetime)))
    }
}

/// A new API key and the line that configures it.
pub fn new_key() -> (String, String) {
    let mut raw = [0u8; 32];
    let rng = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    // The system's CSPRNG failing is not something to limp on from.
    rng.fill(&mut raw)
        .expect("the system random number generator works");
    let key = format!(
        "tg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = format!("sha256:{}", fingerprint(&key));
    (key, hash)
}
