//! A binary cache directory that many stores share without sharing a database: a USB disk, NFS,
//! a network volume (`docs/cache.md` is the format). Per store path a metadata file
//! `paths/<name>.json` (its sidecar, the archive it is in, compression, size, signatures) and an
//! archive `archives/<tree hash>.tar.zst` (deduplicated by content). Writers put the archive
//! first and the metadata last, each by rename, so a reader never sees a path whose data is
//! missing, and two stores pushing the same path at once both succeed.
//!
//! As a substituter (`--substituter file://DIR`), it is asked for a derivation's output before the
//! executor fetches or builds it; what it gives is verified (tree hash, name) before it is
//! registered, its references first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::build::exec::Substituter;
use crate::build::{BuildError, Derivation};
use crate::closure::{self, io, ClosureError};
use crate::store::{PathMeta, Store};

/// The cache format this comfix writes and reads.
pub const FORMAT: u32 = 1;
const MARKER: &str = "comfix-cache.json";

/// The metadata of one store path in a cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheEntry {
    #[serde(flatten)]
    pub meta: PathMeta,
    /// Relative to the cache's root.
    pub archive: String,
    pub compression: String,
    pub archive_size: u64,
    #[serde(default)]
    pub signatures: Vec<String>,
}

/// What `store copy` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub copied: Vec<String>,
    /// Paths the destination had already.
    pub present: usize,
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct DirCache {
    root: PathBuf,
    /// What a path read from it must be signed by.
    pub trust: crate::sign::Trust,
}

impl DirCache {
    /// `file://DIR` or `DIR`.
    pub fn parse(location: &str) -> Result<DirCache, ClosureError> {
        let root = match location.strip_prefix("file://") {
            Some(path) => PathBuf::from(path),
            None if location.contains("://") => {
                return Err(ClosureError::Foreign {
                    reason: format!(
                        "`{location}` is not a cache directory (`file://DIR` or `DIR`)"
                    ),
                })
            }
            None => PathBuf::from(location),
        };
        Ok(DirCache {
            root,
            trust: crate::sign::Trust::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Make the directory a cache (when it is not one yet).
    pub fn create(&self) -> Result<(), ClosureError> {
        for dir in ["paths", "archives", "tmp"] {
            let at = self.root.join(dir);
            fs::create_dir_all(&at).map_err(io(&at))?;
        }
        let marker = self.root.join(MARKER);
        if !marker.exists() {
            let text = serde_json::to_vec(&serde_json::json!({ "format": FORMAT })).expect("json");
            write_atomic(&self.root.join("tmp"), &marker, &text)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ClosureError> {
        let marker = self.root.join(MARKER);
        let text = fs::read(&marker).map_err(|_| ClosureError::Foreign {
            reason: format!(
                "`{}` is not a comfix cache directory (no `{MARKER}`)",
                self.root.display()
            ),
        })?;
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        match value["format"].as_u64() {
            Some(f) if f as u32 == FORMAT => Ok(()),
            other => Err(ClosureError::Format {
                found: other.unwrap_or(0) as u32,
            }),
        }
    }

    fn entry_path(&self, name: &str) -> PathBuf {
        self.root.join("paths").join(format!("{name}.json"))
    }

    /// The metadata of `name`, when the cache has it.
    pub fn entry(&self, name: &str) -> Result<Option<CacheEntry>, ClosureError> {
        crate::store::check_name(name).map_err(|reason| ClosureError::Unsafe {
            entry: name.to_string(),
            reason,
        })?;
        let path = self.entry_path(name);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let entry: CacheEntry =
            serde_json::from_slice(&text).map_err(|e| ClosureError::Damaged {
                reason: format!("`{}`: {e}", path.display()),
            })?;
        let hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&entry.meta.tree_hash) {
            return Err(ClosureError::Damaged {
                reason: format!("`{}` names no tree hash", path.display()),
            });
        }
        if entry.meta.name != name {
            return Err(ClosureError::Damaged {
                reason: format!("`{}` describes `{}`", path.display(), entry.meta.name),
            });
        }
        Ok(Some(entry))
    }

    /// Push `names` and everything they reference (references first); paths the cache has are
    /// left as they are.
    /// With `sign`, each path's metadata carries its signature (added to paths already there).
    pub fn push(
        &self,
        store: &Store,
        names: &[String],
        sign: Option<&crate::sign::SecretKey>,
    ) -> Result<CopyReport, ClosureError> {
        self.create()?;
        let mut report = CopyReport::default();
        for meta in closure::closure_of(store, names)? {
            if let Some(mut entry) = self.entry(&meta.name)? {
                report.present += 1;
                if let Some(key) = sign {
                    let signature = key.sign(&entry.meta);
                    if !entry.signatures.contains(&signature) {
                        entry.signatures.push(signature);
                        self.write_entry(&entry)?;
                    }
                }
                continue;
            }
            let name = meta.name.clone();
            self.push_one(store, meta, sign)?;
            report.copied.push(name);
            crate::fault::pause_point("cache-pushed-one");
        }
        Ok(report)
    }

    fn write_entry(&self, entry: &CacheEntry) -> Result<(), ClosureError> {
        let text = serde_json::to_vec_pretty(entry).expect("an entry serializes");
        write_atomic(
            &self.root.join("tmp"),
            &self.entry_path(&entry.meta.name),
            &text,
        )
    }

    fn push_one(
        &self,
        store: &Store,
        meta: PathMeta,
        sign: Option<&crate::sign::SecretKey>,
    ) -> Result<(), ClosureError> {
        let tmp = self.root.join("tmp");
        let archive = format!("archives/{}.tar.zst", meta.tree_hash);
        let archive_path = self.root.join(&archive);
        if !archive_path.exists() {
            // Data first: a reader that sees the metadata finds the archive whole.
            let mut temp = tempfile::NamedTempFile::new_in(&tmp).map_err(io(&tmp))?;
            {
                let mut encoder = zstd::stream::write::Encoder::new(temp.as_file_mut(), 3)
                    .map_err(io(&archive_path))?;
                encoder.include_checksum(true).map_err(io(&archive_path))?;
                let mut tar = tar::Builder::new(encoder);
                closure::append_path(&mut tar, store, &meta.name)?;
                let encoder = tar.into_inner().map_err(io(&archive_path))?;
                encoder
                    .finish()
                    .map_err(io(&archive_path))?
                    .flush()
                    .map_err(io(&archive_path))?;
            }
            temp.as_file().sync_all().map_err(io(&archive_path))?;
            temp.persist(&archive_path)
                .map_err(|e| io(&archive_path)(e.error))?;
        }
        let archive_size = fs::metadata(&archive_path)
            .map_err(io(&archive_path))?
            .len();
        let signatures = sign.map(|key| vec![key.sign(&meta)]).unwrap_or_default();
        let entry = CacheEntry {
            meta,
            archive,
            compression: "zstd".into(),
            archive_size,
            signatures,
        };
        self.write_entry(&entry)
    }

    /// Put `name` and what it references into `store` from the cache; `false` when the cache
    /// lacks one of them. Each path is verified before it is registered.
    pub fn fetch(&self, store: &Store, name: &str) -> Result<bool, ClosureError> {
        self.fetch_within(store, name, &mut Vec::new())
    }

    /// `fetch`, with the chain of paths whose references are being fetched (a cycle is refused).
    fn fetch_within(
        &self,
        store: &Store,
        name: &str,
        chain: &mut Vec<String>,
    ) -> Result<bool, ClosureError> {
        if store.query(name)?.is_some() && store.path_of(name).exists() {
            return Ok(true);
        }
        if chain.iter().any(|c| c == name) {
            return Err(ClosureError::Damaged {
                reason: format!("`{name}` references itself through {}", chain.join(" → ")),
            });
        }
        self.check()?;
        let Some(entry) = self.entry(name)? else {
            return Ok(false);
        };
        chain.push(name.to_string());
        for reference in &entry.meta.references {
            if !self.fetch_within(store, reference, chain)? {
                return Ok(false);
            }
        }
        chain.pop();
        self.trust.check(&entry.meta, &entry.signatures)?;
        let archive = self.root.join(&entry.archive);
        if entry.compression != "zstd"
            || entry.archive != format!("archives/{}.tar.zst", entry.meta.tree_hash)
        {
            return Err(ClosureError::Damaged {
                reason: format!(
                    "`{name}`: an archive `{}` ({})",
                    entry.archive, entry.compression
                ),
            });
        }
        let file = fs::File::open(&archive).map_err(io(&archive))?;
        closure::import_path(store, &entry.meta, std::io::BufReader::new(file))?;
        Ok(true)
    }

    /// Copy `names` (and their references) from the cache into `store`.
    pub fn pull(&self, store: &Store, names: &[String]) -> Result<CopyReport, ClosureError> {
        let mut report = CopyReport::default();
        for name in names {
            let had = store.query(name)?.is_some();
            if !self.fetch(store, name)? {
                return Err(ClosureError::NotInStore { name: name.clone() });
            }
            if had {
                report.present += 1;
            } else {
                report.copied.push(name.clone());
            }
        }
        Ok(report)
    }
}

impl Substituter for DirCache {
    fn substitute(&self, store: &Store, derivation: &Derivation) -> Result<bool, BuildError> {
        let Some(output) = &derivation.output else {
            return Ok(false);
        };
        self.fetch(store, output)
            .map_err(|e| BuildError::Substituter {
                what: derivation.describe(),
                from: self.root.display().to_string(),
                message: e.to_string(),
            })
    }
}

fn write_atomic(tmp: &Path, to: &Path, bytes: &[u8]) -> Result<(), ClosureError> {
    let mut temp = tempfile::NamedTempFile::new_in(tmp).map_err(io(tmp))?;
    temp.write_all(bytes).map_err(io(to))?;
    temp.as_file().sync_all().map_err(io(to))?;
    temp.persist(to).map_err(|e| io(to)(e.error))?;
    Ok(())
}
