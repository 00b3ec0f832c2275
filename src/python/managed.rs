//! Managed interpreters: when the machine has no Python of the version a lock wants, uv installs
//! one (`uv python install`, python-build-standalone builds, which are relocatable) and comfix
//! stores it like any other input — a content-addressed tree `<digest>-cpython-<version>-<os>-
//! <arch>-<libc>`, pinned as `pin:comfix-python-<version>`, and referenced by the venvs built on
//! it — so every later realize, offline ones included, and every machine that imports a closure
//! carrying it, finds it in the store.
//! uv's own settings choose where it downloads from (`UV_PYTHON_INSTALL_MIRROR`,
//! `UV_PYTHON_DOWNLOADS_JSON_URL`).

use std::path::PathBuf;

use super::uv::{Interpreter, Uv};
use super::PythonError;
use crate::store::Add;
use crate::store::{AddOptions, Store};

/// The interpreter for `version`: the machine's, else a managed one in the store, else (when
/// `may_install`) one uv installs now, stored.
pub fn interpreter(
    store: &Store,
    uv: &Uv,
    version: &str,
    may_install: bool,
) -> Result<Interpreter, PythonError> {
    ensure(store, uv, version, may_install).map(|(found, _)| found)
}

/// [`interpreter`], and whether it was installed now.
pub fn ensure(
    store: &Store,
    uv: &Uv,
    version: &str,
    may_install: bool,
) -> Result<(Interpreter, bool), PythonError> {
    let missing = match uv.interpreter(Some(version)) {
        Err(missing @ PythonError::NoInterpreter { .. }) => missing,
        other => return other.map(|found| (found, false)),
    };
    if let Some(found) = stored(store, uv, version)? {
        return Ok((found, false));
    }
    if !may_install || store.is_read_only() {
        return Err(missing);
    }
    install(store, uv, version)
        .map(|found| (found, true))
        .map_err(|e| match e {
            PythonError::Uv { stderr, .. } => PythonError::NoInterpreter {
                version: version.to_string(),
                detail: format!(
                    "not on this machine, and `uv python install {version}` failed:\n{stderr}"
                ),
            },
            other => other,
        })
}

/// The pin that keeps the managed interpreter of `version` (as the lock names it).
fn pin_name(version: &str) -> String {
    format!("comfix-python-{version}")
}

/// The managed interpreter of `version` (`3.11` or `3.11.7`) this store holds for this machine
/// (installed here, or imported with a closure): the newest that matches.
fn stored(store: &Store, uv: &Uv, version: &str) -> Result<Option<Interpreter>, PythonError> {
    let platform = format!("-{}-{}-", std::env::consts::OS, std::env::consts::ARCH);
    let matches = |name: &str| {
        let Some(rest) = name.split_once('-').map(|(_, r)| r) else {
            return false;
        };
        let Some(tail) = rest.strip_prefix(&format!("cpython-{version}")) else {
            return false;
        };
        (tail.starts_with('.') || tail.starts_with('-')) && rest.contains(&platform)
    };
    let mut found: Vec<String> = store
        .list()?
        .into_iter()
        .filter(|r| r.kind == "tree" && matches(&r.name))
        .map(|r| r.name)
        .collect();
    found.sort_by_key(|name| {
        let full = name.split('-').nth(2).unwrap_or_default().to_string();
        full.split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    let Some(path) = found.pop() else {
        return Ok(None);
    };
    // Checked again once protected (a collector may have run since the listing).
    if store.valid(&path)?.is_none() {
        return Ok(None);
    }
    let python = store.path_of(&path).join("bin/python3");
    Ok(Some(uv.probe_interpreter(&python)?))
}

/// `uv python install` into a staging directory, then the installation added to the store.
fn install(store: &Store, uv: &Uv, version: &str) -> Result<Interpreter, PythonError> {
    tracing::info!("Python {version} is not on this machine: installing a managed one with uv");
    let staging = store.staging()?;
    let dir = staging.path().join("install");
    uv.run(
        // Not `--quiet`: it silences uv's own error too (a refused archive failed with nothing
        // but "exit status 1").
        uv.command(["python", "install", "--no-bin"])
            .arg(version)
            .arg("--install-dir")
            .arg(&dir)
            // comfix forbids uv's implicit downloads everywhere else; this one is asked for.
            .env("UV_PYTHON_DOWNLOADS", "manual")
            .env_remove("UV_PYTHON_INSTALL_DIR"),
    )?;
    // The installation is the one real directory uv made (beside a minor-version link).
    let installed: PathBuf = std::fs::read_dir(&dir)
        .map_err(PythonError::io(&dir))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cpython-"))
                && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
        })
        .ok_or_else(|| PythonError::NoInterpreter {
            version: version.to_string(),
            detail: format!(
                "`uv python install` left no installation in `{}`",
                dir.display()
            ),
        })?;
    let name = installed
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // uv's bookkeeping inside the installation would make two installs differ.
    for extra in [".lock", "BUILD", ".cache"] {
        let at = installed.join(extra);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(&at);
        }
    }
    // Its standard library's bytecode, compiled now (see `bytecode`): what it ships is checked
    // against timestamps the store does not keep, and a stale one would be rewritten in place.
    let python = installed.join("bin/python3");
    super::bytecode::compile(&python, &installed.join("lib"), &installed)?;
    let rel = installed
        .strip_prefix(staging.path())
        .expect("under the staging directory")
        .to_string_lossy()
        .to_string();
    let options = AddOptions {
        name: Some(name),
        references: Vec::new(),
    };
    let added = store.add_staged(staging, &rel, &options, None)?;
    let path = added.record.name;
    store.pin(&pin_name(version), &path)?;
    tracing::info!("stored the managed Python {version} as `{path}`");
    let python = store.path_of(&path).join("bin/python3");
    uv.probe_interpreter(&python)
}
