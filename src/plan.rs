//! The plan: spec + lock → a DAG of derivations, each with a stable id, its inputs, and its
//! output store path when the lock pins it. `realize --dry-run` shows it without changing anything.
//!
//! Kinds: `fetch-git` (core and git nodes), `fetch-archive` (registry nodes), `fetch-model`,
//! `fetch-wheel` (one per locked wheel), `build-venv` (whose inputs are the wheels), and
//! `assemble-home`, whose inputs are all the others.

use serde::Serialize;

use crate::lockfile::Lock;
use crate::resolve::{locked_core, locked_model, locked_node};
use crate::spec::{NodeSource, Spec};
use crate::store::Store;

/// One derivation.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Stable: derived from the kind, the name and what is pinned (or the spec's source).
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub inputs: Vec<String>,
    /// The store path, when the lock pins it.
    pub output: Option<String>,
    /// `valid` (in the store), `fetch` (pinned, to download or check out), `resolve` (not pinned
    /// yet: resolved first, then fetched), or `build`.
    pub state: &'static str,
    /// Bytes to download, when known.
    pub download_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub steps: usize,
    pub valid: usize,
    pub to_fetch: usize,
    pub to_resolve: usize,
    pub to_build: usize,
    /// Sum of the known download sizes.
    pub download_bytes: u64,
    /// Downloads whose size is not known before fetching.
    pub unknown_sizes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub version_id: String,
    /// `current`, `missing` or `stale`.
    pub lock: &'static str,
    /// The entries the lock does not pin as the spec says.
    pub stale: Vec<String>,
    pub steps: Vec<Step>,
    pub totals: Totals,
}

fn step_id(kind: &str, name: &str, identity: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [kind, name, identity] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// Plan the realization of `spec` with `lock` against what `store` holds (`None`: an empty store).
///
/// `venv` is the venv's input-addressed store path name when the caller could compute it (it
/// depends on the machine's interpreter and uv).
pub fn plan(store: Option<&Store>, spec: &Spec, lock: Option<&Lock>, venv: Option<&str>) -> Plan {
    let valid = |path: &str| store.is_some_and(|s| s.query(path).ok().flatten().is_some());
    let mut steps = Vec::new();
    // Optional models the lock lacks: fetched when they can be, left out (warning) when not.
    let mut optional: Vec<String> = Vec::new();
    let mut push =
        |kind: &'static str, name: String, source: &str, pinned: Option<(String, Option<u64>)>| {
            let (output, state, download_bytes) = match pinned {
                Some((path, _)) if valid(&path) => (Some(path), "valid", None),
                Some((path, size)) => (Some(path), "fetch", size),
                None => (None, "resolve", None),
            };
            let identity = output.clone().unwrap_or_else(|| source.to_string());
            steps.push(Step {
                id: step_id(kind, &name, &identity),
                kind,
                name,
                inputs: Vec::new(),
                output,
                state,
                download_bytes,
            });
        };

    push(
        "fetch-git",
        "comfy".into(),
        &spec.comfy.repo,
        lock.and_then(|l| locked_core(spec, l))
            .map(|g| (g.store_path.clone(), None)),
    );
    for node in &spec.custom_nodes {
        let locked = lock.and_then(|l| locked_node(node, l));
        match node.source() {
            NodeSource::Git { repo } => push(
                "fetch-git",
                node.dir_name(),
                repo,
                locked
                    .and_then(|n| n.git.as_ref())
                    .map(|g| (g.store_path.clone(), None)),
            ),
            NodeSource::Registry { id, .. } => push(
                "fetch-archive",
                node.dir_name(),
                id,
                locked
                    .and_then(|n| n.registry.as_ref())
                    .map(|r| (r.store_path.clone(), None)),
            ),
        }
    }
    if !spec.options.skip_models {
        for model in &spec.models {
            let name = model.name.clone().unwrap_or_else(|| model.file_name());
            let locked = lock.and_then(|l| locked_model(model, l));
            let optional_missing = locked.is_none() && !model.is_required();
            push(
                "fetch-model",
                name,
                model.source.as_str(),
                locked.map(|m| (m.store_path.clone(), Some(m.size))),
            );
            if optional_missing {
                optional.push(model.source.to_string());
            }
        }
    }
    let wheels = lock
        .and_then(|l| l.python.as_ref())
        .map(|p| p.wheels.as_slice())
        .unwrap_or_default();
    for wheel in wheels {
        push(
            "fetch-wheel",
            wheel.filename.clone(),
            &wheel.filename,
            Some((wheel.store_path.clone(), None)),
        );
    }
    match lock.and_then(|l| l.python.as_ref()) {
        Some(python) => {
            let first = steps.len() - wheels.len();
            let inputs: Vec<String> = steps[first..].iter().map(|s| s.id.clone()).collect();
            let (output, state) = match venv {
                Some(name) if valid(name) => (Some(name.to_string()), "valid"),
                Some(name) => (Some(name.to_string()), "build"),
                None => (None, "build"),
            };
            steps.push(Step {
                id: step_id("build-venv", &python.version, &inputs.join(",")),
                kind: "build-venv",
                name: format!("python{}", python.version),
                inputs,
                output,
                state,
                download_bytes: None,
            });
        }
        // Not locked yet: whether there is a Python environment is known after resolving.
        None if spec.python.is_some() => steps.push(Step {
            id: step_id("fetch-wheel", "python", "python"),
            kind: "fetch-wheel",
            name: "python".into(),
            inputs: Vec::new(),
            output: None,
            state: "resolve",
            download_bytes: None,
        }),
        None => {}
    }
    for step in steps
        .iter_mut()
        .filter(|s| s.kind == "fetch-model" && s.output.is_none())
    {
        let source_id = |source: &String| step_id("fetch-model", &step.name, source);
        if optional.iter().any(|source| source_id(source) == step.id) {
            step.state = "optional";
        }
    }
    let inputs: Vec<String> = steps.iter().map(|s| s.id.clone()).collect();
    let identity = inputs.join(",");
    steps.push(Step {
        id: step_id("assemble-home", &spec.version_id, &identity),
        kind: "assemble-home",
        name: spec.version_id.clone(),
        inputs,
        output: None,
        state: "build",
        download_bytes: None,
    });

    let mut totals = Totals {
        steps: steps.len(),
        ..Totals::default()
    };
    for step in &steps {
        match step.state {
            "valid" => totals.valid += 1,
            "fetch" => totals.to_fetch += 1,
            "resolve" | "optional" => totals.to_resolve += 1,
            _ => totals.to_build += 1,
        }
        if step.kind == "fetch-model" && step.state != "valid" {
            match step.download_bytes {
                Some(bytes) => totals.download_bytes += bytes,
                None => totals.unknown_sizes += 1,
            }
        }
    }
    let (lock_state, stale) = match lock {
        None => ("missing", Vec::new()),
        Some(lock) => {
            let stale = crate::resolve::stale_entries(spec, lock);
            (if stale.is_empty() { "current" } else { "stale" }, stale)
        }
    };
    Plan {
        version_id: spec.version_id.clone(),
        lock: lock_state,
        stale,
        steps,
        totals,
    }
}
