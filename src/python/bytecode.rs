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

/// Compiles every `.py` file under a directory, one worker process per core, each compiling its
/// share of the sorted list with `py_compile` — the same bytes as `compileall`, whose pool
/// pickles every file name to its workers and back (a third more CPU over a torch venv's tens of
/// thousands of modules). Walked as `compileall` walks: `__pycache__` and links to directories
/// left out. A file that does not compile (Python 2 code, a template) is left as it is, as
/// installers do; a worker that dies fails the whole.
const COMPILE: &str = "\
import os, py_compile, sys
root, strip = sys.argv[1], sys.argv[2]
files = []
for top, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d != '__pycache__')
    files.extend(os.path.join(top, n) for n in sorted(names) if n.endswith('.py'))
def work(share):
    for path in share:
        try:
            py_compile.compile(path, dfile=os.path.relpath(path, strip), doraise=True, quiet=2,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        except Exception:
            pass
count = max(1, min(len(os.sched_getaffinity(0)), len(files)))
workers = []
for k in range(count):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work(files[k::count])
            code = 0
        finally:
            os._exit(code)
    workers.append(pid)
failed = 0
for pid in workers:
    _, status = os.waitpid(pid, 0)
    failed += not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
if failed:
    sys.exit(f'{failed} of {count} bytecode workers failed')
";

/// Compile every `.py` file under `dir` with `python`, recording file names relative to `root`
/// (`dir` must be under `root`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// `compileall` as the bytecode was compiled before, for comparison.
    const COMPILEALL: &str = "\
import compileall, py_compile, sys
compileall.compile_dir(sys.argv[1], quiet=2, force=True, stripdir=sys.argv[2], workers=0,
    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
";

    fn tree(root: &Path) {
        let pkg = root.join("lib/pkg");
        fs::create_dir_all(pkg.join("sub")).expect("dirs");
        fs::create_dir_all(pkg.join("__pycache__")).expect("dirs");
        fs::create_dir_all(root.join("elsewhere")).expect("dirs");
        fs::write(pkg.join("a.py"), "X = {'a', 'b', 'c'}\n").expect("a");
        fs::write(pkg.join("broken.py"), "def (:\n").expect("broken");
        fs::write(pkg.join("sub/c.py"), "def f():\n    return 1\n").expect("c");
        fs::write(pkg.join("__pycache__/junk.py"), "Y = 1\n").expect("junk");
        fs::write(root.join("elsewhere/d.py"), "Z = 1\n").expect("d");
        std::os::unix::fs::symlink(root.join("elsewhere"), pkg.join("linked")).expect("link");
    }

    fn compiled(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(root)
            .into_iter()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pyc"))
            .map(|e| {
                let rel = e.path().strip_prefix(root).expect("under root");
                (rel.display().to_string(), fs::read(e.path()).expect("pyc"))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn every_module_is_compiled_as_compileall_would_and_nothing_else() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
        tree(&ours);
        tree(&theirs);
        let python = Path::new("python3");
        compile(python, &ours.join("lib"), &ours).expect("compile");
        let status = Command::new(python)
            .args(["-c", COMPILEALL])
            .arg(theirs.join("lib"))
            .arg(&theirs)
            .env("PYTHONHASHSEED", "0")
            .output()
            .expect("compileall");
        assert!(status.status.success());

        let ours = compiled(&ours);
        let names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
        let tag = |n: &str| n.replace(".pyc", "");
        assert_eq!(names.len(), 2, "a.py and sub/c.py only: {names:?}");
        assert!(tag(names[0]).starts_with("lib/pkg/__pycache__/a."));
        assert!(tag(names[1]).starts_with("lib/pkg/sub/__pycache__/c."));
        for (name, bytes) in &ours {
            // PEP 552: flags 0b01, a hash-based pyc whose source is never checked.
            assert_eq!(bytes[4..8], [1, 0, 0, 0], "{name}");
            let recorded = if name.contains("/sub/") {
                "lib/pkg/sub/c.py"
            } else {
                "lib/pkg/a.py"
            };
            assert!(
                bytes
                    .windows(recorded.len())
                    .any(|w| w == recorded.as_bytes()),
                "{name} records its file name relative to the root"
            );
        }
        assert_eq!(ours, compiled(&theirs), "the same files, byte for byte");
    }
}
