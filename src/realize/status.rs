//! Rollback, history and status of a home: which generation is current, what it was realized
//! from, and whether its managed files drifted from what was placed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::carry::{carry_user_files, user_added};
use super::link::{self, Placed};
use super::{modes_of, Generation, Home, RealizeError, UsedMode};
use crate::store::Store;

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub target: PathBuf,
    pub from: u32,
    pub to: u32,
    pub version_id: String,
}

/// Switch the home back to the generation before the current one.
pub fn rollback(target: &Path) -> Result<RollbackReport, RealizeError> {
    let home = Home::new(target)?;
    home.check_safe()?;
    let _lock = home.lock()?;
    let current = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    let previous =
        home.list()
            .into_iter()
            .rfind(|n| *n < current)
            .ok_or(RealizeError::NoPrevious {
                home: home.root.clone(),
                current,
            })?;
    let generation = home.read_generation(previous)?;
    let generation_now = home.read_generation(current)?;
    carry_user_files(
        &home,
        current,
        &generation_now,
        &home.read_files(current),
        &home.generation_dir(previous),
    )?;
    home.ensure_top_links(
        generation.models_dir == home.root.join("models"),
        generation.mounts.iter().any(|m| m.kind == "venv"),
    )?;
    home.switch(previous)?;
    Ok(RollbackReport {
        target: home.root,
        from: current,
        to: previous,
        version_id: generation.version_id,
    })
}

/// One generation of a home, for `comfix history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub generation: u32,
    pub version_id: String,
    pub created_at: i64,
    pub current: bool,
    pub link_modes: BTreeMap<String, UsedMode>,
    /// The home manifest (its `lock.json` is the lock this generation was realized from).
    pub manifest: String,
}

/// The home manifest store path of the current generation of the home at `target` (its
/// `lock.json` is the lock that generation was realized from).
pub fn current_manifest(target: &Path) -> Result<String, RealizeError> {
    let home = Home::new(target)?;
    let n = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    Ok(home.read_generation(n)?.manifest)
}

/// Every generation of the home at `target`, oldest first.
pub fn history(target: &Path) -> Result<Vec<HistoryEntry>, RealizeError> {
    let home = Home::new(target)?;
    let current = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    let mut out = Vec::new();
    for n in home.list() {
        let Ok(generation) = home.read_generation(n) else {
            continue;
        };
        out.push(HistoryEntry {
            generation: n,
            version_id: generation.version_id.clone(),
            created_at: generation.created_at,
            current: n == current,
            link_modes: modes_of(&generation.mounts),
            manifest: generation.manifest,
        });
    }
    Ok(out)
}

/// What `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub target: PathBuf,
    pub generation: u32,
    pub generations: Vec<u32>,
    pub version_id: String,
    pub created_at: i64,
    pub link_modes: BTreeMap<String, UsedMode>,
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub missing: Vec<String>,
    /// Optional models of the version that could not be fetched when it was realized.
    pub not_fetched: Vec<String>,
    /// The home manifest store path of the current generation.
    pub manifest: String,
    /// Whether the current generation was realized from another lock than the version's lock
    /// file now holds (after a rollback, or a resolve since); `None` when that lock is not found.
    pub behind_lock: Option<bool>,
    /// The machine's torch backend the generation uses, when one was chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<super::TorchUsed>,
}

impl StatusReport {
    pub fn clean(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.missing.is_empty()
    }
}

/// The current generation of the home at `target` and its drift from what was realized. The
/// cheap check compares each managed file's size, mtime, inode and change time with what was
/// placed and reads only files that differ; `check_contents` hashes every one.
pub fn status(
    store: &Store,
    target: &Path,
    check_contents: bool,
) -> Result<StatusReport, RealizeError> {
    let home = Home::new(target)?;
    let n = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    let generation = home.read_generation(n)?;
    let placed = home.read_files(n);
    let drift = drift(store, &home, n, &generation, &placed, check_contents)?;
    if !drift.is_empty() {
        super::checked::forget(&home); // the next realize looks at every file and heals
    }
    let mut added: Vec<String> = user_added(&home, n, &generation, &placed)?
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    added.sort();
    Ok(StatusReport {
        target: home.root.clone(),
        generation: n,
        generations: home.list(),
        version_id: generation.version_id.clone(),
        created_at: generation.created_at,
        link_modes: modes_of(&generation.mounts),
        changed: drift.changed,
        added,
        missing: drift.missing,
        not_fetched: generation.not_fetched.clone(),
        manifest: generation.manifest.clone(),
        behind_lock: None,
        torch: generation.torch.clone(),
    })
}

/// Managed files of a generation that changed or went missing.
pub(super) struct Drift {
    pub(super) changed: Vec<String>,
    pub(super) missing: Vec<String>,
}

impl Drift {
    pub(super) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty()
    }
}

// Long on purpose: one walk comparing every placed file with its stamp, then the directories.
pub(super) fn drift(
    store: &Store,
    home: &Home,
    n: u32,
    generation: &Generation,
    placed: &[Placed],
    check_contents: bool,
) -> Result<Drift, RealizeError> {
    use rayon::prelude::*;
    let dir = home.generation_dir(n);
    // Files grouped by directory, each directory opened once: `fstatat` by name costs no path
    // walk (the cheap check of a 20,000-file core is mostly system calls).
    let mut by_dir: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, file) in placed.iter().enumerate() {
        let parent = file.path.rsplit_once('/').map_or("", |(p, _)| p);
        by_dir.entry(parent).or_default().push(i);
    }
    let groups: Vec<(&str, Vec<usize>)> = by_dir.into_iter().collect();
    let stats: Vec<(usize, Option<link::Stamp>)> = groups
        .par_iter()
        .flat_map_iter(|(parent, members)| {
            let fd = super::checked::open_dir(&dir.join(parent)).ok();
            members
                .iter()
                .map(|&i| {
                    let name = placed[i]
                        .path
                        .rsplit_once('/')
                        .map_or(&placed[i].path[..], |(_, n)| n);
                    let stamp = fd.as_ref().and_then(|fd| link::Stamp::at(fd, name));
                    (i, stamp)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    #[derive(PartialEq)]
    enum State {
        Same,
        Changed,
        Missing,
    }
    let states: Vec<State> = stats
        .par_iter()
        .map(|(i, stamp)| {
            let file = &placed[*i];
            let Some(stamp) = stamp else {
                return State::Missing;
            };
            if !check_contents
                && file.link.is_none()
                && stamp.is_file
                && file.looks_unchanged(stamp)
            {
                return State::Same;
            }
            let at = dir.join(&file.path);
            if let Some(target) = &file.link {
                let now = fs::read_link(&at).ok();
                return if now.as_deref() == Some(Path::new(target)) {
                    State::Same
                } else {
                    State::Changed
                };
            }
            if !stamp.is_file {
                return State::Changed;
            }
            if !check_contents && file.looks_unchanged(stamp) {
                return State::Same;
            }
            let same = match &file.digest {
                Some(digest) => crate::store::tree::hash_file(&at, stamp.size)
                    .is_ok_and(|d| blake3::Hash::from(d).to_hex().as_str() == digest),
                None => same_as_store(store, generation, &file.path, &at),
            };
            if same {
                State::Same
            } else {
                State::Changed
            }
        })
        .collect();
    let states: Vec<(usize, State)> = stats.iter().map(|(i, _)| *i).zip(states).collect();
    let mut changed = Vec::new();
    let mut missing = Vec::new();
    for (i, state) in states {
        let file = &placed[i];
        match state {
            State::Same => {}
            State::Changed => changed.push(file.path.clone()),
            State::Missing => missing.push(file.path.clone()),
        }
    }
    let mounts = mounts_drift(home, n, generation, check_contents);
    changed.extend(mounts.changed);
    missing.extend(mounts.missing);
    changed.sort();
    missing.sort();
    Ok(Drift { changed, missing })
}

/// The mounts of generation `n` that drifted: a model gone from the home, or one linked where it
/// lies whose link or file changed.
pub(super) fn mounts_drift(
    home: &Home,
    n: u32,
    generation: &Generation,
    check_contents: bool,
) -> Drift {
    let dir = home.generation_dir(n);
    let mut changed = Vec::new();
    let mut missing = Vec::new();
    for mount in &generation.mounts {
        let at = match mount.at.starts_with('/') {
            true => PathBuf::from(&mount.at),
            false => dir.join(&mount.at),
        };
        if mount.kind == "model" && !mount.at.starts_with('/') && fs::symlink_metadata(&at).is_err()
        {
            missing.push(mount.at.clone());
            continue;
        }
        // A model linked where it lies: the link still leads to the file, the file still has
        // the stat tuple it was hashed with (and, checking contents, the digest).
        if let Some(file) = &mount.in_place {
            let linked = fs::read_link(&at).is_ok_and(|to| to == file.path);
            let same = linked
                && file.unchanged()
                && (!check_contents
                    || crate::store::tree::hash_file(&file.path, file.stamp.size)
                        .is_ok_and(|d| blake3::Hash::from(d).to_hex().as_str() == file.blake3));
            if !same {
                changed.push(mount.at.clone());
            }
        }
    }
    Drift { changed, missing }
}

/// Compare a realized file with its source in the store, byte for byte.
pub(super) fn same_as_store(store: &Store, generation: &Generation, rel: &str, at: &Path) -> bool {
    let Some(mount) = generation
        .mounts
        .iter()
        .filter(|m| rel == m.at || rel.starts_with(&format!("{}/", m.at)))
        .max_by_key(|m| m.at.len())
    else {
        return false;
    };
    let inner = rel[mount.at.len()..].trim_start_matches('/');
    let source = if inner.is_empty() {
        store.path_of(&mount.store_path)
    } else {
        store.path_of(&mount.store_path).join(inner)
    };
    let is_link = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if is_link(&source) || is_link(at) {
        return fs::read_link(&source).ok().is_some()
            && fs::read_link(&source).ok() == fs::read_link(at).ok();
    }
    match (fs::read(&source), fs::read(at)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
