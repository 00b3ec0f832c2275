//! Derivations: the unit of work between a lock and a home.
//!
//! A [`Derivation`] is one store path to produce — a git checkout, a registry archive, a model, a
//! wheel, a venv, or the home assembled from all of them — with a stable id, its inputs, its
//! output path when the lock pins it, and what to do to produce it (the [`Action`], built from a
//! lock entry). [`derivations`] turns a spec and its lock into the DAG; `realize --dry-run` shows
//! it (through `plan`) and [`exec::Executor`] runs exactly that DAG.
//!
//! Ids are derived from the kind, the name and what is pinned (the output path), or the spec's
//! source while nothing is pinned: the id of a pinned derivation is the same in the plan, in the
//! executor's report, and on every machine.

mod error;
pub mod exec;
pub mod keep;

use serde::Serialize;

pub use error::{combine, BuildError};

use crate::lock::{
    Lock, LockedGit, LockedModel, LockedPython, LockedRegistry, LockedWheel, LockedWorkflow,
};
use crate::python::PinnedWheel;
use crate::spec::{Model, NodeSource, Spec};

/// What kind of store path a derivation produces, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    #[serde(rename = "fetch-git")]
    FetchGit,
    #[serde(rename = "fetch-archive")]
    FetchArchive,
    #[serde(rename = "fetch-model")]
    FetchModel,
    #[serde(rename = "fetch-wheel")]
    FetchWheel,
    #[serde(rename = "fetch-uv")]
    FetchUv,
    #[serde(rename = "fetch-python")]
    FetchPython,
    #[serde(rename = "build-overlay")]
    BuildOverlay,
    #[serde(rename = "fetch-reference")]
    FetchReference,
    #[serde(rename = "add-workflow")]
    AddWorkflow,
    #[serde(rename = "build-venv")]
    BuildVenv,
    #[serde(rename = "assemble-home")]
    AssembleHome,
    #[serde(rename = "write-manifest")]
    WriteManifest,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FetchGit => "fetch-git",
            Kind::FetchArchive => "fetch-archive",
            Kind::FetchModel => "fetch-model",
            Kind::FetchWheel => "fetch-wheel",
            Kind::FetchUv => "fetch-uv",
            Kind::FetchPython => "fetch-python",
            Kind::BuildOverlay => "build-overlay",
            Kind::FetchReference => "fetch-reference",
            Kind::AddWorkflow => "add-workflow",
            Kind::BuildVenv => "build-venv",
            Kind::AssembleHome => "assemble-home",
            Kind::WriteManifest => "write-manifest",
        }
    }
}

/// How a derivation's output is produced.
#[derive(Debug, Clone)]
pub enum Action {
    /// A commit's tree out of the repository's mirror (fetched into it first when missing).
    Git {
        /// `core` or `node`, for messages.
        role: &'static str,
        locked: LockedGit,
    },
    /// A registry version's zip, downloaded, checked against the lock's BLAKE3 and unpacked.
    Archive { locked: LockedRegistry },
    /// A model file from its pinned URL (or `file://` source), checked against every digest.
    Model { locked: LockedModel },
    /// A wheel from its URL, a `--wheels-dir` or a `file://` URL, checked against its SHA-256.
    Wheel { locked: LockedWheel },
    /// uv: the machine's, or comfix's pinned uv fetched into the store.
    Uv,
    /// A reference of a substituted path, taken with it (only a substituter produces one).
    Reference,
    /// A workflow file of the version, in the store as the lock pins it.
    Workflow { locked: LockedWorkflow },
    /// Add the spec's `workflows[index]` (`file`, the path `rel` of the spec names) to the store.
    PinWorkflow {
        index: usize,
        rel: String,
        file: std::path::PathBuf,
    },
    /// The interpreter of a Python version: the machine's, or a managed one installed into the
    /// store by uv.
    Interpreter { version: String },
    /// This machine's torch backend over a Python set: its wheel set resolved from the backend's
    /// index, fetched, and stored as an overlay (a file naming the wheels).
    Overlay {
        python: Box<LockedPython>,
        backend: crate::python::torch::Backend,
        index: String,
    },
    /// The venv built by uv from the stored wheels (the inputs), at an input-addressed path.
    Venv { python: LockedPython },
    /// The home, assembled once every input is valid; what to assemble is set by the session
    /// before it runs the home (`None`: a plan's home, shown and not run).
    Home(Option<Box<HomeBuild>>),
    /// The uv in use kept in the store (the machine's copied in when the store has none), for a
    /// closure to carry: a machine without uv realizes its Python offline.
    CarryUv,
    /// A lock's manifest (`lock.json`, referencing every path of its closure), named `name`: what
    /// a pinned version's root holds.
    Manifest { lock: Box<Lock>, name: String },
    /// Pin a git source: its ref (or commit) resolved in the mirror, the commit checked out.
    PinGit {
        role: &'static str,
        repo: String,
        git_ref: Option<String>,
        commit: Option<String>,
    },
    /// Pin a registry node: its version (the latest when none) asked, the archive fetched.
    PinArchive { id: String, version: Option<String> },
    /// Pin a model source (`models[index]` of the spec): asked, downloaded and checked against
    /// the spec's digests.
    PinModel { index: usize, model: Box<Model> },
    /// Fetch a wheel uv pinned by its SHA-256 (its store path is its content's).
    PinWheel { wheel: PinnedWheel, from_lock: bool },
    /// Not pinned, and nothing pins it alone: the Python set, which `resolve` locks with uv.
    Unpinned,
}

impl Action {
    /// A pin: its output is known once it has run (like Nix's fixed-output derivations).
    pub fn is_pin(&self) -> bool {
        matches!(
            self,
            Action::PinGit { .. }
                | Action::PinArchive { .. }
                | Action::PinModel { .. }
                | Action::PinWheel { .. }
                | Action::PinWorkflow { .. }
        )
    }

    /// A model that may be left out when it cannot be had.
    pub fn is_optional(&self) -> bool {
        match self {
            Action::Model { locked } => !locked.required,
            Action::PinModel { model, .. } => !model.is_required(),
            _ => false,
        }
    }
}

/// A home to assemble: the lock (the machine's wheels over it) and where and how.
#[derive(Debug, Clone)]
pub struct HomeBuild {
    pub lock: Lock,
    pub options: crate::realize::RealizeOptions,
}

/// What a pin gave: the lock entry, store path included.
#[derive(Debug, Clone, PartialEq)]
pub enum Pinned {
    Git(LockedGit),
    Registry(LockedRegistry),
    Model(LockedModel),
    Wheel(LockedWheel),
    Workflow(LockedWorkflow),
}

impl Pinned {
    /// The derivation of what was pinned: the one a plan of the new lock names.
    pub fn derivation(&self, pin: &Derivation) -> Derivation {
        match (self, &pin.action) {
            (Pinned::Git(locked), Action::PinGit { role, .. }) => {
                Derivation::git(role, pin.name.clone(), locked)
            }
            (Pinned::Git(locked), _) => Derivation::git("node", pin.name.clone(), locked),
            (Pinned::Registry(locked), _) => Derivation::archive(pin.name.clone(), locked),
            (Pinned::Model(locked), _) => Derivation::model(pin.name.clone(), locked),
            (Pinned::Wheel(locked), _) => Derivation::wheel(locked),
            (Pinned::Workflow(locked), _) => Derivation::workflow(locked),
        }
    }
}

/// One node of the DAG.
#[derive(Debug, Clone)]
pub struct Derivation {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    /// Ids of the derivations whose outputs this one needs.
    pub inputs: Vec<String>,
    /// The store path, when known before running it.
    pub output: Option<String>,
    /// Bytes to download, when known.
    pub download_bytes: Option<u64>,
    pub action: Action,
}

impl Derivation {
    fn new(
        kind: Kind,
        name: String,
        identity: &str,
        output: Option<String>,
        action: Action,
    ) -> Self {
        Derivation {
            id: id(kind.as_str(), &name, output.as_deref().unwrap_or(identity)),
            kind,
            name,
            inputs: Vec::new(),
            output,
            download_bytes: None,
            action,
        }
    }

    pub fn git(role: &'static str, name: String, locked: &LockedGit) -> Derivation {
        Derivation::new(
            Kind::FetchGit,
            name,
            &locked.repo,
            Some(locked.store_path.clone()),
            Action::Git {
                role,
                locked: locked.clone(),
            },
        )
    }

    pub fn archive(name: String, locked: &LockedRegistry) -> Derivation {
        Derivation::new(
            Kind::FetchArchive,
            name,
            &locked.id,
            Some(locked.store_path.clone()),
            Action::Archive {
                locked: locked.clone(),
            },
        )
    }

    pub fn model(name: String, locked: &LockedModel) -> Derivation {
        let mut d = Derivation::new(
            Kind::FetchModel,
            name,
            &locked.source,
            Some(locked.store_path.clone()),
            Action::Model {
                locked: locked.clone(),
            },
        );
        d.download_bytes = Some(locked.size);
        d
    }

    pub fn wheel(locked: &LockedWheel) -> Derivation {
        Derivation::new(
            Kind::FetchWheel,
            locked.filename.clone(),
            &locked.filename,
            Some(locked.store_path.clone()),
            Action::Wheel {
                locked: locked.clone(),
            },
        )
    }

    /// The venv of `python`, whose inputs are its wheels' derivations; `output` is its
    /// input-addressed name on this machine, when the caller could compute it (it needs uv and the
    /// interpreter).
    pub fn venv(python: &LockedPython, wheels: &[Derivation], output: Option<String>) -> Self {
        let inputs: Vec<String> = wheels.iter().map(|w| w.id.clone()).collect();
        Derivation {
            id: id("build-venv", &python.version, &inputs.join(",")),
            kind: Kind::BuildVenv,
            name: format!("python{}", python.version),
            inputs,
            output,
            download_bytes: None,
            action: Action::Venv {
                python: python.clone(),
            },
        }
    }

    /// The tools a venv of `python` is built with: uv, then the interpreter (their outputs are
    /// the store paths when they come from the store; the machine's own have none).
    pub fn tools(python: &LockedPython) -> Vec<Derivation> {
        Derivation::tools_for(&python.version)
    }

    /// uv and the interpreter of Python `version`.
    pub fn tools_for(version: &str) -> Vec<Derivation> {
        let uv = Derivation::uv();
        let mut interpreter = Derivation::new(
            Kind::FetchPython,
            format!("python{version}"),
            version,
            None,
            Action::Interpreter {
                version: version.to_string(),
            },
        );
        interpreter.inputs = vec![uv.id.clone()];
        vec![uv, interpreter]
    }

    /// The torch overlay of `python` for `backend` (from `index`); its inputs are the tools.
    pub fn overlay(
        python: &LockedPython,
        backend: &crate::python::torch::Backend,
        index: &str,
    ) -> Derivation {
        let tools = Derivation::tools(python);
        let wheels: Vec<&str> = python.wheels.iter().map(|w| w.sha256.as_str()).collect();
        let identity = format!("{index}\n{}", wheels.join(","));
        let mut d = Derivation::new(
            Kind::BuildOverlay,
            format!("torch-{}", backend.tag()),
            &identity,
            None,
            Action::Overlay {
                python: Box::new(python.clone()),
                backend: backend.clone(),
                index: index.to_string(),
            },
        );
        d.inputs = tools.into_iter().map(|t| t.id).collect();
        d
    }

    /// A workflow file the lock pins.
    pub fn workflow(locked: &LockedWorkflow) -> Derivation {
        Derivation::new(
            Kind::AddWorkflow,
            locked.path.clone(),
            &locked.path,
            Some(locked.store_path.clone()),
            Action::Workflow {
                locked: locked.clone(),
            },
        )
    }

    /// The pin of the spec's `workflows[index]`: `rel` as the spec says it, read from `file`.
    pub fn pin_workflow(index: usize, rel: &str, file: std::path::PathBuf) -> Derivation {
        let action = Action::PinWorkflow {
            index,
            rel: rel.to_string(),
            file,
        };
        Derivation::new(Kind::AddWorkflow, rel.to_string(), rel, None, action)
    }

    /// A store path a substituter put in the store as a reference of another one's output.
    pub fn reference(name: String) -> Derivation {
        Derivation::new(
            Kind::FetchReference,
            name.clone(),
            &name,
            Some(name.clone()),
            Action::Reference,
        )
    }

    /// The manifest of `lock`, as the store path `<digest>-<name>`.
    pub fn manifest(lock: &Lock, name: &str) -> Derivation {
        let action = Action::Manifest {
            lock: Box::new(lock.clone()),
            name: name.to_string(),
        };
        Derivation::new(Kind::WriteManifest, name.to_string(), name, None, action)
    }

    /// The uv a closure carries (see [`Action::CarryUv`]).
    pub fn carry_uv() -> Derivation {
        Derivation::new(Kind::FetchUv, "uv".into(), "carry", None, Action::CarryUv)
    }

    /// uv: the machine's, else comfix's pinned uv in the store.
    pub fn uv() -> Derivation {
        Derivation::new(Kind::FetchUv, "uv".into(), "uv", None, Action::Uv)
    }

    /// The pin of a git source (the core, `role` `core`, or a node).
    pub fn pin_git(
        role: &'static str,
        name: String,
        repo: &str,
        git_ref: Option<&str>,
        commit: Option<&str>,
    ) -> Derivation {
        let action = Action::PinGit {
            role,
            repo: repo.to_string(),
            git_ref: git_ref.map(str::to_string),
            commit: commit.map(str::to_string),
        };
        Derivation::new(Kind::FetchGit, name, repo, None, action)
    }

    pub fn pin_archive(name: String, id: &str, version: Option<&str>) -> Derivation {
        let action = Action::PinArchive {
            id: id.to_string(),
            version: version.map(str::to_string),
        };
        Derivation::new(Kind::FetchArchive, name, id, None, action)
    }

    /// The pin of the spec's `models[index]`, named `name` in messages.
    pub fn pin_model(index: usize, model: &Model, name: String) -> Derivation {
        let action = Action::PinModel {
            index,
            model: Box::new(model.clone()),
        };
        Derivation::new(Kind::FetchModel, name, model.source.as_str(), None, action)
    }

    /// A wheel uv pinned: `from_lock` when the lock (not the index) gave its hash.
    pub fn pin_wheel(wheel: &PinnedWheel, from_lock: bool) -> Derivation {
        let action = Action::PinWheel {
            wheel: wheel.clone(),
            from_lock,
        };
        let name = wheel.filename.clone();
        let mut d = Derivation::new(Kind::FetchWheel, name, &wheel.sha256, None, action);
        d.download_bytes = wheel.size;
        d
    }

    /// What the messages call it: `core `comfy``, `node `x``, `model `y``, `wheel `z``.
    pub fn describe(&self) -> String {
        match &self.action {
            Action::Git { role, .. } => format!("{role} `{}`", self.name),
            Action::Archive { locked } => {
                format!(
                    "registry node `{}` ({} {})",
                    self.name, locked.id, locked.version
                )
            }
            Action::Model { locked, .. } => format!("model `{}` ({})", self.name, locked.url),
            Action::Wheel { locked } => match &locked.url {
                Some(url) => format!("wheel `{}` ({url})", locked.filename),
                None => format!("wheel `{}`", locked.filename),
            },
            Action::Venv { .. } => format!("venv `{}`", self.name),
            Action::Uv => "uv".to_string(),
            Action::CarryUv => "uv for the closure".to_string(),
            Action::Reference => format!("`{}` (a reference)", self.name),
            Action::Workflow { .. } | Action::PinWorkflow { .. } => {
                format!("workflow `{}`", self.name)
            }
            Action::Overlay { backend, .. } => format!("torch backend `{}`", backend.tag()),
            Action::Interpreter { version } => format!("Python {version}"),
            Action::Home(_) => format!("home `{}`", self.name),
            Action::Manifest { lock, .. } => format!("manifest of `{}`", lock.version_id),
            Action::PinGit { role, .. } => format!("{role} `{}`", self.name),
            Action::PinArchive { id, version } => format!(
                "registry node `{}` ({id} {})",
                self.name,
                version.as_deref().unwrap_or("latest")
            ),
            Action::PinModel { .. } => format!("model `{}`", self.name),
            Action::PinWheel { wheel, .. } => format!("wheel `{}`", wheel.filename),
            Action::Unpinned => format!("`{}` (not pinned)", self.name),
        }
    }
}

/// A derivation id: 16 hex digits of a hash of the kind, the name and the identity.
fn id(kind: &str, name: &str, identity: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [kind, name, identity] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// The DAG that realizes `spec` with `lock` (`None`: nothing pinned yet), in order: the core, the
/// nodes, the models (unless skipped), the wheels, the venv, and the home whose inputs are all
/// the others. `venv` is the venv's store path name when the caller could compute it.
pub fn derivations(
    spec: &Spec,
    lock: Option<&Lock>,
    venv: Option<&str>,
    skip_models: bool,
) -> Vec<Derivation> {
    use crate::lock::{locked_core, locked_model, locked_node};
    let mut out = Vec::new();
    out.push(match lock.and_then(|l| locked_core(spec, l)) {
        Some(core) => Derivation::git("core", "comfy".into(), core),
        None => Derivation::pin_git(
            "core",
            "comfy".into(),
            &spec.comfy.repo,
            spec.comfy.git_ref.as_deref(),
            spec.comfy.commit.as_deref(),
        ),
    });
    for node in &spec.custom_nodes {
        let locked = lock.and_then(|l| locked_node(node, l));
        let name = node.dir_name();
        if let NodeSource::Local { .. } = node.source() {
            continue; // a development node is linked as it is: nothing to fetch or build
        }
        out.push(match (node.source(), locked) {
            (NodeSource::Git { .. }, Some(n)) if n.git.is_some() => {
                Derivation::git("node", name, n.git.as_ref().expect("checked"))
            }
            (NodeSource::Registry { .. }, Some(n)) if n.registry.is_some() => {
                Derivation::archive(name, n.registry.as_ref().expect("checked"))
            }
            (NodeSource::Git { repo }, _) => Derivation::pin_git(
                "node",
                name,
                repo,
                node.git_ref.as_deref(),
                node.commit.as_deref(),
            ),
            (NodeSource::Registry { id, version }, _) => Derivation::pin_archive(name, id, version),
            (NodeSource::Local { .. }, _) => unreachable!("skipped above"),
        });
    }
    if !skip_models {
        for (index, model) in spec.models.iter().enumerate() {
            let name = model.name.clone().unwrap_or_else(|| model.file_name());
            out.push(match lock.and_then(|l| locked_model(model, l)) {
                Some(locked) => Derivation::model(name, locked),
                None => Derivation::pin_model(index, model, name),
            });
        }
    }
    for (index, rel) in spec.workflows.iter().enumerate() {
        let locked = lock.and_then(|l| l.workflows.iter().find(|w| w.path == *rel));
        out.push(match locked {
            Some(locked) => Derivation::workflow(locked),
            // The spec's directory is the resolver's: the plan shows the pin, resolve runs it.
            None => Derivation::pin_workflow(index, rel, rel.into()),
        });
    }
    match lock.and_then(|l| l.python.as_ref()) {
        Some(python) => {
            let wheels: Vec<Derivation> = python.wheels.iter().map(Derivation::wheel).collect();
            let venv = Derivation::venv(python, &wheels, venv.map(str::to_string));
            out.extend(Derivation::tools(python));
            out.extend(wheels);
            out.push(venv);
        }
        // Not locked yet: whether there is a Python environment is known after resolving.
        None if spec.python.is_some() => out.push(Derivation::new(
            Kind::FetchWheel,
            "python".into(),
            "python",
            None,
            Action::Unpinned,
        )),
        None => {}
    }
    out.push(home(&spec.version_id, &out));
    out
}

/// The derivations a lock pins, without a spec (what `store verify --repair` re-runs): no home,
/// and the venv only when its name on this machine is given.
pub fn derivations_of_lock(lock: &Lock, venv: Option<&str>) -> Vec<Derivation> {
    let mut out = vec![Derivation::git("core", "comfy".into(), &lock.comfy)];
    for node in &lock.custom_nodes {
        if let Some(git) = &node.git {
            out.push(Derivation::git("node", node.name.clone(), git));
        }
        if let Some(registry) = &node.registry {
            out.push(Derivation::archive(node.name.clone(), registry));
        }
    }
    for model in &lock.models {
        let name = model.name.clone().unwrap_or_else(|| model.filename.clone());
        out.push(Derivation::model(name, model));
    }
    if let Some(python) = &lock.python {
        let wheels: Vec<Derivation> = python.wheels.iter().map(Derivation::wheel).collect();
        let venv = venv.map(|v| Derivation::venv(python, &wheels, Some(v.to_string())));
        out.extend(wheels);
        out.extend(venv);
    }
    out
}

fn home(version_id: &str, inputs: &[Derivation]) -> Derivation {
    let inputs: Vec<String> = inputs.iter().map(|d| d.id.clone()).collect();
    Derivation {
        id: id("assemble-home", version_id, &inputs.join(",")),
        kind: Kind::AssembleHome,
        name: version_id.to_string(),
        inputs,
        output: None,
        download_bytes: None,
        action: Action::Home(None),
    }
}
