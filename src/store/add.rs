//! Adding a file or a tree to the store.
//!
//! The protocol (see `store-layout.md`, "Adding a path"):
//! 1. hash every file of the source (read-only) and compute the path's name; take `gc.lock`
//!    shared; if the path is already valid, record a temporary root and stop — nothing is written;
//! 2. stage the tree under `tmp/`, each file hashed while it is read and written there read-only,
//!    or hardlinked from `objects/` when its object already exists; the staged bytes decide the
//!    name (the source may have changed since step 1);
//! 3. take the path's build lock; stop if another process made it valid meanwhile;
//! 4. `syncfs`, so every staged byte is durable before anything names it;
//! 5. link each new file into `objects/` (losing a race to another writer means linking theirs);
//! 6. make directories read-only and rename the staged root to `paths/<digest>-<name>`; `syncfs`;
//! 7. record a temporary root and register the path and its references in one transaction.
//!
//! A crash anywhere before 6 leaves unregistered garbage under `tmp/` or `paths/`, never a
//! registered path with wrong contents.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::db::{self, PathRecord, Registered};
use super::tree::{self, Digest, EntryKind};
use super::{check_name, flock, sanitize_name, Result, Store, StoreError};
use crate::fault::pause_point;
use crate::reporter::Reporter;

/// Options of [`Store::add_path`].
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// The name part of the store path; defaults to the source's file name, sanitized.
    pub name: Option<String>,
    /// Valid store paths (names or absolute paths) the new path references.
    pub references: Vec<String>,
}

/// The result of [`Store::add_path`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    pub path: PathBuf,
    #[serde(flatten)]
    pub record: PathRecord,
    pub references: Vec<String>,
    /// False when the path was already valid.
    pub newly_registered: bool,
    /// Objects this add created (identical contents already in the store are not counted).
    pub new_objects: u64,
    pub new_object_bytes: u64,
}

/// How [`Store::commit`] names a tree.
enum Naming<'a> {
    /// By its bytes. The name the source hashed to before staging, and the source, if any: a
    /// warning says when it changed meanwhile.
    Content(Option<(&'a str, &'a Path)>),
    /// Exactly this (input-addressed); the caller holds the path's build lock.
    Fixed(&'a str),
    /// A path that travelled (an import): its tree must hash to what its metadata says, and a
    /// content-addressed name must be the one its tree, name and references give.
    Expected(&'a super::PathMeta),
}

/// A staged file whose object did not exist when it was staged.
struct Pending {
    staged: PathBuf,
    object: PathBuf,
    size: u64,
}

struct Ingested {
    size: u64,
    digest: Digest,
    pending: Option<Pending>,
}

fn with_path(err: std::io::Error, action: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(
        err.kind(),
        format!("failed to {action} `{}`: {err}", path.display()),
    )
}

fn mode(executable: bool) -> u32 {
    if executable {
        0o555
    } else {
        0o444
    }
}

/// A private directory under the store's `tmp/` that a fetcher writes a file or tree into before
/// [`Store::add_staged`] registers it by rename (no copy). While it exists, the store lock is held
/// shared, so the garbage collector leaves it alone. Dropping it removes what is left.
pub struct Staging {
    dir: tempfile::TempDir,
    _gc: flock::LockGuard,
}

impl Staging {
    /// The directory to write into.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Store {
    /// A fresh directory under the store's `tmp/` for work that adds no path (uv's resolution,
    /// an upload's buffers), removed when dropped; like a [`Staging`], it holds `gc.lock` shared,
    /// so a collector (which may clear the caches that work uses) waits for it.
    pub fn scratch(&self) -> Result<Staging> {
        self.writable()?;
        let gc = flock::shared(&self.root.join(super::layout::GC_LOCK))?;
        let dir = tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(self.root.join(super::layout::TMP))?;
        Ok(Staging { dir, _gc: gc })
    }

    /// Hash and make read-only the tree staged at `staging/rel`, then commit it as `name` the way
    /// `naming` says.
    fn ingest_staged(
        &self,
        staging: Staging,
        rel: &str,
        name: &str,
        references: &[String],
        known_digest: Option<Digest>,
        naming: Naming<'_>,
    ) -> Result<Added> {
        let _span = tracing::debug_span!("hash-staged", name).entered();
        let staged = staging.path().join(rel);
        let entries = tree::walk(&staged)?;
        let files: Vec<(PathBuf, u64, bool)> = file_list(&staged, &entries);
        let single = known_digest.filter(|_| entries.len() == 1 && files.len() == 1);
        let ingested = files
            .par_iter()
            .map(|(path, size, executable)| {
                let digest = match single {
                    Some(digest) => digest,
                    None => tree::hash_file(path, *size).map_err(|e| with_path(e, "read", path))?,
                };
                make_read_only(path, *executable)?;
                // Publishing links it into `objects/`, or swaps in the existing object.
                let pending = Some(Pending {
                    staged: path.clone(),
                    object: self.object_path(&digest, *executable),
                    size: *size,
                });
                Ok(Ingested {
                    size: *size,
                    digest,
                    pending,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(_span);
        let Staging { dir, _gc } = staging;
        self.commit(&dir, &staged, &entries, ingested, name, references, naming)
    }

    fn path_name_for(&self, options: &AddOptions, src: &Path) -> Result<String> {
        match &options.name {
            Some(name) => {
                check_name(name).map_err(|reason| StoreError::InvalidName {
                    name: name.clone(),
                    reason,
                })?;
                Ok(name.clone())
            }
            None => {
                let base = std::path::absolute(src)?;
                Ok(sanitize_name(
                    &base.file_name().unwrap_or_default().to_string_lossy(),
                ))
            }
        }
    }

    fn resolve_references(&self, options: &AddOptions) -> Result<Vec<String>> {
        options
            .references
            .iter()
            .map(|r| self.resolve(r).map(|rec| rec.name))
            .collect()
    }

    /// Steps 3–7 of the protocol for a tree staged at `staged` inside `tmp`: name it (see
    /// [`Naming`]), publish its objects, rename it into `paths/`, register it.
    #[allow(clippy::too_many_arguments)]
    // Long on purpose: the commit protocol of store-layout.md (publish objects, sync, rename, register), step by step.
    fn commit(
        &self,
        tmp: &tempfile::TempDir,
        staged: &Path,
        entries: &[tree::Entry],
        ingested: Vec<Ingested>,
        name: &str,
        references: &[String],
        naming: Naming<'_>,
    ) -> Result<Added> {
        pause_point("add-staged");
        // What was staged is what counts: the source may have changed since it was hashed.
        let sizes: Vec<(u64, Digest)> = ingested.iter().map(|i| (i.size, i.digest)).collect();
        let node = tree::build_node(entries, &sizes);
        let mut record = self.describe(name, &node, references);
        let input_addressed = match naming {
            Naming::Fixed(_) => true,
            Naming::Expected(meta) => meta.naming == "input",
            Naming::Content(_) => false,
        };
        if let Naming::Expected(meta) = naming {
            let mismatch = |what: &str, actual: &str, expected: &str| StoreError::Mismatch {
                name: meta.name.clone(),
                what: what.to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            };
            if record.tree_hash != meta.tree_hash {
                return Err(mismatch("tree hash", &record.tree_hash, &meta.tree_hash));
            }
            if !input_addressed && record.name != meta.name {
                return Err(mismatch("name", &record.name, &meta.name));
            }
        }
        let _build = match naming {
            Naming::Fixed(fixed) => {
                record.name = fixed.to_string();
                None
            }
            // An input-addressed import holds its build lock (taken by `import_staged`).
            Naming::Expected(meta) if input_addressed => {
                record.name = meta.name.clone();
                None
            }
            Naming::Expected(_) | Naming::Content(_) => {
                if let Naming::Content(Some((expected, src))) = naming {
                    if record.name != expected {
                        tracing::warn!("`{}` changed while it was being added", src.display());
                    }
                }
                let guard = self.build_lock(&record.name)?;
                if let Some(added) = self.existing(&record.name)? {
                    return Ok(added);
                }
                Some(guard)
            }
        };
        let path_name = record.name.clone();
        let final_path = self.path_of(&path_name);
        self.sync()?;
        let (new_objects, new_object_bytes) = self.publish_objects(ingested, tmp.path())?;
        pause_point("add-objects-published");
        for entry in entries.iter().rev() {
            if matches!(entry.kind, EntryKind::Directory) && !entry.rel.as_os_str().is_empty() {
                let at = staged.join(&entry.rel);
                fs::set_permissions(&at, Permissions::from_mode(0o555))
                    .map_err(|e| with_path(e, "make read-only", &at))?;
            }
        }
        if fs::symlink_metadata(&final_path).is_ok() {
            // Left by a process that died before registering it; we hold its build lock.
            tracing::debug!("removing unregistered `{}`", final_path.display());
            remove_tree(&final_path)?;
        }
        fs::rename(staged, &final_path).map_err(|e| with_path(e, "rename into", &final_path))?;
        if matches!(node, tree::Node::Directory { .. }) {
            fs::set_permissions(&final_path, Permissions::from_mode(0o555))
                .map_err(|e| with_path(e, "make read-only", &final_path))?;
        }
        // The sidecar is durable before the registration, so a rebuilt db can have it back.
        self.write_path_meta(&record, references, input_addressed)?;
        self.sync()?;
        pause_point("add-renamed");

        self.temp_roots.add(&path_name)?;
        let registered = {
            let mut conn = self.db();
            db::register(&mut conn, &record, references)?
        };
        let record = self.query(&path_name)?.unwrap_or(record);
        Ok(Added {
            path: final_path,
            record,
            references: references.to_vec(),
            newly_registered: registered == Registered::New,
            new_objects,
            new_object_bytes,
        })
    }

    /// The lock of one path's build or add (`locks/<name>.lock`), held until it is registered.
    fn build_lock(&self, name: &str) -> Result<flock::LockGuard> {
        Ok(flock::exclusive(
            &self
                .root
                .join(super::layout::LOCKS)
                .join(format!("{name}.lock")),
        )?)
    }

    /// The record a tree would be registered with under `name`.
    fn describe(&self, name: &str, node: &tree::Node, references: &[String]) -> PathRecord {
        let tree_hash = node.tree_hash();
        PathRecord {
            id: 0,
            name: format!("{}-{name}", tree::path_digest(name, &tree_hash, references)),
            kind: if matches!(node, tree::Node::Directory { .. }) {
                "tree".into()
            } else {
                "file".into()
            },
            tree_hash: blake3::Hash::from(tree_hash).to_hex().to_string(),
            size: node.content_size(),
            file_count: node.file_count(),
            registered_at: db::now(),
        }
    }

    /// Stage one file at `to`: hardlinked from its object when that exists, else written
    /// read-only from `from` while hashed. `known` is the digest the first read found.
    fn ingest_file(
        &self,
        from: &Path,
        to: &Path,
        size: u64,
        executable: bool,
        known: &Digest,
    ) -> Result<Ingested> {
        if size < tree::LARGE_FILE {
            let mut buf = Vec::with_capacity(size as usize);
            fs::File::open(from)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| with_path(e, "read", from))?;
            let digest = *blake3::hash(&buf).as_bytes();
            let object = self.object_path(&digest, executable);
            let size = buf.len() as u64;
            if self.link_stored(&object, to)? {
                return Ok(Ingested {
                    size,
                    digest,
                    pending: None,
                });
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode(executable))
                .open(to)
                .map_err(|e| with_path(e, "create", to))?;
            file.write_all(&buf)
                .map_err(|e| with_path(e, "write", to))?;
            return Ok(Ingested {
                size,
                digest,
                pending: Some(Pending {
                    staged: to.to_path_buf(),
                    object,
                    size,
                }),
            });
        }
        // Large: content already stored costs no second read.
        let source_digest = *known;
        let object = self.object_path(&source_digest, executable);
        if self.link_stored(&object, to)? {
            return Ok(Ingested {
                size,
                digest: source_digest,
                pending: None,
            });
        }
        fs::copy(from, to).map_err(|e| with_path(e, "copy to", to))?;
        fs::set_permissions(to, Permissions::from_mode(mode(executable)))
            .map_err(|e| with_path(e, "make read-only", to))?;
        // The staged copy is what the store keeps: name it by its own bytes, in case the source
        // changed between the two reads.
        let size = fs::metadata(to)
            .map_err(|e| with_path(e, "read", to))?
            .len();
        let digest = tree::hash_file(to, size).map_err(|e| with_path(e, "read", to))?;
        if digest != source_digest {
            tracing::warn!("`{}` changed while it was being added", from.display());
        }
        Ok(Ingested {
            size,
            digest,
            pending: Some(Pending {
                staged: to.to_path_buf(),
                object: self.object_path(&digest, executable),
                size,
            }),
        })
    }

    /// Link each newly staged file into `objects/`. Returns how many objects (and bytes) were new.
    /// `scratch` is a private directory outside the staged tree.
    fn publish_objects(&self, ingested: Vec<Ingested>, scratch: &Path) -> Result<(u64, u64)> {
        let mut count = 0;
        let mut bytes = 0;
        let swap = scratch.join("swap");
        for pending in ingested.into_iter().filter_map(|i| i.pending) {
            let new = match publish_at(&pending.staged, &pending.object, &swap)? {
                Published::Refused if self.is_shared() => {
                    // Another user's object, which the kernel will not let us link: ours.
                    match publish_at(&pending.staged, &self.mine(&pending.object), &swap)? {
                        Published::New => true,
                        Published::Shared | Published::Private | Published::Refused => false,
                    }
                }
                Published::New => true,
                Published::Shared | Published::Private | Published::Refused => false,
            };
            if new {
                count += 1;
                bytes += pending.size;
            }
        }
        Ok((count, bytes))
    }

    /// This user's own object for `object` (`<object>.u<uid>`), in a shared store where the kernel
    /// (`fs.protected_hardlinks`) does not let one user link another's read-only file: each
    /// member's files are deduplicated among their own, and the collector frees each alike.
    pub(crate) fn mine(&self, object: &Path) -> PathBuf {
        let uid = rustix::process::geteuid().as_raw();
        PathBuf::from(format!("{}.u{uid}", object.display()))
    }

    /// Link the stored object of a file's bytes to `to`: the object, or in a shared store this
    /// user's own object of the same bytes. False when neither is there to link.
    fn link_stored(&self, object: &Path, to: &Path) -> Result<bool> {
        match fs::hard_link(object, to) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
            Err(err) if err.kind() == ErrorKind::TooManyLinks => Ok(false),
            Err(err) if refused(&err) && self.is_shared() => {
                match fs::hard_link(self.mine(object), to) {
                    Ok(()) => Ok(true),
                    Err(err)
                        if matches!(err.kind(), ErrorKind::NotFound | ErrorKind::TooManyLinks) =>
                    {
                        Ok(false)
                    }
                    Err(err) => Err(with_path(err, "link", object).into()),
                }
            }
            Err(err) => Err(with_path(err, "link", object).into()),
        }
    }
}

/// What publishing a staged file as an object came to.
enum Published {
    /// The staged file is the object now.
    New,
    /// The object was there: the staged file is replaced by a link to it (or was it already).
    Shared,
    /// The object has as many links as the filesystem allows: the staged file stays its own.
    Private,
    /// The object is another user's, and the kernel will not let us link it.
    Refused,
}

/// Publish `staged` as `object`, or share the object that is there.
fn publish_at(staged: &Path, object: &Path, swap: &Path) -> Result<Published> {
    match fs::hard_link(staged, object) {
        Ok(()) => Ok(Published::New),
        Err(err) if err.kind() == ErrorKind::AlreadyExists && same_file(staged, object) => {
            Ok(Published::Shared)
        }
        Err(err) if err.kind() == ErrorKind::AlreadyExists => {
            // Another file of this add, or another process, published it first: share theirs.
            match fs::hard_link(object, swap) {
                Ok(()) => {
                    fs::rename(swap, staged).map_err(|e| with_path(e, "replace", staged))?;
                    Ok(Published::Shared)
                }
                Err(err) if err.kind() == ErrorKind::TooManyLinks => Ok(Published::Private),
                Err(err) if refused(&err) => Ok(Published::Refused),
                Err(err) => Err(with_path(err, "link", object).into()),
            }
        }
        Err(err) if err.kind() == ErrorKind::TooManyLinks => Ok(Published::Private),
        Err(err) => Err(with_path(err, "link", object).into()),
    }
}

/// Whether linking failed because the kernel protects another user's file.
fn refused(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::EPERM)
}

/// Give a staged file its store mode, unless it has it already (a file hardlinked from a cache
/// that an earlier add made read-only).
fn make_read_only(path: &Path, executable: bool) -> Result<()> {
    let wanted = mode(executable);
    let current = fs::symlink_metadata(path)
        .map_err(|e| with_path(e, "read", path))?
        .permissions()
        .mode()
        & 0o7777;
    if current != wanted {
        fs::set_permissions(path, Permissions::from_mode(wanted))
            .map_err(|e| with_path(e, "make read-only", path))?;
    }
    Ok(())
}

/// Whether two paths name the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The regular files of a walked tree: (path under `base`, size, executable), in walk order.
fn file_list(base: &Path, entries: &[tree::Entry]) -> Vec<(PathBuf, u64, bool)> {
    entries
        .iter()
        .filter_map(|e| match e.kind {
            EntryKind::File { size, executable } => {
                Some((tree::join_rel(base, &e.rel), size, executable))
            }
            _ => None,
        })
        .collect()
}

/// Remove a tree whose directories may be read-only. In a shared store a tree another user made
/// cannot be made writable by this one: it is renamed out of the way (`.trash-<name>.<pid>`
/// beside it, which needs only the group's write permission on its parent), so it no longer
/// counts; its owner's (or root's) next collection removes it. What vanishes meanwhile (removed by its
/// owner) is not an error: the tree is gone either way.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    remove_tree_inner(path)
}

/// A tree this user may not empty (another user's, in a shared store): renamed aside once, left
/// there when it already is.
fn set_aside(path: &Path, cause: &std::io::Error) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with(TRASH) {
        tracing::debug!("`{}` is another user's: left for them", path.display());
        return Ok(());
    }
    let aside = path.with_file_name(format!("{TRASH}{name}.{}", std::process::id()));
    fs::rename(path, &aside).map_err(|e| {
        with_path(
            std::io::Error::new(e.kind(), format!("{cause}; setting it aside: {e}")),
            "remove",
            path,
        )
    })?;
    tracing::info!(
        "`{}` belongs to another user: set aside as `{}` for its owner's next `comfix gc`",
        path.display(),
        aside.display()
    );
    Ok(())
}

/// The prefix of trees set aside for their owners (see [`remove_tree`]).
pub(crate) const TRASH: &str = ".trash-";

fn remove_tree_inner(path: &Path) -> Result<()> {
    let gone = |e: &std::io::Error| e.kind() == ErrorKind::NotFound;
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(with_path(e, "read", path).into()),
    };
    if meta.is_dir() {
        for entry in walkdir::WalkDir::new(path).follow_links(false) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.io_error().is_some_and(gone) => continue,
                Err(e) => return Err(std::io::Error::from(e).into()),
            };
            if entry.file_type().is_dir() {
                match fs::set_permissions(entry.path(), Permissions::from_mode(0o755)) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        return set_aside(path, &e);
                    }
                    Err(e) if !gone(&e) => {
                        return Err(with_path(e, "make writable", entry.path()).into())
                    }
                    _ => {}
                }
            }
        }
        match fs::remove_dir_all(path) {
            Err(e) if !gone(&e) => return Err(with_path(e, "remove", path).into()),
            _ => {}
        }
    } else {
        match fs::remove_file(path) {
            Err(e) if !gone(&e) => return Err(with_path(e, "remove", path).into()),
            _ => {}
        }
    }
    Ok(())
}

/// Writing store paths: what the executor's steps and the importer do (`store add` too). Only the modules the `layers` test lists import it.
pub trait Add {
    /// A fresh staging directory (see [`Staging`]).
    fn staging(&self) -> Result<Staging>;

    /// Add `bytes` as the single-file store path `name` referencing `references` (valid names).
    /// A path with these exact contents that is already valid is used as it is — on a read-only
    /// store too, where anything else is [`StoreError::ReadOnly`].
    fn add_bytes(&self, name: &str, bytes: &[u8], references: &[String]) -> Result<Added>;

    /// Register the file or tree a fetcher wrote at `staging.path()/rel` as a content-addressed
    /// store path, by rename. Files are made read-only and replaced by links to existing objects
    /// where their contents are already stored. `known_digest` is the BLAKE3 of a single-file
    /// root that the caller hashed while writing it (it is not read again).
    fn add_staged(
        &self,
        staging: Staging,
        rel: &str,
        options: &AddOptions,
        known_digest: Option<Digest>,
    ) -> Result<Added>;

    /// Build an input-addressed path: `name` (`<digest>-<name>`) is fixed by the recipe, not by
    /// the bytes, because what is built must know its final name. Under the path's build lock,
    /// `build` writes the tree at the staging directory's `rel`; it is then registered like a
    /// fetched tree (files deduplicated into objects, renamed into place). When the path is
    /// already valid, `build` is not called.
    fn build_input_addressed<E>(
        &self,
        name: &str,
        rel: &str,
        references: &[String],
        build: impl FnOnce(&Path) -> std::result::Result<(), E>,
    ) -> std::result::Result<Added, E>
    where
        E: From<StoreError>;

    /// Register the tree staged at `staging/rel` as exactly `meta.name` with `meta.references`
    /// (which must be valid), after checking that its bytes hash to `meta.tree_hash` and, for a
    /// content-addressed path, that the name is the one its tree, name and references give. A
    /// path that is valid already is used as it is: nothing is written.
    /// `single`: the BLAKE3 of the staged tree when it is one file, hashed as it was written.
    fn import_staged(
        &self,
        staging: Staging,
        rel: &str,
        meta: &super::PathMeta,
        single: Option<Digest>,
    ) -> Result<Added>;

    /// Add the file, directory tree or symlink at `src` as a content-addressed store path.
    fn add_path(&self, src: &Path, options: &AddOptions, reporter: &dyn Reporter) -> Result<Added>;

    /// If `name` is valid and present on disk, protect it with a temporary root and describe it.
    /// The valid path `name` as an [`Added`] that registered nothing.
    fn existing(&self, name: &str) -> Result<Option<Added>>;
}

impl Add for Store {
    fn staging(&self) -> Result<Staging> {
        self.scratch()
    }

    fn add_bytes(&self, name: &str, bytes: &[u8], references: &[String]) -> Result<Added> {
        check_name(name).map_err(|reason| StoreError::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        let node = tree::Node::File {
            size: bytes.len() as u64,
            executable: false,
            digest: *blake3::hash(bytes).as_bytes(),
        };
        let expected = self.describe(name, &node, references);
        if let Some(added) = self.existing(&expected.name)? {
            return Ok(added);
        }
        let staging = self.staging()?;
        let file = staging.path().join(name);
        fs::write(&file, bytes).map_err(|e| with_path(e, "write", &file))?;
        self.add_staged(
            staging,
            name,
            &AddOptions {
                name: Some(name.to_string()),
                references: references.to_vec(),
            },
            None,
        )
    }

    fn add_staged(
        &self,
        staging: Staging,
        rel: &str,
        options: &AddOptions,
        known_digest: Option<Digest>,
    ) -> Result<Added> {
        let name = self.path_name_for(options, &staging.path().join(rel))?;
        let references = self.resolve_references(options)?;
        self.ingest_staged(
            staging,
            rel,
            &name,
            &references,
            known_digest,
            Naming::Content(None),
        )
    }

    fn build_input_addressed<E>(
        &self,
        name: &str,
        rel: &str,
        references: &[String],
        build: impl FnOnce(&Path) -> std::result::Result<(), E>,
    ) -> std::result::Result<Added, E>
    where
        E: From<StoreError>,
    {
        check_name(name).map_err(|reason| StoreError::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        if let Some(added) = self.existing(name)? {
            return Ok(added);
        }
        let staging = self.staging()?;
        let build_lock = flock::exclusive(
            &self
                .root
                .join(super::layout::LOCKS)
                .join(format!("{name}.lock")),
        )
        .map_err(StoreError::from)?;
        if let Some(added) = self.existing(name)? {
            return Ok(added);
        }
        build(staging.path())?;
        let short = name.split_once('-').map_or(name, |(_, rest)| rest);
        let added =
            self.ingest_staged(staging, rel, short, references, None, Naming::Fixed(name))?;
        drop(build_lock);
        Ok(added)
    }

    fn import_staged(
        &self,
        staging: Staging,
        rel: &str,
        meta: &super::PathMeta,
        single: Option<Digest>,
    ) -> Result<Added> {
        check_name(&meta.name).map_err(|reason| StoreError::InvalidName {
            name: meta.name.clone(),
            reason,
        })?;
        if let Some(added) = self.existing(&meta.name)? {
            return Ok(added);
        }
        let short = meta
            .name
            .split_once('-')
            .map_or(meta.name.as_str(), |(_, n)| n);
        // An input-addressed path's name is fixed: its build lock is taken here (a content-addressed
        // one's when its name is known, in `commit`).
        let _build = match meta.naming.as_str() {
            "input" => Some(self.build_lock(&meta.name)?),
            _ => None,
        };
        if let Some(added) = self.existing(&meta.name)? {
            return Ok(added);
        }
        self.ingest_staged(
            staging,
            rel,
            short,
            &meta.references,
            single,
            Naming::Expected(meta),
        )
    }

    // Long on purpose: the add protocol of store-layout.md, step by step.
    fn add_path(&self, src: &Path, options: &AddOptions, reporter: &dyn Reporter) -> Result<Added> {
        if let Err(err) = fs::symlink_metadata(src) {
            return Err(if err.kind() == ErrorKind::NotFound {
                StoreError::SourceMissing {
                    path: src.to_path_buf(),
                }
            } else {
                with_path(err, "read", src).into()
            });
        }
        let name = self.path_name_for(options, src)?;
        let references = self.resolve_references(options)?;
        let entries = tree::walk(src)?;
        let files = file_list(src, &entries);
        let total: u64 = files.iter().map(|f| f.1).sum();

        // Hash first, read-only: a path that is already valid costs one read of each file and
        // no write at all.
        reporter.start(&format!("Hashing {}", src.display()), Some(total));
        let hashed = files
            .par_iter()
            .map(|(from, size, _)| {
                let digest = tree::hash_file(from, *size).map_err(|e| with_path(e, "read", from));
                reporter.advance(*size);
                digest.map(|d| (*size, d))
            })
            .collect::<Result<Vec<_>, _>>()?;
        reporter.finish();
        if self.read_only {
            let expected = self.describe(&name, &tree::build_node(&entries, &hashed), &references);
            return match self.existing(&expected.name)? {
                Some(added) => Ok(added),
                None => Err(StoreError::ReadOnly {
                    root: self.root.clone(),
                }),
            };
        }
        let gc = flock::shared(&self.root.join(super::layout::GC_LOCK))?;
        let expected = self.describe(&name, &tree::build_node(&entries, &hashed), &references);
        if let Some(added) = self.existing(&expected.name)? {
            return Ok(added);
        }

        let tmp = tempfile::Builder::new()
            .prefix("add-")
            .tempdir_in(self.root.join(super::layout::TMP))?;
        let staged = tmp.path().join("root");
        for entry in &entries {
            let at = tree::join_rel(&staged, &entry.rel);
            match &entry.kind {
                EntryKind::Directory => {
                    fs::create_dir(&at).map_err(|e| with_path(e, "create", &at))?
                }
                EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &at)
                    .map_err(|e| with_path(e, "create", &at))?,
                EntryKind::File { .. } => {}
            }
        }
        let staged_files: Vec<PathBuf> = file_list(&staged, &entries)
            .into_iter()
            .map(|f| f.0)
            .collect();
        reporter.start(&format!("Adding {}", src.display()), Some(total));
        let ingested = files
            .par_iter()
            .zip(staged_files.par_iter())
            .zip(hashed.par_iter())
            .map(|(((from, size, executable), to), (_, digest))| {
                let result = self.ingest_file(from, to, *size, *executable, digest);
                reporter.advance(*size);
                result
            })
            .collect::<Result<Vec<_>>>()?;
        reporter.finish();
        let added = self.commit(
            &tmp,
            &staged,
            &entries,
            ingested,
            &name,
            &references,
            Naming::Content(Some((&expected.name, src))),
        );
        drop(gc);
        added
    }

    fn existing(&self, name: &str) -> Result<Option<Added>> {
        let Some(record) = self.query(name)? else {
            return Ok(None);
        };
        let path = self.path_of(name);
        if fs::symlink_metadata(&path).is_err() {
            tracing::warn!("valid path `{name}` is missing on disk; adding it again");
            return Ok(None);
        }
        if !self.read_only {
            self.temp_roots.add(name)?;
        }
        let references = self.references(&record)?;
        Ok(Some(Added {
            path,
            record,
            references,
            newly_registered: false,
            new_objects: 0,
            new_object_bytes: 0,
        }))
    }
}
