//! `[identity]`: who callers are and which credential reaches the tenant.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, HumanDuration, Secret};
use crate::route::Operation;

/// `[identity]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// `passthrough` (callers' bearer tokens are forwarded) or `broker`
    /// (callers present tollgate API keys; tollgate injects its own token).
    pub mode: IdentityMode,
    /// Passthrough: verify tokens (RS256) against the tenant's JWKS before
    /// anything else.
    pub verify: bool,
    /// Expected `iss`. Default: the upstream URL with a trailing slash (set
    /// it for a custom domain).
    pub issuer: Option<String>,
    /// Expected `aud`. Default: the upstream URL + `/api/v2/`.
    pub audience: Option<String>,
    /// Where the signing keys are. Default: `ISSUER.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// How often a token with an unknown `kid` may trigger a JWKS refetch.
    pub jwks_min_refresh: HumanDuration,
    /// Broker: the Machine-to-Machine application tollgate uses.
    pub client_id: Option<String>,
    /// Broker: its secret (better set as `TOLLGATE_IDENTITY_CLIENT_SECRET`).
    pub client_secret: Option<Secret>,
    /// Broker: the API keys callers may present.
    pub keys: Vec<ApiKey>,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            mode: IdentityMode::Passthrough,
            verify: false,
            issuer: None,
            audience: None,
            jwks_url: None,
            jwks_min_refresh: HumanDuration(Duration::from_secs(30)),
            client_id: None,
            client_secret: None,
            keys: Vec::new(),
        }
    }
}

/// How callers are identified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    #[default]
    Passthrough,
    Broker,
}

/// `[[identity.keys]]`: a tollgate API key, stored as its hash.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The caller's name (`caller.key` for rules, `caller` in the audit log).
    pub name: String,
    /// `sha256:` and the hex SHA-256 of the key (`tollgate keys new` prints it).
    pub hash: KeyHash,
    /// Governed operations the key may call; absent: every route. A key
    /// with operations may call nothing ungoverned.
    pub operations: Option<Vec<Operation>>,
}

/// The SHA-256 digest of an API key, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyHash(pub [u8; 32]);

impl std::str::FromStr for KeyHash {
    type Err = String;

    fn from_str(s: &str) -> Result<KeyHash, String> {
        hex::decode(s.strip_prefix("sha256:").unwrap_or(s))
            .ok()
            .and_then(|b| b.try_into().ok())
            .map(KeyHash)
            .ok_or_else(|| "hash must be sha256:<64 hex digits>".to_owned())
    }
}

impl TryFrom<String> for KeyHash {
    type Error = String;

    fn try_from(s: String) -> Result<KeyHash, String> {
        s.parse()
    }
}

impl From<KeyHash> for String {
    fn from(h: KeyHash) -> String {
        format!("sha256:{}", hex::encode(h.0))
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

impl Config {
    pub(super) fn validate_identity(&self) -> Result<(), ConfigError> {
        let id = &self.identity;
        let invalid =
            |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        if id.mode == IdentityMode::Broker {
            if id.client_id.as_deref().is_none_or(str::is_empty) {
                return invalid("identity.client_id", "is required in broker mode".into());
            }
            if id
                .client_secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
            {
                return invalid(
                    "identity.client_secret",
                    "is required in broker mode".into(),
                );
            }
            if id.keys.is_empty() {
                return invalid(
                    "identity.keys",
                    "broker mode needs at least one key (tollgate keys new NAME)".into(),
                );
            }
            if id.verify {
                return invalid(
                    "identity.verify",
                    "applies to passthrough mode; broker callers present API keys".into(),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for k in &id.keys {
            if !names.insert(k.name.as_str()) {
                return invalid("identity.keys", format!("duplicate key name {:?}", k.name));
            }
        }
        for (key, url) in [
            ("identity.issuer", &id.issuer),
            ("identity.audience", &id.audience),
            ("identity.jwks_url", &id.jwks_url),
        ] {
            if let Some(u) = url
                && !(u.starts_with("https://") || u.starts_with("http://"))
            {
                return invalid(key, "must be an http(s) URL".into());
            }
        }
        Ok(())
    }
}
