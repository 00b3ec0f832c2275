//! `store verify --repair`: re-run the derivation whose output is damaged or missing. The
//! derivations come from the locks the store keeps alive (home manifests and pinned versions hold
//! their `lock.json`): checkouts, registry archives, models, wheels, and the venvs this machine
//! would build for them.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::derive::exec::Executor;
use crate::derive::{derivations_of_lock, Derivation};
use crate::store::{Store, VerifyReport};

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub repaired: Vec<String>,
    /// `(path, why)` for what could not be repaired.
    pub failed: Vec<(String, String)>,
}

/// Every derivation the live roots' locks pin, by output path.
fn derivations(store: &Store) -> HashMap<String, Derivation> {
    let uv = crate::python::find_uv(store).ok();
    let mut out = HashMap::new();
    for root in store.all_roots().unwrap_or_default() {
        let Some(lock) = crate::lock::manifest::read(store, &root.path) else {
            continue;
        };
        // The venv's name depends on this machine's uv and interpreter.
        let venv = lock.python.as_ref().and_then(|python| {
            let uv = uv.as_ref()?;
            let interpreter =
                crate::python::managed::interpreter(store, uv, &python.version, false).ok()?;
            Some(crate::python::venv_name(uv, &interpreter, python))
        });
        for d in derivations_of_lock(&lock, venv.as_deref()) {
            if let Some(output) = d.output.clone() {
                out.insert(output, d);
            }
        }
    }
    out
}

/// Repair every missing or corrupted path of `report`.
pub async fn repair(executor: Arc<Executor>, report: &VerifyReport) -> RepairReport {
    let store = executor.store.clone();
    let known = derivations(&store);
    let mut out = RepairReport::default();
    let broken = report
        .missing
        .iter()
        .chain(report.corrupted.iter().map(|c| &c.path))
        .filter_map(|p| {
            std::path::Path::new(p)
                .file_name()?
                .to_str()
                .map(str::to_string)
        });
    for name in broken {
        let Some(derivation) = known.get(&name) else {
            out.failed
                .push((name, "no live lock names its source".into()));
            continue;
        };
        // Move the damaged copy and its damaged objects out of the way, then run the derivation
        // as usual: the add protocol sees the path missing and puts verified content back under
        // the same name (the executor refuses any other).
        let result = match tokio::task::block_in_place(|| store.discard_damaged(&name)) {
            Ok(()) => executor.realize(derivation).await,
            Err(err) => Err(err.into()),
        };
        match result {
            // An optional model that cannot be fetched is "left out" for a realize; not here.
            Ok(()) if !matches!(store.query(&name), Ok(Some(_))) => out
                .failed
                .push((name, "its source did not give it back".into())),
            Ok(()) => out.repaired.push(name),
            Err(err) => out.failed.push((name, err.to_string())),
        }
    }
    out
}
