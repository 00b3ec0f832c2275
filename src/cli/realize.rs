//! `comfix realize`, `rollback`, `status`: homes and their generations.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::resolve::open_session;
use super::spec::SpecArg;
use super::{format_bytes, Context, Outcome};
use crate::lock::{lock_path_for, Lock};
use crate::realize::{self, LinkMode, RealizeOptions};
use crate::session::{self, Realization};
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
    /// Do not fetch or place models
    #[arg(long)]
    pub skip_models: bool,
    /// How to place store content: auto = reflink or copy for the core and nodes, symlink for
    /// models and the venv
    #[arg(long, value_enum, default_value_t = LinkMode::Auto)]
    pub link_mode: LinkMode,
    /// Fail instead of writing or changing the lock
    #[arg(long)]
    pub frozen: bool,
    #[command(flatten)]
    pub session: super::resolve::SessionArgs,
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
    // The same request as the last one that found this home up to date: the same answer, when
    // the home is still that answer (`realize::request`), without a session.
    let key = || request_key(&args, context, &loaded, &lock_path, &target);
    let recorded = key().and_then(|key| realize::request::answer(&target, &key));
    if let Some(answer) = recorded {
        if let Ok(report) = serde_json::from_value::<realize::RealizeReport>(answer.clone()) {
            tracing::debug!("the home's record of this request answers it");
            match context.json {
                true => context.print_json(&answer)?,
                false => print_report(&report),
            }
            return Ok(Outcome::Success);
        }
    }
    let realized = realize_loaded(
        &args,
        context,
        &loaded,
        &lock_path,
        old.as_ref(),
        target.clone(),
    )?;
    let answer = serde_json::to_value(&realized)?;
    // Taken after the realize: it may have written the lock.
    if let (true, Some(key)) = (realized.report.up_to_date, key()) {
        realize::request::remember(
            &target,
            &key,
            realized.report.generation,
            args.models_dir.is_none(),
            answer.clone(),
        );
    }
    match context.json {
        true => context.print_json(&answer)?,
        false => print_report(&realized.report),
    }
    Ok(Outcome::Success)
}

/// The key of this exact request for [`realize::request`]: everything a session decides from.
/// This build of comfix, the working directory, the arguments, the environment (less the shell's
/// own bookkeeping), the store's identity, the spec's and the lock's bytes, the files the spec
/// names on this machine (workflows, `file://` models) and the config file by their stamps, the
/// torch backend chosen, and witnesses of the machine: its id, host name and kernel, and the
/// directories on `PATH` (where a new or upgraded uv or Python appears). `None` — no shortcut —
/// for a spec with a development node (a directory on this machine, read again each time).
fn request_key(
    args: &RealizeArgs,
    context: &Context,
    loaded: &crate::spec::LoadedSpec,
    lock_path: &std::path::Path,
    target: &std::path::Path,
) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let spec = &loaded.spec;
    if spec.custom_nodes.iter().any(|n| n.path.is_some()) {
        return None;
    }
    let mut key = blake3::Hasher::new();
    let mut part = |bytes: &[u8]| {
        key.update(&(bytes.len() as u64).to_le_bytes());
        key.update(bytes);
    };
    part(b"comfix realize request 1");
    part(env!("CARGO_PKG_VERSION").as_bytes());
    part(stamp(&std::env::current_exe().ok()?).as_bytes());
    part(std::env::current_dir().ok()?.as_os_str().as_bytes());
    part(format!("{args:?}").as_bytes());
    part(target.as_os_str().as_bytes());
    let mut vars: Vec<_> = std::env::vars_os()
        .filter(|(k, _)| !matches!(k.to_str(), Some("_" | "OLDPWD" | "SHLVL")))
        .collect();
    vars.sort();
    for (k, v) in &vars {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    part(context.store_dir.as_os_str().as_bytes());
    let store = stamp(&context.store_dir);
    if store == "-" {
        return None;
    }
    part(store.as_bytes());
    part(loaded.path.as_os_str().as_bytes());
    part(&std::fs::read(&loaded.path).ok()?);
    part(&std::fs::read(lock_path).unwrap_or_default());
    for rel in &spec.workflows {
        part(stamp(&loaded.dir().join(rel)).as_bytes());
    }
    for model in &spec.models {
        if let Ok(crate::spec::SourceKind::File(path)) = model.source.kind() {
            part(stamp(path).as_bytes());
        }
    }
    part(stamp(&super::trust::Config::path().unwrap_or_default()).as_bytes());
    part(format!("{:?}", args.torch.choice().ok()?).as_bytes());
    for file in [
        "/etc/machine-id",
        "/proc/sys/kernel/hostname",
        "/proc/sys/kernel/osrelease",
    ] {
        part(&std::fs::read(file).unwrap_or_default());
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        part(stamp(&dir).as_bytes());
    }
    Some(key.finalize().to_hex().to_string())
}

/// A file's identity and last change (following links), `-` when there is none.
fn stamp(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ),
        Err(_) => "-".into(),
    }
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
    Ok(realize_loaded(args, context, &loaded, &lock_path, old.as_ref(), target)?.report)
}

fn realize_loaded(
    args: &RealizeArgs,
    context: &Context,
    loaded: &crate::spec::LoadedSpec,
    lock_path: &std::path::Path,
    old: Option<&Lock>,
    target: PathBuf,
) -> anyhow::Result<session::Realized> {
    let spec = &loaded.spec;
    if args.frozen {
        session::frozen_lock(spec, old, lock_path)?;
    }
    // Before anything is fetched or written: homes and stores never contain each other.
    realize::check_apart(&context.store_dir, &target, args.models_dir.as_deref())?;
    let store = Arc::new(context.open_store()?);
    let settings = args.session.settings(context, Some(&args.torch))?;
    let session = open_session(context, store, spec, settings)?;
    Ok(session.realize(&Realization {
        loaded,
        lock_path,
        old,
        target,
        models_dir: args.models_dir.clone(),
        link_mode: args.link_mode,
        skip_models: args.skip_models || spec.options.skip_models,
        frozen: args.frozen,
    })?)
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
        if let Err(e) = session::this_machine(store, lock) {
            tracing::warn!("cannot tell this machine's wheels of the universal lock: {e:#}");
        }
    }
    let machine = overlaid.clone();
    let choice = args.torch.choice()?;
    // The overlay's step, over the lock's own Python set (as realize runs it).
    let overlay_step = match (&choice, machine.as_ref().and_then(|l| l.python.as_ref())) {
        (Some((backend, index)), Some(python))
            if python.wheels.iter().any(|w| w.name == "torch") =>
        {
            Some(crate::derive::Derivation::overlay(python, backend, index))
        }
        _ => None,
    };
    if let Some((backend, _)) = &choice {
        let applied = match (&store, overlaid.as_mut()) {
            (Some(store), Some(lock)) => {
                session::apply_stored_torch(store, lock, choice.as_ref()).ok()
            }
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
        (Some(store), Some(python)) => session::venv_name_of(store, python, false).ok(),
        _ => None,
    };
    let mut derivations = crate::derive::derivations(spec, old, venv.as_deref(), skip_models);
    if let Some(step) = overlay_step {
        let at = derivations
            .iter()
            .position(|d| d.kind == crate::derive::Kind::FetchWheel)
            .unwrap_or(derivations.len() - 1);
        derivations.insert(at, step);
    }
    // The substituters realize would ask, asked the same way (what they hold, what it brings).
    let settings = args.session.settings(context, Some(&args.torch))?;
    let caches = settings.caches()?;
    let plan = crate::plan::plan_of(store.as_ref(), spec, old, derivations, &caches);
    print_plan(context, &plan, target)?;
    Ok(Outcome::Success)
}

fn print_report(report: &realize::RealizeReport) {
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
    let mut lock = session::frozen_lock(spec, old, lock_path)?.clone();
    let store = context.open_existing_store()?;
    session::this_machine(&store, &mut lock)?;
    let torch = session::apply_stored_torch(&store, &mut lock, args.torch.choice()?.as_ref())?;
    let venv = match &lock.python {
        Some(python) => Some(session::venv_name_of(&store, python, false)?),
        None => None,
    };
    let options = RealizeOptions {
        target,
        models_dir: args.models_dir.clone(),
        skip_models,
        link_mode: args.link_mode,
        venv,
        not_fetched: Vec::new(),
        check: true,
        torch,
        in_place: match args.session.models_in_place && !skip_models {
            true => realize::in_place_models(&store, &lock)?,
            false => Default::default(),
        },
    };
    let report = realize::realize(&store, &lock, &options)?;
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
            ("substitute", Some(bytes), Some(output)) => {
                format!("{output} ({})", format_bytes(bytes))
            }
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
        "{} steps: {} valid, {} to fetch, {} to substitute, {} to resolve, {} to build; download {}{}",
        t.steps,
        t.valid,
        t.to_fetch,
        t.to_substitute,
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
