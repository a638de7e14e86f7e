//! Signed checkpoints: an Ed25519 signature over each chain's head, so a
//! chain's end is evidence too. A hash chain proves nobody edited, inserted
//! or reordered events in it; a signed head proves nobody removed its last
//! events or appended forged ones with correctly computed hashes (anyone
//! who can write to the store can compute SHA-256; only the key's holder
//! can sign).

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PRIVATE_LABEL: &str = "PRIVATE KEY";
const PUBLIC_PREFIX: &str = "ed25519:";

/// A key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The private key the writer signs with (`audit.signing_key`).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

/// The public key anyone verifies with: `ed25519:<hex>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    bytes: Vec<u8>,
}

/// A new key pair: the private key (PEM, PKCS#8) and the public key text.
pub fn new_pair() -> Result<(String, String), KeyError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|e| KeyError(format!("cannot make a key: {e}")))?;
    let pem = pem(PRIVATE_LABEL, doc.as_ref());
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|e| KeyError(format!("cannot read the new key: {e}")))?;
    let public = PublicKey {
        bytes: pair.public_key().as_ref().to_vec(),
    };
    Ok((pem, public.to_text()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl SigningKey {
    /// Reads a private key file (PEM, PKCS#8, as `keys new --signing`
    /// writes it).
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("audit.signing_key {}: {e}", path.display())))?;
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| {
                KeyError(format!(
                    "audit.signing_key {}: not PEM: {e}",
                    path.display()
                ))
            })?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| {
            KeyError(format!(
                "audit.signing_key {}: not an Ed25519 private key: {e}",
                path.display()
            ))
        })?;
        Ok(SigningKey { pair })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            bytes: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// The signature of `message`, hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

impl PublicKey {
    /// Parses `ed25519:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let hex_part = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .unwrap_or(text.trim());
        let bytes = hex::decode(hex_part)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| KeyError("a public key is ed25519:<64 hex digits>".into()))?;
        Ok(PublicKey { bytes })
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
        PublicKey::parse(&text).map_err(|e| KeyError(format!("{}: {e}", path.display())))
    }

    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", hex::encode(&self.bytes))
    }

    /// A short name for the key: the first 16 hex digits of its SHA-256.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))[..16].to_owned()
    }

    pub fn verifies(&self, message: &[u8], signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, &signature)
            .is_ok()
    }
}

/// The public keys checkpoints are verified with: the signing key's, and
/// those of signing keys since retired, so a chain signed before a rotation
/// still verifies. A checkpoint names its key (`key_id`); it verifies only
/// with that key, and only if that key is one of these. A retired key may
/// carry when it was retired (`retired_at=RFC3339` after it on its line):
/// a checkpoint it signed later is not the old key's honest work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    keys: Vec<PublicKey>,
    /// key id → when it was retired.
    retired: std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>,
}

impl From<PublicKey> for Keys {
    fn from(key: PublicKey) -> Keys {
        Keys {
            keys: vec![key],
            retired: Default::default(),
        }
    }
}

impl Keys {
    /// One `ed25519:<hex>` per line (the prefix may be left out), optionally
    /// followed by `retired_at=<RFC 3339>`; blank lines and `#` comments,
    /// whole-line or after a key, skipped.
    pub fn parse(text: &str) -> Result<Keys, KeyError> {
        let mut keys = Vec::new();
        let mut retired = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
        {
            let mut words = line.split_whitespace();
            let key = PublicKey::parse(words.next().unwrap_or_default())?;
            for word in words {
                let Some(at) = word.strip_prefix("retired_at=") else {
                    return Err(KeyError(format!(
                        "after a key only retired_at=<RFC 3339> may follow, not {word:?}"
                    )));
                };
                let at = chrono::DateTime::parse_from_rfc3339(at)
                    .map_err(|e| KeyError(format!("retired_at={at}: {e}")))?
                    .with_timezone(&chrono::Utc);
                retired.insert(key.key_id(), at);
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError("no public key (ed25519:<64 hex digits>)".into()));
        }
        Ok(Keys { keys, retired })
    }

    /// Reads a public key file: one key, or several, one per line.
    pub fn load(path: &Path) -> Result<Keys, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
        Keys::parse(&text).map_err(|e| KeyError(format!("{}: {e}", path.display())))
    }

    /// The keys a configuration verifies with: `audit.signing_key`'s and
    /// those in `audit.retired_keys`; `None` when neither is set.
    pub fn configured(audit: &crate::config::Audit) -> Result<Option<Keys>, KeyError> {
        let current = match &audit.signing_key {
            Some(private) => Some(Keys::from(SigningKey::load(private)?.public())),
            None => None,
        };
        let retired = match &audit.retired_keys {
            Some(path) => {
                Some(Keys::load(path).map_err(|e| KeyError(format!("audit.retired_keys {e}")))?)
            }
            None => None,
        };
        Ok(match (current, retired) {
            (Some(c), Some(r)) => Some(c.and(r)),
            (c, r) => c.or(r),
        })
    }

    /// These keys and `more`, each once (with when it was retired, if
    /// either says).
    pub fn and(mut self, more: Keys) -> Keys {
        for k in more.keys {
            if !self.keys.contains(&k) {
                self.keys.push(k);
            }
        }
        for (id, at) in more.retired {
            self.retired.entry(id).or_insert(at);
        }
        self
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.contains(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter()
    }

    /// One key per line, with when it was retired.
    pub fn to_text(&self) -> String {
        self.keys
            .iter()
            .map(|k| match self.retired.get(&k.key_id()) {
                Some(at) => format!("{} retired_at={}\n", k.to_text(), super::format_time(*at)),
                None => k.to_text() + "\n",
            })
            .collect()
    }

    /// Whether `key` was retired before `at` (RFC 3339; an unreadable time
    /// counts as after any retirement).
    pub fn retired_before(&self, key: &PublicKey, at: &str) -> bool {
        self.retired.get(&key.key_id()).is_some_and(|retired| {
            chrono::DateTime::parse_from_rfc3339(at)
                .map_or(true, |t| t.with_timezone(&chrono::Utc) > *retired)
        })
    }

    /// Whether `c` was signed by the key it names, one of these, before
    /// that key was retired; the reason when not, to follow "the
    /// checkpoint … does not verify".
    pub fn check(&self, c: &Checkpoint) -> Result<(), String> {
        match self.keys.iter().find(|k| k.key_id() == c.key_id) {
            None => Err(format!(
                ": it names key {}, not one of the public keys given",
                c.key_id
            )),
            Some(k) if !c.verified_by(k) => Err(" with its public key (forged or altered)".into()),
            Some(k) => match self.retired.get(&k.key_id()) {
                Some(at)
                    if chrono::DateTime::parse_from_rfc3339(&c.time)
                        .is_ok_and(|t| t.with_timezone(&chrono::Utc) > *at)
                        || chrono::DateTime::parse_from_rfc3339(&c.time).is_err() =>
                {
                    Err(format!(
                        ": it is signed at {} by key {}, retired at {} (a retired key signs nothing new)",
                        c.time,
                        c.key_id,
                        super::format_time(*at)
                    ))
                }
                _ => Ok(()),
            },
        }
    }
}

/// A signed chain head.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain_id: String,
    pub seq: i64,
    pub hash: String,
    /// RFC 3339, microseconds.
    pub time: String,
    /// Written when the writer stopped: nothing may follow it.
    #[serde(rename = "final")]
    pub closed: bool,
    /// Signed by another instance as it started, not by the chain's own
    /// writer, which had not signed that far: it stopped without closing
    /// its chain (a crash), or was still running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    pub key_id: String,
    pub signature: String,
}

/// What a checkpoint says of the head it signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The writer's own, while it runs.
    Running,
    /// The writer's last word: nothing may follow.
    Final,
    /// Another instance's, at its start (see [`Checkpoint::adopted`]).
    Adopted,
}

impl Checkpoint {
    /// The bytes signed: the head, in a fixed order (`adopted` only when
    /// set, so checkpoints signed before it existed verify as they were).
    fn message(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Signed<'a> {
            chain_id: &'a str,
            seq: i64,
            hash: &'a str,
            time: &'a str,
            #[serde(rename = "final")]
            closed: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            adopted: bool,
        }
        serde_json::to_vec(&Signed {
            chain_id: &self.chain_id,
            seq: self.seq,
            hash: &self.hash,
            time: &self.time,
            closed: self.closed,
            adopted: self.adopted,
        })
        .unwrap_or_default()
    }

    /// Signs a chain's head as of `time` (RFC 3339): for tests that need a
    /// checkpoint dated otherwise than now.
    pub fn sign_at(
        key: &SigningKey,
        head: &super::ChainHead,
        kind: Kind,
        time: &str,
    ) -> Checkpoint {
        let mut c = Checkpoint::sign(key, head, kind);
        c.time = time.to_owned();
        c.signature = key.sign(&c.message());
        c
    }

    /// Signs a chain's head.
    pub fn sign(key: &SigningKey, head: &super::ChainHead, kind: Kind) -> Checkpoint {
        let mut c = Checkpoint {
            chain_id: head.chain_id.clone(),
            seq: head.seq,
            hash: head.hash.clone(),
            time: super::format_time(chrono::Utc::now()),
            closed: kind == Kind::Final,
            adopted: kind == Kind::Adopted,
            key_id: key.public().key_id(),
            signature: String::new(),
        };
        c.signature = key.sign(&c.message());
        c
    }

    /// Whether `key` signed exactly this head.
    pub fn verified_by(&self, key: &PublicKey) -> bool {
        key.verifies(&self.message(), &self.signature)
    }
}

/// The checkpoints kept as files in `dir`, and the `*.json` files that are
/// not one (named, with why): what a verification reports and skips,
/// rather than failing whole on one junk file.
pub fn checkpoints_and_junk_in(dir: &Path) -> Result<(Vec<Checkpoint>, Vec<String>), KeyError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| KeyError(format!("{}: {e}", dir.display())))?;
    let mut good = Vec::new();
    let mut junk = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Checkpoint>(&t).map_err(|e| e.to_string()))
            {
                Ok(c) => good.push(c),
                Err(e) => junk.push(format!("{}: not a checkpoint ({e})", path.display())),
            }
        }
    }
    Ok((good, junk))
}

/// The checkpoints kept as files in `dir` (`audit.checkpoint_dir`).
pub fn checkpoints_in(dir: &Path) -> Result<Vec<Checkpoint>, KeyError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| KeyError(format!("{}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
            out.push(
                serde_json::from_str(&text)
                    .map_err(|e| KeyError(format!("{}: not a checkpoint: {e}", path.display())))?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_key_signs_nothing_after_its_retirement() {
        let dir = tempfile::tempdir().expect("dir");
        let (private, public) = new_pair().expect("pair");
        std::fs::write(dir.path().join("k"), private).expect("write");
        let key = SigningKey::load(&dir.path().join("k")).expect("load");
        let head = crate::audit::ChainHead {
            chain_id: "c1".into(),
            seq: 3,
            hash: "ab".into(),
        };
        let c = Checkpoint::sign(&key, &head, Kind::Running);
        let at = |days: i64| {
            crate::audit::format_time(chrono::Utc::now() + chrono::Duration::days(days))
        };
        // Retired yesterday: a checkpoint it signs today is a break.
        let retired =
            Keys::parse(&format!("{public} retired_at={}  # rotated", at(-1))).expect("keys");
        let why = retired.check(&c).expect_err("signed after its retirement");
        assert!(why.contains("retired at"), "{why}");
        // Retired tomorrow (or not at all): it verifies.
        assert!(
            Keys::parse(&format!("{public} retired_at={}", at(1)))
                .expect("keys")
                .check(&c)
                .is_ok()
        );
        assert!(Keys::parse(&public).expect("keys").check(&c).is_ok());
        // Written back as read.
        assert!(retired.to_text().contains("retired_at="));
        assert!(Keys::parse(&format!("{public} retired=yesterday")).is_err());
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed() {
        let dir = tempfile::tempdir().expect("dir");
        let (private, public) = new_pair().expect("pair");
        std::fs::write(dir.path().join("k"), private).expect("write");
        let key = SigningKey::load(&dir.path().join("k")).expect("load");
        let public = PublicKey::parse(&public).expect("public");
        assert_eq!(key.public(), public);
        let head = crate::audit::ChainHead {
            chain_id: "c1".into(),
            seq: 7,
            hash: "ab".into(),
        };
        let c = Checkpoint::sign(&key, &head, Kind::Running);
        assert!(c.verified_by(&public));
        let moved = Checkpoint {
            seq: 6,
            ..c.clone()
        };
        assert!(!moved.verified_by(&public));
        let (_, other) = new_pair().expect("pair");
        assert!(!c.verified_by(&PublicKey::parse(&other).expect("other")));
    }

    /// A key file lists keys one per line; a checkpoint verifies only with
    /// the key it names, which must be one of them.
    #[test]
    fn keys_verify_by_the_key_a_checkpoint_names() {
        let dir = tempfile::tempdir().expect("dir");
        let (private, current) = new_pair().expect("pair");
        let (_, retired) = new_pair().expect("pair");
        std::fs::write(dir.path().join("k"), private).expect("write");
        let key = SigningKey::load(&dir.path().join("k")).expect("load");
        let head = crate::audit::ChainHead {
            chain_id: "c1".into(),
            seq: 7,
            hash: "ab".into(),
        };
        let c = Checkpoint::sign(&key, &head, Kind::Running);
        let keys = Keys::parse(&format!(
            "# current\n{current}\n\n{retired}  # until 2026-12\n"
        ))
        .expect("keys");
        assert_eq!(keys.iter().count(), 2);
        assert_eq!(keys.check(&c), Ok(()));
        let only_retired = Keys::parse(&retired).expect("keys");
        assert!(
            only_retired
                .check(&c)
                .expect_err("unknown")
                .contains("names key")
        );
        // Naming another listed key does not help a signature made by none.
        let renamed = Checkpoint {
            key_id: only_retired.iter().next().expect("key").key_id(),
            ..c
        };
        assert!(keys.check(&renamed).expect_err("forged").contains("forged"));
        // Whether another instance signed it is signed too.
        let adopted = Checkpoint::sign(&key, &head, Kind::Adopted);
        assert_eq!(keys.check(&adopted), Ok(()));
        let disowned = Checkpoint {
            adopted: false,
            ..adopted
        };
        assert!(keys.check(&disowned).is_err());
        assert!(Keys::parse("# nothing\n").is_err());
        assert!(Keys::parse("ed25519:zz").is_err());
    }
}
