//! `comfix channel publish` and `comfix follow`: a named pointer in a cache that CI moves and
//! machines follow, switching a home only to a version whose workflows pass.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::realize::{RealizeArgs, TorchArgs};
use super::spec::SpecArg;
use super::{Context, Outcome};
use crate::cache::channel::Channel;
use crate::cache::Cache;
use crate::realize::LinkMode;

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Push a version's closure to a cache, then point the channel NAME at it (signed): what
    /// `comfix follow` realizes
    #[command(
        after_help = "Examples:\n  comfix channel publish s3://team-cache/comfix prod wan22 --sign-key ci.secret\n  comfix channel publish /srv/www/cache staging --spec versions/wan22.json --sign-key ci.secret"
    )]
    Publish(PublishArgs),
    /// Show what a channel points at (checked against the trusted keys)
    #[command(
        after_help = "Examples:\n  comfix channel show https://cache.example.com/comfix prod"
    )]
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The cache (`DIR`, `file://DIR` or `s3://BUCKET/PREFIX`)
    #[arg(value_name = "CACHE")]
    cache: String,
    /// The channel's name (letters, digits, `.`, `_`, `-`)
    #[arg(value_name = "NAME")]
    name: String,
    #[command(flatten)]
    spec: SpecArg,
    /// The secret key that signs the pointer and the paths pushed
    #[arg(long, value_name = "FILE")]
    sign_key: PathBuf,
    /// How many archives to send at once
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    jobs: usize,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(value_name = "CACHE")]
    cache: String,
    #[arg(value_name = "NAME")]
    name: String,
    #[command(flatten)]
    trust: super::trust::TrustArgs,
}

#[derive(Debug, Args)]
pub struct FollowArgs {
    /// The cache holding the channel (and the paths of its version: it is asked first)
    #[arg(value_name = "CACHE")]
    cache: String,
    /// The channel's name
    #[arg(value_name = "NAME")]
    name: String,
    /// The home [default: as `realize`'s, for the channel's version id]
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Run the version's workflows (`comfix test`) in the new generation; keep it only when they
    /// pass, else go back to the generation before (exit 1)
    #[arg(long)]
    test: bool,
    /// Where the channel's spec and lock are written, as `<ID>.json` and `<ID>.lock.json`
    #[arg(long, value_name = "DIR", default_value = "versions")]
    versions_dir: PathBuf,
    /// As `realize --models-dir`
    #[arg(long, value_name = "DIR", env = "MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// As `realize --skip-models`
    #[arg(long)]
    skip_models: bool,
    /// As `realize --link-mode`
    #[arg(long, value_enum, default_value_t = LinkMode::Auto)]
    link_mode: LinkMode,
    #[command(flatten)]
    session: super::resolve::SessionArgs,
    #[command(flatten)]
    torch: TorchArgs,
    /// Arguments for ComfyUI's `main.py` while testing, after `--`
    #[arg(last = true, value_name = "COMFYUI_ARGS")]
    comfy_args: Vec<String>,
}

/// What `follow` did.
#[derive(Debug, Serialize)]
struct Followed {
    channel: String,
    version_id: String,
    lock_blake3: String,
    published_at: i64,
    target: PathBuf,
    /// `up-to-date`, `switched`, or `rolled-back` (its workflows failed).
    outcome: &'static str,
    generation: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<u32>,
    /// Whether the workflows passed, when they were run.
    #[serde(skip_serializing_if = "Option::is_none")]
    tested: Option<bool>,
}

pub fn run(command: ChannelCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        ChannelCommand::Publish(args) => publish(args, context),
        ChannelCommand::Show(args) => show(args, context),
    }
}

fn publish(args: PublishArgs, context: &Context) -> anyhow::Result<Outcome> {
    let input = args.spec.load_with_lock()?;
    let id = &input.loaded.spec.version_id;
    if input.old.is_none() {
        return Err(super::diff::NoLock {
            id: id.clone(),
            path: input.lock_path.clone(),
        }
        .into());
    }
    let key = super::trust::secret_key(&args.sign_key)?;
    let spec_text = std::fs::read_to_string(&input.loaded.path)?;
    let lock_text = std::fs::read_to_string(&input.lock_path)?;
    let lock = crate::lock::Lock::read(&input.lock_path)?.ok_or_else(|| super::diff::NoLock {
        id: id.clone(),
        path: input.lock_path.clone(),
    })?;
    let store = context.open_existing_store()?;
    let mut cache = Cache::open(&args.cache)?;
    cache.jobs = args.jobs.max(1);
    cache.show_progress(context.progress);
    // The version first, then the pointer: a channel never names what the cache lacks.
    let names = super::store::version_paths(&store, &lock)?;
    let copied = cache.push(&store, &names, Some(&key))?;
    let mut channel = Channel::new(&args.name, id, spec_text, lock_text);
    channel.sign(&key);
    cache.publish(&channel)?;
    print_channel(context, &channel)?;
    tracing::info!(
        "`{}` in {} now points at `{id}` ({} paths copied, {} there already)",
        args.name,
        cache.location(),
        copied.copied.len(),
        copied.present
    );
    Ok(Outcome::Success)
}

/// The channel's pointer, read and checked.
fn read_channel(cache: &Cache, name: &str) -> anyhow::Result<Channel> {
    let channel = cache.channel(name)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no channel `{name}` (`comfix channel publish` makes one)",
            cache.location()
        )
    })?;
    channel.check(&cache.trust)?;
    Ok(channel)
}

fn show(args: ShowArgs, context: &Context) -> anyhow::Result<Outcome> {
    let mut cache = Cache::open(&args.cache)?;
    cache.trust = args.trust.trust(&super::trust::Config::load()?)?;
    let channel = read_channel(&cache, &args.name)?;
    print_channel(context, &channel)?;
    Ok(Outcome::Success)
}

/// A channel's pointer: JSON, or its name, version and lock digest.
fn print_channel(context: &Context, channel: &Channel) -> anyhow::Result<()> {
    if context.json {
        return context.print_json(channel);
    }
    println!(
        "{}\t{}\t{}",
        channel.channel, channel.version_id, channel.lock_blake3
    );
    Ok(())
}

/// Write `text` to `path` whole (a temporary file renamed over it).
fn write_whole(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    file.persist(path)?;
    Ok(())
}

pub fn follow(args: FollowArgs, context: &Context) -> anyhow::Result<Outcome> {
    let config = super::trust::Config::load()?;
    let mut cache = Cache::open(&args.cache)?;
    cache.trust = args.session.substitute.trust.trust(&config)?;
    let channel = read_channel(&cache, &args.name)?;
    let id = channel.version_id.clone();
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| crate::realize::default_target(&id, |k| std::env::var(k).ok()));
    let lock: crate::lock::Lock = serde_json::from_str(&channel.lock)
        .map_err(|e| anyhow::anyhow!("the lock of channel `{}` cannot be read: {e}", args.name))?;
    let followed = |outcome, generation, previous, tested| Followed {
        channel: channel.channel.clone(),
        version_id: id.clone(),
        lock_blake3: channel.lock_blake3.clone(),
        published_at: channel.published_at,
        target: target.clone(),
        outcome,
        generation,
        previous,
        tested,
    };

    // At that version already: nothing to do (a timer may run this every minute).
    if let Some(store) = crate::store::Store::open_existing(&context.store_dir)? {
        if let Ok(status) = crate::realize::status(&store, &target, false) {
            let current = crate::lock::manifest::read(&store, &status.manifest);
            if status.version_id == id && current.is_some_and(|c| c.same_as(&lock)) {
                return report(
                    context,
                    &followed("up-to-date", status.generation, None, None),
                );
            }
        }
    }

    // The version's workflow files first (from the cache, verified), where its spec names them.
    let store = context.open_store()?;
    let workflows: Vec<String> = lock
        .workflows
        .iter()
        .map(|w| w.store_path.clone())
        .collect();
    cache.pull(&store, &workflows)?;
    crate::closure::write_workflow_files(&store, &lock, &args.versions_dir)?;
    drop(store);
    let spec_path = args.versions_dir.join(format!("{id}.json"));
    write_whole(&spec_path, &channel.spec)?;
    write_whole(&crate::lock::lock_path_for(&spec_path, &id), &channel.lock)?;
    let mut session = args.session;
    session
        .substitute
        .substituters
        .insert(0, args.cache.clone());
    let realize = RealizeArgs {
        spec: SpecArg {
            id: None,
            spec: Some(spec_path),
        },
        target: Some(target.clone()),
        models_dir: args.models_dir,
        dry_run: false,
        skip_models: args.skip_models,
        link_mode: args.link_mode,
        frozen: true,
        session,
        check: false,
        torch: args.torch,
    };
    let realized = super::realize::realize_home(&realize, context)?;
    if !args.test {
        let outcome = if realized.up_to_date {
            "up-to-date"
        } else {
            "switched"
        };
        return report(
            context,
            &followed(outcome, realized.generation, realized.previous, None),
        );
    }
    // The workflows, run as `comfix test` runs them, in a process of their own (its report on
    // stderr: stdout is this command's).
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--store")
        .arg(&context.store_dir)
        .args(["test", "--target"])
        .arg(&target)
        .arg("--")
        .args(&args.comfy_args)
        .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
        .status()?;
    if status.success() {
        return report(
            context,
            &followed(
                "switched",
                realized.generation,
                realized.previous,
                Some(true),
            ),
        );
    }
    let went_back = match (realized.up_to_date, realized.previous) {
        (false, Some(_)) => Some(crate::realize::rollback(&target)?),
        _ => None,
    };
    match &went_back {
        Some(back) => tracing::error!(
            "the workflows of `{id}` failed in generation {}: went back to generation {} (`{}`)",
            back.from,
            back.to,
            back.version_id
        ),
        None => tracing::error!(
            "the workflows of `{id}` failed, and the home has no generation before it to go back to"
        ),
    }
    let generation = went_back.as_ref().map_or(realized.generation, |b| b.to);
    report(
        context,
        &followed("rolled-back", generation, realized.previous, Some(false)),
    )?;
    Ok(Outcome::Failure)
}

fn report(context: &Context, followed: &Followed) -> anyhow::Result<Outcome> {
    if context.json {
        context.print_json(followed)?;
    } else {
        println!(
            "{}\t{}\t{}\tgeneration {}",
            followed.outcome,
            followed.version_id,
            followed.target.display(),
            followed.generation
        );
    }
    Ok(Outcome::Success)
}
