//! `comfix store …`: add paths, list them, show their info, verify the store.

use std::path::PathBuf;

use clap::Subcommand;

use super::{format_bytes, Context, Outcome};
use crate::store::Add;
use crate::store::{AddOptions, PathRecord, Store};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Add a file or directory tree to the store and print its store path
    #[command(
        after_help = "Examples:\n  comfix store add ./my-lora.safetensors\n  comfix store add ./tree --name my-tree --ref <digest>-other"
    )]
    Add {
        /// File, directory or symlink to add
        path: PathBuf,
        /// Name part of the store path [default: the file name of PATH]
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// A valid store path the new path references (repeatable); kept alive with it
        #[arg(long = "ref", value_name = "STORE_PATH")]
        references: Vec<String>,
    },
    /// List the valid store paths
    #[command(
        after_help = "Examples:\n  comfix store ls\n  comfix --json store ls | jq '.[].name'"
    )]
    Ls,
    /// Show a store path's size, closure size, references and registration time
    #[command(after_help = "Examples:\n  comfix store path-info <digest>-ComfyUI --closure")]
    PathInfo {
        /// Store path (absolute, or its `<digest>-<name>`)
        path: String,
        /// List every path in the closure
        #[arg(long)]
        closure: bool,
    },
    /// Keep a store path (or a version's whole locked closure) alive as root `pin:<NAME>`
    #[command(
        after_help = "Examples:\n  comfix store pin wan22\n  comfix store pin <digest>-model.safetensors --name keep-model"
    )]
    Pin {
        /// A store path, or a version id whose lock names the paths
        target: String,
        /// The pin's name [default: the store path's name, or the version id]
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove the pin `pin:<NAME>`
    #[command(after_help = "Examples:\n  comfix store unpin keep-model")]
    Unpin { name: String },
    /// Show why A depends on B: the chain of references from A to B
    #[command(
        after_help = "Examples:\n  comfix store why-depends <digest>-home-wan22 <digest>-ComfyUI-GGUF"
    )]
    WhyDepends { a: String, b: String },
    /// Disk use: the store, what gc frees now, each cache, and per home, version and pin what gc
    /// would free if it went (unique) vs what other roots keep too (shared)
    #[command(after_help = "Examples:\n  comfix store du\n  comfix --json store du")]
    Du {
        /// As `gc --home-grace`: what homes that are gone used counts as garbage only after it
        #[arg(long, value_name = "DURATION", env = "COMFIX_HOME_GRACE", default_value = "7d", value_parser = humantime::parse_duration)]
        home_grace: std::time::Duration,
    },
    /// Check that every valid path exists; exit 1 if anything is missing or corrupted
    #[command(
        after_help = "Examples:\n  comfix store verify\n  comfix store verify --check-contents --repair"
    )]
    Verify {
        /// Rehash every file and object and compare with the registered hashes
        #[arg(long)]
        check_contents: bool,
        /// Fetch or rebuild what is missing or corrupted (implies --check-contents), from the
        /// sources named by the locks of live roots
        #[arg(long)]
        repair: bool,
    },
    /// Copy store paths (and all they reference) to or from a binary cache: a directory or an
    /// S3-compatible bucket (`docs/cache.md`)
    #[command(
        after_help = "Examples:\n  comfix store copy --to /mnt/usb/comfix-cache wan22\n  comfix store copy --to s3://team-cache/comfix --sign-key team.secret -j 8 wan22\n  comfix store copy --from file:///mnt/nfs/cache <digest>-ComfyUI"
    )]
    Copy {
        /// The cache to write (`DIR`, `file://DIR` or `s3://BUCKET/PREFIX`; created when missing)
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "from",
            required_unless_present = "from"
        )]
        to: Option<String>,
        /// The cache to read (as --to, or `https://HOST/PATH`: a cache a static server serves)
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// With `--to`: how many archives to send at once
        #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
        jobs: usize,
        /// Version ids (their locked closures: every path the lock pins, and the venv this store
        /// built) or store paths
        #[arg(required = true, value_name = "ID|PATH")]
        targets: Vec<String>,
        /// With `--to`: sign every path with this secret key
        #[arg(long, value_name = "FILE", requires = "to")]
        sign_key: Option<PathBuf>,
        #[command(flatten)]
        trust: super::trust::TrustArgs,
    },
    /// Rebuild a lost or damaged database from the store's contents: every path under `paths/`
    /// whose bytes prove its registration (sidecars under `meta/`), and the roots under `roots/`.
    /// Lists what it could not recover; exit 1 if anything
    #[command(after_help = "Examples:\n  comfix store rebuild-db")]
    RebuildDb,
}

// Long on purpose: one arm per `store` subcommand.
pub fn run(command: StoreCommand, context: &Context) -> anyhow::Result<Outcome> {
    if let StoreCommand::RebuildDb = command {
        return rebuild_db(context);
    }
    let store = std::sync::Arc::new(match command {
        StoreCommand::Add { .. } | StoreCommand::Pin { .. } => context.open_store()?,
        StoreCommand::Copy { from: Some(_), .. } => context.open_store()?,
        _ => context.open_existing_store()?,
    });
    match command {
        StoreCommand::RebuildDb => unreachable!("handled above, without opening the store"),
        StoreCommand::Add {
            path,
            name,
            references,
        } => add(&store, context, path, name, references),
        StoreCommand::Ls => ls(&store, context),
        StoreCommand::Copy {
            to,
            from,
            targets,
            sign_key,
            trust,
            jobs,
        } => {
            let key = sign_key
                .as_deref()
                .map(super::trust::secret_key)
                .transpose()?;
            let trust = trust.trust(&super::trust::Config::load()?)?;
            let (key, jobs) = (key.as_ref(), jobs);
            copy(&store, context, (to, from), &targets, (key, jobs), trust)
        }
        StoreCommand::PathInfo { path, closure } => path_info(&store, context, &path, closure),
        StoreCommand::Verify {
            check_contents,
            repair,
        } => {
            if repair {
                repair_store(store, context)
            } else {
                verify(&store, context, check_contents)
            }
        }
        StoreCommand::Pin { target, name } => pin(&store, context, &target, name),
        StoreCommand::Unpin { name } => {
            if !store.remove_root(&format!("pin:{name}"))? {
                anyhow::bail!(crate::store::StoreError::NotValid {
                    arg: format!("pin:{name}"),
                    root: store.root().to_path_buf()
                });
            }
            Ok(Outcome::Success)
        }
        StoreCommand::WhyDepends { a, b } => {
            let (a, b) = (store.resolve(&a)?.name, store.resolve(&b)?.name);
            match store.why_depends(&a, &b)? {
                Some(chain) => {
                    if context.json {
                        let paths: Vec<PathBuf> = chain.iter().map(|n| store.path_of(n)).collect();
                        context.print_json(&paths)?;
                    } else {
                        for (i, name) in chain.iter().enumerate() {
                            println!("{}{}", "  ".repeat(i), store.path_of(name).display());
                        }
                    }
                    Ok(Outcome::Success)
                }
                None => {
                    tracing::error!("`{a}` does not depend on `{b}`");
                    Ok(Outcome::Failure)
                }
            }
        }
        StoreCommand::Du { home_grace } => {
            let usage = store.du(&crate::derive::keep::LiveLocks, home_grace.as_secs() as i64)?;
            if context.json {
                context.print_json(&usage)?;
            } else {
                let both = |b: crate::store::Bytes| {
                    format!(
                        "{} ({} of file contents)",
                        format_bytes(b.disk),
                        format_bytes(b.content)
                    )
                };
                println!("store\t{} on disk", both(usage.total));
                println!(
                    "garbage\t{}\t(what `comfix gc` frees now)",
                    both(usage.garbage)
                );
                for part in &usage.parts {
                    match part.own {
                        Some(own) => println!(
                            "{}\t{}\t{} its own",
                            part.name,
                            format_bytes(part.bytes.disk),
                            format_bytes(own.disk)
                        ),
                        None => println!("{}\t{}", part.name, format_bytes(part.bytes.disk)),
                    }
                }
                for u in &usage.groups {
                    println!(
                        "{}\t{} paths\t{} unique\t{} shared",
                        u.group,
                        u.paths,
                        format_bytes(u.unique.disk),
                        format_bytes(u.shared.disk)
                    );
                }
            }
            Ok(Outcome::Success)
        }
    }
}

/// `lock`'s manifest, written as `name` by a session's executor (a `write-manifest` derivation).
fn manifest_of(
    context: &Context,
    store: &std::sync::Arc<Store>,
    spec: &crate::spec::Spec,
    lock: &crate::lock::Lock,
    name: &str,
) -> anyhow::Result<String> {
    let store = store.clone();
    let settings = crate::session::Settings::default();
    let session = super::resolve::open_session(context, store, spec, settings)?;
    Ok(session.manifest(lock, name)?)
}

fn pin(
    store: &std::sync::Arc<Store>,
    context: &Context,
    target: &str,
    name: Option<String>,
) -> anyhow::Result<Outcome> {
    let (pin_name, path) = if target.contains('/') || store.query(target)?.is_some() {
        let record = store.resolve(target)?;
        (name.unwrap_or_else(|| record.name.clone()), record.name)
    } else {
        // A version id: pin a manifest of its locked closure.
        let spec_path = crate::spec::Spec::find(&std::env::current_dir()?, target)?;
        let loaded = crate::spec::Spec::load(&spec_path)?;
        let lock_path = crate::lock::lock_path_for(&spec_path, &loaded.spec.version_id);
        let lock = crate::lock::Lock::read(&lock_path)?.ok_or_else(|| {
            anyhow::anyhow!("version `{target}` has no lock `{}`", lock_path.display())
        })?;
        let manifest = manifest_of(
            context,
            store,
            &loaded.spec,
            &lock,
            &format!("pin-{target}"),
        )?;
        (name.unwrap_or_else(|| target.to_string()), manifest)
    };
    store.pin(&pin_name, &path)?;
    if context.json {
        context.print_json(
            &serde_json::json!({ "root": format!("pin:{pin_name}"), "path": store.path_of(&path) }),
        )?;
    } else {
        println!("{}", store.path_of(&path).display());
    }
    Ok(Outcome::Success)
}

fn add(
    store: &Store,
    context: &Context,
    path: PathBuf,
    name: Option<String>,
    references: Vec<String>,
) -> anyhow::Result<Outcome> {
    let reporter = context.reporter();
    let added = store.add_path(&path, &AddOptions { name, references }, reporter.as_ref())?;
    if context.json {
        context.print_json(&added)?;
    } else {
        println!("{}", added.path.display());
    }
    tracing::debug!(
        "{} objects new ({}), {} files",
        added.new_objects,
        format_bytes(added.new_object_bytes),
        added.record.file_count
    );
    Ok(Outcome::Success)
}

#[derive(serde::Serialize)]
struct Listed<'a> {
    path: PathBuf,
    #[serde(flatten)]
    record: &'a PathRecord,
}

fn ls(store: &Store, context: &Context) -> anyhow::Result<Outcome> {
    let records = store.list()?;
    if context.json {
        let listed: Vec<Listed> = records
            .iter()
            .map(|record| Listed {
                path: store.path_of(&record.name),
                record,
            })
            .collect();
        context.print_json(&listed)?;
    } else {
        for record in &records {
            println!("{}", store.path_of(&record.name).display());
        }
    }
    Ok(Outcome::Success)
}

#[derive(serde::Serialize)]
struct PathInfo {
    path: PathBuf,
    #[serde(flatten)]
    record: PathRecord,
    registered: String,
    closure_size: u64,
    references: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    closure: Option<Vec<ClosureEntry>>,
}

#[derive(serde::Serialize)]
struct ClosureEntry {
    path: PathBuf,
    size: u64,
}

fn path_info(
    store: &Store,
    context: &Context,
    arg: &str,
    show_closure: bool,
) -> anyhow::Result<Outcome> {
    let record = store.resolve(arg)?;
    let closure = store.closure(&record)?;
    let references = store
        .references(&record)?
        .iter()
        .map(|name| store.path_of(name))
        .collect();
    let registered = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.registered_at.max(0) as u64),
    )
    .to_string();
    let info = PathInfo {
        path: store.path_of(&record.name),
        closure_size: closure.iter().map(|r| r.size).sum(),
        references,
        registered,
        closure: show_closure.then(|| {
            closure
                .iter()
                .map(|r| ClosureEntry {
                    path: store.path_of(&r.name),
                    size: r.size,
                })
                .collect()
        }),
        record,
    };
    if context.json {
        context.print_json(&info)?;
        return Ok(Outcome::Success);
    }
    println!("{}", info.path.display());
    println!(
        "  kind:          {} ({} files)",
        info.record.kind, info.record.file_count
    );
    println!("  tree hash:     blake3:{}", info.record.tree_hash);
    println!(
        "  size:          {} ({} bytes)",
        format_bytes(info.record.size),
        info.record.size
    );
    println!(
        "  closure size:  {} ({} bytes)",
        format_bytes(info.closure_size),
        info.closure_size
    );
    println!("  registered:    {}", info.registered);
    if info.references.is_empty() {
        println!("  references:    none");
    } else {
        println!("  references:");
        for reference in &info.references {
            println!("    {}", reference.display());
        }
    }
    if let Some(closure) = &info.closure {
        println!("  closure:");
        for entry in closure {
            println!("    {}\t{}", entry.path.display(), format_bytes(entry.size));
        }
    }
    Ok(Outcome::Success)
}

fn repair_store(store: std::sync::Arc<Store>, context: &Context) -> anyhow::Result<Outcome> {
    let mut report = store.verify(true)?;
    if report.ok() {
        return verify(&store, context, true);
    }
    // Modes and object links need no source.
    for fixed in store.repair_in_place(&report)? {
        eprintln!("repaired\t{fixed}");
    }
    report.bad_modes.clear();
    report.missing_objects.clear();
    let env = |k: &str| std::env::var(k).ok();
    let config = crate::fetch::FetchConfig::from_env(env, &Default::default(), false, 4)?;
    let client = std::sync::Arc::new(crate::fetch::http::Client::new(std::sync::Arc::new(config)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let executor = std::sync::Arc::new(crate::derive::exec::Executor::new(
        store.clone(),
        client,
        context.reporter().into(),
        None,
    ));
    let repaired = runtime.block_on(crate::repair::repair(executor, &report));
    for name in &repaired.repaired {
        eprintln!("repaired	{}", store.path_of(name).display());
    }
    for (name, why) in &repaired.failed {
        eprintln!("not repaired	{}: {why}", store.path_of(name).display());
    }
    // What remains, after the repairs, decides the exit code.
    verify(&store, context, true)
}

/// `store copy --to/--from`: the named paths, or versions' locked closures, with their references.
fn copy(
    store: &Store,
    context: &Context,
    (to, from): (Option<String>, Option<String>),
    targets: &[String],
    (key, jobs): (Option<&crate::sign::SecretKey>, usize),
    trust: crate::sign::Trust,
) -> anyhow::Result<Outcome> {
    let report = match (to, from) {
        (Some(to), _) => {
            let mut cache = crate::cache::Cache::open(&to)?;
            cache.jobs = jobs;
            cache.show_progress(context.progress);
            let mut names = Vec::new();
            for target in targets {
                names.extend(copy_roots(store, target)?);
            }
            cache.push(store, &names, key)?
        }
        (None, Some(from)) => {
            let mut cache = crate::cache::Cache::open(&from)?;
            cache.show_progress(context.progress);
            cache.trust = trust;
            let mut names = Vec::new();
            for target in targets {
                names.extend(copy_roots(store, target).unwrap_or_else(|_| vec![target.clone()]));
            }
            cache.pull(store, &names)?
        }
        (None, None) => unreachable!("clap requires --to or --from"),
    };
    if context.json {
        context.print_json(&report)?;
    } else {
        for name in &report.copied {
            println!("{name}");
        }
    }
    tracing::info!(
        "copied {} paths ({} there already)",
        report.copied.len(),
        report.present
    );
    Ok(Outcome::Success)
}

/// A store path's name, or a version's locked closure roots (with the venv this store built).
pub(super) fn copy_roots(store: &Store, target: &str) -> anyhow::Result<Vec<String>> {
    if target.contains('/') || store.query(target)?.is_some() {
        return Ok(vec![store.resolve(target)?.name]);
    }
    let spec_path = crate::spec::Spec::find(&std::env::current_dir()?, target)?;
    let loaded = crate::spec::Spec::load(&spec_path)?;
    let lock_path = crate::lock::lock_path_for(&spec_path, &loaded.spec.version_id);
    let lock = crate::lock::Lock::read(&lock_path)?.ok_or_else(|| super::diff::NoLock {
        id: target.to_string(),
        path: lock_path.clone(),
    })?;
    version_paths(store, &lock)
}

/// Every path `lock` pins, with the venv (and torch overlay) this store built for it: what a
/// cache needs to give the version to another machine.
pub(super) fn version_paths(
    store: &Store,
    lock: &crate::lock::Lock,
) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = lock.store_paths().iter().map(|s| s.to_string()).collect();
    // The machine's configured torch backend, if any (`store copy` takes no flag for it).
    let torch = super::realize::TorchArgs::default();
    match super::closure::machine_paths(store, lock, &torch) {
        Ok((venv, extra)) => {
            names.extend(venv);
            names.extend(extra);
        }
        Err(e) => {
            tracing::warn!("copying the lock's paths and its venv only: {e:#}");
            names.extend(super::closure::venv_of(store, lock));
        }
    }
    Ok(names)
}

fn rebuild_db(context: &Context) -> anyhow::Result<Outcome> {
    let report = Store::rebuild_db(&context.store_dir)?;
    if context.json {
        context.print_json(&report)?;
    } else {
        for (name, reason) in &report.unrecovered {
            println!("unrecovered\t{name}\t{reason}");
        }
    }
    if let Some(old) = &report.old_db {
        tracing::info!("moved the unreadable database to `{}`", old.display());
    }
    tracing::info!(
        "registered {} paths and {} roots",
        report.registered.len(),
        report.roots
    );
    if !report.recovered_pins.is_empty() {
        tracing::warn!(
            "{} manifests (of homes or pinned versions) had no root left: pinned as {} so nothing they use is collected; a home's next command registers its own roots, then `comfix store unpin recovered-…` releases them",
            report.recovered_pins.len(),
            crate::hint::code_list(&report.recovered_pins)
        );
    }
    if report.unrecovered.is_empty() {
        Ok(Outcome::Success)
    } else {
        tracing::error!(
            "{} entries under `paths/` could not be recovered; they stay on disk, and `comfix gc` refuses to run until you decide (`comfix gc --delete-unrecovered` deletes them)",
            report.unrecovered.len()
        );
        Ok(Outcome::Failure)
    }
}

fn verify(store: &Store, context: &Context, check_contents: bool) -> anyhow::Result<Outcome> {
    let report = store.verify(check_contents)?;
    if context.json {
        context.print_json(&report)?;
    } else {
        for path in &report.missing {
            println!("missing\t{path}");
        }
        for corrupt in &report.corrupted {
            println!(
                "corrupted\t{}\texpected blake3:{}, found {}",
                corrupt.path, corrupt.expected, corrupt.actual
            );
        }
        for object in &report.corrupted_objects {
            println!("corrupted-object\t{object}");
        }
        for at in &report.bad_modes {
            println!("writable\t{at}");
        }
        for at in &report.missing_objects {
            println!("missing-object\t{at}");
        }
    }
    let problems = report.missing.len()
        + report.corrupted.len()
        + report.corrupted_objects.len()
        + report.bad_modes.len()
        + report.missing_objects.len();
    if !report.unregistered.is_empty() {
        tracing::info!(
            "{} unregistered entries under `paths/` (left by interrupted adds; `comfix gc` removes them)",
            report.unregistered.len()
        );
    }
    if problems == 0 {
        tracing::info!(
            "checked {} paths{}: no problems",
            report.checked_paths,
            if check_contents {
                " and their contents"
            } else {
                ""
            }
        );
        Ok(Outcome::Success)
    } else {
        tracing::error!(
            "checked {} paths: {problems} problems",
            report.checked_paths
        );
        eprintln!("hint: re-add the affected paths, or restore the store from a backup");
        Ok(Outcome::Failure)
    }
}
