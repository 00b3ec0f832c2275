//! The Python part of `resolve`: requirements → a locked wheel set; and how one wheel is fetched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{requirements, Compile, Group, PinnedWheel, PythonError, Uv};
use crate::fetch::http::{Download, Got};
use crate::fetch::{Expected, FetchError, Origin};
use crate::lock::{LockedGit, LockedNode, LockedPython, LockedWheel};
use crate::resolve::{ItemReport, Resolver, Update};
use crate::spec::Spec;
use crate::store::{sanitize_name, AddOptions, Store};

/// The requirement groups of a version whose core and nodes are in the store: the core, each
/// enabled node, then the spec's own.
pub fn groups(
    store: &Store,
    spec: &Spec,
    core: &LockedGit,
    nodes: &[LockedNode],
) -> Result<Vec<Group>, PythonError> {
    let mut out = vec![requirements::of_tree(
        "core",
        &store.path_of(&core.store_path),
    )?];
    for node in nodes.iter().filter(|n| n.enabled) {
        let path = match (&node.git, &node.registry) {
            (Some(g), _) => &g.store_path,
            (_, Some(r)) => &r.store_path,
            _ => continue,
        };
        out.push(requirements::of_tree(
            &format!("node `{}`", node.name),
            &store.path_of(path),
        )?);
    }
    out.push(Group {
        origin: "spec".into(),
        requirements: spec
            .python
            .as_ref()
            .map(|p| p.requirements.clone())
            .unwrap_or_default(),
    });
    Ok(out)
}

/// Find uv with the store's cache.
pub fn find_uv(store: &Store) -> Result<Uv, PythonError> {
    Uv::find(|k| std::env::var(k).ok(), &store.root().join("cache/uv"))
}

impl Resolver {
    /// Resolve the Python environment of `spec` (`None` when it has none: no `python` object and
    /// no requirements anywhere), fetching every wheel into the store.
    pub(crate) async fn resolve_python(
        &self,
        spec: &Spec,
        core: &LockedGit,
        nodes: &[LockedNode],
        old: Option<&LockedPython>,
        update: &Update,
        progress: &mut Option<LockedPython>,
    ) -> Result<Option<(LockedPython, Vec<ItemReport>)>, FetchError> {
        let store = self.store.clone();
        let groups = tokio::task::block_in_place(|| groups(&store, spec, core, nodes))?;
        if spec.python.is_none() && groups.iter().all(|g| g.requirements.is_empty()) {
            return Ok(None);
        }
        let wanted = spec.python.as_ref().and_then(|p| p.version.clone());
        let keep = old.filter(|o| {
            o.requirements == groups
                && wanted.as_ref().is_none_or(|v| *v == o.version)
                && !update.covers(&["python"])
        });
        let (version, pinned, action) = match keep {
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
                (kept.version.clone(), pinned, "kept")
            }
            None => {
                let offline = self.client.config().offline;
                let settings = self.python.clone();
                let (version, pinned) = tokio::task::block_in_place(|| {
                    let uv = find_uv(&store)?;
                    let interpreter = match &wanted {
                        Some(v) => uv.interpreter(Some(v)).ok(),
                        None => Some(uv.interpreter(None)?),
                    };
                    let version = wanted
                        .clone()
                        .or_else(|| interpreter.as_ref().map(|i| i.minor_version()))
                        .expect("an interpreter or a wanted version");
                    // A staging directory holds the GC lock shared: the collector, which may
                    // clear the uv cache, waits for uv to finish.
                    let scratch = store.staging()?;
                    let pinned = Compile {
                        uv: &uv,
                        scratch: scratch.path(),
                        version: &version,
                        interpreter: interpreter.as_ref(),
                        wheels_dir: settings.wheels_dir.as_deref(),
                        offline,
                    }
                    .run(&groups)?;
                    Ok::<_, PythonError>((version, pinned))
                })?;
                let from_dir = self.python.wheels_dir.is_some();
                let pinned: Vec<(PinnedWheel, Option<String>)> = pinned
                    .into_iter()
                    .map(|mut p| {
                        if from_dir {
                            p.url.clear();
                        }
                        (p, None)
                    })
                    .collect();
                (version, pinned, "resolved")
            }
        };

        // What is pinned is kept even if a download fails, so the next resolve does not ask uv
        // again (`store_path` is filled in as wheels arrive).
        *progress = Some(LockedPython {
            version: version.clone(),
            requirements: groups.clone(),
            wheels: pinned
                .iter()
                .map(|(w, kept)| LockedWheel {
                    name: w.name.clone(),
                    version: w.version.clone(),
                    filename: w.filename.clone(),
                    url: (!w.url.is_empty()).then(|| w.url.clone()),
                    sha256: w.sha256.clone(),
                    store_path: kept.clone().unwrap_or_default(),
                })
                .collect(),
        });
        let mut tasks = Vec::new();
        let jobs = Arc::new(tokio::sync::Semaphore::new(self.client.config().jobs));
        for (wheel, kept) in pinned {
            tasks.push(self.wheel_task(wheel, kept, action, jobs.clone()));
        }
        let mut wheels = Vec::new();
        let mut reports = Vec::new();
        let mut errors = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.expect("wheel tasks do not panic") {
                Ok((wheel, report)) => {
                    if let Some(p) = progress.as_mut() {
                        p.wheels[i].store_path = wheel.store_path.clone();
                    }
                    wheels.push(wheel);
                    reports.push(report);
                }
                Err(err) => errors.push(err),
            }
        }
        if !errors.is_empty() {
            return Err(crate::resolve::combine(errors));
        }
        Ok(Some((
            LockedPython {
                version,
                requirements: groups,
                wheels,
            },
            reports,
        )))
    }

    fn wheel_task(
        &self,
        wheel: PinnedWheel,
        kept: Option<String>,
        action: &'static str,
        jobs: Arc<tokio::sync::Semaphore>,
    ) -> tokio::task::JoinHandle<Result<(LockedWheel, ItemReport), FetchError>> {
        let store = self.store.clone();
        let client = self.client.clone();
        let reporter = self.reporter.clone();
        let wheels_dir = self.python.wheels_dir.clone();
        let executor = self.executor.clone();
        tokio::spawn(async move {
            let done = |store_path: String| {
                let report = ItemReport {
                    kind: "wheel",
                    name: wheel.filename.clone(),
                    action,
                    pin: format!(
                        "{} sha256:{}",
                        wheel.version,
                        &wheel.sha256[..16.min(wheel.sha256.len())]
                    ),
                    store_path: store_path.clone(),
                };
                let locked = LockedWheel {
                    name: wheel.name.clone(),
                    version: wheel.version.clone(),
                    filename: wheel.filename.clone(),
                    url: (!wheel.url.is_empty()).then(|| wheel.url.clone()),
                    sha256: wheel.sha256.clone(),
                    store_path,
                };
                (locked, report)
            };
            // A kept wheel is pinned: the executor makes it valid with the rest of the lock.
            if let Some(path) = kept {
                return Ok(done(path));
            }
            let source = WheelSource {
                wheels_dir: wheels_dir.as_deref(),
                from_lock: action == "kept",
            };
            let got =
                fetch_wheel(&store, &client, reporter.as_ref(), &source, &wheel, &jobs).await?;
            let (locked, report) = done(got);
            executor.record(
                &crate::build::Derivation::wheel(&locked),
                Some(locked.store_path.clone()),
                crate::build::exec::How::Fetched,
            );
            Ok((locked, report))
        })
    }
}

/// Where a wheel may come from besides its URL.
pub struct WheelSource<'a> {
    /// `--wheels-dir`: the only place wheels come from when given.
    pub wheels_dir: Option<&'a Path>,
    /// Whether the SHA-256 is the lock's (else the index's), for messages.
    pub from_lock: bool,
}

impl WheelSource<'_> {
    /// Whether fetching `url` needs the network.
    pub fn needs_network(&self, url: Option<&str>) -> bool {
        self.wheels_dir.is_none() && url.is_some_and(|u| !u.starts_with("file:"))
    }
}

/// Put `wheel` into the store: the same file stored already, else from `--wheels-dir`, a
/// `file://` URL, or a download bounded by `jobs`. Returns the store path.
pub async fn fetch_wheel(
    store: &Store,
    client: &crate::fetch::http::Client,
    reporter: &dyn crate::reporter::Reporter,
    source: &WheelSource<'_>,
    wheel: &PinnedWheel,
    jobs: &tokio::sync::Semaphore,
) -> Result<String, FetchError> {
    let what = format!("wheel `{}`", wheel.filename);
    let options = AddOptions {
        name: Some(sanitize_name(&wheel.filename)),
        references: Vec::new(),
    };
    // The same file may be in the store already, for another version's lock.
    if let Some(found) = tokio::task::block_in_place(|| stored_wheel(store, wheel))? {
        return Ok(found);
    }
    if let Some(dir) = source.wheels_dir {
        let file = dir.join(&wheel.filename);
        return tokio::task::block_in_place(|| add_local_wheel(store, &file, wheel, &options, dir));
    }
    if wheel.url.is_empty() {
        return Err(FetchError::Api {
            what,
            message: "the lock has no URL for it (it was resolved from a `--wheels-dir`); pass `--wheels-dir`".into(),
        });
    }
    let url = url::Url::parse(&wheel.url).map_err(|e| FetchError::Api {
        what: what.clone(),
        message: format!("bad URL `{}`: {e}", wheel.url),
    })?;
    if url.scheme() == "file" {
        let file = url.to_file_path().map_err(|()| FetchError::Api {
            what: what.clone(),
            message: format!("bad file URL `{url}`"),
        })?;
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        return tokio::task::block_in_place(|| {
            add_local_wheel(store, &file, wheel, &options, &dir)
        });
    }
    let _permit = jobs.acquire().await.expect("the semaphore is never closed");
    let from = if source.from_lock {
        Origin::Lock
    } else {
        Origin::Source {
            who: "the package index".into(),
        }
    };
    let download = Download {
        what,
        auth: None,
        url,
        size: wheel.size,
        sha256: Some(Expected::new(&wheel.sha256, from)),
        blake3: None,
        file_name: wheel.filename.clone(),
        store_name: options.name.clone(),
    };
    match client.download(store, reporter, &download).await? {
        Got::Stored(stored) => Ok(stored.store_path),
        Got::Fetched(fetched) => {
            let fetched = *fetched;
            let digest = fetched.blake3;
            let added = tokio::task::block_in_place(|| {
                store.add_staged(fetched.staging, &wheel.filename, &options, Some(digest))
            })?;
            fetched.receipt.stored(&added.record.name);
            Ok(added.record.name)
        }
    }
}

/// The pin of a locked wheel, to fetch it again.
pub fn pinned_of(wheel: &LockedWheel) -> PinnedWheel {
    PinnedWheel {
        name: wheel.name.clone(),
        version: wheel.version.clone(),
        filename: wheel.filename.clone(),
        url: wheel.url.clone().unwrap_or_default(),
        sha256: wheel.sha256.clone(),
        size: None,
    }
}

/// A valid store path holding exactly this wheel (same file name and SHA-256), protected.
fn stored_wheel(store: &Store, wheel: &PinnedWheel) -> Result<Option<String>, FetchError> {
    for record in store.named(&sanitize_name(&wheel.filename))? {
        store.protect(&[&record.name])?;
        let path = store.path_of(&record.name);
        if sha256_of(&path).is_ok_and(|h| h.eq_ignore_ascii_case(&wheel.sha256)) {
            return Ok(Some(record.name));
        }
    }
    Ok(None)
}

/// Add a wheel from a local directory, checking its SHA-256 against the lock first.
fn add_local_wheel(
    store: &Store,
    file: &Path,
    wheel: &PinnedWheel,
    options: &AddOptions,
    dir: &Path,
) -> Result<String, FetchError> {
    if !file.is_file() {
        return Err(PythonError::MissingWheel {
            filename: wheel.filename.clone(),
            dir: PathBuf::from(dir),
        }
        .into());
    }
    let actual = sha256_of(file).map_err(FetchError::io(file))?;
    Expected::new(&wheel.sha256, Origin::Lock).check(
        &format!("wheel `{}`", wheel.filename),
        &file.display().to_string(),
        "SHA-256",
        &actual,
    )?;
    Ok(store
        .add_path(file, options, &crate::reporter::NoReporter)?
        .record
        .name)
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}
