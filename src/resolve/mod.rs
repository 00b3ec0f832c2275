//! `resolve`: a spec (and the lock it already has) → a complete lock, with everything it pins
//! fetched into the store.
//!
//! An entry of the existing lock is kept as it is when it still matches the spec and `--update`
//! does not name it; anything new, changed or named is resolved again. Every entry's content is
//! made valid in the store (fetched if missing), so the lock's store paths can be realized. Items
//! run concurrently; every failure is reported, not just the first. Offline, nothing touches the
//! network and everything the store lacks is listed in one error.

use std::sync::Arc;

use serde::Serialize;

use crate::derive::exec::{Executor, How};
use crate::derive::{combine, BuildError};
use crate::derive::{Derivation, Kind, Pinned};
use crate::fetch::FetchError;
use crate::lock::{
    locked_core, locked_model, locked_node, Lock, LockedGit, LockedModel, LockedNode,
    LockedWorkflow, LOCK_VERSION,
};
use crate::spec::{CustomNode, NodeSource, Spec};
use crate::store::sanitize_name;

mod partial;
mod python;

use partial::Partial;

/// Why a resolve failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Build(Box<BuildError>),
    #[error("--update: {} not in the spec; names are: {}", list(.unknown), list(.known))]
    UnknownUpdate {
        unknown: Vec<String>,
        known: Vec<String>,
    },
}

fn list(names: &[String]) -> String {
    crate::hint::code_list(names)
}

impl From<BuildError> for ResolveError {
    fn from(err: BuildError) -> ResolveError {
        ResolveError::Build(Box::new(err))
    }
}

impl From<FetchError> for ResolveError {
    fn from(err: FetchError) -> ResolveError {
        ResolveError::from(BuildError::from(err))
    }
}

impl From<crate::python::PythonError> for ResolveError {
    fn from(err: crate::python::PythonError) -> ResolveError {
        ResolveError::from(BuildError::from(err))
    }
}

impl From<crate::store::StoreError> for ResolveError {
    fn from(err: crate::store::StoreError) -> ResolveError {
        ResolveError::from(BuildError::from(err))
    }
}

impl crate::hint::Hint for ResolveError {
    fn hint(&self) -> Option<String> {
        match self {
            ResolveError::Build(e) => e.hint(),
            ResolveError::UnknownUpdate { .. } => None,
        }
    }

    fn is_user_error(&self) -> bool {
        match self {
            ResolveError::Build(e) => e.is_user_error(),
            ResolveError::UnknownUpdate { .. } => true,
        }
    }
}

/// Which entries to resolve again even though the lock has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Nothing,
    All,
    /// Node names, model names or file names, or `comfy` for the core.
    Names(Vec<String>),
}

impl Update {
    pub(crate) fn covers(&self, names: &[&str]) -> bool {
        match self {
            Update::Nothing => false,
            Update::All => true,
            Update::Names(wanted) => wanted.iter().any(|w| names.contains(&w.as_str())),
        }
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    pub kind: &'static str,
    pub name: String,
    /// `kept` (from the existing lock) or `resolved`.
    pub action: &'static str,
    /// The pinned revision: a commit, a registry version, or a model's size and hash.
    pub pin: String,
    pub store_path: String,
}

/// The shared state of one resolve.
pub struct Resolver {
    /// Leave models alone: keep their lock entries as they are, fetch nothing for them, and
    /// leave models the lock does not pin out of it.
    pub skip_models: bool,
    /// Machine-local Python choices (`--wheels-dir`).
    pub python: crate::python::PythonSettings,
    /// The spec's directory, which its `workflows` are relative to.
    pub spec_dir: std::path::PathBuf,
    /// Runs the derivations of what is pinned (and remembers what it ran).
    pub executor: Arc<Executor>,
}

impl Resolver {
    pub fn new(
        executor: Arc<Executor>,
        skip_models: bool,
        python: crate::python::PythonSettings,
        spec_dir: std::path::PathBuf,
    ) -> Resolver {
        Resolver {
            skip_models,
            python,
            spec_dir,
            executor,
        }
    }

    /// Resolve `spec` against `old` and make every path of the lock valid in the store (the
    /// venv is built by `realize`). A failure keeps what was pinned for the next resolve.
    pub async fn resolve(
        &self,
        spec: &Spec,
        old: Option<&Lock>,
        update: &Update,
    ) -> Result<(Lock, Vec<ItemReport>), ResolveError> {
        let (mut lock, mut items) = self.pin(spec, old, update).await?;
        let fetches: Vec<Derivation> =
            crate::derive::derivations(spec, Some(&lock), None, self.skip_models)
                .into_iter()
                .filter(|d| !matches!(d.kind, Kind::BuildVenv | Kind::AssembleHome))
                .collect();
        if let Err(err) = self.executor.run(&fetches).await {
            Partial::of(&lock).save(&self.executor.store);
            return Err(err.into());
        }
        // Kept optional models that could not be fetched again are left out of the lock.
        for missing in self
            .executor
            .outcomes(&fetches)
            .into_iter()
            .filter(|o| o.outcome == How::Missing && o.output.is_none())
        {
            let Some(d) = fetches.iter().find(|d| d.id == missing.id) else {
                continue;
            };
            let crate::derive::Action::Model { locked } = &d.action else {
                continue;
            };
            lock.models.retain(|m| m != locked);
            items.retain(|i| !(i.kind == "model" && i.name == d.name));
            items.push(report(
                "model",
                &d.name,
                "missing",
                "optional; not fetched",
                "",
            ));
        }
        Partial::clear(&self.executor.store, &spec.version_id);
        Ok((lock, items))
    }

    /// Pin `spec` against `old`: entries that still match are kept as they are; the others are
    /// pinned by the executor (a pin fetches what is content-addressed — a checkout, an archive, a
    /// model, a wheel — since its store path is its content's hash). The Python requirements are
    /// read from the core's and nodes' trees, which are pinned (and made valid) first, while the
    /// models' pins go on. Every failure is collected, and what did resolve is kept for the next
    /// run.
    pub async fn pin(
        &self,
        spec: &Spec,
        old: Option<&Lock>,
        update: &Update,
    ) -> Result<(Lock, Vec<ItemReport>), ResolveError> {
        check_update_names(spec, update)?;
        let merged =
            Partial::load(&self.executor.store, &spec.version_id).and_then(|p| p.over(spec, old));
        if merged.is_some() {
            tracing::info!(
                "continuing the interrupted resolution of `{}`",
                spec.version_id
            );
        }
        let old = merged.as_ref().or(old);

        let core_name = sanitize_name(crate::spec::repo_basename(&spec.comfy.repo));
        let core = match old
            .and_then(|l| locked_core(spec, l))
            .filter(|_| !update.covers(&["comfy", &core_name]))
        {
            Some(kept) => Entry::Kept(Pinned::Git(kept.clone())),
            None => Entry::Pin(Derivation::pin_git(
                "core",
                "comfy".into(),
                &spec.comfy.repo,
                spec.comfy.git_ref.as_deref(),
                spec.comfy.commit.as_deref(),
            )),
        };
        let nodes = self.node_entries(spec, old, update);
        let (models, skipped_models) = self.model_entries(spec, old, update);

        // The models' pins run while the trees are pinned and Python is locked.
        let model_pins: Vec<Derivation> = models.iter().filter_map(Entry::pin).cloned().collect();
        let executor = self.executor.clone();
        let models_run = tokio::spawn(async move { executor.run(&model_pins).await });
        let mut trees: Vec<Derivation> = core.pin().cloned().into_iter().collect();
        trees.extend(
            nodes
                .iter()
                .filter_map(|(_, _, e)| e.as_ref().ok()?.pin())
                .cloned(),
        );
        let mut tally = Tally::default();
        if let Err(err) = self.executor.run(&trees).await {
            tally.errors.push(err);
        }
        let comfy = match tally.entry(&self.executor, "core", "comfy", &core) {
            Some(Pinned::Git(git)) => Some(git),
            _ => None,
        };
        let locked_nodes = tally.nodes(&self.executor, nodes);
        // Python next: its requirements come from the core and node trees just resolved.
        let mut python_progress = None;
        let locked_python = match &comfy {
            Some(core) if tally.errors.is_empty() => {
                let old_python = old.and_then(|l| l.python.as_ref());
                let pinned = self
                    .pin_python(
                        spec,
                        core,
                        &locked_nodes,
                        old_python,
                        update,
                        &mut python_progress,
                    )
                    .await;
                tally.python(pinned)
            }
            _ => None,
        };
        if let Err(err) = models_run.await.expect("the executor does not panic") {
            tally.errors.push(err);
        }
        let mut locked_models = skipped_models;
        locked_models.extend(tally.models(&self.executor, models));
        if !tally.errors.is_empty() {
            // The kept models are run too, so every failure (every offline miss) is listed.
            let kept: Vec<Derivation> = locked_models
                .iter()
                .map(|m| Derivation::model(m.name.clone().unwrap_or_else(|| m.filename.clone()), m))
                .collect();
            if let Err(err) = self.executor.run(&kept).await {
                tally.errors.push(err);
            }
            // Keep what did resolve, so the next resolve starts from here.
            let partial = Partial {
                version_id: spec.version_id.clone(),
                comfy,
                custom_nodes: locked_nodes,
                models: locked_models,
                python: python_progress,
            };
            partial.save(&self.executor.store);
            return Err(combine(tally.errors).into());
        }
        let workflows = self.workflows(spec, old).await?;
        Partial::clear(&self.executor.store, &spec.version_id);
        let lock = Lock {
            lock_version: LOCK_VERSION,
            version_id: spec.version_id.clone(),
            comfy: comfy.expect("no errors means the core resolved"),
            custom_nodes: locked_nodes,
            models: locked_models,
            python: locked_python,
            workflows,
        };
        Ok((lock, tally.reports))
    }

    /// Per spec node: its name, whether it is enabled, and its entry (kept from `old` when it
    /// still matches and is not updated, else pinned; a development node hashed now).
    #[allow(clippy::type_complexity)]
    fn node_entries(
        &self,
        spec: &Spec,
        old: Option<&Lock>,
        update: &Update,
    ) -> Vec<(String, bool, Result<Entry, BuildError>)> {
        let mut nodes = Vec::new();
        for node in &spec.custom_nodes {
            let name = node.dir_name();
            let previous = old.and_then(|l| locked_node(node, l));
            let updating = update.covers(&[&name]);
            let entry = match node.source() {
                NodeSource::Git { repo } => Ok(
                    match previous.and_then(|p| p.git.clone()).filter(|_| !updating) {
                        Some(kept) => Entry::Kept(Pinned::Git(kept)),
                        None => Entry::Pin(Derivation::pin_git(
                            "node",
                            name.clone(),
                            repo,
                            node.git_ref.as_deref(),
                            node.commit.as_deref(),
                        )),
                    },
                ),
                NodeSource::Local { path } => self
                    .local_node(&name, path, previous.and_then(|p| p.local.as_ref()))
                    .map(Entry::Local),
                NodeSource::Registry { id, version } => Ok(
                    match previous
                        .and_then(|p| p.registry.clone())
                        .filter(|_| !updating)
                    {
                        Some(kept) => Entry::Kept(Pinned::Registry(kept)),
                        None => Entry::Pin(Derivation::pin_archive(name.clone(), id, version)),
                    },
                ),
            };
            nodes.push((name, node.is_enabled(), entry));
        }
        nodes
    }
    /// A development node: its directory (relative to the spec) and what its contents hash to
    /// now; a warning when they changed since the lock.
    fn local_node(
        &self,
        name: &str,
        path: &str,
        previous: Option<&crate::lock::LockedLocal>,
    ) -> Result<crate::lock::LockedLocal, BuildError> {
        let dir = self.spec_dir.join(path);
        let missing = |reason: String| {
            BuildError::from(FetchError::LocalSource {
                what: format!("node `{name}`"),
                file: dir.display().to_string(),
                reason,
                hint: Some(
                    "a development node's `path` is a directory, relative to the spec".into(),
                ),
            })
        };
        let real = std::fs::canonicalize(&dir).map_err(|e| missing(e.to_string()))?;
        if !real.is_dir() {
            return Err(missing("it is not a directory".into()));
        }
        let tree = crate::store::tree::hash_tree(&real).map_err(|e| missing(e.to_string()))?;
        let tree_hash = blake3::Hash::from(tree.tree_hash()).to_hex().to_string();
        let local = crate::lock::LockedLocal {
            path: real.display().to_string(),
            tree_hash,
        };
        if let Some(old) = previous.filter(|old| **old != local) {
            tracing::warn!(
                "development node `{name}` changed since it was locked (`{}` was {}, now {} at `{}`)",
                old.path,
                &old.tree_hash[..16],
                &local.tree_hash[..16],
                local.path
            );
        }
        Ok(local)
    }

    /// Per spec model, its entry (kept or pinned); with `skip_models` the lock's entries kept
    /// untouched instead (the second list).
    fn model_entries(
        &self,
        spec: &Spec,
        old: Option<&Lock>,
        update: &Update,
    ) -> (Vec<Entry>, Vec<LockedModel>) {
        let mut models = Vec::new();
        let mut skipped = Vec::new();
        for (index, model) in spec.models.iter().enumerate() {
            let filename = model.file_name();
            let label = model.name.clone().unwrap_or_else(|| filename.clone());
            let keep = old
                .and_then(|l| locked_model(model, l))
                .filter(|_| !update.covers(&[&label, &filename]))
                .cloned();
            if self.skip_models {
                skipped.extend(keep);
                continue;
            }
            models.push(match keep {
                Some(kept) => Entry::KeptModel(label, kept),
                None => Entry::Pin(Derivation::pin_model(index, model, label)),
            });
        }
        (models, skipped)
    }

    /// The Python set, once the trees it reads its requirements from are valid.
    async fn pin_python(
        &self,
        spec: &Spec,
        core: &LockedGit,
        nodes: &[LockedNode],
        old: Option<&crate::lock::LockedPython>,
        update: &Update,
        progress: &mut Option<crate::lock::LockedPython>,
    ) -> Result<Option<(crate::lock::LockedPython, Vec<ItemReport>)>, BuildError> {
        self.trees_valid(core, nodes).await?;
        self.resolve_python(spec, core, nodes, old, update, progress)
            .await
    }

    /// Make the core's and the nodes' trees valid: the Python requirements are read from them.
    async fn trees_valid(&self, core: &LockedGit, nodes: &[LockedNode]) -> Result<(), BuildError> {
        let mut trees = vec![Derivation::git("core", "comfy".into(), core)];
        for node in nodes {
            if let Some(git) = &node.git {
                trees.push(Derivation::git("node", node.name.clone(), git));
            }
            if let Some(registry) = &node.registry {
                trees.push(Derivation::archive(node.name.clone(), registry));
            }
        }
        self.executor.run(&trees).await.map(|_| ())
    }

    /// The spec's workflow files, each pinned by the executor (added to the store: they are
    /// part of the version's closure) unless the lock pins the same bytes, still in the store.
    async fn workflows(
        &self,
        spec: &Spec,
        old: Option<&Lock>,
    ) -> Result<Vec<LockedWorkflow>, ResolveError> {
        let store = &self.executor.store;
        let mut entries = Vec::new();
        for (index, rel) in spec.workflows.iter().enumerate() {
            let file = self.spec_dir.join(rel);
            let same = |kept: &&LockedWorkflow| -> bool {
                std::fs::read(&file)
                    .is_ok_and(|text| blake3::hash(&text).to_hex().as_str() == kept.blake3)
                    && store.valid(&kept.store_path).ok().flatten().is_some()
            };
            let kept = old.and_then(|l| l.workflows.iter().find(|w| w.path == *rel));
            entries.push(match kept.filter(same) {
                Some(kept) => Ok(kept.clone()),
                None => Err(Derivation::pin_workflow(index, rel, file)),
            });
        }
        let pins: Vec<Derivation> = entries.iter().filter_map(|e| e.clone().err()).collect();
        self.executor.run(&pins).await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| match entry {
                Ok(kept) => Some(kept),
                Err(pin) => match self.executor.pinned(&pin) {
                    Some(Pinned::Workflow(locked)) => Some(locked),
                    _ => None,
                },
            })
            .collect())
    }
}

/// One lock entry of a resolve: kept from the old lock, or pinned by a derivation.
enum Entry {
    Kept(Pinned),
    KeptModel(String, LockedModel),
    Local(crate::lock::LockedLocal),
    Pin(Derivation),
}

impl Entry {
    fn pin(&self) -> Option<&Derivation> {
        match self {
            Entry::Pin(d) => Some(d),
            _ => None,
        }
    }
}

fn report(
    kind: &'static str,
    name: &str,
    action: &'static str,
    pin: &str,
    store_path: &str,
) -> ItemReport {
    ItemReport {
        kind,
        name: name.to_string(),
        action,
        pin: pin.to_string(),
        store_path: store_path.to_string(),
    }
}

/// The report of one pinned entry (`kept` or `resolved`).
fn report_of(kind: &'static str, name: &str, action: &'static str, pinned: &Pinned) -> ItemReport {
    let (pin, store_path) = match pinned {
        Pinned::Git(g) => (g.commit.clone(), &g.store_path),
        Pinned::Registry(r) => (r.version.clone(), &r.store_path),
        Pinned::Model(m) => (
            format!("{} bytes, blake3:{}", m.size, &m.blake3[..16]),
            &m.store_path,
        ),
        Pinned::Wheel(w) => (
            format!(
                "{} sha256:{}",
                w.version,
                &w.sha256[..16.min(w.sha256.len())]
            ),
            &w.store_path,
        ),
        Pinned::Workflow(w) => (format!("blake3:{}", &w.blake3[..16]), &w.store_path),
    };
    report(kind, name, action, &pin, store_path)
}

/// What the pins of a resolve gave: every failure, and a report per entry.
#[derive(Default)]
struct Tally {
    errors: Vec<BuildError>,
    reports: Vec<ItemReport>,
}

impl Tally {
    /// The entry's lock entry: kept, or what its pin gave (`None`: it failed, and the failure is
    /// in the executor's error).
    fn entry(
        &mut self,
        executor: &Executor,
        kind: &'static str,
        name: &str,
        entry: &Entry,
    ) -> Option<Pinned> {
        let (pinned, action) = match entry {
            Entry::Kept(kept) => (kept.clone(), "kept"),
            Entry::Pin(d) => (executor.pinned(d)?, "resolved"),
            Entry::KeptModel(..) | Entry::Local(_) => return None,
        };
        self.reports.push(report_of(kind, name, action, &pinned));
        Some(pinned)
    }

    fn nodes(
        &mut self,
        executor: &Executor,
        entries: Vec<(String, bool, Result<Entry, BuildError>)>,
    ) -> Vec<LockedNode> {
        let mut out = Vec::new();
        for (name, enabled, entry) in entries {
            let (mut git, mut registry, mut local) = (None, None, None);
            match entry {
                Ok(Entry::Local(l)) => local = Some(l),
                Ok(entry) => match self.entry(executor, "node", &name, &entry) {
                    Some(Pinned::Git(g)) => git = Some(g),
                    Some(Pinned::Registry(r)) => registry = Some(r),
                    _ => {}
                },
                Err(err) => self.errors.push(err),
            }
            if git.is_some() || registry.is_some() || local.is_some() {
                out.push(LockedNode {
                    name,
                    enabled,
                    git,
                    registry,
                    local,
                });
            }
        }
        out
    }

    /// The Python set, when the spec has one and it was pinned.
    fn python(
        &mut self,
        pinned: Result<Option<(crate::lock::LockedPython, Vec<ItemReport>)>, BuildError>,
    ) -> Option<crate::lock::LockedPython> {
        match pinned {
            Ok(Some((python, items))) => {
                self.reports.extend(items);
                Some(python)
            }
            Ok(None) => None,
            Err(err) => {
                self.errors.push(err);
                None
            }
        }
    }

    /// The models; an optional model that could not be fetched is left out (the executor warned).
    fn models(&mut self, executor: &Executor, entries: Vec<Entry>) -> Vec<LockedModel> {
        let mut out = Vec::new();
        for entry in entries {
            match entry {
                Entry::KeptModel(label, kept) => {
                    self.reports.push(report_of(
                        "model",
                        &label,
                        "kept",
                        &Pinned::Model(kept.clone()),
                    ));
                    out.push(kept);
                }
                Entry::Pin(d) => match executor.pinned(&d) {
                    Some(pinned @ Pinned::Model(_)) => {
                        self.reports
                            .push(report_of("model", &d.name, "resolved", &pinned));
                        if let Pinned::Model(m) = pinned {
                            out.push(m);
                        }
                    }
                    _ if d.action.is_optional() => self.reports.push(report(
                        "model",
                        &d.name,
                        "missing",
                        "optional; not fetched",
                        "",
                    )),
                    _ => {}
                },
                Entry::Kept(_) | Entry::Local(_) => {}
            }
        }
        out
    }
}

fn check_update_names(spec: &Spec, update: &Update) -> Result<(), ResolveError> {
    let Update::Names(names) = update else {
        return Ok(());
    };
    let mut known = vec![
        "comfy".to_string(),
        "python".to_string(),
        sanitize_name(crate::spec::repo_basename(&spec.comfy.repo)),
    ];
    known.extend(spec.custom_nodes.iter().map(CustomNode::dir_name));
    for model in &spec.models {
        known.push(model.file_name());
        known.extend(model.name.clone());
    }
    let unknown: Vec<&String> = names.iter().filter(|n| !known.contains(n)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ResolveError::UnknownUpdate {
        unknown: unknown.into_iter().cloned().collect(),
        known,
    })
}
