//! Broker mode: callers authenticate with tollgate API keys; tollgate holds
//! the Management API credential, obtains a token with the
//! client-credentials grant, caches it until shortly before it expires and
//! refreshes it once for all waiting requests ([`Flight`]): a failure is
//! shared by every waiter and remembered for a back-off, so a failing token
//! endpoint is asked once per back-off, not once per caller.

use std::time::{Duration, Instant};

use super::flight::{Failure, Fetched, Flight, retry_after};
use super::{Caller, IdentityError, bearer, fingerprint};
use crate::config::{self, Secret};
use crate::route::Operation;
use crate::upstream::Upstream;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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
    /// The token and when to stop using it.
    token: std::sync::Mutex<Option<(String, Instant)>>,
    refresh: Flight<(String, Instant)>,
}

/// How long a failed token request is remembered: callers meanwhile get 503
/// at once (longer if a 429 says `Retry-After`).
const TOKEN_BACKOFF: Duration = Duration::from_secs(2);

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
            token: std::sync::Mutex::new(None),
            refresh: Flight::new("broker_token", TOKEN_BACKOFF),
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

    /// A Management API token valid for a while yet: the cached one, or
    /// the result of the one request in flight for all waiters, waited for
    /// at most `upstream.timeout`.
    pub async fn token(&self) -> Result<String, IdentityError> {
        if let Some(t) = self.valid() {
            return Ok(t);
        }
        let request = TokenRequest {
            upstream: self.upstream.clone(),
            body: json!({
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret.expose(),
                "audience": self.audience,
            })
            .to_string(),
        };
        let fetched = self
            .refresh
            .get(move || request.send(), self.upstream.timeout())
            .await;
        match fetched {
            Fetched::Ok((token, expires)) => {
                let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
                if cached.as_ref().is_none_or(|(_, e)| *e < expires) {
                    *cached = Some((token.clone(), expires));
                    metrics::counter!("tollgate_broker_token_refreshes_total").increment(1);
                }
                Ok(token)
            }
            Fetched::Failed(f) => Err(IdentityError::TokenUnavailable(f.message)),
            Fetched::BackingOff { message, retry_in } => {
                Err(IdentityError::TokenBackoff(message, retry_in))
            }
            Fetched::TimedOut => Err(IdentityError::TokenUnavailable(format!(
                "the token endpoint did not answer within {:?}",
                self.upstream.timeout()
            ))),
        }
    }

    fn valid(&self) -> Option<String> {
        let t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        t.as_ref()
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(tok, _)| tok.clone())
    }
}

/// One client-credentials request, owned so that it runs on its own task.
struct TokenRequest {
    upstream: Upstream,
    body: String,
}

impl TokenRequest {
    /// The token and when to stop using it: a little before it expires.
    async fn send(self) -> Result<(String, Instant), Failure> {
        let fail = |message: String| Failure {
            message,
            retry_after: None,
        };
        let mut req = Request::new(crate::full(Bytes::from(self.body)));
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
            return Err(Failure {
                message: format!("the token endpoint answered {}", resp.status()),
                retry_after: retry_after(resp.headers()),
            });
        }
        let v: Value = serde_json::from_slice(resp.body()).map_err(|e| fail(e.to_string()))?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no access_token in the answer".into()))?;
        let lifetime =
            Duration::from_secs(v.get("expires_in").and_then(Value::as_u64).unwrap_or(0));
        Ok((
            token.to_owned(),
            Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime)),
        ))
    }
}

/// How long before its expiry a token of this lifetime is let go: a tenth
/// of its life, at most a minute (refreshed a little early, never used up
/// to its last instant, never thrown away long before it has to be).
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_let_go_a_tenth_of_their_life_early_at_most_a_minute() {
        let secs = Duration::from_secs;
        assert_eq!(refresh_margin(secs(2)), Duration::from_millis(200));
        assert_eq!(refresh_margin(secs(300)), secs(30));
        assert_eq!(refresh_margin(secs(600)), secs(60));
        // Auth0's default Management API token: a day.
        assert_eq!(refresh_margin(secs(86_400)), secs(60));
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }
}
