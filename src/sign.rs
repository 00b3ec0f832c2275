//! Signatures of store paths (ed25519). A key has a name; a signature is `<key name>:<base64>` over
//! a path's fingerprint — its name, tree hash, naming and references — so a signature vouches for
//! exactly those bytes under that name. Paths that arrive from a cache or an archive are
//! registered only when a trusted key signed them, unless the user opts out (`--no-check-sigs`);
//! their digests are checked either way.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::hint::Hint;
use crate::store::PathMeta;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("`{text}` is not a {what} (`<name>:<base64>`): {reason}")]
    BadKey {
        what: &'static str,
        text: String,
        reason: String,
    },
    #[error("`{name}` is not signed by a trusted key{}", signers(.signed_by))]
    Untrusted {
        name: String,
        signed_by: Vec<String>,
    },
    #[error("Cannot read random bytes for a key: {0}")]
    Random(std::io::Error),
}

fn signers(names: &[String]) -> String {
    if names.is_empty() {
        " (it has no signature)".into()
    } else {
        format!(" (signed by {})", crate::hint::code_list(names))
    }
}

impl Hint for SignError {
    fn hint(&self) -> Option<String> {
        match self {
            SignError::Untrusted { .. } => Some(
                "trust the key that signs the cache (`--trusted-key NAME:KEY`, `COMFIX_TRUSTED_KEYS` or `trusted-keys` in the config file), sign when copying (`--sign-key`), or accept unsigned paths with `--no-check-sigs` (digests are checked either way)".into(),
            ),
            SignError::BadKey { .. } => Some(
                "`comfix key generate --name NAME` writes a key pair; public keys look like `name:BASE64`".into(),
            ),
            SignError::Random(_) => None,
        }
    }

    fn is_user_error(&self) -> bool {
        !matches!(self, SignError::Random(_))
    }
}

/// What a signature covers.
pub fn fingerprint(meta: &PathMeta) -> String {
    format!(
        "comfix-path-1;{};{};{};{}",
        meta.name,
        meta.tree_hash,
        meta.naming,
        meta.references.join(",")
    )
}

fn split<'a>(what: &'static str, text: &'a str) -> Result<(&'a str, Vec<u8>), SignError> {
    let bad = |reason: String| SignError::BadKey {
        what,
        text: text.to_string(),
        reason,
    };
    let (name, data) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| bad("no `:`".into()))?;
    if name.is_empty() {
        return Err(bad("no name".into()));
    }
    let bytes = STANDARD.decode(data).map_err(|e| bad(e.to_string()))?;
    Ok((name, bytes))
}

/// A signing key.
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl SecretKey {
    pub fn generate(name: &str) -> Result<SecretKey, SignError> {
        let mut seed = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(SignError::Random)?,
            &mut seed,
        )
        .map_err(SignError::Random)?;
        Ok(SecretKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn parse(text: &str) -> Result<SecretKey, SignError> {
        let (name, bytes) = split("secret key", text)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| SignError::BadKey {
            what: "secret key",
            text: format!("{name}:…"),
            reason: "not 32 bytes".into(),
        })?;
        Ok(SecretKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn to_text(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.key.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `<name>:<base64 signature>` of `meta`'s fingerprint.
    pub fn sign(&self, meta: &PathMeta) -> String {
        let signature = self.key.sign(fingerprint(meta).as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(signature.to_bytes()))
    }
}

/// A key that verifies signatures.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, SignError> {
        let (name, bytes) = split("public key", text)?;
        let bad = |reason: &str| SignError::BadKey {
            what: "public key",
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| bad(&e.to_string()))?;
        Ok(PublicKey {
            name: name.to_string(),
            key,
        })
    }

    pub fn to_text(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.key.to_bytes()))
    }

    fn verifies(&self, meta: &PathMeta, signature: &str) -> bool {
        let Some((name, data)) = signature.split_once(':') else {
            return false;
        };
        let Ok(bytes) = STANDARD.decode(data) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        name == self.name
            && self
                .key
                .verify(fingerprint(meta).as_bytes(), &signature)
                .is_ok()
    }
}

/// Which signatures are required of paths that arrive.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
    /// `--no-check-sigs`: any path is taken (its digests are still checked).
    pub accept_unsigned: bool,
}

impl Trust {
    /// Whether a trusted key signed `meta`.
    pub fn check(&self, meta: &PathMeta, signatures: &[String]) -> Result<(), SignError> {
        if self.accept_unsigned {
            return Ok(());
        }
        if signatures
            .iter()
            .any(|s| self.keys.iter().any(|k| k.verifies(meta, s)))
        {
            return Ok(());
        }
        Err(SignError::Untrusted {
            name: meta.name.clone(),
            signed_by: signatures
                .iter()
                .filter_map(|s| s.split_once(':').map(|(n, _)| n.to_string()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> PathMeta {
        PathMeta {
            name: "abc-x".into(),
            kind: "file".into(),
            tree_hash: "00".repeat(32),
            size: 1,
            file_count: 1,
            references: vec!["def-y".into()],
            naming: "content".into(),
            registered_at: 0,
        }
    }

    #[test]
    fn a_signature_covers_the_name_the_bytes_and_the_references() {
        let key = SecretKey::generate("team-1").unwrap();
        let again = SecretKey::parse(&key.to_text()).unwrap();
        let public = PublicKey::parse(&again.public().to_text()).unwrap();
        let trust = Trust {
            keys: vec![public],
            accept_unsigned: false,
        };
        let signature = key.sign(&meta());
        assert!(trust
            .check(&meta(), std::slice::from_ref(&signature))
            .is_ok());
        for changed in [
            PathMeta {
                tree_hash: "11".repeat(32),
                ..meta()
            },
            PathMeta {
                name: "abc-z".into(),
                ..meta()
            },
            PathMeta {
                references: Vec::new(),
                ..meta()
            },
        ] {
            assert!(trust
                .check(&changed, std::slice::from_ref(&signature))
                .is_err());
        }
        let other = SecretKey::generate("team-1").unwrap().sign(&meta());
        let err = trust.check(&meta(), &[other]).unwrap_err();
        assert!(err.to_string().contains("signed by `team-1`"), "{err}");
        assert!(trust
            .check(&meta(), &[])
            .unwrap_err()
            .to_string()
            .contains("no signature"));
        let open = Trust {
            keys: Vec::new(),
            accept_unsigned: true,
        };
        assert!(open.check(&meta(), &[]).is_ok());
        assert!(PublicKey::parse("nokey").is_err());
        assert!(PublicKey::parse("k:!!!").is_err());
    }
}
