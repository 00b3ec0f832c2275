//! Models already on this machine: the folders of the models index (`comfix models index DIR`)
//! and the Hugging Face hub cache. A model a lock or a source names by digest is taken from there
//! instead of downloaded, as from a substituter — copied (or cloned) into the store and verified
//! while copied; the user's file is only read.
//!
//! The index is the store db's `file_digests`: per file its stat tuple (device, inode, size,
//! mtime, ctime) and BLAKE3, and its SHA-256 once a source asked for one (Hugging Face reports
//! SHA-256s; files of the size asked for are hashed then, once). A file whose stat tuple changed
//! since it was hashed is never taken (an edit in place changes its ctime, even with its mtime put
//! back) until `models index` hashes it again. The hub cache needs no index: its blobs are named
//! by their SHA-256, checked as they are copied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::local::{self, AddedFile};
use super::{Expected, FetchConfig, FetchError};
use crate::reporter::Reporter;
use crate::store::db::{FileStamp, KnownFile};
use crate::store::Store;

/// What `models index` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexReport {
    /// The folders indexed (absolute).
    pub folders: Vec<PathBuf>,
    /// Files in them.
    pub files: usize,
    /// Files hashed now (new or changed).
    pub hashed: usize,
    pub hashed_bytes: u64,
    /// Files recorded before that are gone, forgotten.
    pub forgotten: usize,
    /// Files that could not be read, with why.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub file: PathBuf,
    pub reason: String,
}

/// A file of the index, as `models ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct IndexedFile {
    pub path: String,
    pub size: u64,
    pub blake3: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Its stat tuple is not the one hashed: it changed since, and is not taken until indexed
    /// again.
    pub changed: bool,
}

/// Add `dirs` to the models index (none: every folder of the index) and hash what is new or
/// changed in them; files recorded under them that are gone are forgotten. `reporter` shows the
/// bytes hashed.
pub fn index(
    store: &Store,
    dirs: &[PathBuf],
    reporter: &dyn Reporter,
) -> Result<IndexReport, FetchError> {
    let mut report = IndexReport::default();
    let dirs = match dirs.is_empty() {
        true => store.model_folders()?,
        false => dirs.to_vec(),
    };
    for dir in &dirs {
        let real = std::fs::canonicalize(dir).map_err(FetchError::io(dir))?;
        if !real.is_dir() {
            return Err(FetchError::LocalSource {
                what: "models index".into(),
                file: dir.display().to_string(),
                reason: "it is not a folder".into(),
                hint: None,
            });
        }
        store.add_model_folder(&real)?;
        report.folders.push(real);
    }
    // By path: a folder inside another one indexed is walked twice, hashed once.
    let mut todo = BTreeMap::new();
    for dir in report.folders.clone() {
        let mut known: BTreeMap<String, KnownFile> = store
            .known_files_under(&dir)?
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    let file = err.path().unwrap_or(&dir).to_path_buf();
                    report.skipped.push(Skipped {
                        file,
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            // Symbolic links are not followed: what they lead to is indexed where it is.
            if !entry.file_type().is_file() {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) if meta.len() > 0 => meta,
                Ok(_) => continue,
                Err(err) => {
                    report.skipped.push(Skipped {
                        file: entry.path().to_path_buf(),
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            report.files += 1;
            let key = entry.path().to_string_lossy().into_owned();
            let recorded = known.remove(&key);
            let stamp = FileStamp::of(&meta);
            if recorded.is_none_or(|r| r.stamp != stamp) {
                todo.insert(entry.into_path(), stamp);
            }
        }
        for gone in known.into_keys() {
            store.forget_file(Path::new(&gone))?;
            report.forgotten += 1;
        }
    }
    let total: u64 = todo.values().map(|stamp| stamp.size).sum();
    reporter.start("hashing models", Some(total));
    for (path, stamp) in todo {
        match crate::store::tree::hash_file(&path, stamp.size) {
            Ok(digest) => {
                store.remember_digest(&path, &stamp, &digest)?;
                report.hashed += 1;
                report.hashed_bytes += stamp.size;
            }
            Err(err) => report.skipped.push(Skipped {
                file: path,
                reason: err.to_string(),
            }),
        }
        reporter.advance(stamp.size);
    }
    reporter.finish();
    Ok(report)
}

/// The files of the index under `folder` (every folder when `None`).
pub fn files(store: &Store, folder: Option<&Path>) -> Result<Vec<IndexedFile>, FetchError> {
    let folders = match folder {
        Some(folder) => vec![std::fs::canonicalize(folder).map_err(FetchError::io(folder))?],
        None => store.model_folders()?,
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for folder in folders {
        for file in store.known_files_under(&folder)? {
            if !seen.insert(file.path.clone()) {
                continue;
            }
            let changed = !file.stamp.is_current(Path::new(&file.path));
            out.push(IndexedFile {
                path: file.path,
                size: file.stamp.size,
                blake3: file.blake3,
                sha256: file.sha256,
                changed,
            });
        }
    }
    Ok(out)
}

/// What a file of this machine holds: its digests (from the index while its stat tuple is
/// unchanged, else hashed now), for `models which`.
pub fn digest_of(store: &Store, path: &Path) -> Result<(FileStamp, String, bool), FetchError> {
    let meta = std::fs::metadata(path).map_err(FetchError::io(path))?;
    let stamp = FileStamp::of(&meta);
    if let Some(digest) = store.known_digest(path)? {
        return Ok((stamp, blake3::Hash::from(digest).to_hex().to_string(), true));
    }
    let digest = crate::store::tree::hash_file(path, stamp.size).map_err(FetchError::io(path))?;
    Ok((
        stamp,
        blake3::Hash::from(digest).to_hex().to_string(),
        false,
    ))
}

/// What a model is asked for by: its digests (at least one), its size when known.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub blake3: Option<&'a Expected>,
    pub sha256: Option<&'a Expected>,
    pub size: Option<u64>,
}

/// A model taken from a file of this machine.
pub struct Taken {
    pub from: PathBuf,
    pub added: AddedFile,
}

/// Indexed files that hold `wanted` by their rows (unchanged since hashed). Files of the right
/// size whose SHA-256 is not known yet are hashed now, when a SHA-256 is what is asked.
fn indexed_candidates(store: &Store, wanted: &Wanted<'_>) -> Result<Vec<KnownFile>, FetchError> {
    let blake3 = wanted.blake3.map(|e| e.hex.as_str());
    let sha256 = wanted.sha256.map(|e| e.hex.as_str());
    let mut out = Vec::new();
    if blake3.is_none() && sha256.is_none() {
        return Ok(out);
    }
    for mut file in store.known_files(blake3, sha256, wanted.size)? {
        let path = PathBuf::from(&file.path);
        if !file.stamp.is_current(&path) {
            tracing::debug!(
                "`{}` changed since it was indexed; not taken",
                path.display()
            );
            continue;
        }
        if wanted.size.is_some_and(|size| size != file.stamp.size) {
            continue;
        }
        let blake3_ok = blake3.is_none_or(|hex| hex == file.blake3);
        let sha256_ok = match (sha256, &file.sha256) {
            (None, _) => true,
            (Some(hex), Some(known)) => hex == known,
            // A SHA-256 asked and none known: hashed once, remembered.
            (Some(hex), None) if blake3_ok => {
                let known = std::fs::File::open(&path)
                    .and_then(crate::files::sha256_hex_of)
                    .map_err(FetchError::io(&path))?;
                store.remember_sha256(&path, &file.stamp, &known)?;
                let same = hex == known;
                file.sha256 = Some(known);
                same
            }
            (Some(_), None) => false,
        };
        if blake3_ok && sha256_ok {
            out.push(file);
        }
    }
    Ok(out)
}

/// Files of this machine that may hold `wanted`: the index's and the hub cache's blobs named by
/// its SHA-256.
fn candidates(
    store: &Store,
    config: &FetchConfig,
    wanted: &Wanted<'_>,
) -> Result<Vec<PathBuf>, FetchError> {
    let mut out: Vec<PathBuf> = indexed_candidates(store, wanted)?
        .into_iter()
        .map(|file| PathBuf::from(file.path))
        .collect();
    if let Some(expected) = wanted.sha256 {
        out.extend(hub_blobs(config, &expected.hex));
    }
    Ok(out)
}

/// An indexed file that holds `wanted` (its row's digests, its stat tuple unchanged; nothing is
/// copied): what `--models-in-place` pins a model to where it lies.
pub fn in_place(store: &Store, wanted: &Wanted<'_>) -> Result<Option<KnownFile>, FetchError> {
    Ok(indexed_candidates(store, wanted)?.into_iter().next())
}

/// Whether a file of this machine may hold `wanted` (nothing is read): offline, a model found so
/// needs no network.
pub fn has(store: &Store, config: &FetchConfig, wanted: &Wanted<'_>) -> bool {
    let blake3 = wanted.blake3.map(|e| e.hex.as_str());
    let sha256 = wanted.sha256.map(|e| e.hex.as_str());
    let indexed = store
        .known_files(blake3, sha256, None)
        .unwrap_or_default()
        .iter()
        .any(|file| file.stamp.is_current(Path::new(&file.path)));
    indexed || sha256.is_some_and(|hex| !hub_blobs(config, hex).is_empty())
}

/// The hub cache's blobs named `sha256` (`models--*/blobs/<sha256>`, any repository).
fn hub_blobs(config: &FetchConfig, sha256: &str) -> Vec<PathBuf> {
    let Some(Ok(repos)) = config.hf_hub_cache.as_ref().map(std::fs::read_dir) else {
        return Vec::new();
    };
    repos
        .flatten()
        .map(|repo| repo.path().join("blobs").join(sha256))
        .filter(|blob| blob.is_file())
        .collect()
}

/// Take the model `wanted` from a file of this machine into the store as `file_name`, verified
/// against every digest while copied; `None` when no file holds it. A file whose bytes are not
/// what its index row says is forgotten and passed over: the wrong bytes are never used.
pub fn take(
    store: &Store,
    config: &FetchConfig,
    what: &str,
    file_name: &str,
    wanted: &Wanted<'_>,
) -> Result<Option<Taken>, FetchError> {
    for path in candidates(store, config, wanted)? {
        let how = local::How {
            sha256: wanted.sha256,
            blake3: wanted.blake3,
            progress: &|_| {},
            hard_link: false,
            asked_by_digest: true,
        };
        match local::add_file(store, what, &path, file_name, &how) {
            Ok(added) => {
                tracing::info!("{what}: taken from `{}`, verified", path.display());
                return Ok(Some(Taken { from: path, added }));
            }
            Err(err @ FetchError::HashMismatch { .. }) => {
                tracing::warn!(
                    "{what}: `{}` does not hold what was recorded of it, not used: {err}",
                    path.display()
                );
                store.forget_file(&path)?;
            }
            Err(err) => tracing::warn!("{what}: `{}` not used: {err}", path.display()),
        }
    }
    Ok(None)
}
