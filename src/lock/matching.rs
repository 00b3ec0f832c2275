//! Matching a spec against an old lock: which entries still pin what the spec asks for, and what
//! a resolve would change.

use super::{Lock, LockedGit, LockedModel, LockedNode};
use crate::spec::{CustomNode, Model, NodeSource, Spec};

/// A spec's `commit`, if given, must be the locked commit (or a prefix of it).
fn commit_matches(wanted: &Option<String>, locked: &str) -> bool {
    wanted
        .as_ref()
        .is_none_or(|c| locked.starts_with(&c.to_ascii_lowercase()))
}

/// The lock's core entry, if it still matches the spec.
pub fn locked_core<'a>(spec: &Spec, lock: &'a Lock) -> Option<&'a LockedGit> {
    core_matches(spec, &lock.comfy).then_some(&lock.comfy)
}

/// Whether a locked core still pins what the spec asks for.
pub(crate) fn core_matches(spec: &Spec, locked: &LockedGit) -> bool {
    locked.repo == spec.comfy.repo
        && locked.git_ref == spec.comfy.git_ref
        && commit_matches(&spec.comfy.commit, &locked.commit)
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
        // Its place is decided against the spec's directory when resolving.
        NodeSource::Local { .. } => locked.local.is_some(),
    };
    matches.then_some(locked)
}

/// The lock's entry for a spec model (same source, same folder, and the spec's `filename` when it
/// names one: without it, the file name is the source's and the lock remembers it), if it still
/// matches.
pub fn locked_model<'a>(model: &Model, lock: &'a Lock) -> Option<&'a LockedModel> {
    lock.models
        .iter()
        .find(|m| {
            m.source == model.source
                && m.target_subdir == model.target_subdir
                && model.filename.as_ref().is_none_or(|f| *f == m.filename)
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
    let locked_workflows: Vec<&str> = lock.workflows.iter().map(|w| w.path.as_str()).collect();
    if locked_workflows
        != spec
            .workflows
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    {
        stale.push("workflows".into());
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
