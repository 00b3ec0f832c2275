//! Assembling a generation under `generations/<N>.tmp`: the core, the nodes (with `.git` where
//! the store has the mirror), the user-data links, the models, the venv and
//! `extra_model_paths.yaml`, each placed with the link mode and recorded (mounts, placed files,
//! the digests of private copies from their verifying read).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::link::{self, Linker, Placed};
use super::USER_DATA;
use super::{disabled_dir_name, io, manager, verified, LinkMode, Mount, RealizeError, UsedMode};
use crate::lock::Lock;
use crate::store::tree::Digest;
use crate::store::Store;

/// A generation being built.
pub(super) struct Assembly<'a> {
    store: &'a Store,
    linker: Linker,
    building: PathBuf,
    mounts: Vec<Mount>,
    placed: Vec<Placed>,
    /// Digests of the private copies, from the verifying read.
    digests: BTreeMap<PathBuf, Digest>,
}

impl<'a> Assembly<'a> {
    pub(super) fn new(store: &'a Store, mode: LinkMode, building: PathBuf) -> Assembly<'a> {
        Assembly {
            store,
            linker: Linker::new(mode),
            building,
            mounts: Vec::new(),
            placed: Vec::new(),
            digests: BTreeMap::new(),
        }
    }

    /// Place the tree of store path `store_path` at `rel`, verified when it is a private copy.
    fn tree(&mut self, store_path: &str, rel: &str) -> Result<UsedMode, RealizeError> {
        let dest = self.building.join(rel);
        let (mode, files) = self
            .linker
            .tree(&self.store.path_of(store_path), &dest, rel)?;
        self.digests
            .extend(verified(self.store, store_path, &dest, mode)?);
        self.placed.extend(files);
        Ok(mode)
    }

    /// A shallow `.git` at the locked commit, as ComfyUI-Manager and comfy-cli read it; without
    /// the store's mirror (an imported store holds none) the tree is placed without one.
    fn git(
        &self,
        rel: &str,
        git: &crate::lock::LockedGit,
        warning: impl FnOnce(&str) -> String,
    ) -> Result<(), RealizeError> {
        let dir = self.building.join(rel);
        let git_ref = git.git_ref.as_deref();
        match manager::make_worktree(self.store, &dir, &git.repo, &git.commit, git_ref) {
            Ok(()) => Ok(()),
            Err(RealizeError::NoMirror { repo }) => {
                tracing::warn!("{}", warning(&repo));
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn mount(&mut self, at: String, store_path: &str, kind: &str, mode: UsedMode) {
        self.mounts.push(Mount {
            at,
            store_path: store_path.to_string(),
            kind: kind.into(),
            mode,
            in_place: None,
        });
    }

    /// The core, whose folders realize writes into must be its own, not links out of the home:
    /// a core tree with `custom_nodes -> /elsewhere` would make node placement write there.
    pub(super) fn core(&mut self, lock: &Lock) -> Result<(), RealizeError> {
        let mode = self.tree(&lock.comfy.store_path, "ComfyUI")?;
        for rel in ["custom_nodes", "custom_nodes/.disabled", "models"]
            .into_iter()
            .chain(USER_DATA)
        {
            let Ok(meta) = fs::symlink_metadata(self.building.join("ComfyUI").join(rel)) else {
                continue;
            };
            if meta.file_type().is_symlink() || !meta.is_dir() {
                let what = if meta.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return Err(RealizeError::Unsafe {
                    path: PathBuf::from("ComfyUI").join(rel),
                    what: format!("{what} in the core `{}`", lock.comfy.store_path),
                });
            }
        }
        self.git("ComfyUI", &lock.comfy, |repo| {
            format!(
                "the store has no mirror of the core's repository `{repo}`, so the core gets no `.git`"
            )
        })?;
        self.mount("ComfyUI".into(), &lock.comfy.store_path, "core", mode);
        Ok(())
    }

    /// The nodes: enabled ones under `custom_nodes/`, disabled ones under `.disabled/` as
    /// ComfyUI-Manager names them; git nodes as working trees.
    pub(super) fn nodes(&mut self, lock: &Lock) -> Result<(), RealizeError> {
        // ComfyUI lists `custom_nodes/` at startup and crashes without it; a core's git tree
        // cannot hold an empty folder.
        let folder = self.building.join("ComfyUI/custom_nodes");
        fs::create_dir_all(&folder).map_err(|e| RealizeError::Io {
            path: folder.clone(),
            source: e,
        })?;
        for node in &lock.custom_nodes {
            let rel = if node.enabled {
                format!("ComfyUI/custom_nodes/{}", node.name)
            } else {
                format!("ComfyUI/custom_nodes/.disabled/{}", disabled_dir_name(node))
            };
            if fs::symlink_metadata(self.building.join(&rel)).is_ok() {
                return Err(RealizeError::Conflict { at: rel });
            }
            if let Some(local) = &node.local {
                // A development node: linked to its directory, edited in place.
                if local
                    .current_hash()
                    .is_some_and(|now| now != local.tree_hash)
                {
                    tracing::warn!(
                        "development node `{}` changed since it was locked (`{}`); `comfix resolve` records it",
                        node.name,
                        local.path
                    );
                }
                let at = self.building.join(&rel);
                if let Some(parent) = at.parent() {
                    fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::os::unix::fs::symlink(&local.path, &at).map_err(io(&at))?;
                continue;
            }
            let store_path = match (&node.git, &node.registry) {
                (Some(g), _) => &g.store_path,
                (_, Some(r)) => &r.store_path,
                _ => continue,
            };
            let mode = self.tree(store_path, &rel)?;
            if let Some(git) = &node.git {
                self.git(&rel, git, |repo| {
                    format!(
                        "node `{}`: the store has no mirror of `{repo}`, so it gets no `.git`",
                        node.name
                    )
                })?;
            }
            self.mount(rel, store_path, "node", mode);
        }
        Ok(())
    }

    /// User data lives outside generations (`<home>/data/<dir>`); the core's own files there
    /// seed it, and the core's folder becomes a link to it.
    pub(super) fn user_data(&mut self, home: &super::Home) -> Result<(), RealizeError> {
        let data = home.root.join("data");
        for dir in USER_DATA {
            let shared = data.join(dir);
            fs::create_dir_all(&shared).map_err(io(&shared))?;
            let inside = self.building.join("ComfyUI").join(dir);
            if fs::symlink_metadata(&inside).is_ok() {
                for rel in link::list_files(&inside) {
                    let to = shared.join(&rel);
                    if fs::symlink_metadata(&to).is_err() {
                        if let Some(parent) = to.parent() {
                            fs::create_dir_all(parent).map_err(io(parent))?;
                        }
                        fs::rename(inside.join(&rel), &to).map_err(io(&to))?;
                    }
                }
                link::remove_tree(&inside).map_err(io(&inside))?;
                let prefix = format!("ComfyUI/{dir}/");
                self.placed.retain(|p| !p.path.starts_with(&prefix));
            }
            std::os::unix::fs::symlink(format!("../../../../data/{dir}"), &inside)
                .map_err(io(&inside))?;
        }
        Ok(())
    }

    /// The models under `models_root` (the generation's `models/`, or a shared directory where
    /// only comfix's own links may be replaced); returns the folders they use.
    pub(super) fn models(
        &mut self,
        lock: &Lock,
        models_root: &Path,
        local_models: bool,
        in_place: &BTreeMap<String, super::InPlaceFile>,
    ) -> Result<BTreeSet<String>, RealizeError> {
        fs::create_dir_all(models_root).map_err(io(models_root))?;
        let mut folders = BTreeSet::new();
        for model in &lock.models {
            let rel = match &model.target_subdir {
                Some(sub) => {
                    // The folder type is the first part (`checkpoints` of `checkpoints/sdxl`).
                    folders.insert(sub.split('/').next().unwrap_or(sub).to_string());
                    format!("{sub}/{}", model.filename)
                }
                None => model.filename.clone(),
            };
            let at = models_root.join(&rel);
            if let Some(parent) = at.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            if fs::symlink_metadata(&at).is_ok() {
                let ours = fs::read_link(&at)
                    .ok()
                    .is_some_and(|t| t.starts_with(self.store.path_of("")));
                if local_models {
                    return Err(RealizeError::Conflict { at: rel });
                }
                if !ours {
                    return Err(RealizeError::Foreign { path: at });
                }
                fs::remove_file(&at).map_err(io(&at))?;
            }
            let recorded = if local_models {
                format!("models/{rel}")
            } else {
                at.display().to_string()
            };
            // Where it lies, in an indexed folder: a link to the user's file.
            if let Some(file) = in_place.get(&model.store_path) {
                std::os::unix::fs::symlink(&file.path, &at).map_err(io(&at))?;
                self.mount(recorded, &model.store_path, "model", UsedMode::Symlink);
                if let Some(mount) = self.mounts.last_mut() {
                    mount.in_place = Some(file.clone());
                }
                continue;
            }
            let mode = link::model(&self.linker, &self.store.path_of(&model.store_path), &at)?;
            self.digests
                .extend(verified(self.store, &model.store_path, &at, mode)?);
            if local_models && matches!(mode, UsedMode::Copy | UsedMode::Reflink) {
                self.placed
                    .push(Placed::of(recorded.clone(), &at).map_err(io(&at))?);
            }
            self.mount(recorded, &model.store_path, "model", mode);
        }
        Ok(folders)
    }

    /// The venv: a read-only link to its store path (or a copy on request).
    pub(super) fn venv(&mut self, venv: &str) -> Result<(), RealizeError> {
        let dest = self.building.join(".venv");
        let mode = match self.linker.model_mode() {
            UsedMode::Symlink => {
                std::os::unix::fs::symlink(self.store.path_of(venv), &dest).map_err(io(&dest))?;
                UsedMode::Symlink
            }
            _ => {
                let (mode, _) = self
                    .linker
                    .tree(&self.store.path_of(venv), &dest, ".venv")?;
                self.digests
                    .extend(verified(self.store, venv, &dest, mode)?);
                mode
            }
        };
        self.mount(".venv".into(), venv, "venv", mode);
        Ok(())
    }

    /// `ComfyUI/extra_model_paths.yaml`, placed and recorded with its digest.
    pub(super) fn model_paths_yaml(&mut self, yaml: &str) -> Result<(), RealizeError> {
        let path = self.building.join("ComfyUI/extra_model_paths.yaml");
        fs::write(&path, yaml).map_err(io(&path))?;
        let mut placed =
            Placed::of("ComfyUI/extra_model_paths.yaml".into(), &path).map_err(io(&path))?;
        placed.digest = Some(blake3::hash(yaml.as_bytes()).to_hex().to_string());
        self.placed.push(placed);
        Ok(())
    }

    /// The mounts and the placed files, each private copy with its digest.
    pub(super) fn finish(mut self) -> (Vec<Mount>, Vec<Placed>) {
        for entry in self.placed.iter_mut() {
            if let Some(digest) = self.digests.get(&self.building.join(&entry.path)) {
                entry.digest = Some(blake3::Hash::from(*digest).to_hex().to_string());
            }
        }
        (self.mounts, self.placed)
    }
}
