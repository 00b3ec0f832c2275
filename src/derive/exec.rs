//! The executor: runs a DAG of derivations, each once per process.
//!
//! For each derivation whose inputs are done: its output is protected (a temporary root) *before*
//! the store is asked whether it is valid; a valid output is done. Otherwise each substituter is
//! asked; then, offline, a derivation that needs the network is refused (the one place that
//! decides it: its description joins the list of what the store lacks); else it is fetched or
//! built, and the path it gives must be the pinned one. Network steps run concurrently, bounded by
//! `jobs`; git and uv work runs on blocking threads. Every failure is collected; an optional
//! model that fails is left out with a warning. Outcomes are remembered under the derivation ids,
//! so a derivation that `resolve` needed early (a node's tree, for its requirements) is not run
//! again and is reported as what it was the first time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Action, BuildError, Derivation, Kind, Pinned};
use crate::fetch::http::Client;
use crate::fetch::{git, indexed, model, registry, Expected, FetchError, Origin};
use crate::lock::{LockedGit, LockedModel, LockedRegistry};
use crate::reporter::Reporter;
use crate::spec::{ModelSource, SourceKind};
use crate::store::Add;
use crate::store::{sanitize_name, Store};

/// How a derivation's output came to be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// It was in the store already.
    Valid,
    /// Downloaded, or checked out of a git mirror.
    Fetched,
    /// Built (a venv, the home).
    Built,
    /// Taken from a substituter.
    Substituted,
    /// An optional model that could not be fetched, left out.
    Missing,
}

/// One derivation's outcome, under the id the plan gives it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub output: Option<String>,
    pub outcome: How,
    /// The substituter it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A pin's lock entry.
    #[serde(skip)]
    pub pinned: Option<Pinned>,
    /// An assembled home's report.
    #[serde(skip)]
    pub home: Option<Box<crate::realize::RealizeReport>>,
}

impl Outcome {
    fn new(derivation: &Derivation, output: Option<String>, how: How) -> Outcome {
        Outcome {
            id: derivation.id.clone(),
            kind: derivation.kind,
            name: derivation.name.clone(),
            output,
            outcome: how,
            from: None,
            pinned: None,
            home: None,
        }
    }
}

/// A source of store paths asked before anything is fetched or built (a binary cache). It puts
/// the derivation's output into the store, verified, with what it references.
pub trait Substituter: Send + Sync {
    /// Where it is, for reports (never a credential).
    fn location(&self) -> String;
    /// `None` when it lacks the output; else the references it put in the store besides (each
    /// protected and verified), which the executor reports as derivations of their own.
    fn substitute(
        &self,
        store: &Store,
        derivation: &Derivation,
    ) -> Result<Option<Vec<String>>, BuildError>;
}

/// The shared state of one process's execution.
pub struct Executor {
    pub store: Arc<Store>,
    pub client: Arc<Client>,
    pub reporter: Arc<dyn Reporter>,
    /// `--wheels-dir`: wheels come from there only.
    pub wheels_dir: Option<PathBuf>,
    pub substituters: Vec<Arc<dyn Substituter>>,
    /// `--models-in-place`: a model pinned from a file of the models index stays where it lies
    /// (its store path named, not made).
    pub models_in_place: bool,
    jobs: Arc<tokio::sync::Semaphore>,
    outcomes: Mutex<BTreeMap<String, Outcome>>,
    /// Where a substituted output came from (a cache, a file of this machine as a `file://`
    /// URL), by derivation id, for its outcome.
    origins: Mutex<BTreeMap<String, String>>,
    /// Per output path, how its first derivation made it valid: two derivations with one output
    /// (the same model under two names) run it once and both report what happened.
    producing: Mutex<BTreeMap<String, Arc<tokio::sync::OnceCell<Made>>>>,
}

/// How an output was made valid, by which derivation, for the others with the same output.
#[derive(Clone)]
struct Made {
    id: String,
    output: Option<String>,
    how: How,
    from: Option<String>,
}

impl Executor {
    pub fn new(
        store: Arc<Store>,
        client: Arc<Client>,
        reporter: Arc<dyn Reporter>,
        wheels_dir: Option<PathBuf>,
    ) -> Executor {
        let jobs = Arc::new(tokio::sync::Semaphore::new(client.config().jobs.max(1)));
        Executor {
            store,
            client,
            reporter,
            wheels_dir,
            substituters: Vec::new(),
            models_in_place: false,
            jobs,
            outcomes: Mutex::new(BTreeMap::new()),
            origins: Mutex::new(BTreeMap::new()),
            producing: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn offline(&self) -> bool {
        self.client.config().offline
    }

    /// Record what became of `derivation` (the first record of an id stays).
    pub fn record(&self, derivation: &Derivation, output: Option<String>, how: How) {
        self.insert(Outcome::new(derivation, output, how));
    }

    /// Where `id`'s substituted output came from, taken for its outcome.
    fn taken_from(&self, id: &str) -> Option<String> {
        self.origins.lock().expect("never poisoned").remove(id)
    }

    /// Note where `id`'s output came from: it was substituted.
    fn substituted_from(&self, id: &str, from: String) -> How {
        let mut origins = self.origins.lock().expect("never poisoned");
        origins.insert(id.to_string(), from);
        How::Substituted
    }

    /// How a model fetch went: substituted from a file of this machine, or fetched.
    fn fetched_model(&self, d: &Derivation, fetched: &model::FetchedModel) -> How {
        match &fetched.taken_from {
            Some(from) => self.substituted_from(&d.id, format!("file://{}", from.display())),
            None => How::Fetched,
        }
    }

    /// With `--models-in-place`, the indexed file (unchanged since hashed) that holds the model
    /// `d` fetches: its output stays there, never taken into the store.
    fn in_place(&self, d: &Derivation) -> Result<Option<crate::store::db::KnownFile>, BuildError> {
        let Action::Model { locked } = &d.action else {
            return Ok(None);
        };
        if !self.models_in_place {
            return Ok(None);
        }
        let blake3 = Expected::new(&locked.blake3, Origin::Lock);
        let wanted = indexed::Wanted {
            blake3: Some(&blake3),
            sha256: None,
            size: Some(locked.size),
        };
        Ok(indexed::in_place(&self.store, &wanted)?)
    }

    /// Keep `outcome` unless its id has one already.
    fn insert(&self, outcome: Outcome) {
        self.outcomes
            .lock()
            .expect("outcomes are never poisoned")
            .entry(outcome.id.clone())
            .or_insert(outcome);
    }

    /// The report of a home this executor assembled.
    pub fn home(&self, home: &Derivation) -> Option<crate::realize::RealizeReport> {
        self.recorded(&home.id).and_then(|o| o.home).map(|h| *h)
    }

    /// What a pin that ran gave (`None`: it did not run, failed, or was left out).
    pub fn pinned(&self, pin: &Derivation) -> Option<Pinned> {
        self.recorded(&pin.id).and_then(|o| o.pinned)
    }

    fn recorded(&self, id: &str) -> Option<Outcome> {
        self.outcomes
            .lock()
            .expect("outcomes are never poisoned")
            .get(id)
            .cloned()
    }

    /// Every outcome so far, in the order of `plan` (the ones it names), then the rest by id.
    pub fn outcomes(&self, plan: &[Derivation]) -> Vec<Outcome> {
        let all = self.outcomes.lock().expect("outcomes are never poisoned");
        let mut out: Vec<Outcome> = plan
            .iter()
            .filter_map(|d| all.get(&d.id).cloned())
            .collect();
        out.extend(
            all.values()
                .filter(|o| !plan.iter().any(|d| d.id == o.id))
                .cloned(),
        );
        out
    }

    /// Run `derivations` (their inputs first), except a home with nothing to assemble (a plan's).
    /// Returns the outcomes of those that ran; every failure is in the error.
    pub async fn run(
        self: &Arc<Self>,
        derivations: &[Derivation],
    ) -> Result<Vec<Outcome>, BuildError> {
        self.check_space(derivations)?;
        let mut done: BTreeMap<String, bool> = BTreeMap::new();
        let mut errors = Vec::new();
        let pending: Vec<&Derivation> = derivations
            .iter()
            .filter(|d| !matches!(d.action, Action::Home(None)))
            .collect();
        loop {
            let ready: Vec<&Derivation> = pending
                .iter()
                .copied()
                .filter(|d| !done.contains_key(&d.id))
                .filter(|d| {
                    d.inputs
                        .iter()
                        .all(|i| done.contains_key(i) || !pending.iter().any(|p| p.id == *i))
                })
                .collect();
            if ready.is_empty() {
                break;
            }
            let mut tasks = Vec::new();
            for d in &ready {
                // A derivation whose input failed is not run; the input's error says why.
                if d.inputs.iter().any(|i| done.get(i) == Some(&false)) {
                    done.insert(d.id.clone(), false);
                    continue;
                }
                let this = self.clone();
                let d = (*d).clone();
                tasks.push((
                    d.id.clone(),
                    tokio::spawn(async move { this.realize(&d).await }),
                ));
            }
            for (id, task) in tasks {
                match task.await.expect("derivations do not panic") {
                    Ok(()) => {
                        done.insert(id, true);
                    }
                    Err(err) => {
                        done.insert(id, false);
                        errors.push(err);
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(super::combine(errors));
        }
        Ok(self.outcomes(derivations))
    }

    /// Fail before downloading when the models to fetch do not fit on the store's filesystem.
    fn check_space(&self, derivations: &[Derivation]) -> Result<(), BuildError> {
        let mut needed = 0u64;
        for d in derivations.iter().filter(|d| d.kind == Kind::FetchModel) {
            if let (Some(output), Some(bytes)) = (&d.output, d.download_bytes) {
                if self.store.query(output)?.is_none() && self.in_place(d)?.is_none() {
                    needed += bytes;
                }
            }
        }
        if needed == 0 {
            return Ok(());
        }
        Ok(crate::fetch::check_space(
            "the models to download",
            self.store.root(),
            needed,
        )?)
    }

    /// Make one derivation's output valid, recording how.
    pub async fn realize(&self, d: &Derivation) -> Result<(), BuildError> {
        if self.recorded(&d.id).is_some() {
            return Ok(());
        }
        let span =
            tracing::debug_span!("derive", kind = d.kind.as_str(), name = %d.name, id = %d.id);
        match tracing::Instrument::instrument(self.produce_once(d), span).await {
            Ok(Produced::Output(output, how)) => {
                self.insert(Outcome {
                    from: self.taken_from(&d.id),
                    ..Outcome::new(d, output, how)
                });
                Ok(())
            }
            Ok(Produced::Home(report)) => {
                let how = if report.up_to_date {
                    How::Valid
                } else {
                    How::Built
                };
                self.insert(Outcome {
                    home: Some(report),
                    ..Outcome::new(d, None, how)
                });
                Ok(())
            }
            Ok(Produced::Pinned(pinned, how)) => {
                // The pinned derivation, which a plan of the new lock names, is done too.
                let fixed = pinned.derivation(d);
                let from = self.taken_from(&d.id);
                self.insert(Outcome {
                    from: from.clone(),
                    ..Outcome::new(&fixed, fixed.output.clone(), how)
                });
                self.insert(Outcome {
                    pinned: Some(*pinned),
                    from,
                    ..Outcome::new(d, fixed.output.clone(), how)
                });
                Ok(())
            }
            Err(err) if d.action.is_optional() => {
                tracing::warn!("optional {} left out: {err}", d.describe());
                self.record(d, None, How::Missing);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// [`Executor::produce`], once per output path: a derivation whose output another one (with
    /// another id) made valid in this process reports how that one did it.
    async fn produce_once(&self, d: &Derivation) -> Result<Produced, BuildError> {
        let shared = d.output.clone().filter(|_| {
            !d.action.is_pin() && !matches!(d.action, Action::Home(_) | Action::Unpinned)
        });
        let Some(output) = shared else {
            return self.produce(d).await;
        };
        let cell = self
            .producing
            .lock()
            .expect("never poisoned")
            .entry(output)
            .or_default()
            .clone();
        let made = cell
            .get_or_try_init(|| async {
                let (output, how) = self.produce_output(d).await?;
                let origins = self.origins.lock().expect("never poisoned");
                let from = origins.get(&d.id).cloned();
                Ok::<_, BuildError>(Made {
                    id: d.id.clone(),
                    output,
                    how,
                    from,
                })
            })
            .await?;
        if made.id != d.id {
            if let Some(from) = &made.from {
                self.substituted_from(&d.id, from.clone());
            }
        }
        Ok(Produced::Output(made.output.clone(), made.how))
    }

    async fn produce(&self, d: &Derivation) -> Result<Produced, BuildError> {
        let store = &self.store;
        match &d.action {
            Action::Unpinned => Err(BuildError::NotPinned { what: d.describe() }),
            Action::Home(None) => Ok(Produced::Output(None, How::Built)),
            Action::Home(Some(build)) => {
                let report = tokio::task::block_in_place(|| {
                    crate::realize::realize(store, &build.lock, &build.options)
                })?;
                Ok(Produced::Home(Box::new(report)))
            }
            _ if d.action.is_pin() => {
                if let Some(missing) = self.offline().then(|| self.needs_network(d)).flatten() {
                    return Err(BuildError::Offline {
                        missing: vec![missing],
                    });
                }
                let (pinned, how) = self.pin(d).await?;
                Ok(Produced::Pinned(Box::new(pinned), how))
            }
            _ => {
                let (output, how) = self.produce_output(d).await?;
                Ok(Produced::Output(output, how))
            }
        }
    }

    /// Make the output of `d` (neither a pin nor the home) valid: the store, the substituters,
    /// then fetching or building.
    async fn produce_output(&self, d: &Derivation) -> Result<(Option<String>, How), BuildError> {
        let store = &self.store;
        if let Action::Git { locked, .. } = &d.action {
            tokio::task::block_in_place(|| git::protect_mirror(store, &locked.repo))?
        }
        // Protected first: a collector starting now keeps it; one that ran before is over.
        if let Some(output) = &d.output {
            if store.valid(output)?.is_some() {
                return Ok((Some(output.clone()), How::Valid));
            }
        }
        // Where it lies (`--models-in-place`): valid as an indexed file, not in the store.
        if let Some(file) = self.in_place(d)? {
            let how = self.substituted_from(&d.id, format!("file://{}", file.path));
            return Ok((d.output.clone(), how));
        }
        // A substituter that fails (a damaged cache, say) is passed over: what it put in the store
        // was verified, and nothing unverified was registered.
        for substituter in &self.substituters {
            // A transfer like any other: under the one limit of `--jobs`.
            let _permit = self.jobs.acquire().await.expect("never closed");
            match tokio::task::block_in_place(|| substituter.substitute(store, d)) {
                Ok(Some(references)) => {
                    let from = substituter.location();
                    for reference in references {
                        let reference = Derivation::reference(reference);
                        self.insert(Outcome {
                            from: Some(from.clone()),
                            ..Outcome::new(&reference, reference.output.clone(), How::Substituted)
                        });
                    }
                    let how = self.substituted_from(&d.id, from);
                    return Ok((d.output.clone(), how));
                }
                Ok(None) => {}
                Err(err) => tracing::warn!("{err}"),
            }
        }
        if self.offline() {
            if let Some(missing) = self.needs_network(d) {
                return Err(BuildError::Offline {
                    missing: vec![missing],
                });
            }
        }
        let (output, how) = self.run_action(d).await?;
        if let (Some(wanted), Some(got)) = (&d.output, &output) {
            if wanted != got {
                return Err(BuildError::Changed {
                    what: d.describe(),
                    wanted: wanted.clone(),
                    got: got.clone(),
                });
            }
        }
        Ok((output, how))
    }

    /// Offline: what the store lacks for `d`, when producing it needs the network.
    fn needs_network(&self, d: &Derivation) -> Option<String> {
        match &d.action {
            Action::Git { locked, .. } => {
                (!git::has_commit(&self.store, &locked.repo, &locked.commit)).then(|| {
                    format!(
                        "{}: commit `{}` of `{}`",
                        d.describe(),
                        locked.commit,
                        locked.repo
                    )
                })
            }
            Action::Archive { .. } | Action::PinArchive { .. } | Action::Reference => {
                Some(d.describe())
            }
            // A local file: read again from the spec's directory.
            Action::Workflow { .. } | Action::PinWorkflow { .. } => None,
            // The mirror may resolve the ref; the model or wheel may be in the store already.
            Action::PinGit { .. } | Action::PinModel { .. } | Action::PinWheel { .. } => None,
            // A local file, or the bytes a file of this machine holds (the models index, the hub
            // cache), need no network.
            Action::Model { locked } => {
                let local = matches!(
                    ModelSource::parse(&locked.source).kind(),
                    Ok(SourceKind::File(_))
                );
                let (blake3, sha256) = (
                    Expected::new(&locked.blake3, Origin::Lock),
                    locked
                        .sha256
                        .as_ref()
                        .map(|h| Expected::new(h, Origin::Lock)),
                );
                let wanted = indexed::Wanted {
                    blake3: Some(&blake3),
                    sha256: sha256.as_ref(),
                    size: Some(locked.size),
                };
                let on_this_machine = || indexed::has(&self.store, self.client.config(), &wanted);
                (!local && !on_this_machine()).then(|| d.describe())
            }
            Action::Wheel { locked } => self
                .wheel_source()
                .needs_network(locked.url.as_deref())
                .then(|| d.describe()),
            // uv says itself what it lacks offline (no uv, no interpreter of the version).
            Action::Venv { .. }
            | Action::Overlay { .. }
            | Action::Uv
            | Action::Interpreter { .. }
            | Action::Home(_)
            | Action::Manifest { .. }
            | Action::CarryUv
            | Action::Unpinned => None,
        }
    }

    fn wheel_source(&self) -> crate::python::WheelSource<'_> {
        crate::python::WheelSource {
            wheels_dir: self.wheels_dir.as_deref(),
            from_lock: true,
        }
    }

    async fn run_action(&self, d: &Derivation) -> Result<(Option<String>, How), BuildError> {
        let store = &self.store;
        let online = !self.offline();
        match &d.action {
            Action::Git { locked, .. } => {
                let _permit = self.jobs.acquire().await.expect("never closed");
                let what = d.describe();
                let name = tokio::task::block_in_place(|| checkout(store, locked, &what, online))?;
                Ok((Some(name), How::Fetched))
            }
            Action::Archive { locked } => {
                let _permit = self.jobs.acquire().await.expect("never closed");
                let (_, added) = registry::fetch(
                    &self.client,
                    store,
                    self.reporter.as_ref(),
                    &locked.id,
                    &locked.version,
                    &locked.download_url,
                    Some(&locked.blake3),
                )
                .await?;
                Ok((Some(added.record.name), How::Fetched))
            }
            Action::Model { locked } => {
                let request = model_request(&d.name, locked, online)?;
                let _permit = match request.source.kind() {
                    Ok(SourceKind::File(_)) => None,
                    _ => Some(self.jobs.acquire().await.expect("never closed")),
                };
                let fetched =
                    model::fetch(&self.client, store, self.reporter.as_ref(), &request).await?;
                let how = self.fetched_model(d, &fetched);
                Ok((Some(fetched.store_path), how))
            }
            Action::Wheel { locked } => {
                let pinned = crate::python::pinned_of(locked);
                let name = crate::python::fetch_wheel(
                    store,
                    &self.client,
                    self.reporter.as_ref(),
                    &self.wheel_source(),
                    &pinned,
                    &self.jobs,
                )
                .await?;
                Ok((Some(name), How::Fetched))
            }
            Action::Uv => {
                let reporter = self.reporter.as_ref();
                let fetched =
                    crate::python::stored_uv::ensure(store, &self.client, reporter, online).await?;
                // A store path only when the uv in use is the store's (the machine's is none).
                let uv = tokio::task::block_in_place(|| crate::python::find_uv(store))?;
                let output = store_path_of(store, &uv.exe);
                Ok((output, if fetched { How::Fetched } else { How::Valid }))
            }
            Action::CarryUv => tokio::task::block_in_place(|| {
                let uv = crate::python::find_uv(store)?;
                let stored = crate::python::stored_uv::store_machine_uv(store, &uv)?;
                Ok((Some(stored), How::Built))
            }),
            // What the lock names must be in the store already: a manifest only refers to it.
            Action::Manifest { lock, name } => tokio::task::block_in_place(|| {
                let written = crate::lock::manifest::write(store, name, lock, false, &[])?;
                Ok((Some(written), How::Built))
            }),
            Action::Interpreter { version } => tokio::task::block_in_place(|| {
                let uv = crate::python::find_uv(store)?;
                let (found, installed) =
                    crate::python::managed::ensure(store, &uv, version, online)?;
                let output = store_path_of(store, &found.path);
                Ok((output, if installed { How::Fetched } else { How::Valid }))
            }),
            // Not in the store although the lock pins it: `resolve` adds it again from the file.
            Action::Workflow { .. } => Err(BuildError::NotPinned { what: d.describe() }),
            Action::Overlay {
                python,
                backend,
                index,
            } => {
                let reporter = self.reporter.as_ref();
                let client = &self.client;
                let (name, resolved) = crate::python::torch::overlay(
                    store, client, reporter, python, backend, index, online, &self.jobs,
                )
                .await?;
                Ok((Some(name), if resolved { How::Built } else { How::Valid }))
            }
            Action::Venv { python } => {
                let reporter = self.reporter.as_ref();
                crate::python::stored_uv::ensure(store, &self.client, reporter, online).await?;
                tokio::task::block_in_place(|| -> Result<_, BuildError> {
                    let uv = crate::python::find_uv(store)?;
                    let interpreter =
                        crate::python::managed::interpreter(store, &uv, &python.version, online)?;
                    let venv = crate::python::build_venv(store, &uv, &interpreter, python)?;
                    if venv.built {
                        tracing::info!("built venv `{}`", venv.name);
                    }
                    let how = if venv.built { How::Built } else { How::Valid };
                    Ok((Some(venv.name), how))
                })
            }
            _ => unreachable!("handled before: {}", d.describe()),
        }
    }

    /// Run a pin: the source asked, its content made valid in the store, the lock entry.
    async fn pin(&self, d: &Derivation) -> Result<(Pinned, How), BuildError> {
        let store = &self.store;
        let online = !self.offline();
        let what = d.describe();
        match &d.action {
            Action::PinGit {
                repo,
                git_ref,
                commit,
                ..
            } => {
                let _permit = self.jobs.acquire().await.expect("never closed");
                tokio::task::block_in_place(|| {
                    git::protect_mirror(store, repo)?;
                    let commit =
                        git::resolve(store, repo, git_ref.as_deref(), commit.as_deref(), online)
                            .map_err(|e| {
                                crate::fetch::name_offline(e, &format!("{what} ({repo})"))
                            })?;
                    let mut locked = LockedGit {
                        repo: repo.clone(),
                        git_ref: git_ref.clone(),
                        commit,
                        store_path: String::new(),
                    };
                    locked.store_path = checkout(store, &locked, &what, online)?;
                    Ok((Pinned::Git(locked), How::Fetched))
                })
            }
            Action::PinArchive { id, version } => {
                let _permit = self.jobs.acquire().await.expect("never closed");
                let pinned = registry::pin(&self.client, id, version.as_deref()).await?;
                let (version, url) = (pinned.version, pinned.download_url);
                let reporter = self.reporter.as_ref();
                let (blake3, added) =
                    registry::fetch(&self.client, store, reporter, id, &version, &url, None)
                        .await?;
                let locked = LockedRegistry {
                    id: id.clone(),
                    version,
                    download_url: url,
                    blake3,
                    store_path: added.record.name,
                };
                Ok((Pinned::Registry(locked), How::Fetched))
            }
            Action::PinModel { index, model } => {
                let mut request = pin_request(*index, model, &what, online);
                request.in_place = self.models_in_place;
                let _permit = match model.source.kind() {
                    Ok(SourceKind::File(_)) => None,
                    _ if !online => None,
                    _ => Some(self.jobs.acquire().await.expect("never closed")),
                };
                let fetched =
                    model::fetch(&self.client, store, self.reporter.as_ref(), &request).await?;
                let how = self.fetched_model(d, &fetched);
                let locked = LockedModel {
                    source: model.source.to_string(),
                    name: model.name.clone(),
                    target_subdir: model.target_subdir.clone(),
                    filename: fetched.file_name,
                    required: model.is_required(),
                    url: fetched.url,
                    revision: fetched.revision,
                    size: fetched.size,
                    sha256: fetched.sha256,
                    blake3: fetched.blake3,
                    store_path: fetched.store_path,
                };
                Ok((Pinned::Model(locked), how))
            }
            Action::PinWheel { wheel, from_lock } => {
                let source = crate::python::WheelSource {
                    wheels_dir: self.wheels_dir.as_deref(),
                    from_lock: *from_lock,
                };
                let reporter = self.reporter.as_ref();
                let store_path = crate::python::fetch_wheel(
                    store,
                    &self.client,
                    reporter,
                    &source,
                    wheel,
                    &self.jobs,
                )
                .await?;
                Ok((
                    Pinned::Wheel(crate::python::locked_of(wheel, store_path)),
                    How::Fetched,
                ))
            }
            Action::PinWorkflow { index, rel, file } => {
                let locked =
                    tokio::task::block_in_place(|| add_workflow(store, *index, rel, file))?;
                Ok((Pinned::Workflow(locked), How::Fetched))
            }
            _ => unreachable!("not a pin: {what}"),
        }
    }
}

/// Add the workflow `file` (the spec's `workflows[index]`, `rel`) to the store, checked to be
/// JSON first: it is part of the version's closure.
fn add_workflow(
    store: &Store,
    index: usize,
    rel: &str,
    file: &std::path::Path,
) -> Result<crate::lock::LockedWorkflow, BuildError> {
    let text = std::fs::read(file).map_err(FetchError::io(file))?;
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&text) {
        return Err(BuildError::from(FetchError::LocalSource {
            what: format!("workflows[{index}]"),
            file: file.display().to_string(),
            reason: format!("it is not JSON: {e}"),
            hint: None,
        }));
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workflow.json".into());
    let options = crate::store::AddOptions {
        name: Some(sanitize_name(&format!("workflow-{name}"))),
        references: Vec::new(),
    };
    let added = store.add_path(file, &options, &crate::reporter::NoReporter)?;
    store.protect(&[&added.record.name])?;
    Ok(crate::lock::LockedWorkflow {
        path: rel.to_string(),
        blake3: blake3::hash(&text).to_hex().to_string(),
        store_path: added.record.name,
    })
}

/// The store path `file` lies in, if it is in `store`.
fn store_path_of(store: &Store, file: &std::path::Path) -> Option<String> {
    let paths = store.path_of("");
    let rest = file.strip_prefix(&paths).ok()?;
    let first = rest.components().next()?;
    Some(first.as_os_str().to_string_lossy().into_owned())
}

/// What producing a derivation gave.
enum Produced {
    /// Its output (none for the home or a model left out).
    Output(Option<String>, How),
    /// A pin's lock entry.
    Pinned(Box<Pinned>, How),
    /// An assembled home.
    Home(Box<crate::realize::RealizeReport>),
}

/// What to fetch to pin the spec's `models[index]`: its source asked, the spec's digests checked.
fn pin_request(
    index: usize,
    model: &crate::spec::Model,
    what: &str,
    online: bool,
) -> model::ModelRequest {
    let spec_digest = |value: &Option<String>, field: &str| {
        value.as_ref().map(|hex| {
            Expected::new(
                hex,
                Origin::Spec {
                    field: format!("models[{index}].{field}"),
                },
            )
        })
    };
    model::ModelRequest {
        what: what.to_string(),
        source: model.source.clone(),
        file_name: model.filename.clone(),
        derived_name: model.file_name(),
        pinned: None,
        sha256: spec_digest(&model.sha256, "sha256"),
        blake3: spec_digest(&model.blake3, "blake3"),
        online,
        in_place: false,
    }
}

/// The checkout of a pinned commit, its mirror fetched first when it lacks the commit.
pub(crate) fn checkout(
    store: &Store,
    locked: &crate::lock::LockedGit,
    what: &str,
    online: bool,
) -> Result<String, FetchError> {
    let (repo, commit) = (&locked.repo, &locked.commit);
    if !git::has_commit(store, repo, commit) {
        if !online {
            return Err(FetchError::Offline {
                missing: vec![format!("{what}: commit `{commit}` of `{repo}`")],
            });
        }
        git::fetch_commit(store, repo, commit, locked.git_ref.as_deref())?;
        if !git::has_commit(store, repo, commit) {
            return Err(FetchError::GitCommitNotFound {
                url: repo.clone(),
                commit: commit.clone(),
            });
        }
    }
    let path_name = sanitize_name(crate::spec::repo_basename(repo));
    let added = git::checkout(store, repo, commit, &path_name, online)
        .map_err(|e| crate::fetch::name_offline(e, what))?;
    Ok(added.record.name)
}

/// What to fetch for a locked model: its pinned URL (a `file://` source is read again), every
/// digest the lock has.
fn model_request(
    name: &str,
    locked: &crate::lock::LockedModel,
    online: bool,
) -> Result<model::ModelRequest, BuildError> {
    let source = ModelSource::parse(&locked.source);
    let local = matches!(source.kind(), Ok(SourceKind::File(_)));
    let lock = |hex: &String| Expected::new(hex, Origin::Lock);
    let pinned = if local {
        None
    } else {
        Some(model::Pinned {
            url: url::Url::parse(&locked.url).map_err(|e| BuildError::BadLockUrl {
                what: format!("model `{name}`"),
                url: locked.url.clone(),
                reason: e.to_string(),
            })?,
            revision: locked.revision.clone(),
            size: Some(locked.size),
            sha256: locked.sha256.clone(),
            blake3: Some(locked.blake3.clone()),
            file_name: Some(locked.filename.clone()),
        })
    };
    Ok(model::ModelRequest {
        what: format!("model `{name}`"),
        source,
        file_name: Some(locked.filename.clone()),
        derived_name: locked.filename.clone(),
        pinned,
        sha256: locked.sha256.as_ref().map(lock),
        blake3: Some(lock(&locked.blake3)),
        online,
        in_place: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockedModel;

    /// A binary cache stand-in: holds bytes by store path name, adds them when asked; every
    /// question is logged (in `log` too, shared by the caches of one test, to see the order).
    struct Cache {
        location: &'static str,
        held: BTreeMap<String, Vec<u8>>,
        broken: bool,
        /// References it says it put in the store with an output.
        brings: Vec<String>,
        asked: Mutex<Vec<String>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Cache {
        fn holding(location: &'static str, paths: &[(&str, &[u8])]) -> Cache {
            Cache {
                location,
                held: paths
                    .iter()
                    .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
                    .collect(),
                broken: false,
                brings: Vec::new(),
                asked: Mutex::new(Vec::new()),
                log: Arc::new(Mutex::new(Vec::new())),
            }
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    impl Substituter for Cache {
        fn location(&self) -> String {
            self.location.into()
        }

        fn substitute(
            &self,
            store: &Store,
            d: &Derivation,
        ) -> Result<Option<Vec<String>>, BuildError> {
            self.asked.lock().unwrap().push(d.id.clone());
            self.log.lock().unwrap().push(d.name.clone());
            if self.broken {
                return Err(BuildError::Substituter {
                    what: d.describe(),
                    from: self.location(),
                    source: "the cache is damaged".into(),
                });
            }
            let Some(bytes) = d.output.as_ref().and_then(|o| self.held.get(o)) else {
                return Ok(None);
            };
            let file = d.output.as_ref().unwrap().split_once('-').unwrap().1;
            store.add_bytes(file, bytes, &[])?;
            Ok(Some(self.brings.clone()))
        }
    }

    fn model(store_path: &str) -> LockedModel {
        LockedModel {
            source: "https://models.invalid/unet.safetensors".into(),
            name: None,
            target_subdir: None,
            filename: "unet.safetensors".into(),
            required: true,
            url: "https://models.invalid/unet.safetensors".into(),
            revision: None,
            size: 5,
            sha256: None,
            blake3: blake3::hash(b"model").to_hex().to_string(),
            store_path: store_path.into(),
        }
    }

    fn executor(store: Store) -> Executor {
        let config = crate::fetch::FetchConfig::from_env(
            |_| None,
            &crate::spec::ExpandedEnv::default(),
            true,
            2,
        )
        .unwrap();
        let client = Arc::new(Client::new(Arc::new(config)));
        Executor::new(
            Arc::new(store),
            client,
            Arc::new(crate::reporter::NoReporter),
            None,
        )
    }

    /// The store path `bytes` get under `file`, made in a scratch store.
    fn name_of(scratch: &std::path::Path, file: &str, bytes: &[u8]) -> String {
        Store::open(&scratch.join("names"))
            .unwrap()
            .add_bytes(file, bytes, &[])
            .unwrap()
            .record
            .name
    }

    /// A model derivation named `name` whose pinned output is `store_path`.
    fn model_derivation(name: &str, store_path: &str, bytes: &[u8]) -> Derivation {
        let mut locked = model(store_path);
        locked.blake3 = blake3::hash(bytes).to_hex().to_string();
        locked.size = bytes.len() as u64;
        Derivation::model(name.into(), &locked)
    }

    fn missing_of(err: &BuildError) -> Vec<String> {
        match err {
            BuildError::Offline { missing } => missing.clone(),
            other => panic!("not an offline refusal: {other}"),
        }
    }

    /// The substituter is asked before the offline refusal, what it gives is taken as the output,
    /// and a derivation it lacks is refused offline, named in the list of what the store lacks.
    #[tokio::test(flavor = "multi_thread")]
    async fn substituters_are_asked_before_the_network() {
        let scratch = tempfile::tempdir().unwrap();
        let name = name_of(scratch.path(), "unet.safetensors", b"model");
        let mut executor = executor(Store::open(&scratch.path().join("store")).unwrap());
        let cache = Arc::new(Cache::holding("a test cache", &[(&name, b"model")]));
        executor.substituters.push(cache.clone());
        let executor = Arc::new(executor);
        let wanted = Derivation::model("unet".into(), &model(&name));
        let other_name = format!("{}-other.safetensors", "0".repeat(32));
        let missing = Derivation::model("other".into(), &model(&other_name));

        let outcomes = executor.run(std::slice::from_ref(&wanted)).await.unwrap();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].outcome, How::Substituted);
        assert_eq!(outcomes[0].from.as_deref(), Some("a test cache"));
        assert!(executor.store.query(&name).unwrap().is_some());

        let err = executor
            .run(std::slice::from_ref(&missing))
            .await
            .unwrap_err();
        let missing_list = missing_of(&err);
        assert!(missing_list[0].contains("model `other`"), "{err}");
        assert_eq!(cache.asked(), [wanted.id.clone(), missing.id.clone()]);
    }

    /// Two derivations with one output (the same model under two names) make it valid once, and
    /// both report how, whichever ran first: 20 runs, each on an empty store.
    #[tokio::test(flavor = "multi_thread")]
    async fn one_output_of_two_derivations_is_made_once_and_reported_for_both() {
        for _ in 0..20 {
            let scratch = tempfile::tempdir().unwrap();
            let name = name_of(scratch.path(), "unet.safetensors", b"model");
            let mut executor = executor(Store::open(&scratch.path().join("store")).unwrap());
            let cache = Arc::new(Cache::holding("a test cache", &[(&name, b"model")]));
            executor.substituters.push(cache.clone());
            let executor = Arc::new(executor);
            let both = [
                Derivation::model("wan-unet".into(), &model(&name)),
                Derivation::model("unet-mirror".into(), &model(&name)),
            ];
            assert_ne!(both[0].id, both[1].id);
            let outcomes = executor.run(&both).await.unwrap();
            assert_eq!(outcomes.len(), 2, "{outcomes:?}");
            for outcome in &outcomes {
                assert_eq!(outcome.outcome, How::Substituted, "{outcome:?}");
                assert_eq!(outcome.from.as_deref(), Some("a test cache"), "{outcome:?}");
            }
            assert_eq!(cache.asked().len(), 1, "asked again for what it gave");
        }
    }

    /// The references a substituter put in the store with an output are reported, each a
    /// `fetch-reference` derivation substituted from it (protected and verified by the cache).
    #[tokio::test(flavor = "multi_thread")]
    async fn references_a_substituter_brings_are_reported() {
        let scratch = tempfile::tempdir().unwrap();
        let out = name_of(scratch.path(), "out.bin", b"out");
        let reference = format!("{}-lib.bin", "4".repeat(32));
        let mut executor = executor(Store::open(&scratch.path().join("store")).unwrap());
        let mut cache = Cache::holding("the cache", &[(&out, b"out")]);
        cache.brings = vec![reference.clone()];
        executor.substituters.push(Arc::new(cache));
        let executor = Arc::new(executor);
        let plan = [model_derivation("out", &out, b"out")];
        let outcomes = executor.run(&plan).await.unwrap();
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        let brought = &outcomes[1];
        assert_eq!(brought.kind, Kind::FetchReference);
        assert_eq!(brought.output.as_deref(), Some(reference.as_str()));
        assert_eq!(brought.outcome, How::Substituted);
        assert_eq!(brought.from.as_deref(), Some("the cache"));
    }

    /// Inputs run before what needs them, whatever order the plan lists them in; a derivation
    /// whose input failed is never started (its input's error says why), while the rest of the
    /// graph still runs; every failure is collected into one list.
    #[tokio::test(flavor = "multi_thread")]
    async fn inputs_come_first_and_a_failed_input_stops_only_its_dependents() {
        let scratch = tempfile::tempdir().unwrap();
        let a = name_of(scratch.path(), "a.bin", b"a");
        let c = name_of(scratch.path(), "c.bin", b"c");
        let b = format!("{}-b.bin", "1".repeat(32));
        let e = format!("{}-e.bin", "2".repeat(32));
        let mut executor = executor(Store::open(&scratch.path().join("store")).unwrap());
        let cache = Arc::new(Cache::holding("cache", &[(&a, b"a"), (&c, b"c")]));
        executor.substituters.push(cache.clone());
        let executor = Arc::new(executor);
        let da = model_derivation("a", &a, b"a");
        let db = model_derivation("b", &b, b"b");
        let mut dc = model_derivation("c", &c, b"c");
        dc.inputs = vec![da.id.clone()];
        let mut dd = model_derivation("d", &c, b"c");
        dd.id = "d-needs-b".into();
        dd.inputs = vec![db.id.clone()];
        let de = model_derivation("e", &e, b"e");

        let plan = [dd.clone(), dc.clone(), db.clone(), da.clone(), de.clone()];
        let err = executor.run(&plan).await.unwrap_err();
        let mut missing = missing_of(&err);
        missing.sort();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("model `b`"), "{missing:?}");
        assert!(missing[1].contains("model `e`"), "{missing:?}");
        let asked = cache.log.lock().unwrap().clone();
        assert!(
            !asked.contains(&"d".to_string()),
            "d ran without its input: {asked:?}"
        );
        let at = |n: &str| asked.iter().position(|x| x == n).unwrap();
        assert!(at("a") < at("c"), "c before its input a: {asked:?}");
        let outcomes = executor.outcomes(&plan);
        let how: Vec<(&str, How)> = outcomes
            .iter()
            .map(|o| (o.name.as_str(), o.outcome))
            .collect();
        assert_eq!(how, [("c", How::Substituted), ("a", How::Substituted)]);
    }

    /// An output already in the store is valid without asking anyone; a derivation that ran is
    /// not run again in the same process (its first outcome stands).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_valid_output_asks_no_one_and_nothing_runs_twice() {
        let scratch = tempfile::tempdir().unwrap();
        let store = Store::open(&scratch.path().join("store")).unwrap();
        let here = store
            .add_bytes("here.bin", b"here", &[])
            .unwrap()
            .record
            .name;
        let there = name_of(scratch.path(), "there.bin", b"there");
        let mut executor = executor(store);
        let cache = Arc::new(Cache::holding("cache", &[(&there, b"there")]));
        executor.substituters.push(cache.clone());
        let executor = Arc::new(executor);
        let plan = [
            model_derivation("here", &here, b"here"),
            model_derivation("there", &there, b"there"),
        ];
        let first = executor.run(&plan).await.unwrap();
        assert_eq!(first[0].outcome, How::Valid);
        assert_eq!(first[1].outcome, How::Substituted);
        assert_eq!(cache.asked(), [plan[1].id.clone()]);
        let again = executor.run(&plan).await.unwrap();
        assert_eq!(
            again[1].outcome,
            How::Substituted,
            "the first outcome stands"
        );
        assert_eq!(cache.asked().len(), 1, "asked again: {:?}", cache.asked());
    }

    /// A substituter that fails is passed over for the next one; an optional model that nothing
    /// can give is left out (`missing`), a required one fails the run.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_broken_substituter_is_passed_over_and_optional_models_are_left_out() {
        let scratch = tempfile::tempdir().unwrap();
        let have = name_of(scratch.path(), "have.bin", b"have");
        let gone = format!("{}-gone.bin", "3".repeat(32));
        let mut executor = executor(Store::open(&scratch.path().join("store")).unwrap());
        let mut broken = Cache::holding("broken", &[(&have, b"have")]);
        broken.broken = true;
        let broken = Arc::new(broken);
        let good = Arc::new(Cache::holding("good", &[(&have, b"have")]));
        executor.substituters.push(broken.clone());
        executor.substituters.push(good.clone());
        let executor = Arc::new(executor);
        let mut optional = model(&gone);
        optional.required = false;
        let optional = Derivation::model("extra".into(), &optional);
        let plan = [model_derivation("have", &have, b"have"), optional.clone()];
        let outcomes = executor.run(&plan).await.unwrap();
        assert_eq!(outcomes[0].outcome, How::Substituted);
        assert_eq!(outcomes[0].from.as_deref(), Some("good"));
        assert_eq!(outcomes[1].outcome, How::Missing);
        assert_eq!(outcomes[1].output, None);
        assert_eq!(broken.asked().len(), 2);

        let required = model_derivation("needed", &gone, b"gone");
        let err = executor.run(&[required]).await.unwrap_err();
        assert!(missing_of(&err)[0].contains("model `needed`"), "{err}");
    }
}
