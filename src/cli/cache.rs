//! `comfix cache …`: maintenance of a binary cache by its owner.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Context, Outcome};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove from a cache every path the kept versions do not need, then the archives no
    /// remaining path names. No client ever collects a cache; its owner prunes it
    #[command(
        after_help = "Examples:\n  comfix cache prune s3://team-cache/comfix --keep-versions wan22,flux-dev --dry-run\n  comfix cache prune /mnt/nfs/cache --keep-versions wan22 --keep <digest>-uv-0.13.8"
    )]
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The cache (`DIR`, `file://DIR` or `s3://BUCKET/PREFIX`)
    #[arg(value_name = "URL")]
    cache: String,
    /// Versions to keep (their locked closures, as `store copy` pushes them; comma-separated or
    /// repeated)
    #[arg(
        long,
        value_name = "ID",
        value_delimiter = ',',
        required_unless_present = "keep"
    )]
    keep_versions: Vec<String>,
    /// Store paths to keep too (repeatable)
    #[arg(long, value_name = "PATH")]
    keep: Vec<String>,
    /// Archives no path names that are younger than this may be a push in progress, and stay
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Only say what would go
    #[arg(long)]
    dry_run: bool,
}

pub fn run(command: CacheCommand, context: &Context) -> anyhow::Result<Outcome> {
    let CacheCommand::Prune(args) = command;
    let store = context.open_existing_store()?;
    let mut keep = args.keep.clone();
    for version in &args.keep_versions {
        keep.extend(super::store::copy_roots(&store, version)?);
    }
    let cache = crate::cache::Cache::open(&args.cache)?;
    let report = cache.prune(&keep, args.grace, args.dry_run)?;
    if context.json {
        context.print_json(&report)?;
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for name in &report.removed_paths {
            println!("{verb}\t{name}");
        }
        for key in &report.removed_archives {
            println!("{verb}\t{key}");
        }
    }
    tracing::info!(
        "{} paths kept; {} paths and {} archives {}; {} young archives left for pushes in progress",
        report.kept,
        report.removed_paths.len(),
        report.removed_archives.len(),
        if args.dry_run { "would go" } else { "removed" },
        report.young_archives
    );
    Ok(Outcome::Success)
}
