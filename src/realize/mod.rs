//! Realization: a lock's store paths materialized as a `COMFY_HOME`, in numbered generations.
//!
//! A home looks like this (`docs/realize.md` has the details):
//!
//! ```text
//! <home>/ComfyUI -> .comfix/current/ComfyUI     the core, nodes under custom_nodes/
//! <home>/models  -> .comfix/current/models      unless --models-dir / $MODELS_DIR
//! <home>/data/{output,input,user,temp}/        user data; ComfyUI/<dir> links here
//! <home>/.comfix/current -> generations/<N>     switched atomically by rename
//! <home>/.comfix/generations/<N>/               ComfyUI/, models/, generation.json, files.json
//! ```
//!
//! A new generation is built beside the current one, made durable, then `current` is replaced in
//! one rename: a crash leaves the old generation or the new one, never a mix. User data lives
//! outside the generations; files a user added inside the trees are carried into the new
//! generation (by hard link). Each generation is a GC root through its home manifest store path,
//! which references every store path the generation uses.

mod link;
mod manager;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use link::{LinkMode, UsedMode};
use link::{Linker, Placed};

use crate::fault::pause_point;
use crate::hint::Hint;
use crate::lock::Lock;
use crate::store::{Store, StoreError};

/// The user data directories of ComfyUI, kept outside the generations.
pub const USER_DATA: [&str; 4] = ["output", "input", "user", "temp"];

#[derive(Debug, thiserror::Error)]
pub enum RealizeError {
    #[error("I/O error on `{}`: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    LinkMode { message: String },
    #[error("Git error in `{}`: {message}", .path.display())]
    Git { path: PathBuf, message: String },
    #[error("`{}` exists and was not made by comfix", .path.display())]
    Foreign { path: PathBuf },
    #[error("`{}` is {what}; comfix neither follows nor replaces it", .path.display())]
    Unsafe { path: PathBuf, what: String },
    #[error("`{}` is not a comfix home (no generations)", .path.display())]
    NotAHome { path: PathBuf },
    #[error("Home `{}` has no generation before {current}", .home.display())]
    NoPrevious { home: PathBuf, current: u32 },
    #[error("The store has no git mirror of `{repo}`")]
    NoMirror { repo: String },
    #[error("Two entries of the version would be placed at `{at}`")]
    Conflict { at: String },
    #[error("{what} `{}` is inside the store `{}`", .path.display(), .store.display())]
    InsideStore {
        what: &'static str,
        path: PathBuf,
        store: PathBuf,
    },
    #[error("The store `{}` is inside {what} `{}`", .store.display(), .path.display())]
    StoreInside {
        what: &'static str,
        path: PathBuf,
        store: PathBuf,
    },
    #[error("Store path `{store_path}` is damaged{}: its bytes are not the ones it was stored with", .file.as_ref().map(|f| format!(" (`{f}`)")).unwrap_or_default())]
    Damaged {
        store_path: String,
        file: Option<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Hint for RealizeError {
    fn hint(&self) -> Option<String> {
        match self {
            RealizeError::Foreign { .. } | RealizeError::Unsafe { .. } => {
                Some("move it away, or realize into another directory with `--target`".into())
            }
            RealizeError::NotAHome { .. } => {
                Some("run `comfix realize` first, or pass the home with `--target`".into())
            }
            RealizeError::Conflict { .. } => {
                Some("give the nodes or models different names or folders".into())
            }
            RealizeError::InsideStore { .. } | RealizeError::StoreInside { .. } => Some(
                "homes, models directories and stores never contain each other (the garbage collector would take one for the other): choose another `--target`, `--models-dir` or `--store`".into(),
            ),
            RealizeError::Damaged { .. } => Some(
                "nothing was switched; run `comfix store verify --repair` to restore it from its source, then realize again".into(),
            ),
            RealizeError::Store(e) => e.hint(),
            _ => None,
        }
    }

    fn is_user_error(&self) -> bool {
        match self {
            RealizeError::Io { .. } | RealizeError::Git { .. } => false,
            RealizeError::Store(e) => e.is_user_error(),
            _ => true,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RealizeError + '_ {
    move |source| RealizeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The default home: `/runpod-volume/comfy-<id>` when `/runpod-volume` exists, else
/// `$HOME/comfy-<id>`, else `./comfy-<id>`.
pub fn default_target(version_id: &str, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    let name = format!("comfy-{version_id}");
    if Path::new("/runpod-volume").is_dir() {
        return Path::new("/runpod-volume").join(name);
    }
    match env("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(name),
        None => PathBuf::from(".").join(name),
    }
}

/// How to realize.
#[derive(Debug, Clone)]
pub struct RealizeOptions {
    pub target: PathBuf,
    /// An external models directory (shared between homes); `None` means `<home>/models`.
    pub models_dir: Option<PathBuf>,
    pub skip_models: bool,
    pub link_mode: LinkMode,
    /// The venv store path, linked as `<home>/.venv`.
    pub venv: Option<String>,
    /// Optional models of the spec that could not be fetched (`loras/x.safetensors`): recorded
    /// in the generation, so `status` shows them missing.
    pub not_fetched: Vec<String>,
    /// Report whether the home is up to date (and its drift) and change nothing.
    pub check: bool,
}

/// Where a store path is placed in a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Relative to the generation directory (`ComfyUI/custom_nodes/gguf`), or absolute for models
    /// in an external models directory.
    pub at: String,
    pub store_path: String,
    pub kind: String,
    pub mode: UsedMode,
}

/// `generation.json`: what a generation is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u32,
    pub version_id: String,
    /// Identifies the lock and options; equal keys mean re-realizing is a no-op.
    pub key: String,
    pub created_at: i64,
    pub models_dir: PathBuf,
    pub skip_models: bool,
    pub link_mode: LinkMode,
    /// The home manifest store path (a GC root) that references every store path used.
    pub manifest: String,
    pub mounts: Vec<Mount>,
    /// Optional models left out because they could not be fetched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_fetched: Vec<String>,
}

/// What `realize` did.
#[derive(Debug, Clone, Serialize)]
pub struct RealizeReport {
    pub target: PathBuf,
    pub version_id: String,
    pub generation: u32,
    pub previous: Option<u32>,
    pub up_to_date: bool,
    /// The link mode used per kind of content (`core`, `node`, `model`).
    pub link_modes: BTreeMap<String, UsedMode>,
    pub models_dir: PathBuf,
    pub carried_user_files: usize,
    /// Managed files of the previous generation that had changed (`changed:`) or gone missing
    /// (`missing:`): realize put them back.
    pub drift: Vec<String>,
    /// Where the user's edits of managed files were kept (`.comfix/saved/<N>/<path>`).
    pub saved: Vec<PathBuf>,
    /// What became of each derivation of the plan, under the plan's ids (filled in by the caller
    /// that ran them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub derivations: Vec<crate::build::exec::Outcome>,
}

/// The paths of a home.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn new(root: &Path) -> Result<Home, RealizeError> {
        let root = std::path::absolute(root).map_err(io(root))?;
        Ok(Home { root })
    }
    fn meta(&self) -> PathBuf {
        self.root.join(".comfix")
    }

    /// Refuse a home whose own entries were planted: `.comfix` and what comfix keeps in it must
    /// be real directories and files (a symlink would make realize write where it points),
    /// `current` a link to a generation, and the top links comfix's own.
    fn check_safe(&self) -> Result<(), RealizeError> {
        let unsafe_entry = |path: PathBuf, what: &str| RealizeError::Unsafe {
            path,
            what: what.into(),
        };
        let kind = |path: &Path| fs::symlink_metadata(path).ok().map(|m| m.file_type());
        if let Ok(meta) = fs::symlink_metadata(&self.root) {
            if meta.file_type().is_symlink() {
                // The target itself may be a link (to a bigger disk); its entries may not.
            } else if !meta.is_dir() {
                return Err(unsafe_entry(self.root.clone(), "not a directory"));
            }
        }
        for dir in [self.meta(), self.generations(), self.meta().join("saved")] {
            match kind(&dir) {
                Some(t) if t.is_symlink() => return Err(unsafe_entry(dir, "a symlink")),
                Some(t) if !t.is_dir() => return Err(unsafe_entry(dir, "not a directory")),
                _ => {}
            }
        }
        let lock = self.meta().join("lock");
        if kind(&lock).is_some_and(|t| !t.is_file()) {
            return Err(unsafe_entry(lock, "not a regular file"));
        }
        match kind(&self.current_link()) {
            Some(t) if !t.is_symlink() => {
                return Err(unsafe_entry(self.current_link(), "not a symlink"))
            }
            Some(_) => {
                let target =
                    fs::read_link(self.current_link()).map_err(io(&self.current_link()))?;
                let ok = target
                    .strip_prefix("generations")
                    .ok()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                if !ok {
                    return Err(unsafe_entry(
                        self.current_link(),
                        &format!("a link to `{}`, not to a generation", target.display()),
                    ));
                }
            }
            None => {}
        }
        for entry in fs::read_dir(self.generations())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name.strip_suffix(".tmp").unwrap_or(&name);
            if number.parse::<u32>().is_err() {
                return Err(unsafe_entry(entry.path(), "not a generation"));
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => {}
                Ok(t) if t.is_symlink() => return Err(unsafe_entry(entry.path(), "a symlink")),
                _ => return Err(unsafe_entry(entry.path(), "not a directory")),
            }
        }
        for (name, target) in [
            ("ComfyUI", ".comfix/current/ComfyUI"),
            ("models", ".comfix/current/models"),
            (".venv", ".comfix/current/.venv"),
        ] {
            let at = self.root.join(name);
            if let Ok(existing) = fs::read_link(&at) {
                if existing != Path::new(target) {
                    return Err(unsafe_entry(
                        at,
                        &format!("a symlink to `{}`, not comfix's", existing.display()),
                    ));
                }
            }
        }
        Ok(())
    }
    fn generations(&self) -> PathBuf {
        self.meta().join("generations")
    }
    pub fn generation_dir(&self, n: u32) -> PathBuf {
        self.generations().join(n.to_string())
    }
    fn current_link(&self) -> PathBuf {
        self.meta().join("current")
    }

    /// The generation `current` points to.
    pub fn current(&self) -> Option<u32> {
        let target = fs::read_link(self.current_link()).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// Every complete generation, ascending.
    pub fn list(&self) -> Vec<u32> {
        let mut out: Vec<u32> = fs::read_dir(self.generations())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort_unstable();
        out
    }

    pub fn read_generation(&self, n: u32) -> Result<Generation, RealizeError> {
        let path = self.generation_dir(n).join("generation.json");
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| RealizeError::Io {
            path,
            source: std::io::Error::other(e),
        })
    }

    fn read_files(&self, n: u32) -> Vec<Placed> {
        fs::read(self.generation_dir(n).join("files.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn lock(&self) -> Result<crate::store::lock::LockGuard, RealizeError> {
        fs::create_dir_all(self.generations()).map_err(io(&self.generations()))?;
        let path = self.meta().join("lock");
        crate::store::lock::exclusive(&path).map_err(io(&path))
    }

    /// The name of the GC root of generation `n`.
    pub fn root_name(&self, n: u32) -> String {
        format!("home:{}#{n}", self.root.display())
    }

    /// Point `current` at generation `n` in one rename.
    fn switch(&self, n: u32) -> Result<(), RealizeError> {
        let tmp = self.meta().join("current.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("generations/{n}"), &tmp).map_err(io(&tmp))?;
        fs::rename(&tmp, self.current_link()).map_err(io(&self.current_link()))?;
        sync_dir(&self.meta());
        Ok(())
    }

    /// Make sure `<home>/ComfyUI` (and `<home>/models` for a home-local models directory) point
    /// into `current`; refuse to replace anything comfix did not make.
    fn ensure_top_links(&self, local_models: bool, venv: bool) -> Result<(), RealizeError> {
        let mut wanted = vec![("ComfyUI", ".comfix/current/ComfyUI")];
        if local_models {
            wanted.push(("models", ".comfix/current/models"));
        }
        let venv_link = self.root.join(".venv");
        if venv {
            wanted.push((".venv", ".comfix/current/.venv"));
        } else if fs::read_link(&venv_link).is_ok_and(|t| t == Path::new(".comfix/current/.venv")) {
            // This generation has no venv; ours would dangle.
            fs::remove_file(&venv_link).map_err(io(&venv_link))?;
        }
        for (name, target) in wanted {
            let at = self.root.join(name);
            match fs::read_link(&at) {
                Ok(existing) if existing == Path::new(target) => continue,
                Ok(_) => fs::remove_file(&at).map_err(io(&at))?,
                Err(_) if fs::symlink_metadata(&at).is_ok() => {
                    return Err(RealizeError::Foreign { path: at })
                }
                Err(_) => {}
            }
            std::os::unix::fs::symlink(target, &at).map_err(io(&at))?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(file) = fs::File::open(dir) {
        let _ = rustix::fs::syncfs(&file);
    }
}

/// The directory a disabled node goes to, as ComfyUI-Manager names it.
pub fn disabled_dir_name(node: &crate::lock::LockedNode) -> String {
    match &node.registry {
        Some(r) => format!("{}@{}", r.id.to_lowercase(), r.version.replace('.', "_")),
        None => format!("{}@nightly", node.name.to_lowercase()),
    }
}

/// The key of a realization: the lock and the options that shape the home.
fn realization_key(lock: &Lock, options: &RealizeOptions, models_dir: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(lock.to_text().as_bytes());
    hasher.update(models_dir.as_os_str().as_encoded_bytes());
    hasher.update(&[options.skip_models as u8]);
    hasher.update(format!("{:?}", options.link_mode).as_bytes());
    hasher.update(options.venv.as_deref().unwrap_or("").as_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

/// `path` made absolute and free of symlinks and `..` as far as it exists; the rest appended.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuse a home or models directory inside the store, and a store inside either: the
/// collector would delete a home it took for garbage, or a home's owner the store.
pub fn check_apart(
    store: &Path,
    target: &Path,
    models_dir: Option<&Path>,
) -> Result<(), RealizeError> {
    let store = resolved(store);
    let places = [
        ("the home", Some(target)),
        ("the models directory", models_dir),
    ];
    for (what, path) in places {
        let Some(path) = path else { continue };
        let path = resolved(path);
        if path.starts_with(&store) {
            return Err(RealizeError::InsideStore { what, path, store });
        }
        if store.starts_with(&path) {
            return Err(RealizeError::StoreInside { what, path, store });
        }
    }
    Ok(())
}

/// A generation being built, removed on drop unless it was finished.
struct Unfinished(Option<PathBuf>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(err) = link::remove_tree(&dir) {
                tracing::warn!(
                    "cannot remove the unfinished generation `{}`: {err}",
                    dir.display()
                );
            }
        }
    }
}

/// A copy or reflink out of the store is checked against the path's registered tree hash (links
/// share the store's bytes, which `store verify` checks).
fn verified(
    store: &Store,
    store_path: &str,
    at: &Path,
    mode: UsedMode,
) -> Result<Vec<(PathBuf, crate::store::tree::Digest)>, RealizeError> {
    match mode {
        UsedMode::Copy | UsedMode::Reflink => link::verify_copy(store, store_path, at),
        UsedMode::Hardlink | UsedMode::Symlink => Ok(Vec::new()),
    }
}

/// Realize `lock` (whose store paths must all be valid) into `options.target`.
pub fn realize(
    store: &Store,
    lock: &Lock,
    options: &RealizeOptions,
) -> Result<RealizeReport, RealizeError> {
    check_apart(store.root(), &options.target, options.models_dir.as_deref())?;
    let home = Home::new(&options.target)?;
    home.check_safe()?;
    if let Ok(meta) = fs::symlink_metadata(home.root.join("ComfyUI")) {
        if !meta.file_type().is_symlink() {
            return Err(RealizeError::Foreign {
                path: home.root.join("ComfyUI"),
            });
        }
    }
    // A check reads the home and writes nothing, not even the home's lock.
    let _lock = if options.check {
        None
    } else {
        Some(home.lock()?)
    };
    // Everything this generation uses stays alive while we work, whatever a collector does.
    // The paths this generation uses: without the models when they are skipped (the store may
    // not hold them).
    let used: Vec<&str> = lock
        .store_paths()
        .into_iter()
        .filter(|p| !options.skip_models || !lock.models.iter().any(|m| m.store_path == *p))
        .collect();
    store.protect(&used)?;
    if let Some(venv) = &options.venv {
        store.protect(&[venv])?;
    }
    if !options.check {
        store.protect(&[&format!(
            "git/{}",
            crate::fetch::git::mirror_name(&lock.comfy.repo)
        )])?;
    }
    for node in lock.custom_nodes.iter().filter(|_| !options.check) {
        if let Some(git) = &node.git {
            store.protect(&[&format!(
                "git/{}",
                crate::fetch::git::mirror_name(&git.repo)
            )])?;
        }
    }
    let local_models = options.models_dir.is_none();
    let models_dir = match &options.models_dir {
        Some(dir) => std::path::absolute(dir).map_err(io(dir))?,
        None => home.root.join("models"),
    };
    let key = realization_key(lock, options, &models_dir);
    let current = home.current();

    // Re-realizing what is already current is a check, not work — unless the home drifted: then
    // a new generation puts every managed file back.
    let mut drifted = Vec::new();
    let mut current_files = None;
    if let Some(n) = current {
        if let Ok(generation) = home.read_generation(n) {
            let placed = home.read_files(n);
            let found = drift(store, &home, n, &generation, &placed, false)?;
            drifted.extend(found.changed.iter().map(|p| format!("changed:{p}")));
            drifted.extend(found.missing.iter().map(|p| format!("missing:{p}")));
            let same = generation.key == key && drifted.is_empty();
            if options.check
                || (same
                    && home
                        .ensure_top_links(local_models, options.venv.is_some())
                        .is_ok())
            {
                return Ok(RealizeReport {
                    target: home.root.clone(),
                    version_id: lock.version_id.clone(),
                    generation: n,
                    previous: None,
                    up_to_date: same,
                    link_modes: modes_of(&generation.mounts),
                    models_dir,
                    carried_user_files: 0,
                    drift: drifted,
                    saved: Vec::new(),
                    derivations: Vec::new(),
                });
            }
            if !found.changed.is_empty() {
                tracing::warn!(
                    "{} managed file(s) of generation {n} were edited; realizing a new generation",
                    found.changed.len()
                );
            }
            current_files = Some((generation, placed));
        }
    }
    if options.check {
        return Err(RealizeError::NotAHome {
            path: home.root.clone(),
        });
    }

    // Leftovers of an interrupted realization.
    for entry in fs::read_dir(home.generations())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            link::remove_tree(&entry.path()).map_err(io(&entry.path()))?;
        }
    }
    let number = home.list().last().copied().unwrap_or(0) + 1;
    let building = home.generations().join(format!("{number}.tmp"));
    fs::create_dir_all(&building).map_err(io(&building))?;
    // A realize that fails (a damaged object, a full disk) takes its half-built generation away.
    let mut unfinished = Unfinished(Some(building.clone()));

    let linker = Linker::new(options.link_mode);
    let mut mounts = Vec::new();
    let mut placed = Vec::new();

    // The core.
    let core_src = store.path_of(&lock.comfy.store_path);
    let (mode, files) = linker.tree(&core_src, &building.join("ComfyUI"), "ComfyUI")?;
    // Digests of the private copies, from the verifying read.
    let mut digests: BTreeMap<PathBuf, crate::store::tree::Digest> = BTreeMap::new();
    digests.extend(verified(
        store,
        &lock.comfy.store_path,
        &building.join("ComfyUI"),
        mode,
    )?);
    placed.extend(files);
    // The directories realize writes into must be the core's own, not links out of the home: a
    // core tree with `custom_nodes -> /elsewhere` would make node placement write there.
    for rel in ["custom_nodes", "custom_nodes/.disabled", "models"]
        .into_iter()
        .chain(USER_DATA)
    {
        let at = building.join("ComfyUI").join(rel);
        if let Ok(meta) = fs::symlink_metadata(&at) {
            if meta.file_type().is_symlink() || !meta.is_dir() {
                return Err(RealizeError::Unsafe {
                    path: PathBuf::from("ComfyUI").join(rel),
                    what: format!(
                        "{} in the core `{}`",
                        if meta.file_type().is_symlink() {
                            "a symlink"
                        } else {
                            "not a directory"
                        },
                        lock.comfy.store_path
                    ),
                });
            }
        }
    }
    // A shallow `.git` at the locked commit, as the nodes have: ComfyUI-Manager and comfy-cli
    // read the core's commit and version from it.
    match manager::make_worktree(
        store,
        &building.join("ComfyUI"),
        &lock.comfy.repo,
        &lock.comfy.commit,
        lock.comfy.git_ref.as_deref(),
    ) {
        Ok(()) => {}
        Err(RealizeError::NoMirror { repo }) => tracing::warn!(
            "the store has no mirror of the core's repository `{repo}`, so the core gets no `.git`"
        ),
        Err(err) => return Err(err),
    }
    mounts.push(Mount {
        at: "ComfyUI".into(),
        store_path: lock.comfy.store_path.clone(),
        kind: "core".into(),
        mode,
    });

    // The nodes.
    for node in &lock.custom_nodes {
        let rel = if node.enabled {
            format!("ComfyUI/custom_nodes/{}", node.name)
        } else {
            format!("ComfyUI/custom_nodes/.disabled/{}", disabled_dir_name(node))
        };
        let dest = building.join(&rel);
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(RealizeError::Conflict { at: rel });
        }
        let store_path = match (&node.git, &node.registry) {
            (Some(g), _) => &g.store_path,
            (_, Some(r)) => &r.store_path,
            _ => continue,
        };
        let (mode, files) = linker.tree(&store.path_of(store_path), &dest, &rel)?;
        digests.extend(verified(store, store_path, &dest, mode)?);
        placed.extend(files);
        if let Some(git) = &node.git {
            match manager::make_worktree(
                store,
                &dest,
                &git.repo,
                &git.commit,
                git.git_ref.as_deref(),
            ) {
                Ok(()) => {}
                // A store imported without its mirrors still realizes; Manager just sees no git.
                Err(RealizeError::NoMirror { repo }) => tracing::warn!(
                    "node `{}`: the store has no mirror of `{repo}`, so it gets no `.git`",
                    node.name
                ),
                Err(err) => return Err(err),
            }
        }
        mounts.push(Mount {
            at: rel,
            store_path: store_path.clone(),
            kind: "node".into(),
            mode,
        });
    }

    // User data lives outside generations; the core's own files there seed it.
    let data = home.root.join("data");
    for dir in USER_DATA {
        let shared = data.join(dir);
        fs::create_dir_all(&shared).map_err(io(&shared))?;
        let inside = building.join("ComfyUI").join(dir);
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
            placed.retain(|p| !p.path.starts_with(&prefix));
        }
        std::os::unix::fs::symlink(format!("../../../../data/{dir}"), &inside)
            .map_err(io(&inside))?;
    }

    // Models.
    let models_root = if local_models {
        building.join("models")
    } else {
        models_dir.clone()
    };
    fs::create_dir_all(&models_root).map_err(io(&models_root))?;
    let mut folders = BTreeSet::new();
    if !options.skip_models {
        for model in &lock.models {
            let rel = match &model.target_subdir {
                Some(sub) => {
                    folders.insert(sub.clone());
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
                    .is_some_and(|t| t.starts_with(store.root().join("paths")));
                if local_models || !ours {
                    return Err(if local_models {
                        RealizeError::Conflict { at: rel }
                    } else {
                        RealizeError::Foreign { path: at }
                    });
                }
                fs::remove_file(&at).map_err(io(&at))?;
            }
            let mode = link::model(&linker, &store.path_of(&model.store_path), &at)?;
            digests.extend(verified(store, &model.store_path, &at, mode)?);
            let recorded = if local_models {
                format!("models/{rel}")
            } else {
                at.display().to_string()
            };
            if local_models && matches!(mode, UsedMode::Copy | UsedMode::Reflink) {
                placed.push(Placed::of(recorded.clone(), &at).map_err(io(&at))?);
            }
            mounts.push(Mount {
                at: recorded,
                store_path: model.store_path.clone(),
                kind: "model".into(),
                mode,
            });
        }
    }
    // The venv: a read-only link to its store path (or a copy on request).
    if let Some(venv) = &options.venv {
        let dest = building.join(".venv");
        let src = store.path_of(venv);
        let mode = match linker.model_mode() {
            UsedMode::Symlink => {
                std::os::unix::fs::symlink(&src, &dest).map_err(io(&dest))?;
                UsedMode::Symlink
            }
            _ => {
                let mode = linker.tree(&src, &dest, ".venv")?.0;
                digests.extend(verified(store, venv, &dest, mode)?);
                mode
            }
        };
        mounts.push(Mount {
            at: ".venv".into(),
            store_path: venv.clone(),
            kind: "venv".into(),
            mode,
        });
    }

    let yaml = extra_model_paths(&models_dir, &folders, loader_knows_is_default(&core_src));
    let yaml_path = building.join("ComfyUI/extra_model_paths.yaml");
    fs::write(&yaml_path, &yaml).map_err(io(&yaml_path))?;
    let mut yaml_placed =
        Placed::of("ComfyUI/extra_model_paths.yaml".into(), &yaml_path).map_err(io(&yaml_path))?;
    yaml_placed.digest = Some(blake3::hash(yaml.as_bytes()).to_hex().to_string());
    placed.push(yaml_placed);
    for entry in placed.iter_mut() {
        if let Some(digest) = digests.get(&building.join(&entry.path)) {
            entry.digest = Some(blake3::Hash::from(*digest).to_hex().to_string());
        }
    }

    // Files the user added to the current generation's trees come along; edits of managed
    // files are kept aside, never dropped.
    let carried = match (current, &current_files) {
        (Some(n), Some((generation, placed))) => {
            carry_user_files(&home, n, generation, placed, &building)?
        }
        (Some(n), None) => {
            let generation = home.read_generation(n)?;
            carry_user_files(&home, n, &generation, &home.read_files(n), &building)?
        }
        (None, _) => 0,
    };
    let mut saved = Vec::new();
    if let Some(n) = current {
        for rel in drifted.iter().filter_map(|d| d.strip_prefix("changed:")) {
            let from = home.generation_dir(n).join(rel);
            let to = home.meta().join("saved").join(n.to_string()).join(rel);
            if fs::symlink_metadata(&to).is_ok() {
                saved.push(to); // kept by an earlier realize
                continue;
            }
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            let kept = if fs::symlink_metadata(&from).is_ok_and(|m| m.file_type().is_symlink()) {
                fs::read_link(&from).and_then(|t| std::os::unix::fs::symlink(t, &to))
            } else {
                fs::hard_link(&from, &to).or_else(|_| fs::copy(&from, &to).map(|_| ()))
            };
            kept.map_err(io(&to))?;
            tracing::warn!("kept your edit of `{rel}` at `{}`", to.display());
            saved.push(to);
        }
    }

    // The home manifest: a store path referencing everything, rooted for this generation.
    let manifest = {
        let extra: Vec<String> = options.venv.iter().cloned().collect();
        let name = format!("home-{}", lock.version_id);
        crate::lock::manifest::write(store, &name, lock, options.skip_models, &extra)?
    };
    if store.is_read_only() {
        tracing::warn!(
            "the store is read-only: this generation is not recorded as a GC root (nothing can \
             collect a read-only store; realize again once it is writable to protect it)"
        );
    } else {
        store.add_root(&home.root_name(number), &manifest, "home")?;
    }

    let generation = Generation {
        generation: number,
        version_id: lock.version_id.clone(),
        key,
        created_at: crate::store::db::now(),
        models_dir: models_dir.clone(),
        skip_models: options.skip_models,
        link_mode: options.link_mode,
        manifest,
        mounts,
        not_fetched: options.not_fetched.clone(),
    };
    let dirs = dir_stamps(&building);
    for (name, text) in [
        ("files.json", serde_json::to_string(&placed)),
        ("dirs.json", serde_json::to_string(&dirs)),
        ("generation.json", serde_json::to_string_pretty(&generation)),
    ] {
        let path = building.join(name);
        fs::write(&path, text.expect("serializable")).map_err(io(&path))?;
    }
    sync_dir(&building);
    let done = home.generation_dir(number);
    fs::rename(&building, &done).map_err(io(&done))?;
    unfinished.0 = None;
    pause_point("realize-built");
    home.ensure_top_links(local_models, options.venv.is_some())?;
    home.switch(number)?;
    pause_point("realize-switched");

    Ok(RealizeReport {
        target: home.root.clone(),
        version_id: lock.version_id.clone(),
        generation: number,
        previous: current,
        up_to_date: false,
        link_modes: modes_of(&generation.mounts),
        models_dir,
        carried_user_files: carried,
        drift: drifted,
        saved,
        derivations: Vec::new(),
    })
}

fn modes_of(mounts: &[Mount]) -> BTreeMap<String, UsedMode> {
    mounts.iter().map(|m| (m.kind.clone(), m.mode)).collect()
}

/// `extra_model_paths.yaml` naming exactly the folders the version's models use.
///
/// `is_default` (make these folders the default ones) only where the core's loader knows it:
/// before 2024-09-19 ComfyUI split every value as a path and crashed on a boolean.
fn extra_model_paths(models_dir: &Path, folders: &BTreeSet<String>, is_default: bool) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out =
        String::from("# Written by comfix; realizing another generation replaces it.\ncomfix:\n");
    out.push_str(&format!(
        "    base_path: {}\n",
        quote(&models_dir.to_string_lossy())
    ));
    if is_default {
        out.push_str("    is_default: true\n");
    }
    for folder in folders {
        out.push_str(&format!("    {}: {}\n", quote(folder), quote(folder)));
    }
    out
}

/// Whether the core at `core` reads `is_default` in `extra_model_paths.yaml`: the file that
/// defines `load_extra_path_config` (`utils/extra_config.py` in newer cores, `main.py` before)
/// handles the key. Read from the core's code, not guessed from its date.
fn loader_knows_is_default(core: &Path) -> bool {
    ["utils/extra_config.py", "main.py"].iter().any(|file| {
        fs::read_to_string(core.join(file)).is_ok_and(|code| {
            code.contains("def load_extra_path_config") && code.contains("\"is_default\"")
        })
    })
}

/// Files comfix made in a generation, relative to its directory.
fn known_files<'a>(generation: &'a Generation, placed: &'a [Placed]) -> HashSet<Cow<'a, str>> {
    let mut known: HashSet<Cow<'a, str>> = placed
        .iter()
        .map(|p| Cow::Borrowed(p.path.as_str()))
        .collect();
    known.insert(Cow::Borrowed("ComfyUI/extra_model_paths.yaml"));
    for dir in USER_DATA {
        known.insert(Cow::Owned(format!("ComfyUI/{dir}")));
    }
    for mount in &generation.mounts {
        known.insert(Cow::Borrowed(mount.at.as_str()));
    }
    known
}

/// A directory comfix made in a generation, as it was when the generation was finished: while
/// its mtime and inode are unchanged, nothing was added to it or removed from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DirStamp {
    path: String,
    mtime_ns: i128,
    ino: u64,
}

/// The directories under `ComfyUI/` and `models/` of the generation being built at `building`
/// (not inside a node's `.git`).
fn dir_stamps(building: &Path) -> Vec<DirStamp> {
    let mut out = Vec::new();
    for top in ["ComfyUI", "models"] {
        let walker = walkdir::WalkDir::new(building.join(top))
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| e.file_type().is_dir() && e.file_name() != ".git");
        for entry in walker.flatten() {
            let Some(stamp) = link::Stamp::of_path(entry.path()) else {
                continue;
            };
            let rel = entry.path().strip_prefix(building).expect("under building");
            out.push(DirStamp {
                path: rel.to_string_lossy().into_owned(),
                mtime_ns: stamp.mtime_ns,
                ino: stamp.ino,
            });
        }
    }
    out
}

/// Whether `rel` is inside something comfix manages wholesale (a node's `.git`, a hard-linked or
/// symlinked mount) rather than a file the user added.
fn managed(rel: &str, generation: &Generation) -> bool {
    rel.contains("/.git/")
        || generation.mounts.iter().any(|m| {
            matches!(m.mode, UsedMode::Hardlink | UsedMode::Symlink)
                && (rel == m.at || rel.starts_with(&format!("{}/", m.at)))
        })
}

/// The files and symlinks a user added to generation `n` (relative to its directory, with their
/// absolute paths): everything under `ComfyUI/` and `models/` that comfix did not place, leaving
/// out `__pycache__`, nodes' `.git`, and the user data links.
fn user_added(
    home: &Home,
    n: u32,
    generation: &Generation,
    placed: &[Placed],
) -> Result<Vec<(String, PathBuf)>, RealizeError> {
    let dir = home.generation_dir(n);
    let known = known_files(generation, placed);
    let skipped = |rel: &str, name: &std::ffi::OsStr| {
        name == "__pycache__"
            || name == ".git"
            || USER_DATA.iter().any(|d| rel == format!("ComfyUI/{d}"))
    };
    let mut out = Vec::new();
    let mut add = |rel: String, path: PathBuf| {
        if !known.contains(rel.as_str()) && !managed(&rel, generation) {
            out.push((rel, path));
        }
    };
    // Everything under `rel` (a directory comfix did not make), or every directory when the
    // generation predates its directory stamps.
    let walk_all = |rel: &str, add: &mut dyn FnMut(String, PathBuf)| {
        let root = dir.join(rel);
        let walker = walkdir::WalkDir::new(&root).follow_links(false).into_iter();
        for entry in walker.filter_entry(|e| {
            let inner = e.path().strip_prefix(&dir).expect("under the generation");
            e.depth() == 0 || !skipped(&inner.to_string_lossy(), e.file_name())
        }) {
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_dir() {
                continue;
            }
            let inner = entry
                .path()
                .strip_prefix(&dir)
                .expect("under the generation");
            add(inner.to_string_lossy().into_owned(), entry.into_path());
        }
    };
    let stamps: Option<Vec<DirStamp>> = fs::read(dir.join("dirs.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(stamps) = stamps else {
        for top in ["ComfyUI", "models"] {
            if dir.join(top).is_dir() {
                walk_all(top, &mut add);
            }
        }
        return Ok(out);
    };
    let made: HashSet<&str> = stamps.iter().map(|d| d.path.as_str()).collect();
    for stamp in &stamps {
        let Some(now) = link::Stamp::of_path(&dir.join(&stamp.path)) else {
            continue; // gone: its files show as missing
        };
        if now.mtime_ns == stamp.mtime_ns && now.ino == stamp.ino {
            continue;
        }
        // Changed: its own entries are read, directories it did not have are read whole.
        let Ok(entries) = fs::read_dir(dir.join(&stamp.path)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = format!("{}/{}", stamp.path, entry.file_name().to_string_lossy());
            if skipped(&rel, &entry.file_name()) {
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                if !made.contains(rel.as_str()) {
                    walk_all(&rel, &mut add);
                }
            } else {
                add(rel, entry.path());
            }
        }
    }
    Ok(out)
}

/// Hard-link the files a user added to generation `from` into the generation being built.
fn carry_user_files(
    home: &Home,
    from: u32,
    generation: &Generation,
    placed: &[Placed],
    building: &Path,
) -> Result<usize, RealizeError> {
    let mut carried = 0;
    for (rel, path) in user_added(home, from, generation, placed)? {
        let to = building.join(&rel);
        if fs::symlink_metadata(&to).is_ok() {
            tracing::warn!(
                "`{rel}` is now part of the version; your copy stays in generation {from}"
            );
            continue;
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let linked = if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            let target = fs::read_link(&path).map_err(io(&path))?;
            std::os::unix::fs::symlink(target, &to)
        } else {
            fs::hard_link(&path, &to).or_else(|_| fs::copy(&path, &to).map(|_| ()))
        };
        linked.map_err(io(&to))?;
        carried += 1;
    }
    Ok(carried)
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub target: PathBuf,
    pub from: u32,
    pub to: u32,
    pub version_id: String,
}

/// Switch the home back to the generation before the current one.
pub fn rollback(target: &Path) -> Result<RollbackReport, RealizeError> {
    let home = Home::new(target)?;
    home.check_safe()?;
    let _lock = home.lock()?;
    let current = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    let previous =
        home.list()
            .into_iter()
            .rfind(|n| *n < current)
            .ok_or(RealizeError::NoPrevious {
                home: home.root.clone(),
                current,
            })?;
    let generation = home.read_generation(previous)?;
    let generation_now = home.read_generation(current)?;
    carry_user_files(
        &home,
        current,
        &generation_now,
        &home.read_files(current),
        &home.generation_dir(previous),
    )?;
    home.ensure_top_links(
        generation.models_dir == home.root.join("models"),
        generation.mounts.iter().any(|m| m.kind == "venv"),
    )?;
    home.switch(previous)?;
    Ok(RollbackReport {
        target: home.root,
        from: current,
        to: previous,
        version_id: generation.version_id,
    })
}

/// One generation of a home, for `comfix history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub generation: u32,
    pub version_id: String,
    pub created_at: i64,
    pub current: bool,
    pub link_modes: BTreeMap<String, UsedMode>,
    /// The home manifest (its `lock.json` is the lock this generation was realized from).
    pub manifest: String,
}

/// The home manifest store path of the current generation of the home at `target` (its
/// `lock.json` is the lock that generation was realized from).
pub fn current_manifest(target: &Path) -> Result<String, RealizeError> {
    let home = Home::new(target)?;
    let n = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    Ok(home.read_generation(n)?.manifest)
}

/// Every generation of the home at `target`, oldest first.
pub fn history(target: &Path) -> Result<Vec<HistoryEntry>, RealizeError> {
    let home = Home::new(target)?;
    let current = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    let mut out = Vec::new();
    for n in home.list() {
        let Ok(generation) = home.read_generation(n) else {
            continue;
        };
        out.push(HistoryEntry {
            generation: n,
            version_id: generation.version_id.clone(),
            created_at: generation.created_at,
            current: n == current,
            link_modes: modes_of(&generation.mounts),
            manifest: generation.manifest,
        });
    }
    Ok(out)
}

/// What `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub target: PathBuf,
    pub generation: u32,
    pub generations: Vec<u32>,
    pub version_id: String,
    pub created_at: i64,
    pub link_modes: BTreeMap<String, UsedMode>,
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub missing: Vec<String>,
    /// Optional models of the version that could not be fetched when it was realized.
    pub not_fetched: Vec<String>,
    /// The home manifest store path of the current generation.
    pub manifest: String,
    /// Whether the current generation was realized from another lock than the version's lock
    /// file now holds (after a rollback, or a resolve since); `None` when that lock is not found.
    pub behind_lock: Option<bool>,
}

impl StatusReport {
    pub fn clean(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.missing.is_empty()
    }
}

/// The current generation of the home at `target` and its drift from what was realized. The
/// cheap check compares each managed file's size, mtime, inode and change time with what was
/// placed and reads only files that differ; `check_contents` hashes every one.
pub fn status(
    store: &Store,
    target: &Path,
    check_contents: bool,
) -> Result<StatusReport, RealizeError> {
    let home = Home::new(target)?;
    let n = home.current().ok_or_else(|| RealizeError::NotAHome {
        path: home.root.clone(),
    })?;
    let generation = home.read_generation(n)?;
    let placed = home.read_files(n);
    let drift = drift(store, &home, n, &generation, &placed, check_contents)?;
    let mut added: Vec<String> = user_added(&home, n, &generation, &placed)?
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    added.sort();
    Ok(StatusReport {
        target: home.root.clone(),
        generation: n,
        generations: home.list(),
        version_id: generation.version_id.clone(),
        created_at: generation.created_at,
        link_modes: modes_of(&generation.mounts),
        changed: drift.changed,
        added,
        missing: drift.missing,
        not_fetched: generation.not_fetched.clone(),
        manifest: generation.manifest.clone(),
        behind_lock: None,
    })
}

/// Managed files of a generation that changed or went missing.
struct Drift {
    changed: Vec<String>,
    missing: Vec<String>,
}

fn drift(
    store: &Store,
    home: &Home,
    n: u32,
    generation: &Generation,
    placed: &[Placed],
    check_contents: bool,
) -> Result<Drift, RealizeError> {
    use rayon::prelude::*;
    let dir = home.generation_dir(n);
    // Files grouped by directory, each directory opened once: `fstatat` by name costs no path
    // walk (the cheap check of a 20,000-file core is mostly system calls).
    let mut by_dir: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, file) in placed.iter().enumerate() {
        let parent = file.path.rsplit_once('/').map_or("", |(p, _)| p);
        by_dir.entry(parent).or_default().push(i);
    }
    let groups: Vec<(&str, Vec<usize>)> = by_dir.into_iter().collect();
    let stats: Vec<(usize, Option<link::Stamp>)> = groups
        .par_iter()
        .flat_map_iter(|(parent, members)| {
            let fd = rustix::fs::open(
                dir.join(parent),
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok();
            members
                .iter()
                .map(|&i| {
                    let name = placed[i]
                        .path
                        .rsplit_once('/')
                        .map_or(&placed[i].path[..], |(_, n)| n);
                    let stamp = fd.as_ref().and_then(|fd| link::Stamp::at(fd, name));
                    (i, stamp)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    #[derive(PartialEq)]
    enum State {
        Same,
        Changed,
        Missing,
    }
    let states: Vec<State> = stats
        .par_iter()
        .map(|(i, stamp)| {
            let file = &placed[*i];
            let Some(stamp) = stamp else {
                return State::Missing;
            };
            if !check_contents
                && file.link.is_none()
                && stamp.is_file
                && file.looks_unchanged(stamp)
            {
                return State::Same;
            }
            let at = dir.join(&file.path);
            if let Some(target) = &file.link {
                let now = fs::read_link(&at).ok();
                return if now.as_deref() == Some(Path::new(target)) {
                    State::Same
                } else {
                    State::Changed
                };
            }
            if !stamp.is_file {
                return State::Changed;
            }
            if !check_contents && file.looks_unchanged(stamp) {
                return State::Same;
            }
            let same = match &file.digest {
                Some(digest) => crate::store::tree::hash_file(&at, stamp.size)
                    .is_ok_and(|d| blake3::Hash::from(d).to_hex().as_str() == digest),
                None => same_as_store(store, generation, &file.path, &at),
            };
            if same {
                State::Same
            } else {
                State::Changed
            }
        })
        .collect();
    let states: Vec<(usize, State)> = stats.iter().map(|(i, _)| *i).zip(states).collect();
    let mut changed = Vec::new();
    let mut missing = Vec::new();
    for (i, state) in states {
        let file = &placed[i];
        match state {
            State::Same => {}
            State::Changed => changed.push(file.path.clone()),
            State::Missing => missing.push(file.path.clone()),
        }
    }
    for mount in &generation.mounts {
        if mount.kind == "model"
            && !mount.at.starts_with('/')
            && fs::symlink_metadata(dir.join(&mount.at)).is_err()
        {
            missing.push(mount.at.clone());
        }
    }
    changed.sort();
    missing.sort();
    Ok(Drift { changed, missing })
}

/// Compare a realized file with its source in the store, byte for byte.
fn same_as_store(store: &Store, generation: &Generation, rel: &str, at: &Path) -> bool {
    let Some(mount) = generation
        .mounts
        .iter()
        .filter(|m| rel == m.at || rel.starts_with(&format!("{}/", m.at)))
        .max_by_key(|m| m.at.len())
    else {
        return false;
    };
    let inner = rel[mount.at.len()..].trim_start_matches('/');
    let source = if inner.is_empty() {
        store.path_of(&mount.store_path)
    } else {
        store.path_of(&mount.store_path).join(inner)
    };
    let is_link = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if is_link(&source) || is_link(at) {
        return fs::read_link(&source).ok().is_some()
            && fs::read_link(&source).ok() == fs::read_link(at).ok();
    }
    match (fs::read(&source), fs::read(at)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
