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
    Import(super::adopt::ImportArgs),
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
    /// Path of the spec file
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
            (Some(path), _) => Ok(path.clone()),
            (None, Some(id)) => Ok(Spec::find(&std::env::current_dir()?, id)?),
            (None, None) => unreachable!("clap requires an id or --spec"),
        }
    }
}

pub fn run(command: SpecCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        SpecCommand::Import(args) => super::adopt::import(args, context),
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
