//! `comfix resolve`: pin a spec into its lock, fetching what the lock names into the store.

use std::sync::Arc;

use clap::Args;

use super::spec::SpecArg;
use super::{Context, Outcome};
use crate::derive::exec::Executor;
use crate::fetch::http::Client;
use crate::fetch::FetchConfig;
use crate::lock::Lock;
use crate::resolve::{ItemReport, Resolver, Update};
use crate::spec::Spec;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    /// Use only what the store already holds; fail listing everything that is missing
    #[arg(long)]
    pub offline: bool,
    /// Re-resolve the named entries (node names, model names or file names, `comfy`, `python`), or all
    /// when no name is given; other entries of an existing lock are kept as they are
    #[arg(long, value_name = "NAME", num_args = 0..)]
    pub update: Option<Vec<String>>,
    /// Concurrent downloads
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Resolve Python wheels from this directory only (no package index)
    #[arg(long, value_name = "DIR")]
    pub wheels_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub substitute: super::trust::SubstituteArgs,
}

/// Settings of one resolve, shared by `resolve` and `realize`.
pub struct ResolveRun<'a> {
    pub spec: &'a Spec,
    pub old: Option<&'a Lock>,
    pub update: Update,
    pub offline: bool,
    pub jobs: usize,
    pub skip_models: bool,
    pub python: crate::python::PythonSettings,
    /// The spec's directory (its `workflows` are relative to it).
    pub spec_dir: std::path::PathBuf,
    /// Binary caches asked before fetching, and which keys what they give must be signed by.
    pub substitute: super::trust::SubstituteArgs,
}

/// One command's executor and the runtime it runs on: `realize` resolves and then runs the rest
/// of the plan with the same executor, so each derivation runs once and is reported once.
pub struct Session {
    pub runtime: tokio::runtime::Runtime,
    pub executor: Arc<Executor>,
}

impl Session {
    pub fn new(
        context: &Context,
        store: Arc<Store>,
        run: &ResolveRun<'_>,
    ) -> anyhow::Result<Session> {
        let spec = run.spec;
        let env = |k: &str| std::env::var(k).ok();
        let offline = run.offline || spec.options.offline;
        let config =
            FetchConfig::from_env(env, &spec.expand_env_available(env), offline, run.jobs)?;
        let client = Arc::new(Client::new(Arc::new(config))?);
        let wheels_dir = run.python.wheels_dir.clone();
        let mut executor = Executor::new(store, client, context.reporter().into(), wheels_dir);
        let config = super::trust::Config::load()?;
        let trust = run.substitute.trust.trust(&config)?;
        let locations = run
            .substitute
            .substituters
            .iter()
            .chain(&config.substituters);
        for location in locations.filter(|s| !s.is_empty()) {
            let mut cache = crate::cache::Cache::open(location)?;
            cache.trust = trust.clone();
            cache.show_progress(context.progress);
            cache.jobs = run.jobs;
            executor.substituters.push(Arc::new(cache));
        }
        let executor = Arc::new(executor);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(Session { runtime, executor })
    }
}

/// Resolve and fetch; returns the new lock and what happened to each entry.
pub fn resolve_with(
    context: &Context,
    store: Arc<Store>,
    run: ResolveRun<'_>,
) -> anyhow::Result<(Lock, Vec<ItemReport>, Session)> {
    let session = Session::new(context, store, &run)?;
    let resolver = Resolver::new(
        session.executor.clone(),
        run.skip_models,
        run.python.clone(),
        run.spec_dir.clone(),
    );
    let (lock, items) =
        session
            .runtime
            .block_on(resolver.resolve(run.spec, run.old, &run.update))?;
    Ok((lock, items, session))
}

/// A directory given on the command line, made absolute: uv runs in another directory.
pub fn absolute(dir: Option<&std::path::Path>) -> anyhow::Result<Option<std::path::PathBuf>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    match std::fs::canonicalize(dir) {
        Ok(path) if path.is_dir() => Ok(Some(path)),
        Ok(_) => Err(crate::python::PythonError::NotADirectory {
            path: dir.to_path_buf(),
        }
        .into()),
        Err(_) => Err(crate::python::PythonError::NotADirectory {
            path: dir.to_path_buf(),
        }
        .into()),
    }
}

pub fn run(args: ResolveArgs, context: &Context) -> anyhow::Result<Outcome> {
    let input = args.spec.load_with_lock()?;
    let (loaded, lock_path, old) = (&input.loaded, &input.lock_path, &input.old);
    let spec = &loaded.spec;
    let update = match args.update {
        None => Update::Nothing,
        Some(names) if names.is_empty() => Update::All,
        Some(names) => Update::Names(names),
    };
    let store = Arc::new(context.open_store()?);
    let store_root = store.root().to_path_buf();
    let (lock, items, _session) = resolve_with(
        context,
        store,
        ResolveRun {
            spec,
            old: old.as_ref(),
            update,
            offline: args.offline,
            jobs: args.jobs,
            skip_models: false,
            python: crate::python::PythonSettings {
                wheels_dir: absolute(args.wheels_dir.as_deref())?,
            },
            spec_dir: loaded.dir(),
            substitute: args.substitute.clone(),
        },
    )?;
    let changed = !old.as_ref().is_some_and(|o| o.same_as(&lock));
    if changed {
        lock.write(lock_path)?;
    }
    if context.json {
        context.print_json(&serde_json::json!({
            "lock_path": lock_path,
            "changed": changed,
            "items": items,
            "lock": lock,
        }))?;
    } else {
        print_items(&items, &store_root);
    }
    tracing::info!(
        "{} `{}`",
        if changed { "wrote" } else { "unchanged:" },
        lock_path.display()
    );
    Ok(Outcome::Success)
}

/// One tab-separated line per entry: kind, name, kept/resolved, pin, store path.
pub fn print_items(items: &[ItemReport], store_root: &std::path::Path) {
    for item in items {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            item.kind,
            item.name,
            item.action,
            item.pin,
            store_root.join("paths").join(&item.store_path).display()
        );
    }
}
