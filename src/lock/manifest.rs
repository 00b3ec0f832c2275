//! Manifests: a lock stored as a store path that references every path the lock pins (and, for
//! a home, its venv). A home generation's GC root and a pinned version are manifests; the lock
//! inside says what the root keeps alive and where each path came from. One writer, one reader.

use super::Lock;
use crate::store::Add;
use crate::store::{Store, StoreError};

/// Store `lock` as the manifest `name` (sanitized), referencing its paths (without the models'
/// when they are skipped: the store may not hold them) and `extra`.
pub fn write(
    store: &Store,
    name: &str,
    lock: &Lock,
    without_models: bool,
    extra: &[String],
) -> Result<String, StoreError> {
    let is_model = |p: &str| without_models && lock.models.iter().any(|m| m.store_path == p);
    write_leaving_out(store, name, lock, &is_model, extra)
}

/// [`write`], referencing the lock's paths but those `left_out` says (models the store need not
/// hold: skipped, or linked where they lie).
pub fn write_leaving_out(
    store: &Store,
    name: &str,
    lock: &Lock,
    left_out: &dyn Fn(&str) -> bool,
    extra: &[String],
) -> Result<String, StoreError> {
    let mut references: Vec<String> = lock
        .store_paths()
        .into_iter()
        .filter(|p| !left_out(p))
        .map(str::to_string)
        .collect();
    references.extend(extra.iter().cloned());
    let name = crate::store::sanitize_name(name);
    Ok(store
        .add_bytes(&name, lock.to_text().as_bytes(), &references)?
        .record
        .name)
}

/// The lock of the manifest at store path `path`; `None` when it is no manifest.
pub fn read(store: &Store, path: &str) -> Option<Lock> {
    let text = std::fs::read_to_string(store.path_of(path)).ok()?;
    serde_json::from_str(&text).ok()
}
