//! `comfix verify-models`: every model a lock pins, checked by digest in a models directory, as
//! the original tool's `verify_models.py` did: missing, wrong bytes, and the files no model of
//! the lock names.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::lock::{Lock, LockedModel};

/// What one model's file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum ModelState {
    Ok,
    Missing,
    /// Other bytes than the lock's.
    Wrong {
        found: Found,
    },
    /// Not a file (a directory, a dangling link) or not readable.
    Unreadable {
        reason: String,
    },
}

/// The size and BLAKE3 of the bytes found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub size: u64,
    pub blake3: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCheck {
    /// Relative to the models directory (`<target_subdir>/<filename>`).
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub blake3: String,
    pub size: u64,
    #[serde(flatten)]
    pub state: ModelState,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub models: Vec<ModelCheck>,
    /// Files under the models directory that no model of the lock names.
    pub extra: Vec<String>,
    /// Entries that could not be walked (a symlink loop, an unreadable directory).
    pub unwalkable: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.models.iter().all(|m| m.state == ModelState::Ok)
    }
}

/// The file of `model` relative to a models directory, as realize places it.
pub fn model_file(model: &LockedModel) -> String {
    match &model.target_subdir {
        Some(sub) => format!("{sub}/{}", model.filename),
        None => model.filename.clone(),
    }
}

/// The state of the file at `path` against `model`: sizes first, BLAKE3 only when they agree.
pub fn check_file(path: &Path, model: &LockedModel) -> ModelState {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match fs::symlink_metadata(path) {
                Ok(_) => ModelState::Unreadable {
                    reason: "a link to nothing".into(),
                },
                Err(_) => ModelState::Missing,
            }
        }
        Err(e) => {
            return ModelState::Unreadable {
                reason: e.to_string(),
            }
        }
    };
    if !meta.is_file() {
        return ModelState::Unreadable {
            reason: "not a file".into(),
        };
    }
    let digest = match crate::store::tree::hash_file(path, meta.len()) {
        Ok(digest) => blake3::Hash::from(digest).to_hex().to_string(),
        Err(e) => {
            return ModelState::Unreadable {
                reason: e.to_string(),
            }
        }
    };
    if meta.len() == model.size && digest == model.blake3 {
        ModelState::Ok
    } else {
        ModelState::Wrong {
            found: Found {
                size: meta.len(),
                blake3: digest,
            },
        }
    }
}

/// Check every model of `lock` in `dir`, and list the files there that none names.
pub fn verify_models(lock: &Lock, dir: &Path) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut expected = std::collections::BTreeSet::new();
    for model in &lock.models {
        let file = model_file(model);
        let state = check_file(&dir.join(&file), model);
        expected.insert(file.clone());
        report.models.push(ModelCheck {
            file,
            name: model.name.clone(),
            blake3: model.blake3.clone(),
            size: model.size,
            state,
        });
    }
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        match entry {
            Ok(entry) if entry.file_type().is_file() => {
                let rel = relative(dir, entry.path());
                if !expected.contains(&rel) {
                    report.extra.push(rel);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let at = e.path().map(|p| relative(dir, p)).unwrap_or_default();
                report.unwalkable.push(format!("{at}: {e}"));
            }
        }
    }
    report
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Put the bytes of store path `from` (a model's file) at `dir/file`, replacing what is there
/// only once the new file is whole.
pub fn place(from: &Path, dir: &Path, file: &str) -> std::io::Result<PathBuf> {
    let to = dir.join(file);
    let parent = to.parent().unwrap_or(dir).to_path_buf();
    fs::create_dir_all(&parent)?;
    let temp = tempfile::Builder::new()
        .prefix(".comfix-fix-")
        .tempfile_in(&parent)?;
    fs::copy(from, temp.path())?;
    // The store's files are read-only; the user's copy is theirs.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o644))?;
    temp.as_file().sync_all()?;
    if fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
        return Err(std::io::Error::other(format!(
            "`{}` is a directory",
            to.display()
        )));
    }
    temp.persist(&to).map_err(|e| e.error)?;
    Ok(to)
}
