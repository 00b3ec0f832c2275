//! One accounting of disk use, shared by `store du`, `gc --dry-run` and `gc`.
//!
//! Files of the store share inodes: every file of a path is a hard link to its object, venvs share
//! inodes with uv's cache, homes may hard-link objects. So "what deleting X frees" is answered per
//! inode: an inode's bytes leave the disk when every one of its links is removed. Removing a set
//! of trees also removes each object left with no other link (the collector's object sweep), so an
//! inode linked from a removed tree and from its object counts as freed exactly when the object
//! goes too. Bytes are counted two ways: `disk`, the blocks allocated (files, directories and
//! symlinks, each inode once: what `du -B1` counts), and `content`, the lengths of regular files.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Bytes on disk and bytes of file contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bytes {
    /// Allocated blocks: what leaves the disk.
    pub disk: u64,
    /// Lengths of regular files.
    pub content: u64,
}

impl Bytes {
    pub fn saturating_sub(self, other: Bytes) -> Bytes {
        Bytes {
            disk: self.disk.saturating_sub(other.disk),
            content: self.content.saturating_sub(other.content),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: (u64, u64),
    nlink: u64,
    len: u64,
    disk: u64,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

impl Entry {
    fn of(meta: &std::fs::Metadata) -> Entry {
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Entry {
            key: (meta.dev(), meta.ino()),
            nlink: meta.nlink(),
            len: if kind == Kind::File { meta.len() } else { 0 },
            disk: meta.blocks() * 512,
            kind,
        }
    }
}

/// The inodes of trees, each walked once and remembered for the life of the index (one command).
#[derive(Default)]
pub(crate) struct DiskIndex {
    trees: HashMap<PathBuf, Vec<Entry>>,
    objects: Option<Vec<Entry>>,
}

impl DiskIndex {
    /// Every entry of the tree at `path` (the path itself included; symlinks not followed).
    fn tree(&mut self, path: &Path) -> &[Entry] {
        self.trees.entry(path.to_path_buf()).or_insert_with(|| {
            walkdir::WalkDir::new(path)
                .follow_links(false)
                .into_iter()
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| Entry::of(&m))
                .collect()
        })
    }

    fn objects(&mut self, dir: &Path) -> &[Entry] {
        self.objects.get_or_insert_with(|| {
            let mut out = Vec::new();
            for shard in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                for object in std::fs::read_dir(shard.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(meta) = std::fs::symlink_metadata(object.path()) {
                        if meta.is_file() {
                            out.push(Entry::of(&meta));
                        }
                    }
                }
            }
            out
        })
    }

    /// What removing `trees`, then every object left with no other link, frees; and how many
    /// objects go.
    pub(crate) fn freed(&mut self, trees: &[PathBuf], objects_dir: &Path) -> (Bytes, usize) {
        let mut bytes = Bytes::default();
        // inode → (entry, links inside the removed set)
        let mut seen: HashMap<(u64, u64), (Entry, u64)> = HashMap::new();
        let unique: HashSet<&PathBuf> = trees.iter().collect();
        for tree in &unique {
            self.tree(tree); // walked once, then read in place
        }
        for tree in unique {
            for entry in &self.trees[tree] {
                if entry.kind == Kind::Dir {
                    bytes.disk += entry.disk;
                } else {
                    seen.entry(entry.key).or_insert((*entry, 0)).1 += 1;
                }
            }
        }
        let mut objects = 0;
        for object in self.objects(objects_dir) {
            match seen.get_mut(&object.key) {
                Some((entry, links)) if *links + 1 == entry.nlink => {
                    *links += 1;
                    objects += 1;
                }
                None if object.nlink == 1 => {
                    seen.insert(object.key, (*object, 1));
                    objects += 1;
                }
                _ => {}
            }
        }
        for (entry, links) in seen.values() {
            if *links >= entry.nlink {
                bytes.disk += entry.disk;
                bytes.content += entry.len;
            }
        }
        (bytes, objects)
    }

    /// The bytes of `trees`, each inode once.
    pub(crate) fn total(&mut self, trees: &[PathBuf]) -> Bytes {
        let mut bytes = Bytes::default();
        let mut seen = HashSet::new();
        for tree in trees {
            for entry in self.tree(tree) {
                if seen.insert(entry.key) {
                    bytes.disk += entry.disk;
                    bytes.content += entry.len;
                }
            }
        }
        bytes
    }
}
