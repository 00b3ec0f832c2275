//! Carrying a generation's user files over: what the user added to the current generation's
//! trees comes along into the next one; what comfix placed is known by its stamps.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::link::{self, Placed};
use super::{io, Generation, Home, RealizeError, UsedMode, USER_DATA};

/// Files comfix made in a generation, relative to its directory.
pub(super) fn known_files<'a>(
    generation: &'a Generation,
    placed: &'a [Placed],
) -> HashSet<Cow<'a, str>> {
    let mut known: HashSet<Cow<'a, str>> = placed
        .iter()
        .map(|p| Cow::Borrowed(p.path.as_str()))
        .collect();
    known.insert(Cow::Borrowed("ComfyUI/extra_model_paths.yaml"));
    for dir in USER_DATA {
        known.insert(Cow::Owned(format!("ComfyUI/{dir}")));
    }
    for mount in &generation.mounts {
        known.insert(Cow::Borrowed(mount.at.as_str()));
    }
    known
}

/// A directory comfix made in a generation, as it was when the generation was finished: while
/// its mtime and inode are unchanged, nothing was added to it or removed from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DirStamp {
    pub(super) path: String,
    pub(super) mtime_ns: i128,
    pub(super) ino: u64,
}

/// The directories under `ComfyUI/` and `models/` of the generation being built at `building`
/// (not inside a node's `.git`).
pub(super) fn dir_stamps(building: &Path) -> Vec<DirStamp> {
    let mut out = Vec::new();
    for top in ["ComfyUI", "models"] {
        let walker = walkdir::WalkDir::new(building.join(top))
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| e.file_type().is_dir() && e.file_name() != ".git");
        for entry in walker.flatten() {
            let Some(stamp) = link::Stamp::of_path(entry.path()) else {
                continue;
            };
            let rel = entry.path().strip_prefix(building).expect("under building");
            out.push(DirStamp {
                path: rel.to_string_lossy().into_owned(),
                mtime_ns: stamp.mtime_ns,
                ino: stamp.ino,
            });
        }
    }
    out
}

/// Whether `rel` is inside something comfix manages wholesale (a node's `.git`, a hard-linked or
/// symlinked mount) rather than a file the user added.
pub(super) fn managed(rel: &str, generation: &Generation) -> bool {
    rel.contains("/.git/")
        || generation.mounts.iter().any(|m| {
            matches!(m.mode, UsedMode::Hardlink | UsedMode::Symlink)
                && (rel == m.at || rel.starts_with(&format!("{}/", m.at)))
        })
}

/// The files and symlinks a user added to generation `n` (relative to its directory, with their
/// absolute paths): everything under `ComfyUI/` and `models/` that comfix did not place, leaving
/// out `__pycache__`, nodes' `.git`, and the user data links.
pub(super) fn user_added(
    home: &Home,
    n: u32,
    generation: &Generation,
    placed: &[Placed],
) -> Result<Vec<(String, PathBuf)>, RealizeError> {
    let dir = home.generation_dir(n);
    let stamps: Option<Vec<DirStamp>> = fs::read(dir.join("dirs.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // The directories whose stamp changed (thousands looked at, on every core, relative to the
    // generation's directory); with none, nothing was added anywhere.
    let changed: Option<Vec<&DirStamp>> = stamps.as_ref().map(|stamps| {
        use rayon::prelude::*;
        let fd = super::checked::open_dir(&dir).ok();
        stamps
            .par_iter()
            .filter(|stamp| {
                let now = match &fd {
                    Some(fd) => link::Stamp::at(fd, stamp.path.as_str()),
                    None => link::Stamp::of_path(&dir.join(&stamp.path)),
                };
                // Gone: its files show as missing.
                now.is_some_and(|now| now.mtime_ns != stamp.mtime_ns || now.ino != stamp.ino)
            })
            .collect()
    });
    if changed.as_ref().is_some_and(|c| c.is_empty()) {
        return Ok(Vec::new());
    }
    let known = known_files(generation, placed);
    let skipped = |rel: &str, name: &std::ffi::OsStr| {
        name == "__pycache__"
            || name == ".git"
            || USER_DATA.iter().any(|d| rel == format!("ComfyUI/{d}"))
    };
    let mut out = Vec::new();
    let mut add = |rel: String, path: PathBuf| {
        if !known.contains(rel.as_str()) && !managed(&rel, generation) {
            out.push((rel, path));
        }
    };
    // Everything under `rel` (a directory comfix did not make), or every directory when the
    // generation predates its directory stamps.
    let walk_all = |rel: &str, add: &mut dyn FnMut(String, PathBuf)| {
        let root = dir.join(rel);
        let walker = walkdir::WalkDir::new(&root).follow_links(false).into_iter();
        for entry in walker.filter_entry(|e| {
            let inner = e.path().strip_prefix(&dir).expect("under the generation");
            e.depth() == 0 || !skipped(&inner.to_string_lossy(), e.file_name())
        }) {
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_dir() {
                continue;
            }
            let inner = entry
                .path()
                .strip_prefix(&dir)
                .expect("under the generation");
            add(inner.to_string_lossy().into_owned(), entry.into_path());
        }
    };
    let (Some(stamps), Some(changed)) = (&stamps, changed) else {
        for top in ["ComfyUI", "models"] {
            if dir.join(top).is_dir() {
                walk_all(top, &mut add);
            }
        }
        return Ok(out);
    };
    let made: HashSet<&str> = stamps.iter().map(|d| d.path.as_str()).collect();
    for stamp in changed {
        // Changed: its own entries are read, directories it did not have are read whole.
        let Ok(entries) = fs::read_dir(dir.join(&stamp.path)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = format!("{}/{}", stamp.path, entry.file_name().to_string_lossy());
            if skipped(&rel, &entry.file_name()) {
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                if !made.contains(rel.as_str()) {
                    walk_all(&rel, &mut add);
                }
            } else {
                add(rel, entry.path());
            }
        }
    }
    Ok(out)
}

/// Hard-link the files a user added to generation `from` into the generation being built.
pub(super) fn carry_user_files(
    home: &Home,
    from: u32,
    generation: &Generation,
    placed: &[Placed],
    building: &Path,
) -> Result<usize, RealizeError> {
    let mut carried = 0;
    for (rel, path) in user_added(home, from, generation, placed)? {
        let to = building.join(&rel);
        if fs::symlink_metadata(&to).is_ok() {
            tracing::warn!(
                "`{rel}` is now part of the version; your copy stays in generation {from}"
            );
            continue;
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let linked = if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            let target = fs::read_link(&path).map_err(io(&path))?;
            std::os::unix::fs::symlink(target, &to)
        } else {
            fs::hard_link(&path, &to).or_else(|_| fs::copy(&path, &to).map(|_| ()))
        };
        linked.map_err(io(&to))?;
        carried += 1;
    }
    Ok(carried)
}
