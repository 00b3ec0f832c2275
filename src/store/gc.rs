//! Garbage collection: a plan over the roots (`roots.rs`) and the reference graph, and a sweep that
//! survives failures on single items (in the manner of attic's GC).
//!
//! Protocol (see `store-layout.md`, "Garbage collection"): the collector takes `gc.lock`
//! exclusive, so no writer is between its first write and its temporary root; it reads every root
//! (live home generations, pins, the temporary roots of live processes), loads the whole reference
//! graph once, marks, and deletes the dead paths' registrations (referrers first) before their
//! files, so a crash leaves unregistered garbage, never a registered path without files. It then
//! releases the lock and removes objects no path links any more, staging leftovers, partial
//! downloads and git mirrors that no live lock needs (the caller names those: [`Keep`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::account::DiskIndex;
use super::roots::{home_generation, Graph, Root};
use super::{db, flock, Result, Store, StoreError};

/// What the layers above the store keep beside `paths/` for the live roots. The store knows
/// no lock format: the caller reads its roots (home manifests, pins) and names what they need.
pub trait Keep {
    /// The partial downloads (`tmp/downloads/<key>.*`) and git mirrors (`git/<name>`) that the
    /// live roots (their store path names) need.
    fn caches(&self, store: &Store, live_roots: &[String]) -> Kept;
    /// The version a root's store path is of, to group `store du` by version.
    fn version_of(&self, store: &Store, root_path: &str) -> Option<String>;
}

/// What [`Keep::caches`] names.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    pub download_keys: HashSet<String>,
    /// Directory names under `git/`.
    pub mirrors: HashSet<String>,
}

/// Keeps nothing beside what processes protect: for a store used on its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepNothing;

impl Keep for KeepNothing {
    fn caches(&self, _: &Store, _: &[String]) -> Kept {
        Kept::default()
    }
    fn version_of(&self, _: &Store, _: &str) -> Option<String> {
        None
    }
}

#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Stop deleting paths once this many bytes are freed.
    pub max_freed: Option<u64>,
    /// First remove home generations created at or before this time (seconds since the
    /// epoch), never a home's current one.
    pub older_than: Option<i64>,
    /// How long what a gone home (moved, copied away, deleted) kept stays after a collection
    /// first found it gone, in seconds.
    pub home_grace: i64,
    /// Delete what the last `store rebuild-db` could not recover (else the collection refuses
    /// while any of it is on disk).
    pub delete_unrecovered: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub roots: usize,
    pub live_paths: usize,
    /// Dead paths deleted (or, with --dry-run, that would be).
    pub deleted_paths: Vec<String>,
    /// Home generations removed by `older_than`.
    pub removed_generations: Vec<String>,
    /// Bytes that leave the disk: the blocks of every file, directory and symlink removed whose
    /// last link goes (caches, mirrors and leftovers included; the database excluded).
    pub freed_bytes: u64,
    /// The file contents among them.
    pub freed_content_bytes: u64,
    pub removed_objects: usize,
    pub removed_other: Vec<String>,
    /// Homes that are gone whose paths are kept for the grace period: home → when they go.
    pub kept_for_gone_homes: BTreeMap<String, i64>,
    /// Items that could not be removed; the rest went on.
    pub errors: Vec<String>,
}

impl Store {
    /// Collect garbage (see the module docs). The dry run decides exactly as the real run does
    /// and reports the same bytes; the real run then does what was decided. Its phases, each a
    /// `tracing` span (`gc.roots`, `gc.plan`, `gc.account`, then the sweep's `gc.generations`,
    /// `gc.unregister`, `gc.files`, `gc.objects`, `gc.locks`), run in that order under one lock.
    pub fn gc(&self, options: &GcOptions, keep: &dyn Keep) -> Result<GcReport> {
        self.writable()?;
        let gc_lock = flock::exclusive(&self.root.join(super::layout::GC_LOCK))?;
        let unrecovered = self.unrecovered()?;
        if !unrecovered.is_empty() && !options.delete_unrecovered && !options.dry_run {
            return Err(StoreError::Unrecovered { names: unrecovered });
        }
        let now = super::db::now();
        let roots = tracing::debug_span!("gc.roots").in_scope(|| self.gc_roots(options, now))?;
        let mut index = DiskIndex::default();
        let plan = tracing::debug_span!("gc.plan").in_scope(|| {
            let graph = self.graph()?;
            self.plan(
                &PlanInput {
                    roots: &roots,
                    without: &HashSet::new(),
                    older_than: options.older_than,
                    max_freed: options.max_freed,
                    grace_cutoff: now - options.home_grace,
                    probe: Probe::Take,
                    keep,
                },
                &graph,
                &mut index,
            )
        })?;
        let mut report = tracing::debug_span!("gc.account")
            .in_scope(|| self.gc_report(options, &plan, &mut index));
        if options.dry_run {
            return Ok(report);
        }
        self.sweep(plan, &mut report)?;
        if !unrecovered.is_empty() {
            // Deleted with the user's word (`--delete-unrecovered`): nothing left to refuse for.
            let _ = fs::remove_file(self.root.join(super::layout::UNRECOVERED));
        }
        drop(gc_lock);
        Ok(report)
    }

    /// The roots now; a home found gone starts its grace period (the dry run records nothing and
    /// counts from now).
    fn gc_roots(&self, options: &GcOptions, now: i64) -> Result<Vec<Root>> {
        let roots = self.roots_at(now)?;
        if !options.dry_run {
            let gone: Vec<&str> = roots
                .iter()
                .filter(|r| r.home_gone)
                .map(|r| r.name.as_str())
                .collect();
            super::db::mark_gone(&self.db(), &gone, now).map_err(|e| self.db_err(e))?;
        }
        Ok(roots)
    }

    /// What `plan` frees, counted per inode, as the report says it (before anything is done).
    fn gc_report(&self, options: &GcOptions, plan: &Plan, index: &mut DiskIndex) -> GcReport {
        let (freed, objects) = index.freed(
            &plan.removal_paths(),
            &self.root.join(super::layout::OBJECTS),
        );
        GcReport {
            dry_run: options.dry_run,
            roots: plan.roots,
            live_paths: plan.live_paths,
            deleted_paths: plan.deleted.clone(),
            removed_generations: plan
                .old_generations
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            freed_bytes: freed.disk,
            freed_content_bytes: freed.content,
            removed_objects: objects,
            removed_other: plan
                .removals
                .iter()
                .filter_map(|(_, l)| l.clone())
                .collect(),
            kept_for_gone_homes: plan
                .kept_gone
                .iter()
                .map(|(home, since)| (home.clone(), since + options.home_grace))
                .collect(),
            errors: Vec::new(),
        }
    }

    /// Do what `plan` decided: old generations first (a crash leaves their roots, which are then
    /// stale), then the roots, then registrations (one transaction per batch), then files, then
    /// the objects nothing links, then stale locks. An item that fails is reported; the rest goes
    /// on.
    fn sweep(&self, plan: Plan, report: &mut GcReport) -> Result<()> {
        tracing::debug_span!("gc.generations").in_scope(|| {
            for dir in &plan.old_generations {
                if let Err(err) = super::add::remove_tree(dir) {
                    report.errors.push(format!("{}: {err}", dir.display()));
                }
            }
        });
        tracing::debug_span!("gc.unregister").in_scope(|| -> Result<()> {
            for name in &plan.drop_roots {
                self.remove_root(name)?;
            }
            for batch in plan.deleted.chunks(1000) {
                let names: Vec<&str> = batch.iter().map(String::as_str).collect();
                let mut conn = self.db();
                db::unregister_all(&mut conn, &names).map_err(|e| self.db_err(e))?;
            }
            Ok(())
        })?;
        crate::fault::pause_point("gc-unregistered");
        tracing::debug_span!("gc.files").in_scope(|| {
            for (path, label) in &plan.removals {
                if let Err(err) = super::add::remove_tree(path) {
                    let shown = label.clone().unwrap_or_else(|| path.display().to_string());
                    report.errors.push(format!("{shown}: {err}"));
                }
            }
        });
        // Still under the exclusive lock: a writer links existing objects into what it stages.
        tracing::debug_span!("gc.objects").in_scope(|| self.sweep_objects(report))?;
        tracing::debug_span!("gc.locks").in_scope(|| {
            for guard in plan.stale_locks {
                let shown = guard.path().display().to_string();
                if let Err(err) = guard.remove() {
                    report.errors.push(format!("{shown}: {err}"));
                }
            }
        });
        drop(plan.guards);
        Ok(())
    }

    /// Remove the objects nothing links any more (a link count of one: the object itself).
    fn sweep_objects(&self, report: &mut GcReport) -> Result<()> {
        report.removed_objects = 0;
        for shard in fs::read_dir(self.root.join(super::layout::OBJECTS))?.flatten() {
            for object in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                use std::os::unix::fs::MetadataExt;
                let Ok(meta) = fs::symlink_metadata(object.path()) else {
                    continue;
                };
                if !(meta.is_file() && meta.nlink() == 1) {
                    continue;
                }
                match fs::remove_file(object.path()) {
                    Ok(()) => report.removed_objects += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => report
                        .errors
                        .push(format!("{}: {err}", object.path().display())),
                }
            }
        }
        Ok(())
    }

    /// The entries the last `store rebuild-db` could not recover that are still on disk,
    /// unregistered.
    fn unrecovered(&self) -> Result<Vec<String>> {
        let Ok(text) = fs::read(self.root.join(super::layout::UNRECOVERED)) else {
            return Ok(Vec::new());
        };
        let names: Vec<String> = serde_json::from_slice(&text).unwrap_or_default();
        let mut left = Vec::new();
        for name in names {
            if fs::symlink_metadata(self.path_of(&name)).is_ok() && self.query(&name)?.is_none() {
                left.push(name);
            }
        }
        Ok(left)
    }

    /// Decide what a collection removes, deleting nothing (see [`Plan`]).
    // Long on purpose: the plan is one pass over the roots, the graph and the leftovers; each kind of removal is commented.
    pub(super) fn plan(
        &self,
        input: &PlanInput<'_>,
        graph: &Graph,
        index: &mut DiskIndex,
    ) -> Result<Plan> {
        let mut plan = Plan::default();
        let take = input.probe == Probe::Take;

        // Generations older than the cutoff, never a home's current one.
        let mut old_roots = HashSet::new();
        if let Some(cutoff) = input.older_than {
            for (name, dir) in old_generations(input.roots, cutoff) {
                old_roots.insert(name);
                plan.old_generations.push(dir);
            }
        }
        // Roots; stale indirect roots go (their homes or generations were deleted).
        let mut live_roots = Vec::new();
        let mut protected_mirrors = HashSet::new();
        for root in input.roots {
            // A home that is gone as a whole may have moved: its roots hold for the grace period.
            let in_grace = root.home_gone
                && root
                    .gone_since
                    .is_some_and(|since| since > input.grace_cutoff)
                && !input.without.contains(&root.name);
            if in_grace {
                if let Some(home) = super::roots::home_of_root(&root.name) {
                    let since = root.gone_since.expect("in grace");
                    let entry = plan
                        .kept_gone
                        .entry(home.display().to_string())
                        .or_insert(since);
                    *entry = (*entry).min(since);
                }
            }
            let gone = (!root.live && !in_grace)
                || old_roots.contains(&root.name)
                || input.without.contains(&root.name);
            if let Some(mirror) = root.path.strip_prefix("git/") {
                protected_mirrors.insert(mirror.to_string());
            } else if !gone {
                live_roots.push(root.path.clone());
            } else if root.kind != "temp" && !plan.drop_roots.contains(&root.name) {
                plan.drop_roots.push(root.name.clone());
                plan.removals.push((self.root_meta_path(&root.name), None));
            }
        }
        plan.roots = live_roots.len();

        let paths = &graph.paths;
        let by_id: HashMap<i64, &db::PathRecord> = paths.iter().map(|p| (p.id, p)).collect();
        let id_of = graph.id_of();
        let live = graph.reachable(
            live_roots
                .iter()
                .filter_map(|n| id_of.get(n.as_str()).copied()),
        );
        plan.live_paths = live.len();

        // Dead paths, referrers before what they reference; a prefix with --max-freed.
        let dead: HashSet<i64> = paths
            .iter()
            .map(|p| p.id)
            .filter(|id| !live.contains(id))
            .collect();
        let mut dead_referrers: HashMap<i64, usize> = dead.iter().map(|id| (*id, 0)).collect();
        for (from, to) in &graph.edges {
            if dead.contains(from) && dead.contains(to) {
                *dead_referrers.get_mut(to).expect("dead") += 1;
            }
        }
        let mut ready: BTreeSet<(String, i64)> = dead_referrers
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(id, _)| (by_id[id].name.clone(), *id))
            .collect();
        let objects = self.root.join(super::layout::OBJECTS);
        while let Some(first) = ready.iter().next().cloned() {
            if let Some(max) = input.max_freed {
                let trees: Vec<PathBuf> = plan.deleted.iter().map(|n| self.path_of(n)).collect();
                if index.freed(&trees, &objects).0.disk >= max {
                    break;
                }
            }
            ready.remove(&first);
            plan.deleted.push(first.0.clone());
            for to in graph.refs.get(&first.1).into_iter().flatten() {
                if let Some(n) = dead_referrers.get_mut(to) {
                    *n -= 1;
                    if *n == 0 {
                        ready.insert((by_id[to].name.clone(), *to));
                    }
                }
            }
        }
        // A venv's files share inodes with the uv cache it was installed from (`cache/uv`), so
        // its objects would never be freed while the cache holds them: the cache goes too, with
        // the wheel links and the empty venv that builds hardlink.
        let python_dies = plan
            .deleted
            .iter()
            .any(|name| name.contains("-venv-") || name.ends_with(".whl"));
        if python_dies {
            use super::layout::Cache;
            for cache in [Cache::Uv, Cache::Wheels, Cache::VenvBase] {
                let dir = self.cache_dir(cache);
                if fs::symlink_metadata(&dir).is_ok() {
                    plan.removals.push((dir, Some(cache.dir().to_string())));
                }
            }
        }
        for name in &plan.deleted {
            plan.removals.push((self.path_of(name), None));
            plan.removals.push((self.meta_path(name), None));
        }

        // Half-built generations of killed realizes, in homes nobody is realizing into.
        self.plan_unfinished_generations(input, &mut plan);
        // Unregistered leftovers of interrupted adds, and staging directories (every writer is
        // waiting for the lock, so none is in use).
        let valid: HashSet<&str> = paths.iter().map(|p| p.name.as_str()).collect();
        for entry in fs::read_dir(self.root.join(super::layout::PATHS))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !valid.contains(name.as_str()) {
                plan.removals
                    .push((entry.path(), Some(format!("paths/{name}"))));
                if self.meta_path(&name).exists() {
                    plan.removals.push((self.meta_path(&name), None));
                }
            }
        }
        for entry in fs::read_dir(self.root.join(super::layout::TMP))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("add-") || name.starts_with("stage-") {
                plan.removals
                    .push((entry.path(), Some(format!("tmp/{name}"))));
            }
        }
        let mut needed = input.keep.caches(self, &live_roots);
        needed.mirrors.extend(protected_mirrors);
        self.plan_caches(&needed, take, &mut plan)?;
        Ok(plan)
    }

    /// Partial downloads and records no live lock needs and nobody is downloading; git mirrors
    /// no live lock needs or process protects and nobody is updating; lock files nobody holds.
    // Long on purpose: downloads and mirrors are planned the same way, each with its lock taken.
    fn plan_caches(&self, needed: &Kept, take: bool, plan: &mut Plan) -> Result<()> {
        // Whether the lock at `path` is free; with `take`, it is kept in `held`.
        let free = |path: &Path, held: &mut Vec<flock::LockGuard>| -> Result<bool> {
            if take {
                match flock::try_exclusive(path)? {
                    Some(guard) => {
                        held.push(guard);
                        Ok(true)
                    }
                    None => Ok(false),
                }
            } else {
                Ok(!flock::held_elsewhere(path)?)
            }
        };
        let keys = &needed.download_keys;
        let downloads = self.root.join(super::layout::DOWNLOADS);
        let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in fs::read_dir(&downloads).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((key, _)) = name.split_once('.') {
                files.entry(key.to_string()).or_default().push(name);
            }
        }
        for (key, names) in files {
            let lock_path = downloads.join(format!("{key}.lock"));
            if keys.contains(&key) {
                // Kept for resuming; only a lock nobody holds goes.
                if take && lock_path.exists() {
                    if let Some(guard) = flock::try_exclusive_existing(&lock_path)? {
                        plan.stale_locks.push(guard);
                    }
                }
                continue;
            }
            let mut held = Vec::new();
            if !free(&lock_path, &mut held)? {
                continue;
            }
            for name in names.iter().filter(|n| !n.ends_with(".lock")) {
                plan.removals
                    .push((downloads.join(name), Some(format!("tmp/downloads/{name}"))));
            }
            plan.stale_locks.extend(held);
        }

        let mirrors: HashSet<PathBuf> = needed
            .mirrors
            .iter()
            .map(|name| self.root.join(super::layout::GIT).join(name))
            .collect();
        for entry in fs::read_dir(self.root.join(super::layout::GIT))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.extension().is_some_and(|e| e == "git") && !mirrors.contains(&path) {
                let mut held = Vec::new();
                if free(&path.with_extension("lock"), &mut held)? {
                    plan.removals.push((path, Some(format!("git/{name}"))));
                    plan.stale_locks.extend(held);
                }
            } else if take
                && path.extension().is_some_and(|e| e == "lock")
                && !path.with_extension("git").exists()
            {
                if let Some(guard) = flock::try_exclusive_existing(&path)? {
                    plan.stale_locks.push(guard);
                }
            }
        }
        // Build locks of paths nobody is building.
        if take {
            for entry in fs::read_dir(self.root.join(super::layout::LOCKS))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Some(guard) = flock::try_exclusive_existing(&entry.path())? {
                    plan.stale_locks.push(guard);
                }
            }
        }
        Ok(())
    }

    /// `<home>/.comfix/generations/<N>.tmp` of every home the roots name, when the home's lock is
    /// free (no realize is building it); the collector keeps the home's lock until it is done.
    fn plan_unfinished_generations(&self, input: &PlanInput<'_>, plan: &mut Plan) {
        let homes: BTreeSet<PathBuf> = input
            .roots
            .iter()
            .filter_map(|r| home_generation(&r.name))
            .filter_map(|dir| dir.parent().map(Path::to_path_buf))
            .collect();
        for generations in homes {
            let Some(meta) = generations.parent() else {
                continue;
            };
            let unfinished: Vec<PathBuf> = fs::read_dir(&generations)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .map(|e| e.path())
                .collect();
            if unfinished.is_empty() {
                continue;
            }
            // Never create anything in a home (it may be being deleted): only an existing lock.
            let lock_path = meta.join("lock");
            match input.probe {
                Probe::Take => match flock::try_exclusive_existing(&lock_path) {
                    Ok(Some(guard)) => plan.guards.push(guard),
                    _ => continue,
                },
                Probe::Look => {
                    if !lock_path.exists() || flock::held_elsewhere(&lock_path).unwrap_or(true) {
                        continue;
                    }
                }
            }
            for dir in unfinished {
                let label = dir.display().to_string();
                plan.removals.push((dir, Some(label)));
            }
        }
    }
}

/// What a collection decides before it deletes anything. The dry run and the real run share it,
/// and `store du` asks it what-if questions, so all three report the same bytes.
#[derive(Default)]
pub(super) struct Plan {
    roots: usize,
    live_paths: usize,
    /// Recorded roots to drop: their generation is gone (or removed by `older_than`).
    drop_roots: Vec<String>,
    /// Generation directories `--delete-older-than` removes.
    old_generations: Vec<PathBuf>,
    /// Dead paths, referrers first.
    deleted: Vec<String>,
    /// Every file or tree removed besides objects, with the label reported for it (none for the
    /// dead paths and their sidecars, which are reported as paths).
    removals: Vec<(PathBuf, Option<String>)>,
    /// Homes that are gone, kept for the grace period: home → since when.
    kept_gone: BTreeMap<String, i64>,
    /// Locks held until the collector is done (homes whose half-built generations go).
    guards: Vec<flock::LockGuard>,
    /// Locks held on what is removed; their files are removed last.
    stale_locks: Vec<flock::LockGuard>,
}

impl Plan {
    pub(super) fn removal_paths(&self) -> Vec<PathBuf> {
        self.old_generations
            .iter()
            .cloned()
            .chain(self.removals.iter().map(|(p, _)| p.clone()))
            .collect()
    }
}

pub(super) struct PlanInput<'a> {
    pub(super) roots: &'a [Root],
    /// Root names to treat as gone (`store du`'s what-if).
    pub(super) without: &'a HashSet<String>,
    pub(super) older_than: Option<i64>,
    pub(super) max_freed: Option<u64>,
    /// Roots of homes gone since before this time are dropped; later ones are kept.
    pub(super) grace_cutoff: i64,
    pub(super) probe: Probe,
    pub(super) keep: &'a dyn Keep,
}

/// How the planner treats the locks of what it would remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// Take and keep them (the collector).
    Take,
    /// Only look: create no lock file and keep no lock (`store du`).
    Look,
}

/// `(root name, generation directory)` of every home generation older than `cutoff` (seconds
/// since the epoch), never a home's current one.
fn old_generations(roots: &[Root], cutoff: i64) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for root in roots {
        let Some(dir) = home_generation(&root.name) else {
            continue;
        };
        let Some(home) = dir.parent().and_then(Path::parent).and_then(Path::parent) else {
            continue;
        };
        let current = fs::read_link(home.join(".comfix/current"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_owned()));
        if dir.file_name().map(|n| n.to_owned()) == current || !dir.is_dir() {
            continue;
        }
        let created = fs::read_to_string(dir.join("generation.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["created_at"].as_i64())
            .unwrap_or(i64::MAX);
        if created <= cutoff {
            out.push((root.name.clone(), dir));
        }
    }
    out
}
