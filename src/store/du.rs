//! `store du` and `why-depends`: what the store holds, what gc would free now, and per home,
//! version and pin what would go with it; the chain of references from one path to another.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use super::account::{Bytes, DiskIndex};
use super::gc::{Keep, PlanInput, Probe};
use super::roots::Root;
use super::{Result, Store};

/// `store du`: the store on disk, what gc would free now, its caches, and per home, version and
/// pin what gc would free if that group's roots went.
#[derive(Debug, Clone, Serialize)]
pub struct DiskUse {
    /// The whole store but its database, each inode once.
    pub total: Bytes,
    /// What `comfix gc` frees now (the same figure as `gc --dry-run`).
    pub garbage: Bytes,
    pub parts: Vec<Part>,
    pub groups: Vec<Usage>,
}

/// A top-level part of the store.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub name: String,
    /// Its inodes, each once.
    pub bytes: Bytes,
    /// For caches: what deleting it alone would free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own: Option<Bytes>,
}

/// One group of `store du`: the paths kept alive by some roots.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// `home:<path>`, `version:<id>` or `pin:<name>`.
    pub group: String,
    pub paths: usize,
    /// What gc would free if this group's roots went (its homes deleted, its pin dropped).
    pub unique: Bytes,
    /// The rest of its closure: bytes other roots keep too.
    pub shared: Bytes,
}

impl Store {
    /// Disk use in the accounting `gc` uses (see [`DiskUse`]). Takes no lock and writes nothing.
    // Long on purpose: the parts, then the groups, each summed over one disk index.
    /// With `home_grace` (seconds) as the collector's: what a gone home used is garbage only
    /// once its grace period is over.
    pub fn du(&self, keep: &dyn Keep, home_grace: i64) -> Result<DiskUse> {
        // As the collector sees them.
        let now = super::db::now();
        let roots = self.roots_at(now)?;
        let graph = self.graph()?;
        let mut index = DiskIndex::default();
        let objects = self.root.join(super::layout::OBJECTS);
        let garbage_of = |without: &HashSet<String>, index: &mut DiskIndex| -> Result<Bytes> {
            let plan = self.plan(
                &PlanInput {
                    roots: &roots,
                    without,
                    older_than: None,
                    max_freed: None,
                    grace_cutoff: now - home_grace,
                    probe: Probe::Look,
                    keep,
                },
                &graph,
                index,
            )?;
            Ok(index.freed(&plan.removal_paths(), &objects).0)
        };
        let garbage = garbage_of(&HashSet::new(), &mut index)?;

        let mut tops: Vec<PathBuf> = fs::read_dir(&self.root)?
            .flatten()
            .filter(|e| e.file_name() != "db")
            .map(|e| e.path())
            .collect();
        tops.sort();
        let total = index.total(&tops);
        let nothing = index.freed(&[], &objects).0;
        let mut parts = Vec::new();
        for top in &tops {
            let name = top
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let split = name == "cache" || name == "tmp";
            let children: Vec<PathBuf> = if split {
                let mut c: Vec<PathBuf> = fs::read_dir(top)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .collect();
                c.sort();
                c
            } else {
                vec![top.clone()]
            };
            for part in children {
                let label = part
                    .strip_prefix(&self.root)
                    .unwrap_or(&part)
                    .display()
                    .to_string();
                let bytes = index.total(std::slice::from_ref(&part));
                if bytes.disk == 0 && bytes.content == 0 {
                    continue;
                }
                let cache = split || name == "git";
                let own = cache.then(|| {
                    index
                        .freed(std::slice::from_ref(&part), &objects)
                        .0
                        .saturating_sub(nothing)
                });
                parts.push(Part {
                    name: label,
                    bytes,
                    own,
                });
            }
        }

        let mut groups: BTreeMap<String, Vec<&Root>> = BTreeMap::new();
        for root in roots.iter().filter(|r| r.live && r.kind != "temp") {
            if let Some(rest) = root.name.strip_prefix("home:") {
                let home = rest.rsplit_once('#').map_or(rest, |(h, _)| h);
                groups.entry(format!("home:{home}")).or_default().push(root);
                let version = keep
                    .version_of(self, &root.path)
                    .unwrap_or_else(|| root.path.clone());
                groups
                    .entry(format!("version:{version}"))
                    .or_default()
                    .push(root);
            } else {
                groups.entry(root.name.clone()).or_default().push(root);
            }
        }
        let (id_of, name_of) = (graph.id_of(), graph.name_of());
        let mut usage = Vec::new();
        for (group, members) in &groups {
            let without: HashSet<String> = members.iter().map(|r| r.name.clone()).collect();
            let unique = garbage_of(&without, &mut index)?.saturating_sub(garbage);
            let closure: Vec<PathBuf> = graph
                .reachable(
                    members
                        .iter()
                        .filter_map(|r| id_of.get(r.path.as_str()).copied()),
                )
                .into_iter()
                .map(|id| self.path_of(name_of[&id]))
                .collect();
            let all = index.total(&closure);
            usage.push(Usage {
                group: group.clone(),
                paths: closure.len(),
                unique,
                shared: all.saturating_sub(unique),
            });
        }
        Ok(DiskUse {
            total,
            garbage,
            parts,
            groups: usage,
        })
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
