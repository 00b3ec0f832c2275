//! The plan: spec + lock → a DAG of derivations, each with a stable id, its inputs, and its
//! output store path when the lock pins it. `realize --dry-run` shows it without changing anything.
//!
//! Kinds: `fetch-git` (core and git nodes), `fetch-archive` (registry nodes), `fetch-model`,
//! `fetch-uv` and `fetch-python` (the tools a venv is built with: the machine's, or fetched into
//! the store), `fetch-wheel` (one per locked wheel), `build-venv` (whose inputs are the wheels),
//! and `assemble-home`, whose inputs are all the others.

use serde::Serialize;

use crate::derive::Action;
use crate::lock::Lock;
use crate::spec::Spec;
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
    /// `valid` (in the store), `fetch` (pinned, to download or check out), `substitute` (pinned,
    /// and a substituter holds it), `resolve` (not pinned yet: resolved first, then fetched), or
    /// `build`.
    pub state: &'static str,
    /// Bytes to download, when known.
    pub download_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub steps: usize,
    pub valid: usize,
    pub to_fetch: usize,
    /// Outputs a substituter holds (and the references it would bring with them).
    pub to_substitute: usize,
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

/// Whether the interpreter of Python `version` is here, nothing installed.
fn has_interpreter(store: Option<&Store>, version: &str) -> bool {
    let Some(store) = store else {
        return false;
    };
    crate::python::find_uv(store)
        .and_then(|uv| crate::python::managed::interpreter(store, &uv, version, false))
        .is_ok()
}

/// Plan the realization of `spec` with `lock` against what `store` holds (`None`: an empty store):
/// the derivations [`crate::derive::derivations`] gives — the ones the executor runs — each with
/// whether the store already has its output.
///
/// `venv` is the venv's input-addressed store path name when the caller could compute it (it
/// depends on the machine's interpreter and uv).
pub fn plan(
    store: Option<&Store>,
    spec: &Spec,
    lock: Option<&Lock>,
    venv: Option<&str>,
    skip_models: bool,
) -> Plan {
    let derivations = crate::derive::derivations(spec, lock, venv, skip_models);
    plan_of(store, spec, lock, derivations, &[])
}

/// The plan of `derivations` (those of `spec` and `lock`, with any this machine adds: its torch
/// backend's overlay) against what `store` holds.
pub fn plan_of(
    store: Option<&Store>,
    spec: &Spec,
    lock: Option<&Lock>,
    derivations: Vec<crate::derive::Derivation>,
    substituters: &[crate::cache::Cache],
) -> Plan {
    let valid = |path: &str| store.is_some_and(|s| s.query(path).ok().flatten().is_some());
    let steps: Vec<Step> = derivations
        .into_iter()
        .map(|d| {
            let state = match (&d.action, &d.output) {
                (a, _) if a.is_pin() && a.is_optional() => "optional",
                (a, _) if a.is_pin() => "resolve",
                (Action::Unpinned, _) => "resolve",
                (Action::Home(_), _) => "build",
                (Action::Venv { .. }, Some(out)) if valid(out) => "valid",
                (Action::Venv { .. }, _) => "build",
                (Action::Uv, _) if store.is_some_and(|s| crate::python::find_uv(s).is_ok()) => {
                    "valid"
                }
                (Action::Interpreter { version }, _) if has_interpreter(store, version) => "valid",
                (
                    Action::Overlay {
                        python,
                        backend,
                        index,
                    },
                    _,
                ) => match store.map(|s| crate::python::torch::stored(s, python, backend, index)) {
                    Some(Ok((_, Some(_)))) => "valid",
                    _ => "build",
                },
                (_, Some(out)) if valid(out) => "valid",
                _ => "fetch",
            };
            Step {
                download_bytes: d.download_bytes.filter(|_| state == "fetch"),
                id: d.id,
                kind: d.kind.as_str(),
                name: d.name,
                inputs: d.inputs,
                output: d.output,
                state,
            }
        })
        .collect();

    let steps = substitutes(store, steps, substituters);
    let mut totals = Totals {
        steps: steps.len(),
        ..Totals::default()
    };
    for step in &steps {
        match step.state {
            "valid" => totals.valid += 1,
            "fetch" => totals.to_fetch += 1,
            "substitute" => totals.to_substitute += 1,
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
            let stale = crate::lock::stale_entries(spec, lock);
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

/// The steps with what the substituters hold (asked as the executor asks them: in order, the
/// first that has a path gives it): a step whose pinned output one holds is `substitute` (its
/// archive's size to download), and each path that output references which neither the store
/// nor another step has becomes a `fetch-reference` step after it — what `realize --json` then
/// reports the cache brought. A substituter that cannot be asked is passed over (realize says why).
fn substitutes(
    store: Option<&Store>,
    steps: Vec<Step>,
    substituters: &[crate::cache::Cache],
) -> Vec<Step> {
    if substituters.is_empty() {
        return steps;
    }
    let valid = |path: &str| store.is_some_and(|s| s.query(path).ok().flatten().is_some());
    let entry = |name: &str| {
        substituters
            .iter()
            .find_map(|cache| cache.entry(name).ok().flatten())
    };
    let mut seen: std::collections::HashSet<String> =
        steps.iter().filter_map(|s| s.output.clone()).collect();
    let mut out = Vec::with_capacity(steps.len());
    for mut step in steps {
        let held = match (&step.output, step.state) {
            (Some(output), "fetch" | "build") => entry(output),
            _ => None,
        };
        let Some(held) = held else {
            out.push(step);
            continue;
        };
        step.state = "substitute";
        step.download_bytes = Some(held.archive_size);
        out.push(step);
        // The references it brings, references first as the cache puts them in the store.
        let mut queue: Vec<String> = held.meta.references.clone();
        let mut brought = Vec::new();
        while let Some(name) = queue.pop() {
            if valid(&name) || !seen.insert(name.clone()) {
                continue;
            }
            let Some(entry) = entry(&name) else { continue };
            queue.extend(entry.meta.references.iter().cloned());
            let d = crate::derive::Derivation::reference(name);
            brought.push(Step {
                id: d.id,
                kind: d.kind.as_str(),
                name: d.name,
                inputs: d.inputs,
                output: d.output,
                state: "substitute",
                download_bytes: Some(entry.archive_size),
            });
        }
        out.extend(brought.into_iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Add;

    fn step(output: &str, state: &'static str) -> Step {
        Step {
            id: format!("id-{output}"),
            kind: "fetch-model",
            name: output.into(),
            inputs: Vec::new(),
            output: Some(output.into()),
            state,
            download_bytes: None,
        }
    }

    /// A path a substituter holds is `substitute`, and what it references that neither the store
    /// nor the plan has becomes a `fetch-reference` step — the derivation (same id) the executor
    /// reports the cache brought — references first; what the store has is not listed.
    #[test]
    fn substituters_are_asked_as_realize_asks_them() {
        let scratch = tempfile::tempdir().unwrap();
        let from = Store::open(&scratch.path().join("from")).unwrap();
        let deep = from
            .add_bytes("deep.bin", b"deep", &[])
            .unwrap()
            .record
            .name;
        let lib = from
            .add_bytes("lib.bin", b"lib", std::slice::from_ref(&deep))
            .unwrap();
        let lib = lib.record.name;
        let there = from.add_bytes("there.bin", b"there", &[]).unwrap();
        let there = there.record.name;
        let refs = [lib.clone(), there.clone()];
        let out = from
            .add_bytes("out.bin", b"out", &refs)
            .unwrap()
            .record
            .name;
        let cache =
            crate::cache::Cache::open(&scratch.path().join("cache").display().to_string()).unwrap();
        cache.push(&from, std::slice::from_ref(&out), None).unwrap();

        let to = Store::open(&scratch.path().join("to")).unwrap();
        to.add_bytes("there.bin", b"there", &[]).unwrap();
        let steps = vec![step("other", "fetch"), step(&out, "fetch")];
        let got = substitutes(Some(&to), steps, &[cache]);
        let seen: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|s| (s.kind, s.state, s.output.as_deref().unwrap()))
            .collect();
        assert_eq!(
            seen,
            [
                ("fetch-model", "fetch", "other"),
                ("fetch-model", "substitute", out.as_str()),
                ("fetch-reference", "substitute", deep.as_str()),
                ("fetch-reference", "substitute", lib.as_str()),
            ]
        );
        assert_eq!(got[3].id, crate::derive::Derivation::reference(lib).id);
        assert!(got[1].download_bytes.is_some_and(|b| b > 0));
    }
}
