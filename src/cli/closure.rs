//! `comfix export` and `comfix import`: a version's closure as one file (`-`: stdout/stdin).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::spec::SpecArg;
use super::{format_bytes, Context, Outcome};
use crate::closure::{self, Models, Version};

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    /// The archive to write (`.tar.zst`); `-` writes to stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Which models to carry
    #[arg(long, value_enum, default_value_t = Models::All)]
    pub models: Models,
    /// Sign every path with this secret key (`comfix key generate`)
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Write the version as a ComfyUI-Manager snapshot (for `cm-cli restore-snapshot`; YAML when
    /// the output ends in `.yaml`/`.yml`, else JSON) instead of an archive: core commit, git and
    /// registry nodes, pinned pips
    #[arg(long)]
    pub manager_snapshot: bool,
    /// Carry this machine's torch backend overlay and its venv (as `realize --torch-backend`);
    /// the archive's lock stays the shared one
    #[command(flatten)]
    pub torch: super::realize::TorchArgs,
}

#[derive(Debug, Args)]
pub struct ClosureImportArgs {
    /// The archive `comfix export` wrote; `-` reads stdin
    pub file: PathBuf,
    /// Where the versions' specs and locks are written (files there already are kept)
    #[arg(long, value_name = "DIR", default_value = "versions")]
    pub versions_dir: PathBuf,
    #[command(flatten)]
    pub trust: super::trust::TrustArgs,
}

pub fn export(args: ExportArgs, context: &Context) -> anyhow::Result<Outcome> {
    let input = args.spec.load_with_lock()?;
    let lock = input.old.as_ref().ok_or_else(|| super::diff::NoLock {
        id: input.loaded.spec.version_id.clone(),
        path: input.lock_path.clone(),
    })?;
    if args.manager_snapshot {
        let snapshot = crate::adopt::neighbours::to_manager(lock, &input.loaded.spec);
        // `-o x.yaml` (or `.yml`): YAML, as Manager's YAML snapshots; else JSON.
        let yaml = args
            .output
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml");
        let text = if yaml {
            crate::adopt::neighbours::json_to_yaml_text(&snapshot)
        } else {
            serde_json::to_string_pretty(&snapshot)? + "\n"
        };
        if args.output.as_os_str() == "-" {
            print!("{text}");
        } else {
            std::fs::write(&args.output, text)?;
        }
        return Ok(Outcome::Success);
    }
    let spec = std::fs::read(&input.loaded.path)?;
    let store = std::sync::Arc::new(context.open_existing_store()?);
    let (venv, mut extra) = machine_paths(&store, lock, &args.torch)?;
    if lock.python.is_some() {
        // The uv the venv was built with goes along: a machine without uv realizes it offline.
        let settings = crate::session::Settings::default();
        let stored =
            super::resolve::open_session(context, store.clone(), &input.loaded.spec, settings)
                .and_then(|session| Ok(session.carry_uv()?));
        match stored {
            Ok(path) => extra.push(path),
            Err(e) => tracing::warn!("the closure carries no uv ({e}): a machine without uv cannot realize its Python offline"),
        }
    }
    let version = Version {
        spec: &spec,
        lock,
        venv,
        extra,
    };
    let key = args
        .sign_key
        .as_deref()
        .map(super::trust::secret_key)
        .transpose()?;
    let report = if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        let out = std::io::BufWriter::new(stdout);
        closure::export(&store, &[version], args.models, key.as_ref(), out)?
    } else {
        // Written beside the target and renamed: a failed export leaves no half archive.
        let dir = args
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let mut temp = crate::files::temp_in(dir)?;
        let report = closure::export(
            &store,
            &[version],
            args.models,
            key.as_ref(),
            std::io::BufWriter::new(temp.as_file_mut()),
        )?;
        temp.as_file().sync_all()?;
        temp.persist(&args.output).map_err(|e| e.error)?;
        report
    };
    if context.json {
        context.print_json(&report)?;
    } else if args.output.as_os_str() != "-" {
        println!("{}", args.output.display());
    }
    tracing::info!(
        "exported {} paths ({}) of `{}`",
        report.paths,
        format_bytes(report.content_bytes),
        report.versions.join("`, `")
    );
    Ok(Outcome::Success)
}

/// What this machine installs for `lock` beyond the lock's own paths: its venv (when this store
/// holds it), a universal lock's wheels for this platform, a torch backend's overlay. The lock
/// itself stays the shared one.
pub fn machine_paths(
    store: &crate::store::Store,
    lock: &crate::lock::Lock,
    torch: &super::realize::TorchArgs,
) -> anyhow::Result<(Option<String>, Vec<String>)> {
    let mut machine = lock.clone();
    crate::session::this_machine(store, &mut machine)?;
    let used = crate::session::apply_stored_torch(store, &mut machine, torch.choice()?.as_ref())?;
    let mut extra = Vec::new();
    if let Some(python) = machine.python.as_ref().filter(|p| p.universal.is_some()) {
        extra.extend(
            python
                .wheels
                .iter()
                .filter(|w| !w.store_path.is_empty())
                .map(|w| w.store_path.clone()),
        );
    }
    extra.extend(used.map(|t| t.overlay));
    Ok((venv_of(store, &machine), extra))
}

/// The venv this store holds for `lock`, when uv and the interpreter can name it here.
pub fn venv_of(store: &crate::store::Store, lock: &crate::lock::Lock) -> Option<String> {
    let python = lock.python.as_ref()?;
    let uv = crate::python::find_uv(store).ok()?;
    let interpreter =
        crate::python::managed::interpreter(store, &uv, &python.version, false).ok()?;
    let name = crate::python::venv_name(&uv, &interpreter, python);
    store.query(&name).ok().flatten().map(|_| name)
}

pub fn import(args: ClosureImportArgs, context: &Context) -> anyhow::Result<Outcome> {
    let trust = args.trust.trust(&super::trust::Config::load()?)?;
    let store = context.open_store()?;
    let dir = &args.versions_dir;
    let report = if args.file.as_os_str() == "-" {
        closure::import(&store, std::io::stdin(), dir, &trust)?
    } else {
        let file = std::fs::File::open(&args.file)?;
        closure::import(&store, std::io::BufReader::new(file), dir, &trust)?
    };
    closure::pin_versions(&store, &report)?;
    if context.json {
        context.print_json(&report)?;
    } else {
        let mut out = std::io::stdout().lock();
        for id in &report.versions {
            writeln!(out, "{id}")?;
        }
    }
    tracing::info!(
        "imported {} paths ({} already present); realize with `comfix realize <ID> --offline`",
        report.imported.len(),
        report.present
    );
    Ok(Outcome::Success)
}
