//! Adopting what people already have: `snapshot` of an install that grew by hand and with
//! ComfyUI-Manager into a spec, and `verify-models` of a models directory against a lock.

pub mod neighbours;
pub mod snapshot;
pub mod verify;

use crate::fetch::{local, FetchError};
use crate::reporter::Reporter;
use crate::store::{sanitize_name, AddOptions, Store};

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
/// the same install) is hashed, not copied again. A file the local-file policy refuses or that
/// cannot be read moves to `unreadable`; the install is never changed.
pub fn ingest_models(
    store: &Store,
    report: &mut snapshot::Report,
    reporter: &dyn Reporter,
) -> Result<(), FetchError> {
    let total = report.models.iter().map(|m| m.size).sum();
    reporter.start(
        &format!("hashing {} models", report.models.len()),
        Some(total),
    );
    let mut kept = Vec::new();
    for mut model in std::mem::take(&mut report.models) {
        match ingest(store, &model, reporter) {
            Ok(digest) => {
                model.blake3 = Some(digest);
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
    Ok(())
}

/// One model into the store: its BLAKE3.
fn ingest(
    store: &Store,
    model: &snapshot::ModelFound,
    reporter: &dyn Reporter,
) -> Result<String, FetchError> {
    let name = sanitize_name(&model.filename);
    let what = format!("model `{}`", model.file);
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
            reporter.advance(model.size);
            return Ok(blake3::Hash::from(digest).to_hex().to_string());
        }
    }
    let staged = local::stage(store, &what, &model.path, "model", None, None, &|n| {
        reporter.advance(n)
    })?;
    let options = AddOptions {
        name: Some(name),
        references: Vec::new(),
    };
    let digest = staged.blake3;
    store.add_staged(staged.staging, "model", &options, Some(digest))?;
    Ok(blake3::Hash::from(digest).to_hex().to_string())
}
