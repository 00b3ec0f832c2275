//! `comfix image build`: a version's container image from the store (`src/image.rs`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::spec::SpecArg;
use super::{Context, Outcome};
use crate::closure::{Models, Version};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Write a version's image as an OCI image layout: one layer per store path of its closure,
    /// the same digest on any store; `skopeo copy oci:DIR docker://…` pushes it
    #[command(
        after_help = "Examples:\n  comfix image build wan22 -o images/wan22\n  comfix image build --spec versions/wan22.json -o images/wan22 --models none\n  skopeo inspect oci:images/wan22"
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
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    /// The OCI image layout directory to write (blobs it has already are kept)
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Which models the image carries
    #[arg(long, value_enum, default_value_t = ImageModels::Bake)]
    pub models: ImageModels,
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
        ImageModels::None => Models::None,
    };
    let built = crate::image::build(&store, &version, models, &args.output)?;
    if context.json {
        context.print_json(&built)?;
    } else {
        println!("{}", built.digest);
        let written = built.layers.iter().filter(|l| l.written).count();
        tracing::info!(
            "image of `{}` at `{}`: {} layers, {} written, {} there already",
            lock.version_id,
            args.output.display(),
            built.layers.len(),
            written,
            built.layers.len() - written
        );
    }
    Ok(Outcome::Success)
}
