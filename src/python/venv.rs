//! Building a venv from stored wheels at an input-addressed store path.
//!
//! The name is a hash of the recipe: the uv version, the interpreter (path and full version) and
//! the wheels' store paths. The same recipe is never built twice. The venv is relocatable
//! (`uv venv --relocatable`: console scripts find their interpreter relative to themselves), so it
//! is built under the store's `tmp/` and renamed into `paths/` like everything else. uv installs
//! with hardlinks from the store's own uv cache; registration then links each file into `objects/`,
//! so a file already stored (the same file of another venv) costs no bytes.

use std::fs;
use std::path::Path;

use super::uv::{Interpreter, Uv};
use super::PythonError;
use crate::lockfile::LockedPython;
use crate::store::Store;

/// Bumped when the way a venv is built changes, so old builds are not reused.
const RECIPE_VERSION: &str = "comfix-venv-v1";

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
    let mut built = false;
    store.build_input_addressed(&name, "venv", &[], |staging| {
        built = true;
        tracing::info!(
            "building the venv for Python {} ({} wheels)",
            interpreter.version,
            python.wheels.len()
        );
        build_into(store, uv, interpreter, python, staging)
    })?;
    Ok(VenvBuild { name, built })
}

fn build_into(
    store: &Store,
    uv: &Uv,
    interpreter: &Interpreter,
    python: &LockedPython,
    staging: &Path,
) -> Result<(), PythonError> {
    // The stored wheels under their file names, which is how `--find-links` knows them.
    let links = staging.join("wheels");
    fs::create_dir(&links).map_err(PythonError::io(&links))?;
    let mut pins = String::new();
    for wheel in &python.wheels {
        let at = links.join(&wheel.filename);
        std::os::unix::fs::symlink(store.path_of(&wheel.store_path), &at)
            .map_err(PythonError::io(&at))?;
        pins.push_str(&format!(
            "{}=={} --hash=sha256:{}\n",
            wheel.name, wheel.version, wheel.sha256
        ));
    }
    let requirements = staging.join("requirements.txt");
    fs::write(&requirements, pins).map_err(PythonError::io(&requirements))?;

    let venv = staging.join("venv");
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
    if !python.wheels.is_empty() {
        uv.run(
            uv.command(["pip", "install", "--quiet", "--python"])
                .arg(venv.join("bin/python"))
                .args(["--no-index", "--offline", "--require-hashes", "--no-deps"])
                .args(["--link-mode", "hardlink", "--find-links"])
                .arg(&links)
                .arg("--requirement")
                .arg(&requirements),
        )?;
    }
    // uv's bookkeeping that would only make identical venvs differ.
    let lock = venv.join(".lock");
    if lock.exists() {
        fs::remove_file(&lock).map_err(PythonError::io(&lock))?;
    }
    for entry in walkdir::WalkDir::new(&venv).into_iter().flatten() {
        if entry.file_name() == "uv_cache.json" && entry.file_type().is_file() {
            fs::remove_file(entry.path()).map_err(PythonError::io(entry.path()))?;
        }
    }
    Ok(())
}
