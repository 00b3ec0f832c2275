//! Running a realized home: start ComfyUI from it, wait until it answers, drive workflows
//! through its API (check what they need, submit, follow, collect outputs), stop it for certain.
//!
//! `server` is the process, `client` the API, `workflow` the graph and what a home lacks for it,
//! `needs` what a workflow file says it needs (packs, models; read without a server), `test` the
//! per-workflow pipeline of `comfix test`, `junit` its report for CI systems.

pub mod client;
pub mod junit;
pub mod needs;
pub mod server;
pub mod test;
pub mod workflow;

use std::fs;
use std::path::{Path, PathBuf};

use crate::lock::Lock;
use crate::realize::Home;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("`{}` is not a realized home (it has no current generation)", .0.display())]
    NotAHome(PathBuf),
    #[error("`{}` has no ComfyUI core (no `main.py`)", .0.display())]
    NoCore(PathBuf),
    #[error("cannot start `{}`: {source}", python.display())]
    Spawn {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error("port {port} on {listen} is in use")]
    PortInUse { listen: String, port: u16 },
    #[error("ComfyUI did not start: {reason}{}{}", log.as_ref().map(|l| format!("\n  log: {}", l.display())).unwrap_or_default(), if tail.is_empty() { String::new() } else { format!("\n  last lines of its output:\n{}", tail.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")) })]
    NotStarted {
        reason: String,
        log: Option<PathBuf>,
        tail: String,
    },
    #[error("ComfyUI at {url}: {message}")]
    Api { url: String, message: String },
    #[error("workflow `{}`: {source}", path.display())]
    Workflow {
        path: PathBuf,
        source: workflow::WorkflowError,
    },
    #[error("the version `{0}` names no workflows")]
    NoWorkflows(String),
    #[error("I/O error at `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RunError {
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            RunError::Io { .. } | RunError::Api { .. } | RunError::NotStarted { .. }
        )
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            RunError::NotAHome(_) => {
                Some("realize a version there first: `comfix realize <ID> --target DIR`".into())
            }
            RunError::PortInUse { .. } => {
                Some("choose another with `--port`, or stop what listens there".into())
            }
            RunError::NoWorkflows(_) => {
                Some("give `--workflow FILE`, or list them in the spec's `workflows`".into())
            }
            RunError::Spawn { .. } => Some(
                "the home's venv may be damaged: `comfix status` and `comfix realize` put it back"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// A realized home as ComfyUI runs from it.
pub struct RunHome {
    pub root: PathBuf,
    pub generation: u32,
    pub version_id: String,
    /// The lock the generation realized (from its manifest), when the store holds it.
    pub lock: Option<Lock>,
    models_dir: PathBuf,
}

impl RunHome {
    /// The current generation of the home at `root`.
    pub fn open(root: &Path, store: Option<&Store>) -> Result<RunHome, RunError> {
        let home = Home::new(root).map_err(|_| RunError::NotAHome(root.to_path_buf()))?;
        let generation = home
            .current()
            .ok_or_else(|| RunError::NotAHome(root.to_path_buf()))?;
        let record = home
            .read_generation(generation)
            .map_err(|_| RunError::NotAHome(root.to_path_buf()))?;
        let lock = store.and_then(|s| crate::lock::manifest::read(s, &record.manifest));
        Ok(RunHome {
            root: home.root.clone(),
            generation,
            version_id: record.version_id,
            lock,
            models_dir: record.models_dir,
        })
    }

    pub fn core(&self) -> PathBuf {
        self.root.join("ComfyUI")
    }

    /// The home's venv interpreter; a version without Python dependencies runs on the machine's
    /// `python3`.
    pub fn python(&self) -> PathBuf {
        let venv = self.root.join(".venv/bin/python");
        if venv.exists() {
            venv
        } else {
            tracing::warn!(
                "`{}` has no venv (the version has no `python` section): running ComfyUI with `python3` from PATH",
                self.root.display()
            );
            PathBuf::from("python3")
        }
    }

    /// The version's workflows (from its lock, stored with its closure): `(name, file)`.
    pub fn workflows(&self, store: &Store) -> Vec<(String, PathBuf)> {
        let Some(lock) = &self.lock else {
            return Vec::new();
        };
        lock.workflows
            .iter()
            .map(|w| {
                let path = store.path_of(&w.store_path);
                let file = if path.is_dir() {
                    fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path())
                        .find(|p| p.is_file())
                        .unwrap_or(path)
                } else {
                    path
                };
                (w.path.clone(), file)
            })
            .collect()
    }

    /// Where `/object_info` of this generation is kept (so `check-workflow` need not start
    /// ComfyUI again: a generation's node code never changes).
    pub fn object_info_cache(&self) -> PathBuf {
        self.root
            .join(".comfix/object_info")
            .join(format!("{}.json", self.generation))
    }

    pub fn cached_object_info(&self) -> Option<workflow::ObjectInfo> {
        let bytes = fs::read(self.object_info_cache()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn keep_object_info(&self, info: &workflow::ObjectInfo) {
        let path = self.object_info_cache();
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(path.parent().expect("has a parent"))?;
            let tmp = path.with_extension("json.tmp");
            fs::write(
                &tmp,
                serde_json::to_vec(info).map_err(std::io::Error::other)?,
            )?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::debug!("not keeping /object_info at `{}`: {e}", path.display());
        }
    }

    /// The model folders of the home: `ComfyUI/models/*` and the models directory's.
    fn model_folders(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for base in [self.core().join("models"), self.models_dir.clone()] {
            for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    out.push(entry.path());
                }
            }
        }
        out
    }
}

impl workflow::Hints for RunHome {
    fn node(&self, class_type: &str) -> Option<String> {
        // A disabled node pack of the home that defines the class.
        let disabled = self.core().join("custom_nodes/.disabled");
        let quoted = [format!("\"{class_type}\""), format!("'{class_type}'")];
        for entry in fs::read_dir(&disabled).into_iter().flatten().flatten() {
            let defines = walkdir::WalkDir::new(entry.path())
                .max_depth(4)
                .into_iter()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "py"))
                .any(|e| {
                    fs::read_to_string(e.path())
                        .is_ok_and(|code| quoted.iter().any(|q| code.contains(q.as_str())))
                });
            if defines {
                return Some(format!(
                    "the disabled node `{}` defines it: enable it in the spec",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
        None
    }

    fn model(&self, file: &str) -> Option<String> {
        let lock = self.lock.as_ref()?;
        let name = file.rsplit('/').next().unwrap_or(file);
        let Some(model) = lock.models.iter().find(|m| m.filename == name) else {
            return Some("the version has no such model: add it to the spec's `models`".into());
        };
        let label = model.name.clone().unwrap_or_else(|| model.source.clone());
        let at = match &model.target_subdir {
            Some(dir) => format!("{dir}/{}", model.filename),
            None => model.filename.clone(),
        };
        Some(format!(
            "the version's model `{label}` is this file at `{at}`: realize without `--skip-models`, or check its `target_subdir`"
        ))
    }

    fn model_present(&self, file: &str) -> bool {
        self.model_folders()
            .iter()
            .any(|folder| folder.join(file).is_file())
    }
}
