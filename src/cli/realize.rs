//! `comfix realize`, `rollback`, `status`: homes and their generations.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::resolve::{resolve_with, ResolveRun};
use super::spec::SpecArg;
use super::{format_bytes, Context, Outcome};
use crate::derive::exec::How;
use crate::lock::{lock_path_for, Lock};
use crate::realize::{self, LinkMode, RealizeOptions};
use crate::resolve::Update;
use crate::spec::Spec;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct RealizeArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    /// The home [default: /runpod-volume/comfy-<ID> if /runpod-volume exists, else
    /// $HOME/comfy-<ID>, else ./comfy-<ID>]
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    /// Put model links in this directory (shared between homes) instead of <target>/models
    #[arg(long, value_name = "DIR", env = "MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Show the plan (steps, what is in the store, what would be downloaded) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Use only what the store already holds
    #[arg(long)]
    pub offline: bool,
    /// Do not fetch or place models
    #[arg(long)]
    pub skip_models: bool,
    /// How to place store content: auto = reflink or copy for the core and nodes, symlink for
    /// models and the venv
    #[arg(long, value_enum, default_value_t = LinkMode::Auto)]
    pub link_mode: LinkMode,
    /// Concurrent downloads
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Fail instead of writing or changing the lock
    #[arg(long)]
    pub frozen: bool,
    /// Resolve and install Python wheels from this directory only (no package index)
    #[arg(long, value_name = "DIR")]
    pub wheels_dir: Option<PathBuf>,
    #[command(flatten)]
    pub substitute: super::trust::SubstituteArgs,
    /// Say whether the home is up to date with the spec's lock and undrifted; change nothing
    /// (exit 1 when it is not: for CI)
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,
    #[command(flatten)]
    pub torch: TorchArgs,
}

/// The machine's torch backend: a local choice, resolved into an overlay in the store and never
/// written into the shared lock.
#[derive(Debug, Clone, Default, Args)]
pub struct TorchArgs {
    /// This machine's torch backend: auto (from the NVIDIA driver, else ROCm, else the CPU), cpu,
    /// cuXYZ (cu121, cu128), rocmX.Y, xpu [default: the config's `torch-backend`, else the lock's
    /// own wheels]
    #[arg(long, value_name = "NAME", env = "COMFIX_TORCH_BACKEND")]
    pub torch_backend: Option<String>,
    /// The backend's package index, `{backend}` replaced by its name [default: the config's
    /// `torch-index`, else https://download.pytorch.org/whl/{backend}]
    #[arg(long, value_name = "URL", env = "COMFIX_TORCH_INDEX")]
    pub torch_index: Option<String>,
}

impl TorchArgs {
    /// The backend asked for, with its index; `None`: the lock's own wheel set.
    pub fn choice(&self) -> anyhow::Result<Option<(crate::python::torch::Backend, String)>> {
        use crate::python::torch;
        let config = super::trust::Config::load()?;
        let Some(name) = self.torch_backend.clone().or(config.torch_backend) else {
            return Ok(None);
        };
        let machine = torch::Machine::detect();
        let backend = match name.as_str() {
            "auto" => machine.backend(),
            other => torch::Backend::parse(other)?,
        };
        machine.check(&backend)?;
        let template = self
            .torch_index
            .clone()
            .or(config.torch_index)
            .unwrap_or_else(|| torch::DEFAULT_INDEX.to_string());
        Ok(Some((
            backend.clone(),
            torch::index_for(&template, &backend),
        )))
    }
}

/// Put the machine's torch backend over `lock` (in memory only; the shared lock on disk is never
/// changed): its Python wheel set becomes the overlay's, found in the store or resolved.
fn apply_torch(
    session: &super::resolve::Session,
    store: &Store,
    lock: &mut Lock,
    args: &TorchArgs,
) -> anyhow::Result<Option<realize::TorchUsed>> {
    let executor = &session.executor;
    let reporter = executor.reporter.as_ref();
    overlay_with(lock, args, |python, backend, index| {
        let ensure = crate::python::stored_uv::ensure(store, &executor.client, reporter);
        session.runtime.block_on(ensure)?;
        let overlay = crate::python::torch::overlay(
            store,
            &executor.client,
            reporter,
            python,
            backend,
            index,
        );
        Ok(session.runtime.block_on(overlay)?)
    })
}

/// `apply_torch` from the store alone (`--check`, `--dry-run`, `export`): `Err` names a backend
/// whose overlay this store does not hold.
pub(super) fn apply_stored_torch(
    store: &Store,
    lock: &mut Lock,
    args: &TorchArgs,
) -> anyhow::Result<Option<realize::TorchUsed>> {
    overlay_with(lock, args, |python, backend, index| {
        let (name, overlay) = crate::python::torch::stored(store, python, backend, index)?;
        let overlay = overlay.ok_or_else(|| crate::python::PythonError::NoOverlay {
            backend: backend.tag(),
        })?;
        Ok((name, overlay))
    })
}

/// The backend `args` ask for, put over `lock`'s Python set with the overlay `get` gives; a set
/// without torch is left as it is.
fn overlay_with(
    lock: &mut Lock,
    args: &TorchArgs,
    get: impl FnOnce(
        &crate::lock::LockedPython,
        &crate::python::torch::Backend,
        &str,
    ) -> anyhow::Result<(String, crate::python::torch::Overlay)>,
) -> anyhow::Result<Option<realize::TorchUsed>> {
    let Some((backend, index)) = args.choice()? else {
        return Ok(None);
    };
    let Some(python) = lock
        .python
        .as_mut()
        .filter(|p| p.wheels.iter().any(|w| w.name == "torch"))
    else {
        tracing::info!(
            "torch backend `{}`: the version's Python set has no torch; nothing to change",
            backend.tag()
        );
        return Ok(None);
    };
    let (name, overlay) = get(python, &backend, &index)?;
    tracing::info!("torch backend `{}` (overlay `{name}`)", backend.tag());
    python.wheels = overlay.wheels;
    Ok(Some(realize::TorchUsed {
        backend: backend.tag(),
        overlay: name,
    }))
}

impl RealizeArgs {
    fn options(
        &self,
        target: PathBuf,
        skip_models: bool,
        venv: Option<String>,
        not_fetched: Vec<String>,
        check: bool,
        torch: Option<realize::TorchUsed>,
    ) -> RealizeOptions {
        RealizeOptions {
            target,
            models_dir: self.models_dir.clone(),
            skip_models,
            link_mode: self.link_mode,
            venv,
            not_fetched,
            check,
            torch,
        }
    }
}

#[derive(Debug, Args)]
pub struct HomeArgs {
    /// The home [default: $COMFY_HOME, else the current directory when it is a home, else the
    /// one home the store knows]
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    /// Hash every managed file instead of trusting unchanged size, times and inode
    #[arg(long)]
    pub check_contents: bool,
}

impl HomeArgs {
    /// The home (see [`realize::locate`]), its GC roots registered again when it was moved or
    /// copied here.
    pub fn target(&self, store: Option<&crate::store::Store>) -> anyhow::Result<PathBuf> {
        let target = match &self.target {
            Some(target) => target.clone(),
            None => realize::locate(store, |k| std::env::var(k).ok())?,
        };
        if let Some(store) = store {
            realize::reroot(store, &target)?;
        }
        Ok(target)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrozenError {
    #[error("`--frozen`, but there is no lock `{}`", .0.display())]
    Missing(PathBuf),
    #[error("`--frozen`, but the lock does not match the spec:\n{}", .0.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"))]
    Stale(Vec<String>),
}

pub fn realize(args: RealizeArgs, context: &Context) -> anyhow::Result<Outcome> {
    let super::spec::WithLock {
        loaded,
        lock_path,
        old,
    } = args.spec.load_with_lock()?;
    let spec = &loaded.spec;
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| realize::default_target(&spec.version_id, |k| std::env::var(k).ok()));
    let skip_models = args.skip_models || spec.options.skip_models;

    if args.dry_run {
        return dry_run(&args, context, spec, old.as_ref(), &target, skip_models);
    }
    if args.check {
        return check(
            &args,
            context,
            spec,
            old.as_ref(),
            &lock_path,
            target,
            skip_models,
        );
    }
    let report = realize_loaded(&args, context, &loaded, &lock_path, old.as_ref(), target)?;
    print_report(context, &report)?;
    Ok(Outcome::Success)
}

/// Realize a version for a command that then uses the home (`run`, `test`): the report, not
/// printed.
pub fn realize_home(
    args: &RealizeArgs,
    context: &Context,
) -> anyhow::Result<realize::RealizeReport> {
    let super::spec::WithLock {
        loaded,
        lock_path,
        old,
    } = args.spec.load_with_lock()?;
    let target = args.target.clone().unwrap_or_else(|| {
        realize::default_target(&loaded.spec.version_id, |k| std::env::var(k).ok())
    });
    realize_loaded(args, context, &loaded, &lock_path, old.as_ref(), target)
}

// Long on purpose: the command's sequence (resolve, write the lock, run the plan, assemble), each step a call.
fn realize_loaded(
    args: &RealizeArgs,
    context: &Context,
    loaded: &crate::spec::LoadedSpec,
    lock_path: &std::path::Path,
    old: Option<&Lock>,
    target: PathBuf,
) -> anyhow::Result<realize::RealizeReport> {
    let spec = &loaded.spec;
    let skip_models = args.skip_models || spec.options.skip_models;
    if args.frozen {
        frozen_lock(spec, old, lock_path)?;
    }

    // Before anything is fetched or written: homes and stores never contain each other.
    realize::check_apart(&context.store_dir, &target, args.models_dir.as_deref())?;
    let store = Arc::new(context.open_store()?);
    // A home moved or copied here keeps its earlier generations alive.
    realize::reroot(&store, &target)?;
    let (mut lock, _items, session) = resolve_with(
        context,
        store.clone(),
        ResolveRun {
            spec,
            old,
            update: Update::Nothing,
            offline: args.offline,
            jobs: args.jobs,
            skip_models,
            python: crate::python::PythonSettings {
                wheels_dir: super::resolve::absolute(args.wheels_dir.as_deref())?,
            },
            spec_dir: loaded.dir(),
            substitute: args.substitute.clone(),
        },
    )?;
    if !old.is_some_and(|o| o.same_as(&lock)) {
        if args.frozen {
            return Err(FrozenError::Stale(vec!["the resolved lock differs".into()]).into());
        }
        if !(skip_models && lock.models.len() < spec.models.len()) {
            lock.write(lock_path)?;
            tracing::info!("wrote `{}`", lock_path.display());
        }
    }
    crate::fault::pause_point("realize-resolved");
    // The machine's backend, over the lock in memory: what is written above stays shared.
    let torch = apply_torch(&session, &store, &mut lock, &args.torch)?;
    let (plan, venv) = run_plan(&session, &store, spec, &mut lock, skip_models)?;
    let not_fetched: Vec<String> = if skip_models {
        Vec::new()
    } else {
        spec.models
            .iter()
            .filter(|m| !m.is_required() && crate::lock::locked_model(m, &lock).is_none())
            .map(|m| match &m.target_subdir {
                Some(dir) => format!("{dir}/{}", m.file_name()),
                None => m.file_name(),
            })
            .collect()
    };
    let mut report = realize::realize(
        &store,
        &lock,
        &args.options(target, skip_models, venv, not_fetched, false, torch),
    )?;
    let home = plan.last().expect("a plan ends with its home");
    let how = if report.up_to_date {
        How::Valid
    } else {
        How::Built
    };
    session.executor.record(home, None, how);
    report.derivations = session.executor.outcomes(&plan);
    Ok(report)
}

/// `realize --dry-run`: the plan against what the store holds; nothing is created.
fn dry_run(
    args: &RealizeArgs,
    context: &Context,
    spec: &Spec,
    old: Option<&Lock>,
    target: &std::path::Path,
    skip_models: bool,
) -> anyhow::Result<Outcome> {
    let store = Store::open_existing(&context.store_dir)?;
    // A universal lock's wheels for this machine; the machine's backend: its overlay's wheels
    // when the store has it.
    let mut overlaid = old.cloned();
    if let (Some(store), Some(lock)) = (&store, overlaid.as_mut()) {
        if let Err(e) = this_machine(store, lock) {
            tracing::warn!("cannot tell this machine's wheels of the universal lock: {e:#}");
        }
    }
    let machine = overlaid.clone();
    if let Some((backend, _)) = args.torch.choice()? {
        let applied = match (&store, overlaid.as_mut()) {
            (Some(store), Some(lock)) => apply_stored_torch(store, lock, &args.torch).ok(),
            _ => None,
        };
        match applied.flatten() {
            Some(used) => tracing::info!(
                "torch backend `{}`: its overlay `{}` is in the store",
                used.backend,
                used.overlay
            ),
            None => {
                overlaid = machine;
                tracing::info!(
                    "torch backend `{}`: not resolved on this machine yet (realize resolves it)",
                    backend.tag()
                );
            }
        }
    }
    let old = overlaid.as_ref();
    // The venv's name needs uv and the interpreter; without them the step is just "build".
    let venv = match (&store, old.and_then(|l| l.python.as_ref())) {
        (Some(store), Some(python)) => venv_name_of(store, python, false).ok(),
        _ => None,
    };
    let plan = crate::plan::plan(store.as_ref(), spec, old, venv.as_deref(), skip_models);
    print_plan(context, &plan, target)?;
    Ok(Outcome::Success)
}

/// Run the plan of `lock` (every pin known: what `--dry-run` shows now is what runs; what
/// resolve already made valid is not run again, the executor remembers it). Optional models that
/// could not be fetched leave the lock; returns the plan and the venv's store path.
fn run_plan(
    session: &super::resolve::Session,
    store: &Store,
    spec: &Spec,
    lock: &mut Lock,
    skip_models: bool,
) -> anyhow::Result<(Vec<crate::derive::Derivation>, Option<String>)> {
    let venv_name = match &lock.python {
        Some(python) => {
            let executor = &session.executor;
            let reporter = executor.reporter.as_ref();
            let ensure = crate::python::stored_uv::ensure(store, &executor.client, reporter);
            session.runtime.block_on(ensure)?;
            let may_install = !executor.client.config().offline;
            Some(venv_name_of(store, python, may_install)?)
        }
        None => None,
    };
    let plan = crate::derive::derivations(spec, Some(lock), venv_name.as_deref(), skip_models);
    session.runtime.block_on(session.executor.run(&plan))?;
    let outcomes = session.executor.outcomes(&plan);
    let outcome_of = |d: &crate::derive::Derivation| outcomes.iter().find(|o| o.id == d.id);
    for d in &plan {
        if let (Some(o), crate::derive::Action::Model { locked }) = (outcome_of(d), &d.action) {
            if o.outcome == How::Missing {
                lock.models.retain(|m| m != locked);
            }
        }
    }
    let venv = plan
        .iter()
        .find(|d| d.kind == crate::derive::Kind::BuildVenv)
        .and_then(outcome_of)
        .and_then(|o| o.output.clone());
    Ok((plan, venv))
}

fn print_report(context: &Context, report: &realize::RealizeReport) -> anyhow::Result<()> {
    if context.json {
        context.print_json(report)?;
    } else {
        println!("{}", report.target.display());
        let modes: Vec<String> = report
            .link_modes
            .iter()
            .map(|(kind, mode)| format!("{kind}: {mode}"))
            .collect();
        if report.up_to_date {
            tracing::info!(
                "`{}` is up to date at generation {} ({})",
                report.version_id,
                report.generation,
                modes.join(", ")
            );
        } else {
            for drifted in &report.drift {
                tracing::info!("restored {}", drifted.replacen(':', " ", 1));
            }
            tracing::info!(
                "realized `{}` as generation {}{} ({})",
                report.version_id,
                report.generation,
                report
                    .previous
                    .map(|p| format!(", previous {p}"))
                    .unwrap_or_default(),
                modes.join(", ")
            );
        }
    }
    Ok(())
}

/// `realize --check`: is the home at the spec's lock, undrifted? Fetches, builds and writes
/// nothing.
fn check(
    args: &RealizeArgs,
    context: &Context,
    spec: &Spec,
    old: Option<&Lock>,
    lock_path: &std::path::Path,
    target: PathBuf,
    skip_models: bool,
) -> anyhow::Result<Outcome> {
    let mut lock = frozen_lock(spec, old, lock_path)?.clone();
    let store = context.open_existing_store()?;
    this_machine(&store, &mut lock)?;
    let torch = apply_stored_torch(&store, &mut lock, &args.torch)?;
    let venv = match &lock.python {
        Some(python) => Some(venv_name_of(&store, python, false)?),
        None => None,
    };
    let report = realize::realize(
        &store,
        &lock,
        &args.options(target, skip_models, venv, Vec::new(), true, torch),
    )?;
    if context.json {
        context.print_json(&report)?;
    } else {
        println!("{}", report.target.display());
        for drifted in &report.drift {
            println!("{}", drifted.replacen(':', "\t", 1));
        }
        if report.up_to_date {
            tracing::info!(
                "`{}` is up to date at generation {}",
                report.version_id,
                report.generation
            );
        } else if report.drift.is_empty() {
            tracing::error!(
                "generation {} is not `{}` as locked now (realize to update it)",
                report.generation,
                report.version_id
            );
        } else {
            tracing::error!(
                "generation {} has drifted ({} files); realize to restore them",
                report.generation,
                report.drift.len()
            );
        }
    }
    Ok(if report.up_to_date {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}

/// The stored torch overlay `name`.
fn overlay_of(store: &Store, name: &str) -> Option<crate::python::torch::Overlay> {
    let text = std::fs::read_to_string(store.path_of(name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The lock beside the spec, which must exist and match the spec (`--frozen`, `--check`).
fn frozen_lock<'a>(
    spec: &Spec,
    old: Option<&'a Lock>,
    lock_path: &std::path::Path,
) -> anyhow::Result<&'a Lock> {
    let lock = old.ok_or_else(|| FrozenError::Missing(lock_path.to_path_buf()))?;
    let stale = crate::lock::stale_entries(spec, lock);
    if !stale.is_empty() {
        return Err(FrozenError::Stale(stale).into());
    }
    Ok(lock)
}

/// The name the venv of `python` has (or would have) in the store on this machine.
/// A universal lock's wheels for this machine, from the store alone (nothing fetched).
pub(super) fn this_machine(store: &Store, lock: &mut Lock) -> anyhow::Result<()> {
    let Some(python) = lock.python.as_mut().filter(|p| p.universal.is_some()) else {
        return Ok(());
    };
    let uv = crate::python::find_uv(store)?;
    let interpreter = crate::python::managed::interpreter(store, &uv, &python.version, false).ok();
    crate::python::universal::fill_from_store(store, python, interpreter.as_ref())?;
    Ok(())
}

/// The name the venv of `python` has (or would have) in the store on this machine; with
/// `may_install`, a managed interpreter is installed when the machine has none of its version.
fn venv_name_of(
    store: &Store,
    python: &crate::lock::LockedPython,
    may_install: bool,
) -> anyhow::Result<String> {
    let uv = crate::python::find_uv(store)?;
    let interpreter =
        crate::python::managed::interpreter(store, &uv, &python.version, may_install)?;
    Ok(crate::python::venv_name(&uv, &interpreter, python))
}

fn print_plan(
    context: &Context,
    plan: &crate::plan::Plan,
    target: &std::path::Path,
) -> anyhow::Result<()> {
    if context.json {
        context.print_json(&serde_json::json!({ "target": target, "plan": plan }))?;
        return Ok(());
    }
    println!(
        "plan for `{}` into `{}` (lock: {})",
        plan.version_id,
        target.display(),
        plan.lock
    );
    for stale in &plan.stale {
        println!("  stale in the lock: {stale}");
    }
    for step in &plan.steps {
        let detail = match (step.state, step.download_bytes, &step.output) {
            ("fetch", Some(bytes), _) if step.kind == "fetch-model" => format_bytes(bytes),
            (_, _, Some(output)) => output.clone(),
            ("resolve", _, None) => "not pinned yet".into(),
            _ => String::new(),
        };
        println!(
            "  {:<14} {:<24} {:<8} {}",
            step.kind, step.name, step.state, detail
        );
    }
    let t = &plan.totals;
    println!(
        "{} steps: {} valid, {} to fetch, {} to resolve, {} to build; download {}{}",
        t.steps,
        t.valid,
        t.to_fetch,
        t.to_resolve,
        t.to_build,
        format_bytes(t.download_bytes),
        if t.unknown_sizes > 0 {
            format!(" + {} of unknown size", t.unknown_sizes)
        } else {
            String::new()
        }
    );
    Ok(())
}

pub fn history(args: HomeArgs, context: &Context) -> anyhow::Result<Outcome> {
    let store = crate::store::Store::open_existing(&context.store_dir)?;
    let entries = realize::history(&args.target(store.as_ref())?)?;
    if context.json {
        context.print_json(&entries)?;
        return Ok(Outcome::Success);
    }
    for entry in &entries {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.created_at.max(0) as u64),
        );
        println!(
            "{}{}\t{}\t{when}",
            entry.generation,
            if entry.current { " (current)" } else { "" },
            entry.version_id
        );
    }
    Ok(Outcome::Success)
}

pub fn rollback(args: HomeArgs, context: &Context) -> anyhow::Result<Outcome> {
    let store = crate::store::Store::open_existing(&context.store_dir)?;
    let report = realize::rollback(&args.target(store.as_ref())?)?;
    if context.json {
        context.print_json(&report)?;
    } else {
        println!("{}", report.target.display());
        tracing::info!(
            "rolled back from generation {} to {} (`{}`)",
            report.from,
            report.to,
            report.version_id
        );
    }
    Ok(Outcome::Success)
}

pub fn status(args: StatusArgs, context: &Context) -> anyhow::Result<Outcome> {
    let store = context.open_existing_store()?;
    let target = args.home.target(Some(&store))?;
    let mut report = realize::status(&store, &target, args.check_contents)?;
    // Behind its lock? Compare the generation's lock (in its manifest) with the version's lock
    // file, found as `comfix realize <ID>` would find it.
    let realized = crate::lock::manifest::read(&store, &report.manifest);
    let current = std::env::current_dir()
        .ok()
        .and_then(|cwd| Spec::find(&cwd, &report.version_id).ok())
        .and_then(|spec| {
            Lock::read(&lock_path_for(&spec, &report.version_id))
                .ok()
                .flatten()
        });
    if let (Some(mut realized), Some(current)) = (realized, current) {
        // With a torch backend the generation's wheels are its overlay's: the Python set is
        // behind when the overlay of the current lock is another one.
        if let (Some(torch), Some(python)) = (&report.torch, &current.python) {
            let same = overlay_of(&store, &torch.overlay)
                .and_then(|o| {
                    let backend = crate::python::torch::Backend::parse(&o.backend).ok()?;
                    crate::python::torch::stored(&store, python, &backend, &o.index).ok()
                })
                .is_some_and(|(name, _)| name == torch.overlay);
            if let (true, Some(realized)) = (same, realized.python.as_mut()) {
                realized.wheels = python.wheels.clone();
            }
        }
        report.behind_lock = Some(!realized.same_as(&current));
    }
    if context.json {
        context.print_json(&report)?;
        return Ok(Outcome::Success);
    }
    println!("home:        {}", report.target.display());
    println!("version:     {}", report.version_id);
    println!(
        "generation:  {} (of {})",
        report.generation,
        report
            .generations
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let modes: Vec<String> = report
        .link_modes
        .iter()
        .map(|(kind, mode)| format!("{kind}: {mode}"))
        .collect();
    println!("link modes:  {}", modes.join(", "));
    if let Some(torch) = &report.torch {
        println!("torch:       {} (overlay {})", torch.backend, torch.overlay);
    }
    for model in &report.not_fetched {
        println!("not fetched\tmodels/{model} (optional; realize again to retry)");
    }
    match report.behind_lock {
        Some(true) => println!(
            "lock:        behind `{}.lock.json` (realize `{}` to update)",
            report.version_id, report.version_id
        ),
        Some(false) => println!("lock:        at `{}.lock.json`", report.version_id),
        None => {}
    }
    if report.clean() {
        println!("drift:       none");
    } else {
        for (label, list) in [
            ("changed", &report.changed),
            ("added", &report.added),
            ("missing", &report.missing),
        ] {
            for path in list {
                println!("{label}\t{path}");
            }
        }
    }
    Ok(Outcome::Success)
}
