//! Channels: a named, signed pointer in a cache to one version (`channels/<name>.json`), which
//! CI publishes and machines follow (`comfix follow`), as Cachix Deploy's agents follow a
//! deployment. The pointer carries the version's spec and lock themselves, so a follower needs
//! nothing else to realize it: the store paths come from the same cache (or upstream), verified
//! as always. The pointer is written whole or not at all: a follower reads one version or the
//! other, never a mix.

use serde::{Deserialize, Serialize};

use super::Cache;
use crate::closure::ClosureError;
use crate::sign::{SecretKey, Trust};

/// The pointer format this comfix writes and reads.
pub const FORMAT: u32 = 1;

/// A channel's pointer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Channel {
    pub format: u32,
    pub channel: String,
    pub version_id: String,
    /// The version's spec, as its file's text.
    pub spec: String,
    /// The version's lock, as its file's text.
    pub lock: String,
    /// BLAKE3 of `lock`, to show and compare.
    pub lock_blake3: String,
    /// When it was published (seconds since the epoch): signed, so an older pointer cannot pass
    /// for a newer one's date.
    pub published_at: i64,
    #[serde(default)]
    pub signatures: Vec<String>,
}

/// Whether `name` may name a channel (a file name in the cache): letters, digits, `.`, `_`, `-`,
/// not starting with `.`.
pub fn check_name(name: &str) -> Result<(), ClosureError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(ClosureError::Unsafe {
            entry: name.to_string(),
            reason: "a channel's name is letters, digits, `.`, `_` and `-`, not starting with `.`"
                .into(),
        }),
    }
}

fn key(name: &str) -> String {
    format!("channels/{name}.json")
}

impl Channel {
    pub fn new(channel: &str, version_id: &str, spec: String, lock: String) -> Channel {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Channel {
            format: FORMAT,
            channel: channel.to_string(),
            version_id: version_id.to_string(),
            lock_blake3: blake3::hash(lock.as_bytes()).to_hex().to_string(),
            spec,
            lock,
            published_at: now,
            signatures: Vec::new(),
        }
    }

    /// What a signature covers: the channel's name, the date, and the version (its id, spec and
    /// lock, as a closure archive's version signature).
    pub fn fingerprint(&self) -> String {
        let version = crate::sign::version_fingerprint(
            &self.version_id,
            self.spec.as_bytes(),
            self.lock.as_bytes(),
        );
        format!(
            "comfix-channel-1;{};{};{version}",
            self.channel, self.published_at
        )
    }

    pub fn sign(&mut self, key: &SecretKey) {
        let signature = key.sign_text(&self.fingerprint());
        self.signatures.push(signature);
    }

    /// Refuse a pointer no trusted key signed, or one that is not what it says.
    pub fn check(&self, trust: &Trust) -> Result<(), ClosureError> {
        trust.check_channel(&self.channel, &self.fingerprint(), &self.signatures)?;
        let damaged = |reason: String| ClosureError::Damaged {
            reason: format!("the channel `{}`: {reason}", self.channel),
        };
        if blake3::hash(self.lock.as_bytes()).to_hex().as_str() != self.lock_blake3 {
            return Err(damaged("its lock is not the one its digest names".into()));
        }
        crate::store::check_name(&self.version_id)
            .map_err(|reason| damaged(format!("version id `{}`: {reason}", self.version_id)))?;
        let spec: serde_json::Value = serde_json::from_str(&self.spec)
            .map_err(|e| damaged(format!("its spec is not JSON: {e}")))?;
        if spec["version_id"] != self.version_id.as_str() {
            return Err(damaged(format!(
                "its spec is of `{}`, not `{}`",
                spec["version_id"], self.version_id
            )));
        }
        Ok(())
    }
}

impl Cache {
    /// Point the channel at a version (replacing what it pointed at), in one write.
    pub fn publish(&self, channel: &Channel) -> Result<(), ClosureError> {
        check_name(&channel.channel)?;
        self.create()?;
        let text = serde_json::to_vec_pretty(channel).expect("a channel serializes");
        self.backend.write(&key(&channel.channel), text)
    }

    /// The channel `name`'s pointer, when the cache has one (not yet checked: see
    /// [`Channel::check`]).
    pub fn channel(&self, name: &str) -> Result<Option<Channel>, ClosureError> {
        check_name(name)?;
        self.check()?;
        let Some(text) = self.backend.read(&key(name))? else {
            return Ok(None);
        };
        let channel: Channel =
            serde_json::from_slice(&text).map_err(|e| ClosureError::Damaged {
                reason: format!("`{}` in {}: {e}", key(name), self.location()),
            })?;
        if channel.format != FORMAT {
            return Err(ClosureError::Format {
                found: channel.format,
            });
        }
        if channel.channel != name {
            return Err(ClosureError::Damaged {
                reason: format!("`{}` names the channel `{}`", key(name), channel.channel),
            });
        }
        Ok(Some(channel))
    }
}
