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

use crate::fetch::http::{Client, Download};
use crate::fetch::model::{self, Source};
use crate::fetch::{git, registry, FetchError};
use crate::lockfile::{Lock, LockedGit, LockedModel, LockedNode, LockedRegistry, LOCK_VERSION};
use crate::reporter::Reporter;
use crate::spec::{CustomNode, Model, NodeSource, Spec};
use crate::store::{sanitize_name, AddOptions, Store};

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
    pub store: Arc<Store>,
    pub client: Arc<Client>,
    pub reporter: Arc<dyn Reporter>,
    /// Leave models alone: keep their lock entries as they are, fetch nothing for them, and
    /// leave models the lock does not pin out of it.
    pub skip_models: bool,
    /// Machine-local Python choices (`--wheels-dir`).
    pub python: crate::python::PythonSettings,
}

type Task<T> = tokio::task::JoinHandle<Result<(T, ItemReport), FetchError>>;

impl Resolver {
    fn offline(&self) -> bool {
        self.client.config().offline
    }

    /// Resolve `spec` against `old`, fetching into the store.
    pub async fn resolve(
        &self,
        spec: &Spec,
        old: Option<&Lock>,
        update: &Update,
    ) -> Result<(Lock, Vec<ItemReport>), FetchError> {
        check_update_names(spec, update)?;
        let jobs = Arc::new(tokio::sync::Semaphore::new(self.client.config().jobs));

        let core_name = sanitize_name(crate::spec::repo_basename(&spec.comfy.repo));
        let keep_core = old
            .and_then(|l| locked_core(spec, l))
            .filter(|_| !update.covers(&["comfy", &core_name]))
            .cloned();
        let core = self.git_task(
            "core",
            "comfy".into(),
            spec.comfy.repo.clone(),
            spec.comfy.git_ref.clone(),
            spec.comfy.commit.clone(),
            keep_core,
            core_name,
            jobs.clone(),
        );

        let mut nodes: Vec<(String, bool, NodeTask)> = Vec::new();
        for node in &spec.custom_nodes {
            let name = node.dir_name();
            let previous = old.and_then(|l| locked_node(node, l));
            let updating = update.covers(&[&name]);
            let task = match node.source() {
                NodeSource::Git { repo } => {
                    let keep = previous.and_then(|p| p.git.clone()).filter(|_| !updating);
                    NodeTask::Git(self.git_task(
                        "node",
                        name.clone(),
                        repo.to_string(),
                        node.git_ref.clone(),
                        node.commit.clone(),
                        keep,
                        sanitize_name(crate::spec::repo_basename(repo)),
                        jobs.clone(),
                    ))
                }
                NodeSource::Registry { id, version } => {
                    let keep = previous
                        .and_then(|p| p.registry.clone())
                        .filter(|_| !updating);
                    NodeTask::Registry(self.registry_task(
                        name.clone(),
                        id.to_string(),
                        version.map(str::to_string),
                        keep,
                        jobs.clone(),
                    ))
                }
            };
            nodes.push((name, node.is_enabled(), task));
        }

        let mut models = Vec::new();
        let mut skipped_models = Vec::new();
        for model in &spec.models {
            let filename = model.file_name();
            let label = model.name.clone().unwrap_or_else(|| filename.clone());
            let keep = old
                .and_then(|l| locked_model(model, l))
                .filter(|_| !update.covers(&[&label, &filename]))
                .cloned();
            if self.skip_models {
                if let Some(kept) = keep {
                    skipped_models.push(kept);
                }
                continue;
            }
            models.push(self.model_task(model.clone(), label, keep, jobs.clone()));
        }

        // Gather everything, collecting every failure.
        let mut errors = Vec::new();
        let mut reports = Vec::new();
        let comfy = collect(core, &mut errors, &mut reports).await;
        let mut locked_nodes = Vec::new();
        for (name, enabled, task) in nodes {
            let locked = match task {
                NodeTask::Git(t) => {
                    collect(t, &mut errors, &mut reports)
                        .await
                        .map(|g| LockedNode {
                            name: name.clone(),
                            enabled,
                            git: Some(g),
                            registry: None,
                        })
                }
                NodeTask::Registry(t) => {
                    collect(t, &mut errors, &mut reports)
                        .await
                        .map(|r| LockedNode {
                            name: name.clone(),
                            enabled,
                            git: None,
                            registry: Some(r),
                        })
                }
            };
            locked_nodes.extend(locked);
        }
        let mut locked_models = skipped_models;
        for task in models {
            locked_models.extend(collect(task, &mut errors, &mut reports).await);
        }
        // Python last: its requirements come from the core and node trees just resolved.
        let mut locked_python = None;
        if let (true, Some(core)) = (errors.is_empty(), &comfy) {
            let old_python = old.and_then(|l| l.python.as_ref());
            match self
                .resolve_python(spec, core, &locked_nodes, old_python, update)
                .await
            {
                Ok(Some((python, items))) => {
                    reports.extend(items);
                    locked_python = Some(python);
                }
                Ok(None) => {}
                Err(err) => errors.push(err),
            }
        }
        if !errors.is_empty() {
            return Err(combine(errors));
        }
        let lock = Lock {
            lock_version: LOCK_VERSION,
            version_id: spec.version_id.clone(),
            comfy: comfy.expect("no errors means the core resolved"),
            custom_nodes: locked_nodes,
            models: locked_models,
            python: locked_python,
        };
        Ok((lock, reports))
    }

    #[allow(clippy::too_many_arguments)]
    fn git_task(
        &self,
        kind: &'static str,
        label: String,
        repo: String,
        git_ref: Option<String>,
        commit: Option<String>,
        keep: Option<LockedGit>,
        path_name: String,
        jobs: Arc<tokio::sync::Semaphore>,
    ) -> Task<LockedGit> {
        let store = self.store.clone();
        let offline = self.offline();
        tokio::spawn(async move {
            let _permit = jobs
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            tokio::task::spawn_blocking(move || {
                git::protect_mirror(&store, &repo)?;
                let action = if keep.is_some() { "kept" } else { "resolved" };
                if let Some(kept) = &keep {
                    // Protected first: a collector starting now keeps it; one that ran before is over.
                    store.protect(&[&kept.store_path])?;
                    if store.query(&kept.store_path)?.is_some() {
                        return Ok((
                            kept.clone(),
                            report(kind, &label, action, &kept.commit, &kept.store_path),
                        ));
                    }
                }
                let commit = match &keep {
                    Some(kept) => kept.commit.clone(),
                    None => git::resolve(
                        &store,
                        &repo,
                        git_ref.as_deref(),
                        commit.as_deref(),
                        !offline,
                    )
                    .map_err(|e| name_offline(e, &format!("{kind} `{label}` ({repo})")))?,
                };
                if !git::has_commit(&store, &repo, &commit) {
                    if offline {
                        return Err(FetchError::Offline {
                            missing: vec![format!(
                                "{kind} `{label}`: commit `{commit}` of `{repo}`"
                            )],
                        });
                    }
                    git::update_mirror(&store, &repo)?;
                    if !git::has_commit(&store, &repo, &commit) {
                        return Err(FetchError::GitCommitNotFound { url: repo, commit });
                    }
                }
                let added = git::checkout(&store, &repo, &commit, &path_name, !offline)
                    .map_err(|e| name_offline(e, &format!("{kind} `{label}`")))?;
                let locked = LockedGit {
                    repo,
                    git_ref,
                    commit,
                    store_path: added.record.name,
                };
                let item = report(kind, &label, action, &locked.commit, &locked.store_path);
                Ok((locked, item))
            })
            .await
            .expect("git work does not panic")
        })
    }

    fn registry_task(
        &self,
        label: String,
        id: String,
        version: Option<String>,
        keep: Option<LockedRegistry>,
        jobs: Arc<tokio::sync::Semaphore>,
    ) -> Task<LockedRegistry> {
        let store = self.store.clone();
        let client = self.client.clone();
        let reporter = self.reporter.clone();
        tokio::spawn(async move {
            let action = if keep.is_some() { "kept" } else { "resolved" };
            if let Some(kept) = &keep {
                // Protected first: a collector starting now keeps it; one that ran before is over.
                store.protect(&[&kept.store_path])?;
                if store.query(&kept.store_path)?.is_some() {
                    return Ok((
                        kept.clone(),
                        report("node", &label, action, &kept.version, &kept.store_path),
                    ));
                }
            }
            if client.config().offline {
                let what = match &keep {
                    Some(k) => format!("registry node `{label}` ({id} {})", k.version),
                    None => format!(
                        "registry node `{label}` ({id} {})",
                        version.as_deref().unwrap_or("latest")
                    ),
                };
                return Err(FetchError::Offline {
                    missing: vec![what],
                });
            }
            let _permit = jobs
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (version, url, expected) = match &keep {
                Some(k) => (
                    k.version.clone(),
                    k.download_url.clone(),
                    Some(k.blake3.clone()),
                ),
                None => {
                    let pinned = registry::pin(&client, &id, version.as_deref()).await?;
                    (pinned.version, pinned.download_url, None)
                }
            };
            let (blake3, added) = registry::fetch(
                &client,
                &store,
                reporter.as_ref(),
                &id,
                &version,
                &url,
                expected.as_deref(),
            )
            .await?;
            let locked = LockedRegistry {
                id,
                version,
                download_url: url,
                blake3,
                store_path: added.record.name,
            };
            let item = report("node", &label, action, &locked.version, &locked.store_path);
            Ok((locked, item))
        })
    }

    fn model_task(
        &self,
        model: Model,
        label: String,
        keep: Option<LockedModel>,
        jobs: Arc<tokio::sync::Semaphore>,
    ) -> Task<LockedModel> {
        let store = self.store.clone();
        let client = self.client.clone();
        let reporter = self.reporter.clone();
        tokio::spawn(async move {
            let action = if keep.is_some() { "kept" } else { "resolved" };
            let pin_text =
                |m: &LockedModel| format!("{} bytes, blake3:{}", m.size, &m.blake3[..16]);
            if let Some(kept) = &keep {
                // Protected first: a collector starting now keeps it; one that ran before is over.
                store.protect(&[&kept.store_path])?;
                if store.query(&kept.store_path)?.is_some() {
                    return Ok((
                        kept.clone(),
                        report("model", &label, action, &pin_text(kept), &kept.store_path),
                    ));
                }
            }
            let filename = model.file_name();
            let what = format!("model `{label}`");
            let source = Source::parse(&model.source)?;
            let options = AddOptions {
                name: Some(sanitize_name(&filename)),
                references: Vec::new(),
            };
            let locked = if let Source::File(path) = &source {
                // Local files need no network, even offline.
                let size = std::fs::metadata(path).map_err(FetchError::io(path))?.len();
                let digest =
                    crate::store::tree::hash_file(path, size).map_err(FetchError::io(path))?;
                let blake3 = blake3::Hash::from(digest).to_hex().to_string();
                if let Some(expected) = model.blake3.as_ref().or(keep.as_ref().map(|k| &k.blake3)) {
                    if !expected.eq_ignore_ascii_case(&blake3) {
                        return Err(FetchError::HashMismatch {
                            what,
                            url: model.source.clone(),
                            algorithm: "BLAKE3",
                            expected: expected.clone(),
                            actual: blake3,
                        });
                    }
                }
                let added = tokio::task::block_in_place(|| {
                    store.add_path(path, &options, &crate::reporter::NoReporter)
                })?;
                LockedModel {
                    source: model.source.clone(),
                    name: model.name.clone(),
                    target_subdir: model.target_subdir.clone(),
                    filename,
                    required: model.is_required(),
                    url: model.source.clone(),
                    revision: None,
                    size,
                    sha256: model.sha256.clone(),
                    blake3,
                    store_path: added.record.name,
                }
            } else {
                if client.config().offline {
                    return Err(FetchError::Offline {
                        missing: vec![format!("{what} ({})", model.source)],
                    });
                }
                let _permit = jobs
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let pinned = match &keep {
                    Some(k) => model::Pinned {
                        url: url::Url::parse(&k.url).map_err(|e| FetchError::Api {
                            what: what.clone(),
                            message: format!("bad URL in the lock: {e}"),
                        })?,
                        revision: k.revision.clone(),
                        size: Some(k.size),
                        sha256: k.sha256.clone(),
                        blake3: Some(k.blake3.clone()),
                    },
                    None => model::pin(&client, &what, &source).await?,
                };
                let sha256 = model.sha256.clone().or(pinned.sha256.clone());
                let download = Download {
                    what: what.clone(),
                    auth: model::auth_for(client.config(), &pinned.url),
                    url: pinned.url.clone(),
                    size: pinned.size,
                    sha256: sha256.clone(),
                    blake3: model.blake3.clone().or(pinned.blake3.clone()),
                    file_name: filename.clone(),
                };
                let fetched = client
                    .download(&store, reporter.as_ref(), &download)
                    .await?;
                let (size, digest) = (fetched.size, fetched.blake3);
                let added = tokio::task::block_in_place(|| {
                    store.add_staged(fetched.staging, &filename, &options, Some(digest))
                })?;
                LockedModel {
                    source: model.source.clone(),
                    name: model.name.clone(),
                    target_subdir: model.target_subdir.clone(),
                    filename,
                    required: model.is_required(),
                    url: pinned.url.to_string(),
                    revision: pinned.revision,
                    size,
                    sha256,
                    blake3: blake3::Hash::from(digest).to_hex().to_string(),
                    store_path: added.record.name,
                }
            };
            let item = report(
                "model",
                &label,
                action,
                &pin_text(&locked),
                &locked.store_path,
            );
            Ok((locked, item))
        })
    }
}

enum NodeTask {
    Git(Task<LockedGit>),
    Registry(Task<LockedRegistry>),
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

/// A spec's `commit`, if given, must be the locked commit (or a prefix of it).
fn commit_matches(wanted: &Option<String>, locked: &str) -> bool {
    wanted
        .as_ref()
        .is_none_or(|c| locked.starts_with(&c.to_ascii_lowercase()))
}

/// The lock's core entry, if it still matches the spec.
pub fn locked_core<'a>(spec: &Spec, lock: &'a Lock) -> Option<&'a LockedGit> {
    let locked = &lock.comfy;
    (locked.repo == spec.comfy.repo
        && locked.git_ref == spec.comfy.git_ref
        && commit_matches(&spec.comfy.commit, &locked.commit))
    .then_some(locked)
}

/// The lock's entry for a spec node (same name and source), if it still matches.
pub fn locked_node<'a>(node: &CustomNode, lock: &'a Lock) -> Option<&'a LockedNode> {
    let name = node.dir_name();
    let locked = lock.custom_nodes.iter().find(|n| n.name == name)?;
    let matches = match node.source() {
        NodeSource::Git { repo } => locked.git.as_ref().is_some_and(|g| {
            g.repo == repo && g.git_ref == node.git_ref && commit_matches(&node.commit, &g.commit)
        }),
        NodeSource::Registry { id, version } => locked
            .registry
            .as_ref()
            .is_some_and(|r| r.id == id && version.is_none_or(|v| v == r.version)),
    };
    matches.then_some(locked)
}

/// The lock's entry for a spec model (same source, placed at the same file), if it still matches.
pub fn locked_model<'a>(model: &Model, lock: &'a Lock) -> Option<&'a LockedModel> {
    let filename = model.file_name();
    lock.models
        .iter()
        .find(|m| {
            m.key() == (model.target_subdir.as_deref(), filename.as_str())
                && m.source == model.source
        })
        .filter(|m| {
            model
                .sha256
                .as_ref()
                .is_none_or(|s| Some(s) == m.sha256.as_ref())
                && model.blake3.as_ref().is_none_or(|b| *b == m.blake3)
        })
}

/// What resolving `spec` against `lock` would change, one line per entry (empty: up to date).
pub fn stale_entries(spec: &Spec, lock: &Lock) -> Vec<String> {
    let mut stale = Vec::new();
    if lock.version_id != spec.version_id {
        stale.push(format!(
            "version_id `{}` (lock has `{}`)",
            spec.version_id, lock.version_id
        ));
    }
    if locked_core(spec, lock).is_none() {
        stale.push("core `comfy`".into());
    }
    for node in &spec.custom_nodes {
        match locked_node(node, lock) {
            None => stale.push(format!("node `{}`", node.dir_name())),
            Some(locked) if locked.enabled != node.is_enabled() => {
                stale.push(format!("node `{}` (enabled)", node.dir_name()))
            }
            Some(_) => {}
        }
    }
    for model in &spec.models {
        if locked_model(model, lock).is_none() {
            stale.push(format!(
                "model `{}`",
                model.name.clone().unwrap_or_else(|| model.file_name())
            ));
        }
    }
    let names: Vec<String> = spec.custom_nodes.iter().map(CustomNode::dir_name).collect();
    for locked in &lock.custom_nodes {
        if !names.contains(&locked.name) {
            stale.push(format!("node `{}` (removed from the spec)", locked.name));
        }
    }
    if lock.models.len() > spec.models.len() {
        stale.push("models removed from the spec".into());
    }
    // The core's and nodes' requirements change only with their own (stale) entries.
    match (&spec.python, &lock.python) {
        (Some(_), None) => stale.push("python (not locked)".into()),
        (Some(wanted), Some(locked)) => {
            if wanted
                .version
                .as_ref()
                .is_some_and(|v| *v != locked.version)
            {
                stale.push(format!("python version (lock has `{}`)", locked.version));
            }
            let locked_spec = locked
                .requirements
                .iter()
                .find(|g| g.origin == "spec")
                .map(|g| g.requirements.as_slice())
                .unwrap_or_default();
            if locked_spec != wanted.requirements.as_slice() {
                stale.push("python requirements".into());
            }
        }
        (None, Some(locked)) => {
            if locked
                .requirements
                .iter()
                .any(|g| g.origin == "spec" && !g.requirements.is_empty())
            {
                stale.push("python requirements".into());
            }
        }
        (None, None) => {}
    }
    stale
}

/// Attach which item an offline error is about.
fn name_offline(err: FetchError, what: &str) -> FetchError {
    match err {
        FetchError::Offline { missing } => FetchError::Offline {
            missing: missing
                .into_iter()
                .map(|m| format!("{what}: {m}"))
                .collect(),
        },
        other => other,
    }
}

async fn collect<T>(
    task: Task<T>,
    errors: &mut Vec<FetchError>,
    reports: &mut Vec<ItemReport>,
) -> Option<T> {
    match task.await.expect("resolve tasks do not panic") {
        Ok((value, item)) => {
            reports.push(item);
            Some(value)
        }
        Err(err) => {
            errors.push(err);
            None
        }
    }
}

/// One error for many: every offline miss in one list, other failures alongside.
pub(crate) fn combine(errors: Vec<FetchError>) -> FetchError {
    let mut missing = Vec::new();
    let mut others = Vec::new();
    for err in errors {
        match err {
            FetchError::Offline { missing: m } => missing.extend(m),
            other => others.push(other),
        }
    }
    if !missing.is_empty() {
        others.insert(0, FetchError::Offline { missing });
    }
    if others.len() == 1 {
        others.pop().expect("one error")
    } else {
        FetchError::Many { errors: others }
    }
}

fn check_update_names(spec: &Spec, update: &Update) -> Result<(), FetchError> {
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
    Err(FetchError::Api {
        what: "--update".into(),
        message: format!(
            "{} not in the spec; names are: {}",
            unknown
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            known
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}
