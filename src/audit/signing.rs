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

/// A signed chain head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain_id: String,
    pub seq: i64,
    pub hash: String,
    /// RFC 3339, microseconds.
    pub time: String,
    /// Written when the writer stopped: nothing may follow it.
    #[serde(rename = "final")]
    pub closed: bool,
    pub key_id: String,
    pub signature: String,
}

impl Checkpoint {
    /// The bytes signed: the head, in a fixed order.
    pub fn message(chain_id: &str, seq: i64, hash: &str, time: &str, closed: bool) -> Vec<u8> {
        #[derive(Serialize)]
        struct Signed<'a> {
            chain_id: &'a str,
            seq: i64,
            hash: &'a str,
            time: &'a str,
            #[serde(rename = "final")]
            closed: bool,
        }
        serde_json::to_vec(&Signed {
            chain_id,
            seq,
            hash,
            time,
            closed,
        })
        .unwrap_or_default()
    }

    /// Signs a chain's head.
    pub fn sign(
        key: &SigningKey,
        chain_id: &str,
        seq: i64,
        hash: &str,
        closed: bool,
    ) -> Checkpoint {
        let time = super::format_time(chrono::Utc::now());
        let signature = key.sign(&Checkpoint::message(chain_id, seq, hash, &time, closed));
        Checkpoint {
            chain_id: chain_id.to_owned(),
            seq,
            hash: hash.to_owned(),
            time,
            closed,
            key_id: key.public().key_id(),
            signature,
        }
    }

    /// Whether `key` signed exactly this head.
    pub fn verified_by(&self, key: &PublicKey) -> bool {
        key.verifies(
            &Checkpoint::message(
                &self.chain_id,
                self.seq,
                &self.hash,
                &self.time,
                self.closed,
            ),
            &self.signature,
        )
    }
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
    fn a_checkpoint_verifies_only_as_signed() {
        let dir = tempfile::tempdir().expect("dir");
        let (private, public) = new_pair().expect("pair");
        std::fs::write(dir.path().join("k"), private).expect("write");
        let key = SigningKey::load(&dir.path().join("k")).expect("load");
        let public = PublicKey::parse(&public).expect("public");
        assert_eq!(key.public(), public);
        let c = Checkpoint::sign(&key, "c1", 7, "ab", false);
        assert!(c.verified_by(&public));
        let moved = Checkpoint {
            seq: 6,
            ..c.clone()
        };
        assert!(!moved.verified_by(&public));
        let (_, other) = new_pair().expect("pair");
        assert!(!c.verified_by(&PublicKey::parse(&other).expect("other")));
    }
}
