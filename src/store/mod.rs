//! The content-addressed store: objects, store paths, the db and the locks.
//!
//! Layout (normative description: `store-layout.md`):
//!
//! ```text
//! <store>/VERSION                  layout version, "1"
//! <store>/db/db.sqlite             valid paths, references, roots (WAL)
//! <store>/objects/<xx>/<blake3>    file contents, read-only; `.x` suffix when executable
//! <store>/paths/<digest>-<name>    immutable store paths, files hardlinked to objects
//! <store>/tmp/                     work in progress, hashed while written
//! <store>/locks/                   per-path build locks
//! <store>/temproots/<pid>          temporary roots of running processes
//! <store>/gc.lock                  shared by writers, exclusive for the garbage collector
//! ```
//!
//! Nothing outside this module writes into the store.

mod account;
mod add;
pub mod db;
mod du;
pub mod flock;
mod gc;
pub mod layout;
mod meta;
mod roots;
pub mod tree;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

pub use account::Bytes;
pub use add::{Add, AddOptions, Added, Staging};
pub use db::{Journal, PathRecord};
pub use du::{DiskUse, Part, Usage};
pub use gc::{GcOptions, GcReport, Keep, KeepNothing, Kept};
pub use meta::{PathMeta, RebuildReport};
pub use roots::{home_of_root, Root};
pub use verify::{CorruptPath, VerifyReport};

use crate::hint::Hint;

/// The store layout version this binary reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// Errors from store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("Store database `{}` failed", .path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Register(#[from] db::RegisterError),
    #[error(transparent)]
    Walk(#[from] tree::WalkError),
    #[error("Store `{}` has layout version `{found}`, this comfix reads version `{expected}`", .root.display())]
    UnsupportedLayout {
        root: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("Store database `{}` has schema version {found}, newer than this comfix knows ({known})", .path.display())]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("`{}` is not empty and is not a comfix store", .root.display())]
    NotAStore { root: PathBuf },
    #[error("Invalid store path name `{name}`: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("`{}` does not exist", .path.display())]
    SourceMissing { path: PathBuf },
    #[error("`{arg}` is not a valid path in store `{}`", .root.display())]
    NotValid { arg: String, root: PathBuf },
    #[error("The database of store `{}` is missing or empty, but the store holds content", .root.display())]
    LostDb { root: PathBuf },
    #[error("There is no comfix store at `{}`", .root.display())]
    Missing { root: PathBuf },
    #[error("The database `{}` is readable; there is nothing to rebuild", .path.display())]
    DbIsReadable { path: PathBuf },
    #[error("Store `{}` is read-only, and this command writes to it", .root.display())]
    ReadOnly { root: PathBuf },
    #[error("The last `store rebuild-db` could not recover {} entries of `paths/` ({}{}); a collection would delete them", .names.len(), crate::hint::code_list(&.names[..names.len().min(3)]), if .names.len() > 3 { ", …" } else { "" })]
    Unrecovered { names: Vec<String> },
    #[error("Cannot read store `{}`: permission denied (it belongs to another user, and its group is not yours)", .root.display())]
    NoAccess { root: PathBuf },
    #[error("`{name}`: its {what} is `{actual}`, but its metadata says `{expected}`")]
    Mismatch {
        name: String,
        what: String,
        expected: String,
        actual: String,
    },
}

impl Hint for StoreError {
    fn hint(&self) -> Option<String> {
        match self {
            StoreError::UnsupportedLayout { .. } | StoreError::NewerSchema { .. } => {
                Some("use a comfix release that matches this store, or point `--store` at another directory".into())
            }
            StoreError::NotAStore { .. } => {
                Some("choose an empty or missing directory with `--store` or `COMFIX_STORE`".into())
            }
            StoreError::InvalidName { .. } => Some(
                "names use letters, digits and `+-._?=@`, do not start with `.`, and are at most 200 bytes".into(),
            ),
            StoreError::NotValid { .. } => Some("`comfix store ls` lists the valid paths".into()),
            StoreError::LostDb { .. } => Some(
                "nothing was changed. Restore `db/db.sqlite` from a backup, or run `comfix store rebuild-db` to rebuild it from the store's contents".into(),
            ),
            StoreError::Mismatch { .. } => Some(
                "the bytes are not what their source recorded (tampered or corrupted in transit); nothing was registered for this path".into(),
            ),
            StoreError::NoAccess { .. } => Some(
                "use a store of your own (`--store DIR`), or ask its owner to share it with your group (see \"Shared stores\" in store-layout.md)".into(),
            ),
            StoreError::ReadOnly { .. } => Some(
                "nothing was changed. Reading works on a read-only store (`store ls/path-info/verify/du`, `roots`, `status`, and `realize` of a version the store holds); run this where the store is writable".into(),
            ),
            StoreError::Unrecovered { .. } => Some(
                "they may be what a live home uses (their metadata was lost with the database): realize your homes again (each registers what it uses), then `comfix gc`; `comfix gc --delete-unrecovered` deletes them".into(),
            ),
            StoreError::Missing { .. } => Some(
                "check `--store` / `COMFIX_STORE`; a store is created by the commands that write to it (`resolve`, `realize`, `store add`)".into(),
            ),
            StoreError::Db { source, .. } if is_corrupt(source) => Some(
                "the database is damaged: move `db/db.sqlite` aside and run `comfix store rebuild-db`, or restore it from a backup".into(),
            ),
            StoreError::Register(db::RegisterError::MissingReference { .. }) => {
                Some("add the referenced path to the store first".into())
            }
            _ => None,
        }
    }

    fn is_user_error(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidName { .. }
                | StoreError::SourceMissing { .. }
                | StoreError::NotValid { .. }
                | StoreError::NotAStore { .. }
                | StoreError::UnsupportedLayout { .. }
                | StoreError::NewerSchema { .. }
                | StoreError::Register(db::RegisterError::MissingReference { .. })
                | StoreError::Walk(tree::WalkError::Unsupported { .. })
                | StoreError::LostDb { .. }
                | StoreError::Mismatch { .. }
                | StoreError::Missing { .. }
                | StoreError::DbIsReadable { .. }
                | StoreError::ReadOnly { .. }
                | StoreError::NoAccess { .. }
                | StoreError::Unrecovered { .. }
        )
    }
}

/// Whether `name` is one of the store's own top-level entries.
fn is_layout_entry(name: &str) -> bool {
    matches!(
        name,
        "db" | "objects"
            | "paths"
            | "tmp"
            | "locks"
            | "temproots"
            | "gc.lock"
            | "VERSION"
            | "git"
            | "cache"
            | "meta"
            | "roots"
    )
}

/// Whether SQLite says the file is not a database or is damaged.
fn is_corrupt(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The default store directory: `$COMFIX_STORE`, else `/runpod-volume/comfix-store` when
/// `/runpod-volume` exists, else `$XDG_DATA_HOME/comfix/store` (`~/.local/share/comfix/store`).
pub fn default_dir(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = env("COMFIX_STORE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if Path::new("/runpod-volume").is_dir() {
        return PathBuf::from("/runpod-volume/comfix-store");
    }
    if let Some(data) = env("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(data).join("comfix/store");
    }
    match env("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/comfix/store"),
        None => PathBuf::from(".comfix-store"),
    }
}

/// An open store.
pub struct Store {
    root: PathBuf,
    db: Mutex<Connection>,
    journal: Journal,
    temp_roots: flock::TempRoots,
    /// This process cannot write the store (a read-only mount, or no write permission).
    read_only: bool,
    /// A store a group of users shares (its root is setgid and group-writable).
    shared: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// Filesystem magic numbers of network filesystems, where SQLite's WAL shared memory is unsafe.
const NETWORK_FS_MAGIC: &[(u64, &str)] = &[
    (0x6969, "nfs"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x6573_5546, "fuse"),
    (0x0102_1997, "9p"),
    (0x0BD0_0BD0, "lustre"),
    (0x1957_0705, "afs"),
];

/// Whether this process cannot write into `root`: a read-only mount, or no write permission.
fn read_only_dir(root: &Path) -> bool {
    let mounted_ro = rustix::fs::statvfs(root)
        .is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    mounted_ro || rustix::fs::access(root, rustix::fs::Access::WRITE_OK).is_err()
}

/// Whether the store at `root` is shared by a group: its root directory is setgid (so everything
/// created in it belongs to the group) and group-writable.
fn shared_dir(root: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(root).is_ok_and(|m| m.permissions().mode() & 0o2020 == 0o2020)
}

/// In a shared store, what this process creates is the group's as much as its own: the umask
/// keeps the group's bits (`022` → `002`). Child processes (uv, git) inherit it.
fn share_with_group() {
    let umask = crate::files::umask();
    if umask & 0o070 != 0 {
        // SAFETY: umask(2) cannot fail.
        unsafe {
            libc::umask((umask & !0o070) as libc::mode_t);
        }
    }
}

/// Give the group of a shared store what the owner has on the files of its database that this
/// process owns (SQLite creates them 0644; its `-wal` and `-shm` files copy the database's mode).
fn share_db_files(db: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = rustix::process::geteuid().as_raw();
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(meta) = std::fs::metadata(&file) {
            let mode = meta.permissions().mode() & 0o7777;
            if meta.uid() == me && mode & 0o060 != 0o060 {
                let _ =
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode | 0o060));
            }
        }
    }
}

fn network_fs(path: &Path) -> Option<&'static str> {
    let stat = rustix::fs::statfs(path).ok()?;
    let magic = stat.f_type as u64;
    NETWORK_FS_MAGIC
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

impl Store {
    /// Open the store at `root`, creating it when the directory is missing or empty.
    // Long on purpose: opening is a protocol: version, layout, lost-db refusal, db, sweeps.
    pub fn open(root: &Path) -> Result<Store> {
        if !root.is_dir() {
            fs_err::create_dir_all(root)?;
        }
        let root = fs_err::canonicalize(root)?;
        if rustix::fs::access(
            &root,
            rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_err()
        {
            return Err(StoreError::NoAccess { root });
        }
        let read_only = read_only_dir(&root);
        let shared = shared_dir(&root);
        if shared && !read_only {
            share_with_group();
        }
        let version_file = root.join(layout::VERSION);
        match std::fs::read_to_string(&version_file) {
            Ok(found) => {
                if found.trim() != LAYOUT_VERSION.to_string() {
                    return Err(StoreError::UnsupportedLayout {
                        root,
                        found: found.trim().to_string(),
                        expected: LAYOUT_VERSION,
                    });
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // An init interrupted before `VERSION` was written leaves only layout entries:
                // finish it. Anything else means the directory is somebody else's. (`VERSION`
                // itself may have appeared since: another process finished initializing.)
                let foreign = fs_err::read_dir(&root)?
                    .filter_map(|e| e.ok())
                    .any(|e| !is_layout_entry(&e.file_name().to_string_lossy()));
                if foreign {
                    return Err(StoreError::NotAStore { root });
                }
                if read_only {
                    return Err(StoreError::ReadOnly { root });
                }
                Self::init_layout(&root)?;
            }
            Err(err) => {
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("failed to read `{}`: {err}", version_file.display()),
                )
                .into())
            }
        }
        if !read_only {
            Self::ensure_dirs(&root)?;
        }

        let journal = match network_fs(&root) {
            Some(fs) if !read_only => {
                tracing::warn!(
                    "store `{}` is on a network filesystem ({fs}): using a rollback journal; \
                     the store is safe for processes on this machine only",
                    root.display()
                );
                Journal::Delete
            }
            _ => Journal::Wal,
        };
        let db_path = root.join(layout::DB);
        // Setting the journal mode and migrating need the database to themselves, and SQLite
        // answers "locked" there without waiting: processes opening the store take turns.
        let open_lock = if read_only {
            // Waits for a writer that is migrating it; a read-only mount has no writer.
            flock::shared(&root.join(layout::DB_OPEN_LOCK)).ok()
        } else {
            Some(flock::exclusive(&root.join(layout::DB_OPEN_LOCK))?)
        };
        // A missing or emptied database is never taken for an empty store: that is how a gc
        // would come to delete everything.
        if !std::fs::metadata(&db_path).is_ok_and(|m| m.len() > 0) && meta::holds_content(&root) {
            return Err(StoreError::LostDb { root });
        }
        let db_err = |source| StoreError::Db {
            path: db_path.clone(),
            source,
        };
        let conn = if read_only {
            db::open_read_only(&db_path).map_err(db_err)?
        } else {
            db::open(&db_path, journal).map_err(db_err)?
        };
        if shared && !read_only {
            share_db_files(&db_path);
        }
        drop(open_lock);
        let recorded = db::recorded_version(&conn).map_err(db_err)?;
        if recorded > db::schema_version() as i64 {
            return Err(StoreError::NewerSchema {
                path: db_path,
                found: recorded,
                known: db::schema_version(),
            });
        }
        if read_only && recorded < db::schema_version() as i64 {
            // Its migrations cannot be applied here.
            return Err(StoreError::ReadOnly { root });
        }
        let temp_roots = flock::TempRoots::new(root.join(layout::TEMPROOTS));
        let store = Store {
            root,
            db: Mutex::new(conn),
            journal,
            temp_roots,
            read_only,
            shared,
        };
        if !read_only {
            store.backfill_meta()?;
        }
        Ok(store)
    }

    /// Whether this process cannot write the store. Read commands work; writers fail with
    /// [`StoreError::ReadOnly`]. No collector can run on it either, so nothing is protected by
    /// temporary roots.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether a group of users shares this store (see "Shared stores" in store-layout.md).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// `Err(ReadOnly)` on a read-only store: called by everything that writes into it.
    pub(crate) fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                root: self.root.clone(),
            });
        }
        Ok(())
    }

    /// Open the store at `root` only if one exists there; never creates anything (for dry runs).
    pub fn open_existing(root: &Path) -> Result<Option<Store>> {
        if root.is_dir()
            && rustix::fs::access(
                root,
                rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK,
            )
            .is_err()
        {
            return Err(StoreError::NoAccess {
                root: root.to_path_buf(),
            });
        }
        if root.join(layout::VERSION).is_file() {
            return Store::open(root).map(Some);
        }
        // Somebody else's directory is not "no store yet".
        let foreign = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| !is_layout_entry(&e.file_name().to_string_lossy()));
        if foreign {
            return Err(StoreError::NotAStore {
                root: root.to_path_buf(),
            });
        }
        Ok(None)
    }

    fn init_layout(root: &Path) -> Result<()> {
        Self::ensure_dirs(root)?;
        // Written last, atomically: a store without VERSION is not yet a store.
        // Several processes may initialize at once: each writes its own temporary file.
        let mut tmp = crate::files::temp_in(&root.join(layout::TMP))?;
        std::io::Write::write_all(&mut tmp, format!("{LAYOUT_VERSION}\n").as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(root.join(layout::VERSION))
            .map_err(|e| e.error)?;
        Ok(())
    }

    fn ensure_dirs(root: &Path) -> Result<()> {
        for dir in ["db", "paths", "tmp", "locks", "temproots", "meta", "roots"] {
            fs_err::create_dir_all(root.join(dir))?;
        }
        let objects = root.join(layout::OBJECTS);
        if !objects.join("ff").is_dir() {
            for shard in 0..=255u8 {
                fs_err::create_dir_all(objects.join(format!("{shard:02x}")))?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn journal(&self) -> Journal {
        self.journal
    }

    /// The absolute path of store path `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.root.join(layout::PATHS).join(name)
    }

    /// The object file for a digest and executable bit.
    pub fn object_path(&self, digest: &tree::Digest, executable: bool) -> PathBuf {
        let hex = blake3::Hash::from(*digest).to_hex();
        let file = if executable {
            format!("{hex}.x")
        } else {
            hex.to_string()
        };
        self.root.join(layout::OBJECTS).join(&hex[..2]).join(file)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db_err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.root.join(layout::DB),
            source,
        }
    }

    /// Turn a user's argument (an absolute store path, a path inside one, or a bare
    /// `<digest>-<name>`) into a valid path's record.
    pub fn resolve(&self, arg: &str) -> Result<PathRecord> {
        let not_valid = || StoreError::NotValid {
            arg: arg.to_string(),
            root: self.root.clone(),
        };
        let name = if arg.contains('/') {
            let given = Path::new(arg);
            let absolute = std::path::absolute(given)?;
            let paths = self.root.join(layout::PATHS);
            let rel = absolute
                .strip_prefix(&paths)
                .ok()
                .map(Path::to_path_buf)
                .or_else(|| {
                    // The store root may have been given through a symlink.
                    let parent = absolute.parent()?.canonicalize().ok()?;
                    let full = parent.join(absolute.file_name()?);
                    full.strip_prefix(&paths).ok().map(Path::to_path_buf)
                })
                .ok_or_else(not_valid)?;
            rel.iter()
                .next()
                .and_then(|c| c.to_str())
                .ok_or_else(not_valid)?
                .to_string()
        } else {
            arg.to_string()
        };
        self.query(&name)?.ok_or_else(not_valid)
    }

    /// The record of a valid path, if `name` is one.
    pub fn query(&self, name: &str) -> Result<Option<PathRecord>> {
        db::query(&self.db(), name).map_err(|e| self.db_err(e))
    }

    /// Every valid path, sorted by name.
    pub fn list(&self) -> Result<Vec<PathRecord>> {
        db::list(&self.db()).map_err(|e| self.db_err(e))
    }

    /// The valid paths whose name part (after `<digest>-`) is `name`.
    pub fn named(&self, name: &str) -> Result<Vec<PathRecord>> {
        db::named(&self.db(), name).map_err(|e| self.db_err(e))
    }

    /// The valid single-file paths (any name) whose bytes have BLAKE3 `digest`.
    pub fn files_with_digest(&self, size: u64, digest: &tree::Digest) -> Result<Vec<PathRecord>> {
        let hash = blake3::Hash::from(tree::file_tree_hash(size, digest)).to_hex();
        db::with_tree_hash(&self.db(), hash.as_str()).map_err(|e| self.db_err(e))
    }

    /// The valid single-file path named `name` whose bytes have BLAKE3 `digest` (a model stored
    /// once, found again by what it is rather than by where it came from).
    pub fn find_file(&self, name: &str, digest: &tree::Digest) -> Result<Option<PathRecord>> {
        Ok(self.named(name)?.into_iter().find(|record| {
            let tree_hash = tree::file_tree_hash(record.size, digest);
            record.kind == "file"
                && record.tree_hash == blake3::Hash::from(tree_hash).to_hex().as_str()
                && std::fs::symlink_metadata(self.path_of(&record.name)).is_ok()
        }))
    }

    /// The BLAKE3 of the file at `path` (outside the store) as last hashed, when its stat tuple
    /// (device, inode, size, mtime, ctime; the link followed) is what it was then.
    pub fn known_digest(&self, path: &Path) -> Result<Option<tree::Digest>> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(None);
        };
        let key = path.to_string_lossy();
        let hex = db::known_digest(&self.db(), &key, &db::FileStamp::of(&meta))
            .map_err(|e| self.db_err(e))?;
        Ok(hex.and_then(|h| blake3::Hash::from_hex(h).ok().map(|d| *d.as_bytes())))
    }

    /// Remember that the file at `path`, stamped `before` when it was read, has `digest` — only
    /// when it is stamped so still (a file written meanwhile is hashed again next time).
    pub fn remember_digest(
        &self,
        path: &Path,
        before: &db::FileStamp,
        digest: &tree::Digest,
    ) -> Result<()> {
        if !before.is_current(path) {
            return Ok(());
        }
        let hex = blake3::Hash::from(*digest).to_hex();
        db::remember_digest(&self.db(), &path.to_string_lossy(), before, hex.as_str())
            .map_err(|e| self.db_err(e))
    }

    /// The files outside the store recorded with one of these digests (see [`db::files_with`]).
    pub fn known_files(
        &self,
        blake3: Option<&str>,
        sha256: Option<&str>,
        size: Option<u64>,
    ) -> Result<Vec<db::KnownFile>> {
        db::files_with(&self.db(), blake3, sha256, size).map_err(|e| self.db_err(e))
    }

    /// The files recorded under the directory `dir`.
    pub fn known_files_under(&self, dir: &Path) -> Result<Vec<db::KnownFile>> {
        let dir = dir.to_string_lossy();
        db::files_under(&self.db(), dir.trim_end_matches('/')).map_err(|e| self.db_err(e))
    }

    /// Record the SHA-256 (hex) of a known file, while it is stamped as recorded.
    pub fn remember_sha256(&self, path: &Path, stamp: &db::FileStamp, sha256: &str) -> Result<()> {
        db::remember_sha256(&self.db(), &path.to_string_lossy(), stamp, sha256)
            .map_err(|e| self.db_err(e))
    }

    /// Forget what was recorded of the file at `path` (it changed, or is gone).
    pub fn forget_file(&self, path: &Path) -> Result<()> {
        db::forget_file(&self.db(), &path.to_string_lossy()).map_err(|e| self.db_err(e))
    }

    /// The folders of the models index.
    pub fn model_folders(&self) -> Result<Vec<PathBuf>> {
        let folders = db::model_folders(&self.db()).map_err(|e| self.db_err(e))?;
        Ok(folders.into_iter().map(PathBuf::from).collect())
    }

    /// Add a folder (absolute) to the models index.
    pub fn add_model_folder(&self, dir: &Path) -> Result<()> {
        self.writable()?;
        db::add_model_folder(&self.db(), &dir.to_string_lossy()).map_err(|e| self.db_err(e))
    }

    /// The direct references of a valid path.
    pub fn references(&self, record: &PathRecord) -> Result<Vec<String>> {
        db::references(&self.db(), record.id).map_err(|e| self.db_err(e))
    }

    /// A valid path and everything it references, transitively.
    pub fn closure(&self, record: &PathRecord) -> Result<Vec<PathRecord>> {
        db::closure(&self.db(), record.id).map_err(|e| self.db_err(e))
    }

    /// Make the valid path `path` a GC root under `name` (replacing an earlier root of that name).
    pub fn add_root(&self, name: &str, path: &str, kind: &str) -> Result<()> {
        self.writable()?;
        self.write_root_meta(name, path, kind)?;
        db::add_root(&self.db(), name, path, kind).map_err(|e| self.db_err(e))
    }

    /// Drop the root `name`; the path it kept alive may then be collected.
    pub fn remove_root(&self, name: &str) -> Result<bool> {
        self.writable()?;
        let removed = db::remove_root(&self.db(), name)
            .map(|n| n > 0)
            .map_err(|e| self.db_err(e))?;
        self.remove_root_meta(name);
        Ok(removed)
    }

    /// Every recorded root.
    pub fn roots(&self) -> Result<Vec<db::RootRecord>> {
        db::roots(&self.db()).map_err(|e| self.db_err(e))
    }

    /// Flush everything written to the store's filesystem to disk.
    fn sync(&self) -> Result<()> {
        let _span = tracing::debug_span!("syncfs").entered();
        let dir = fs_err::File::open(&self.root)?;
        rustix::fs::syncfs(&dir).map_err(|err| {
            std::io::Error::new(
                std::io::Error::from(err).kind(),
                format!(
                    "failed to sync the filesystem of `{}`: {err}",
                    self.root.display()
                ),
            )
        })?;
        Ok(())
    }
}

/// Check a store path name: letters, digits and `+-._?=@`, not starting with `.`, 1–200 bytes.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 200 {
        return Err("is longer than 200 bytes".into());
    }
    if name.starts_with('.') {
        return Err("must not start with `.`".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+-._?=@".contains(*c)))
    {
        return Err(format!("contains `{}`", bad.escape_debug()));
    }
    Ok(())
}

/// Make a valid name out of an arbitrary file name by replacing what is not allowed.
pub fn sanitize_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._?=@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    name.truncate(200);
    if name.is_empty() {
        "source".into()
    } else {
        name
    }
}
