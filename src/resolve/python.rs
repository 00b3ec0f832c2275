//! The Python part of `resolve`: the requirement groups of the core and nodes (whose trees the
//! executor makes valid first) → a locked wheel set, kept when the groups did not change, else
//! resolved by uv; each new wheel fetched (its store path is its content's).

use super::{ItemReport, Resolver, Update};
use crate::derive::{BuildError, Derivation, Pinned};
use crate::lock::{LockedGit, LockedNode, LockedPython};
use crate::python::{find_uv, groups, locked_of, pinned_of, Compile, PinnedWheel, PythonError};
use crate::spec::Spec;

impl Resolver {
    /// Resolve the Python environment of `spec` (`None` when it has none: no `python` object and
    /// no requirements anywhere), fetching every wheel into the store.
    // Long on purpose: keep or compile the set, then fetch the new wheels concurrently, recording progress.
    pub(crate) async fn resolve_python(
        &self,
        spec: &Spec,
        core: &LockedGit,
        nodes: &[LockedNode],
        old: Option<&LockedPython>,
        update: &Update,
        progress: &mut Option<LockedPython>,
    ) -> Result<Option<(LockedPython, Vec<ItemReport>)>, BuildError> {
        let store = self.executor.store.clone();
        let groups = tokio::task::block_in_place(|| groups(&store, spec, core, nodes))?;
        if spec.python.is_none() && groups.iter().all(|g| g.requirements.is_empty()) {
            return Ok(None);
        }
        let wanted = spec.python.as_ref().and_then(|p| p.version.clone());
        let universal = spec.python.as_ref().is_some_and(|p| p.universal);
        let keep = old.filter(|o| {
            o.requirements == groups
                && wanted.as_ref().is_none_or(|v| *v == o.version)
                && o.universal.is_some() == universal
                && !update.covers(&["python"])
        });
        let (version, pinned, action, packages) = match keep {
            // Universal: this machine's wheels chosen again from the kept set.
            Some(kept) if kept.universal.is_some() && kept.wheels.is_empty() => {
                let packages = kept.universal.clone().expect("checked");
                self.interpreter(&kept.version).await;
                let pinned = tokio::task::block_in_place(|| {
                    let uv = find_uv(&store)?;
                    let interpreter =
                        crate::python::managed::interpreter(&store, &uv, &kept.version, false).ok();
                    crate::python::universal::select(&packages, interpreter.as_ref())
                })?;
                let pinned = pinned.into_iter().map(|p| (p, None)).collect();
                (kept.version.clone(), pinned, "kept", Some(packages))
            }
            Some(kept) => {
                let pinned: Vec<(PinnedWheel, Option<String>)> = kept
                    .wheels
                    .iter()
                    .map(|w| {
                        (
                            pinned_of(w),
                            // An interrupted resolve keeps wheels it had not fetched yet unnamed.
                            (!w.store_path.is_empty()).then(|| w.store_path.clone()),
                        )
                    })
                    .collect();
                (kept.version.clone(), pinned, "kept", kept.universal.clone())
            }
            None => {
                self.executor.run(&[Derivation::uv()]).await?;
                if let Some(version) = &wanted {
                    self.interpreter(version).await;
                }
                let (version, pinned, packages) =
                    self.compile(&groups, wanted.as_deref(), universal)?;
                (version, pinned, "resolved", packages)
            }
        };

        // What is pinned is kept even if a download fails, so the next resolve does not ask uv
        // again (`store_path` is filled in as wheels arrive).
        *progress = Some(LockedPython {
            version: version.clone(),
            requirements: groups.clone(),
            // An interrupted resolve keeps wheels it had not fetched yet unnamed.
            wheels: pinned
                .iter()
                .map(|(w, kept)| locked_of(w, kept.clone().unwrap_or_default()))
                .collect(),
            universal: packages.clone(),
        });
        // Kept wheels are pinned already (the executor makes them valid with the rest of the
        // lock); the others are pinned by the executor, all at once.
        let pins: Vec<Option<Derivation>> = pinned
            .iter()
            .map(|(wheel, kept)| {
                kept.is_none()
                    .then(|| Derivation::pin_wheel(wheel, action == "kept"))
            })
            .collect();
        let to_run: Vec<Derivation> = pins.iter().flatten().cloned().collect();
        let run = self.executor.run(&to_run).await;
        let mut wheels = Vec::new();
        let mut reports = Vec::new();
        for (i, ((wheel, kept), pin)) in pinned.iter().zip(&pins).enumerate() {
            let store_path = match (kept, pin) {
                (Some(path), _) => path.clone(),
                (None, Some(pin)) => match self.executor.pinned(pin) {
                    Some(Pinned::Wheel(locked)) => locked.store_path,
                    _ => continue,
                },
                (None, None) => continue,
            };
            if let Some(p) = progress.as_mut() {
                p.wheels[i].store_path = store_path.clone();
            }
            let locked = locked_of(wheel, store_path);
            reports.push(super::report_of(
                "wheel",
                &wheel.filename,
                action,
                &Pinned::Wheel(locked.clone()),
            ));
            wheels.push(locked);
        }
        run?;
        Ok(Some((
            LockedPython {
                version,
                requirements: groups,
                wheels,
                universal: packages,
            },
            reports,
        )))
    }

    /// Make the interpreter of `version` valid (installed into the store when the machine lacks
    /// it), through the executor; without one, uv resolves for the version alone.
    async fn interpreter(&self, version: &str) {
        if let Err(err) = self.executor.run(&Derivation::tools_for(version)).await {
            tracing::debug!("no interpreter for Python {version}: {err}");
        }
    }

    /// Lock the groups with uv for the wanted Python version (else the machine's): the pinned
    /// wheels, none stored yet (from a `--wheels-dir`, without URLs).
    #[allow(clippy::type_complexity)]
    fn compile(
        &self,
        groups: &[crate::python::Group],
        wanted: Option<&str>,
        universal: bool,
    ) -> Result<Compiled, BuildError> {
        let store = &self.executor.store;
        let offline = self.executor.offline();
        let (version, pinned, packages) = tokio::task::block_in_place(|| {
            let uv = find_uv(store)?;
            let interpreter = match wanted {
                Some(v) => crate::python::managed::interpreter(store, &uv, v, false)
                    .inspect_err(|e| tracing::debug!("no interpreter for Python {v}: {e}"))
                    .ok(),
                None => Some(uv.interpreter(None)?),
            };
            let version = wanted
                .map(str::to_string)
                .or_else(|| interpreter.as_ref().map(|i| i.minor_version()))
                .expect("an interpreter or a wanted version");
            // A staging directory holds the GC lock shared: the collector, which may clear the
            // uv cache, waits for uv to finish.
            let scratch = store.scratch()?;
            let compile = Compile {
                uv: &uv,
                scratch: scratch.path(),
                version: &version,
                interpreter: interpreter.as_ref(),
                wheels_dir: self.python.wheels_dir.as_deref(),
                offline,
                universal,
            };
            if universal {
                let packages = compile.run_universal(groups)?;
                let pinned = crate::python::universal::select(&packages, interpreter.as_ref())?;
                return Ok::<_, PythonError>((version, pinned, Some(packages)));
            }
            let pinned = compile.run(groups)?;
            Ok((version, pinned, None))
        })?;
        let from_dir = self.python.wheels_dir.is_some();
        let pinned = pinned
            .into_iter()
            .map(|mut p| {
                if from_dir {
                    p.url.clear();
                }
                (p, None)
            })
            .collect();
        Ok((version, pinned, packages))
    }
}

/// What `compile` resolved: the Python version, this machine's wheels (none stored yet), and the
/// universal set they were chosen from, when the spec asks for one.
type Compiled = (
    String,
    Vec<(PinnedWheel, Option<String>)>,
    Option<Vec<crate::lock::UniversalPackage>>,
);
