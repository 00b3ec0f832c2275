//! `comfix spec check`: parse and validate a version spec.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Context, Outcome};
use crate::spec::{NodeSource, Spec};

#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Validate a spec and summarize it (with --json: the spec as comfix reads it)
    #[command(
        after_help = "Examples:\n  comfix spec check wan22\n  comfix spec check --spec versions/wan22.json"
    )]
    Check(SpecArg),
    /// Write a spec from another tool's file: a ComfyUI-Manager snapshot (`.json`, `.yaml`
    /// from `save-snapshot`) or a ComfyGit/ComfyDock environment (`pyproject.toml`, with the
    /// `uv.lock` beside it). What cannot be carried over is named
    #[command(
        after_help = "Examples:\n  comfix spec import ~/ComfyUI/user/default/ComfyUI-Manager/snapshots/2025-01-01.json --name mine\n  comfix spec import my-env/pyproject.toml --name from-comfygit -o versions/from-comfygit.json"
    )]
    Import(super::adopt::SpecImportArgs),
}

/// Which spec: a version id (looked up in `versions/<id>.json`, then `specs/<id>.json`) or a file.
#[derive(Debug, Args)]
pub struct SpecArg {
    /// Version id, looked up in `versions/<ID>.json`, then `specs/<ID>.json`
    #[arg(
        value_name = "ID",
        required_unless_present = "spec",
        conflicts_with = "spec"
    )]
    pub id: Option<String>,
    /// Path of the spec file, or `git+URL[@REF]#PATH` for one in a git repository (fetched
    /// through the store's mirrors; its lock is read from beside it there)
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
}

/// A spec read for a command, with its lock's path and the lock when there is one.
pub struct WithLock {
    pub loaded: crate::spec::LoadedSpec,
    pub lock_path: PathBuf,
    pub old: Option<crate::lock::Lock>,
}

impl SpecArg {
    /// Read the spec (logging its warnings) and the lock beside it.
    pub fn load_with_lock(&self) -> anyhow::Result<WithLock> {
        let loaded = Spec::load(&self.path()?)?;
        loaded.log_warnings();
        let lock_path = crate::lock::lock_path_for(&loaded.path, &loaded.spec.version_id);
        let old = crate::lock::Lock::read(&lock_path)?;
        Ok(WithLock {
            loaded,
            lock_path,
            old,
        })
    }

    pub fn path(&self) -> anyhow::Result<PathBuf> {
        match (&self.spec, &self.id) {
            (Some(path), _) if path.to_string_lossy().starts_with("git+") => {
                git_spec(&path.to_string_lossy())
            }
            (Some(path), _) => Ok(path.clone()),
            (None, Some(id)) => Ok(Spec::find(&std::env::current_dir()?, id)?),
            (None, None) => unreachable!("clap requires an id or --spec"),
        }
    }
}

pub fn run(command: SpecCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        SpecCommand::Import(args) => super::adopt::import_spec(args, context),
        SpecCommand::Check(arg) => {
            let loaded = Spec::load(&arg.path()?)?;
            let spec = &loaded.spec;
            if context.json {
                context.print_json(&serde_json::json!({
                    "path": loaded.path,
                    "spec": spec,
                    "warnings": loaded.warnings,
                }))?;
                return Ok(Outcome::Success);
            }
            loaded.log_warnings();
            println!("{}: `{}` is valid", spec.version_id, loaded.path.display());
            let pin = |r: &Option<String>, c: &Option<String>| match (c, r) {
                (Some(commit), _) => format!("commit {commit}"),
                (None, Some(r)) => format!("ref {r}"),
                (None, None) => "default branch".into(),
            };
            println!(
                "  core: {} ({})",
                spec.comfy.repo,
                pin(&spec.comfy.git_ref, &spec.comfy.commit)
            );
            for node in &spec.custom_nodes {
                let state = if node.is_enabled() { "" } else { " [disabled]" };
                match node.source() {
                    NodeSource::Git { repo } => println!(
                        "  node {}: {repo} ({}){state}",
                        node.dir_name(),
                        pin(&node.git_ref, &node.commit)
                    ),
                    NodeSource::Registry { id, version } => println!(
                        "  node {}: registry {id} {}{state}",
                        node.dir_name(),
                        version.unwrap_or("latest")
                    ),
                    NodeSource::Local { path } => println!(
                        "  node {}: development directory {path}{state}",
                        node.dir_name()
                    ),
                }
            }
            for model in &spec.models {
                let dir = model.target_subdir.as_deref().unwrap_or(".");
                let optional = if model.is_required() {
                    ""
                } else {
                    " [optional]"
                };
                println!(
                    "  model {dir}/{}: {}{optional}",
                    model.file_name(),
                    model.source
                );
            }
            if !spec.env.is_empty() {
                let keys: Vec<&str> = spec.env.keys().map(String::as_str).collect();
                println!("  env: {}", keys.join(", "));
            }
            Ok(Outcome::Success)
        }
    }
}

/// `git+URL[@REF]#PATH`: the URL, the ref (after the last `@` of the URL's last segment) and the
/// file's path in the repository.
pub fn parse_git_spec(location: &str) -> anyhow::Result<(String, Option<String>, String)> {
    let usage = "git+URL[@REF]#PATH, such as git+https://github.com/team/versions.git@main#versions/wan22.json";
    let rest = location
        .strip_prefix("git+")
        .ok_or_else(|| super::UserInput(format!("`{location}` is not {usage}")))?;
    let (repo, path) = rest.split_once('#').ok_or_else(|| {
        super::UserInput(format!("`{location}` names no file after `#`: {usage}"))
    })?;
    let last = repo.rfind('/').map_or(0, |i| i + 1);
    let (url, git_ref) = match repo[last..].rfind('@') {
        Some(at) => (&repo[..last + at], Some(repo[last + at + 1..].to_string())),
        None => (repo, None),
    };
    let url = url.strip_prefix("file://").map_or(url, |p| p);
    let bad_path = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if url.is_empty() || bad_path || git_ref.as_deref() == Some("") {
        return Err(super::UserInput(format!(
            "`{location}` is not {usage} (a relative path, without `..`)"
        ))
        .into());
    }
    Ok((url.to_string(), git_ref, path.to_string()))
}

/// Fetch the repository of a `git+URL[@REF]#PATH` spec into the store's mirror, and give the
/// spec's path in a writable copy of that commit's tree under `cache/specs/` (its lock beside it,
/// as committed; a lock that resolve writes stays there).
fn git_spec(location: &str) -> anyhow::Result<PathBuf> {
    use crate::fetch::git;
    let (url, git_ref, path) = parse_git_spec(location)?;
    let dir = crate::spec::STORE_DIR
        .get()
        .cloned()
        .unwrap_or_else(|| crate::store::default_dir(|k| std::env::var(k).ok()));
    let store = std::sync::Arc::new(crate::store::Store::open(&dir)?);
    // Pinned and checked out by the executor, as a version's core is: online, else (offline, or
    // the server gone) from what the store's mirror holds.
    let pin = |offline: bool| {
        let settings = crate::session::Settings {
            offline,
            ..Default::default()
        };
        let reporter = std::sync::Arc::new(crate::reporter::NoReporter);
        crate::session::Session::open_bare(store.clone(), settings, reporter)?.pin_git(
            "spec repository",
            "spec-repository",
            &url,
            git_ref.as_deref(),
        )
    };
    let locked = match pin(false) {
        Ok(locked) => locked,
        Err(err) => {
            let held = pin(true).map_err(|_| err)?;
            tracing::warn!(
                "`{url}` cannot be fetched; using {} from the store's mirror",
                held.commit
            );
            held
        }
    };
    let commit = locked.commit;
    let copy = store
        .cache_dir(crate::store::layout::Cache::Specs)
        .join(git::mirror_name(&url))
        .join(&commit);
    if !copy.is_dir() {
        let tree = store.path_of(&locked.store_path);
        let partial = copy.with_extension(format!("tmp-{}", std::process::id()));
        copy_tree(&tree, &partial)?;
        if let Err(e) = std::fs::rename(&partial, &copy) {
            let _ = std::fs::remove_dir_all(&partial);
            if !copy.is_dir() {
                return Err(e.into());
            }
        }
    }
    // The path is read as the commit has it: plain names, no symlink anywhere along it (a link
    // committed in the repository could point out of it, and the lock is written beside the
    // spec), a regular file at its end.
    let mut spec = copy.clone();
    for part in std::path::Path::new(&path).components() {
        let std::path::Component::Normal(name) = part else {
            return Err(super::UserInput(format!(
                "`{path}` must be a plain path inside the repository `{url}` (no `..`, not absolute)"
            ))
            .into());
        };
        spec.push(name);
        if std::fs::symlink_metadata(&spec).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(super::UserInput(format!(
                "`{path}` at commit {commit} of `{url}` goes through the symlink `{}`: a spec is read from the repository's own files only",
                spec.strip_prefix(&copy).unwrap_or(&spec).display()
            ))
            .into());
        }
    }
    if !std::fs::symlink_metadata(&spec).is_ok_and(|m| m.is_file()) {
        return Err(super::UserInput(format!(
            "`{path}` is not a file at commit {commit} of `{url}`"
        ))
        .into());
    }
    tracing::info!("spec `{path}` from `{url}` at {commit}");
    Ok(spec)
}

/// A writable copy of `from` at `to` (symlinks kept as links).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry?;
        let rel = entry.path().strip_prefix(from).expect("under the root");
        let at = to.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&at)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &at)?;
        } else {
            std::fs::copy(entry.path(), &at)?;
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_git_spec;

    #[test]
    fn git_spec_locations_split_into_url_ref_and_path() {
        let parse = |s: &str| parse_git_spec(s).unwrap();
        assert_eq!(
            parse("git+https://github.com/team/v.git@v2#versions/x.json"),
            (
                "https://github.com/team/v.git".into(),
                Some("v2".into()),
                "versions/x.json".into()
            )
        );
        assert_eq!(
            parse("git+ssh://git@host/team/v.git#x.json"),
            ("ssh://git@host/team/v.git".into(), None, "x.json".into())
        );
        assert_eq!(parse("git+file:///srv/v.git#a/b.json").0, "/srv/v.git");
        for bad in [
            "https://h/v.git#x.json",
            "git+https://h/v.git",
            "git+https://h/v.git#../x.json",
            "git+https://h/v.git#/etc/passwd",
            "git+https://h/v.git@#x.json",
        ] {
            assert!(parse_git_spec(bad).is_err(), "{bad}");
        }
    }
}
