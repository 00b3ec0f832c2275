//! Building a venv from stored wheels at an input-addressed store path.
//!
//! The name is a hash of the recipe: the uv version, the interpreter (path and full version) and
//! the wheels' store paths. The same recipe is never built twice. The venv is relocatable
//! (`uv venv --relocatable`: console scripts find their interpreter relative to themselves), so it
//! is built under the store's `tmp/` and renamed into `paths/` like everything else. uv installs
//! with hardlinks from the store's own uv cache; registration then links each file into `objects/`,
//! so a file already stored (the same file of another venv) costs no bytes.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::uv::{Interpreter, Uv};
use super::PythonError;
use crate::lock::LockedPython;
use crate::store::Add;
use crate::store::Store;

/// Bumped when the way a venv is built changes, so old builds are not reused.
const RECIPE_VERSION: &str = "comfix-venv-v3";

/// The result of [`build_venv`].
#[derive(Debug, Clone)]
pub struct VenvBuild {
    /// The store path's name.
    pub name: String,
    /// False when the store already had it.
    pub built: bool,
}

/// The input-addressed store path name of the venv for `python` on `interpreter`.
pub fn venv_name(uv: &Uv, interpreter: &Interpreter, python: &LockedPython) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut field = |value: &[u8]| {
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value);
    };
    field(RECIPE_VERSION.as_bytes());
    field(uv.version.as_bytes());
    field(interpreter.path.as_os_str().as_encoded_bytes());
    field(interpreter.version.as_bytes());
    let mut wheels: Vec<&str> = python
        .wheels
        .iter()
        .map(|w| w.store_path.as_str())
        .collect();
    wheels.sort_unstable();
    for wheel in wheels {
        field(wheel.as_bytes());
    }
    format!(
        "{}-venv-py{}",
        &hasher.finalize().to_hex()[..32],
        interpreter.minor_version()
    )
}

/// Build (or find) the venv of `python` for `interpreter` from the wheels in the store, which
/// must all be valid. Nothing but the stored wheels is installed: no index, hashes required.
pub fn build_venv(
    store: &Store,
    uv: &Uv,
    interpreter: &Interpreter,
    python: &LockedPython,
) -> Result<VenvBuild, PythonError> {
    let name = venv_name(uv, interpreter, python);
    let wheel_paths: Vec<&str> = python
        .wheels
        .iter()
        .map(|w| w.store_path.as_str())
        .collect();
    store.protect(&wheel_paths)?;
    // A managed interpreter lives in the store: the venv needs it (its `home`), so it references
    // it — the collector keeps it and closures carry it.
    let interpreter_path: Vec<String> = interpreter
        .path
        .strip_prefix(store.path_of(""))
        .ok()
        .and_then(|rel| rel.components().next())
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .into_iter()
        .collect();
    let mut built = false;
    store.build_input_addressed(&name, "venv", &interpreter_path, |staging| {
        built = true;
        fits_this_machine(interpreter, python)?;
        tracing::info!(
            "building the venv for Python {} ({} wheels)",
            interpreter.version,
            python.wheels.len()
        );
        build_into(store, uv, interpreter, python, staging)
    })?;
    Ok(VenvBuild { name, built })
}

/// Every wheel must be installable here: a lock resolved on another platform (not universal)
/// is named as such before uv refuses a wheel.
fn fits_this_machine(interpreter: &Interpreter, python: &LockedPython) -> Result<(), PythonError> {
    if python
        .wheels
        .iter()
        .all(|w| w.filename.ends_with("-none-any.whl"))
    {
        return Ok(());
    }
    let tags = super::supported_tags(Some(interpreter))?;
    if let Some(wheel) = python
        .wheels
        .iter()
        .find(|w| super::best_rank(&w.filename, &tags).is_none())
    {
        return Err(PythonError::OtherPlatform {
            filename: wheel.filename.clone(),
            tag: tags.first().cloned().unwrap_or_default(),
        });
    }
    Ok(())
}

fn build_into(
    store: &Store,
    uv: &Uv,
    interpreter: &Interpreter,
    python: &LockedPython,
    staging: &Path,
) -> Result<(), PythonError> {
    // The stored wheels under their file names, which is how `--find-links` knows them, at
    // stable paths (`cache/wheels/<sha256>/<file name>`): uv's cache knows a local wheel by its
    // path, so a wheel that an earlier build unpacked is not unpacked again.
    let mut links = Vec::new();
    let mut pins = String::new();
    for wheel in &python.wheels {
        links.push(wheel_link(store, wheel)?);
        pins.push_str(&format!(
            "{}=={} --hash=sha256:{}\n",
            wheel.name, wheel.version, wheel.sha256
        ));
    }
    let requirements = staging.join("requirements.txt");
    fs::write(&requirements, pins).map_err(PythonError::io(&requirements))?;

    let venv = staging.join("venv");
    link_tree(&empty_venv(store, uv, interpreter)?, &venv)?;
    if !python.wheels.is_empty() {
        let _span = tracing::debug_span!("uv-install").entered();
        uv.run(
            uv.command(["pip", "install", "--quiet", "--python"])
                .arg(venv.join("bin/python"))
                .args(["--no-index", "--offline", "--require-hashes", "--no-deps"])
                .args(["--link-mode", "hardlink"])
                .args(
                    links
                        .iter()
                        .flat_map(|dir| [OsStr::new("--find-links"), dir.as_os_str()]),
                )
                .arg("--requirement")
                .arg(&requirements),
        )?;
    }
    // uv's bookkeeping (`uv_cache.json`, which names when uv's cache was filled) would make
    // identical venvs differ: it goes, with its line in the distribution's `RECORD`, so two builds
    // of a recipe are byte-identical.
    let caches: Vec<PathBuf> = walkdir::WalkDir::new(&venv)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "uv_cache.json" && e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    for cache in caches {
        fs::remove_file(&cache).map_err(PythonError::io(&cache))?;
        let Some(dist_info) = cache.parent() else {
            continue;
        };
        let record = dist_info.join("RECORD");
        let Ok(text) = fs::read_to_string(&record) else {
            continue;
        };
        let suffix = "/uv_cache.json,";
        let kept: String = text
            .lines()
            .filter(|line| !line.contains(suffix))
            .map(|line| format!("{line}\n"))
            .collect();
        // A new file, not a write through a link into uv's cache.
        let temp = record.with_extension("comfix-tmp");
        fs::write(&temp, kept).map_err(PythonError::io(&temp))?;
        fs::rename(&temp, &record).map_err(PythonError::io(&record))?;
    }
    // Bytecode for every module, so that nothing that runs from the venv writes into the store.
    let _span = tracing::debug_span!("bytecode").entered();
    super::bytecode::compile(&interpreter.path, &venv.join("lib"), &venv)?;
    Ok(())
}

/// `<store>/cache/wheels/<sha256>/<file name>`, a symlink to the wheel's store path; returns its
/// directory.
fn wheel_link(store: &Store, wheel: &crate::lock::LockedWheel) -> Result<PathBuf, PythonError> {
    let dir = store
        .cache_dir(crate::store::layout::Cache::Wheels)
        .join(&wheel.sha256);
    let link = dir.join(&wheel.filename);
    let target = store.path_of(&wheel.store_path);
    if fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(dir);
    }
    fs::create_dir_all(&dir).map_err(PythonError::io(&dir))?;
    // Another process may be making the same link; a temporary name and a rename settle it.
    let temp = dir.join(format!(".{}.{}", wheel.filename, std::process::id()));
    let _ = fs::remove_file(&temp);
    std::os::unix::fs::symlink(&target, &temp).map_err(PythonError::io(&temp))?;
    fs::rename(&temp, &link).map_err(PythonError::io(&link))?;
    Ok(dir)
}

/// An empty relocatable venv for `interpreter`, made once per store by `uv venv` and kept under
/// `cache/venv-base/`; builds hardlink it (a few small files that installing never rewrites)
/// instead of running `uv venv` again: creating files is what costs on a slow disk.
fn empty_venv(store: &Store, uv: &Uv, interpreter: &Interpreter) -> Result<PathBuf, PythonError> {
    let mut hasher = blake3::Hasher::new();
    for part in [
        uv.version.as_bytes(),
        interpreter.path.as_os_str().as_encoded_bytes(),
        interpreter.version.as_bytes(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let dir = store.cache_dir(crate::store::layout::Cache::VenvBase);
    let base = dir.join(&hasher.finalize().to_hex()[..32]);
    if base.join("pyvenv.cfg").is_file() {
        return Ok(base);
    }
    fs::create_dir_all(&dir).map_err(PythonError::io(&dir))?;
    let temp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(&dir)
        .map_err(PythonError::io(&dir))?;
    let venv = temp.path().join("venv");
    uv.run(
        uv.command([
            "venv",
            "--quiet",
            "--relocatable",
            "--no-project",
            "--python",
        ])
        .arg(&interpreter.path)
        .arg(&venv),
    )?;
    let lock = venv.join(".lock");
    if lock.exists() {
        fs::remove_file(&lock).map_err(PythonError::io(&lock))?;
    }
    match fs::rename(&venv, &base) {
        Ok(()) => {}
        // Another process made it first.
        Err(_) if base.join("pyvenv.cfg").is_file() => {}
        Err(err) => return Err(PythonError::io(&base)(err)),
    }
    Ok(base)
}

/// Recreate a small tree: directories, hardlinked files and symlinks.
fn link_tree(from: &Path, to: &Path) -> Result<(), PythonError> {
    for entry in walkdir::WalkDir::new(from).sort_by_file_name() {
        let entry = entry.map_err(|e| PythonError::io(from)(e.into()))?;
        let rel = entry.path().strip_prefix(from).expect("under the root");
        let at = to.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            fs::create_dir_all(&at).map_err(PythonError::io(&at))?;
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(PythonError::io(entry.path()))?;
            std::os::unix::fs::symlink(target, &at).map_err(PythonError::io(&at))?;
        } else {
            // Another user's file in a shared store may not be linked (protected hardlinks).
            fs::hard_link(entry.path(), &at)
                .or_else(|_| fs::copy(entry.path(), &at).map(|_| ()))
                .map_err(PythonError::io(&at))?;
        }
    }
    Ok(())
}
