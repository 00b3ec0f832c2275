//! Realization: a lock's store paths materialized as a `COMFY_HOME`, in numbered generations.
//!
//! A home looks like this (`docs/realize.md` has the details):
//!
//! ```text
//! <home>/ComfyUI -> .comfix/current/ComfyUI     the core, nodes under custom_nodes/
//! <home>/models  -> .comfix/current/models      unless --models-dir / $MODELS_DIR
//! <home>/data/{output,input,user,temp}/        user data; ComfyUI/<dir> links here
//! <home>/.comfix/current -> generations/<N>     switched atomically by rename
//! <home>/.comfix/generations/<N>/               ComfyUI/, models/, generation.json, files.bin
//! ```
//!
//! A new generation is built beside the current one, made durable, then `current` is replaced in
//! one rename: a crash leaves the old generation or the new one, never a mix. User data lives
//! outside the generations; files a user added inside the trees are carried into the new
//! generation (by hard link). Each generation is a GC root through its home manifest store path,
//! which references every store path the generation uses.

mod assemble;
mod carry;
mod checked;
mod home;
mod link;
mod manager;
mod records;
pub mod request;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use assemble::Assembly;
use carry::{carry_user_files, dir_stamps};
pub use home::{check_apart, default_target, disabled_dir_name, locate, reroot, Home};
use home::{sync_dir, Unfinished};
use link::Placed;
pub use link::{LinkMode, UsedMode};
pub use status::{
    current_manifest, history, rollback, status, HistoryEntry, RollbackReport, StatusReport,
};
use status::{drift, mounts_drift};

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
    #[error("No home: `--target` is not given, `$COMFY_HOME` is not set, the current directory `{}` is not a home, and the store knows {}", .cwd.display(), match .homes.len() { 0 => "no home".to_string(), n => format!("{n} homes: {}", .homes.iter().map(|h| format!("`{}`", h.display())).collect::<Vec<_>>().join(", ")) })]
    NoHome { cwd: PathBuf, homes: Vec<PathBuf> },
    #[error("Home `{}` has no generation before {current}", .home.display())]
    NoPrevious { home: PathBuf, current: u32 },
    #[error("The store has no git mirror of `{repo}`")]
    NoMirror { repo: String },
    #[error("Two entries of the version would be placed at `{at}`")]
    Conflict { at: String },
    #[error("{what} `{}` is inside the comfix home `{}`", .path.display(), .home.display())]
    InsideHome {
        what: &'static str,
        path: PathBuf,
        home: PathBuf,
    },
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
            RealizeError::NoHome { homes, .. } if homes.is_empty() => Some(
                "realize a version first (`comfix realize <ID>`; its home is `~/comfy-<ID>` unless `--target` says otherwise)".into(),
            ),
            RealizeError::NoHome { .. } => {
                Some("pass the home with `--target`, set `COMFY_HOME`, or run in the home".into())
            }
            RealizeError::Conflict { .. } => {
                Some("give the nodes or models different names or folders".into())
            }
            RealizeError::InsideStore { .. }
            | RealizeError::StoreInside { .. }
            | RealizeError::InsideHome { .. } => Some(
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

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RealizeError + '_ {
    move |source| RealizeError::Io {
        path: path.to_path_buf(),
        source,
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
    /// The machine's torch backend and its overlay's store path, when one was asked for (the
    /// lock given is then the overlaid one).
    pub torch: Option<TorchUsed>,
    /// Models placed as links to files of the models index where they lie (`--models-in-place`),
    /// by the lock's store path of the model (which the store then need not hold).
    pub in_place: BTreeMap<String, InPlaceFile>,
}

/// The lock's models that a file of the models index holds, unchanged since it was hashed: what
/// `--models-in-place` links where they lie (by the model's store path).
pub fn in_place_models(
    store: &Store,
    lock: &Lock,
) -> Result<BTreeMap<String, InPlaceFile>, crate::fetch::FetchError> {
    let mut out = BTreeMap::new();
    for model in &lock.models {
        let blake3 = crate::fetch::Expected::new(&model.blake3, crate::fetch::Origin::Lock);
        let wanted = crate::fetch::indexed::Wanted {
            blake3: Some(&blake3),
            sha256: None,
            size: Some(model.size),
        };
        if let Some(file) = crate::fetch::indexed::in_place(store, &wanted)? {
            let file = InPlaceFile {
                path: PathBuf::from(file.path),
                blake3: file.blake3,
                stamp: file.stamp,
            };
            out.insert(model.store_path.clone(), file);
        }
    }
    Ok(out)
}

/// A file of the models index a home links to where it lies, with the stat tuple it had when it
/// was hashed: while the file keeps it, it holds the digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InPlaceFile {
    pub path: PathBuf,
    pub blake3: String,
    #[serde(flatten)]
    pub stamp: crate::store::db::FileStamp,
}

impl InPlaceFile {
    /// Its stat tuple (the link followed) is still the one recorded.
    pub fn unchanged(&self) -> bool {
        self.stamp.is_current(&self.path)
    }
}

/// A torch backend a generation uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorchUsed {
    pub backend: String,
    /// The overlay store path (its wheel set for this backend and machine kind).
    pub overlay: String,
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
    /// A model linked where it lies in an indexed folder (its `store_path` is the lock's, which
    /// the store need not hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceFile>,
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
    /// The torch backend, when the machine chose one (else the lock's own wheel set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<TorchUsed>,
}

/// What `realize` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// The key of a realization: the lock and the options that shape the home.
fn realization_key(lock: &Lock, options: &RealizeOptions, models_dir: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(lock.to_text().as_bytes());
    hasher.update(models_dir.as_os_str().as_encoded_bytes());
    hasher.update(&[options.skip_models as u8]);
    hasher.update(format!("{:?}", options.link_mode).as_bytes());
    hasher.update(options.venv.as_deref().unwrap_or("").as_bytes());
    if let Some(torch) = &options.torch {
        hasher.update(torch.overlay.as_bytes());
    }
    for (store_path, file) in &options.in_place {
        let text = format!(
            "{store_path}\0{}\0{}\0{}",
            file.path.display(),
            file.stamp.ino,
            file.stamp.ctime_ns
        );
        hasher.update(text.as_bytes());
    }
    hasher.finalize().to_hex()[..32].to_string()
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

/// Realize `lock` (whose store paths must all be valid) into `options.target`: check the home,
/// return early when the current generation is this realization undrifted, else assemble a new
/// generation beside it, record it (manifest, GC root, stamps) and switch to it.
// Long on purpose: the realization protocol of docs/realize.md, each step a call.
pub fn realize(
    store: &Store,
    lock: &Lock,
    options: &RealizeOptions,
) -> Result<RealizeReport, RealizeError> {
    let home = open_home(store, options)?;
    // A check reads the home and writes nothing, not even the home's lock.
    let _lock = if options.check {
        None
    } else {
        Some(home.lock()?)
    };
    protect_inputs(store, lock, options)?;
    let local_models = options.models_dir.is_none();
    let models_dir = match &options.models_dir {
        Some(dir) => std::path::absolute(dir).map_err(io(dir))?,
        None => home.root.join("models"),
    };
    let key = realization_key(lock, options, &models_dir);
    let current = home.current();
    let (drifted, current_files) =
        match current_state(store, &home, lock, options, &key, &models_dir)? {
            Current::UpToDate(report) => return Ok(*report),
            Current::Replace { drifted, files } => (drifted, files),
        };
    if options.check {
        return Err(RealizeError::NotAHome {
            path: home.root.clone(),
        });
    }

    let (number, building) = home.start_generation()?;
    // A realize that fails (a damaged object, a full disk) takes its half-built generation away.
    let mut unfinished = Unfinished(Some(building.clone()));
    let mut assembly = Assembly::new(store, options.link_mode, building.clone());
    assembly.core(lock)?;
    assembly.nodes(lock)?;
    assembly.user_data(&home)?;
    let models_root = if local_models {
        building.join("models")
    } else {
        models_dir.clone()
    };
    let folders = if options.skip_models {
        fs::create_dir_all(&models_root).map_err(io(&models_root))?;
        BTreeSet::new()
    } else {
        assembly.models(lock, &models_root, local_models, &options.in_place)?
    };
    if let Some(venv) = &options.venv {
        assembly.venv(venv)?;
    }
    let core_src = store.path_of(&lock.comfy.store_path);
    assembly.model_paths_yaml(&extra_model_paths(
        &models_dir,
        &folders,
        loader_knows_is_default(&core_src),
    ))?;
    let (mounts, placed) = assembly.finish();

    // Files the user added to the current generation's trees come along; edits of managed
    // files are kept aside, never dropped.
    let carried = match (current, current_files.as_deref()) {
        (Some(n), Some((generation, placed))) => {
            carry_user_files(&home, n, generation, placed, &building)?
        }
        (Some(n), None) => {
            let generation = home.read_generation(n)?;
            carry_user_files(&home, n, &generation, &home.read_files(n), &building)?
        }
        (None, _) => 0,
    };
    let saved = match current {
        Some(n) => save_edits(&home, n, &drifted)?,
        None => Vec::new(),
    };

    // The home manifest: a store path referencing everything, rooted for this generation.
    let manifest = {
        let extra: Vec<String> = options
            .venv
            .iter()
            .chain(options.torch.iter().map(|t| &t.overlay))
            .cloned()
            .collect();
        let name = format!("home-{}", lock.version_id);
        let left_out = |path: &str| {
            options.in_place.contains_key(path)
                || (options.skip_models && lock.models.iter().any(|m| m.store_path == path))
        };
        crate::lock::manifest::write_leaving_out(store, &name, lock, &left_out, &extra)?
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
        torch: options.torch.clone(),
    };
    write_records(&building, &generation, &placed)?;
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
    })
}

/// The home at the target, refused when it is inside the store (or holds it), has planted
/// entries, or is an install comfix did not make.
fn open_home(store: &Store, options: &RealizeOptions) -> Result<Home, RealizeError> {
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
    Ok(home)
}

/// Everything this generation uses stays alive while we work, whatever a collector does: the
/// lock's paths (without the models when they are skipped: the store may not hold them), the
/// venv, and the mirrors `.git` directories are made from.
fn protect_inputs(
    store: &Store,
    lock: &Lock,
    options: &RealizeOptions,
) -> Result<(), RealizeError> {
    let used: Vec<&str> = lock
        .store_paths()
        .into_iter()
        .filter(|p| !options.skip_models || !lock.models.iter().any(|m| m.store_path == *p))
        .filter(|p| !options.in_place.contains_key(*p))
        .collect();
    store.protect(&used)?;
    if let Some(venv) = &options.venv {
        store.protect(&[venv])?;
    }
    if options.check {
        return Ok(());
    }
    let repos = std::iter::once(&lock.comfy.repo).chain(
        lock.custom_nodes
            .iter()
            .filter_map(|n| n.git.as_ref().map(|g| &g.repo)),
    );
    for repo in repos {
        store.protect(&[&Store::mirror_root(&crate::fetch::git::mirror_name(repo))])?;
    }
    Ok(())
}

/// What the current generation means for this realization.
enum Current {
    /// It is this realization, undrifted (or this is a check): nothing to do.
    UpToDate(Box<RealizeReport>),
    /// A new generation replaces it: what drifted in it, and its records when it has them.
    Replace {
        drifted: Vec<String>,
        files: Option<Box<(Generation, Vec<Placed>)>>,
    },
}

/// Re-realizing what is already current is a check, not work — unless the home drifted: then
/// a new generation puts every managed file back.
fn current_state(
    store: &Store,
    home: &Home,
    lock: &Lock,
    options: &RealizeOptions,
    key: &str,
    models_dir: &Path,
) -> Result<Current, RealizeError> {
    let Some(n) = home.current() else {
        return Ok(Current::Replace {
            drifted: Vec::new(),
            files: None,
        });
    };
    let Ok(generation) = home.read_generation(n) else {
        return Ok(Current::Replace {
            drifted: Vec::new(),
            files: None,
        });
    };
    let report = |up_to_date: bool, drift: Vec<String>| {
        Current::UpToDate(Box::new(RealizeReport {
            target: home.root.clone(),
            version_id: lock.version_id.clone(),
            generation: n,
            previous: None,
            up_to_date,
            link_modes: modes_of(&generation.mounts),
            models_dir: models_dir.to_path_buf(),
            carried_user_files: 0,
            drift,
            saved: Vec::new(),
        }))
    };
    let top_links = || {
        home.ensure_top_links(options.models_dir.is_none(), options.venv.is_some())
            .is_ok()
    };
    // The same realization, and no directory touched since a full check found every file in
    // place: up to date without a look at each file (`checked`). The mounts are looked at
    // every time: few, and models may lie outside those directories.
    if !options.check
        && generation.key == key
        && checked::untouched(home, n)
        && mounts_drift(home, n, &generation, false).is_empty()
        && top_links()
    {
        return Ok(report(true, Vec::new()));
    }
    // Taken before the files are looked at: a change during the check shows next time.
    let stamps = (generation.key == key && !options.check)
        .then(|| checked::take(home, n))
        .flatten();
    let placed = home.read_files(n);
    let found = drift(store, home, n, &generation, &placed, false)?;
    let mut drifted = Vec::new();
    drifted.extend(found.changed.iter().map(|p| format!("changed:{p}")));
    drifted.extend(found.missing.iter().map(|p| format!("missing:{p}")));
    let same = generation.key == key && drifted.is_empty();
    match stamps {
        _ if !drifted.is_empty() => checked::forget(home),
        Some(stamps) if same => checked::record(home, n, stamps),
        _ => {}
    }
    if options.check || (same && top_links()) {
        return Ok(report(same, drifted));
    }
    if !found.changed.is_empty() {
        tracing::warn!(
            "{} managed file(s) of generation {n} were edited; realizing a new generation",
            found.changed.len()
        );
    }
    Ok(Current::Replace {
        drifted,
        files: Some(Box::new((generation, placed))),
    })
}

/// Keep the user's edits of managed files of generation `n` under `.comfix/saved/<n>/`.
fn save_edits(home: &Home, n: u32, drifted: &[String]) -> Result<Vec<PathBuf>, RealizeError> {
    let mut saved = Vec::new();
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
    Ok(saved)
}

/// `files.bin` (or `files.json`), `dirs.json` and `generation.json` of a built generation, made
/// durable.
fn write_records(
    building: &Path,
    generation: &Generation,
    placed: &[Placed],
) -> Result<(), RealizeError> {
    let dirs = dir_stamps(building);
    let files = match records::encode(placed) {
        Some(bytes) => ("files.bin", bytes),
        None => (
            "files.json",
            serde_json::to_vec(placed).expect("serializable"),
        ),
    };
    for (name, bytes) in [
        files,
        (
            "dirs.json",
            serde_json::to_vec(&dirs).expect("serializable"),
        ),
        (
            "generation.json",
            serde_json::to_vec_pretty(generation).expect("serializable"),
        ),
    ] {
        let path = building.join(name);
        fs::write(&path, bytes).map_err(io(&path))?;
    }
    sync_dir(building);
    Ok(())
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
