//! Roots and the reference graph: what keeps a path alive (home generations, pins, the
//! temporary roots of live processes), and the graph the collector and `du` walk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{db, flock, Result, Store};

/// Why a path is alive.
#[derive(Debug, Clone, Serialize)]
pub struct Root {
    /// `home:<path>#<N>`, `pin:<name>`, `link:<file>`, or `temp:<pid>`.
    pub name: String,
    pub kind: String,
    pub path: String,
    /// For indirect roots: whether what they stand for still exists.
    pub live: bool,
    /// A home root whose whole home is gone (moved, copied away or deleted), not just its
    /// generation: what it keeps is freed only after `gc`'s grace period.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub home_gone: bool,
    /// When a collection first found its home gone (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gone_since: Option<i64>,
}

/// The reference graph, loaded in one pass over the db.
pub(super) struct Graph {
    pub(super) paths: Vec<db::PathRecord>,
    pub(super) edges: Vec<(i64, i64)>,
    /// referrer → references
    pub(super) refs: HashMap<i64, Vec<i64>>,
}

impl Graph {
    pub(super) fn id_of(&self) -> HashMap<&str, i64> {
        self.paths.iter().map(|p| (p.name.as_str(), p.id)).collect()
    }

    pub(super) fn name_of(&self) -> HashMap<i64, &str> {
        self.paths.iter().map(|p| (p.id, p.name.as_str())).collect()
    }

    /// Everything reachable from `start`.
    pub(super) fn reachable(&self, start: impl IntoIterator<Item = i64>) -> HashSet<i64> {
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
pub(super) fn home_generation(name: &str) -> Option<PathBuf> {
    let rest = name.strip_prefix("home:")?;
    let (home, n) = rest.rsplit_once('#')?;
    Some(Path::new(home).join(".comfix/generations").join(n))
}

/// A home root's name → the home it belongs to.
pub fn home_of_root(name: &str) -> Option<PathBuf> {
    let rest = name.strip_prefix("home:")?;
    let (home, _) = rest.rsplit_once('#')?;
    Some(PathBuf::from(home))
}

/// A link root's name → the file that links to the path it keeps (`link:<file>`: a model of an
/// adopted install that `snapshot --link-models` replaced by a link into the store). It lives
/// while that file is still a link to that path.
pub(super) fn link_root(name: &str) -> Option<&Path> {
    name.strip_prefix("link:").map(Path::new)
}

impl Store {
    /// Keep `path` alive while `file` links to it (an install's model replaced by a link). The
    /// root names the file by its absolute path, so it is found from any working directory.
    pub fn add_link_root(&self, file: &Path, path: &str) -> Result<()> {
        let file = std::path::absolute(file)?;
        self.add_root(&format!("link:{}", file.display()), path, "link")
    }

    pub(super) fn graph(&self) -> Result<Graph> {
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
        if self.read_only {
            return Ok(()); // no collector can run on it
        }
        // Temporary roots last the process: a name recorded once stays protected.
        let new: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.temp_roots.has(n))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let _gc = flock::shared(&self.root.join(super::layout::GC_LOCK))?;
        for name in new {
            self.temp_roots.add(name)?;
        }
        Ok(())
    }

    /// Whether `name` is valid — registered and on disk — once protected (a temporary root, so a
    /// collector starting now keeps it; one that ran before is over): protect-then-check, the
    /// only way to trust that a path stays. Its record, when it is.
    pub fn valid(&self, name: &str) -> Result<Option<super::PathRecord>> {
        self.protect(&[name])?;
        let Some(record) = self.query(name)? else {
            return Ok(None);
        };
        // Registered but not on disk: a repair moved a damaged copy away, keeping the record.
        Ok(std::fs::symlink_metadata(self.path_of(name))
            .is_ok()
            .then_some(record))
    }

    /// Pin a valid path as root `pin:<name>`.
    pub fn pin(&self, name: &str, path: &str) -> Result<()> {
        self.add_root(&format!("pin:{name}"), path, "pin")
    }

    /// [`Store::all_roots`] as a collection at `now` sees them: a home found gone now starts its
    /// grace period now (recorded by the collector, not here).
    pub(super) fn roots_at(&self, now: i64) -> Result<Vec<Root>> {
        let mut roots = self.all_roots()?;
        for root in roots
            .iter_mut()
            .filter(|r| r.home_gone && r.gone_since.is_none())
        {
            root.gone_since = Some(now);
        }
        Ok(roots)
    }

    /// Every root: recorded ones (with liveness) and the temporary roots of live processes.
    pub fn all_roots(&self) -> Result<Vec<Root>> {
        let mut roots: Vec<Root> = self
            .roots()?
            .into_iter()
            .map(|r| Root {
                live: match (home_generation(&r.name), link_root(&r.name)) {
                    (Some(dir), _) => dir.is_dir(),
                    (_, Some(link)) => {
                        fs::read_link(link).is_ok_and(|target| target == self.path_of(&r.path))
                    }
                    _ => true,
                },
                home_gone: home_of_root(&r.name).is_some_and(|h| !h.join(".comfix").is_dir()),
                gone_since: r.gone_since,
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
                    home_gone: false,
                    gone_since: None,
                });
            }
        }
        Ok(roots)
    }

    /// `(pid, names)` of every temporary roots file whose process is alive (holds its lock).
    pub(super) fn live_temp_roots(&self) -> Result<Vec<(String, Vec<String>)>> {
        let mut out = Vec::new();
        let own = std::process::id().to_string();
        for entry in fs::read_dir(self.root.join(super::layout::TEMPROOTS))? {
            let entry = entry?;
            let pid = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // A file its process removed meanwhile is not re-created here.
            if pid != own && !path.exists() {
                continue;
            }
            let alive = pid == own || flock::try_exclusive_existing(&path)?.is_none();
            if alive && path.exists() {
                let text = fs::read_to_string(&path).unwrap_or_default();
                out.push((pid, text.lines().map(str::to_string).collect()));
            }
        }
        Ok(out)
    }
}
