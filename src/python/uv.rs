//! Running uv: finding the pinned version, the interpreter, and its commands.
//!
//! uv is found as `$COMFIX_UV`, else `uv` on `PATH`. comfix is tested with [`UV_VERSION`]; another
//! version is used with a warning (its resolutions may differ). Every command runs with the
//! store's own cache (`<store>/cache/uv`, on the store's filesystem so installs can hardlink) and
//! with Python downloads disabled: the venv is built for an interpreter the machine has.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::PythonError;

/// The uv version comfix is tested with (and `.ci/run` installs).
pub const UV_VERSION: &str = "0.13.8";

/// A uv executable and the cache it works with.
#[derive(Debug, Clone)]
pub struct Uv {
    pub exe: PathBuf,
    pub version: String,
    pub cache: PathBuf,
    /// Remembered answers of `--version`-style questions to binaries (see [`probe`]).
    pub probes: PathBuf,
}

/// The Python interpreter a venv is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub path: PathBuf,
    /// The full version, such as `3.11.7`.
    pub version: String,
}

impl Interpreter {
    /// `3.11.7` → `3.11`.
    pub fn minor_version(&self) -> String {
        self.version
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl Uv {
    /// Find uv; `cache` is the store's uv cache directory, `probes` where answers of `uv
    /// --version` and of interpreters are remembered.
    pub fn find(
        env: impl Fn(&str) -> Option<String>,
        cache: &Path,
        probes: &Path,
    ) -> Result<Uv, PythonError> {
        let exe = match env("COMFIX_UV").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => find_on_path(env("PATH").unwrap_or_default().as_ref(), "uv")
                .ok_or(PythonError::NoUv)?,
        };
        let probes = probes.to_path_buf();
        let text = probe(&probes, &exe, &["--version"])?;
        let version = text
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| PythonError::Uv {
                command: format!("{} --version", exe.display()),
                stderr: format!("unexpected output `{text}`"),
            })?
            .to_string();
        if version != UV_VERSION {
            tracing::warn!(
                "using uv {version} at `{}`; comfix is tested with uv {UV_VERSION}, and another version may resolve differently",
                exe.display()
            );
        }
        Ok(Uv {
            exe,
            version,
            cache: cache.to_path_buf(),
            probes,
        })
    }

    /// A uv command with comfix's environment.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .env("UV_CACHE_DIR", &self.cache)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_PROGRESS", "1")
            .env_remove("VIRTUAL_ENV")
            .env_remove("UV_PYTHON")
            .env_remove("UV_SYSTEM_PYTHON");
        // Trust the machine's certificates, as comfix's own downloads do: behind a proxy with a
        // private CA (installed in the system's store, or named by `SSL_CERT_FILE`) uv's bundled
        // roots refuse every index. The user's own setting wins.
        if std::env::var_os("UV_NATIVE_TLS").is_none() {
            command.env("UV_NATIVE_TLS", "true");
        }
        command
    }

    /// Run `command`; a failure carries uv's stderr.
    pub fn run(&self, command: &mut Command) -> Result<Output, PythonError> {
        let rendered = render(command);
        tracing::debug!("running {rendered}");
        let output = command.output().map_err(|source| PythonError::Spawn {
            program: self.exe.clone(),
            source,
        })?;
        if !output.status.success() {
            let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if stderr.is_empty() {
                // Some failures are told on stdout, or only by the exit status.
                stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
                if stderr.is_empty() {
                    stderr = format!("uv exited with {}", output.status);
                }
            }
            return Err(PythonError::Uv {
                command: rendered,
                stderr,
            });
        }
        Ok(output)
    }

    /// The machine's interpreter for `version` (`3.11`), or its default Python. Asked once per
    /// process (a realize needs it for the overlay, the venv's name and its build).
    pub fn interpreter(&self, version: Option<&str>) -> Result<Interpreter, PythonError> {
        type Found = std::collections::HashMap<(PathBuf, Option<String>), Interpreter>;
        static FOUND: std::sync::LazyLock<std::sync::Mutex<Found>> =
            std::sync::LazyLock::new(Default::default);
        let found = || FOUND.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.exe.clone(), version.map(str::to_string));
        if let Some(known) = found().get(&key) {
            return Ok(known.clone());
        }
        let interpreter = self.find_interpreter(version)?;
        found().insert(key, interpreter.clone());
        Ok(interpreter)
    }

    /// The interpreter at `path` (its version asked once per binary).
    pub fn probe_interpreter(&self, path: &Path) -> Result<Interpreter, PythonError> {
        let version = probe(
            &self.probes,
            path,
            &["-c", "import platform; print(platform.python_version())"],
        )?;
        Ok(Interpreter {
            path: path.to_path_buf(),
            version,
        })
    }

    fn find_interpreter(&self, version: Option<&str>) -> Result<Interpreter, PythonError> {
        let mut command = self.command(["python", "find", "--system"]);
        command.args(version);
        let path = match self.run(&mut command) {
            Ok(output) => PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()),
            Err(PythonError::Uv { stderr, .. }) => {
                return Err(PythonError::NoInterpreter {
                    version: version.unwrap_or("any").to_string(),
                    detail: stderr,
                })
            }
            Err(err) => return Err(err),
        };
        let version = probe(
            &self.probes,
            &path,
            &["-c", "import platform; print(platform.python_version())"],
        )?;
        Ok(Interpreter { path, version })
    }
}

/// The trimmed stdout of `binary args`, remembered under `dir` by the binary's identity (its
/// resolved path, inode, size and modification time) and the arguments: a binary replaced or
/// upgraded is asked again. Realizing a version whose venv is stored then starts no process
/// but `uv python find`.
fn probe(dir: &Path, binary: &Path, args: &[&str]) -> Result<String, PythonError> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(binary).map_err(PythonError::io(binary))?;
    let meta = std::fs::metadata(&real).map_err(PythonError::io(&real))?;
    let mut hasher = blake3::Hasher::new();
    let identity = format!(
        "{}\0{}\0{}\0{}\0{}\0{}",
        real.display(),
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    for part in std::iter::once(identity.as_str()).chain(args.iter().copied()) {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let remembered = dir.join(&hasher.finalize().to_hex()[..32]);
    if let Ok(text) = std::fs::read_to_string(&remembered) {
        return Ok(text);
    }
    let text = stdout_of(binary, args, &args.join(" "))?.trim().to_string();
    // Only a cache: a failure to remember costs the next run one more process.
    let _ = std::fs::create_dir_all(dir).and_then(|()| {
        let mut temp = crate::files::temp_in(dir)?;
        std::io::Write::write_all(&mut temp, text.as_bytes())?;
        temp.persist(&remembered).map(|_| ()).map_err(|e| e.error)
    });
    Ok(text)
}

/// What `program args` prints; a failure says `program shown` and what it printed on stderr.
pub(super) fn stdout_of(program: &Path, args: &[&str], shown: &str) -> Result<String, PythonError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| PythonError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(PythonError::Uv {
            command: format!("{} {shown}", program.display()),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn find_on_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn render(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
