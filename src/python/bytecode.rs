//! Compiled bytecode for trees the store will hold (venvs, managed interpreters).
//!
//! A Python that imports a module without valid bytecode beside it compiles the module and, where
//! it may write, saves the result in `__pycache__/` next to the source. In the store that is a
//! write into an immutable path — and root may write anywhere, whatever the modes say. So every
//! `.py` file of a tree is compiled before the tree is registered, as *unchecked-hash* bytecode
//! (PEP 552): Python loads it without comparing it to the source's timestamp or hash, so it never
//! finds it stale and never writes another. The result is reproducible — the same sources and the
//! same interpreter give the same bytes on every machine (no timestamps; a fixed hash seed, since
//! set constants are ordered by hash; the staging directory stripped from the recorded file
//! names, which Python replaces by the real path when it loads the module anyway).

use std::path::Path;
use std::process::Command;

use super::PythonError;

/// Compiles a directory with `compileall`; a file that does not compile (Python 2 code, a
/// template) is left as it is, as installers do.
const COMPILE: &str = "\
import compileall, py_compile, sys
compileall.compile_dir(sys.argv[1], quiet=2, force=True, stripdir=sys.argv[2], workers=0,
    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
";

/// Compile every `.py` file under `dir` with `python`, recording file names relative to `root`.
pub fn compile(python: &Path, dir: &Path, root: &Path) -> Result<(), PythonError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let mut command = Command::new(python);
    command
        .args(["-c", COMPILE])
        .arg(dir)
        .arg(root)
        // Nothing of the caller's environment may change the bytes.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PYTHONHASHSEED", "0");
    tracing::debug!("compiling bytecode under `{}`", dir.display());
    let output = command.output().map_err(|source| PythonError::Spawn {
        program: python.to_path_buf(),
        source,
    })?;
    if !output.status.success() {
        return Err(PythonError::Bytecode {
            dir: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
