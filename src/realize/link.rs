//! Link modes: how store content is materialized in a home.
//!
//! Trees that ComfyUI and its nodes write into (the core, the nodes) are reflinked where the
//! filesystem supports it, else copied — so writing in the home never changes the store. Models are
//! symlinked into the store. `--link-mode` overrides the choice; `auto` tries a reflink once per
//! realization and falls back to copying. The mode actually used is returned and reported.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::RealizeError;
use crate::store::{tree, Store};

/// Check that the copy (or reflink) at `dst` of the store path `store_path` has exactly the bytes
/// it was registered with: the tree hash of what landed in the home, computed from the store
/// path's entries and the copies' digests, must be the registered one. A damaged object is found
/// here instead of being realized silently.
pub fn verify_copy(
    store: &Store,
    store_path: &str,
    dst: &Path,
) -> Result<Vec<(PathBuf, tree::Digest)>, RealizeError> {
    let src = store.path_of(store_path);
    let walk_err = |e: tree::WalkError| RealizeError::Io {
        path: src.clone(),
        source: std::io::Error::other(e),
    };
    let entries = tree::walk(&src).map_err(walk_err)?;
    let files: Vec<(PathBuf, u64)> = entries
        .iter()
        .filter_map(|e| match e.kind {
            tree::EntryKind::File { size, .. } => Some((tree::join_rel(dst, &e.rel), size)),
            _ => None,
        })
        .collect();
    let digests = files
        .par_iter()
        .map(|(path, size)| {
            tree::hash_file(path, *size)
                .map(|d| (*size, d))
                .map_err(io(path))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let actual = blake3::Hash::from(tree::build_node(&entries, &digests).tree_hash()).to_hex();
    let placed = || {
        files
            .iter()
            .zip(&digests)
            .map(|((path, _), (_, digest))| (path.clone(), *digest))
            .collect()
    };
    let Some(record) = store.query(store_path)? else {
        return Ok(placed()); // not registered: nothing to compare with (callers protect and check)
    };
    if actual.as_str() == record.tree_hash {
        return Ok(placed());
    }
    // Name the file: the one whose bytes are no object's that the store path links.
    let file = entries
        .iter()
        .filter(|e| matches!(e.kind, tree::EntryKind::File { .. }))
        .zip(&digests)
        .find(|(e, (_, digest))| {
            use std::os::unix::fs::MetadataExt;
            let executable = matches!(
                e.kind,
                tree::EntryKind::File {
                    executable: true,
                    ..
                }
            );
            let object = fs::metadata(store.object_path(digest, executable)).ok();
            let stored = fs::metadata(tree::join_rel(&src, &e.rel)).ok();
            !matches!((object, stored), (Some(o), Some(s)) if o.ino() == s.ino())
        })
        .map(|(e, _)| e.rel.display().to_string());
    Err(RealizeError::Damaged {
        store_path: store_path.to_string(),
        file,
    })
}

/// What the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Reflink or copy for trees, symlink for models
    Auto,
    Reflink,
    Hardlink,
    Symlink,
    Copy,
}

/// What was actually done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsedMode {
    Reflink,
    Copy,
    Hardlink,
    Symlink,
}

impl std::fmt::Display for UsedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UsedMode::Reflink => "reflink",
            UsedMode::Copy => "copy",
            UsedMode::Hardlink => "hardlink",
            UsedMode::Symlink => "symlink",
        })
    }
}

/// A file or symlink comfix placed in a home, for drift detection: its size and mtime then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
    /// Inode and change time when placed (0 in homes made before they were recorded): with size
    /// and mtime, the cheap check that nothing touched the file.
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub ctime_ns: i128,
    /// BLAKE3 of the contents placed (hex), for private copies; hard links are their object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Placed {
    /// What is at `at` now, described like a placed file (`digest` left for the caller).
    pub fn of(path: String, at: &Path) -> std::io::Result<Placed> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(at)?;
        let link = if meta.file_type().is_symlink() {
            Some(fs::read_link(at)?.to_string_lossy().into_owned())
        } else {
            None
        };
        Ok(Placed {
            path,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            ino: meta.ino(),
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            digest: None,
            link,
        })
    }

    /// Whether `now` matches what was placed, without reading the file.
    pub fn looks_unchanged(&self, now: &Stamp) -> bool {
        now.size == self.size
            && now.mtime_ns == self.mtime_ns
            && (self.ino == 0 || now.ino == self.ino)
            // A hard link shares its inode (and change time) with the store and other homes.
            && (self.digest.is_none() || self.ctime_ns == 0 || now.ctime_ns == self.ctime_ns)
    }
}

/// What a cheap check compares: a file's size, times and inode.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
    pub ctime_ns: i128,
    pub is_file: bool,
}

impl Stamp {
    /// `name` in the directory `dir`, not following a symlink; `None` when it is missing.
    pub fn at(dir: &impl rustix::fd::AsFd, name: impl rustix::path::Arg + Copy) -> Option<Stamp> {
        use rustix::fs::{AtFlags, StatxFlags};
        // `statx` asked for only these fields: a quarter cheaper than `fstatat` on a 20,000-file
        // check. Where it is missing (an old kernel, a seccomp filter), `fstatat`.
        let wanted = StatxFlags::TYPE
            | StatxFlags::SIZE
            | StatxFlags::MTIME
            | StatxFlags::CTIME
            | StatxFlags::INO;
        let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC;
        match rustix::fs::statx(dir, name, flags, wanted) {
            Ok(st) => {
                let ns = |t: rustix::fs::StatxTimestamp| {
                    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
                };
                let kind = rustix::fs::FileType::from_raw_mode(st.stx_mode.into());
                return Some(Stamp {
                    size: st.stx_size,
                    mtime_ns: ns(st.stx_mtime),
                    ino: st.stx_ino,
                    ctime_ns: ns(st.stx_ctime),
                    is_file: kind == rustix::fs::FileType::RegularFile,
                });
            }
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {}
            Err(_) => return None,
        }
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        Some(Stamp {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ino: st.st_ino,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
            is_file: kind == rustix::fs::FileType::RegularFile,
        })
    }

    pub fn of_path(path: &Path) -> Option<Stamp> {
        Stamp::at(&rustix::fs::CWD, path)
    }
}

use super::io;

pub(crate) fn mtime_ns(meta: &fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// Materializes trees with one requested mode, remembering whether reflinks work here.
pub struct Linker {
    requested: LinkMode,
    reflink_failed: AtomicBool,
}

impl Linker {
    pub fn new(requested: LinkMode) -> Linker {
        Linker {
            requested,
            reflink_failed: AtomicBool::new(false),
        }
    }

    /// The mode for a tree the home writes into.
    fn tree_mode(&self) -> Result<UsedMode, RealizeError> {
        Ok(match self.requested {
            LinkMode::Auto if self.reflink_failed.load(Ordering::Relaxed) => UsedMode::Copy,
            LinkMode::Auto | LinkMode::Reflink => UsedMode::Reflink,
            LinkMode::Copy => UsedMode::Copy,
            LinkMode::Hardlink => UsedMode::Hardlink,
            LinkMode::Symlink => {
                return Err(RealizeError::LinkMode {
                    message: "`symlink` cannot be used for the core and node trees: ComfyUI resolves its own path and would write into the store".into(),
                })
            }
        })
    }

    /// The mode for a model file.
    pub fn model_mode(&self) -> UsedMode {
        match self.requested {
            LinkMode::Auto | LinkMode::Symlink => UsedMode::Symlink,
            LinkMode::Reflink => UsedMode::Reflink,
            LinkMode::Copy => UsedMode::Copy,
            LinkMode::Hardlink => UsedMode::Hardlink,
        }
    }

    /// Materialize the store tree `src` at `dst` (which must not exist). Returns the mode used and
    /// every file and symlink placed, relative to `rel_base`.
    pub fn tree(
        &self,
        src: &Path,
        dst: &Path,
        rel_base: &str,
    ) -> Result<(UsedMode, Vec<Placed>), RealizeError> {
        let mut mode = self.tree_mode()?;
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        let mut links = Vec::new();
        for entry in walkdir::WalkDir::new(src)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| RealizeError::Io {
                path: src.to_path_buf(),
                source: e.into(),
            })?;
            let rel = entry
                .path()
                .strip_prefix(src)
                .expect("under src")
                .to_path_buf();
            let kind = entry.file_type();
            if kind.is_dir() {
                dirs.push(rel);
            } else if kind.is_symlink() {
                links.push(rel);
            } else {
                files.push(rel);
            }
        }
        for rel in &dirs {
            let at = dst.join(rel);
            fs::create_dir_all(&at).map_err(io(&at))?;
            fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).map_err(io(&at))?;
        }
        let mut placed = Vec::with_capacity(files.len() + links.len());
        for rel in &links {
            let target = fs::read_link(src.join(rel)).map_err(io(&src.join(rel)))?;
            let at = dst.join(rel);
            std::os::unix::fs::symlink(&target, &at).map_err(io(&at))?;
            placed.push(Placed::of(join_rel(rel_base, rel), &at).map_err(io(&at))?);
        }
        // Probe reflink support with the first file, then go parallel with the settled mode.
        let (first, rest) = files
            .split_first()
            .map_or((None, &[][..]), |(f, r)| (Some(f), r));
        if let Some(first) = first {
            let (used, p) = self.file(&src.join(first), &dst.join(first), mode, rel_base, first)?;
            mode = used;
            placed.extend(p);
        }
        let rest_placed = rest
            .par_iter()
            .map(|rel| {
                self.file(&src.join(rel), &dst.join(rel), mode, rel_base, rel)
                    .map(|(_, p)| p)
            })
            .collect::<Result<Vec<_>, _>>()?;
        placed.extend(rest_placed.into_iter().flatten());
        Ok((mode, placed))
    }

    fn file(
        &self,
        src: &Path,
        dst: &Path,
        mode: UsedMode,
        rel_base: &str,
        rel: &Path,
    ) -> Result<(UsedMode, Option<Placed>), RealizeError> {
        let used = place_file(src, dst, mode, self.requested == LinkMode::Auto).map_err(|e| match e {
            PlaceError::Io(source) => RealizeError::Io {
                path: dst.to_path_buf(),
                source,
            },
            PlaceError::NoReflink(source) => RealizeError::LinkMode {
                message: format!(
                    "the filesystem of `{}` cannot reflink from the store ({source}); use `--link-mode copy` or `auto`",
                    dst.display()
                ),
            },
        })?;
        if used == UsedMode::Copy && mode == UsedMode::Reflink {
            self.reflink_failed.store(true, Ordering::Relaxed);
        }
        let placed = Placed::of(join_rel(rel_base, rel), dst).map_err(io(dst))?;
        Ok((used, Some(placed)))
    }
}

pub(crate) fn join_rel(base: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy();
    if base.is_empty() {
        rel.into_owned()
    } else if rel.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{rel}")
    }
}

enum PlaceError {
    Io(std::io::Error),
    NoReflink(std::io::Error),
}

/// Place one store file at `dst` with `mode`; with `fallback`, a failed reflink becomes a copy.
/// Private copies are made writable (0644/0755) — they belong to the home.
fn place_file(
    src: &Path,
    dst: &Path,
    mode: UsedMode,
    fallback: bool,
) -> Result<UsedMode, PlaceError> {
    let executable = fs::metadata(src)
        .map_err(PlaceError::Io)?
        .permissions()
        .mode()
        & 0o111
        != 0;
    let writable = || {
        let perm = if executable { 0o755 } else { 0o644 };
        fs::set_permissions(dst, fs::Permissions::from_mode(perm)).map_err(PlaceError::Io)
    };
    match mode {
        UsedMode::Reflink => match reflink_copy::reflink(src, dst) {
            Ok(()) => {
                writable()?;
                Ok(UsedMode::Reflink)
            }
            Err(err) if fallback => {
                tracing::debug!("reflink unsupported here ({err}); copying");
                let _ = fs::remove_file(dst);
                fs::copy(src, dst).map_err(PlaceError::Io)?;
                writable()?;
                Ok(UsedMode::Copy)
            }
            Err(err) => Err(PlaceError::NoReflink(err)),
        },
        UsedMode::Copy => {
            fs::copy(src, dst).map_err(PlaceError::Io)?;
            writable()?;
            Ok(UsedMode::Copy)
        }
        UsedMode::Hardlink => fs::hard_link(src, dst)
            .map(|_| UsedMode::Hardlink)
            .map_err(PlaceError::Io),
        UsedMode::Symlink => std::os::unix::fs::symlink(src, dst)
            .map(|_| UsedMode::Symlink)
            .map_err(PlaceError::Io),
    }
}

/// Place a single store file (a model) at `dst`, replacing nothing.
pub fn model(linker: &Linker, src: &Path, dst: &Path) -> Result<UsedMode, RealizeError> {
    let mode = linker.model_mode();
    place_file(src, dst, mode, false).map_err(|e| match e {
        PlaceError::Io(source) => RealizeError::Io {
            path: dst.to_path_buf(),
            source,
        },
        PlaceError::NoReflink(source) => RealizeError::LinkMode {
            message: format!("cannot reflink `{}`: {source}", dst.display()),
        },
    })
}

/// Remove a tree that may contain read-only directories.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    for entry in walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
    fs::remove_dir_all(path)
}

/// Every regular file and symlink under `root`, relative, skipping `__pycache__`.
pub fn list_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.file_name() != "__pycache__")
        .flatten()
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            e.path()
                .strip_prefix(root)
                .expect("under root")
                .to_path_buf()
        })
        .collect()
}
