//! `comfix models …`: the models index — folders of models this machine already has, taken
//! (verified) instead of downloaded.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Context, Outcome};
use crate::fetch::indexed;
use crate::units::format_bytes;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Hash the files of model folders (once; again only when a file's stat tuple changes) so
    /// that a model a lock asks for is taken from them, verified, instead of downloaded. With no
    /// folder: every folder indexed before, again
    #[command(
        after_help = "Examples:\n  comfix models index ~/ComfyUI/models /runpod-volume/models\n  comfix models index"
    )]
    Index(IndexArgs),
    /// Say what a file holds: its digests, whether the index knows it, the store paths with its
    /// bytes
    #[command(
        after_help = "Examples:\n  comfix models which ~/ComfyUI/models/vae/wan_2.1_vae.safetensors"
    )]
    Which(WhichArgs),
    /// List the folders of the index (with --files, every file and its digest)
    #[command(after_help = "Examples:\n  comfix models ls\n  comfix models ls --files --json")]
    Ls(LsArgs),
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Folders to index (and keep indexed)
    #[arg(value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WhichArgs {
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Every file, not only the folders
    #[arg(long)]
    files: bool,
}

#[derive(Serialize)]
struct Which {
    file: PathBuf,
    size: u64,
    blake3: String,
    /// The index knows it with this stat tuple (nothing was read).
    indexed: bool,
    store_paths: Vec<String>,
}

#[derive(Serialize)]
struct Folder {
    path: PathBuf,
    files: usize,
    bytes: u64,
    /// Files changed since indexed (not taken until indexed again).
    changed: usize,
}

pub fn run(command: ModelsCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        ModelsCommand::Index(args) => index(args, context),
        ModelsCommand::Which(args) => which(args, context),
        ModelsCommand::Ls(args) => ls(args, context),
    }
}

fn index(args: IndexArgs, context: &Context) -> anyhow::Result<Outcome> {
    let store = context.open_store()?;
    let reporter = context.reporter();
    let report = indexed::index(&store, &args.dirs, reporter.as_ref())?;
    for skipped in &report.skipped {
        tracing::warn!(
            "`{}` not indexed: {}",
            skipped.file.display(),
            skipped.reason
        );
    }
    if context.json {
        context.print_json(&report)?;
    } else {
        for folder in &report.folders {
            println!("{}", folder.display());
        }
    }
    tracing::info!(
        "{} files in {} folders; {} hashed ({}), {} gone and forgotten",
        report.files,
        report.folders.len(),
        report.hashed,
        format_bytes(report.hashed_bytes),
        report.forgotten
    );
    Ok(Outcome::Success)
}

fn which(args: WhichArgs, context: &Context) -> anyhow::Result<Outcome> {
    let store = context.open_store()?;
    let (stamp, blake3, indexed) = indexed::digest_of(&store, &args.file)?;
    let digest = blake3::Hash::from_hex(&blake3)?;
    let store_paths = store
        .files_with_digest(stamp.size, digest.as_bytes())?
        .into_iter()
        .map(|record| record.name)
        .collect();
    let which = Which {
        file: args.file,
        size: stamp.size,
        blake3,
        indexed,
        store_paths,
    };
    if context.json {
        context.print_json(&which)?;
        return Ok(Outcome::Success);
    }
    println!("{}", which.file.display());
    println!("  size    {}", format_bytes(which.size));
    println!("  blake3  {}", which.blake3);
    let known = if which.indexed { "yes" } else { "no" };
    println!("  indexed {known}");
    for name in &which.store_paths {
        println!("  in the store as {name}");
    }
    Ok(Outcome::Success)
}

fn ls(args: LsArgs, context: &Context) -> anyhow::Result<Outcome> {
    let store = context.open_existing_store()?;
    let files = indexed::files(&store, None)?;
    if args.files {
        if context.json {
            context.print_json(&files)?;
        } else {
            for file in &files {
                let changed = if file.changed { "\tchanged" } else { "" };
                println!("{}\t{}\t{}{changed}", file.blake3, file.size, file.path);
            }
        }
        return Ok(Outcome::Success);
    }
    let mut folders: Vec<Folder> = store
        .model_folders()?
        .into_iter()
        .map(|path| Folder {
            path,
            files: 0,
            bytes: 0,
            changed: 0,
        })
        .collect();
    for file in &files {
        // The innermost folder holding it.
        if let Some(folder) = folders
            .iter_mut()
            .filter(|f| std::path::Path::new(&file.path).starts_with(&f.path))
            .max_by_key(|f| f.path.as_os_str().len())
        {
            folder.files += 1;
            folder.bytes += file.size;
            folder.changed += usize::from(file.changed);
        }
    }
    if context.json {
        context.print_json(&folders)?;
    } else {
        for folder in &folders {
            let changed = match folder.changed {
                0 => String::new(),
                n => format!(", {n} changed since indexed"),
            };
            println!(
                "{}\t{} files, {}{changed}",
                folder.path.display(),
                folder.files,
                format_bytes(folder.bytes)
            );
        }
    }
    Ok(Outcome::Success)
}
