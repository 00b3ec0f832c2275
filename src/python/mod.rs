//! Python environments: requirements → a locked wheel set → wheels in the store → a venv.
//!
//! comfix does not resolve Python dependencies itself: uv locks the union of the core's, the
//! nodes' and the spec's requirements (`uv pip compile --format pylock.toml --generate-hashes`) for
//! the spec's Python version. comfix then fetches every wheel into the store itself (SHA-256
//! checked, in parallel, resumable) or takes it from `--wheels-dir`, and builds the venv from the
//! stored wheels only (`--no-index --require-hashes`) at an input-addressed store path, named by
//! the interpreter, the uv version and the wheels. The venv is relocatable, so it is built under
//! the store's `tmp/` and renamed into place like any other path, its files deduplicated into
//! objects: two versions with the same wheel set share one venv, and two sets that differ by one
//! package share every other file's bytes.

mod bytecode;
pub mod managed;
pub mod requirements;
pub mod stored_uv;
pub mod torch;
pub mod universal;
pub mod uv;
mod venv;
mod wheels;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hint::Hint;
use crate::store::StoreError;
pub use requirements::Group;
pub use uv::{Interpreter, Uv, UV_VERSION};
pub use venv::{build_venv, venv_name, VenvBuild};
pub use wheels::{fetch_wheel, find_uv, groups, locked_of, pinned_of, WheelSource};

/// Machine-local choices of a resolve; none of them is written to the shared lock.
#[derive(Debug, Clone, Default)]
pub struct PythonSettings {
    /// Resolve and install from this directory of wheels only (no index).
    pub wheels_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("uv is not installed: set `COMFIX_UV` to its path or put `uv` on PATH")]
    NoUv,
    #[error("uv is not on this machine or in the store, and fetching it failed: {reason}")]
    UvUnavailable { reason: String },
    #[error("Failed to run `{}`: {source}", .program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed:\n{stderr}")]
    Uv { command: String, stderr: String },
    #[error("No Python {version} on this machine:\n{detail}")]
    NoInterpreter { version: String, detail: String },
    #[error("The Python requirements of {first} and {second} conflict:\n{detail}\nuv says:\n{uv}")]
    Conflict {
        first: String,
        second: String,
        detail: String,
        uv: String,
    },
    #[error("The Python requirements{} cannot be resolved:\n{uv}", .origin.as_ref().map(|o| format!(" of {o}")).unwrap_or_default())]
    Unresolvable { origin: Option<String>, uv: String },
    #[error("Package `{name}` {version} has no wheel{}; comfix installs wheels only", .reason)]
    NoWheel {
        name: String,
        version: String,
        reason: String,
    },
    #[error("`--wheels-dir {}` is not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    #[error("Wheel `{filename}` is not in the wheels directory `{}`", .dir.display())]
    MissingWheel { filename: String, dir: PathBuf },
    #[error("Invalid `{}`: {message}", .path.display())]
    Pyproject { path: PathBuf, message: String },
    #[error("uv wrote a lock comfix cannot read: {message}")]
    BadPylock { message: String },
    #[error("Cannot write `{}`: {source}", .path.display())]
    CacheNotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Compiling the bytecode under `{}` failed:\n{stderr}", .dir.display())]
    Bytecode { dir: PathBuf, stderr: String },
    #[error("I/O error on `{}`: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Wheel `{filename}`: the lock has no URL for it (it was resolved from a `--wheels-dir`)"
    )]
    NoWheelUrl { filename: String },
    #[error("Wheel `{filename}`: bad URL `{url}`")]
    BadWheelUrl { filename: String, url: String },
    #[error("Unknown torch backend `{name}`: expected `auto`, `cpu`, `cuXYZ` (`cu121`, `cu128`), `rocmX.Y` (`rocm6.2`) or `xpu`")]
    UnknownBackend { name: String },
    #[error("Torch backend `{backend}` needs a newer NVIDIA driver than this machine's {driver}{}", .most.as_ref().map(|m| format!(" (which runs up to `{m}`)")).unwrap_or_default())]
    DriverTooOld {
        backend: String,
        driver: String,
        most: Option<String>,
    },
    #[error("The lock's Python set cannot be resolved for torch backend `{backend}` from `{index}`:\n{uv}")]
    BackendUnresolvable {
        backend: String,
        index: String,
        uv: String,
    },
    #[error("Torch backend `{backend}` for this lock is not in the store, and `--offline` forbids resolving it")]
    NoOverlay { backend: String },
    #[error(
        "The lock does not cover this machine ({platform}): no wheel of `{name}` {version} fits it"
    )]
    NotCovered {
        name: String,
        version: String,
        platform: String,
    },
    #[error("The lock's wheel `{filename}` does not fit this machine (its best tag is `{tag}`): the lock was resolved on another platform")]
    OtherPlatform { filename: String, tag: String },
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PythonError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PythonError {
        let path = path.into();
        move |source| PythonError::Io { path, source }
    }
}

impl Hint for PythonError {
    fn hint(&self) -> Option<String> {
        match self {
            PythonError::NoUv | PythonError::UvUnavailable { .. } => Some(format!(
                "install the tested version where the system Python is not touched (`pipx install uv=={UV_VERSION}`, or `python3 -m venv ~/.local/uv && ~/.local/uv/bin/pip install uv=={UV_VERSION}` and `COMFIX_UV=~/.local/uv/bin/uv`), or run once with network access so comfix fetches it into the store (`COMFIX_UV_WHEEL_URL` and `COMFIX_UV_WHEEL_SHA256` name a mirror), or import a closure that carries it"
            )),
            PythonError::NoInterpreter { .. } => Some(
                "install that Python, or let comfix install a managed one with uv (it needs network access, or `UV_PYTHON_INSTALL_MIRROR` / `UV_PYTHON_DOWNLOADS_JSON_URL` naming a mirror), or import a closure that carries one; or change the spec's `python.version`".into(),
            ),
            PythonError::Conflict { .. } => Some(
                "pin compatible versions in the spec's `python.requirements`, or disable one of the nodes".into(),
            ),
            PythonError::MissingWheel { .. } => {
                Some("put the wheel in the directory, or run without `--wheels-dir`".into())
            }
            PythonError::NoWheelUrl { .. } => Some("pass `--wheels-dir`".into()),
            PythonError::DriverTooOld { most, .. } => Some(match most {
                Some(most) => format!("use `--torch-backend {most}` (or `auto`), or update the driver"),
                None => "update the driver, or use `--torch-backend cpu`".into(),
            }),
            PythonError::BackendUnresolvable { .. } => Some(
                "the backend's index must serve the lock's torch release (and its companions) for this platform: pick another backend, or name a mirror that has them with `--torch-index` (`{backend}` in it is replaced)".into(),
            ),
            PythonError::NotCovered { .. } => Some(
                "the index has no wheel of that version for this platform: on this machine, run `comfix resolve <ID> --update python` so uv picks versions that have wheels for every platform the team uses (or pin one in the spec's `python.requirements`)".into(),
            ),
            PythonError::OtherPlatform { .. } => Some(
                "set `\"universal\": true` in the spec's `python` and run `comfix resolve <ID> --update python`: one lock then serves every platform, each machine choosing its wheels".into(),
            ),
            PythonError::NoOverlay { .. } => Some(
                "realize once with network access (or import a closure of a home that uses this backend)".into(),
            ),
            PythonError::CacheNotWritable { .. } => Some(
                "uv's cache must be writable by this user: in a store shared by a group, each user has their own (`cache/uv.<uid>`); fix the directory's owner or modes".into(),
            ),
            PythonError::Fetch(e) => e.hint(),
            PythonError::Store(e) => e.hint(),
            _ => None,
        }
    }

    fn is_user_error(&self) -> bool {
        match self {
            PythonError::NoUv
            | PythonError::UvUnavailable { .. }
            | PythonError::NoInterpreter { .. }
            | PythonError::Conflict { .. }
            | PythonError::Unresolvable { .. }
            | PythonError::NoWheel { .. }
            | PythonError::MissingWheel { .. }
            | PythonError::NotADirectory { .. }
            | PythonError::Pyproject { .. }
            | PythonError::NoWheelUrl { .. }
            | PythonError::BadWheelUrl { .. }
            | PythonError::UnknownBackend { .. }
            | PythonError::DriverTooOld { .. }
            | PythonError::BackendUnresolvable { .. }
            | PythonError::NoOverlay { .. }
            | PythonError::NotCovered { .. }
            | PythonError::OtherPlatform { .. }
            | PythonError::CacheNotWritable { .. } => true,
            PythonError::Fetch(e) => e.is_user_error(),
            PythonError::Store(e) => e.is_user_error(),
            _ => false,
        }
    }
}

/// One wheel of a resolved set, before it is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedWheel {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub url: String,
    pub sha256: String,
    pub size: Option<u64>,
}

/// One locking job: uv, a scratch directory, the Python version (and interpreter, when the machine
/// has it), and where uv finds packages.
#[derive(Debug, Clone, Copy)]
pub struct Compile<'a> {
    pub uv: &'a Uv,
    pub scratch: &'a Path,
    pub version: &'a str,
    pub interpreter: Option<&'a Interpreter>,
    /// Resolve from this directory only (no index).
    pub wheels_dir: Option<&'a Path>,
    pub offline: bool,
    /// For every platform (`--universal`), not this machine's only.
    pub universal: bool,
}

impl Compile<'_> {
    /// Lock `groups`. A resolution failure between groups is narrowed down to the two groups
    /// that conflict (or the one that cannot be satisfied on its own).
    pub fn run(&self, groups: &[Group]) -> Result<Vec<PinnedWheel>, PythonError> {
        select_wheels(&self.resolve(groups)?, self.interpreter)
    }

    /// Lock `groups` for every platform: each package with its marker and all its wheels.
    pub fn run_universal(
        &self,
        groups: &[Group],
    ) -> Result<Vec<crate::lock::UniversalPackage>, PythonError> {
        universal_packages(&self.resolve(groups)?)
    }

    fn resolve(&self, groups: &[Group]) -> Result<Pylock, PythonError> {
        let all: Vec<&Group> = groups.iter().collect();
        match self.pylock(&all) {
            Ok(pylock) => Ok(pylock),
            Err(PythonError::Uv { stderr, .. }) if is_unsatisfiable(&stderr) => {
                Err(self.attribute(&all, stderr))
            }
            Err(PythonError::Uv { stderr, .. }) => Err(PythonError::Unresolvable {
                origin: None,
                uv: stderr,
            }),
            Err(err) => Err(err),
        }
    }

    /// `uv pip compile` of `groups` into a PEP 751 lock.
    fn pylock(&self, groups: &[&Group]) -> Result<Pylock, PythonError> {
        self.pylock_with(groups, None)
    }

    /// `pylock`, with `overlay`: a constraints file, and an index asked before the default one.
    fn pylock_with(
        &self,
        groups: &[&Group],
        overlay: Option<(&Path, &str)>,
    ) -> Result<Pylock, PythonError> {
        let input = self.scratch.join("requirements.in");
        let mut text = requirements::merged(groups).join("\n");
        text.push('\n');
        std::fs::write(&input, text).map_err(PythonError::io(&input))?;
        let output = self.scratch.join("pylock.toml");
        let mut command = self
            .uv
            .command(["pip", "compile", "--quiet", "--no-header"]);
        command
            .arg(&input)
            .args(["--format", "pylock.toml", "--generate-hashes", "--no-build"])
            .args(["--python-version", self.version])
            .arg("--output-file")
            .arg(&output);
        if let Some(interpreter) = self.interpreter {
            command.arg("--python").arg(&interpreter.path);
        }
        if let Some(dir) = self.wheels_dir {
            // A page of the directory's wheels with their SHA-256s, hashed here on every core:
            // given the directory itself, uv unpacks each wheel to hash it (16–25 s for the
            // 3 GB torch set; 0.1 s from the page, plus the hashing).
            let page = links_page(dir, self.scratch)?;
            command.args(["--no-index", "--find-links", page.as_str()]);
            // A throwaway cache: nothing of the resolution is kept beside the store.
            command.arg("--no-cache");
        }
        if self.offline {
            command.arg("--offline");
        }
        if self.universal {
            command.arg("--universal");
        }
        if let Some((constraints, index)) = overlay {
            command.arg("--constraint").arg(constraints);
            command.args(["--index", index]);
        }
        // A torch backend is a machine's choice; it must not shape the shared lock.
        command.env_remove("UV_TORCH_BACKEND");
        command.current_dir(self.scratch);
        self.uv.run(&mut command)?;
        let text = std::fs::read_to_string(&output).map_err(PythonError::io(&output))?;
        toml::from_str(&text).map_err(|e| PythonError::BadPylock {
            message: e.to_string(),
        })
    }

    /// Find which groups conflict: add groups one by one until the set fails, then find the
    /// earlier group that fails together with the last one.
    fn attribute(&self, groups: &[&Group], uv_message: String) -> PythonError {
        let fails = |set: &[&Group]| {
            matches!(
                self.pylock(set),
                Err(PythonError::Uv { ref stderr, .. }) if is_unsatisfiable(stderr)
            )
        };
        let mut prefix: Vec<&Group> = Vec::new();
        for &group in groups.iter().filter(|g| !g.requirements.is_empty()) {
            if fails(&[group]) {
                return PythonError::Unresolvable {
                    origin: Some(group.origin.clone()),
                    uv: uv_message,
                };
            }
            let mut with = prefix.clone();
            with.push(group);
            if fails(&with) {
                let partner = prefix.iter().find(|earlier| fails(&[earlier, group]));
                return match partner {
                    Some(earlier) => PythonError::Conflict {
                        first: earlier.origin.clone(),
                        second: group.origin.clone(),
                        detail: conflict_lines(&[earlier, group], &uv_message),
                        uv: uv_message,
                    },
                    None => PythonError::Conflict {
                        first: prefix
                            .iter()
                            .map(|g| g.origin.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        second: group.origin.clone(),
                        detail: conflict_lines(&with, &uv_message),
                        uv: uv_message,
                    },
                };
            }
            prefix.push(group);
        }
        PythonError::Unresolvable {
            origin: None,
            uv: uv_message,
        }
    }
}

fn is_unsatisfiable(stderr: &str) -> bool {
    stderr.contains("No solution found") || stderr.contains("unsatisfiable")
}

/// `  node `a` wants `shared==1.0`` for each requirement of `groups` whose project uv's message
/// mentions (or every requirement, when it mentions none).
fn conflict_lines(groups: &[&Group], uv_message: &str) -> String {
    let message = uv_message.to_ascii_lowercase();
    let mentioned = |r: &String| {
        let name = requirements::project_name(r);
        !name.is_empty() && message.contains(&name)
    };
    let any = groups.iter().any(|g| g.requirements.iter().any(mentioned));
    let mut lines = Vec::new();
    for group in groups {
        for requirement in &group.requirements {
            if !any || mentioned(requirement) {
                lines.push(format!("  {} wants `{requirement}`", group.origin));
            }
        }
    }
    lines.join("\n")
}

/// The parts of a PEP 751 lock (`pylock.toml`) comfix reads.
#[derive(Debug, Deserialize)]
struct Pylock {
    #[serde(default)]
    packages: Vec<PylockPackage>,
}

#[derive(Debug, Deserialize)]
struct PylockPackage {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    marker: Option<String>,
    #[serde(default)]
    wheels: Vec<PylockFile>,
    #[serde(default)]
    sdist: Option<PylockFile>,
}

#[derive(Debug, Deserialize)]
struct PylockFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
}

impl PylockFile {
    fn filename(&self) -> Option<String> {
        self.name.clone().or_else(|| {
            let location = self.url.as_deref().or(self.path.as_deref())?;
            let last = location.split(['?', '#']).next()?.rsplit('/').next()?;
            Some(
                percent_decode(last)
                    .unwrap_or_else(|| last.to_string())
                    .to_string(),
            )
        })
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let url = url::Url::parse(&format!("file:///{text}")).ok()?;
    let path = url.to_file_path().ok()?;
    Some(path.file_name()?.to_string_lossy().into_owned())
}

/// One wheel per package: the only one listed, or the one whose tags the interpreter ranks first.
fn select_wheels(
    pylock: &Pylock,
    interpreter: Option<&Interpreter>,
) -> Result<Vec<PinnedWheel>, PythonError> {
    let mut tags: Option<Vec<String>> = None;
    let mut out = Vec::new();
    for package in &pylock.packages {
        let version = package.version.clone().unwrap_or_default();
        let chosen = match package.wheels.len() {
            0 => return Err(no_wheel(package)),
            1 => &package.wheels[0],
            _ => {
                if tags.is_none() {
                    tags = Some(supported_tags(interpreter)?);
                }
                let ranked = tags.as_deref().unwrap_or_default();
                package
                    .wheels
                    .iter()
                    .filter_map(|w| Some((best_rank(&w.filename()?, ranked)?, w)))
                    .min_by_key(|(rank, _)| *rank)
                    .map(|(_, w)| w)
                    .ok_or_else(|| PythonError::NoWheel {
                        name: package.name.clone(),
                        version: version.clone(),
                        reason: " for this interpreter and platform".into(),
                    })?
            }
        };
        let filename = chosen.filename().ok_or_else(|| PythonError::BadPylock {
            message: format!("a wheel of `{}` has no file name", package.name),
        })?;
        let sha256 =
            chosen
                .hashes
                .get("sha256")
                .cloned()
                .ok_or_else(|| PythonError::BadPylock {
                    message: format!("wheel `{filename}` has no sha256"),
                })?;
        let url = chosen
            .url
            .clone()
            .or_else(|| chosen.path.clone())
            .ok_or_else(|| PythonError::BadPylock {
                message: format!("wheel `{filename}` has no URL or path"),
            })?;
        out.push(PinnedWheel {
            name: requirements::normalize(&package.name),
            version,
            filename,
            url,
            sha256: sha256.to_ascii_lowercase(),
            size: chosen.size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `scratch/links.html`: a flat page (as `--find-links` reads one) linking every wheel of `dir`
/// by its `file://` URL with its SHA-256 in the fragment, the files hashed in parallel; returns
/// the page's URL. Written once per scratch directory: narrowing down a conflict compiles again
/// and again from the same directory.
fn links_page(dir: &Path, scratch: &Path) -> Result<String, PythonError> {
    use rayon::prelude::*;
    let page = scratch.join("links.html");
    let url_of = |page: &Path| {
        url::Url::from_file_path(page)
            .map(|u| u.to_string())
            .map_err(|()| PythonError::BadWheelUrl {
                filename: page.display().to_string(),
                url: String::new(),
            })
    };
    if page.is_file() {
        return url_of(&page);
    }
    let dir = std::fs::canonicalize(dir).map_err(PythonError::io(dir))?;
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(PythonError::io(&dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl") && p.is_file())
        .collect();
    wheels.sort();
    let links: Vec<String> = wheels
        .par_iter()
        .map(|path| -> Result<String, PythonError> {
            let file = std::fs::File::open(path).map_err(PythonError::io(path))?;
            let sha256 = crate::files::sha256_hex_of(file).map_err(PythonError::io(path))?;
            let url = url::Url::from_file_path(path).map_err(|()| PythonError::BadWheelUrl {
                filename: path.display().to_string(),
                url: String::new(),
            })?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let text = name.replace('&', "&amp;").replace('<', "&lt;");
            Ok(format!(
                "<a href=\"{url}#sha256={sha256}\">{text}</a><br/>\n"
            ))
        })
        .collect::<Result<_, _>>()?;
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n{}</body></html>\n",
        links.concat()
    );
    // Whole or not at all: a page cut short by a failure would hide wheels from the next compile.
    crate::files::write_atomic(&page, html.as_bytes()).map_err(PythonError::io(&page))?;
    url_of(&page)
}

/// A package uv locked with no wheel: comfix installs wheels only.
fn no_wheel(package: &PylockPackage) -> PythonError {
    PythonError::NoWheel {
        name: package.name.clone(),
        version: package.version.clone().unwrap_or_default(),
        reason: if package.sdist.is_some() {
            " (only a source distribution)".into()
        } else {
            " (it is a local directory or a VCS checkout)".into()
        },
    }
}

/// Every package of a universal lock with its marker and all its wheels; a package with no
/// wheel at all is refused (comfix installs wheels only).
fn universal_packages(pylock: &Pylock) -> Result<Vec<crate::lock::UniversalPackage>, PythonError> {
    let mut out = Vec::new();
    for package in &pylock.packages {
        let version = package.version.clone().unwrap_or_default();
        if package.wheels.is_empty() {
            return Err(no_wheel(package));
        }
        let mut wheels = Vec::new();
        for file in &package.wheels {
            let filename = file.filename().ok_or_else(|| PythonError::BadPylock {
                message: format!("a wheel of `{}` has no file name", package.name),
            })?;
            let sha256 = file
                .hashes
                .get("sha256")
                .ok_or_else(|| PythonError::BadPylock {
                    message: format!("wheel `{filename}` has no sha256"),
                })?;
            wheels.push(crate::lock::UniversalWheel {
                filename,
                url: file.url.clone().or_else(|| file.path.clone()),
                sha256: sha256.to_ascii_lowercase(),
            });
        }
        out.push(crate::lock::UniversalPackage {
            name: requirements::normalize(&package.name),
            version,
            marker: package.marker.clone(),
            wheels,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

/// The rank of a wheel file name's best tag in `ranked` (lower is better).
fn best_rank(filename: &str, ranked: &[String]) -> Option<usize> {
    let stem = filename.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 5 {
        return None;
    }
    let [py, abi, platform] = [
        parts[parts.len() - 3],
        parts[parts.len() - 2],
        parts[parts.len() - 1],
    ];
    let mut best = None;
    for p in py.split('.') {
        for a in abi.split('.') {
            for pl in platform.split('.') {
                let tag = format!("{p}-{a}-{pl}");
                if let Some(rank) = ranked.iter().position(|t| *t == tag) {
                    best = Some(best.map_or(rank, |b: usize| b.min(rank)));
                }
            }
        }
    }
    best
}

/// The interpreter's supported wheel tags, best first (`packaging.tags.sys_tags()`, from
/// `packaging` or the copy pip vendors).
fn supported_tags(interpreter: Option<&Interpreter>) -> Result<Vec<String>, PythonError> {
    const SCRIPT: &str = "try:\n    from packaging import tags\nexcept ImportError:\n    from pip._vendor.packaging import tags\nfor t in tags.sys_tags():\n    print(t)\n";
    let python = interpreter
        .map(|i| i.path.clone())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let text = uv::stdout_of(&python, &["-c", SCRIPT], "-c <list wheel tags>")?;
    Ok(text.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page uv reads instead of the directory: every wheel (nothing else) by its `file://`
    /// URL with the SHA-256 of its bytes.
    #[test]
    fn a_wheels_directory_becomes_a_page_of_hashed_links() {
        let temp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(temp.path()).unwrap();
        let wheels = root.join("wheel house");
        std::fs::create_dir_all(&wheels).unwrap();
        std::fs::write(wheels.join("a-1.0-py3-none-any.whl"), b"first").unwrap();
        std::fs::write(wheels.join("b-2.0-py3-none-any.whl"), b"second").unwrap();
        std::fs::write(wheels.join("c-1.0.tar.gz"), b"sdist").unwrap();
        let url = links_page(&wheels, root.as_path()).unwrap();
        assert_eq!(
            url,
            format!("file://{}/links.html", root.as_path().display())
        );
        let page = std::fs::read_to_string(root.as_path().join("links.html")).unwrap();
        let hrefs: Vec<&str> = page
            .split("href=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        let sha = |b: &[u8]| crate::files::sha256_hex_of(b).unwrap();
        assert_eq!(
            hrefs,
            [
                format!(
                    "file://{}/wheel%20house/a-1.0-py3-none-any.whl#sha256={}",
                    root.as_path().display(),
                    sha(b"first")
                ),
                format!(
                    "file://{}/wheel%20house/b-2.0-py3-none-any.whl#sha256={}",
                    root.as_path().display(),
                    sha(b"second")
                ),
            ]
        );
    }

    #[test]
    fn the_best_ranked_tag_wins() {
        let ranked: Vec<String> = [
            "cp311-cp311-manylinux_2_17_x86_64",
            "cp311-abi3-manylinux_2_17_x86_64",
            "py3-none-any",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            best_rank(
                "x-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                &ranked
            ),
            Some(0)
        );
        assert_eq!(best_rank("x-1.0-py2.py3-none-any.whl", &ranked), Some(2));
        assert_eq!(best_rank("x-1.0-cp312-cp312-win_amd64.whl", &ranked), None);
        assert_eq!(best_rank("not-a-wheel.tar.gz", &ranked), None);
    }

    #[test]
    fn pylock_wheels_are_read_and_sdist_only_packages_are_refused() {
        let text = r#"
lock-version = "1.0"
[[packages]]
name = "Alpha_Pkg"
version = "1.0"
wheels = [{ url = "http://x/files/alpha_pkg-1.0-py3-none-any.whl", hashes = { sha256 = "AB" } }]
"#;
        let pylock: Pylock = toml::from_str(text).unwrap();
        let wheels = select_wheels(&pylock, None).unwrap();
        assert_eq!(wheels[0].name, "alpha-pkg");
        assert_eq!(wheels[0].filename, "alpha_pkg-1.0-py3-none-any.whl");
        assert_eq!(wheels[0].sha256, "ab");
        let sdist = r#"
[[packages]]
name = "b"
version = "2"
sdist = { url = "http://x/b-2.tar.gz", hashes = { sha256 = "cd" } }
"#;
        let pylock: Pylock = toml::from_str(sdist).unwrap();
        let err = select_wheels(&pylock, None).unwrap_err();
        assert!(
            err.to_string().contains("only a source distribution"),
            "{err}"
        );
    }
}
