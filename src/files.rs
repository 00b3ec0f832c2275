//! Files comfix writes for the user (locks, specs, exports, the store's metadata): written
//! atomically, with the modes the user's umask gives — as any other program's files — not the
//! 0600 of a temporary file. Secrets (keys) are written 0600 by their own code.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A temporary file in `dir` that becomes a file others may read as the umask allows (0666 less
/// the umask) when persisted by rename.
pub fn temp_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new().prefix(".tmp").tempfile_in(dir)?;
    file.as_file()
        .set_permissions(Permissions::from_mode(0o666 & !umask()))?;
    Ok(file)
}

/// Write `bytes` to `path` atomically: a temporary file beside it, synced, renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temp = temp_in(path.parent().unwrap_or(Path::new(".")))?;
    std::io::Write::write_all(&mut temp, bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The process's umask: read from `/proc/self/status` (Linux ≥ 4.7), which changes nothing;
/// elsewhere set and set back at once.
pub fn umask() -> u32 {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
    from_proc.unwrap_or_else(|| {
        // SAFETY: umask(2) cannot fail; the old mask is set back at once.
        unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old as u32
        }
    })
}

/// Open `path` for reading without waiting on it: `O_NONBLOCK` (a FIFO does not wait for a
/// writer), `O_NOCTTY` (a terminal does not become ours). The caller checks what it opened.
pub fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Open `path` for reading only if it is a regular file: opened without blocking (a FIFO or a
/// device planted where a file belongs would block `open` or never end) and checked on the
/// descriptor, so nothing can be swapped in between the check and the read.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let file = open_without_blocking(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory)",
        ));
    }
    // Reads of a regular file do not block anyway; the flag is cleared for what follows.
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())?;
    Ok(file)
}

/// The bytes of the regular file `path`, refused beyond `limit` bytes (never read whole into
/// memory first).
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {}, more than such a file holds",
                crate::units::format_bytes(limit)
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_regular(path, limit)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The most a workflow file may hold: ComfyUI's own workflows are kilobytes to a few megabytes.
pub const WORKFLOW_LIMIT: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_temp_file_has_the_umask_s_mode() {
        let dir = tempfile::tempdir().unwrap();
        let temp = temp_in(dir.path()).unwrap();
        let path = dir.path().join("lock.json");
        temp.persist(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask());
        assert_ne!(mode, 0o600);
    }

    /// A FIFO is refused without blocking; a device is refused; a regular file is read, up to
    /// its limit.
    #[test]
    fn only_regular_files_are_read_and_never_past_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a plain mkfifo on a path in a fresh directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = read_regular(&fifo, 10).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = read_regular(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), b"0123456789");
        let err = read_regular(&file, 9).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}

/// A directory that untrusted names are written beneath (a registry's zip, a closure archive, a
/// cache's archive): every directory and file is created or opened one component at a time from
/// the destination's descriptor, each with `O_NOFOLLOW`, so no symlink — one the archive made, or
/// one planted beside it — is ever followed, and nothing lands outside. The per-component walk
/// works on every kernel (`openat2`'s `RESOLVE_BENEATH` would do the same walk in the kernel);
/// the directory last walked is kept open, as archives list a directory's entries together.
pub struct Beneath {
    root: std::path::PathBuf,
    root_fd: std::os::fd::OwnedFd,
    last: Option<(std::path::PathBuf, std::os::fd::OwnedFd)>,
    /// The symlinks made, for [`links_leaving`].
    links: Vec<std::path::PathBuf>,
    umask: u32,
}

/// Why a name could not be written beneath the destination.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("`{}` is not a plain relative name (absolute, `..`, or empty)", .0.display())]
    NotRelative(std::path::PathBuf),
    #[error("`{}` would be written through a symlink or a file", .0.display())]
    Through(std::path::PathBuf),
    #[error("`{}` exists already", .0.display())]
    Exists(std::path::PathBuf),
    #[error("I/O error on `{}`: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Beneath {
    /// `root`, created when missing (itself trusted: the caller's own staging directory).
    pub fn new(root: &Path) -> Result<Beneath, BeneathError> {
        let io = |source: std::io::Error| BeneathError::Io {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io)?;
        let root_fd = rustix::fs::open(
            root,
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        Ok(Beneath {
            root: root.to_path_buf(),
            root_fd,
            last: None,
            links: Vec::new(),
            umask: umask(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The symlinks made so far, relative to the root.
    pub fn links(&self) -> &[std::path::PathBuf] {
        &self.links
    }

    /// The plain components of `rel`, or an error.
    fn parts(rel: &Path) -> Result<Vec<&std::ffi::OsStr>, BeneathError> {
        let mut parts = Vec::new();
        for component in rel.components() {
            match component {
                std::path::Component::Normal(part) => parts.push(part),
                std::path::Component::CurDir => {}
                _ => return Err(BeneathError::NotRelative(rel.to_path_buf())),
            }
        }
        if parts.is_empty() {
            return Err(BeneathError::NotRelative(rel.to_path_buf()));
        }
        Ok(parts)
    }

    /// Open (creating when `create`) the directory `parts` beneath the root, never through a
    /// symlink. Returns a descriptor to it.
    fn dir(
        &mut self,
        rel: &Path,
        parts: &[&std::ffi::OsStr],
        create: bool,
    ) -> Result<std::os::fd::OwnedFd, BeneathError> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::AsFd;
        let joined: std::path::PathBuf = parts.iter().collect();
        if let Some((path, fd)) = &self.last {
            if *path == joined {
                return fd.try_clone().map_err(|source| BeneathError::Io {
                    path: self.root.join(&joined),
                    source,
                });
            }
        }
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let mut fd = self
            .root_fd
            .try_clone()
            .map_err(|source| BeneathError::Io {
                path: self.root.clone(),
                source,
            })?;
        for part in parts {
            let opened = match rustix::fs::openat(fd.as_fd(), *part, flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(fd.as_fd(), *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(BeneathError::Io {
                                path: self.root.join(rel),
                                source: e.into(),
                            })
                        }
                    }
                    rustix::fs::openat(fd.as_fd(), *part, flags, Mode::empty())
                }
                other => other,
            };
            fd = match opened {
                Ok(next) => next,
                // A symlink (O_NOFOLLOW), or a file where a directory must be.
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(BeneathError::Through(rel.to_path_buf()))
                }
                Err(e) => {
                    return Err(BeneathError::Io {
                        path: self.root.join(rel),
                        source: e.into(),
                    })
                }
            };
        }
        if let Ok(copy) = fd.try_clone() {
            self.last = Some((joined, copy));
        }
        Ok(fd)
    }

    /// The last component of `rel` and a descriptor of its directory (created with its parents).
    fn parent(
        &mut self,
        rel: &Path,
    ) -> Result<(std::ffi::OsString, std::os::fd::OwnedFd), BeneathError> {
        let parts = Self::parts(rel)?;
        let (name, parents) = parts.split_last().expect("at least one part");
        let dir = if parents.is_empty() {
            self.root_fd
                .try_clone()
                .map_err(|source| BeneathError::Io {
                    path: self.root.clone(),
                    source,
                })?
        } else {
            self.dir(rel, parents, true)?
        };
        Ok((name.to_os_string(), dir))
    }

    /// Create the directory `rel` and its parents beneath the root.
    pub fn create_dir_all(&mut self, rel: &Path) -> Result<(), BeneathError> {
        let parts = Self::parts(rel)?;
        self.dir(rel, &parts, true).map(|_| ())
    }

    /// Create the new regular file `rel` (its parents created), with exactly `mode` (the
    /// archive's executable bit must survive any umask); refused when anything is there already.
    pub fn create_file(&mut self, rel: &Path, mode: u32) -> Result<std::fs::File, BeneathError> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::AsFd;
        let (name, dir) = self.parent(rel)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir.as_fd(), &name, flags, Mode::from_raw_mode(mode)) {
            Ok(fd) => {
                // The umask may have taken bits the archive's mode has (an executable bit).
                if mode & self.umask != 0 {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| {
                        BeneathError::Io {
                            path: self.root.join(rel),
                            source: e.into(),
                        }
                    })?;
                }
                Ok(std::fs::File::from(fd))
            }
            Err(rustix::io::Errno::EXIST) => Err(BeneathError::Exists(rel.to_path_buf())),
            Err(e) => Err(BeneathError::Io {
                path: self.root.join(rel),
                source: e.into(),
            }),
        }
    }

    /// Create the symlink `rel` → `target` (its parents created). Where the link points is not
    /// checked here: see [`links_leaving`].
    pub fn symlink(&mut self, rel: &Path, target: &Path) -> Result<(), BeneathError> {
        use std::os::fd::AsFd;
        let (name, dir) = self.parent(rel)?;
        match rustix::fs::symlinkat(target, dir.as_fd(), &name) {
            Ok(()) => {
                self.links.push(rel.to_path_buf());
                Ok(())
            }
            Err(rustix::io::Errno::EXIST) => Err(BeneathError::Exists(rel.to_path_buf())),
            Err(e) => Err(BeneathError::Io {
                path: self.root.join(rel),
                source: e.into(),
            }),
        }
    }
}

/// Of the symlinks `links` (relative to `root`; [`Beneath::links`]), those that lead outside
/// `root` — directly (an absolute target, too many `..`) or through other symlinks of the tree —
/// or that loop: each resolved within the tree as the kernel would, following the tree's own
/// links. `(link, target)` pairs.
pub fn links_leaving(
    root: &Path,
    links: &[std::path::PathBuf],
) -> std::io::Result<Vec<(std::path::PathBuf, std::path::PathBuf)>> {
    let mut leaving = Vec::new();
    for rel in links {
        let target = std::fs::read_link(root.join(rel))?;
        if !resolves_inside(root, rel) {
            leaving.push((rel.clone(), target));
        }
    }
    Ok(leaving)
}

/// Whether the symlink at `rel` under `root` resolves to a place inside `root`, following the
/// tree's links (at most 40, as the kernel) and never looking outside it.
fn resolves_inside(root: &Path, rel: &Path) -> bool {
    use std::path::Component;
    // The resolved location so far, as components under the root; and what is left to walk.
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            if at.pop().is_none() {
                return false;
            }
            continue;
        }
        if part == "." || part.is_empty() {
            continue;
        }
        at.push(part);
        let here: std::path::PathBuf = root.join(at.iter().collect::<std::path::PathBuf>());
        let Ok(meta) = std::fs::symlink_metadata(&here) else {
            // Dangling inside the tree: it points nowhere outside.
            continue;
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return false;
            }
            let Ok(target) = std::fs::read_link(&here) else {
                return false;
            };
            if target.is_absolute() {
                return false;
            }
            at.pop();
            let mut next: std::collections::VecDeque<std::ffi::OsString> = target
                .components()
                .map(|c| match c {
                    Component::ParentDir => std::ffi::OsString::from(".."),
                    Component::Normal(p) => p.to_os_string(),
                    _ => std::ffi::OsString::from("."),
                })
                .collect();
            next.extend(pending.drain(..));
            pending = next;
        }
    }
    true
}

/// Lowercase hexadecimal of `bytes`, as locks and sources spell digests.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The SHA-256 of everything `reader` gives, in hexadecimal.
/// Which side of a [`copy_hashing`] failed.
#[derive(Debug)]
pub enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copy `from` into the new file `to` (mode 0644) as it is read, taking the bytes' BLAKE3 and,
/// when asked, their SHA-256 (hex) on the way, one read of each byte; `progress` gets each
/// chunk's length. Returns the written file (not synced), the size and the digests.
pub fn copy_hashing(
    from: &mut std::fs::File,
    to: &Path,
    want_sha256: bool,
    progress: &dyn Fn(u64),
) -> Result<(std::fs::File, u64, [u8; 32], Option<String>), CopyError> {
    use sha2::Digest as _;
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(to)
        .map_err(CopyError::Write)?;
    let mut b3 = blake3::Hasher::new();
    let mut sha = want_sha256.then(sha2::Sha256::new);
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let chunk = &buf[..n];
        out.write_all(chunk).map_err(CopyError::Write)?;
        b3.update(chunk);
        if let Some(sha) = &mut sha {
            sha.update(chunk);
        }
        size += n as u64;
        progress(n as u64);
    }
    let sha256_hex = sha.map(|s| hex(&s.finalize()));
    Ok((out, size, *b3.finalize().as_bytes(), sha256_hex))
}

pub fn sha256_hex_of(mut reader: impl std::io::Read) -> std::io::Result<String> {
    use sha2::Digest as _;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hex(&sha.finalize())),
            Ok(n) => sha.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
