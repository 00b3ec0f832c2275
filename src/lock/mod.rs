//! The lock: a spec with every moving part pinned, written next to it as `<id>.lock.json`.
//!
//! Git refs are pinned to commits, registry versions to a download URL and the BLAKE3 of the zip,
//! model sources to a URL, size and hashes. Every entry also names the store path its content
//! lands in, so a store that holds the paths realizes the lock without any network. The format is
//! described in `docs/lock.md`; keys are written in a fixed order so the file diffs well.
//! Secrets never enter a lock: tokens are added to requests at fetch time only.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hint::Hint;

pub mod manifest;
mod matching;
pub(crate) use matching::core_matches;
pub use matching::{locked_core, locked_model, locked_node, stale_entries};

/// The only lock format version comfix reads and writes.
pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub lock_version: u32,
    pub version_id: String,
    pub comfy: LockedGit,
    #[serde(default)]
    pub custom_nodes: Vec<LockedNode>,
    #[serde(default)]
    pub models: Vec<LockedModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<LockedPython>,
    /// The spec's workflows, stored with the version's closure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<LockedWorkflow>,
}

/// A workflow JSON file of the version, as the spec names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedWorkflow {
    /// The path the spec gives, relative to the spec's directory.
    pub path: String,
    pub blake3: String,
    pub store_path: String,
}

/// The Python environment: the wheel set uv resolved for the version's requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedPython {
    /// The Python version the set was resolved for (`3.11`).
    pub version: String,
    /// What was resolved: each group of requirements with where it came from (`core`,
    /// `node <name>`, `spec`). When these change, the set is resolved again.
    pub requirements: Vec<Group>,
    /// One wheel per package, as this machine installs them. In a universal lock the file holds
    /// none (`universal` is the set); they are chosen from it on each machine, in memory.
    #[serde(default)]
    pub wheels: Vec<LockedWheel>,
    /// A universal resolution (the spec's `python.universal`): every package with its marker and
    /// every wheel the index has for it, for all platforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub universal: Option<Vec<UniversalPackage>>,
}

/// One package of a universal resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniversalPackage {
    /// The normalized project name.
    pub name: String,
    pub version: String,
    /// Where it is needed (PEP 508: `platform_machine == 'aarch64'`); absent: everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    pub wheels: Vec<UniversalWheel>,
}

/// One wheel of a universal package (its store path is known only where it was fetched).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniversalWheel {
    pub filename: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub sha256: String,
}

/// Requirements from one place: `core`, `node <name>` or `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub origin: String,
    pub requirements: Vec<String>,
}

/// One wheel of the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedWheel {
    /// The normalized project name.
    pub name: String,
    pub version: String,
    pub filename: String,
    /// Where it is downloaded from; absent when it was resolved from a `--wheels-dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub sha256: String,
    /// The wheel file in the store (content-addressed).
    pub store_path: String,
}

/// A git checkout pinned to a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedGit {
    pub repo: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    pub commit: String,
    /// The content-addressed store path of the checkout (`<digest>-<name>`), without `.git`.
    pub store_path: String,
}

/// A custom node, from git or from the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedNode {
    pub name: String,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<LockedGit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<LockedRegistry>,
    /// A development node: a directory on this machine, linked into homes as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LockedLocal>,
}

/// A development node's directory and the tree hash of its contents when it was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedLocal {
    /// Absolute.
    pub path: String,
    /// The tree hash (hex) of the directory at resolve time.
    pub tree_hash: String,
}

impl LockedLocal {
    /// Where the directory is and what its contents hash to now (for a warning when they
    /// changed since the lock).
    pub fn current_hash(&self) -> Option<String> {
        let node = crate::store::tree::hash_tree(std::path::Path::new(&self.path)).ok()?;
        Some(blake3::Hash::from(node.tree_hash()).to_hex().to_string())
    }
}

/// A Comfy Node Registry package version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedRegistry {
    pub id: String,
    pub version: String,
    pub download_url: String,
    /// BLAKE3 of the zip, recorded on first fetch (the registry publishes no hash).
    pub blake3: String,
    /// The unpacked package as ComfyUI-Manager installs it, with `.tracking`.
    pub store_path: String,
}

/// A model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedModel {
    /// The spec's `source`, to match the entry to the spec.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_subdir: Option<String>,
    pub filename: String,
    pub required: bool,
    /// Where the bytes come from, pinned (for Hugging Face: `/resolve/<commit>/<path>`).
    pub url: String,
    /// The Hugging Face commit, or the CivitAI model version id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub blake3: String,
    pub store_path: String,
}

impl LockedModel {
    /// Which spec model this entry pins: the same source placed at the same file.
    pub fn key(&self) -> (Option<&str>, &str) {
        (self.target_subdir.as_deref(), self.filename.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("Failed to read lock `{}`", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid lock `{}`: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("Lock `{}` has format version {found}; this comfix reads version {LOCK_VERSION}", .path.display())]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("Failed to write lock `{}`", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Hint for LockError {
    fn hint(&self) -> Option<String> {
        match self {
            LockError::Invalid { .. } | LockError::UnsupportedVersion { .. } => {
                Some("delete the lock and run `comfix resolve` to write a new one".into())
            }
            _ => None,
        }
    }

    fn is_user_error(&self) -> bool {
        matches!(
            self,
            LockError::Invalid { .. } | LockError::UnsupportedVersion { .. }
        )
    }
}

/// `versions/<id>.json` → `versions/<id>.lock.json`.
pub fn lock_path_for(spec_path: &Path, version_id: &str) -> PathBuf {
    spec_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{version_id}.lock.json"))
}

impl Lock {
    /// Read the lock at `path`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LockError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let found = value["lock_version"].as_u64().unwrap_or(0) as u32;
        if found != LOCK_VERSION {
            return Err(LockError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| LockError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// The lock as text: pretty JSON, fixed key order, trailing newline.
    pub fn to_text(&self) -> String {
        // A universal lock's per-machine wheels are this machine's, not the lock's.
        let shared;
        let lock = match &self.python {
            Some(p) if p.universal.is_some() && !p.wheels.is_empty() => {
                let mut copy = self.clone();
                if let Some(p) = copy.python.as_mut() {
                    p.wheels.clear();
                }
                shared = copy;
                &shared
            }
            _ => self,
        };
        let mut text = serde_json::to_string_pretty(lock).expect("a lock serializes");
        text.push('\n');
        text
    }

    /// Whether two locks say the same (a universal lock's per-machine wheels aside).
    pub fn same_as(&self, other: &Lock) -> bool {
        self.to_text() == other.to_text()
    }

    /// Write the lock atomically (temporary file in the same directory, then rename).
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let err = |source| LockError::Write {
            path: path.to_path_buf(),
            source,
        };
        crate::files::write_atomic(path, self.to_text().as_bytes()).map_err(err)
    }

    /// Every store path the lock names.
    pub fn store_paths(&self) -> Vec<&str> {
        let mut paths = vec![self.comfy.store_path.as_str()];
        for node in &self.custom_nodes {
            if let Some(git) = &node.git {
                paths.push(&git.store_path);
            }
            if let Some(registry) = &node.registry {
                paths.push(&registry.store_path);
            }
        }
        paths.extend(self.models.iter().map(|m| m.store_path.as_str()));
        if let Some(python) = &self.python {
            paths.extend(python.wheels.iter().map(|w| w.store_path.as_str()));
        }
        paths.extend(self.workflows.iter().map(|w| w.store_path.as_str()));
        paths
    }
}
