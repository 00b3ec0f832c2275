//! `file://` sources with a policy: only regular files, nothing from `/proc`, `/sys` or `/dev`
//! (or any other kernel filesystem), and only files every user may read — the store is readable
//! by everyone, so a private file would be published by adding it.
//!
//! A local file is opened once, without blocking (a FIFO cannot hang resolve), checked on the
//! open descriptor, and copied into the store's staging area while it is hashed: the bytes that
//! are checked against the expected digests are exactly the bytes that are stored.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Expected, FetchError};
use crate::store::Add;
use crate::store::{Staging, Store};

pub use crate::spec::local::{refused_by_kind, refused_by_name};

fn refuse(what: &str, path: &Path, reason: String, hint: Option<String>) -> FetchError {
    FetchError::LocalSource {
        what: what.to_string(),
        file: path.display().to_string(),
        reason,
        hint,
    }
}

/// Kernel and pseudo filesystems (`statfs` magic numbers) whose files are never model files.
fn on_pseudo_fs(file: &File) -> bool {
    const PSEUDO: [u64; 9] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x1373,      // devfs
        0x1cd1,      // devpts
        0x6462_6720, // debugfs
        0x7363_6673, // securityfs
        0x2762_0f94, // cgroup
        0x6367_7270, // cgroup2
        0x7472_6163, // tracefs
    ];
    rustix::fs::fstatfs(file).is_ok_and(|s| PSEUDO.contains(&(s.f_type as u64)))
}

/// What a staged local file is checked against, and how it is staged.
#[derive(Clone, Copy)]
pub struct How<'a> {
    pub sha256: Option<&'a Expected>,
    pub blake3: Option<&'a Expected>,
    /// Told each chunk's bytes as they are done.
    pub progress: &'a dyn Fn(u64),
    /// Stage a file with no other link as a hard link where the filesystem allows (no copy).
    pub hard_link: bool,
    /// The bytes are taken only as those a lock or source names by digest (checked before they
    /// are registered): the store holds them whoever reads the file, so a file closed to other
    /// users publishes nothing by being taken.
    pub asked_by_digest: bool,
}

/// A local file added to the store as a model: its store path and what staging found.
pub struct AddedFile {
    pub store_path: String,
    pub size: u64,
    pub sha256: Option<String>,
    pub blake3: crate::store::tree::Digest,
    /// Taken as a hard link to the original (same inode), not a copy.
    pub linked: bool,
}

/// [`stage`] `path` and add it as the single-file path named `file_name` (a model).
pub fn add_file(
    store: &Store,
    what: &str,
    path: &Path,
    file_name: &str,
    how: &How<'_>,
) -> Result<AddedFile, FetchError> {
    let staged = stage(store, what, path, "model", how)?;
    let options = crate::store::AddOptions {
        name: Some(crate::store::sanitize_name(file_name)),
        references: Vec::new(),
    };
    let added = store.add_staged(staged.staging, "model", &options, Some(staged.blake3))?;
    Ok(AddedFile {
        store_path: added.record.name,
        size: staged.size,
        sha256: staged.sha256,
        blake3: staged.blake3,
        linked: staged.linked,
    })
}

/// What staging a local file produced.
pub struct StagedFile {
    pub staging: Staging,
    pub size: u64,
    /// Computed when a SHA-256 was expected (and then equal to it).
    pub sha256: Option<String>,
    pub blake3: crate::store::tree::Digest,
    /// Staged as a hard link to the original (same inode), not a copy.
    pub linked: bool,
}

/// Open `path` under the policy, copy it into a new staging directory as `file_name` while
/// hashing it, and check every expected digest. On any refusal or mismatch nothing is staged.
/// `progress` is told each chunk's bytes as they are done (for a bar over many GB). With
/// `hard_link`, a file with no other link on the store's filesystem is staged as a hard link (no
/// bytes written; the caller then replaces the original by a link into the store at once, so
/// the install and the store never share a writable inode for longer).
// Long on purpose: the local-file policy and the copy are one sequence of checks on the same open file.
pub fn stage(
    store: &Store,
    what: &str,
    path: &Path,
    file_name: &str,
    how: &How<'_>,
) -> Result<StagedFile, FetchError> {
    let How {
        sha256,
        blake3,
        progress,
        hard_link,
        asked_by_digest,
    } = *how;
    if let Some(reason) = refused_by_name(path) {
        return Err(refuse(what, path, reason, None));
    }
    if let Some(through) = crate::spec::local::through_kernel(path) {
        return Err(refuse(
            what,
            path,
            format!(
                "it leads through `{}`: the kernel's or a device's file, not a model",
                through.display()
            ),
            None,
        ));
    }
    let real: PathBuf = std::fs::canonicalize(path).map_err(FetchError::io(path))?;
    if let Some(reason) = refused_by_name(&real) {
        return Err(refuse(
            what,
            path,
            format!("it leads to `{}`: {reason}", real.display()),
            None,
        ));
    }
    let mut file = crate::files::open_without_blocking(&real).map_err(FetchError::io(path))?;
    let meta = file.metadata().map_err(FetchError::io(path))?;
    let publishes = || match asked_by_digest {
        true => None,
        false => crate::spec::local::would_publish(&real, &meta),
    };
    if let Some((reason, hint)) = refused_by_kind(&meta).or_else(publishes) {
        return Err(refuse(what, path, reason, hint));
    }
    if on_pseudo_fs(&file) {
        return Err(refuse(
            what,
            path,
            "it is on a kernel filesystem, not a model file".into(),
            None,
        ));
    }

    let staging = store.staging()?;
    let staged = staging.path().join(file_name);
    // Where the filesystem clones files (XFS, btrfs), the staged copy costs nothing and is hashed
    // on all cores; elsewhere it is written as it is read, and hashed while written.
    let linked = hard_link
        && std::os::unix::fs::MetadataExt::nlink(&meta) == 1
        && std::fs::hard_link(&real, &staged).is_ok();
    let (size, digest, sha256_hex) = match linked {
        true => {
            let hashed = hash_in_place(&staged, meta.len(), sha256.is_some())
                .map_err(FetchError::io(&staged))?;
            progress(hashed.0);
            hashed
        }
        false => match clone_and_hash(&real, &staged, meta.len(), sha256.is_some()) {
            Some(cloned) => {
                let cloned = cloned.map_err(FetchError::io(&staged))?;
                progress(cloned.0);
                cloned
            }
            None => copy_and_hash(&mut file, path, &staged, sha256.is_some(), progress)?,
        },
    };
    let source = format!("file://{}", path.display());
    if let (Some(expected), Some(actual)) = (sha256, &sha256_hex) {
        expected.check(what, &source, "SHA-256", actual)?;
    }
    if let Some(expected) = blake3 {
        expected.check(
            what,
            &source,
            "BLAKE3",
            &blake3::Hash::from(digest).to_hex(),
        )?;
    }
    Ok(StagedFile {
        staging,
        size,
        sha256: sha256_hex,
        blake3: digest,
        linked,
    })
}

/// Reflink `from` to `to` and hash the clone: `None` when the filesystem cannot clone.
fn clone_and_hash(
    from: &Path,
    to: &Path,
    size: u64,
    want_sha256: bool,
) -> Option<std::io::Result<(u64, crate::store::tree::Digest, Option<String>)>> {
    reflink_copy::reflink(from, to).ok()?;
    Some(hash_in_place(to, size, want_sha256))
}

/// Hash the staged file `at` (a clone or a hard link of a file of `size` bytes) on all cores.
fn hash_in_place(
    at: &Path,
    size: u64,
    want_sha256: bool,
) -> std::io::Result<(u64, crate::store::tree::Digest, Option<String>)> {
    let clone = std::fs::File::open(at)?;
    let cloned = clone.metadata()?.len();
    if cloned != size {
        return Err(std::io::Error::other(format!(
            "the file changed while it was read ({size} bytes, then {cloned})"
        )));
    }
    let digest = crate::store::tree::hash_file(at, cloned)?;
    let sha = if want_sha256 {
        Some(crate::files::sha256_hex_of(&clone)?)
    } else {
        None
    };
    clone.sync_data()?;
    Ok((cloned, digest, sha))
}

/// Copy `file` to `staged` as it is read, hashing the bytes on the way; made durable.
fn copy_and_hash(
    file: &mut std::fs::File,
    path: &Path,
    staged: &Path,
    want_sha256: bool,
    progress: &dyn Fn(u64),
) -> Result<(u64, crate::store::tree::Digest, Option<String>), FetchError> {
    use crate::files::CopyError;
    let (out, size, digest, sha256_hex) =
        crate::files::copy_hashing(file, staged, want_sha256, progress).map_err(|e| match e {
            CopyError::Read(e) => FetchError::io(path)(e),
            CopyError::Write(e) => FetchError::io(staged)(e),
        })?;
    out.sync_data().map_err(FetchError::io(staged))?;
    Ok((size, digest, sha256_hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_trees_are_refused_by_name() {
        for bad in [
            "/proc/self/environ",
            "/sys/kernel/x",
            "/dev/zero",
            "relative/x",
        ] {
            assert!(refused_by_name(Path::new(bad)).is_some(), "{bad}");
        }
        for good in ["/models/x.safetensors", "/home/u/proc/x", "/devices/x"] {
            assert!(refused_by_name(Path::new(good)).is_none(), "{good}");
        }
    }
}
