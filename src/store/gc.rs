//! Garbage collection: roots, marking over the reference graph, and a sweep that survives
//! failures on single items (in the manner of attic's GC).
//!
//! Protocol (see `store-layout.md`, "Garbage collection"): the collector takes `gc.lock`
//! exclusive, so no writer is between its first write and its temporary root; it reads every root
//! (live home generations, pins, the temporary roots of live processes), loads the whole reference
//! graph once, marks, and deletes the dead paths' registrations (referrers first) before their
//! files, so a crash leaves unregistered garbage, never a registered path without files. It then
//! releases the lock and removes objects no path links any more, staging leftovers, partial
//! downloads and git mirrors that no live lock names.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{db, lock, Result, Store};

/// Why a path is alive.
#[derive(Debug, Clone, Serialize)]
pub struct Root {
    /// `home:<path>#<N>`, `pin:<name>`, or `temp:<pid>`.
    pub name: String,
    pub kind: String,
    pub path: String,
    /// For indirect roots: whether what they stand for still exists.
    pub live: bool,
}

#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Stop deleting paths once this many bytes are freed.
    pub max_freed: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub roots: usize,
    pub live_paths: usize,
    /// Dead paths deleted (or, with --dry-run, that would be).
    pub deleted_paths: Vec<String>,
    /// Bytes of file contents no live path shares any more.
    pub freed_bytes: u64,
    pub removed_objects: usize,
    pub removed_other: Vec<String>,
    /// Items that could not be removed; the rest went on.
    pub errors: Vec<String>,
}

/// The reference graph, loaded in one pass over the db.
struct Graph {
    paths: Vec<db::PathRecord>,
    edges: Vec<(i64, i64)>,
    /// referrer → references
    refs: HashMap<i64, Vec<i64>>,
}

impl Graph {
    fn id_of(&self) -> HashMap<&str, i64> {
        self.paths.iter().map(|p| (p.name.as_str(), p.id)).collect()
    }

    fn name_of(&self) -> HashMap<i64, &str> {
        self.paths.iter().map(|p| (p.id, p.name.as_str())).collect()
    }

    /// Everything reachable from `start`.
    fn reachable(&self, start: impl IntoIterator<Item = i64>) -> HashSet<i64> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<i64> = start.into_iter().collect();
        while let Some(id) = queue.pop_front() {
            if seen.insert(id) {
                queue.extend(self.refs.get(&id).into_iter().flatten().copied());
            }
        }
        seen
    }
}

/// A home root's name → the generation directory it stands for.
fn home_generation(name: &str) -> Option<PathBuf> {
    let rest = name.strip_prefix("home:")?;
    let (home, n) = rest.rsplit_once('#')?;
    Some(Path::new(home).join(".comfix/generations").join(n))
}

impl Store {
    fn graph(&self) -> Result<Graph> {
        let conn = self.db();
        let paths = db::list(&conn).map_err(|e| self.db_err(e))?;
        let edges = db::all_references(&conn).map_err(|e| self.db_err(e))?;
        let mut refs: HashMap<i64, Vec<i64>> = HashMap::new();
        for (from, to) in &edges {
            refs.entry(*from).or_default().push(*to);
        }
        Ok(Graph { paths, edges, refs })
    }

    /// Protect `names` for the life of this process: after this returns, a collector that starts
    /// later keeps them (call it *before* checking that they are valid). A name `git/<dir>`
    /// protects that git mirror.
    pub fn protect(&self, names: &[&str]) -> Result<()> {
        let _gc = lock::shared(&self.root.join("gc.lock"))?;
        for name in names {
            self.temp_roots.add(name)?;
        }
        Ok(())
    }

    /// Pin a valid path as root `pin:<name>`.
    pub fn pin(&self, name: &str, path: &str) -> Result<()> {
        self.add_root(&format!("pin:{name}"), path, "pin")
    }

    /// Every root: recorded ones (with liveness) and the temporary roots of live processes.
    pub fn all_roots(&self) -> Result<Vec<Root>> {
        let mut roots: Vec<Root> = self
            .roots()?
            .into_iter()
            .map(|r| Root {
                live: home_generation(&r.name).is_none_or(|dir| dir.is_dir()),
                name: r.name,
                kind: r.kind,
                path: r.path,
            })
            .collect();
        for (pid, names) in self.live_temp_roots()? {
            for path in names {
                if path.starts_with("git/") && !path.ends_with(".git") {
                    continue;
                }
                roots.push(Root {
                    name: format!("temp:{pid}"),
                    kind: "temp".into(),
                    path,
                    live: true,
                });
            }
        }
        Ok(roots)
    }

    /// `(pid, names)` of every temporary roots file whose process is alive (holds its lock).
    fn live_temp_roots(&self) -> Result<Vec<(String, Vec<String>)>> {
        let mut out = Vec::new();
        let own = std::process::id().to_string();
        for entry in fs::read_dir(self.root.join("temproots"))? {
            let entry = entry?;
            let pid = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let alive = pid == own || lock::try_exclusive(&path)?.is_none();
            if alive {
                let text = fs::read_to_string(&path).unwrap_or_default();
                out.push((pid, text.lines().map(str::to_string).collect()));
            }
        }
        Ok(out)
    }

    /// Collect garbage (see the module docs).
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let mut report = GcReport {
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        let gc_lock = lock::exclusive(&self.root.join("gc.lock"))?;

        // Roots; stale indirect roots go (their homes or generations were deleted).
        let roots = self.all_roots()?;
        let mut live_roots = Vec::new();
        let mut protected_mirrors = HashSet::new();
        for root in roots {
            if let Some(mirror) = root.path.strip_prefix("git/") {
                protected_mirrors.insert(self.root.join("git").join(mirror));
            } else if root.live {
                live_roots.push(root.path);
            } else if !options.dry_run {
                self.remove_root(&root.name)?;
            }
        }
        report.roots = live_roots.len();

        // The reference graph, loaded once.
        let graph = self.graph()?;
        let (paths, edges, refs) = (&graph.paths, &graph.edges, &graph.refs);
        let by_id: HashMap<i64, &db::PathRecord> = paths.iter().map(|p| (p.id, p)).collect();
        let id_of = graph.id_of();
        let live = graph.reachable(
            live_roots
                .iter()
                .filter_map(|n| id_of.get(n.as_str()).copied()),
        );
        report.live_paths = live.len();

        // Dead paths, referrers before what they reference.
        let dead: HashSet<i64> = paths
            .iter()
            .map(|p| p.id)
            .filter(|id| !live.contains(id))
            .collect();
        // A venv's files share inodes with the uv cache it was installed from (`cache/uv`), so
        // its objects would never be freed while the cache holds them: the cache goes first.
        // (No writer is running: they all hold `gc.lock` shared.)
        // The wheel links and the empty venv that builds hardlink (`cache/wheels`,
        // `cache/venv-base`) go with it.
        let python_dies = dead.iter().any(|id| {
            let name = &by_id[id].name;
            name.contains("-venv-") || name.ends_with(".whl")
        });
        if !options.dry_run && python_dies {
            for cache in ["cache/uv", "cache/wheels", "cache/venv-base"] {
                let dir = self.root.join(cache);
                if fs::symlink_metadata(&dir).is_ok() {
                    match super::add::remove_tree(&dir) {
                        Ok(()) => report.removed_other.push(cache.into()),
                        Err(err) => report.errors.push(format!("{cache}: {err}")),
                    }
                }
            }
        }
        let mut dead_referrers: HashMap<i64, usize> = dead.iter().map(|id| (*id, 0)).collect();
        for (from, to) in edges {
            if dead.contains(from) && dead.contains(to) {
                *dead_referrers.get_mut(to).expect("dead") += 1;
            }
        }
        let mut ready: BTreeSet<(String, i64)> = dead_referrers
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(id, _)| (by_id[id].name.clone(), *id))
            .collect();
        let mut order = Vec::with_capacity(dead.len());
        while let Some(first) = ready.iter().next().cloned() {
            ready.remove(&first);
            order.push(first.1);
            for to in refs.get(&first.1).into_iter().flatten() {
                if let Some(n) = dead_referrers.get_mut(to) {
                    *n -= 1;
                    if *n == 0 {
                        ready.insert((by_id[to].name.clone(), *to));
                    }
                }
            }
        }

        // What deleting each path frees: objects all of whose links are in deleted paths.
        let mut links_in_deleted: HashMap<u64, (u64, u64, u64)> = HashMap::new(); // ino → (count, nlink, size)
        let mut chosen = Vec::new();
        let mut freed = 0u64;
        for id in order {
            if options.max_freed.is_some_and(|max| freed >= max) {
                break;
            }
            let name = &by_id[&id].name;
            for (ino, nlink, size) in inodes(&self.path_of(name)) {
                let entry = links_in_deleted.entry(ino).or_insert((0, nlink, size));
                entry.0 += 1;
                // The object's own link is the one left when every path link is gone.
                if entry.0 + 1 == entry.1 || (entry.0 == entry.1) {
                    freed += size;
                }
            }
            chosen.push(id);
        }
        report.freed_bytes = freed;
        report.deleted_paths = chosen.iter().map(|id| by_id[id].name.clone()).collect();
        if options.dry_run {
            return Ok(report);
        }

        // Registrations first (one transaction per batch), then files.
        for batch in chosen.chunks(1000) {
            let names: Vec<&str> = batch.iter().map(|id| by_id[id].name.as_str()).collect();
            {
                let mut conn = self.db();
                db::unregister_all(&mut conn, &names).map_err(|e| self.db_err(e))?;
            }
            crate::fault::pause_point("gc-unregistered");
            for name in names {
                if let Err(err) = super::add::remove_tree(&self.path_of(name)) {
                    report.errors.push(format!("{name}: {err}"));
                }
                self.remove_path_meta(name);
            }
        }
        // Half-built generations of killed realizes, in homes nobody is realizing into.
        self.sweep_unfinished_generations(&mut report);
        // Unregistered leftovers of interrupted adds, and staging directories (every writer is
        // waiting for the lock, so none is in use).
        let valid: HashSet<&str> = paths.iter().map(|p| p.name.as_str()).collect();
        let deleted: HashSet<&str> = report.deleted_paths.iter().map(String::as_str).collect();
        for entry in fs::read_dir(self.root.join("paths"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if (!valid.contains(name.as_str()) || deleted.contains(name.as_str()))
                && fs::symlink_metadata(entry.path()).is_ok()
            {
                self.remove_path_meta(&name);
                match super::add::remove_tree(&entry.path()) {
                    Ok(()) => report.removed_other.push(format!("paths/{name}")),
                    Err(err) => report.errors.push(format!("paths/{name}: {err}")),
                }
            }
        }
        for entry in fs::read_dir(self.root.join("tmp"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("add-") || name.starts_with("stage-") {
                match super::add::remove_tree(&entry.path()) {
                    Ok(()) => report.removed_other.push(format!("tmp/{name}")),
                    Err(err) => report.errors.push(format!("tmp/{name}: {err}")),
                }
            }
        }
        let mut needed = self.needed_sources(&live_roots);
        needed.2.extend(protected_mirrors);

        // Objects nothing links any more, and caches nothing needs — still under the exclusive
        // lock: a writer links existing objects into what it stages, and a process that
        // protects a mirror after the roots were read would otherwise lose it.
        for shard in fs::read_dir(self.root.join("objects"))?.flatten() {
            for object in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                use std::os::unix::fs::MetadataExt;
                if let Ok(meta) = object.metadata() {
                    if meta.nlink() == 1 {
                        match fs::remove_file(object.path()) {
                            Ok(()) => report.removed_objects += 1,
                            Err(err) => report
                                .errors
                                .push(format!("{}: {err}", object.path().display())),
                        }
                    }
                }
            }
        }
        // Partial downloads and mirrors no live lock needs.
        self.sweep_caches(&needed, &mut report);
        drop(gc_lock);
        Ok(report)
    }

    /// URLs and repositories named by the locks of live roots (home manifests hold `lock.json`),
    /// and (filled in by the caller) mirror directories protected by running processes.
    fn needed_sources(
        &self,
        live_roots: &[String],
    ) -> (HashSet<String>, HashSet<String>, HashSet<PathBuf>) {
        let mut urls = HashSet::new();
        let mut repos = HashSet::new();
        for root in live_roots {
            let Ok(text) = fs::read_to_string(self.path_of(root)) else {
                continue;
            };
            let Ok(lock) = serde_json::from_str::<crate::lockfile::Lock>(&text) else {
                continue;
            };
            repos.insert(lock.comfy.repo.clone());
            for node in &lock.custom_nodes {
                if let Some(git) = &node.git {
                    repos.insert(git.repo.clone());
                }
                if let Some(reg) = &node.registry {
                    urls.insert(reg.download_url.clone());
                }
            }
            urls.extend(lock.models.iter().map(|m| m.url.clone()));
            if let Some(python) = &lock.python {
                urls.extend(python.wheels.iter().filter_map(|w| w.url.clone()));
            }
        }
        (urls, repos, HashSet::new())
    }

    fn sweep_caches(
        &self,
        needed: &(HashSet<String>, HashSet<String>, HashSet<PathBuf>),
        report: &mut GcReport,
    ) {
        let keys: HashSet<String> = needed
            .0
            .iter()
            .map(|u| blake3::hash(u.as_bytes()).to_hex()[..32].to_string())
            .collect();
        let downloads = self.root.join("tmp/downloads");
        for entry in fs::read_dir(&downloads).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name
                .strip_suffix(".part")
                .or_else(|| name.strip_suffix(".done"))
            else {
                continue;
            };
            if keys.contains(key) {
                continue;
            }
            // Skip a download in progress.
            let Ok(Some(_guard)) = lock::try_exclusive(&downloads.join(format!("{key}.lock")))
            else {
                continue;
            };
            for suffix in ["part", "etag", "done"] {
                let _ = fs::remove_file(downloads.join(format!("{key}.{suffix}")));
            }
            report.removed_other.push(format!("tmp/downloads/{name}"));
        }
        let mut mirrors: HashSet<PathBuf> = needed
            .1
            .iter()
            .map(|repo| crate::fetch::git::mirror_path(self, repo))
            .collect();
        mirrors.extend(needed.2.iter().cloned());
        for entry in fs::read_dir(self.root.join("git"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "git") && !mirrors.contains(&path) {
                let Ok(Some(_guard)) = lock::try_exclusive(&path.with_extension("lock")) else {
                    continue;
                };
                match fs::remove_dir_all(&path) {
                    Ok(()) => {
                        let _ = fs::remove_file(path.with_extension("lock"));
                        report
                            .removed_other
                            .push(format!("git/{}", entry.file_name().to_string_lossy()))
                    }
                    Err(err) => report.errors.push(format!("{}: {err}", path.display())),
                }
            }
        }
    }

    /// `<home>/.comfix/generations/<N>.tmp` of every home the roots name, when the home's lock is
    /// free (no realize is building it).
    fn sweep_unfinished_generations(&self, report: &mut GcReport) {
        let Ok(roots) = self.roots() else { return };
        let homes: BTreeSet<PathBuf> = roots
            .iter()
            .filter_map(|r| home_generation(&r.name))
            .filter_map(|dir| dir.parent().map(Path::to_path_buf))
            .collect();
        for generations in homes {
            let Some(meta) = generations.parent() else {
                continue;
            };
            // Never create anything in a home (it may be being deleted): only an existing lock.
            let Ok(Some(_home)) = lock::try_exclusive_existing(&meta.join("lock")) else {
                continue;
            };
            for entry in fs::read_dir(&generations).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".tmp") {
                    continue;
                }
                match super::add::remove_tree(&entry.path()) {
                    Ok(()) => report
                        .removed_other
                        .push(entry.path().display().to_string()),
                    Err(err) => report
                        .errors
                        .push(format!("{}: {err}", entry.path().display())),
                }
            }
        }
    }

    /// Remove generations of every known home older than `cutoff` (seconds since the epoch),
    /// never a home's current one. Returns the generation directories removed.
    pub fn delete_generations_older_than(&self, cutoff: i64, dry_run: bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let mut by_home: BTreeMap<PathBuf, Vec<(String, PathBuf)>> = BTreeMap::new();
        for root in self.roots()? {
            if let Some(dir) = home_generation(&root.name) {
                if let Some(home) = dir.parent().and_then(Path::parent).and_then(Path::parent) {
                    by_home
                        .entry(home.to_path_buf())
                        .or_default()
                        .push((root.name, dir));
                }
            }
        }
        for (home, generations) in by_home {
            let current = fs::read_link(home.join(".comfix/current"))
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_owned()));
            for (name, dir) in generations {
                if dir.file_name().map(|n| n.to_owned()) == current || !dir.is_dir() {
                    continue;
                }
                let created = fs::read_to_string(dir.join("generation.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["created_at"].as_i64())
                    .unwrap_or(i64::MAX);
                if created <= cutoff {
                    if !dry_run {
                        super::add::remove_tree(&dir)?;
                        self.remove_root(&name)?;
                    }
                    removed.push(dir.display().to_string());
                }
            }
        }
        Ok(removed)
    }
}

/// `(inode, link count, size)` of every regular file of a store path.
fn inodes(path: &Path) -> Vec<(u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| (m.ino(), m.nlink(), m.len()))
        .collect()
}

/// One group of `store du`: the paths kept alive by some roots.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// `home:<path>`, `version:<id>` or `pin:<name>`.
    pub group: String,
    pub paths: usize,
    /// Bytes of paths no other group of the same kind keeps alive.
    pub unique_bytes: u64,
    /// Bytes of paths other groups keep alive too.
    pub shared_bytes: u64,
}

impl Store {
    fn closures_by(
        &self,
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Result<BTreeMap<String, HashSet<String>>> {
        let graph = self.graph()?;
        let (id_of, name_of) = (graph.id_of(), graph.name_of());
        Ok(groups
            .iter()
            .map(|(group, roots)| {
                let ids = roots.iter().filter_map(|r| id_of.get(r.as_str()).copied());
                let names = graph
                    .reachable(ids)
                    .into_iter()
                    .map(|id| name_of[&id].to_string());
                (group.clone(), names.collect())
            })
            .collect())
    }

    /// Disk use per home, per version and per pin: bytes unique to each vs shared with others of
    /// its kind (store-path sizes; identical files inside different paths are stored once anyway).
    pub fn du(&self) -> Result<Vec<Usage>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for root in self
            .all_roots()?
            .into_iter()
            .filter(|r| r.live && r.kind != "temp")
        {
            if let Some(rest) = root.name.strip_prefix("home:") {
                let home = rest.rsplit_once('#').map_or(rest, |(h, _)| h);
                groups
                    .entry(format!("home:{home}"))
                    .or_default()
                    .push(root.path.clone());
                let version = fs::read_to_string(self.path_of(&root.path))
                    .ok()
                    .and_then(|t| serde_json::from_str::<crate::lockfile::Lock>(&t).ok())
                    .map(|l| l.version_id)
                    .unwrap_or_else(|| root.path.clone());
                groups
                    .entry(format!("version:{version}"))
                    .or_default()
                    .push(root.path);
            } else {
                groups.entry(root.name.clone()).or_default().push(root.path);
            }
        }
        let closures = self.closures_by(&groups)?;
        let sizes: HashMap<String, u64> =
            self.list()?.into_iter().map(|r| (r.name, r.size)).collect();
        let kind = |g: &str| g.split(':').next().unwrap_or_default().to_string();
        let mut usage = Vec::new();
        for (group, closure) in &closures {
            let others: HashSet<&String> = closures
                .iter()
                .filter(|(g, _)| *g != group && kind(g) == kind(group))
                .flat_map(|(_, c)| c.iter())
                .collect();
            let (mut unique, mut shared) = (0, 0);
            for path in closure {
                let size = sizes.get(path).copied().unwrap_or(0);
                if others.contains(path) {
                    shared += size;
                } else {
                    unique += size;
                }
            }
            usage.push(Usage {
                group: group.clone(),
                paths: closure.len(),
                unique_bytes: unique,
                shared_bytes: shared,
            });
        }
        Ok(usage)
    }

    /// The shortest chain of references from `a` to `b` (both names), if `a` depends on `b`.
    pub fn why_depends(&self, a: &str, b: &str) -> Result<Option<Vec<String>>> {
        let graph = self.graph()?;
        let (id_of, name_of, refs) = (graph.id_of(), graph.name_of(), &graph.refs);
        let (Some(&start), Some(&goal)) = (id_of.get(a), id_of.get(b)) else {
            return Ok(None);
        };
        let mut parent: HashMap<i64, i64> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut seen = HashSet::from([start]);
        while let Some(id) = queue.pop_front() {
            if id == goal {
                let mut chain = vec![name_of[&id].to_string()];
                let mut at = id;
                while let Some(p) = parent.get(&at) {
                    chain.push(name_of[p].to_string());
                    at = *p;
                }
                chain.reverse();
                return Ok(Some(chain));
            }
            for next in refs.get(&id).into_iter().flatten() {
                if seen.insert(*next) {
                    parent.insert(*next, id);
                    queue.push_back(*next);
                }
            }
        }
        Ok(None)
    }
}
