//! Editing a version from the command line: `init`, `add node|model|python`,
//! `add --from-workflow`, `remove`, `list`, `update`.
//!
//! An edit changes the spec in memory (its key order kept), checks it as `spec check` does,
//! resolves it against the existing lock — only what changed is pinned, the rest of the lock is
//! kept — and only then writes the spec and the lock, each atomically; a failure (a Python
//! conflict, an unknown name, a source that cannot be reached) leaves both files as they were.
//! Nothing is installed: `realize` makes the edit a new generation, which `rollback` undoes. Two
//! edits of one version take turns (a lock file beside the spec). `--dry-run` resolves and shows
//! what the lock would change, writing neither file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::resolve::{open_session, SessionArgs};
use super::{Context, Outcome, UserInput};
use crate::lock::Lock;
use crate::resolve::Update;
use crate::spec::Spec;

/// The core a new version starts from.
const DEFAULT_CORE: &str = "https://github.com/comfyanonymous/ComfyUI";

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The new version's id (its spec is `versions/<ID>.json`)
    pub id: String,
    /// The core's repository
    #[arg(long, value_name = "URL", default_value = DEFAULT_CORE)]
    pub core: String,
    /// The core's branch or tag
    #[arg(long = "ref", value_name = "REF", default_value = "master")]
    pub git_ref: String,
}

/// What every edit takes: the resolving session's settings, and `--dry-run`.
#[derive(Debug, Args)]
pub struct EditOptions {
    /// Resolve the edit and show what would change in the lock; write neither the spec nor the
    /// lock (what was fetched stays in the store until `gc`)
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AddArgs {
    #[command(subcommand)]
    pub command: Option<AddCommand>,
    /// The version (with `--from-workflow`)
    #[arg(required = true)]
    pub id: Option<String>,
    /// Add the node packs (`cnr_id`, `aux_id`) and models (`properties.models`) a workflow saved
    /// by ComfyUI's editor names; what it cannot identify is listed
    #[arg(long, value_name = "FILE", required = true)]
    pub from_workflow: Option<PathBuf>,
    #[command(flatten)]
    pub edit: EditOptions,
}

#[derive(Debug, Subcommand)]
pub enum AddCommand {
    /// Add a custom node: a git repository (`URL[@REF]`) or a Comfy Node Registry id
    /// (`ID[@VERSION]`); it is pinned (fetched) before anything is written
    #[command(
        after_help = "Examples:\n  comfix add node wan22 https://github.com/city96/ComfyUI-GGUF@main\n  comfix add node wan22 comfyui-impact-pack@8.8.1"
    )]
    Node {
        /// The version
        id: String,
        /// `https://…/repo[@ref]` (also `git@…`, `file://…`, a local path), or a registry id
        /// `name[@version]`
        #[arg(value_name = "SOURCE")]
        source: String,
        /// The node's directory name [default: the repository's or the id]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        edit: EditOptions,
    },
    /// Add a model (`hf://…`, `civitai://…`, an `https://` URL or `file://…`): downloaded and
    /// verified by digest before anything is written
    #[command(
        after_help = "Examples:\n  comfix add model wan22 hf://Comfy-Org/Wan_2.2/vae/wan_2.2_vae.safetensors --folder vae"
    )]
    Model {
        /// The version
        id: String,
        /// The model's source
        #[arg(value_name = "SOURCE")]
        source: String,
        /// The folder under `models/` (`checkpoints`, `vae`, `loras`, …)
        #[arg(long, value_name = "FOLDER")]
        folder: Option<String>,
        /// The name other commands use for it [default: its file name]
        #[arg(long)]
        name: Option<String>,
        /// Its SHA-256, checked against what is downloaded (and what the source reports)
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        #[command(flatten)]
        edit: EditOptions,
    },
    /// Add Python requirements (PEP 508) to a version; uv resolves them with the rest first
    #[command(
        after_help = "Examples:\n  comfix add python wan22 'opencv-python-headless>=4.8' einops"
    )]
    Python {
        /// The version
        id: String,
        /// Requirements, as pip and uv take them
        #[arg(required = true, value_name = "REQUIREMENT")]
        requirements: Vec<String>,
        #[command(flatten)]
        edit: EditOptions,
    },
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The version
    pub id: String,
    /// Node names, model names or file names, or Python requirements (as written, or by package)
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Remove even what one of the version's `workflows` uses
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub edit: EditOptions,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The version
    pub id: String,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The version
    pub id: String,
    /// Entries to pin again (node names, model names or file names, `comfy`, `python`); all
    /// when none is given
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `comfix init`: a new spec with the core, checked, not resolved (`realize` resolves it).
pub fn init(args: InitArgs, context: &Context) -> anyhow::Result<Outcome> {
    let dir = std::env::current_dir()?.join("versions");
    let path = dir.join(format!("{}.json", args.id));
    if path.exists() {
        return Err(UserInput(format!(
            "`{}` exists already: edit it with `comfix add` and `comfix remove`",
            path.display()
        ))
        .into());
    }
    let spec = serde_json::json!({
        "schema_version": 2,
        "version_id": args.id,
        "comfy": { "repo": args.core, "ref": args.git_ref },
        "custom_nodes": [],
        "models": [],
    });
    let text = serde_json::to_string_pretty(&spec)? + "\n";
    Spec::parse(&text, &path)?;
    std::fs::create_dir_all(&dir)?;
    let _turn = turn(&path)?;
    crate::files::write_atomic(&path, text.as_bytes())?;
    if context.json {
        context.print_json(&serde_json::json!({ "spec_path": path }))?;
    } else {
        println!("{}", path.display());
    }
    Ok(Outcome::Success)
}

pub fn add(args: AddArgs, context: &Context) -> anyhow::Result<Outcome> {
    let Some(command) = args.command else {
        // clap requires both when there is no subcommand.
        let (Some(id), Some(file)) = (args.id, args.from_workflow) else {
            return Err(UserInput(
                "give `node`, `model`, `python`, or `<ID> --from-workflow FILE`".into(),
            )
            .into());
        };
        return from_workflow(&id, &file, &args.edit, context);
    };
    match command {
        AddCommand::Python {
            id,
            requirements,
            edit,
        } => add_python(&id, &requirements, &edit, context),
        AddCommand::Node {
            id,
            source,
            name,
            edit: options,
        } => {
            let entry = node_entry(&source, name)?;
            edit(&id, &options, context, |spec| {
                push(spec, "custom_nodes", entry)?;
                Ok(Report::default())
            })
        }
        AddCommand::Model {
            id,
            source,
            folder,
            name,
            sha256,
            edit: options,
        } => {
            let mut entry = serde_json::Map::new();
            entry.insert("source".into(), Value::String(source));
            for (key, value) in [
                ("name", name),
                ("target_subdir", folder),
                ("sha256", sha256),
            ] {
                if let Some(value) = value {
                    entry.insert(key.into(), Value::String(value));
                }
            }
            edit(&id, &options, context, |spec| {
                push(spec, "models", Value::Object(entry))?;
                Ok(Report::default())
            })
        }
    }
}

/// `comfix add <ID> --from-workflow FILE`: the packs and models the workflow names that the
/// version lacks, each with the workflow's nodes that need it; what it cannot identify is listed.
fn from_workflow(
    id: &str,
    file: &Path,
    options: &EditOptions,
    context: &Context,
) -> anyhow::Result<Outcome> {
    let text = crate::files::read_regular_text(file, crate::files::WORKFLOW_LIMIT)
        .map_err(|e| UserInput(format!("workflow `{}` cannot be read: {e}", file.display())))?;
    let needs = crate::run::needs::needs(&text).map_err(|e| {
        anyhow::Error::new(e).context(format!("Workflow `{}` cannot be used", file.display()))
    })?;
    let shown = file.display().to_string();
    edit(id, options, context, |spec| {
        let current: Spec = serde_json::from_value(spec.clone())?;
        let mut report = Report::default();
        let mut added = Vec::new();
        let mut present = Vec::new();
        for need in &needs.packs {
            let (entry, label) = pack_entry(&need.pack);
            let from = format!("for {} of `{shown}`", need.used_by.join(", "));
            if current
                .custom_nodes
                .iter()
                .any(|n| same_pack(n, &need.pack))
            {
                present.push(serde_json::json!({ "node": label, "used_by": need.used_by }));
                report
                    .lines
                    .push(format!("node {label}: in the version already ({from})"));
                continue;
            }
            push(spec, "custom_nodes", entry)?;
            added.push(serde_json::json!({ "node": label, "used_by": need.used_by }));
            report.lines.push(format!("node {label}: added ({from})"));
        }
        for model in &needs.models {
            let label = match &model.directory {
                Some(dir) => format!("{dir}/{}", model.name),
                None => model.name.clone(),
            };
            let from = format!("for {} of `{shown}`", model.used_by);
            let same = |m: &crate::spec::Model| {
                m.file_name() == model.name && m.target_subdir == model.directory
            };
            if current.models.iter().any(same) {
                present.push(serde_json::json!({ "model": label, "used_by": [model.used_by] }));
                report
                    .lines
                    .push(format!("model {label}: in the version already ({from})"));
                continue;
            }
            let mut entry = serde_json::Map::new();
            let source = crate::run::needs::model_source(&model.url);
            entry.insert("source".into(), Value::String(source.clone()));
            if let Some(dir) = &model.directory {
                entry.insert("target_subdir".into(), Value::String(dir.clone()));
            }
            if crate::spec::ModelSource::parse(&source).derived_file_name() != model.name {
                entry.insert("filename".into(), Value::String(model.name.clone()));
            }
            if let Some(sha256) = &model.sha256 {
                entry.insert("sha256".into(), Value::String(sha256.clone()));
            }
            push(spec, "models", Value::Object(entry))?;
            added.push(
                serde_json::json!({ "model": label, "source": source, "used_by": [model.used_by] }),
            );
            report
                .lines
                .push(format!("model {label}: added from {} ({from})", model.url));
        }
        for line in &needs.unidentified {
            report.lines.push(format!(
                "not identified: {line} in `{shown}`; add it by hand"
            ));
        }
        report.json.insert("added".into(), Value::Array(added));
        report.json.insert("present".into(), Value::Array(present));
        report.json.insert(
            "unidentified".into(),
            serde_json::to_value(&needs.unidentified)?,
        );
        Ok(report)
    })
}

/// A pack's spec entry and how it is shown.
fn pack_entry(pack: &crate::run::needs::Pack) -> (Value, String) {
    use crate::run::needs::Pack;
    match pack {
        Pack::Registry { id, version } => {
            let mut entry = serde_json::json!({ "cnr": id });
            if let Some(version) = version {
                entry["version"] = Value::String(version.clone());
            }
            let label = match version {
                Some(v) => format!("`{id}` (registry {v})"),
                None => format!("`{id}` (registry, latest)"),
            };
            (entry, label)
        }
        Pack::Github { repo, commit } => {
            let entry = match commit {
                Some(commit) => serde_json::json!({ "repo": repo, "commit": commit }),
                None => serde_json::json!({ "repo": repo, "ref": "main" }),
            };
            let at = commit
                .as_deref()
                .map(|c| &c[..c.len().min(12)])
                .unwrap_or("main");
            (entry, format!("`{repo}` ({at})"))
        }
    }
}

/// Whether the spec's node `node` is the pack `pack` (by registry id, repository, or the
/// directory name the pack would get, which is how ComfyUI finds it).
fn same_pack(node: &crate::spec::CustomNode, pack: &crate::run::needs::Pack) -> bool {
    use crate::run::needs::Pack;
    let normal = |url: &str| {
        url.trim_end_matches('/')
            .trim_end_matches(".git")
            .to_lowercase()
    };
    let dir = node.dir_name().to_lowercase();
    match pack {
        Pack::Registry { id, .. } => {
            node.cnr
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(id))
                || dir == id.to_lowercase()
        }
        Pack::Github { repo, .. } => {
            let repo = normal(repo);
            node.repo.as_deref().is_some_and(|r| normal(r) == repo)
                || repo.rsplit('/').next() == Some(dir.as_str())
        }
    }
}

/// The spec entry of a node source: a git URL with an optional `@ref`, or a registry id with an
/// optional `@version`.
fn node_entry(source: &str, name: Option<String>) -> anyhow::Result<Value> {
    // A URL, an SSH address, or a repository on this machine (a path) is git.
    let git = source.contains("://")
        || source.starts_with("git@")
        || source.starts_with('/')
        || source.starts_with("./")
        || source.starts_with("../");
    // An `@` after the last `/` separates a ref (`git@host:org/repo`'s comes before it).
    let split = source
        .rfind('@')
        .filter(|at| *at > source.rfind('/').unwrap_or(0));
    let (base, pin) = match split {
        Some(at) => (&source[..at], Some(&source[at + 1..])),
        None => (source, None),
    };
    let mut entry = serde_json::Map::new();
    if git {
        entry.insert("repo".into(), Value::String(base.into()));
        entry.insert("ref".into(), Value::String(pin.unwrap_or("main").into()));
    } else {
        if base.is_empty() || base.contains('/') {
            return Err(UserInput(format!(
                "`{source}` is neither a git URL nor a registry id (`name[@version]`)"
            ))
            .into());
        }
        entry.insert("cnr".into(), Value::String(base.into()));
        if let Some(version) = pin {
            entry.insert("version".into(), Value::String(version.into()));
        }
    }
    if let Some(name) = name {
        entry.insert("name".into(), Value::String(name));
    }
    Ok(Value::Object(entry))
}

/// Append `entry` to the spec's list `key`, refusing a second entry of the same node or model.
fn push(spec: &mut Value, key: &str, entry: Value) -> anyhow::Result<()> {
    let current: Spec = serde_json::from_value(spec.clone())?;
    match key {
        "custom_nodes" => {
            let node: crate::spec::CustomNode = serde_json::from_value(entry.clone())?;
            if let Some(same) = current
                .custom_nodes
                .iter()
                .find(|n| n.dir_name() == node.dir_name())
            {
                return Err(UserInput(format!(
                    "the version has a node `{}` already (remove it first, or pass `--name`)",
                    same.dir_name()
                ))
                .into());
            }
        }
        _ => {
            let model: crate::spec::Model = serde_json::from_value(entry.clone())?;
            let label = |m: &crate::spec::Model| m.name.clone().unwrap_or_else(|| m.file_name());
            if current.models.iter().any(|m| label(m) == label(&model)) {
                return Err(UserInput(format!(
                    "the version has a model `{}` already (remove it first, or pass `--name`)",
                    label(&model)
                ))
                .into());
            }
        }
    }
    let object = spec
        .as_object_mut()
        .ok_or_else(|| UserInput("the spec is not a JSON object".into()))?;
    object
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| UserInput(format!("`{key}` is not a list")))?
        .push(entry);
    Ok(())
}

fn add_python(
    id: &str,
    requirements: &[String],
    options: &EditOptions,
    context: &Context,
) -> anyhow::Result<Outcome> {
    edit(id, options, context, |spec| {
        let python = spec
            .as_object_mut()
            .ok_or_else(|| UserInput("the spec is not a JSON object".into()))?
            .entry("python")
            .or_insert_with(|| serde_json::json!({}));
        let list = python
            .as_object_mut()
            .ok_or_else(|| UserInput("`python` is not an object".into()))?
            .entry("requirements")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .ok_or_else(|| UserInput("`python.requirements` is not a list".into()))?;
        for requirement in requirements {
            if list.iter().any(|r| r.as_str() == Some(requirement)) {
                return Err(UserInput(format!("`{requirement}` is in the spec already")).into());
            }
            list.push(Value::String(requirement.clone()));
        }
        Ok(Report::default())
    })
}

pub fn remove(args: RemoveArgs, context: &Context) -> anyhow::Result<Outcome> {
    let dir = crate::spec::spec_dir(&Spec::find(&std::env::current_dir()?, &args.id)?);
    edit(&args.id, &args.edit, context, |spec| {
        // The version's workflows, each read once (unreadable ones are `spec check`'s to report).
        let mut workflows: Vec<(String, Value)> = Vec::new();
        if !args.force {
            for name in serde_json::from_value::<Spec>(spec.clone())?.workflows {
                let path = dir.join(&name);
                let text = crate::files::read_regular_text(&path, crate::files::WORKFLOW_LIMIT);
                if let Some(value) = text.ok().and_then(|t| serde_json::from_str(&t).ok()) {
                    workflows.push((name, value));
                }
            }
        }
        let mut unknown = Vec::new();
        let mut needed = Vec::new();
        for name in &args.names {
            // Read again for each name: an earlier one may have moved the entries.
            let current: Spec = serde_json::from_value(spec.clone())?;
            let node = current
                .custom_nodes
                .iter()
                .position(|n| n.dir_name() == *name);
            let model = current
                .models
                .iter()
                .position(|m| m.name.as_deref() == Some(name) || m.file_name() == *name);
            if !args.force {
                let node = node.map(|i| &current.custom_nodes[i]);
                let model = model.map(|i| &current.models[i]);
                needed.extend(used_by_workflows(&workflows, name, node, model));
            }
            // A name may be a node's and a requirement's package both: each goes.
            let removed = remove_entry(spec, "custom_nodes", node)
                | remove_entry(spec, "models", model)
                | remove_requirement(spec, name);
            if !removed {
                unknown.push(format!("`{name}`"));
            }
        }
        if !unknown.is_empty() {
            return Err(UserInput(format!(
                "{} not in the version (names are nodes' names, models' names or file names, and Python requirements)",
                unknown.join(", ")
            ))
            .into());
        }
        if !needed.is_empty() {
            return Err(UserInput(format!(
                "the version's workflows use what would be removed:\n  {}\nremove those workflows from `workflows` first, or pass `--force`",
                needed.join("\n  ")
            ))
            .into());
        }
        Ok(Report::default())
    })
}

/// Which of `workflows` (name, JSON) use `node` or `model` (both entries named `name`): a node by
/// its pack (`cnr_id`/`aux_id` as the editor records them), a model by its file name as a
/// node's value.
fn used_by_workflows(
    workflows: &[(String, Value)],
    name: &str,
    node: Option<&crate::spec::CustomNode>,
    model: Option<&crate::spec::Model>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (workflow, value) in workflows {
        if let (Some(node), Ok(needs)) = (node, crate::run::needs::needs_of(value)) {
            for pack in needs.packs.iter().filter(|p| same_pack(node, &p.pack)) {
                out.push(format!(
                    "node `{name}`: {} of `{workflow}`",
                    pack.used_by.join(", ")
                ));
            }
        }
        if let Some(model) = model {
            let file = model.file_name();
            if names_file(value, &file) {
                out.push(format!("model `{name}`: `{file}` is named in `{workflow}`"));
            }
        }
    }
    out
}

/// Whether a string value anywhere in `value` is `file` (or ends in `/file`, a subfolder's).
fn names_file(value: &Value, file: &str) -> bool {
    match value {
        Value::String(s) => s == file || s.ends_with(&format!("/{file}")),
        Value::Array(items) => items.iter().any(|v| names_file(v, file)),
        Value::Object(map) => map.values().any(|v| names_file(v, file)),
        _ => false,
    }
}

/// Remove entry `index` (when there is one) of the spec's list `key`.
fn remove_entry(spec: &mut Value, key: &str, index: Option<usize>) -> bool {
    let Some(index) = index else {
        return false;
    };
    spec[key]
        .as_array_mut()
        .map(|list| list.remove(index))
        .is_some()
}

/// A requirement as written, or every requirement of the package `name`.
fn remove_requirement(spec: &mut Value, name: &str) -> bool {
    let Some(list) = spec
        .get_mut("python")
        .and_then(|p| p.get_mut("requirements"))
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let package = |text: &str| -> String {
        text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .next()
            .unwrap_or_default()
            .to_lowercase()
            .replace('_', "-")
    };
    let before = list.len();
    list.retain(|r| {
        let text = r.as_str().unwrap_or_default();
        text != name && package(text) != package(name)
    });
    list.len() != before
}

/// What an edit says beyond the lock's changes (`add --from-workflow`: what it added, found,
/// or could not identify).
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    json: serde_json::Map<String, Value>,
}

/// Edit `id`'s spec with `change`, then resolve it against its lock and write both — or neither
/// (always neither under `--dry-run`).
fn edit(
    id: &str,
    options: &EditOptions,
    context: &Context,
    change: impl FnOnce(&mut Value) -> anyhow::Result<Report>,
) -> anyhow::Result<Outcome> {
    let path = Spec::find(&std::env::current_dir()?, id)?;
    let _turn = turn(&path)?;
    let before = std::fs::read_to_string(&path)?;
    let original: Value = serde_json::from_str(&before)?;
    let mut value = original.clone();
    let report = change(&mut value)?;
    if value == original {
        // Nothing to add (all of it was there): no resolve, nothing written.
        let version_id = Spec::parse(&before, &path)?.version_id;
        let lock_path = crate::lock::lock_path_for(&path, &version_id);
        let items = Value::Array(Vec::new());
        return finish(
            context,
            (&path, &lock_path),
            report,
            Vec::new(),
            items,
            Written::Nothing,
        );
    }
    let text = serde_json::to_string_pretty(&value)? + "\n";
    let spec = Spec::parse(&text, &path)?;
    let lock_path = crate::lock::lock_path_for(&path, &spec.version_id);
    let old = Lock::read(&lock_path)?;
    let store = Arc::new(context.open_store()?);
    let settings = options.session.settings(context, None)?;
    let session = open_session(context, store.clone(), &spec, settings)?;
    let dir = crate::spec::spec_dir(&path);
    let (lock, items) = session.resolve(&spec, old.as_ref(), &Update::Nothing, false, dir)?;
    let changes = super::diff::changes(old.as_ref(), &lock, Some(&store));
    if !options.dry_run {
        // Checked and resolved: now the spec, then the lock (each atomic). Should the lock's
        // write fail, the spec goes back to what it was.
        crate::files::write_atomic(&path, text.as_bytes())?;
        if let Err(err) = lock.write(&lock_path) {
            crate::files::write_atomic(&path, before.as_bytes())?;
            return Err(err.into());
        }
    }
    let written = if options.dry_run {
        Written::DryRun
    } else {
        Written::Both
    };
    let items = serde_json::to_value(&items)?;
    finish(
        context,
        (&path, &lock_path),
        report,
        changes,
        items,
        written,
    )
}

/// What an edit wrote.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// The spec and the lock.
    Both,
    /// Nothing: the spec had what the edit asked for.
    Nothing,
    /// Nothing: `--dry-run`.
    DryRun,
}

/// Report an edit: what it said, what changed in the lock, what was written.
fn finish(
    context: &Context,
    (spec_path, lock_path): (&Path, &Path),
    report: Report,
    changes: Vec<super::diff::Change>,
    items: Value,
    written: Written,
) -> anyhow::Result<Outcome> {
    if context.json {
        let mut out = report.json;
        out.insert("spec_path".into(), serde_json::to_value(spec_path)?);
        out.insert("lock_path".into(), serde_json::to_value(lock_path)?);
        out.insert("dry_run".into(), Value::Bool(written == Written::DryRun));
        out.insert("written".into(), Value::Bool(written == Written::Both));
        out.insert("changes".into(), serde_json::to_value(&changes)?);
        out.insert("items".into(), items);
        context.print_json(&Value::Object(out))?;
        return Ok(Outcome::Success);
    }
    for line in &report.lines {
        eprintln!("{line}");
    }
    super::diff::print_changes(&changes);
    let (spec_shown, lock_shown) = (spec_path.display(), lock_path.display());
    match written {
        Written::Both => tracing::info!("wrote `{spec_shown}` and `{lock_shown}`"),
        Written::Nothing => tracing::info!("nothing to change: `{spec_shown}` has it all"),
        Written::DryRun => {
            tracing::info!("dry run: `{spec_shown}` and `{lock_shown}` are unchanged")
        }
    }
    Ok(Outcome::Success)
}

/// `comfix list`: what a version holds, as its lock pins it.
pub fn list(args: ListArgs, context: &Context) -> anyhow::Result<Outcome> {
    let path = Spec::find(&std::env::current_dir()?, &args.id)?;
    let loaded = Spec::load(&path)?;
    let lock_path = crate::lock::lock_path_for(&path, &loaded.spec.version_id);
    let lock = Lock::read(&lock_path)?;
    let store = crate::store::Store::open_existing(&context.store_dir)?;
    let size = |name: &str| -> Option<u64> {
        store
            .as_ref()
            .and_then(|s| s.query(name).ok().flatten())
            .map(|r| r.size)
    };
    let mut rows = Vec::new();
    let mut row = |kind: &str, name: &str, pin: String, path: &str| {
        rows.push(serde_json::json!({
            "kind": kind, "name": name, "pin": pin,
            "store_path": (!path.is_empty()).then_some(path), "size": size(path),
        }));
    };
    match &lock {
        None => {
            row("core", "comfy", "not pinned".into(), "");
            for node in &loaded.spec.custom_nodes {
                row("node", &node.dir_name(), "not pinned".into(), "");
            }
            for model in &loaded.spec.models {
                let name = model.name.clone().unwrap_or_else(|| model.file_name());
                row("model", &name, "not pinned".into(), "");
            }
        }
        Some(lock) => {
            row(
                "core",
                "comfy",
                lock.comfy.commit.clone(),
                &lock.comfy.store_path,
            );
            for node in &lock.custom_nodes {
                let (pin, path) = match (&node.git, &node.registry, &node.local) {
                    (Some(g), _, _) => (g.commit.clone(), g.store_path.as_str()),
                    (_, Some(r), _) => (r.version.clone(), r.store_path.as_str()),
                    (_, _, Some(l)) => (format!("local {}", l.path), ""),
                    _ => (String::new(), ""),
                };
                row("node", &node.name, pin, path);
            }
            for model in &lock.models {
                let name = model.name.clone().unwrap_or_else(|| model.filename.clone());
                let pin = format!("blake3:{}", &model.blake3[..16]);
                row("model", &name, pin, &model.store_path);
            }
            for wheel in lock.python.iter().flat_map(|p| &p.wheels) {
                row(
                    "wheel",
                    &wheel.name,
                    wheel.version.clone(),
                    &wheel.store_path,
                );
            }
        }
    }
    if context.json {
        context.print_json(&serde_json::json!({
            "version_id": loaded.spec.version_id,
            "locked": lock.is_some(),
            "entries": rows,
        }))?;
        return Ok(Outcome::Success);
    }
    for r in &rows {
        let size = r["size"]
            .as_u64()
            .map(super::format_bytes)
            .unwrap_or_else(|| "-".into());
        println!(
            "{}\t{}\t{}\t{}",
            r["kind"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default(),
            r["pin"].as_str().unwrap_or_default(),
            size
        );
    }
    Ok(Outcome::Success)
}

/// `comfix update`: `resolve --update` under the name people expect.
pub fn update(args: UpdateArgs, context: &Context) -> anyhow::Result<Outcome> {
    let resolve = super::resolve::ResolveArgs {
        spec: super::spec::SpecArg {
            id: Some(args.id),
            spec: None,
        },
        update: Some(args.names),
        session: args.session,
    };
    super::resolve::run(resolve, context)
}

/// Take the version's edit lock (beside its spec): two edits of one version take turns.
fn turn(spec: &Path) -> anyhow::Result<crate::store::flock::LockGuard> {
    let name = spec
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock: PathBuf = spec.with_file_name(format!(".{name}.edit-lock"));
    crate::store::flock::exclusive(&lock)
        .map_err(|e| anyhow::anyhow!("cannot lock `{}`: {e}", lock.display()))
}
