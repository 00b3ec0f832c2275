//! A session: the settings of one command resolved once, one executor that runs every derivation
//! of it, and the operations commands call (`resolve`, `realize`, the dry run's view of a lock on
//! this machine). `cli/` parses arguments into [`Settings`], opens a [`Session`] and prints what
//! it returns; benches and other programs can do the same without the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::derive::exec::{Executor, How};
use crate::derive::{Action, BuildError, Derivation, HomeBuild, Kind};
use crate::fetch::http::Client;
use crate::fetch::{FetchConfig, FetchError};
use crate::hint::Hint;
use crate::lock::{Lock, LockedPython};
use crate::python::torch::{Backend, Overlay};
use crate::python::PythonError;
use crate::realize::{LinkMode, RealizeError, RealizeOptions, RealizeReport, TorchUsed};
use crate::reporter::Reporter;
use crate::resolve::{ItemReport, ResolveError, Resolver, Update};
use crate::sign::Trust;
use crate::spec::{LoadedSpec, Spec};
use crate::store::{Store, StoreError};

/// What one command decides once, from its arguments, the spec's `options`, the config file and
/// the environment. The precedence (applied where the settings are made, in `cli`): an argument,
/// then its environment variable, then the config file; `offline` is the argument's or the spec's
/// `options.offline`; substituters and trusted keys are the arguments' and the config file's.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Use only what the store holds: the one connectivity setting every step reads.
    pub offline: bool,
    /// Concurrent network steps: the executor's one semaphore.
    pub jobs: usize,
    /// `--wheels-dir`: Python wheels from there only (absolute).
    pub wheels_dir: Option<PathBuf>,
    /// Binary caches asked before anything is fetched or built.
    pub substituters: Vec<String>,
    /// Which keys what the substituters give must be signed by.
    pub trust: Trust,
    /// Progress bars for the caches' transfers.
    pub show_progress: bool,
    /// This machine's torch backend and its index; `None`: the lock's own wheel set.
    pub torch: Option<(Backend, String)>,
    /// `--models-in-place`: models that files of the models index hold are pinned and linked
    /// where they lie, never taken into the store.
    pub models_in_place: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            offline: false,
            jobs: 4,
            wheels_dir: None,
            substituters: Vec::new(),
            trust: Trust::default(),
            show_progress: false,
            torch: None,
            models_in_place: false,
        }
    }
}

impl Settings {
    /// The substituters, opened with the trust, progress and concurrency settings: what the
    /// executor asks, and what `realize --dry-run` asks the same way.
    pub fn caches(
        &self,
    ) -> std::result::Result<Vec<crate::cache::Cache>, crate::closure::ClosureError> {
        let mut caches = Vec::new();
        for location in self.substituters.iter().filter(|s| !s.is_empty()) {
            let mut cache = crate::cache::Cache::open(location)?;
            cache.trust = self.trust.clone();
            cache.show_progress(self.show_progress);
            cache.jobs = self.jobs;
            caches.push(cache);
        }
        Ok(caches)
    }
}

/// Why a session's operation failed: the layer's error, kept whole (its cause, hint and class).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Build(Box<BuildError>),
    #[error(transparent)]
    Python(#[from] PythonError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Realize(#[from] RealizeError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Closure(#[from] crate::closure::ClosureError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0} gave no store path")]
    NoOutput(String),
    #[error("`--frozen`, but there is no lock `{}`", .0.display())]
    FrozenMissing(PathBuf),
    #[error("`--frozen`, but the lock does not match the spec:\n{}", .0.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"))]
    FrozenStale(Vec<String>),
}

impl Hint for SessionError {
    fn hint(&self) -> Option<String> {
        match self {
            SessionError::Resolve(e) => e.hint(),
            SessionError::Build(e) => e.hint(),
            SessionError::Python(e) => e.hint(),
            SessionError::Fetch(e) => e.hint(),
            SessionError::Store(e) => e.hint(),
            SessionError::Realize(e) => e.hint(),
            SessionError::Lock(e) => e.hint(),
            SessionError::Closure(e) => e.hint(),
            SessionError::Runtime(_) | SessionError::NoOutput(_) => None,
            SessionError::FrozenMissing(_) | SessionError::FrozenStale(_) => Some(
                "run `comfix resolve` (or realize without `--frozen`) and commit the lock".into(),
            ),
        }
    }

    fn is_user_error(&self) -> bool {
        match self {
            SessionError::Resolve(e) => e.is_user_error(),
            SessionError::Build(e) => e.is_user_error(),
            SessionError::Python(e) => e.is_user_error(),
            SessionError::Fetch(e) => e.is_user_error(),
            SessionError::Store(e) => e.is_user_error(),
            SessionError::Realize(e) => e.is_user_error(),
            SessionError::Lock(e) => e.is_user_error(),
            SessionError::Closure(e) => e.is_user_error(),
            SessionError::Runtime(_) | SessionError::NoOutput(_) => false,
            SessionError::FrozenMissing(_) | SessionError::FrozenStale(_) => true,
        }
    }
}

impl From<BuildError> for SessionError {
    fn from(err: BuildError) -> SessionError {
        SessionError::Build(Box::new(err))
    }
}

type Result<T> = std::result::Result<T, SessionError>;

/// One command's executor and the runtime it runs on: `realize` resolves and then runs the rest
/// of the plan with the same executor, so each derivation runs once and is reported once.
pub struct Session {
    pub runtime: tokio::runtime::Runtime,
    pub executor: Arc<Executor>,
    pub settings: Settings,
}

/// A realized home: the realization's report, and what became of each derivation of its plan
/// under the plan's ids (pins included).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Realized {
    #[serde(flatten)]
    pub report: RealizeReport,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub derivations: Vec<crate::derive::exec::Outcome>,
}

/// A version to realize into a home.
pub struct Realization<'a> {
    pub loaded: &'a LoadedSpec,
    /// The version's lock file (written when the resolve changes it, unless `frozen`).
    pub lock_path: &'a Path,
    /// The lock as it is now.
    pub old: Option<&'a Lock>,
    pub target: PathBuf,
    pub models_dir: Option<PathBuf>,
    pub link_mode: LinkMode,
    /// The argument's or the spec's `options.skip_models`.
    pub skip_models: bool,
    /// Fail instead of writing or changing the lock.
    pub frozen: bool,
}

impl Session {
    /// A session for `spec` (its `options.offline` and `${VAR}` credentials count) over `store`.
    pub fn open(
        store: Arc<Store>,
        spec: &Spec,
        settings: Settings,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Session> {
        let mut settings = settings;
        settings.offline |= spec.options.offline;
        let env = |k: &str| std::env::var(k).ok();
        let spec_env = spec.expand_env_available(env);
        Session::with_env(store, &spec_env, settings, reporter)
    }

    /// A session over `store` before there is a spec (the spec's own repository is what it
    /// fetches): only the environment's credentials count.
    pub fn open_bare(
        store: Arc<Store>,
        settings: Settings,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Session> {
        Session::with_env(store, &Default::default(), settings, reporter)
    }

    fn with_env(
        store: Arc<Store>,
        spec_env: &crate::spec::ExpandedEnv,
        settings: Settings,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Session> {
        let env = |k: &str| std::env::var(k).ok();
        let config = FetchConfig::from_env(env, spec_env, settings.offline, settings.jobs)?;
        let client = Arc::new(Client::new(Arc::new(config)));
        let mut executor = Executor::new(store, client, reporter, settings.wheels_dir.clone());
        executor.models_in_place = settings.models_in_place;
        for cache in settings.caches()? {
            executor.substituters.push(Arc::new(cache));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(SessionError::Runtime)?;
        Ok(Session {
            runtime,
            executor: Arc::new(executor),
            settings,
        })
    }

    pub fn store(&self) -> &Store {
        &self.executor.store
    }

    /// Resolve `spec` against `old` and make every path of the new lock valid; returns the lock
    /// and what happened to each entry.
    pub fn resolve(
        &self,
        spec: &Spec,
        old: Option<&Lock>,
        update: &Update,
        skip_models: bool,
        spec_dir: PathBuf,
    ) -> Result<(Lock, Vec<ItemReport>)> {
        let python = crate::python::PythonSettings {
            wheels_dir: self.settings.wheels_dir.clone(),
        };
        let resolver = Resolver::new(self.executor.clone(), skip_models, python, spec_dir);
        Ok(self.runtime.block_on(resolver.resolve(spec, old, update))?)
    }

    /// The uv a closure of a Python version carries, kept in the store by the executor (a
    /// `fetch-uv` derivation); the store path's name.
    pub fn carry_uv(&self) -> Result<String> {
        self.output_of(crate::derive::Derivation::carry_uv())
    }

    /// Run `derivation` alone (its inputs must be valid) and return what became of it.
    fn outcome_of(&self, derivation: &Derivation) -> Result<crate::derive::exec::Outcome> {
        let outcomes = self
            .runtime
            .block_on(self.executor.run(std::slice::from_ref(derivation)))?;
        outcomes
            .into_iter()
            .find(|o| o.id == derivation.id)
            .ok_or_else(|| SessionError::NoOutput(derivation.describe()))
    }

    /// Run `derivation` alone (its inputs must be valid) and return its output.
    fn output_of(&self, derivation: Derivation) -> Result<String> {
        self.outcome_of(&derivation)?
            .output
            .ok_or_else(|| SessionError::NoOutput(derivation.describe()))
    }

    /// Pin `repo` at `git_ref` (its default branch when `None`) and check that commit out into the
    /// store (a `fetch-git` pin derivation, as a spec's core or node): the lock entry.
    pub fn pin_git(
        &self,
        role: &'static str,
        name: &str,
        repo: &str,
        git_ref: Option<&str>,
    ) -> Result<crate::lock::LockedGit> {
        let pin = Derivation::pin_git(role, name.to_string(), repo, git_ref, None);
        match self.outcome_of(&pin)?.pinned {
            Some(crate::derive::Pinned::Git(locked)) => Ok(locked),
            _ => Err(SessionError::NoOutput(pin.describe())),
        }
    }

    /// `lock`'s manifest, named `name`, written by the executor (a `write-manifest` derivation:
    /// what `store pin <ID>` roots); the store path's name. Every path the lock names must be in
    /// the store.
    pub fn manifest(&self, lock: &Lock, name: &str) -> Result<String> {
        self.output_of(crate::derive::Derivation::manifest(lock, name))
    }

    /// Resolve the version (writing its lock when it changed), run its plan, assemble the home.
    pub fn realize(&self, r: &Realization<'_>) -> Result<Realized> {
        let spec = &r.loaded.spec;
        if r.frozen {
            frozen_lock(spec, r.old, r.lock_path)?;
        }
        let store = self.store();
        // A home moved or copied here keeps its earlier generations alive.
        crate::realize::reroot(store, &r.target)?;
        let (mut lock, _items) =
            self.resolve(spec, r.old, &Update::Nothing, r.skip_models, r.loaded.dir())?;
        if !r.old.is_some_and(|o| o.same_as(&lock)) {
            if r.frozen {
                return Err(SessionError::FrozenStale(vec![
                    "the resolved lock differs".into()
                ]));
            }
            if !(r.skip_models && lock.models.len() < spec.models.len()) {
                lock.write(r.lock_path)?;
                tracing::info!("wrote `{}`", r.lock_path.display());
            }
        }
        crate::fault::pause_point("realize-resolved");
        // The machine's backend, over the lock in memory: what is written above stays shared.
        let torch = self.apply_torch(&mut lock)?;
        // Models linked where they lie (`--models-in-place`) are not taken into the store.
        let in_place = match self.settings.models_in_place && !r.skip_models {
            true => crate::realize::in_place_models(store, &lock)?,
            false => BTreeMap::new(),
        };
        let (plan, venv) = self.run_plan(spec, &mut lock, r.skip_models)?;
        let not_fetched: Vec<String> = if r.skip_models {
            Vec::new()
        } else {
            spec.models
                .iter()
                .filter(|m| !m.is_required() && crate::lock::locked_model(m, &lock).is_none())
                .map(|m| match &m.target_subdir {
                    Some(dir) => format!("{dir}/{}", m.file_name()),
                    None => m.file_name(),
                })
                .collect()
        };
        let options = RealizeOptions {
            target: r.target.clone(),
            models_dir: r.models_dir.clone(),
            skip_models: r.skip_models,
            link_mode: r.link_mode,
            venv,
            not_fetched,
            check: false,
            torch,
            in_place,
        };
        // The home, last: a derivation like the others, now that what to assemble is known.
        let mut home = plan.last().expect("a plan ends with its home").clone();
        home.action = Action::Home(Some(Box::new(HomeBuild { lock, options })));
        self.runtime
            .block_on(self.executor.run(std::slice::from_ref(&home)))?;
        let report = self
            .executor
            .home(&home)
            .expect("a home that ran has its report");
        Ok(Realized {
            report,
            derivations: self.executor.outcomes(&plan),
        })
    }

    /// Put the machine's torch backend over `lock` (in memory only; the shared lock on disk is
    /// never changed): its Python wheel set becomes the overlay's, found in the store or resolved.
    fn apply_torch(&self, lock: &mut Lock) -> Result<Option<TorchUsed>> {
        let torch = self.settings.torch.as_ref();
        let with_torch = lock
            .python
            .as_ref()
            .filter(|p| p.wheels.iter().any(|w| w.name == "torch"));
        if let (Some((backend, index)), Some(python)) = (torch, with_torch) {
            // The overlay and what it is built with, by the executor; then it is in the store.
            let mut steps = Derivation::tools(python);
            steps.push(Derivation::overlay(python, backend, index));
            self.runtime.block_on(self.executor.run(&steps))?;
        }
        apply_stored_torch(self.store(), lock, torch)
    }

    /// Run the plan of `lock` (every pin known: what `--dry-run` shows now is what runs; what
    /// resolve already made valid is not run again, the executor remembers it). Optional models
    /// that could not be fetched leave the lock; returns the plan and the venv's store path.
    fn run_plan(
        &self,
        spec: &Spec,
        lock: &mut Lock,
        skip_models: bool,
    ) -> Result<(Vec<Derivation>, Option<String>)> {
        let executor = &self.executor;
        // The venv's name depends on uv and the interpreter: they come first.
        let venv_name = match &lock.python {
            Some(python) => {
                self.runtime
                    .block_on(executor.run(&Derivation::tools(python)))?;
                Some(venv_name_of(&executor.store, python, false)?)
            }
            None => None,
        };
        let plan = crate::derive::derivations(spec, Some(lock), venv_name.as_deref(), skip_models);
        self.runtime.block_on(executor.run(&plan))?;
        let outcomes = executor.outcomes(&plan);
        let outcome_of = |d: &Derivation| outcomes.iter().find(|o| o.id == d.id);
        for d in &plan {
            if let (Some(o), Action::Model { locked }) = (outcome_of(d), &d.action) {
                if o.outcome == How::Missing {
                    lock.models.retain(|m| m != locked);
                }
            }
        }
        let venv = plan
            .iter()
            .find(|d| d.kind == Kind::BuildVenv)
            .and_then(outcome_of)
            .and_then(|o| o.output.clone());
        Ok((plan, venv))
    }
}

/// `torch` from the store alone (`--check`, `--dry-run`, `export`): an error names a backend whose
/// overlay this store does not hold.
pub fn apply_stored_torch(
    store: &Store,
    lock: &mut Lock,
    torch: Option<&(Backend, String)>,
) -> Result<Option<TorchUsed>> {
    overlay_with(lock, torch, |python, backend, index| {
        let (name, overlay) = crate::python::torch::stored(store, python, backend, index)?;
        let overlay = overlay.ok_or_else(|| PythonError::NoOverlay {
            backend: backend.tag(),
        })?;
        Ok((name, overlay))
    })
}

/// The backend `torch` names, put over `lock`'s Python set with the overlay `get` gives; a set
/// without torch is left as it is.
fn overlay_with(
    lock: &mut Lock,
    torch: Option<&(Backend, String)>,
    get: impl FnOnce(&LockedPython, &Backend, &str) -> Result<(String, Overlay)>,
) -> Result<Option<TorchUsed>> {
    let Some((backend, index)) = torch else {
        return Ok(None);
    };
    let Some(python) = lock
        .python
        .as_mut()
        .filter(|p| p.wheels.iter().any(|w| w.name == "torch"))
    else {
        tracing::info!(
            "torch backend `{}`: the version's Python set has no torch; nothing to change",
            backend.tag()
        );
        return Ok(None);
    };
    let (name, overlay) = get(python, backend, index)?;
    tracing::info!("torch backend `{}` (overlay `{name}`)", backend.tag());
    python.wheels = overlay.wheels;
    Ok(Some(TorchUsed {
        backend: backend.tag(),
        overlay: name,
    }))
}

/// The lock beside the spec, which must exist and match the spec (`--frozen`, `--check`).
pub fn frozen_lock<'a>(spec: &Spec, old: Option<&'a Lock>, lock_path: &Path) -> Result<&'a Lock> {
    let lock = old.ok_or_else(|| SessionError::FrozenMissing(lock_path.to_path_buf()))?;
    let stale = crate::lock::stale_entries(spec, lock);
    if !stale.is_empty() {
        return Err(SessionError::FrozenStale(stale));
    }
    Ok(lock)
}

/// A universal lock's wheels for this machine, from the store alone (nothing fetched).
pub fn this_machine(store: &Store, lock: &mut Lock) -> Result<()> {
    let Some(python) = lock.python.as_mut().filter(|p| p.universal.is_some()) else {
        return Ok(());
    };
    let uv = crate::python::find_uv(store)?;
    let interpreter = crate::python::managed::interpreter(store, &uv, &python.version, false).ok();
    crate::python::universal::fill_from_store(store, python, interpreter.as_ref())?;
    Ok(())
}

/// The name the venv of `python` has (or would have) in the store on this machine; with
/// `may_install`, a managed interpreter is installed when the machine has none of its version.
pub fn venv_name_of(store: &Store, python: &LockedPython, may_install: bool) -> Result<String> {
    let uv = crate::python::find_uv(store)?;
    let interpreter =
        crate::python::managed::interpreter(store, &uv, &python.version, may_install)?;
    Ok(crate::python::venv_name(&uv, &interpreter, python))
}
