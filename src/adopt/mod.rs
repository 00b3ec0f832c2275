//! Adopting what people already have: `snapshot` of an install that grew by hand and with
//! ComfyUI-Manager into a spec, and `verify-models` of a models directory against a lock.

pub mod neighbours;
pub mod snapshot;
pub mod verify;

use crate::fetch::FetchError;
use crate::store::Store;

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
