//! What a failed resolve did resolve, so the next one continues from it.

use super::{Lock, LockedGit, LockedModel, LockedNode, Spec, LOCK_VERSION};
use crate::lock::core_matches;
use crate::store::{sanitize_name, Store};

/// What a failed resolve did resolve, kept in `cache/resolutions/<version_id>.json` so the next
/// resolve of the version fetches only what is missing and does not run uv's resolution again.
/// Its entries are used only where they still match the spec; it is removed by a successful
/// resolve. It names no secret, as a lock names none.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Partial {
    pub(super) version_id: String,
    pub(super) comfy: Option<LockedGit>,
    pub(super) custom_nodes: Vec<LockedNode>,
    pub(super) models: Vec<LockedModel>,
    /// The pinned wheel set; wheels not fetched yet have an empty `store_path`.
    pub(super) python: Option<crate::lock::LockedPython>,
}

impl Partial {
    /// A whole lock whose paths are not all in the store yet.
    pub(super) fn of(lock: &Lock) -> Partial {
        Partial {
            version_id: lock.version_id.clone(),
            comfy: Some(lock.comfy.clone()),
            custom_nodes: lock.custom_nodes.clone(),
            models: lock.models.clone(),
            python: lock.python.clone(),
        }
    }

    pub(super) fn path(store: &Store, version_id: &str) -> std::path::PathBuf {
        store
            .cache_dir(crate::store::layout::Cache::Resolutions)
            .join(format!("{}.json", sanitize_name(version_id)))
    }

    pub(super) fn load(store: &Store, version_id: &str) -> Option<Partial> {
        let text = std::fs::read_to_string(Partial::path(store, version_id)).ok()?;
        serde_json::from_str::<Partial>(&text)
            .ok()
            .filter(|p| p.version_id == version_id)
    }

    pub(super) fn save(&self, store: &Store) {
        let path = Partial::path(store, &self.version_id);
        let temp = path.with_extension(format!("json.{}", std::process::id()));
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&temp, serde_json::to_vec_pretty(self)?))
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            tracing::warn!(
                "cannot keep the partial resolution at `{}`: {e}",
                path.display()
            );
        }
    }

    pub(super) fn clear(store: &Store, version_id: &str) {
        let _ = std::fs::remove_file(Partial::path(store, version_id));
    }

    /// A lock to resolve against: each entry from this record where it matches the spec, else
    /// from the old lock.
    pub(super) fn over(self, spec: &Spec, old: Option<&Lock>) -> Option<Lock> {
        let comfy = self
            .comfy
            .filter(|c| core_matches(spec, c))
            .or_else(|| old.map(|l| l.comfy.clone()))?;
        let mut custom_nodes = self.custom_nodes;
        for node in old.map(|l| l.custom_nodes.as_slice()).unwrap_or_default() {
            if !custom_nodes.iter().any(|n| n.name == node.name) {
                custom_nodes.push(node.clone());
            }
        }
        let mut models = self.models;
        for model in old.map(|l| l.models.as_slice()).unwrap_or_default() {
            if !models
                .iter()
                .any(|m| m.key() == model.key() && m.source == model.source)
            {
                models.push(model.clone());
            }
        }
        Some(Lock {
            lock_version: LOCK_VERSION,
            version_id: spec.version_id.clone(),
            comfy,
            custom_nodes,
            models,
            python: self.python.or_else(|| old.and_then(|l| l.python.clone())),
            workflows: old.map(|l| l.workflows.clone()).unwrap_or_default(),
        })
    }
}
