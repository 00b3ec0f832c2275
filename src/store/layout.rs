//! Every name the store gives things on disk, in one place (`store-layout.md` describes each).
//! Other modules ask for these names here instead of spelling them.

use std::path::PathBuf;

use super::Store;

pub const VERSION: &str = "VERSION";
pub const DB_DIR: &str = "db";
pub const DB: &str = "db/db.sqlite";
pub const DB_OPEN_LOCK: &str = "db/open.lock";
/// What the last `store rebuild-db` could not recover (a JSON list of names under `paths/`).
pub const UNRECOVERED: &str = "db/unrecovered.json";
pub const PATHS: &str = "paths";
pub const OBJECTS: &str = "objects";
pub const META: &str = "meta";
pub const META_COMPLETE: &str = "meta/.complete";
pub const ROOTS: &str = "roots";
pub const TEMPROOTS: &str = "temproots";
pub const GC_LOCK: &str = "gc.lock";
pub const LOCKS: &str = "locks";
pub const TMP: &str = "tmp";
pub const DOWNLOADS: &str = "tmp/downloads";
pub const GIT: &str = "git";

/// The caches beside the store paths, one directory each under `cache/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// uv's own cache (`UV_CACHE_DIR`).
    Uv,
    /// Stored wheels under their file names, at stable paths uv's cache knows.
    Wheels,
    /// The empty venv each interpreter's venvs start from.
    VenvBase,
    /// What an interrupted resolve kept (`<version id>.json`).
    Resolutions,
    /// Remembered answers of `uv --version` and of interpreters, by executable and mtime.
    Probes,
    /// Writable copies of the commits `git+URL#PATH` specs were read from.
    Specs,
    /// The digest and size of each store path's image layer (`<name>`: `sha256:<hex> <size>`),
    /// computed once: a path never changes.
    ImageLayers,
}

impl Cache {
    /// The directory, relative to the store's root.
    pub fn dir(self) -> &'static str {
        match self {
            Cache::Uv => "cache/uv",
            Cache::Wheels => "cache/wheels",
            Cache::VenvBase => "cache/venv-base",
            Cache::Resolutions => "cache/resolutions",
            Cache::Probes => "cache/probes",
            Cache::Specs => "cache/specs",
            Cache::ImageLayers => "cache/image-layers",
        }
    }
}

impl Cache {
    /// Whether each user keeps their own (uv's cache and the probes: what uv and interpreters
    /// write there is the user's, with the user's modes).
    fn per_user(self) -> bool {
        matches!(self, Cache::Uv | Cache::Probes)
    }
}

impl Store {
    /// Where `cache` lives. uv's cache and the probes are per user where the store is not the
    /// user's alone: in a shared store `cache/uv.<uid>` (on the store's filesystem, so installs
    /// still hardlink), in a read-only store `$XDG_CACHE_HOME/comfix/<name>` (`~/.cache/…`).
    pub fn cache_dir(&self, cache: Cache) -> PathBuf {
        if cache.per_user() && self.is_read_only() {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|h| PathBuf::from(h).join(".cache"))
                })
                .unwrap_or_else(std::env::temp_dir);
            let name = cache.dir().rsplit('/').next().unwrap_or("cache");
            return base.join("comfix").join(name);
        }
        if cache.per_user() && self.is_shared() {
            let uid = rustix::process::geteuid().as_raw();
            return self.root.join(format!("{}.{uid}", cache.dir()));
        }
        self.root.join(cache.dir())
    }

    /// The store's `tmp/`: staging directories, and what outlives a process there (an
    /// interrupted upload's parts, resumed by the next push).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP)
    }

    /// Where downloads are staged (`<key>.part`), locked and recorded (`<key>.done`).
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join(DOWNLOADS)
    }

    /// The git mirror directory called `name`.
    pub fn mirror_dir(&self, name: &str) -> PathBuf {
        self.root.join(GIT).join(name)
    }

    /// The temporary-root name that protects the git mirror called `name`.
    pub fn mirror_root(name: &str) -> String {
        format!("{GIT}/{name}")
    }
}
