//! A binary cache that many stores share without sharing a database (`docs/cache.md` is the
//! format): a directory (a USB disk, NFS, a network volume) or a bucket of S3-compatible object
//! storage, with the same layout. Per store path a metadata object `paths/<name>.json` (its
//! sidecar, the archive it is in, compression, size, signatures) and an archive
//! `archives/<tree hash>.tar.zst` (deduplicated by content). Writers put the archive first and
//! the metadata last, each whole or not at all, and a path's metadata only after its
//! references', so a reader never sees a path whose data is missing, and two stores pushing the
//! same path at once both succeed.
//!
//! As a substituter (`--substituter file://DIR` or `s3://BUCKET/PREFIX`), it is asked for a
//! derivation's output before the executor fetches or builds it; what it gives is verified (tree
//! hash, name, signatures) before it is registered, its references first.

pub mod channel;
pub mod dir;
pub mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::closure::{self, ClosureError};
use crate::derive::exec::Substituter;
use crate::derive::{BuildError, Derivation};
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

/// Where a cache keeps its objects: named by keys (`paths/<name>.json`,
/// `archives/<hash>.tar.zst`), each written whole or not at all.
pub trait Backend: Send + Sync {
    /// Where it is, for messages (never a credential).
    fn location(&self) -> String;
    /// Make it ready for writing.
    fn prepare(&self) -> Result<(), ClosureError>;
    /// A small object's bytes, `None` when there is none.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, ClosureError>;
    /// Write a small object at once.
    fn write(&self, key: &str, bytes: Vec<u8>) -> Result<(), ClosureError>;
    /// An object's size, `None` when there is none.
    fn size(&self, key: &str) -> Result<Option<u64>, ClosureError>;
    /// The names of the objects in `dir` (one level), with when each was written.
    fn list(&self, dir: &str) -> Result<Vec<(String, SystemTime)>, ClosureError>;
    fn delete(&self, key: &str) -> Result<(), ClosureError>;
    /// Write a large object as `produce` writes it (`work`: the store's `tmp/`, for what a
    /// resumed upload needs); returns its size. Produced again, it must be the same bytes.
    fn upload(
        &self,
        key: &str,
        work: &Path,
        produce: &mut dyn FnMut(&mut dyn Write) -> Result<(), ClosureError>,
    ) -> Result<u64, ClosureError>;
    /// Stream an object, `None` when there is none.
    fn open(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ClosureError>;
}

/// A binary cache: a directory or a bucket.
pub struct Cache {
    backend: Box<dyn Backend>,
    /// What a path read from it must be signed by.
    pub trust: crate::sign::Trust,
    /// How many archives are sent at once by `push`, and fetched at once by substitutions.
    pub jobs: usize,
    /// The fetches in progress.
    fetching: (Mutex<usize>, Condvar),
    /// Its format was read and is ours.
    checked: AtomicBool,
    /// Why it cannot be read at all (it stalled, is not a cache, cannot be reached): a
    /// substituter that failed so is passed over for the rest of the process, not asked again
    /// for every derivation.
    unusable: std::sync::OnceLock<String>,
    progress: ProgressBar,
    show_progress: bool,
}

/// What `cache prune` removed (or, dry, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub kept: usize,
    pub removed_paths: Vec<String>,
    pub removed_archives: Vec<String>,
    /// Archives no metadata names that are newer than the grace period (a push in progress).
    pub young_archives: usize,
}

fn archive_key(tree_hash: &str) -> String {
    format!("archives/{tree_hash}.tar.zst")
}

fn entry_key(name: &str) -> String {
    format!("paths/{name}.json")
}

impl Cache {
    /// `s3://BUCKET/PREFIX`, `https://HOST/PATH` (read-only), `file://DIR` or `DIR`.
    pub fn open(location: &str) -> Result<Cache, ClosureError> {
        let backend: Box<dyn Backend> = if location.starts_with("s3://") {
            Box::new(s3::ObjectBackend::open(location)?)
        } else if location.starts_with("https://") || location.starts_with("http://") {
            Box::new(s3::ObjectBackend::open_http(location)?)
        } else if let Some(path) = location.strip_prefix("file://") {
            Box::new(dir::DirBackend::new(path.into()))
        } else if location.contains("://") {
            return Err(ClosureError::Foreign {
                reason: format!(
                    "`{location}` is not a cache (`s3://BUCKET/PREFIX`, `https://HOST/PATH`, `file://DIR` or `DIR`)"
                ),
            });
        } else {
            Box::new(dir::DirBackend::new(location.into()))
        };
        let progress = ProgressBar::hidden();
        progress.set_style(
            ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("a valid template"),
        );
        Ok(Cache {
            backend,
            trust: crate::sign::Trust::default(),
            jobs: 1,
            fetching: (Mutex::new(0), Condvar::new()),
            checked: AtomicBool::new(false),
            unusable: std::sync::OnceLock::new(),
            progress,
            show_progress: false,
        })
    }

    /// Draw progress bars on stderr (when it is a terminal).
    pub fn show_progress(&mut self, on: bool) {
        self.show_progress = on;
        if on {
            self.progress.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    fn bar(&self, length: Option<u64>) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
        bar.set_style(self.progress.style());
        bar
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Make it a cache (when it is not one yet).
    pub fn create(&self) -> Result<(), ClosureError> {
        self.backend.prepare()?;
        if self.backend.size(MARKER)?.is_none() {
            let text = serde_json::to_vec(&serde_json::json!({ "format": FORMAT })).expect("json");
            self.backend.write(MARKER, text)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ClosureError> {
        if self.checked.load(Ordering::SeqCst) {
            return Ok(());
        }
        let text = self
            .backend
            .read(MARKER)?
            .ok_or_else(|| ClosureError::Foreign {
                reason: format!(
                    "`{}` is not a comfix cache (no `{MARKER}`)",
                    self.location()
                ),
            })?;
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        match value["format"].as_u64() {
            Some(f) if f as u32 == FORMAT => {
                self.checked.store(true, Ordering::SeqCst);
                Ok(())
            }
            other => Err(ClosureError::Format {
                found: other.unwrap_or(0) as u32,
            }),
        }
    }

    /// The metadata of `name`, when the cache has it.
    pub fn entry(&self, name: &str) -> Result<Option<CacheEntry>, ClosureError> {
        crate::store::check_name(name).map_err(|reason| ClosureError::Unsafe {
            entry: name.to_string(),
            reason,
        })?;
        let key = entry_key(name);
        let Some(text) = self.backend.read(&key)? else {
            return Ok(None);
        };
        let shown = format!("{} in {}", key, self.location());
        let entry: CacheEntry =
            serde_json::from_slice(&text).map_err(|e| ClosureError::Damaged {
                reason: format!("`{shown}`: {e}"),
            })?;
        let hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&entry.meta.tree_hash) {
            return Err(ClosureError::Damaged {
                reason: format!("`{shown}` names no tree hash"),
            });
        }
        if entry.meta.name != name {
            return Err(ClosureError::Damaged {
                reason: format!("`{shown}` describes `{}`", entry.meta.name),
            });
        }
        Ok(Some(entry))
    }

    fn write_entry(&self, entry: &CacheEntry) -> Result<(), ClosureError> {
        let text = serde_json::to_vec_pretty(entry).expect("an entry serializes");
        self.backend.write(&entry_key(&entry.meta.name), text)
    }

    /// Push `names` and everything they reference; paths the cache has are left as they are.
    /// Archives go up `jobs` at a time; each path's metadata is written once its archive is
    /// there and its references' metadata is. With `sign`, each path's metadata carries its
    /// signature (added to paths already there).
    pub fn push(
        &self,
        store: &Store,
        names: &[String],
        sign: Option<&crate::sign::SecretKey>,
    ) -> Result<CopyReport, ClosureError> {
        self.create()?;
        let mut report = CopyReport::default();
        let mut todo = Vec::new();
        for meta in closure::closure_of(store, names)? {
            let Some(mut entry) = self.entry(&meta.name)? else {
                todo.push(meta);
                continue;
            };
            report.present += 1;
            if let Some(key) = sign {
                let signature = key.sign(&entry.meta);
                if !entry.signatures.contains(&signature) {
                    entry.signatures.push(signature);
                    self.write_entry(&entry)?;
                }
            }
        }
        self.progress.reset();
        self.progress
            .set_length(todo.iter().map(|m| m.size).sum::<u64>());
        self.progress
            .set_message(format!("pushing to {}", self.location()));
        type Sent = Option<Result<u64, ClosureError>>;
        let sent: Mutex<Vec<Sent>> = Mutex::new((0..todo.len()).map(|_| None).collect());
        let ready = Condvar::new();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let mut failed = None;
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.clamp(1, todo.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= todo.len() || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let result = self.put_archive(store, &todo[i]);
                    sent.lock().expect("never poisoned")[i] = Some(result);
                    ready.notify_all();
                });
            }
            // Metadata in closure order (references first), each after its archive.
            for (i, meta) in todo.iter().enumerate() {
                let mut guard = sent.lock().expect("never poisoned");
                while guard[i].is_none() {
                    guard = ready.wait(guard).expect("never poisoned");
                }
                let result = guard[i].take().expect("waited for");
                drop(guard);
                let written = result.and_then(|archive_size| {
                    let signatures = sign.map(|key| vec![key.sign(meta)]).unwrap_or_default();
                    self.write_entry(&CacheEntry {
                        meta: meta.clone(),
                        archive: archive_key(&meta.tree_hash),
                        compression: "zstd".into(),
                        archive_size,
                        signatures,
                    })
                });
                if let Err(e) = written {
                    stop.store(true, Ordering::SeqCst);
                    failed = Some(e);
                    break;
                }
                report.copied.push(meta.name.clone());
                crate::fault::pause_point("cache-pushed-one");
            }
        });
        self.progress.finish_and_clear();
        match failed {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// The archive of `meta`, sent unless the cache has it; returns its size.
    fn put_archive(&self, store: &Store, meta: &PathMeta) -> Result<u64, ClosureError> {
        let key = archive_key(&meta.tree_hash);
        if let Some(size) = self.backend.size(&key)? {
            self.progress.inc(meta.size);
            return Ok(size);
        }
        // Where an upload keeps what lets a killed push resume (a multipart upload's parts).
        let work = store.tmp_dir();
        let progress = &self.progress;
        self.backend.upload(&key, &work, &mut |out| {
            let fail = |e: std::io::Error| ClosureError::Remote {
                location: self.location(),
                message: format!("`{key}`: {e}"),
            };
            let mut encoder = zstd::stream::write::Encoder::new(out, 3).map_err(fail)?;
            encoder.include_checksum(true).map_err(fail)?;
            let mut tar = tar::Builder::new(Counted {
                inner: encoder,
                progress,
            });
            closure::append_path(&mut tar, store, &meta.name)?;
            let counted = tar.into_inner().map_err(fail)?;
            counted
                .inner
                .finish()
                .map_err(fail)?
                .flush()
                .map_err(fail)?;
            Ok(())
        })
    }

    /// Put `name` and what it references into `store` from the cache; `false` when the cache
    /// lacks one of them. Each path is verified before it is registered.
    pub fn fetch(&self, store: &Store, name: &str) -> Result<bool, ClosureError> {
        self.fetch_within(store, name, &mut Vec::new(), &mut Vec::new())
    }

    /// `fetch`, with the chain of paths whose references are being fetched (a cycle is refused);
    /// what it put in the store is added to `fetched`, references before what names them.
    fn fetch_within(
        &self,
        store: &Store,
        name: &str,
        chain: &mut Vec<String>,
        fetched: &mut Vec<String>,
    ) -> Result<bool, ClosureError> {
        // Protected before it is trusted: a reference is kept from the moment it is seen.
        if store.valid(name)?.is_some() {
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
            if !self.fetch_within(store, reference, chain, fetched)? {
                return Ok(false);
            }
        }
        chain.pop();
        match self.trust.check(&entry.meta, &entry.signatures) {
            Ok(()) => {}
            // Built here from its inputs instead: its name says nothing of its bytes.
            Err(crate::sign::SignError::UnsignedInputAddressed { .. }) => {
                tracing::info!(
                    "not taking the unsigned, input-addressed `{name}` from {}: it is built here",
                    self.location()
                );
                return Ok(false);
            }
            Err(err) => return Err(err.into()),
        }
        if entry.compression != "zstd" || entry.archive != archive_key(&entry.meta.tree_hash) {
            return Err(ClosureError::Damaged {
                reason: format!(
                    "`{name}`: an archive `{}` ({})",
                    entry.archive, entry.compression
                ),
            });
        }
        let _slot = self.fetch_slot();
        let input = self
            .backend
            .open(&entry.archive)?
            .ok_or_else(|| ClosureError::Damaged {
                reason: format!(
                    "`{name}`: its archive `{}` is missing from {}",
                    entry.archive,
                    self.location()
                ),
            })?;
        let progress = self.bar(Some(entry.archive_size));
        progress.set_message(format!("{name} from {}", self.location()));
        let imported = closure::import_path(store, &entry.meta, progress.wrap_read(input));
        progress.finish_and_clear();
        imported?;
        fetched.push(name.to_string());
        Ok(true)
    }

    /// Wait until fewer than `jobs` fetches run, and count this one until the guard goes.
    fn fetch_slot(&self) -> impl Drop + '_ {
        let (count, freed) = &self.fetching;
        let mut running = count.lock().expect("never poisoned");
        while *running >= self.jobs.max(1) {
            running = freed.wait(running).expect("never poisoned");
        }
        *running += 1;
        Slot(&self.fetching)
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

    /// Remove every path that `keep` (store path names) and their references do not name, then
    /// the archives no remaining path names and that are older than `grace` (younger ones may be
    /// a push in progress, whose metadata comes last). Metadata goes first, so no reader is
    /// left with metadata whose archive is gone. `dry` only reports.
    pub fn prune(
        &self,
        keep: &[String],
        grace: Duration,
        dry: bool,
    ) -> Result<PruneReport, ClosureError> {
        self.check()?;
        let mut kept: BTreeMap<String, CacheEntry> = BTreeMap::new();
        let mut queue: Vec<String> = keep.to_vec();
        while let Some(name) = queue.pop() {
            if kept.contains_key(&name) {
                continue;
            }
            let Some(entry) = self.entry(&name)? else {
                continue; // not in the cache: nothing of it to keep
            };
            queue.extend(entry.meta.references.iter().cloned());
            kept.insert(name, entry);
        }
        let mut report = PruneReport {
            kept: kept.len(),
            ..PruneReport::default()
        };
        for (file, _) in self.backend.list("paths")? {
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if !kept.contains_key(name) {
                if !dry {
                    self.backend.delete(&entry_key(name))?;
                }
                report.removed_paths.push(name.to_string());
            }
        }
        let wanted: BTreeSet<String> = kept.values().map(|e| e.archive.clone()).collect();
        let now = SystemTime::now();
        for (file, written) in self.backend.list("archives")? {
            let key = format!("archives/{file}");
            if wanted.contains(&key) {
                continue;
            }
            if now.duration_since(written).unwrap_or_default() < grace {
                report.young_archives += 1;
                continue;
            }
            if !dry {
                self.backend.delete(&key)?;
            }
            report.removed_archives.push(key);
        }
        report.removed_paths.sort();
        report.removed_archives.sort();
        Ok(report)
    }
}

/// One running fetch, counted until dropped.
struct Slot<'a>(&'a (Mutex<usize>, Condvar));

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *count.lock().expect("never poisoned") -= 1;
        freed.notify_one();
    }
}

/// Counts the bytes written through it on a progress bar.
struct Counted<'a, W> {
    inner: W,
    progress: &'a ProgressBar,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(bytes)?;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Substituter for Cache {
    fn location(&self) -> String {
        Cache::location(self)
    }

    fn substitute(
        &self,
        store: &Store,
        derivation: &Derivation,
    ) -> Result<Option<Vec<String>>, BuildError> {
        let Some(output) = &derivation.output else {
            return Ok(None);
        };
        if self.unusable.get().is_some() {
            return Ok(None);
        }
        if let Err(err) = self.check() {
            let reason = err.to_string();
            tracing::warn!("passing over the substituter {}: {reason}", self.location());
            let _ = self.unusable.set(reason);
            return Ok(None);
        }
        let mut fetched = Vec::new();
        let found = self
            .fetch_within(store, output, &mut Vec::new(), &mut fetched)
            .map_err(|e| BuildError::Substituter {
                what: derivation.describe(),
                from: self.location(),
                source: Box::new(e),
            })?;
        fetched.retain(|name| name != output);
        Ok(found.then_some(fetched))
    }
}
