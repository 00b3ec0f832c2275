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

use crate::lock::{Lock, LockedGit, LockedModel, LockedPython, LockedRegistry, LockedWheel};
use crate::spec::{NodeSource, Spec};

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
    #[serde(rename = "build-venv")]
    BuildVenv,
    #[serde(rename = "assemble-home")]
    AssembleHome,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FetchGit => "fetch-git",
            Kind::FetchArchive => "fetch-archive",
            Kind::FetchModel => "fetch-model",
            Kind::FetchWheel => "fetch-wheel",
            Kind::BuildVenv => "build-venv",
            Kind::AssembleHome => "assemble-home",
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
    /// The venv built by uv from the stored wheels (the inputs), at an input-addressed path.
    Venv { python: LockedPython },
    /// The home: done by `realize` once every input is valid.
    Home,
    /// Not pinned yet: `resolve` pins it (and then it has another id). An optional model the lock
    /// left out stays here and is reported missing.
    Unpinned { optional: bool },
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

    fn unpinned(kind: Kind, name: String, source: &str, optional: bool) -> Derivation {
        Derivation::new(kind, name, source, None, Action::Unpinned { optional })
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
            Action::Home => format!("home `{}`", self.name),
            Action::Unpinned { .. } => format!("`{}` (not pinned)", self.name),
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
        None => Derivation::unpinned(Kind::FetchGit, "comfy".into(), &spec.comfy.repo, false),
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
            (NodeSource::Git { repo }, _) => {
                Derivation::unpinned(Kind::FetchGit, name, repo, false)
            }
            (NodeSource::Registry { id, .. }, _) => {
                Derivation::unpinned(Kind::FetchArchive, name, id, false)
            }
            (NodeSource::Local { .. }, _) => unreachable!("skipped above"),
        });
    }
    if !skip_models {
        for model in &spec.models {
            let name = model.name.clone().unwrap_or_else(|| model.file_name());
            out.push(match lock.and_then(|l| locked_model(model, l)) {
                Some(locked) => Derivation::model(name, locked),
                None => Derivation::unpinned(
                    Kind::FetchModel,
                    name,
                    model.source.as_str(),
                    !model.is_required(),
                ),
            });
        }
    }
    match lock.and_then(|l| l.python.as_ref()) {
        Some(python) => {
            let wheels: Vec<Derivation> = python.wheels.iter().map(Derivation::wheel).collect();
            let venv = Derivation::venv(python, &wheels, venv.map(str::to_string));
            out.extend(wheels);
            out.push(venv);
        }
        // Not locked yet: whether there is a Python environment is known after resolving.
        None if spec.python.is_some() => out.push(Derivation::unpinned(
            Kind::FetchWheel,
            "python".into(),
            "python",
            false,
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
        action: Action::Home,
    }
}
