//! `store verify`: check that every valid path exists and, optionally, that its bytes still hash
//! to what was registered; check objects against their names.

use std::path::Path;

use rayon::prelude::*;

use super::{tree, Result, Store};

/// A path whose contents no longer match its registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CorruptPath {
    pub path: String,
    pub expected: String,
    /// The tree hash now on disk, or why it could not be computed.
    pub actual: String,
}

/// What `store verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub checked_paths: usize,
    pub checked_contents: bool,
    /// Valid paths missing on disk (absolute paths).
    pub missing: Vec<String>,
    pub corrupted: Vec<CorruptPath>,
    /// Objects whose bytes do not hash to their name (absolute paths).
    pub corrupted_objects: Vec<String>,
    /// Entries under `paths/` that are not registered (garbage of interrupted adds).
    pub unregistered: Vec<String>,
    /// Files and directories of valid paths that are writable (a `chmod` through a home's link):
    /// files must be 0444 or 0555, directories 0555.
    pub bad_modes: Vec<String>,
    /// Files of intact paths whose object (`objects/<xx>/<digest>`) is missing or is another
    /// inode (checked with contents).
    pub missing_objects: Vec<String>,
}

impl VerifyReport {
    /// Whether the store is intact (unregistered garbage does not count).
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.corrupted.is_empty()
            && self.corrupted_objects.is_empty()
            && self.bad_modes.is_empty()
            && self.missing_objects.is_empty()
    }
}

/// What checking one path found.
#[derive(Default)]
struct PathCheck {
    missing: bool,
    /// The tree hash on disk when it differs from the registered one.
    corrupted: Option<String>,
    bad_modes: Vec<String>,
    missing_objects: Vec<String>,
}

impl Store {
    /// Check every valid path; with `check_contents`, rehash every file and every object.
    pub fn verify(&self, check_contents: bool) -> Result<VerifyReport> {
        let records = self.list()?;
        let mut report = VerifyReport {
            checked_paths: records.len(),
            checked_contents: check_contents,
            ..Default::default()
        };
        let known: std::collections::HashSet<&str> =
            records.iter().map(|r| r.name.as_str()).collect();
        for entry in fs_err::read_dir(self.root.join(super::layout::PATHS))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !known.contains(name.as_str()) && !name.starts_with(super::add::TRASH) {
                report
                    .unregistered
                    .push(self.path_of(&name).display().to_string());
            }
        }
        report.unregistered.sort();

        let results: Vec<PathCheck> = records
            .par_iter()
            .map(|record| self.check_path(record, check_contents))
            .collect();
        for (record, check) in records.iter().zip(results) {
            let path = self.path_of(&record.name).display().to_string();
            if check.missing {
                report.missing.push(path);
                continue;
            }
            if let Some(actual) = check.corrupted {
                report.corrupted.push(super::CorruptPath {
                    path,
                    expected: record.tree_hash.clone(),
                    actual,
                });
            }
            report.bad_modes.extend(check.bad_modes);
            report.missing_objects.extend(check.missing_objects);
        }
        if check_contents {
            report.corrupted_objects = self.verify_objects()?;
        }
        Ok(report)
    }

    /// Check one valid path: present, read-only, and (with contents) hashing to its registration
    /// with every file linked to its object.
    fn check_path(&self, record: &super::PathRecord, check_contents: bool) -> PathCheck {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = self.path_of(&record.name);
        let mut check = PathCheck::default();
        if std::fs::symlink_metadata(&path).is_err() {
            check.missing = true;
            return check;
        }
        let entries = match tree::walk(&path) {
            Ok(entries) => entries,
            Err(err) => {
                check.corrupted = Some(format!("unreadable: {err}"));
                return check;
            }
        };
        let mut digests = Vec::new();
        for entry in &entries {
            let at = tree::join_rel(&path, &entry.rel);
            let Ok(meta) = std::fs::symlink_metadata(&at) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            match entry.kind {
                tree::EntryKind::Directory if mode != 0o555 => {
                    check.bad_modes.push(at.display().to_string())
                }
                tree::EntryKind::File { executable, size } => {
                    let wanted = if executable { 0o555 } else { 0o444 };
                    if mode != wanted {
                        check.bad_modes.push(at.display().to_string());
                    }
                    // Without hashing: a file no object links (its link count is 1) lost its
                    // object. (Which object, and a file linked to the wrong one, need its bytes.)
                    if !check_contents && meta.nlink() < 2 {
                        check.missing_objects.push(at.display().to_string());
                    }
                    if check_contents {
                        match tree::hash_file(&at, size) {
                            Ok(digest) => {
                                let object =
                                    std::fs::metadata(self.object_path(&digest, executable));
                                // In a shared store a file may be linked to its owner's own
                                // object of those bytes (see `Store::mine`).
                                let own = std::path::PathBuf::from(format!(
                                    "{}.u{}",
                                    self.object_path(&digest, executable).display(),
                                    meta.uid()
                                ));
                                let linked = object.is_ok_and(|o| o.ino() == meta.ino())
                                    || std::fs::metadata(own).is_ok_and(|o| o.ino() == meta.ino());
                                if !linked {
                                    check.missing_objects.push(at.display().to_string());
                                }
                                digests.push((size, digest));
                            }
                            Err(err) => {
                                check.corrupted = Some(format!("unreadable: {err}"));
                                return check;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if check_contents {
            let actual = blake3::Hash::from(tree::build_node(&entries, &digests).tree_hash())
                .to_hex()
                .to_string();
            if actual != record.tree_hash {
                check.corrupted = Some(actual);
                // A damaged file's object is the damage, not a missing link.
                check.missing_objects.clear();
            }
        }
        check
    }

    /// Repair what needs no source: restore read-only modes, and link files of intact paths back
    /// to their missing objects. Returns what was fixed.
    pub fn repair_in_place(&self, report: &VerifyReport) -> Result<Vec<String>> {
        use std::os::unix::fs::PermissionsExt;
        self.writable()?;
        let _gc = super::flock::shared(&self.root.join(super::layout::GC_LOCK))?;
        let mut fixed = Vec::new();
        for at in &report.bad_modes {
            let at = Path::new(at);
            let meta = std::fs::symlink_metadata(at)?;
            let mode = if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
                0o555
            } else {
                0o444
            };
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode))?;
            fixed.push(format!("mode of {}", at.display()));
        }
        for at in &report.missing_objects {
            let at = Path::new(at);
            let meta = std::fs::metadata(at)?;
            let executable = meta.permissions().mode() & 0o111 != 0;
            let digest = tree::hash_file(at, meta.len())?;
            let object = self.object_path(&digest, executable);
            if std::fs::symlink_metadata(&object).is_err() {
                std::fs::hard_link(at, &object)?;
                fixed.push(format!("object of {}", at.display()));
            }
        }
        Ok(fixed)
    }

    /// Before a repair: move the path `name` out of `paths/` and drop every object name whose
    /// bytes no longer match it (a corrupted object is shared by every path that links it), so the
    /// add protocol can put verified content back. The registration stays.
    pub fn discard_damaged(&self, name: &str) -> Result<()> {
        let _gc = super::flock::shared(&self.root.join(super::layout::GC_LOCK))?;
        let path = self.path_of(name);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(());
        }
        use std::os::unix::fs::MetadataExt;
        let mut damaged_inodes = std::collections::HashSet::new();
        for entry in walkdir::WalkDir::new(&path)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if entry.file_type().is_file() {
                damaged_inodes.insert(entry.metadata().map_err(std::io::Error::from)?.ino());
            }
        }
        for object in self.all_objects()? {
            if let Ok(meta) = std::fs::metadata(&object) {
                if damaged_inodes.contains(&meta.ino()) && !object_matches(&object) {
                    std::fs::remove_file(&object)?;
                }
            }
        }
        // A cache that links a damaged file (a venv's files are uv's cache's, the empty venv is
        // linked into every build) would put it back: such a cache goes, to be filled again.
        use super::layout::Cache;
        for cache in [Cache::VenvBase, Cache::Uv] {
            let dir = self.cache_dir(cache);
            let shares = walkdir::WalkDir::new(&dir)
                .follow_links(false)
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_file())
                .any(|e| {
                    e.metadata()
                        .is_ok_and(|m| damaged_inodes.contains(&m.ino()))
                });
            if shares {
                tracing::info!("removing `{}`, which links a damaged file", dir.display());
                super::add::remove_tree(&dir)?;
            }
        }
        let trash = tempfile::Builder::new()
            .prefix("trash-")
            .tempdir_in(self.root.join(super::layout::TMP))?;
        use std::os::unix::fs::PermissionsExt;
        // A directory moved to another parent has its `..` rewritten, which needs write
        // permission on the directory itself: a store path's is read-only (root never noticed).
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.is_dir() {
                let mode = meta.permissions().mode();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o200))?;
            }
        }
        std::fs::rename(&path, trash.path().join("old"))?;
        super::add::remove_tree(&trash.path().join("old"))?;
        Ok(())
    }

    fn all_objects(&self) -> Result<Vec<std::path::PathBuf>> {
        let mut objects = Vec::new();
        for shard in fs_err::read_dir(self.root.join(super::layout::OBJECTS))? {
            for object in fs_err::read_dir(shard?.path())? {
                objects.push(object?.path());
            }
        }
        Ok(objects)
    }

    fn verify_objects(&self) -> Result<Vec<String>> {
        let objects = self.all_objects()?;
        let mut bad: Vec<String> = objects
            .par_iter()
            .filter(|path| !object_matches(path))
            .map(|path| path.display().to_string())
            .collect();
        bad.sort();
        Ok(bad)
    }
}

fn object_matches(path: &Path) -> bool {
    let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    // `<digest>[.x][.u<uid>]`: a member's own object in a shared store carries its uid.
    let file = match file.rsplit_once(".u") {
        Some((head, uid)) if !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => file,
    };
    let expected = file.strip_suffix(".x").unwrap_or(file);
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    match tree::hash_file(path, meta.len()) {
        Ok(digest) => blake3::Hash::from(digest).to_hex().as_str() == expected,
        Err(_) => false,
    }
}
