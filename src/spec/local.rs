//! The policy for `file://` model sources, judged by name (validation) and by what the file is
//! (validation and the fetcher, on the open descriptor): only regular files, nothing from
//! `/proc`, `/sys` or `/dev`, and nothing other users cannot read now that the store would let
//! them read: a file counts as readable by others only when it is (`o+r`) and every directory
//! above it lets them through (`o+x`); a store they cannot reach (one in a `0700` home) publishes
//! nothing, so it takes private files.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

/// Top-level directories whose files are the kernel's or devices, never model files.
const REFUSED_ROOTS: [&str; 3] = ["proc", "sys", "dev"];

/// Why a local path cannot be a source, judged from its name alone (for `spec check`).
pub fn refused_by_name(path: &Path) -> Option<String> {
    if !path.is_absolute() {
        return Some("a `file://` source must be an absolute path".into());
    }
    let first = path.components().find_map(|c| match c {
        Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
        _ => None,
    })?;
    REFUSED_ROOTS
        .contains(&first.as_str())
        .then(|| format!("files under `/{first}` are the kernel's or devices, not model files"))
}

/// Where a chain of links from `path` passes through `/proc`, `/sys` or `/dev`, if it does: each
/// hop is judged by where it points, not by where the kernel's magic links end (`/proc/self/exe`
/// resolves to a program file).
pub fn through_kernel(path: &Path) -> Option<std::path::PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        let parent = at
            .parent()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
        let here = match (&parent, at.file_name()) {
            (Some(parent), Some(name)) => parent.join(name),
            _ => at.clone(),
        };
        if refused_by_name(&here).is_some() {
            return Some(here);
        }
        let Ok(target) = std::fs::read_link(&here) else {
            return None;
        };
        at = match &parent {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
    }
    None
}

/// Why an existing local path cannot be a source, judged from what it is (following symlinks):
/// anything but a regular file, on a kernel filesystem, or unreadable by other users.
pub fn refused_by_kind(meta: &std::fs::Metadata) -> Option<(String, Option<String>)> {
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Some((
            format!("it is {what}; only regular files can be models"),
            None,
        ));
    }
    None
}

/// The first directory on the way to `path` (made absolute, links resolved) that other users
/// cannot pass (no `o+x`); for a directory `path`, itself too.
fn closed_to_others(path: &Path) -> Option<std::path::PathBuf> {
    let real = std::fs::canonicalize(path).ok()?;
    let is_dir = real.is_dir();
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    if is_dir {
        dirs.insert(0, &real);
    }
    dirs.into_iter()
        .rev()
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

/// Whether other users can reach what is inside the store at `root` (a store not made yet: its
/// nearest existing parent).
fn store_is_open(root: &Path) -> bool {
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    closed_to_others(existing).is_none()
}

/// Why adding the regular file `path` (`meta`, following links) to the store would let other
/// users read what they cannot read now: it is not `o+r`, or a directory above it is closed to
/// them — unless they cannot reach the store either.
pub fn would_publish(path: &Path, meta: &std::fs::Metadata) -> Option<(String, Option<String>)> {
    let hint = "if the file may be shared with every user of this machine, make it and the folders above it readable (`chmod o+r FILE`, `chmod o+x DIR`), or use a store only you can reach (`--store` in a private folder); otherwise keep it out of the spec";
    let reason = if meta.mode() & 0o004 == 0 {
        "other users cannot read it".to_string()
    } else {
        let closed = closed_to_others(path)?;
        format!(
            "other users cannot reach it (`{}` is closed to them)",
            closed.display()
        )
    };
    // No store set (a library caller): taken to be reachable by every user, the strict judgement.
    if super::STORE_DIR
        .get()
        .is_some_and(|root| !store_is_open(root))
    {
        return None;
    }
    Some((
        format!("{reason}, and everything in the store is readable by every user"),
        Some(hint.into()),
    ))
}
