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
}

impl VerifyReport {
    /// Whether the store is intact (unregistered garbage does not count).
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.corrupted.is_empty() && self.corrupted_objects.is_empty()
    }
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
        for entry in fs_err::read_dir(self.root.join("paths"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !known.contains(name.as_str()) {
                report
                    .unregistered
                    .push(self.path_of(&name).display().to_string());
            }
        }
        report.unregistered.sort();

        let results: Vec<(usize, Option<String>)> = records
            .par_iter()
            .enumerate()
            .map(|(i, record)| {
                let path = self.path_of(&record.name);
                if std::fs::symlink_metadata(&path).is_err() {
                    return (i, Some("missing".to_string()));
                }
                if !check_contents {
                    return (i, None);
                }
                let actual = match tree::hash_tree(&path) {
                    Ok(node) => blake3::Hash::from(node.tree_hash()).to_hex().to_string(),
                    Err(err) => format!("unreadable: {err}"),
                };
                if actual == record.tree_hash {
                    (i, None)
                } else {
                    (i, Some(actual))
                }
            })
            .collect();
        for (i, problem) in results {
            let record = &records[i];
            let path = self.path_of(&record.name).display().to_string();
            match problem.as_deref() {
                None => {}
                Some("missing") => report.missing.push(path),
                Some(actual) => report.corrupted.push(super::CorruptPath {
                    path,
                    expected: record.tree_hash.clone(),
                    actual: actual.to_string(),
                }),
            }
        }
        if check_contents {
            report.corrupted_objects = self.verify_objects()?;
        }
        Ok(report)
    }

    /// Before a repair: move the path `name` out of `paths/` and drop every object name whose
    /// bytes no longer match it (a corrupted object is shared by every path that links it), so the
    /// add protocol can put verified content back. The registration stays.
    pub fn discard_damaged(&self, name: &str) -> Result<()> {
        let _gc = super::lock::shared(&self.root.join("gc.lock"))?;
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
        let trash = tempfile::Builder::new()
            .prefix("trash-")
            .tempdir_in(self.root.join("tmp"))?;
        std::fs::rename(&path, trash.path().join("old"))?;
        super::add::remove_tree(&trash.path().join("old"))?;
        Ok(())
    }

    fn all_objects(&self) -> Result<Vec<std::path::PathBuf>> {
        let mut objects = Vec::new();
        for shard in fs_err::read_dir(self.root.join("objects"))? {
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
    let expected = file.strip_suffix(".x").unwrap_or(file);
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    match tree::hash_file(path, meta.len()) {
        Ok(digest) => blake3::Hash::from(digest).to_hex().as_str() == expected,
        Err(_) => false,
    }
}
