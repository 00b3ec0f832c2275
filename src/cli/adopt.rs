//! `comfix snapshot` and `comfix verify-models`: the way in for an install that exists already.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::resolve::open_session;
use super::{Context, Outcome};
use crate::adopt::{snapshot, verify_models as verify};
use crate::resolve::Update;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The install: its ComfyUI tree, or a directory holding it as `ComfyUI/` (with `.venv`)
    #[arg(long, value_name = "DIR")]
    comfy_path: PathBuf,
    /// The version id to give it
    #[arg(long, value_name = "ID")]
    name: String,
    /// Where to write the spec [default: versions/<ID>.json]; the lock goes beside it
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Where the models come from (YAML: `models:` entries with `source`, `filename`,
    /// `target_subdir`), reported with each model
    #[arg(long, value_name = "FILE.yml")]
    models_spec: Option<PathBuf>,
    /// Replace each model file of the install by a link into the store, once its bytes there are
    /// verified (on the store's filesystem the store takes the file itself: nothing copied); each
    /// link keeps its model from `gc` while it is there
    #[arg(long)]
    link_models: bool,
    /// Write the spec only: no lock, nothing into the store
    #[arg(long)]
    no_lock: bool,
    /// Record git nodes with uncommitted changes as development nodes (linked to their
    /// directory in the install, edits kept) instead of at their last commit
    #[arg(long)]
    dirty_as_dev: bool,
    /// Concurrent downloads while resolving (registry nodes)
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// The install's venv, when it is not `.venv` or `venv` in the install (a conda or system
    /// location the install runs with)
    #[arg(long, value_name = "DIR")]
    venv: Option<PathBuf>,
}

pub fn snapshot(args: SnapshotArgs, context: &Context) -> anyhow::Result<Outcome> {
    let mut install = snapshot::Install::find(&args.comfy_path).map_err(super::UserInput)?;
    match &args.venv {
        Some(venv) if venv.join("pyvenv.cfg").is_file() || venv.join("bin/python").exists() => {
            install.venv = Some(std::fs::canonicalize(venv)?);
        }
        Some(venv) => {
            return Err(super::UserInput(format!(
                "`{}` is not a venv (no `pyvenv.cfg`, no `bin/python`)",
                venv.display()
            ))
            .into())
        }
        None if install.venv.is_none() => tracing::warn!(
            "no venv in the install (`.venv` or `venv` beside or in `{}`): its Python packages are left out of the spec; name the one it runs with `--venv DIR`",
            install.core.display()
        ),
        None => {}
    }
    let known = match &args.models_spec {
        Some(path) => snapshot::read_models_spec(path).map_err(super::UserInput)?,
        None => Default::default(),
    };
    let mut report = snapshot::scan(&install, &known);
    if report.core.is_none() {
        return Err(super::UserInput(format!(
            "cannot tell which ComfyUI `{}` is: {}",
            install.core.display(),
            report.warnings.join("; ")
        ))
        .into());
    }
    let mut linked = Vec::new();
    let store = if args.no_lock {
        None
    } else {
        let store = Arc::new(context.open_store()?);
        linked = crate::adopt::ingest_models(
            &store,
            &mut report,
            context.reporter().as_ref(),
            args.link_models.then_some(install.core.as_path()),
        )?;
        Some(store)
    };
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    // Each node's warnings name the node (and where it is).
    for node in &report.nodes {
        for warning in &node.warnings {
            tracing::warn!(
                "node `{}` (`{}`): {warning}",
                node.name,
                node.path.display()
            );
        }
    }
    for p in report.unidentified.iter().chain(&report.unreadable) {
        tracing::warn!("left out `{}`: {}", p.path, p.reason);
    }
    let spec_path = spec_output(args.output.as_deref(), &args.name)?;
    let spec_value = snapshot::spec(&args.name, &report, args.dirty_as_dev);
    std::fs::write(
        &spec_path,
        serde_json::to_string_pretty(&spec_value)? + "\n",
    )?;
    let loaded = crate::spec::Spec::load(&spec_path)?;
    let lock_path = crate::lock::lock_path_for(&loaded.path, &loaded.spec.version_id);
    let mut lock_written = None;
    // Registry nodes are identified from their files (`pyproject.toml`, `.tracking`); their lock
    // entries need the registry's archive. A registry that cannot be reached does not stop the
    // snapshot: the spec is written, the lock is left for later, and the snapshot says so.
    let registry_nodes: Vec<&str> = report
        .nodes
        .iter()
        .filter(|n| n.kind == "registry")
        .map(|n| n.name.as_str())
        .collect();
    let unreachable = match (&store, registry_nodes.is_empty()) {
        (Some(_), false) => registry_unreachable(),
        _ => None,
    };
    if let (Some(store), Some((url, why))) = (&store, &unreachable) {
        // The install's commits still go into the mirrors: the later resolve needs them.
        crate::adopt::seed_mirrors(store, &report)?;
        tracing::warn!(
            "the node registry `{url}` cannot be reached ({why}): registry node(s) `{}` are in the spec as their files name them, but the lock is not written; run `comfix resolve {}` once the registry answers",
            registry_nodes.join("`, `"),
            args.name
        );
    }
    let store = store.filter(|_| unreachable.is_none());
    if let Some(store) = store {
        crate::adopt::seed_mirrors(&store, &report)?;
        let settings = crate::session::Settings {
            jobs: args.jobs,
            show_progress: context.progress,
            ..Default::default()
        };
        let session = open_session(context, store.clone(), &loaded.spec, settings)?;
        // A snapshot taken again keeps what it pinned before where the install did not change
        // (the Python set is not resolved again when the venv holds the same distributions).
        let previous = match crate::lock::Lock::read(&lock_path) {
            Ok(previous) => previous,
            Err(err) => {
                tracing::warn!("the previous lock is not used: {err}");
                None
            }
        };
        let (lock, _items) = session.resolve(
            &loaded.spec,
            previous.as_ref(),
            &Update::Nothing,
            false,
            loaded.dir(),
        )?;
        lock.write(&lock_path)?;
        lock_written = Some(lock_path.clone());
        if args.link_models {
            let root =
                std::fs::canonicalize(&install.core).unwrap_or_else(|_| install.core.clone());
            for model in &lock.models {
                let Some(found) = report
                    .models
                    .iter()
                    .find(|m| m.file == verify::model_file(model))
                else {
                    continue;
                };
                let stored = store.path_of(&model.store_path);
                if std::fs::read_link(&found.path).is_ok_and(|t| t == stored) {
                    continue; // taken as a hard link and linked already
                }
                // Only the install's own files: a link to a file elsewhere (a Hugging Face
                // cache's blob) or a file in an external folder stays as it is.
                let belongs = std::fs::symlink_metadata(&found.path).is_ok_and(|m| m.is_file())
                    && std::fs::canonicalize(&found.path).is_ok_and(|real| real.starts_with(&root));
                if !belongs {
                    continue;
                }
                // The store's copy, hashed again now: the install loses its file only to bytes
                // that are what the lock says.
                if verify::check_file(&stored, model) != verify::ModelState::Ok {
                    anyhow::bail!(
                        "the store's `{}` does not verify; `{}` is left as it is",
                        model.store_path,
                        found.path.display()
                    );
                }
                // Rooted first: the install's link keeps the model from the collector.
                store.add_link_root(&found.path, &model.store_path)?;
                crate::adopt::link_into_store(&found.path, &stored)?;
                linked.push(found.path.clone());
            }
        }
    }
    if context.json {
        context.print_json(&serde_json::json!({
            "spec_path": spec_path,
            "lock_path": lock_written,
            "report": report,
            "linked": linked,
        }))?;
    } else {
        println!("{}", spec_path.display());
        for model in &report.models {
            let source = model.known_source.as_deref().unwrap_or("no source");
            println!("model\t{}\t{source}", model.file);
        }
        for p in &report.unidentified {
            println!("unidentified\t{}\t{}", p.path, p.reason);
        }
    }
    let no_source = report
        .models
        .iter()
        .filter(|m| m.known_source.is_none())
        .count();
    tracing::info!(
        "{} nodes, {} models ({no_source} with no known source: the spec reads them from this install), {} entries left out",
        report.nodes.len(),
        report.models.len(),
        report.unidentified.len() + report.unreadable.len()
    );
    Ok(Outcome::Success)
}

/// Where a written spec goes: `output`, else `versions/<ID>.json`; its directory made.
fn spec_output(output: Option<&std::path::Path>, id: &str) -> anyhow::Result<PathBuf> {
    let path = output.map_or_else(
        || PathBuf::from(format!("versions/{id}.json")),
        PathBuf::from,
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    Ok(path)
}

#[derive(Debug, Args)]
pub struct VerifyModelsArgs {
    /// The lock whose models to check
    #[arg(long, value_name = "FILE")]
    lock: PathBuf,
    /// The models directory (`<folder>/<file>` as realize places them)
    #[arg(long, value_name = "DIR")]
    models_dir: PathBuf,
    /// Put the right bytes where a model is missing or wrong: from the store, else fetched from
    /// its pinned source
    #[arg(long)]
    fix: bool,
}

pub fn verify_models(args: VerifyModelsArgs, context: &Context) -> anyhow::Result<Outcome> {
    let lock = crate::lock::Lock::read(&args.lock)?.ok_or_else(|| {
        super::UserInput(format!("there is no lock at `{}`", args.lock.display()))
    })?;
    let mut report = verify::verify_models(&lock, &args.models_dir);
    let mut fixed = Vec::new();
    if args.fix && !report.ok() {
        let store = Arc::new(context.open_store()?);
        let wrong: Vec<&crate::lock::LockedModel> = lock
            .models
            .iter()
            .filter(|m| {
                report.models.iter().any(|c| {
                    c.file == verify::model_file(m) && !matches!(c.state, verify::ModelState::Ok)
                })
            })
            .collect();
        let derivations: Vec<crate::derive::Derivation> = wrong
            .iter()
            .map(|m| {
                let name = m.name.clone().unwrap_or_else(|| m.filename.clone());
                crate::derive::Derivation::model(name, m)
            })
            .collect();
        let env = |k: &str| std::env::var(k).ok();
        let config = crate::fetch::FetchConfig::from_env(env, &Default::default(), false, 4)?;
        let client = Arc::new(crate::fetch::http::Client::new(Arc::new(config)));
        let executor = Arc::new(crate::derive::exec::Executor::new(
            store.clone(),
            client,
            context.reporter().into(),
            None,
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(executor.run(&derivations))?;
        for model in wrong {
            let file = verify::model_file(model);
            verify::place(&store.path_of(&model.store_path), &args.models_dir, &file)?;
            fixed.push(file);
        }
        report = verify::verify_models(&lock, &args.models_dir);
    }
    if context.json {
        context.print_json(&serde_json::json!({
            "ok": report.ok(),
            "models": report.models,
            "extra": report.extra,
            "unwalkable": report.unwalkable,
            "fixed": fixed,
        }))?;
    } else {
        for check in &report.models {
            let state = match &check.state {
                verify::ModelState::Ok => "ok".to_string(),
                verify::ModelState::Missing => "missing".to_string(),
                verify::ModelState::Wrong { found } => format!(
                    "wrong\t{} bytes, blake3 {} (the lock: {} bytes, blake3 {})",
                    found.size, found.blake3, check.size, check.blake3
                ),
                verify::ModelState::Unreadable { reason } => format!("unreadable\t{reason}"),
            };
            println!("{}\t{state}", check.file);
        }
        for extra in &report.extra {
            println!("{extra}\textra");
        }
        for entry in &report.unwalkable {
            println!("{entry}\tunwalkable");
        }
    }
    Ok(if report.ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}

/// The node registry's address (`COMFIX_REGISTRY_URL`, else the public one) and why it cannot be
/// reached, when a TCP connection to it fails within 5 s (no answer is asked for: a registry that
/// answers badly is for the resolve to report).
fn registry_unreachable() -> Option<(String, String)> {
    let base = std::env::var("COMFIX_REGISTRY_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "https://api.comfy.org".into());
    let url = url::Url::parse(&base).ok()?;
    let host = url.host_str()?.to_string();
    let port = url.port_or_known_default()?;
    let addresses = match std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)) {
        Ok(addresses) => addresses.collect::<Vec<_>>(),
        Err(e) => return Some((base, e.to_string())),
    };
    let mut last = String::from("no address");
    for address in addresses {
        match std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5)) {
            Ok(_) => return None,
            Err(e) => last = e.to_string(),
        }
    }
    Some((base, last))
}

#[derive(Debug, Args)]
pub struct SpecImportArgs {
    /// The Manager snapshot (`.json`, `.yaml`) or ComfyGit `pyproject.toml`
    file: PathBuf,
    /// The version id to give it
    #[arg(long, value_name = "ID")]
    name: String,
    /// Where to write the spec [default: versions/<ID>.json]
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The core's repository, where the file names only its commit or version (a fork, a
    /// mirror)
    #[arg(long, value_name = "URL", default_value = crate::adopt::neighbours::COMFYUI_REPO)]
    comfy_repo: String,
    /// The ComfyUI install a Manager snapshot was taken of, to read commits it wrote as
    /// `unknown` [default: the install the snapshot file is in]
    #[arg(long, value_name = "DIR")]
    comfy_path: Option<PathBuf>,
}

pub fn import_spec(args: SpecImportArgs, context: &Context) -> anyhow::Result<Outcome> {
    use crate::adopt::neighbours;
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| super::UserInput(format!("cannot read `{}`: {e}", args.file.display())))?;
    let named = |e: String| super::UserInput(format!("`{}`: {e}", args.file.display()));
    let file_name = args.file.file_name().unwrap_or_default().to_string_lossy();
    let imported = if file_name.ends_with(".toml") {
        let uv_lock = args.file.with_file_name("uv.lock");
        let uv_lock = std::fs::read_to_string(&uv_lock).ok();
        neighbours::from_comfygit(&text, uv_lock.as_deref(), &args.name).map_err(named)?
    } else {
        let value = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) => value,
            Err(_) => {
                let docs = yaml_rust2::YamlLoader::load_from_str(&text)
                    .map_err(|e| named(format!("neither JSON nor YAML: {e}")))?;
                docs.first()
                    .map(neighbours::yaml_to_json)
                    .unwrap_or_default()
            }
        };
        let install = args
            .comfy_path
            .clone()
            .or_else(|| neighbours::install_of(&args.file));
        neighbours::from_manager(&value, &args.name, install.as_deref()).map_err(named)?
    };
    let mut imported = imported;
    imported.spec["comfy"]["repo"] = serde_json::json!(args.comfy_repo);
    for warning in &imported.warnings {
        tracing::warn!("{warning}");
    }
    let spec_path = spec_output(args.output.as_deref(), &args.name)?;
    std::fs::write(
        &spec_path,
        serde_json::to_string_pretty(&imported.spec)? + "\n",
    )?;
    // What was written must be a spec comfix reads.
    crate::spec::Spec::load(&spec_path)?;
    if context.json {
        context.print_json(&serde_json::json!({
            "spec_path": spec_path,
            "spec": imported.spec,
            "warnings": imported.warnings,
        }))?;
    } else {
        println!("{}", spec_path.display());
    }
    Ok(Outcome::Success)
}
