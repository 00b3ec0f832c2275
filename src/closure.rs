//! Closures that travel: a version's store paths, each with its metadata (name, tree hash,
//! references, naming), plus the spec and the lock, as one zstd-compressed tar written and read
//! as a stream (`store-layout.md`, "Closure archives").
//!
//! The archive's first entry is `comfix-closure.json`, the [`Manifest`]: every path in an order
//! where references come first. Then `versions/<id>.json` and `versions/<id>.lock.json`, then
//! each path's entries under `paths/<name>`, contiguous and in the manifest's order. Import reads
//! it once: each path is staged, checked against its metadata (tree hash; for a content-addressed
//! path its name) and registered only when it is whole and its references are valid; paths the
//! store has are skipped without writing. Entries must be plain (`paths/<name>[/<relative>]`, no
//! `..`, no absolute names), only directories, regular files and symlinks, never written through
//! a symlink.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hint::Hint;
use crate::lock::Lock;
use crate::store::Add;
use crate::store::{PathMeta, Staging, Store, StoreError};

/// The archive format this comfix writes and reads.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "comfix-closure.json";

/// The first entry of an archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub versions: Vec<VersionEntry>,
    /// References first.
    pub paths: Vec<PathMeta>,
    /// Signatures per path name (`<key name>:<base64>`).
    #[serde(default)]
    pub signatures: BTreeMap<String, Vec<String>>,
    /// Signatures per version id, over its spec and its lock ([`crate::sign::version_fingerprint`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version_signatures: BTreeMap<String, Vec<String>>,
}

/// The most paths and versions an archive may declare, and the most bytes of spec and lock text
/// it may carry in all: an import holds those texts in memory until every path is in.
const MAX_PATHS: usize = 1_000_000;
const MAX_VERSIONS: usize = 1_000;
const MAX_VERSION_TEXT: u64 = 64 << 20;

impl Manifest {
    pub fn version_ids(&self) -> Vec<String> {
        self.versions.iter().map(|v| v.version_id.clone()).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionEntry {
    pub version_id: String,
    /// The archive entries of the spec and the lock.
    pub spec: String,
    pub lock: String,
}

/// Which models an export carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Models {
    All,
    Required,
    None,
}

/// A version to export: its spec's bytes, its lock, and the venv this store holds for it.
pub struct Version<'a> {
    pub spec: &'a [u8],
    pub lock: &'a Lock,
    pub venv: Option<String>,
    /// More store paths to carry (the stored uv, so the other machine can build venvs).
    pub extra: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportReport {
    pub versions: Vec<String>,
    pub paths: usize,
    /// Bytes of file contents written into the archive (before compression).
    pub content_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub versions: Vec<String>,
    /// Paths registered by this import.
    pub imported: Vec<String>,
    /// Paths the store already had.
    pub present: usize,
    /// Unsigned input-addressed paths not taken (`--no-check-sigs`): built here when needed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// Where each version's spec and lock were written (or found identical).
    pub spec_files: Vec<PathBuf>,
    /// The locks the archive brought.
    #[serde(skip)]
    pub locks: Vec<Lock>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error("This is not a comfix closure archive: {reason}")]
    Foreign { reason: String },
    #[error("Closure archive format {found} is not the one this comfix reads ({FORMAT})")]
    Format { found: u32 },
    #[error("The closure archive is damaged: {reason}")]
    Damaged { reason: String },
    #[error("Unsafe entry `{entry}` in the closure archive: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("The store has no valid `{name}`, which the version needs")]
    NotInStore { name: String },
    #[error("`{}` does not match its registration: {reason}", .path.display())]
    Unverified { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    #[error(transparent)]
    Space(#[from] crate::fetch::FetchError),
    #[error("The cache `{location}`: {message}")]
    Remote { location: String, message: String },
    #[error("I/O error on `{}`: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ClosureError {
    let path = path.into();
    move |source| ClosureError::Io { path, source }
}

fn damaged(reason: impl std::fmt::Display) -> ClosureError {
    ClosureError::Damaged {
        reason: reason.to_string(),
    }
}

impl Hint for ClosureError {
    fn hint(&self) -> Option<String> {
        match self {
            ClosureError::Foreign { .. } => {
                Some("give `comfix import` a file written by `comfix export`".into())
            }
            ClosureError::Damaged { .. } | ClosureError::Unsafe { .. } => Some(
                "nothing that is not whole and verified was registered; export the closure again and copy it whole".into(),
            ),
            ClosureError::Unverified { .. } => Some(
                "nothing was written; `comfix store verify --repair` rebuilds or fetches it again, then export again".into(),
            ),
            ClosureError::NotInStore { .. } => Some(
                "realize or resolve the version on this machine first, so the store holds every path it pins".into(),
            ),
            ClosureError::Store(e) => e.hint(),
            ClosureError::Sign(e) => e.hint(),
            ClosureError::Space(e) => e.hint(),
            _ => None,
        }
    }

    fn is_user_error(&self) -> bool {
        match self {
            ClosureError::Store(e) => e.is_user_error(),
            ClosureError::Sign(e) => e.is_user_error(),
            ClosureError::Space(e) => e.is_user_error(),
            ClosureError::Io { .. } => false,
            _ => true,
        }
    }
}

/// The store paths a version's closure holds: what the lock pins (models as chosen), the venv,
/// and everything they reference, references first.
pub fn paths_of(
    store: &Store,
    versions: &[Version<'_>],
    models: Models,
) -> Result<Vec<PathMeta>, ClosureError> {
    let mut roots: Vec<String> = Vec::new();
    for version in versions {
        let lock = version.lock;
        for path in lock.store_paths() {
            let model = lock.models.iter().find(|m| m.store_path == path);
            let wanted = match (model, models) {
                (None, _) | (Some(_), Models::All) => true,
                (Some(m), Models::Required) => m.required,
                (Some(_), Models::None) => false,
            };
            if wanted {
                roots.push(path.to_string());
            }
        }
        roots.extend(version.venv.clone());
        roots.extend(version.extra.iter().cloned());
    }
    closure_of(store, &roots)
}

/// `roots` and every path they reference, references first, each with its sidecar.
pub fn closure_of(store: &Store, roots: &[String]) -> Result<Vec<PathMeta>, ClosureError> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for root in roots {
        visit(store, root, &mut seen, &mut order)?;
    }
    order
        .iter()
        .map(|name| store.path_meta(name).map_err(ClosureError::from))
        .collect()
}

/// Post-order over references, so a path comes after everything it references.
fn visit(
    store: &Store,
    name: &str,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
) -> Result<(), ClosureError> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some(record) = store.query(name)? else {
        return Err(ClosureError::NotInStore {
            name: name.to_string(),
        });
    };
    if fs::symlink_metadata(store.path_of(name)).is_err() {
        return Err(ClosureError::NotInStore {
            name: name.to_string(),
        });
    }
    for reference in store.references(&record)? {
        visit(store, &reference, seen, order)?;
    }
    order.push(name.to_string());
    Ok(())
}

/// Write the closure of `versions` to `out` as a zstd-compressed tar, streamed.
#[tracing::instrument(level = "debug", name = "export", skip_all)]
pub fn export(
    store: &Store,
    versions: &[Version<'_>],
    models: Models,
    sign: Option<&crate::sign::SecretKey>,
    out: impl Write,
) -> Result<ExportReport, ClosureError> {
    let paths = paths_of(store, versions, models)?;
    let signatures = match sign {
        Some(key) => paths
            .iter()
            .map(|p| (p.name.clone(), vec![key.sign(p)]))
            .collect(),
        None => BTreeMap::new(),
    };
    let version_signatures = match sign {
        Some(key) => versions
            .iter()
            .map(|v| {
                let id = &v.lock.version_id;
                let fingerprint =
                    crate::sign::version_fingerprint(id, v.spec, v.lock.to_text().as_bytes());
                (id.clone(), vec![key.sign_text(&fingerprint)])
            })
            .collect(),
        None => BTreeMap::new(),
    };
    let manifest = Manifest {
        format: FORMAT,
        versions: versions
            .iter()
            .map(|v| VersionEntry {
                version_id: v.lock.version_id.clone(),
                spec: format!("versions/{}.json", v.lock.version_id),
                lock: format!("versions/{}.lock.json", v.lock.version_id),
            })
            .collect(),
        paths,
        signatures,
        version_signatures,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut encoder = zstd::stream::write::Encoder::new(out, 3).map_err(io("<output>"))?;
    let _ = encoder.multithread(threads);
    // A frame checksum: a damaged or cut archive is found even where no entry is damaged.
    encoder.include_checksum(true).map_err(io("<output>"))?;
    // Large writes into the compressor: tar copies in small chunks.
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, encoder));
    let bytes = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| {
        let mut header = file_header(data.len() as u64, false);
        tar.append_data(&mut header, name, data)
            .map_err(io("<output>"))
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    bytes(&mut tar, MANIFEST, &text)?;
    for (entry, version) in manifest.versions.iter().zip(versions) {
        bytes(&mut tar, &entry.spec, version.spec)?;
        bytes(&mut tar, &entry.lock, version.lock.to_text().as_bytes())?;
    }
    let mut report = ExportReport {
        versions: manifest.version_ids(),
        paths: manifest.paths.len(),
        content_bytes: 0,
    };
    for meta in &manifest.paths {
        report.content_bytes += append_path(&mut tar, store, &meta.name)?;
    }
    let encoder = tar
        .into_inner()
        .map_err(io("<output>"))?
        .into_inner()
        .map_err(|e| io("<output>")(e.into_error()))?;
    encoder
        .finish()
        .map_err(io("<output>"))?
        .flush()
        .map_err(io("<output>"))?;
    Ok(report)
}

fn file_header(size: u64, executable: bool) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(if executable { 0o755 } else { 0o644 });
    header.set_mtime(0);
    header
}

/// Append the store path `name` under `paths/<name>`; returns its file bytes. The bytes are
/// hashed as they are written, and a path that no longer matches its registration (a file added,
/// changed or removed since, such as `__pycache__/` a root process wrote) fails the whole export:
/// nothing damaged leaves the store.
pub fn append_path<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    name: &str,
) -> Result<u64, ClosureError> {
    append_path_under(tar, store, name, Path::new("paths"), false)
}

/// [`append_path`] under `dir/<name>`; `read_only`: with the modes the store gives its paths
/// (files `0444`/`0555`, directories `0555`) rather than writable ones for an importer to take.
pub fn append_path_under<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    name: &str,
    dir: &Path,
    read_only: bool,
) -> Result<u64, ClosureError> {
    use crate::store::tree::{self, EntryKind};
    let mask = if read_only { 0o555 } else { 0o777 };
    let root = store.path_of(name);
    let record = store.query(name)?.ok_or_else(|| ClosureError::NotInStore {
        name: name.to_string(),
    })?;
    let entries = tree::walk(&root).map_err(|e| ClosureError::Unverified {
        path: root.clone(),
        reason: e.to_string(),
    })?;
    let mut digests = Vec::new();
    let mut bytes = 0;
    for entry in &entries {
        let source = tree::join_rel(&root, &entry.rel);
        // A path that is one file is the entry `paths/<name>` itself: joining the empty relative
        // path would write `paths/<name>/`, a file named like a directory that GNU tar refuses.
        let mut at = dir.join(name);
        if !entry.rel.as_os_str().is_empty() {
            at.push(&entry.rel);
        }
        match &entry.kind {
            EntryKind::Directory => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755 & mask);
                header.set_size(0);
                header.set_mtime(0);
                tar.append_data(&mut header, &at, std::io::empty())
                    .map_err(io(&source))?;
            }
            EntryKind::Symlink { target } => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                header.set_mtime(0);
                tar.append_link(&mut header, &at, target)
                    .map_err(io(&source))?;
            }
            EntryKind::File { size, executable } => {
                let mut header = file_header(*size, *executable);
                header.set_mode(header.mode().unwrap_or(0o644) & mask);
                let file = fs::File::open(&source).map_err(io(&source))?;
                let mut reader = HashingReader {
                    inner: std::io::BufReader::with_capacity(1 << 20, file),
                    hasher: blake3::Hasher::new(),
                    read: 0,
                };
                tar.append_data(&mut header, &at, &mut reader)
                    .map_err(io(&source))?;
                if reader.read != *size {
                    return Err(ClosureError::Unverified {
                        path: source,
                        reason: "its size changed while it was read".into(),
                    });
                }
                digests.push((*size, *reader.hasher.finalize().as_bytes()));
                bytes += size;
            }
        }
    }
    let actual = blake3::Hash::from(tree::build_node(&entries, &digests).tree_hash())
        .to_hex()
        .to_string();
    if actual != record.tree_hash {
        return Err(ClosureError::Unverified {
            path: root,
            reason: format!(
                "its tree hash is {actual}, but {} was registered",
                record.tree_hash
            ),
        });
    }
    Ok(bytes)
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// The path being imported.
struct Current {
    index: usize,
    slot: Slot,
    /// The BLAKE3 of each regular file written, by its parts under the path.
    written: Vec<(Vec<String>, crate::store::tree::Digest)>,
    /// Bytes of file contents its manifest entry still allows.
    budget: u64,
    /// Entries it may still have (files, and as many directories and links again, and some).
    entries_left: u64,
}

/// Where a path's entries go.
enum Slot {
    /// Staged, to be registered once whole.
    Staged(Staging),
    /// The store has it already: its entries are read and dropped.
    Present,
    /// Left out (unsigned and input-addressed): its entries are read and dropped.
    Skipped,
}

impl Current {
    fn new(index: usize, slot: Slot, meta: &PathMeta) -> Current {
        Current {
            index,
            slot,
            written: Vec::new(),
            budget: meta.size,
            entries_left: meta.file_count.saturating_mul(2).saturating_add(1024),
        }
    }

    /// Count one more entry of the path, refusing more than its manifest entry allows for.
    fn entry(&mut self, shown: &str) -> Result<(), ClosureError> {
        if self.entries_left == 0 {
            return Err(damaged(format!(
                "`{shown}`: its path has more entries than its manifest's file count allows"
            )));
        }
        self.entries_left -= 1;
        Ok(())
    }
}

/// Pin each version an import brought (root `pin:<id>`, on a manifest of its lock), so a
/// collector keeps what was brought until the user unpins it.
pub fn pin_versions(store: &Store, report: &ImportReport) -> Result<(), ClosureError> {
    for lock in &report.locks {
        let id = &lock.version_id;
        let models_missing = lock
            .models
            .iter()
            .any(|m| !matches!(store.query(&m.store_path), Ok(Some(_))));
        let manifest =
            crate::lock::manifest::write(store, &format!("pin-{id}"), lock, models_missing, &[])?;
        store.pin(id, &manifest)?;
    }
    Ok(())
}

/// Read a closure archive from `input` into `store`; each version's spec and lock are written
/// into `versions_dir` (kept when a file of that name is there already).
///
/// Nothing is trusted before it is checked: the manifest's names, counts and sizes first; the
/// versions' specs and locks (each lock matching its spec, both signed by a trusted key unless
/// signatures are waived) before any path is registered; each path's entries no larger than the
/// manifest says; `versions/` written only once every path is in (all or nothing).
#[tracing::instrument(level = "debug", name = "import", skip_all)]
pub fn import(
    store: &Store,
    input: impl Read + Send,
    versions_dir: &Path,
    trust: &crate::sign::Trust,
) -> Result<ImportReport, ClosureError> {
    let decoder = zstd::stream::read::Decoder::new(input).map_err(|e| ClosureError::Foreign {
        reason: e.to_string(),
    })?;
    // Decompressed on a thread of its own, as `zstd -d | tar -x` runs on two cores: this one
    // parses, writes and hashes while the next chunks are decoded.
    std::thread::scope(|scope| {
        let (chunks, received) = std::sync::mpsc::sync_channel(8);
        scope.spawn(move || decode(decoder, &chunks));
        import_decoded(
            store,
            Received {
                chunks: received,
                chunk: Vec::new(),
                at: 0,
            },
            versions_dir,
            trust,
        )
    })
}

/// Read `decoder` to its end in chunks of 1 MiB into `chunks` (an error ends it); stops early
/// when the receiver is gone.
fn decode(mut decoder: impl Read, chunks: &std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>) {
    const CHUNK: u64 = 1 << 20;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK as usize);
        match (&mut decoder).take(CHUNK).read_to_end(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                if chunks.send(Ok(chunk)).is_err() || (n as u64) < CHUNK {
                    return;
                }
            }
            Err(e) => {
                let _ = chunks.send(Err(e));
                return;
            }
        }
    }
}

/// The chunks [`decode`] sends, read as one stream (it ends when the sender is gone).
struct Received {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Received {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.chunks.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk?, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn import_decoded(
    store: &Store,
    decoded: Received,
    versions_dir: &Path,
    trust: &crate::sign::Trust,
) -> Result<ImportReport, ClosureError> {
    let mut archive = tar::Archive::new(decoded);
    let mut entries = archive.entries().map_err(damaged)?;
    let manifest = read_manifest(&mut entries)?;
    check_manifest(&manifest)?;
    // What the store lacks must fit, or nothing is written (declared sizes are untrusted: their
    // sum is checked, never wrapped).
    let mut needed = 0u64;
    for meta in &manifest.paths {
        if store.query(&meta.name)?.is_none() {
            needed = needed.checked_add(meta.size).ok_or_else(|| {
                damaged("its paths' declared sizes add up to more than 2^64 bytes")
            })?;
        }
    }
    crate::fetch::check_space("the closure's paths", store.root(), needed)?;
    let mut report = ImportReport {
        versions: manifest.version_ids(),
        ..ImportReport::default()
    };
    let wanted: HashMap<&str, usize> = manifest
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let named: HashSet<&str> = manifest
        .versions
        .iter()
        .flat_map(|v| [v.spec.as_str(), v.lock.as_str()])
        .collect();
    let mut texts: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut text_bytes = 0u64;
    let mut locks: Option<Vec<Lock>> = None;
    let mut current: Option<Current> = None;
    let mut next = 0;
    for entry in entries {
        let mut entry = entry.map_err(damaged)?;
        let path = entry.path().map_err(damaged)?.into_owned();
        let shown = path.display().to_string();
        let parts = plain_parts(&path).ok_or_else(|| ClosureError::Unsafe {
            entry: shown.clone(),
            reason: "an archive name must be relative, without `..`".into(),
        })?;
        match parts.first().map(String::as_str) {
            Some("versions") if current.is_none() && next == 0 => {
                if !named.contains(shown.as_str()) {
                    return Err(ClosureError::Unsafe {
                        entry: shown,
                        reason: "the manifest names no such spec or lock".into(),
                    });
                }
                if texts.contains_key(&shown) {
                    return Err(ClosureError::Unsafe {
                        entry: shown,
                        reason: "it is in the archive twice".into(),
                    });
                }
                let room = MAX_VERSION_TEXT - text_bytes;
                let mut data = Vec::new();
                (&mut entry)
                    .take(room + 1)
                    .read_to_end(&mut data)
                    .map_err(damaged)?;
                if data.len() as u64 > room {
                    return Err(damaged(format!(
                        "its specs and locks are larger than {} in all (at `{shown}`)",
                        crate::units::format_bytes(MAX_VERSION_TEXT)
                    )));
                }
                text_bytes += data.len() as u64;
                texts.insert(shown, data);
                continue;
            }
            Some("paths") if parts.len() >= 2 => {}
            _ => {
                return Err(ClosureError::Unsafe {
                    entry: shown,
                    reason: "not where a closure archive puts anything".into(),
                })
            }
        }
        // The versions come before the paths: they are checked before any path is registered.
        if locks.is_none() {
            locks = Some(check_versions(&manifest, &texts, trust)?);
        }
        let name = &parts[1];
        let same = current
            .as_ref()
            .is_some_and(|c| manifest.paths[c.index].name == *name);
        if !same {
            if let Some(done) = current.take() {
                finish(store, &manifest.paths[done.index], done, &mut report)?;
            }
            match wanted.get(name.as_str()) {
                Some(&i) if i == next => {}
                Some(_) => {
                    return Err(damaged(format!(
                        "`{name}` is out of the manifest's order (expected `{}`)",
                        manifest
                            .paths
                            .get(next)
                            .map_or("nothing", |p| p.name.as_str())
                    )))
                }
                None => {
                    return Err(ClosureError::Unsafe {
                        entry: shown,
                        reason: format!("`{name}` is not in the archive's manifest"),
                    })
                }
            }
            let meta = &manifest.paths[next];
            let slot = if store.valid(name)?.is_some() {
                Slot::Present
            } else {
                let signatures = manifest
                    .signatures
                    .get(name)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                match trust.check(meta, signatures) {
                    Ok(()) => Slot::Staged(store.staging()?),
                    Err(crate::sign::SignError::UnsignedInputAddressed { .. }) => {
                        tracing::warn!(
                            "left out `{name}`: input-addressed (a venv or an overlay) and unsigned, so nothing vouches for its bytes; `realize` builds it here from its inputs"
                        );
                        Slot::Skipped
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            current = Some(Current::new(next, slot, meta));
            next += 1;
        }
        let current = current.as_mut().expect("set above");
        current.entry(&shown)?;
        if let Slot::Staged(staging) = &current.slot {
            let budget = &mut current.budget;
            if let Some(digest) =
                write_entry(&mut entry, staging.path(), &parts[1..], &shown, budget)?
            {
                current.written.push((parts[1..].to_vec(), digest));
            }
        }
    }
    if let Some(done) = current.take() {
        finish(store, &manifest.paths[done.index], done, &mut report)?;
    }
    if next < manifest.paths.len() {
        return Err(damaged(format!(
            "it ends before `{}` (truncated?)",
            manifest.paths[next].name
        )));
    }
    // The end of the tar is not the end of the stream: the rest is read, so a cut or damaged
    // last frame is an error.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(damaged)?;
    let locks = match locks {
        Some(locks) => locks,
        None => check_versions(&manifest, &texts, trust)?,
    };
    write_versions(&manifest, &texts, versions_dir, &mut report)?;
    report.locks = locks;
    write_workflows(store, versions_dir, &mut report)?;
    Ok(report)
}

/// The manifest's own promises, checked before anything is read or written: bounded counts,
/// store names that are names, version ids that are ids, entries where versions go.
fn check_manifest(manifest: &Manifest) -> Result<(), ClosureError> {
    if manifest.paths.len() > MAX_PATHS || manifest.versions.len() > MAX_VERSIONS {
        return Err(damaged(format!(
            "its manifest declares {} paths and {} versions (at most {MAX_PATHS} and {MAX_VERSIONS})",
            manifest.paths.len(),
            manifest.versions.len()
        )));
    }
    let mut seen = HashSet::new();
    for meta in &manifest.paths {
        crate::store::check_name(&meta.name).map_err(|reason| ClosureError::Unsafe {
            entry: format!("paths/{}", meta.name.chars().take(80).collect::<String>()),
            reason: format!("its store path name {reason}"),
        })?;
        if !seen.insert(meta.name.as_str()) {
            return Err(damaged(format!("`{}` is in its manifest twice", meta.name)));
        }
    }
    for version in &manifest.versions {
        let id = &version.version_id;
        crate::store::check_name(id).map_err(|reason| ClosureError::Unsafe {
            entry: version.spec.clone(),
            reason: format!("version id `{id}` {reason}"),
        })?;
        let (spec, lock) = (
            format!("versions/{id}.json"),
            format!("versions/{id}.lock.json"),
        );
        if version.spec != spec || version.lock != lock {
            return Err(ClosureError::Unsafe {
                entry: version.spec.clone(),
                reason: format!("the spec and lock of `{id}` belong at `{spec}` and `{lock}`"),
            });
        }
    }
    Ok(())
}

/// Each version's lock, once its spec and lock are shown to belong together and to be what a
/// trusted key signed: the lock parses and is `version_id`'s, the spec parses and the lock pins
/// every entry of it, its workflows stay in the versions directory and are in the archive.
fn check_versions(
    manifest: &Manifest,
    texts: &BTreeMap<String, Vec<u8>>,
    trust: &crate::sign::Trust,
) -> Result<Vec<Lock>, ClosureError> {
    let mut locks = Vec::new();
    let carried: HashSet<&str> = manifest.paths.iter().map(|p| p.name.as_str()).collect();
    for version in &manifest.versions {
        let id = &version.version_id;
        let text = |entry: &String| {
            texts
                .get(entry)
                .ok_or_else(|| damaged(format!("`{entry}` is missing")))
        };
        let (spec_text, lock_text) = (text(&version.spec)?, text(&version.lock)?);
        let signatures = manifest
            .version_signatures
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        trust.check_version(id, spec_text, lock_text, signatures)?;
        let lock: Lock = serde_json::from_slice(lock_text)
            .map_err(|e| damaged(format!("`{}` is not a lock: {e}", version.lock)))?;
        if lock.version_id != *id {
            return Err(damaged(format!(
                "`{}` is the lock of `{}`",
                version.lock, lock.version_id
            )));
        }
        let spec_str = std::str::from_utf8(spec_text)
            .map_err(|_| damaged(format!("`{}` is not UTF-8", version.spec)))?;
        let spec = crate::spec::Spec::parse(spec_str, Path::new(&version.spec))
            .map_err(|e| damaged(format!("`{}` is not a valid spec: {e}", version.spec)))?;
        let stale = crate::lock::stale_entries(&spec, &lock);
        if !stale.is_empty() {
            return Err(damaged(format!(
                "`{}` does not pin what `{}` asks for: {}",
                version.lock,
                version.spec,
                stale.join(", ")
            )));
        }
        for workflow in &lock.workflows {
            let rel = Path::new(&workflow.path);
            if workflow.path.is_empty()
                || !rel.components().all(|c| matches!(c, Component::Normal(_)))
            {
                return Err(ClosureError::Unsafe {
                    entry: version.lock.clone(),
                    reason: format!(
                        "workflow path `{}` leaves the versions directory",
                        workflow.path
                    ),
                });
            }
            if !carried.contains(workflow.store_path.as_str()) {
                return Err(damaged(format!(
                    "`{}` names the workflow `{}` as `{}`, which it does not carry",
                    version.lock, workflow.path, workflow.store_path
                )));
            }
        }
        locks.push(lock);
    }
    Ok(locks)
}

/// Read one path's archive (its entries under `paths/<name>`, as in a closure archive) and
/// register it as `meta` says, verified.
pub fn import_path(store: &Store, meta: &PathMeta, input: impl Read) -> Result<(), ClosureError> {
    let decoder = zstd::stream::read::Decoder::new(input).map_err(damaged)?;
    let mut archive = tar::Archive::new(decoder);
    let staging = store.staging()?;
    let mut current = Current::new(0, Slot::Present, meta);
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = entry.path().map_err(damaged)?.into_owned();
        let shown = path.display().to_string();
        let parts = plain_parts(&path)
            .filter(|p| p.len() >= 2 && p[0] == "paths" && p[1] == meta.name)
            .ok_or_else(|| ClosureError::Unsafe {
                entry: shown.clone(),
                reason: format!(
                    "an archive of `{}` holds only `paths/{}`",
                    meta.name, meta.name
                ),
            })?;
        current.entry(&shown)?;
        let budget = &mut current.budget;
        if let Some(digest) = write_entry(&mut entry, staging.path(), &parts[1..], &shown, budget)?
        {
            current.written.push((parts[1..].to_vec(), digest));
        }
    }
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(damaged)?;
    let mut report = ImportReport::default();
    current.slot = Slot::Staged(staging);
    finish(store, meta, current, &mut report)
}

fn read_manifest<R: Read>(entries: &mut tar::Entries<'_, R>) -> Result<Manifest, ClosureError> {
    let foreign = |reason: &str| ClosureError::Foreign {
        reason: reason.to_string(),
    };
    let mut first = entries
        .next()
        .ok_or_else(|| foreign("it is empty"))?
        .map_err(|e| foreign(&e.to_string()))?;
    if first.path().ok().as_deref() != Some(Path::new(MANIFEST)) {
        return Err(foreign(&format!("its first entry is not `{MANIFEST}`")));
    }
    let mut text = Vec::new();
    (&mut first)
        .take(64 << 20)
        .read_to_end(&mut text)
        .map_err(damaged)?;
    let format: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| damaged(format!("bad manifest: {e}")))?;
    let found = format["format"].as_u64().unwrap_or(0) as u32;
    if found != FORMAT {
        return Err(ClosureError::Format { found });
    }
    serde_json::from_value(format).map_err(|e| damaged(format!("bad manifest: {e}")))
}

/// The components of an archive name, when every one is a plain name.
fn plain_parts(path: &Path) -> Option<Vec<String>> {
    path.components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str().map(str::to_string),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .filter(|parts| !parts.is_empty())
}

/// Write one entry of a path at `staging/<parts>`, never through a symlink; returns the BLAKE3 of
/// a regular file's bytes.
fn write_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    staging: &Path,
    parts: &[String],
    shown: &str,
    budget: &mut u64,
) -> Result<Option<crate::store::tree::Digest>, ClosureError> {
    let unsafe_entry = |reason: &str| ClosureError::Unsafe {
        entry: shown.to_string(),
        reason: reason.to_string(),
    };
    // Every create is beneath the staging directory, no symlink followed (a path's own links
    // may point anywhere — a venv's `python` does — but nothing is written through them).
    let mut beneath = crate::files::Beneath::new(staging)
        .map_err(|e| io(staging)(std::io::Error::other(e.to_string())))?;
    let rel: PathBuf = parts.iter().collect();
    let at = staging.join(&rel);
    let refused = |e: crate::files::BeneathError| match e {
        crate::files::BeneathError::Through(_) => {
            unsafe_entry("it would be written through a symlink or a file")
        }
        crate::files::BeneathError::Exists(_) => unsafe_entry("it is in the archive twice"),
        crate::files::BeneathError::NotRelative(_) => {
            unsafe_entry("an archive name must be relative, without `..`")
        }
        crate::files::BeneathError::Io { path, source } => io(path)(source),
    };
    let header = entry.header().clone();
    match header.entry_type() {
        tar::EntryType::Directory => {
            if fs::symlink_metadata(&at).is_ok() {
                return Err(unsafe_entry("it is in the archive twice"));
            }
            beneath.create_dir_all(&rel).map_err(refused)?
        }
        tar::EntryType::Regular => {
            let executable = header.mode().map_err(damaged)? & 0o111 != 0;
            let mode = if executable { 0o755 } else { 0o644 };
            let larger = || {
                damaged(format!(
                    "entry `{shown}` is larger than its manifest says its path is"
                ))
            };
            let file = beneath.create_file(&rel, mode).map_err(refused)?;
            if header.size().map_err(damaged)? > *budget {
                return Err(larger());
            }
            // Large writes: a model is gigabytes, and 8 KiB writes cost more than the bytes.
            let mut out = std::io::BufWriter::with_capacity(1 << 20, Streamed::new(file));
            // Never more than the manifest allows, whatever the header said.
            let copied = std::io::copy(&mut entry.take(*budget + 1), &mut out).map_err(damaged)?;
            if copied > *budget {
                return Err(larger());
            }
            *budget -= copied;
            out.flush().map_err(io(&at))?;
            let digest = out.get_ref().hasher.finalize();
            return Ok(Some(*digest.as_bytes()));
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(damaged)?
                .ok_or_else(|| unsafe_entry("a symlink without a target"))?;
            beneath.symlink(&rel, &target).map_err(refused)?;
        }
        other => {
            return Err(unsafe_entry(&format!(
                "entries of type {other:?} are not in closures"
            )))
        }
    }
    Ok(None)
}

/// A staged file being written: its bytes hashed as they go, and written back to disk every
/// [`WRITEBACK`] bytes, so that the `syncfs` before registration finds little left to do.
struct Streamed {
    file: fs::File,
    hasher: blake3::Hasher,
    written: u64,
    flushed: u64,
}

/// How many bytes are written before the kernel is asked to start writing them back.
const WRITEBACK: u64 = 32 << 20;

impl Streamed {
    fn new(file: fs::File) -> Streamed {
        Streamed {
            file,
            hasher: blake3::Hasher::new(),
            written: 0,
            flushed: 0,
        }
    }
}

impl Write for Streamed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.written += n as u64;
        if self.written - self.flushed >= WRITEBACK {
            // DONTNEED on dirty pages starts their writeback without waiting for it (and lets
            // clean ones go): the bytes are hashed already and not read again.
            let _ = rustix::fs::fadvise(
                &self.file,
                self.flushed,
                std::num::NonZeroU64::new(self.written - self.flushed),
                rustix::fs::Advice::DontNeed,
            );
            self.flushed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Register a whole staged path, checked against its metadata.
fn finish(
    store: &Store,
    meta: &PathMeta,
    current: Current,
    report: &mut ImportReport,
) -> Result<(), ClosureError> {
    let staging = match current.slot {
        Slot::Staged(staging) => staging,
        Slot::Present => {
            report.present += 1;
            return Ok(());
        }
        Slot::Skipped => {
            report.left_out.push(meta.name.clone());
            return Ok(());
        }
    };
    if fs::symlink_metadata(staging.path().join(&meta.name)).is_err() {
        return Err(damaged(format!("`{}` has no entries", meta.name)));
    }
    // A path that is one file: its digest was taken as it was written (a model is not read again).
    let single = match current.written.as_slice() {
        [(parts, digest)] if parts.len() == 1 => Some(*digest),
        _ => None,
    };
    let added = store.import_staged(staging, &meta.name, meta, single)?;
    report.imported.push(added.record.name);
    Ok(())
}

/// Each version's workflow files, from the store, where its spec names them (relative to the
/// spec's directory), so `realize`, `test` and `run` of the imported version find them. A file
/// already there is kept (warned about when it differs).
fn write_workflows(
    store: &Store,
    dir: &Path,
    report: &mut ImportReport,
) -> Result<(), ClosureError> {
    for lock in &report.locks {
        let written = write_workflow_files(store, lock, dir)?;
        report.spec_files.extend(written);
    }
    Ok(())
}

/// `lock`'s workflow files (their store paths valid), written where its spec names them in
/// `dir`, the spec's directory; a file already there is kept (warned about when it differs).
/// The paths written or kept.
pub fn write_workflow_files(
    store: &Store,
    lock: &Lock,
    dir: &Path,
) -> Result<Vec<PathBuf>, ClosureError> {
    let mut out = Vec::new();
    for workflow in &lock.workflows {
        let rel = Path::new(&workflow.path);
        if workflow.path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(ClosureError::Unsafe {
                entry: lock.version_id.clone(),
                reason: format!(
                    "workflow path `{}` leaves the versions directory",
                    workflow.path
                ),
            });
        }
        let stored = store.path_of(&workflow.store_path);
        let source = if stored.is_dir() {
            fs::read_dir(&stored)
                .map_err(io(&stored))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    damaged(format!("`{}` holds no workflow file", workflow.store_path))
                })?
        } else {
            stored
        };
        let bytes = fs::read(&source).map_err(io(&source))?;
        let path = dir.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(_) => {
                if fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
                    tracing::warn!(
                        "kept `{}`, which differs from the workflow `{}` imported with `{}` (the version's tests use the imported one from the store)",
                        path.display(),
                        workflow.path,
                        lock.version_id
                    );
                }
            }
            Err(_) => {
                let parent = path.parent().unwrap_or(dir);
                fs::create_dir_all(parent).map_err(io(parent))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io(&path))?;
                file.write_all(&bytes).map_err(io(&path))?;
            }
        }
        out.push(path);
    }
    Ok(out)
}

/// Each version's spec and lock (checked by [`check_versions`]), written beside each other
/// unless a file is there already.
fn write_versions(
    manifest: &Manifest,
    texts: &BTreeMap<String, Vec<u8>>,
    dir: &Path,
    report: &mut ImportReport,
) -> Result<(), ClosureError> {
    for version in &manifest.versions {
        for (entry, file) in [
            (&version.spec, format!("{}.json", version.version_id)),
            (&version.lock, format!("{}.lock.json", version.version_id)),
        ] {
            let text = texts
                .get(entry)
                .ok_or_else(|| damaged(format!("`{entry}` is missing")))?;
            let path = dir.join(file);
            match fs::read(&path) {
                Ok(existing) if existing == *text => {}
                Ok(_) => tracing::warn!(
                    "kept `{}`, which differs from the imported one",
                    path.display()
                ),
                Err(_) => {
                    fs::create_dir_all(dir).map_err(io(dir))?;
                    fs::write(&path, text).map_err(io(&path))?;
                }
            }
            report.spec_files.push(path);
        }
    }
    Ok(())
}
