//! `comfix image build`: a version's container image from the store (`src/image.rs`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::spec::SpecArg;
use super::{Context, Outcome};
use crate::closure::{Models, Version};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a version's container image: one layer per store path of its closure, the same
    /// digest on any store; written as an OCI image layout, pushed to a registry, or both
    #[command(
        after_help = "Examples:\n  comfix image build wan22 -o images/wan22\n  comfix image build wan22 -o images/wan22 --push registry.example.com/team/wan22:v3\n  comfix image build --spec versions/wan22.json --models none --docker-archive wan22.tar"
    )]
    Build(BuildArgs),
}

/// Which models an image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageModels {
    /// Every model of the lock, each its own layer
    Bake,
    /// None: code and venv only
    None,
    /// Left out, and fetched at start from `--models-from` (a cache on the network volume by
    /// default), verified, by the image's comfix (offline)
    Volume,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).multiple(true).args(["output", "push", "docker_archive"])))]
pub struct BuildArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    /// The OCI image layout directory to write (blobs it has already are kept; keep it between
    /// builds and only what changed is written)
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Push the image to a registry, `HOST[:PORT]/REPOSITORY[:TAG]` (blobs it has are not sent;
    /// the tag is set last)
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Write a `docker load` archive of the image (beside the layout or instead of it)
    #[arg(long, value_name = "FILE")]
    pub docker_archive: Option<PathBuf>,
    /// The image to build on: an OCI image layout `DIR[:TAG]`, or a registry's image by digest,
    /// `HOST/REPOSITORY@sha256:…` (pulled, checked); its layers are kept as they are; it must be
    /// for this machine's architecture [default: none — the store and comfix alone, which need a
    /// libc and the version's Python from the base to run]
    #[arg(long, value_name = "BASE")]
    pub from: Option<String>,
    /// Which models the image carries
    #[arg(long, value_enum, default_value_t = ImageModels::Bake)]
    pub models: ImageModels,
    /// With `--models volume`: the caches the models come from at start (repeatable; a cache
    /// directory on the network volume, `s3://BUCKET/PREFIX`, `https://…`)
    #[arg(
        long,
        value_name = "CACHE",
        default_value = "/runpod-volume/comfix-cache"
    )]
    pub models_from: Vec<String>,
    /// With `--models volume`: a public key (`NAME:BASE64`) the models' cache paths must be
    /// signed by (repeatable); without one, the image's comfix takes only signed paths of keys its
    /// environment names (`COMFIX_TRUSTED_KEYS`)
    #[arg(long, value_name = "KEY")]
    pub trusted_key: Vec<String>,
    /// Carry this machine's torch backend overlay and its venv (as `realize --torch-backend`)
    #[command(flatten)]
    pub torch: super::realize::TorchArgs,
}

pub fn run(command: ImageCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        ImageCommand::Build(args) => build(args, context),
    }
}

fn build(args: BuildArgs, context: &Context) -> anyhow::Result<Outcome> {
    let input = args.spec.load_with_lock()?;
    let lock = input.old.as_ref().ok_or_else(|| super::diff::NoLock {
        id: input.loaded.spec.version_id.clone(),
        path: input.lock_path.clone(),
    })?;
    let spec = std::fs::read(&input.loaded.path)?;
    let store = context.open_existing_store()?;
    let (venv, extra) = super::closure::machine_paths(&store, lock, &args.torch)?;
    let version = Version {
        spec: &spec,
        lock,
        venv,
        extra,
    };
    let models = match args.models {
        ImageModels::Bake => Models::All,
        ImageModels::None | ImageModels::Volume => Models::None,
    };
    let volume = args.models == ImageModels::Volume;
    for key in &args.trusted_key {
        crate::sign::PublicKey::parse(key)?;
    }
    // Without `-o`, the layout is a scratch directory of the store's, gone afterwards.
    let reference = args
        .push
        .as_deref()
        .map(crate::image::push::Reference::parse)
        .transpose()?;
    let scratch = match &args.output {
        Some(_) => None,
        None => Some(store.scratch()?),
    };
    let layout = match (&args.output, &scratch) {
        (Some(dir), _) => dir.clone(),
        (None, Some(scratch)) => scratch.path().join("layout"),
        (None, None) => unreachable!("a scratch layout when no -o"),
    };
    let id = &lock.version_id;
    let env = |k: &str| std::env::var(k).ok();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A base from a registry is pulled into the layout the image is written to.
    let base = match args.from.as_deref() {
        Some(from) if crate::image::push::is_registry_base(from) => {
            Some(runtime.block_on(crate::image::push::pull_base(from, &layout, &env))?)
        }
        Some(from) => Some(crate::image::Base::open(from)?),
        None => None,
    };
    let options = crate::image::BuildOptions {
        models,
        base: base.as_ref(),
        comfix: std::env::current_exe()?,
        models_from: if volume {
            args.models_from.clone()
        } else {
            Vec::new()
        },
        trusted_keys: if volume {
            args.trusted_key.clone()
        } else {
            Vec::new()
        },
    };
    let built = crate::image::build(&store, &version, &options, &layout)?;
    let written = built.layers.iter().filter(|l| l.written).count();
    tracing::info!(
        "image of `{id}`: {} layers, {written} written, {} there already",
        built.layers.len(),
        built.layers.len() - written
    );
    if let Some(file) = &args.docker_archive {
        crate::image::docker_archive(&layout, id, file)?;
        tracing::info!(
            "`{}`: `docker load -i` it as `{}`",
            file.display(),
            crate::image::docker_tag(id)
        );
    }
    let pushed = match &reference {
        Some(reference) => {
            let report =
                runtime.block_on(crate::image::push::push(&layout, id, reference, &env))?;
            tracing::info!(
                "pushed `{reference}`: {} blobs sent ({}), {} there already",
                report.uploaded.len(),
                crate::units::format_bytes(report.uploaded_bytes),
                report.present
            );
            Some(report)
        }
        None => None,
    };
    if context.json {
        context.print_json(&serde_json::json!({
            "digest": built.digest,
            "config": built.config,
            "layers": built.layers,
            "pushed": pushed,
        }))?;
    } else {
        println!("{}", built.digest);
    }
    Ok(Outcome::Success)
}
