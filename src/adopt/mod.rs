//! Adopting what people already have: `snapshot` of an install that grew by hand and with
//! ComfyUI-Manager into a spec, and `verify-models` of a models directory against a lock.

pub mod neighbours;
pub mod snapshot;
pub mod verify_models;

use std::path::{Path, PathBuf};

use crate::fetch::{local, FetchError};
use crate::reporter::Reporter;
use crate::store::{sanitize_name, Store};

/// Put the commits of the install's git checkouts (core and nodes) into the store's mirrors of
/// their origins, so the snapshot's spec resolves and realizes without asking the origins (which
/// may be unreachable, or lack an unpushed commit).
pub fn seed_mirrors(store: &Store, report: &snapshot::Report) -> Result<(), FetchError> {
    if let Some(core) = &report.core {
        if let Some(commit) = &core.commit {
            crate::fetch::git::seed_mirror(store, &core.repo, &core.dir, commit)?;
        }
    }
    for node in &report.nodes {
        if let (Some(repo), Some(commit)) = (&node.repo, &node.commit) {
            crate::fetch::git::seed_mirror(store, repo, &node.path, commit)?;
        }
    }
    Ok(())
}

/// Put every model of the report into the store, each file read once, and record its BLAKE3 in
/// the report. A model the store holds already (same name, size and bytes: a second snapshot of
/// the same install) is hashed, not copied again — and not even read when its stat tuple is the
/// one it had when it was last hashed (the store's db remembers, as git's index does). A file the
/// local-file policy refuses or that cannot be read moves to `unreadable`; the install is never changed, but with `link_models`
/// (the install's directory): then a file of the install itself — a regular file under that
/// directory, not a link to one elsewhere (a Hugging Face cache's blob, a folder on another disk)
/// — that the store could take as a hard link (same filesystem, no other link) is taken so (no
/// copy) and at once replaced by a link into the store, rooted by that link. A file outside the
/// install is copied: its mode and bytes stay its owner's. Returns the files so replaced.
pub fn ingest_models(
    store: &Store,
    report: &mut snapshot::Report,
    reporter: &dyn Reporter,
    link_models: Option<&Path>,
) -> Result<Vec<PathBuf>, FetchError> {
    let total = report.models.iter().map(|m| m.size).sum();
    reporter.start(
        &format!("hashing {} models", report.models.len()),
        Some(total),
    );
    let mut kept = Vec::new();
    let mut linked = Vec::new();
    let root = link_models.map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.to_path_buf()));
    for mut model in std::mem::take(&mut report.models) {
        let belongs = root.as_ref().is_some_and(|root| {
            std::fs::symlink_metadata(&model.path).is_ok_and(|m| m.is_file())
                && std::fs::canonicalize(&model.path).is_ok_and(|real| real.starts_with(root))
        });
        match ingest(store, &model, reporter, belongs) {
            Ok((digest, link)) => {
                model.blake3 = Some(digest);
                linked.extend(link);
                kept.push(model);
            }
            Err(e @ FetchError::LocalSource { .. }) => {
                report
                    .unreadable
                    .push(snapshot::problem(&model.path, e.to_string()));
            }
            Err(FetchError::Io { path, source }) if path == model.path => {
                report
                    .unreadable
                    .push(snapshot::problem(&model.path, source.to_string()));
            }
            Err(e) => {
                reporter.finish();
                return Err(e);
            }
        }
    }
    reporter.finish();
    report.models = kept;
    Ok(linked)
}

/// One model into the store: its BLAKE3, and the install's file when it is now a link.
fn ingest(
    store: &Store,
    model: &snapshot::ModelFound,
    reporter: &dyn Reporter,
    link_models: bool,
) -> Result<(String, Option<PathBuf>), FetchError> {
    let name = sanitize_name(&model.filename);
    let what = format!("model `{}`", model.file);
    let path = std::path::absolute(&model.path).map_err(FetchError::io(&model.path))?;
    // Unchanged since a snapshot hashed it, and still in the store: not read at all.
    if let Some(digest) = store.known_digest(&path)? {
        if let Some(record) = store.find_file(&name, &digest)? {
            tracing::info!(
                "{what}: unchanged since it was hashed, in the store as `{}`",
                record.name
            );
            reporter.advance(model.size);
            return Ok((blake3::Hash::from(digest).to_hex().to_string(), None));
        }
    }
    let before = std::fs::metadata(&path)
        .map(|m| crate::store::db::FileStamp::of(&m))
        .map_err(FetchError::io(&model.path))?;
    let stored_same_size = store
        .named(&name)?
        .iter()
        .any(|r| r.kind == "file" && r.size == model.size);
    if stored_same_size {
        let digest = crate::store::tree::hash_file(&model.path, model.size)
            .map_err(FetchError::io(&model.path))?;
        if let Some(record) = store.find_file(&name, &digest)? {
            tracing::info!(
                "{what}: already in the store as `{}` (hashed, not copied)",
                record.name
            );
            store.remember_digest(&path, &before, &digest)?;
            reporter.advance(model.size);
            return Ok((blake3::Hash::from(digest).to_hex().to_string(), None));
        }
    }
    let added = local::add_file(
        store,
        &what,
        &model.path,
        &model.filename,
        &local::How {
            sha256: None,
            blake3: None,
            progress: &|n| reporter.advance(n),
            hard_link: link_models,
            asked_by_digest: false,
        },
    )?;
    let hex = blake3::Hash::from(added.blake3).to_hex().to_string();
    if !added.linked {
        store.remember_digest(&path, &before, &added.blake3)?;
        return Ok((hex, None));
    }
    // The install's file is the store's object now: make it a link into the store at once.
    store.add_link_root(&model.path, &added.store_path)?;
    link_into_store(&model.path, &store.path_of(&added.store_path))
        .map_err(FetchError::io(&model.path))?;
    // What the link leads to now is the store's (immutable) object.
    if let Ok(meta) = std::fs::metadata(&path) {
        store.remember_digest(
            &path,
            &crate::store::db::FileStamp::of(&meta),
            &added.blake3,
        )?;
    }
    Ok((hex, Some(model.path.clone())))
}

/// Replace `original` by a symlink to `stored`, atomically (a link beside it, renamed over it).
pub fn link_into_store(original: &Path, stored: &Path) -> std::io::Result<()> {
    let dir = original.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(
        ".comfix-link-{}-{}",
        std::process::id(),
        original.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(stored, &temp)?;
    if let Err(e) = std::fs::rename(&temp, original) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(())
}
