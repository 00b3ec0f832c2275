//! The canonical serialization of a file tree, and the hashes that name store paths.
//!
//! A tree is serialized as (all integers are unsigned 64-bit little-endian):
//!
//! ```text
//! node    := file | exec | symlink | dir
//! file    := "f" size blake3(content)          -- 32 raw bytes of digest
//! exec    := "x" size blake3(content)
//! symlink := "l" len(target) target
//! dir     := "d" count { len(name) name node }  -- entries sorted by name bytes
//! ```
//!
//! The tree's hash is `BLAKE3("comfix-tree-v1\n" || node)`. A store path's name is
//! `<digest>-<name>` with `digest` the first 32 hex digits of
//! `BLAKE3("comfix-path-v1\n" || len(name) name || tree hash || count { len(ref) ref })`, the
//! references being the sorted, distinct names of the store paths the path refers to. File contents enter the
//! serialization by their BLAKE3 digest, so the serialization is small and each file is read once.
//! `store-layout.md` is the normative description of this format.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

/// Files at least this large are hashed through mmap on all cores; smaller ones are read whole.
pub const LARGE_FILE: u64 = 4 * 1024 * 1024;

/// A BLAKE3 digest.
pub type Digest = [u8; 32];

/// One node of a file tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        size: u64,
        executable: bool,
        digest: Digest,
    },
    Symlink {
        target: OsString,
    },
    Directory {
        entries: BTreeMap<OsString, Node>,
    },
}

impl Node {
    /// Write the canonical serialization of this node into `hasher`.
    pub fn serialize_into(&self, hasher: &mut blake3::Hasher) {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Node::File {
                size,
                executable,
                digest,
            } => {
                hasher.update(if *executable { b"x" } else { b"f" });
                hasher.update(&size.to_le_bytes());
                hasher.update(digest);
            }
            Node::Symlink { target } => {
                let bytes = target.as_bytes();
                hasher.update(b"l");
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(bytes);
            }
            Node::Directory { entries } => {
                hasher.update(b"d");
                hasher.update(&(entries.len() as u64).to_le_bytes());
                for (name, node) in entries {
                    let bytes = name.as_bytes();
                    hasher.update(&(bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                    node.serialize_into(hasher);
                }
            }
        }
    }

    /// The tree hash: `BLAKE3("comfix-tree-v1\n" || serialization)`.
    pub fn tree_hash(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"comfix-tree-v1\n");
        self.serialize_into(&mut hasher);
        *hasher.finalize().as_bytes()
    }

    /// Total bytes of file contents in the tree.
    pub fn content_size(&self) -> u64 {
        match self {
            Node::File { size, .. } => *size,
            Node::Symlink { .. } => 0,
            Node::Directory { entries } => entries.values().map(Node::content_size).sum(),
        }
    }

    /// Number of regular files in the tree.
    pub fn file_count(&self) -> u64 {
        match self {
            Node::File { .. } => 1,
            Node::Symlink { .. } => 0,
            Node::Directory { entries } => entries.values().map(Node::file_count).sum(),
        }
    }
}

/// The digest part of a store path's name, from its name, tree hash and references (the
/// `<digest>-<name>` of each referenced path; order does not matter).
pub fn path_digest(name: &str, tree_hash: &Digest, references: &[String]) -> String {
    let mut refs: Vec<&str> = references.iter().map(String::as_str).collect();
    refs.sort_unstable();
    refs.dedup();
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"comfix-path-v1\n");
    hasher.update(&(name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(tree_hash);
    hasher.update(&(refs.len() as u64).to_le_bytes());
    for reference in refs {
        hasher.update(&(reference.len() as u64).to_le_bytes());
        hasher.update(reference.as_bytes());
    }
    hasher.finalize().to_hex()[..32].to_string()
}

/// The store path name a single file of `size` bytes with BLAKE3 `digest` gets when added as
/// `name` (sanitized, no references): what a model linked where it lies would be named.
pub fn file_path_name(name: &str, size: u64, digest: &Digest) -> String {
    let name = super::sanitize_name(name);
    format!(
        "{}-{name}",
        path_digest(&name, &file_tree_hash(size, digest), &[])
    )
}

/// The tree hash of a single-file store path (not executable) of `size` bytes with BLAKE3
/// `digest`: how a model in the store is found by its bytes.
pub fn file_tree_hash(size: u64, digest: &Digest) -> Digest {
    Node::File {
        size,
        executable: false,
        digest: *digest,
    }
    .tree_hash()
}

/// Hash a file's contents: whole-file read for small files, mmap on all cores for large ones.
pub fn hash_file(path: &Path, size: u64) -> std::io::Result<Digest> {
    if size >= LARGE_FILE {
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(path)?;
        Ok(*hasher.finalize().as_bytes())
    } else {
        let mut buf = Vec::with_capacity(size as usize);
        File::open(path)?.read_to_end(&mut buf)?;
        Ok(*blake3::hash(&buf).as_bytes())
    }
}

/// What a walk found at one relative path.
#[derive(Debug, Clone)]
pub enum EntryKind {
    Directory,
    File { size: u64, executable: bool },
    Symlink { target: PathBuf },
}

/// One entry of a walked tree; `rel` is empty for the root.
#[derive(Debug, Clone)]
pub struct Entry {
    pub rel: PathBuf,
    pub kind: EntryKind,
}

/// Walk `root` without following symlinks, in a stable order (parents before children).
/// Fails on anything that is not a regular file, a directory or a symlink.
pub fn walk(root: &Path) -> Result<Vec<Entry>, WalkError> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = Vec::new();
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(|err| WalkError::Io {
            path: err.path().unwrap_or(root).to_path_buf(),
            source: err.into(),
        })?;
        let rel = item
            .path()
            .strip_prefix(root)
            .expect("walkdir yields paths under its root")
            .to_path_buf();
        let file_type = item.file_type();
        let kind = if file_type.is_dir() {
            EntryKind::Directory
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(|source| WalkError::Io {
                path: item.path().to_path_buf(),
                source,
            })?;
            EntryKind::Symlink { target }
        } else if file_type.is_file() {
            let meta = item.metadata().map_err(|err| WalkError::Io {
                path: item.path().to_path_buf(),
                source: err.into(),
            })?;
            EntryKind::File {
                size: meta.len(),
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else {
            return Err(WalkError::Unsupported {
                path: item.path().to_path_buf(),
            });
        };
        entries.push(Entry { rel, kind });
    }
    Ok(entries)
}

/// Errors from walking a tree.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("Failed to read `{}`", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a regular file, directory or symlink", .path.display())]
    Unsupported { path: PathBuf },
}

/// Assemble the [`Node`] of a walked tree, given each file's size and digest as actually read
/// (in walk order, files only).
pub fn build_node(entries: &[Entry], files: &[(u64, Digest)]) -> Node {
    let mut files = files.iter();
    let mut root: Option<Node> = None;
    for entry in entries {
        let node = match &entry.kind {
            EntryKind::Directory => Node::Directory {
                entries: BTreeMap::new(),
            },
            EntryKind::File { executable, .. } => {
                let (size, digest) = files.next().expect("one digest per file");
                Node::File {
                    size: *size,
                    executable: *executable,
                    digest: *digest,
                }
            }
            EntryKind::Symlink { target } => Node::Symlink {
                target: target.clone().into_os_string(),
            },
        };
        if entry.rel.as_os_str().is_empty() {
            root = Some(node);
            continue;
        }
        let mut dir = root.as_mut().expect("walk yields the root first");
        let parents: Vec<_> = entry
            .rel
            .parent()
            .into_iter()
            .flat_map(Path::iter)
            .collect();
        for part in parents {
            dir = match dir {
                Node::Directory { entries } => entries
                    .get_mut(part)
                    .expect("walk yields parents before children"),
                _ => unreachable!("a parent in a walk is a directory"),
            };
        }
        match dir {
            Node::Directory { entries } => {
                let name = entry.rel.file_name().expect("non-root entry has a name");
                entries.insert(name.to_os_string(), node);
            }
            _ => unreachable!("a parent in a walk is a directory"),
        }
    }
    root.expect("a walk yields at least its root")
}

/// Hash the tree at `root` from its actual bytes (used by `store verify --check-contents`).
pub fn hash_tree(root: &Path) -> Result<Node, WalkError> {
    let entries = walk(root)?;
    let files: Vec<(PathBuf, u64)> = entries
        .iter()
        .filter_map(|e| match e.kind {
            EntryKind::File { size, .. } => Some((join_rel(root, &e.rel), size)),
            _ => None,
        })
        .collect();
    let digests = files
        .par_iter()
        .map(|(path, size)| {
            hash_file(path, *size)
                .map(|digest| (*size, digest))
                .map_err(|source| WalkError::Io {
                    path: path.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(build_node(&entries, &digests))
}

/// `base` joined with a walk's relative path (empty for the root itself).
pub fn join_rel(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, executable: bool, byte: u8) -> Node {
        Node::File {
            size,
            executable,
            digest: [byte; 32],
        }
    }

    #[test]
    fn every_attribute_changes_the_hash() {
        let base = file(1, false, 0);
        let variants = [
            file(2, false, 0),
            file(1, true, 0),
            file(1, false, 1),
            Node::Symlink { target: "a".into() },
        ];
        for v in &variants {
            assert_ne!(base.tree_hash(), v.tree_hash(), "{v:?}");
        }
    }

    #[test]
    fn names_are_framed() {
        // ("ab", "c") and ("a", "bc") must not serialize alike.
        let dir = |a: &str, b: &str| Node::Directory {
            entries: [(a.into(), file(0, false, 0)), (b.into(), file(0, false, 0))]
                .into_iter()
                .collect(),
        };
        assert_ne!(dir("ab", "c").tree_hash(), dir("a", "bc").tree_hash());
    }

    #[test]
    fn path_digest_depends_on_name() {
        let h = file(0, false, 0).tree_hash();
        assert_ne!(path_digest("a", &h, &[]), path_digest("b", &h, &[]));
        assert_eq!(path_digest("a", &h, &[]).len(), 32);
        let refs = ["x".to_string(), "y".to_string()];
        let reversed = ["y".to_string(), "x".to_string()];
        assert_ne!(path_digest("a", &h, &[]), path_digest("a", &h, &refs));
        assert_eq!(path_digest("a", &h, &refs), path_digest("a", &h, &reversed));
    }
}
