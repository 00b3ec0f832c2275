//! `comfix snapshot`: read an install that grew by hand and with ComfyUI-Manager, and write the
//! spec that realizes it again. Nothing in the install is changed, unless `--link-models` asks
//! for its model files to become links into the store (each only after its bytes verified).
//!
//! Custom nodes are identified as ComfyUI-Manager does (seed `004_*`): by marker files, not by
//! directory names — a `.git` directory first (a git node: origin URL and HEAD commit), else
//! `.tracking` with `pyproject.toml` (a registry node: its `project.name`, lower-cased, and
//! `project.version`); the same under `custom_nodes/.disabled/` (`<id>@<version>`, and the legacy
//! plain names) and `custom_nodes/<name>.disabled`, for disabled nodes. What cannot be
//! identified is listed, never dropped silently.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

/// What `snapshot` found, for its report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub core: Option<CoreFound>,
    pub nodes: Vec<NodeFound>,
    /// Entries under `custom_nodes/` that are not a node this spec can carry.
    pub unidentified: Vec<Problem>,
    pub models: Vec<ModelFound>,
    /// Files and directories that could not be read (a symlink loop, no permission).
    pub unreadable: Vec<Problem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonFound>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoreFound {
    pub repo: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `git`, or `version file` when the core has no repository.
    pub from: &'static str,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeFound {
    /// The directory, relative to `custom_nodes/`.
    pub dir: String,
    /// Its name under `custom_nodes/` when realized.
    pub name: String,
    /// `git` or `registry`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub enabled: bool,
    /// Uncommitted files, unpushed commits, files `.tracking` names that are missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelFound {
    /// `<target_subdir>/<filename>`, as realize places it.
    pub file: String,
    pub target_subdir: String,
    pub filename: String,
    pub size: u64,
    /// Where it is in the install.
    pub path: PathBuf,
    /// Where it comes from, when known (`--models-spec`, a `.civitai.info` beside it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_source: Option<String>,
    /// Its bytes' BLAKE3, once it is in the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PythonFound {
    pub venv: PathBuf,
    pub version: String,
    pub requirements: Vec<String>,
}

/// Where an install keeps its parts.
#[derive(Debug, Clone)]
pub struct Install {
    /// The ComfyUI tree (`main.py`, `custom_nodes/`, `models/`).
    pub core: PathBuf,
    pub venv: Option<PathBuf>,
}

impl Install {
    /// `DIR` is the ComfyUI tree, or a home holding it as `DIR/ComfyUI`; its venv is `.venv` or
    /// `venv` in either.
    pub fn find(dir: &Path) -> Result<Install, String> {
        // Absolute: the spec names the install's files by `file://` URLs.
        let dir = &fs::canonicalize(dir).map_err(|e| format!("`{}`: {e}", dir.display()))?;
        let core = if dir.join("ComfyUI/main.py").is_file() {
            dir.join("ComfyUI")
        } else if dir.join("main.py").is_file() {
            dir.to_path_buf()
        } else {
            return Err(format!(
                "`{}` is not a ComfyUI install (no `main.py` in it or in `ComfyUI/`)",
                dir.display()
            ));
        };
        let venv = [dir, core.as_path()]
            .iter()
            .flat_map(|d| [d.join(".venv"), d.join("venv")])
            .find(|v| v.join("pyvenv.cfg").is_file());
        Ok(Install { core, venv })
    }
}

/// Read the install: core, nodes, model files, Python.
pub fn scan(install: &Install, models_spec: &BTreeMap<String, String>) -> Report {
    let mut core_warnings = Vec::new();
    let mut report = Report {
        core: core(&install.core, &mut core_warnings),
        ..Report::default()
    };
    report
        .warnings
        .extend(core_warnings.into_iter().map(|w| format!("the core: {w}")));
    if let Some(core) = &report.core {
        if core.from == "version file" {
            report.warnings.push(format!(
                "the core `{}` is not a git checkout; its version file says {}",
                install.core.display(),
                core.version.as_deref().unwrap_or("nothing")
            ));
        }
    } else {
        report.warnings.push(format!(
            "the core `{}` has neither a git repository with a remote nor a version file",
            install.core.display()
        ));
    }
    nodes(&install.core.join("custom_nodes"), &mut report);
    // Node folders `extra_model_paths.yaml` adds (its `custom_nodes:` entries), adopted as nodes.
    if let Ok(text) = fs::read_to_string(install.core.join("extra_model_paths.yaml")) {
        if let Ok(folders) = extra_node_folders(&text, &install.core) {
            for folder in folders {
                let folder = fs::canonicalize(&folder).unwrap_or(folder);
                if folder != fs::canonicalize(install.core.join("custom_nodes")).unwrap_or_default()
                {
                    nodes(&folder, &mut report);
                }
            }
        }
    }
    models(&install.core, models_spec, &mut report);
    if let Some(venv) = &install.venv {
        report.python = python(venv, &mut report.warnings);
    }
    report
}

/// The core: its repository and commit (uncommitted changes to its own files and an unpushed
/// commit go to `warnings`), else its version file.
fn core(dir: &Path, warnings: &mut Vec<String>) -> Option<CoreFound> {
    if dir.join(".git").exists() {
        if let Some((repo, commit)) = git_state_except(dir, CORE_OWN, warnings) {
            return Some(CoreFound {
                repo,
                commit: Some(commit),
                version: None,
                from: "git",
                dir: dir.to_path_buf(),
            });
        }
    }
    let text = fs::read_to_string(dir.join("comfyui_version.py")).ok()?;
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("__version__"))
        .map(|rest| {
            rest.trim_start_matches([' ', '='])
                .trim()
                .trim_matches(['"', '\''])
        })
        .map(String::from)?;
    Some(CoreFound {
        repo: "https://github.com/comfyanonymous/ComfyUI".into(),
        commit: None,
        version: Some(version),
        from: "version file",
        dir: dir.to_path_buf(),
    })
}

/// What an install keeps inside the core's tree that is not the core's (ComfyUI's own
/// `.gitignore` names most of them).
const CORE_OWN: &[&str] = &[
    "custom_nodes/",
    "models/",
    "user/",
    "input/",
    "output/",
    "temp/",
    ".venv/",
    "venv/",
    "extra_model_paths.yaml",
];

/// A git working tree's origin URL and HEAD commit; uncommitted files and unpushed commits are
/// added to `warnings`. `None` when it is no repository, has no remote or no commit.
fn git_state(dir: &Path, warnings: &mut Vec<String>) -> Option<(String, String)> {
    git_state_except(dir, &[], warnings)
}

/// `url` without a user name or password (`https://user:token@host/…` → `https://host/…`): a
/// spec and its lock are shared and committed, and the store is readable by every user. Saying so
/// in `warnings`; the token is given at resolve time (git's credential helper, or `GIT_TOKEN` /
/// `GITHUB_TOKEN` / `GH_TOKEN`).
pub(crate) fn without_credentials(url: &str, dir: &Path, warnings: &mut Vec<String>) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return url.to_string();
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        // `ssh://git@host/…`: a user name, no secret.
        if parsed.password().is_none() {
            return url.to_string();
        }
    }
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    warnings.push(format!(
        "`{}`: its remote URL carries credentials; they are left out of the spec (give the token at resolve time: git's credential helper, or `GIT_TOKEN`, `GITHUB_TOKEN` or `GH_TOKEN`)",
        dir.display()
    ));
    parsed.to_string()
}

/// [`git_state`], not counting changes under the `skip` prefixes.
fn git_state_except(
    dir: &Path,
    skip: &[&str],
    warnings: &mut Vec<String>,
) -> Option<(String, String)> {
    let repo = git2::Repository::open_ext(
        dir,
        git2::RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&std::ffi::OsStr>(),
    )
    .ok()?;
    let remote = repo.find_remote("origin").ok().or_else(|| {
        let names = repo.remotes().ok()?;
        let first = names.iter().flatten().flatten().next()?.to_string();
        repo.find_remote(&first).ok()
    })?;
    let url = without_credentials(remote.url().ok()?, dir, warnings);
    let head = repo.head().ok()?.peel_to_commit().ok()?.id();
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false);
    if let Ok(statuses) = repo.statuses(Some(&mut options)) {
        let dirty: Vec<String> = statuses
            .iter()
            .filter_map(|s| s.path().ok().map(String::from))
            .filter(|p| !p.contains("__pycache__") && !p.ends_with(".pyc"))
            .filter(|p| !skip.iter().any(|s| p.starts_with(s)))
            .collect();
        if !dirty.is_empty() {
            warnings.push(format!(
                "uncommitted changes, not in the snapshot: {}",
                dirty.join(", ")
            ));
        }
    }
    let tips: Vec<git2::Oid> = repo
        .references_glob("refs/remotes/*")
        .map(|refs| {
            refs.flatten()
                .filter_map(|r| r.peel_to_commit().ok())
                .map(|c| c.id())
                .collect()
        })
        .unwrap_or_default();
    let pushed = tips
        .iter()
        .any(|&tip| tip == head || repo.graph_descendant_of(tip, head).unwrap_or(false));
    if !pushed {
        warnings.push(format!(
            "commit {head} is on no remote-tracking branch (not pushed?): another machine may not find it at `{url}`"
        ));
    }
    Some((url, head.to_string()))
}

pub(crate) fn problem(path: &Path, reason: impl Into<String>) -> Problem {
    Problem {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn nodes(dir: &Path, report: &mut Report) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    let disabled_dir = dir.join(".disabled");
    let mut disabled: Vec<PathBuf> = fs::read_dir(&disabled_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    disabled.sort();
    for path in entries {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if file == "__pycache__" || file == ".disabled" {
            continue;
        }
        if !path.is_dir() {
            if file.ends_with(".py") {
                report.unidentified.push(problem(
                    &path,
                    "a single-file node: comfix carries node packs (put it in a git repository)",
                ));
            }
            continue;
        }
        match file.strip_suffix(".disabled") {
            Some(name) => node(&path, name, false, report),
            None => node(&path, &file, true, report),
        }
    }
    for path in disabled {
        if !path.is_dir() {
            continue;
        }
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        // `<id>@<version>` (versions with `_` for `.`), `<id>@nightly`, or the legacy plain name.
        let name = file.split('@').next().unwrap_or(&file).to_string();
        node(&path, &name, false, report);
    }
}

fn node(path: &Path, dir_name: &str, enabled: bool, report: &mut Report) {
    let rel = path
        .strip_prefix(
            path.ancestors()
                .find(|a| a.ends_with("custom_nodes"))
                .unwrap_or(path),
        )
        .unwrap_or(path)
        .display()
        .to_string();
    let mut warnings = Vec::new();
    let found = if path.join(".git").exists() {
        match git_state(path, &mut warnings) {
            Some((repo, commit)) => NodeFound {
                dir: rel,
                name: dir_name.to_string(),
                kind: "git",
                repo: Some(repo),
                commit: Some(commit),
                id: None,
                version: None,
                enabled,
                warnings,
                path: path.to_path_buf(),
            },
            None => {
                report.unidentified.push(problem(
                    path,
                    "a git repository without a remote or without a commit (broken?)",
                ));
                return;
            }
        }
    } else if path.join(".tracking").is_file() && path.join("pyproject.toml").is_file() {
        let Some((original, version)) = pyproject(&path.join("pyproject.toml")) else {
            report.unidentified.push(problem(
                path,
                "`.tracking` is there but `pyproject.toml` names no `project.name` and `project.version`",
            ));
            return;
        };
        let tracked = fs::read_to_string(path.join(".tracking")).unwrap_or_default();
        let missing: Vec<&str> = tracked
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('/') && !l.split('/').any(|p| p == ".."))
            .filter(|l| fs::symlink_metadata(path.join(l)).is_err())
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "`.tracking` names files that are missing (the registry's archive will bring them back): {}",
                missing.join(", ")
            ));
        }
        NodeFound {
            dir: rel,
            // Active registry nodes live under their `project.name` (Manager's rule).
            name: if enabled {
                dir_name.to_string()
            } else {
                original.clone()
            },
            kind: "registry",
            repo: None,
            commit: None,
            id: Some(original.trim().to_lowercase()),
            version: Some(version),
            enabled,
            warnings,
            path: path.to_path_buf(),
        }
    } else {
        report.unidentified.push(problem(
            path,
            "no `.git` and no `.tracking` with `pyproject.toml`: not from git or the registry",
        ));
        return;
    };
    // Manager keeps other versions of an active pack in `.disabled/`: one version per name.
    if let Some(other) = report
        .nodes
        .iter()
        .find(|n| n.name.eq_ignore_ascii_case(&found.name))
    {
        report.warnings.push(format!(
            "`{}` is another version of `{}` ({}); left out of the spec",
            found.dir, other.name, other.dir
        ));
        return;
    }
    report.nodes.push(found);
}

/// `project.name` and `project.version` of a `pyproject.toml`.
fn pyproject(path: &Path) -> Option<(String, String)> {
    let text = fs::read_to_string(path).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    let project = value.get("project")?;
    Some((
        project.get("name")?.as_str()?.to_string(),
        project.get("version")?.as_str()?.to_string(),
    ))
}

/// The folders models are read from: `models/<folder>` and the install's
/// `extra_model_paths.yaml`, as `(folder type, directory)`.
fn model_folders(core: &Path, warnings: &mut Vec<String>) -> Vec<(String, PathBuf)> {
    let mut folders = Vec::new();
    if let Ok(entries) = fs::read_dir(core.join("models")) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                folders.push((
                    entry.file_name().to_string_lossy().to_string(),
                    entry.path(),
                ));
            }
        }
    }
    let yaml = core.join("extra_model_paths.yaml");
    if let Ok(text) = fs::read_to_string(&yaml) {
        match extra_model_paths(&text, core) {
            Ok(extra) => folders.extend(extra),
            Err(e) => warnings.push(format!("`{}`: {e}", yaml.display())),
        }
    }
    folders.sort();
    folders.dedup();
    folders
}

fn models(core: &Path, known: &BTreeMap<String, String>, report: &mut Report) {
    let tracked = tracked_files(core);
    let mut seen = std::collections::BTreeSet::new();
    let mut read = std::collections::BTreeSet::new();
    for (folder, dir) in model_folders(core, &mut report.warnings) {
        let root = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let mut aliases = Vec::new();
        let mut kernel = Vec::new();
        let mut elsewhere = Vec::new();
        // Linked folders are followed (models on another disk), but not a link back into the
        // folder being read or above it: that is a loop, or the same files again.
        let walk = walkdir::WalkDir::new(&dir)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                // A repository inside a model folder (a node's, a model repo's clone) holds
                // git's internals, never models — and maybe a token in `.git/config`.
                if e.file_type().is_dir() && e.file_name() == ".git" {
                    return false;
                }
                if !e.path_is_symlink() || !e.file_type().is_dir() {
                    return true;
                }
                let target = fs::canonicalize(e.path()).unwrap_or_default();
                // The kernel's and the devices' trees are never model folders.
                if let Some(through) = crate::spec::local::through_kernel(e.path()) {
                    kernel.push((e.path().to_path_buf(), through));
                    return false;
                }
                if e.depth() == 0 {
                    // The model folder itself is a link (models on another disk).
                    if !target.starts_with(core) {
                        elsewhere.push((e.path().to_path_buf(), target));
                    }
                    return true;
                }
                let inside = target.starts_with(&root) || root.starts_with(&target);
                if inside {
                    aliases.push(e.path().to_path_buf());
                } else if !target.starts_with(core) {
                    elsewhere.push((e.path().to_path_buf(), target));
                }
                !inside
            });
        for entry in walk {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let at = e.path().unwrap_or(&dir).to_path_buf();
                    report.unreadable.push(problem(&at, e.to_string()));
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let path = entry.path().to_path_buf();
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(through) = crate::spec::local::through_kernel(&path) {
                report.unreadable.push(problem(
                    &path,
                    format!(
                        "a link to `{}`: the kernel's or a device's file, not a model; not followed",
                        through.display()
                    ),
                ));
                continue;
            }
            if !read.insert(fs::canonicalize(&path).unwrap_or_else(|_| path.clone())) {
                continue; // the same file through another link
            }
            let rel_to_core = path.strip_prefix(core).ok().map(|p| p.to_path_buf());
            if name.starts_with('.')
                || name.starts_with("put_")
                || name.ends_with(".civitai.info")
                || rel_to_core.is_some_and(|r| tracked.contains(&r))
            {
                continue; // hidden files, placeholders, sidecars, the core's own files
            }
            let sub = entry
                .path()
                .parent()
                .and_then(|p| p.strip_prefix(&dir).ok())
                .map(|p| p.to_string_lossy().to_string())
                .unwrap_or_default();
            let target_subdir = if sub.is_empty() {
                folder.clone()
            } else {
                format!("{folder}/{sub}")
            };
            let file = format!("{target_subdir}/{name}");
            if !seen.insert(file.clone()) {
                report.warnings.push(format!(
                    "`{}` is another file placed as `{file}`; left out",
                    path.display()
                ));
                continue;
            }
            let size = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) => {
                    report.unreadable.push(problem(&path, e.to_string()));
                    continue;
                }
            };
            if let Err(e) = fs::File::open(&path) {
                report.unreadable.push(problem(&path, e.to_string()));
                continue;
            }
            let known_source = known
                .get(&file)
                .cloned()
                .or_else(|| civitai_info(&path))
                .or_else(|| hugging_face_cache(&path))
                .or_else(|| known.get(&name).cloned());
            report.models.push(ModelFound {
                file,
                target_subdir,
                filename: name,
                size,
                path,
                known_source,
                blake3: None,
            });
        }
        for alias in aliases {
            report.unreadable.push(problem(
                &alias,
                "a link back into a model folder (a loop, or the same files again): not followed",
            ));
        }
        for (link, target) in kernel {
            report.unreadable.push(problem(
                &link,
                format!(
                    "a link to `{}`: the kernel's or the devices' files, not models; not followed",
                    target.display()
                ),
            ));
        }
        for (link, target) in elsewhere {
            report.warnings.push(format!(
                "followed the folder link `{}` to `{}`, outside the install: its files are taken as models",
                link.display(),
                target.display()
            ));
        }
    }
}

/// The files the core's git HEAD tracks, relative to the core (the core's own `models/configs`).
fn tracked_files(core: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(repo) = git2::Repository::open_ext(
        core,
        git2::RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&std::ffi::OsStr>(),
    ) else {
        return out;
    };
    let Ok(tree) = repo.head().and_then(|h| h.peel_to_tree()) else {
        return out;
    };
    let _ = tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            out.insert(PathBuf::from(format!(
                "{root}{}",
                entry.name().unwrap_or("")
            )));
        }
        git2::TreeWalkResult::Ok
    });
    out
}

/// The CivitAI model version a `<model>.civitai.info` beside it names (CivitAI Helper's file).
fn civitai_info(model: &Path) -> Option<String> {
    let stem = model.file_stem()?.to_string_lossy().to_string();
    let info = model.with_file_name(format!("{stem}.civitai.info"));
    let value: Value = serde_json::from_slice(&fs::read(info).ok()?).ok()?;
    let id = value.get("id")?.as_u64()?;
    Some(format!("civitai://{id}"))
}

/// The Hugging Face file a model links to in a hub cache (`huggingface-cli download` without
/// `--local-dir`, linked into a model folder): `…/models--<owner>--<repo>/snapshots/<commit>/<path>`
/// along the chain of links, as `hf://<owner>/<repo>/<path>@<commit>`.
fn hugging_face_cache(model: &Path) -> Option<String> {
    let mut at = model.to_path_buf();
    for _ in 0..8 {
        let target = fs::read_link(&at).ok()?;
        at = at.parent()?.join(target);
        if let Some(source) = hub_source(&at) {
            return Some(source);
        }
    }
    None
}

/// `hf://…@<commit>` for a path inside a hub cache's `snapshots/`.
fn hub_source(path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let at = parts.iter().rposition(|p| p == "snapshots")?;
    let repo = parts.get(at.checked_sub(1)?)?.strip_prefix("models--")?;
    let (owner, name) = repo.split_once("--")?;
    let commit = parts.get(at + 1)?;
    let rest = &parts[at + 2..];
    if rest.is_empty() || rest.iter().any(|p| p == "..") || owner.is_empty() || name.is_empty() {
        return None;
    }
    Some(format!("hf://{owner}/{name}/{}@{commit}", rest.join("/")))
}

/// The venv's interpreter version and installed distributions, pinned.
fn python(venv: &Path, warnings: &mut Vec<String>) -> Option<PythonFound> {
    let cfg = fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    let version = cfg.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        matches!(key.trim(), "version" | "version_info").then(|| value.trim().to_string())
    })?;
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let mut requirements = Vec::new();
    let lib = venv.join("lib");
    let site_packages: Vec<PathBuf> = fs::read_dir(&lib)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("site-packages"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for site in site_packages {
        let Ok(entries) = fs::read_dir(&site) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.ends_with(".dist-info") {
                continue;
            }
            let Ok(metadata) = fs::read_to_string(entry.path().join("METADATA")) else {
                warnings.push(format!("`{}` has no METADATA", entry.path().display()));
                continue;
            };
            let field = |key: &str| {
                metadata
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            };
            let (Some(dist), Some(version)) = (field("Name:"), field("Version:")) else {
                continue;
            };
            if ["pip", "setuptools", "wheel"].contains(&dist.to_lowercase().as_str()) {
                continue; // the installer's own
            }
            let direct = entry.path().join("direct_url.json");
            if direct.is_file() {
                warnings.push(format!(
                    "`{dist}` was installed from a URL or a directory (`direct_url.json`); pinned by version, \
                     which an index must serve"
                ));
            }
            if version.contains('+') {
                warnings.push(format!(
                    "`{dist}=={version}` has a local version: only its own index serves it (set `UV_DEFAULT_INDEX` or `UV_INDEX` when resolving)"
                ));
            }
            requirements.push(format!("{dist}=={version}"));
        }
    }
    requirements.sort_by_key(|r| r.to_lowercase());
    Some(PythonFound {
        venv: venv.to_path_buf(),
        version: minor,
        requirements,
    })
}

/// The spec of what `report` found.
/// With `dirty_as_dev`, git nodes with uncommitted changes are written as development nodes
/// (`"path"`: their directory in the install), so the edits are kept.
pub fn spec(name: &str, report: &Report, dirty_as_dev: bool) -> Value {
    let mut spec = json!({ "schema_version": 2, "version_id": name });
    if let Some(core) = &report.core {
        spec["comfy"] = match (&core.commit, &core.version) {
            (Some(commit), _) => json!({ "repo": core.repo, "commit": commit }),
            (None, Some(version)) => json!({ "repo": core.repo, "ref": format!("v{version}") }),
            (None, None) => json!({ "repo": core.repo }),
        };
    }
    let nodes: Vec<Value> = report
        .nodes
        .iter()
        .map(|n| {
            let dirty = n
                .warnings
                .iter()
                .any(|w| w.starts_with("uncommitted changes"));
            let mut node = match n.kind {
                "git" if dirty && dirty_as_dev => {
                    json!({ "path": n.path.display().to_string(), "name": n.name })
                }
                "git" => json!({ "repo": n.repo, "name": n.name, "commit": n.commit }),
                _ => json!({ "cnr": n.id, "version": n.version, "name": n.name }),
            };
            if !n.enabled {
                node["enabled"] = json!(false);
            }
            node
        })
        .collect();
    spec["custom_nodes"] = json!(nodes);
    let models: Vec<Value> = report
        .models
        .iter()
        .map(|m| {
            // A known source makes the spec portable; the digest lets this store serve it
            // without a download, and any other machine check what it downloads.
            let source = match (&m.known_source, &m.blake3) {
                (Some(known), Some(_)) => known.clone(),
                // Percent-encoded: a file name may have spaces (`Realistic Vision V6.0.safetensors`).
                _ => url::Url::from_file_path(&m.path)
                    .map(|u| u.to_string())
                    .unwrap_or_else(|()| format!("file://{}", m.path.display())),
            };
            let mut model = json!({
                "source": source,
                "target_subdir": m.target_subdir,
                "filename": m.filename,
            });
            if let Some(blake3) = &m.blake3 {
                model["blake3"] = json!(blake3);
            }
            model
        })
        .collect();
    spec["models"] = json!(models);
    if let Some(python) = &report.python {
        spec["python"] = json!({ "version": python.version, "requirements": python.requirements });
    }
    spec
}

/// A `--models-spec` file: YAML with a list of models (under `models:` or at the top), each with
/// a `source` (or `url`) and a `filename` (or the source's last segment), and optionally
/// `target_subdir` (or `folder`); keyed by `<target_subdir>/<filename>` and by the file name.
pub fn read_models_spec(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .map_err(|e| format!("`{}` is not YAML: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    let Some(doc) = docs.first() else {
        return Ok(out);
    };
    let list = match &doc["models"] {
        yaml_rust2::Yaml::Array(list) => list.clone(),
        _ => doc.as_vec().cloned().unwrap_or_default(),
    };
    for (i, entry) in list.iter().enumerate() {
        let text = |k: &str| entry[k].as_str().map(String::from);
        let Some(source) = text("source").or_else(|| text("url")) else {
            return Err(format!(
                "`{}`: models[{i}] has no `source` or `url`",
                path.display()
            ));
        };
        let filename = text("filename")
            .unwrap_or_else(|| crate::spec::ModelSource::parse(&source).derived_file_name());
        // Placed in a folder: that file only; else any file of that name.
        match text("target_subdir").or_else(|| text("folder")) {
            Some(sub) => out.insert(format!("{}/{filename}", sub.trim_end_matches('/')), source),
            None => out.insert(filename, source),
        };
    }
    Ok(out)
}

/// The folders an `extra_model_paths.yaml` names, as ComfyUI reads it: each section's
/// `base_path` (relative to the file's directory), and each other key a folder type whose value
/// holds one or more paths (one per line), relative to `base_path`; `~` and `$VAR` / `${VAR}` are
/// expanded in both, as ComfyUI does (`expanduser`, then `expandvars`). The key `custom_nodes`
/// names node folders, not model folders: [`extra_node_folders`].
pub fn extra_model_paths(text: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    Ok(extra_paths(text, dir)?
        .into_iter()
        .filter(|(key, _)| key != "custom_nodes")
        .collect())
}

/// The `custom_nodes` folders an `extra_model_paths.yaml` names.
pub fn extra_node_folders(text: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(extra_paths(text, dir)?
        .into_iter()
        .filter(|(key, _)| key == "custom_nodes")
        .map(|(_, path)| path)
        .collect())
}

fn extra_paths(text: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let Some(yaml_rust2::Yaml::Hash(sections)) = docs.first() else {
        return Ok(out);
    };
    for (_, section) in sections {
        let yaml_rust2::Yaml::Hash(entries) = section else {
            continue;
        };
        let base = section["base_path"]
            .as_str()
            .map(|b| dir.join(expand_path(b)))
            .unwrap_or_else(|| dir.to_path_buf());
        for (key, value) in entries {
            let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                continue;
            };
            if key == "base_path" || key == "is_default" {
                continue;
            }
            for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
                out.push((key.to_string(), base.join(expand_path(line))));
            }
        }
    }
    Ok(out)
}

/// `~`, `~/…`, `$VAR` and `${VAR}` expanded as Python's `os.path.expanduser` and
/// `os.path.expandvars` do (an unset variable is left as it is).
fn expand_path(text: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let text = if text == "~" {
        home.clone()
    } else if let Some(rest) = text.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else {
        text.to_string()
    };
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail, braced) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..], true),
                None => ("", after, false),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..], false)
            }
        };
        match std::env::var(name).ok().filter(|_| !name.is_empty()) {
            Some(value) => out.push_str(&value),
            None if braced => out.push_str(&format!("${{{name}}}")),
            None => {
                out.push('$');
                out.push_str(name);
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_paths_name_their_repository_file_and_commit() {
        assert_eq!(
            hub_source(Path::new(
                "/root/.cache/huggingface/hub/models--Comfy-Org--flux/snapshots/abc123/split/vae.safetensors"
            ))
            .as_deref(),
            Some("hf://Comfy-Org/flux/split/vae.safetensors@abc123")
        );
        assert_eq!(hub_source(Path::new("/x/models--a--b/blobs/ff")), None);
        assert_eq!(hub_source(Path::new("/x/models--a--b/snapshots/c")), None);
        assert_eq!(
            hub_source(Path::new("/x/datasets--a--b/snapshots/c/f")),
            None
        );
    }
}
