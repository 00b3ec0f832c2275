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
    #[error("The spec and lock of `{version_id}` are not signed by a trusted key{}", signers(.signed_by))]
    UntrustedVersion {
        version_id: String,
        signed_by: Vec<String>,
    },
    #[error("The channel `{channel}` is not signed by a trusted key{}", signers(.signed_by))]
    UntrustedChannel {
        channel: String,
        signed_by: Vec<String>,
    },
    #[error("`{name}` is input-addressed (its name does not come from its bytes) and not signed by a trusted key: unsigned, nothing can vouch for it")]
    UnsignedInputAddressed { name: String },
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
            SignError::Untrusted { .. }
            | SignError::UntrustedVersion { .. }
            | SignError::UntrustedChannel { .. } => Some(
                "trust the key that signs the cache (`--trusted-key NAME:KEY`, `COMFIX_TRUSTED_KEYS` or `trusted-keys` in the config file), sign when copying (`--sign-key`), or accept unsigned paths with `--no-check-sigs` (digests are checked either way)".into(),
            ),
            SignError::BadKey { .. } => Some(
                "`comfix key generate --name NAME` writes a key pair; public keys look like `name:BASE64`".into(),
            ),
            SignError::UnsignedInputAddressed { .. } => Some(
                "a venv or overlay is built here from its inputs when it comes unsigned; sign it where it was built (`--sign-key`) to take it as it is".into(),
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

/// What a version's signature covers: its id and the BLAKE3 of its spec's and its lock's bytes,
/// so a spec or lock changed after signing (a node pointed at another repository) is refused.
pub fn version_fingerprint(version_id: &str, spec: &[u8], lock: &[u8]) -> String {
    format!(
        "comfix-version-1;{version_id};{};{}",
        blake3::hash(spec).to_hex(),
        blake3::hash(lock).to_hex()
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
        self.sign_text(&fingerprint(meta))
    }

    /// `<name>:<base64 signature>` of a fingerprint.
    pub fn sign_text(&self, fingerprint: &str) -> String {
        let signature = self.key.sign(fingerprint.as_bytes());
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

    fn verifies(&self, fingerprint: &str, signature: &str) -> bool {
        let Some((name, data)) = signature.split_once(':') else {
            return false;
        };
        let Ok(bytes) = STANDARD.decode(data) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        name == self.name && self.key.verify(fingerprint.as_bytes(), &signature).is_ok()
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
    /// Whether `meta` may be registered: a trusted key signed it, or signatures are waived
    /// (`--no-check-sigs`) and its name comes from its bytes (content-addressed: the digests
    /// checked on arrival are all the proof it needs). An unsigned input-addressed path (a venv)
    /// is never taken: its name says nothing of its bytes.
    pub fn check(&self, meta: &PathMeta, signatures: &[String]) -> Result<(), SignError> {
        let fingerprint = fingerprint(meta);
        if self.signed(&fingerprint, signatures) {
            return Ok(());
        }
        if self.accept_unsigned {
            if meta.naming == "input" {
                return Err(SignError::UnsignedInputAddressed {
                    name: meta.name.clone(),
                });
            }
            return Ok(());
        }
        Err(SignError::Untrusted {
            name: meta.name.clone(),
            signed_by: key_names(signatures),
        })
    }

    /// Whether a version's spec and lock may be written: a trusted key signed them, or
    /// signatures are waived.
    pub fn check_version(
        &self,
        version_id: &str,
        spec: &[u8],
        lock: &[u8],
        signatures: &[String],
    ) -> Result<(), SignError> {
        let fingerprint = version_fingerprint(version_id, spec, lock);
        if self.accept_unsigned || self.signed(&fingerprint, signatures) {
            return Ok(());
        }
        Err(SignError::UntrustedVersion {
            version_id: version_id.to_string(),
            signed_by: key_names(signatures),
        })
    }

    /// Whether a channel's pointer (its fingerprint: `comfix-channel-1;…`) may be followed:
    /// a trusted key signed it, or signatures are waived.
    pub fn check_channel(
        &self,
        channel: &str,
        fingerprint: &str,
        signatures: &[String],
    ) -> Result<(), SignError> {
        if self.accept_unsigned || self.signed(fingerprint, signatures) {
            return Ok(());
        }
        Err(SignError::UntrustedChannel {
            channel: channel.to_string(),
            signed_by: key_names(signatures),
        })
    }

    fn signed(&self, fingerprint: &str, signatures: &[String]) -> bool {
        signatures
            .iter()
            .any(|s| self.keys.iter().any(|k| k.verifies(fingerprint, s)))
    }
}

fn key_names(signatures: &[String]) -> Vec<String> {
    signatures
        .iter()
        .filter_map(|s| s.split_once(':').map(|(n, _)| n.to_string()))
        .collect()
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
        // Waived signatures take content-addressed paths only.
        let venv = PathMeta {
            naming: "input".into(),
            ..meta()
        };
        let err = open.check(&venv, &[]).unwrap_err();
        assert!(
            matches!(err, SignError::UnsignedInputAddressed { .. }),
            "{err}"
        );
        let signed_venv = key.sign(&venv);
        let both = Trust {
            keys: trust.keys.clone(),
            accept_unsigned: true,
        };
        assert!(both.check(&venv, &[signed_venv]).is_ok());
        assert!(PublicKey::parse("nokey").is_err());
        assert!(PublicKey::parse("k:!!!").is_err());
    }

    /// A version's signature covers its id, its spec and its lock: any of them changed after
    /// signing is refused (unless signatures are waived).
    #[test]
    fn a_version_signature_covers_its_spec_and_its_lock() {
        let key = SecretKey::generate("team-1").unwrap();
        let trust = Trust {
            keys: vec![key.public()],
            accept_unsigned: false,
        };
        let signature = key.sign_text(&version_fingerprint("v1", b"spec", b"lock"));
        let sigs = std::slice::from_ref(&signature);
        assert!(trust.check_version("v1", b"spec", b"lock", sigs).is_ok());
        for (id, spec, lock) in [
            ("v2", &b"spec"[..], &b"lock"[..]),
            ("v1", b"spec ", b"lock"),
            ("v1", b"spec", b"lock "),
        ] {
            let err = trust.check_version(id, spec, lock, sigs).unwrap_err();
            assert!(
                err.to_string().contains("not signed by a trusted key"),
                "{err}"
            );
        }
        assert!(trust.check_version("v1", b"spec", b"lock", &[]).is_err());
    }
}
