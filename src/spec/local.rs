//! The policy for `file://` model sources, judged by name (validation) and by what the file is
//! (validation and the fetcher, on the open descriptor): only regular files every user may read,
//! nothing from `/proc`, `/sys` or `/dev`.

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
    if meta.mode() & 0o004 == 0 {
        return Some((
            "other users cannot read it, and everything in the store is readable by every user"
                .into(),
            Some("if the file may be shared with every user of this machine, make it readable (`chmod o+r FILE`); otherwise keep it out of the spec".into()),
        ));
    }
    None
}
