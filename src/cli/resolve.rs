//! `comfix resolve`: pin a spec into its lock, fetching what the lock names into the store.

use std::sync::Arc;

use clap::Args;

use super::spec::SpecArg;
use super::{Context, Outcome};
use crate::resolve::{ItemReport, Update};
use crate::session::{Session, Settings};
use crate::spec::Spec;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    /// Re-resolve the named entries (node names, model names or file names, `comfy`, `python`), or all
    /// when no name is given; other entries of an existing lock are kept as they are
    #[arg(long, value_name = "NAME", num_args = 0..)]
    pub update: Option<Vec<String>>,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// What a command that resolves or realizes decides for its session (`session::Settings`).
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Use only what the store already holds; fail listing everything that is missing
    #[arg(long)]
    pub offline: bool,
    /// Concurrent downloads
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Resolve and install Python wheels from this directory only (no package index)
    #[arg(long, value_name = "DIR")]
    pub wheels_dir: Option<std::path::PathBuf>,
    /// Models that folders of the models index hold (`comfix models index`) are pinned and
    /// linked where they lie, never copied into the store; re-checked by stat tuple every time
    #[arg(long)]
    pub models_in_place: bool,
    #[command(flatten)]
    pub substitute: super::trust::SubstituteArgs,
}

impl SessionArgs {
    /// The session's settings, with the precedence `session::Settings` documents: the argument
    /// (or its variable, through clap), then the config file.
    pub fn settings(
        &self,
        context: &Context,
        torch: Option<&super::realize::TorchArgs>,
    ) -> anyhow::Result<Settings> {
        let config = super::trust::Config::load()?;
        let mut substituters = self.substitute.substituters.clone();
        substituters.extend(config.substituters.iter().cloned());
        Ok(Settings {
            offline: self.offline,
            jobs: self.jobs,
            wheels_dir: absolute(self.wheels_dir.as_deref())?,
            substituters,
            trust: self.substitute.trust.trust(&config)?,
            show_progress: context.progress,
            models_in_place: self.models_in_place,
            torch: match torch {
                Some(torch) => torch.choice()?,
                None => None,
            },
        })
    }
}

/// A session for `spec` over `store`, reporting as the command's context says.
pub fn open_session(
    context: &Context,
    store: Arc<Store>,
    spec: &Spec,
    settings: Settings,
) -> anyhow::Result<Session> {
    Ok(Session::open(
        store,
        spec,
        settings,
        context.reporter().into(),
    )?)
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
    let settings = args.session.settings(context, None)?;
    let session = open_session(context, store, spec, settings)?;
    let (lock, items) = session.resolve(spec, old.as_ref(), &update, false, loaded.dir())?;
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
            store_root
                .join(crate::store::layout::PATHS)
                .join(&item.store_path)
                .display()
        );
    }
}
