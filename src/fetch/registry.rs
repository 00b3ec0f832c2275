//! Comfy Node Registry packages: the version endpoint gives a download URL, the zip is fetched and
//! unpacked safely into a store path laid out as ComfyUI-Manager installs it, with `.tracking`
//! (the zip's name list, one per line, directories with their trailing `/`).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use url::Url;

use super::http::{Client, Download, Got};
use super::FetchError;
use crate::reporter::Reporter;
use crate::store::{AddOptions, Added, Store};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionInfo {
    version: Option<String>,
    download_url: String,
}

#[derive(Debug, Deserialize)]
struct NodeInfo {
    latest_version: Option<VersionInfo>,
}

/// A registry version pinned to its download URL.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub version: String,
    pub download_url: String,
}

/// Ask the registry for `id` at `version` (or the latest version).
pub async fn pin(client: &Client, id: &str, version: Option<&str>) -> Result<Pinned, FetchError> {
    let base = &client.config().registry;
    let what = format!("registry node `{id}`");
    let join = |path: &str| {
        base.join(path).map_err(|e| FetchError::Config {
            message: format!("bad registry URL `{base}`: {e}"),
        })
    };
    match version {
        Some(version) => {
            let url = join(&format!("nodes/{id}/versions/{version}"))?;
            let info: VersionInfo = client.get_json(&what, &url, None).await?;
            Ok(Pinned {
                version: info.version.unwrap_or_else(|| version.to_string()),
                download_url: info.download_url,
            })
        }
        None => {
            let url = join(&format!("nodes/{id}"))?;
            let info: NodeInfo = client.get_json(&what, &url, None).await?;
            let latest = info.latest_version.ok_or_else(|| FetchError::BadAnswer {
                what: what.clone(),
                message: "the registry lists no version".into(),
            })?;
            Ok(Pinned {
                version: latest.version.ok_or_else(|| FetchError::BadAnswer {
                    what,
                    message: "the registry's latest version has no number".into(),
                })?,
                download_url: latest.download_url,
            })
        }
    }
}

/// Download the zip (checked against `blake3` when the lock has it), unpack it safely and add it
/// to the store. Returns the zip's BLAKE3 and the store path.
pub async fn fetch(
    client: &Client,
    store: &Store,
    reporter: &dyn Reporter,
    id: &str,
    version: &str,
    download_url: &str,
    blake3: Option<&str>,
) -> Result<(String, Added), FetchError> {
    let url = Url::parse(download_url).map_err(|e| FetchError::BadUrl {
        what: format!("registry node `{id}`"),
        url: download_url.to_string(),
        reason: e.to_string(),
    })?;
    let name = crate::store::sanitize_name(&format!("{id}-{version}"));
    let download = Download {
        what: format!("registry node `{id}` {version}"),
        url,
        auth: None,
        size: None,
        sha256: None,
        blake3: blake3.map(|b| super::Expected::new(b, super::Origin::Lock)),
        file_name: "package.zip".into(),
        store_name: Some(name.clone()),
    };
    let fetched = match client.download(store, reporter, &download).await? {
        Got::Fetched(fetched) => *fetched,
        Got::Stored(stored) => {
            if let Some(added) = store.existing(&stored.store_path)? {
                return Ok((stored.blake3, added));
            }
            return Err(FetchError::Vanished {
                what: download.what.clone(),
                path: stored.store_path,
            });
        }
    };
    let zip_blake3 = blake3::Hash::from(fetched.blake3).to_hex().to_string();
    let zip_path = fetched.staging.path().join(&fetched.file_name);
    let root = fetched.staging.path().join("package");
    let added = {
        let root = root.clone();
        let url = download_url.to_string();
        tokio::task::block_in_place(move || -> Result<Added, FetchError> {
            unpack(&zip_path, &root, &url)?;
            std::fs::remove_file(&zip_path).map_err(FetchError::io(&zip_path))?;
            let options = AddOptions {
                name: Some(name),
                references: Vec::new(),
            };
            Ok(store.add_staged(fetched.staging, "package", &options, None)?)
        })?
    };
    fetched.receipt.stored(&added.record.name);
    Ok((zip_blake3, added))
}

/// Unpack `zip` into `dest` (created), refusing any entry that would land outside it: absolute
/// paths, `..`, and symlinks whose target leaves the package. Writes `.tracking`.
pub fn unpack(zip: &Path, dest: &Path, url: &str) -> Result<(), FetchError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |message: String| FetchError::BadArchive {
        url: url.to_string(),
        message,
    };
    let unsafe_entry = |entry: &str, reason: &str| FetchError::UnsafeArchive {
        url: url.to_string(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let file = std::fs::File::open(zip).map_err(FetchError::io(zip))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(dest).map_err(FetchError::io(dest))?;
    let mut names = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        let raw = entry.name().to_string();
        let rel = safe_relative(&raw).ok_or_else(|| {
            unsafe_entry(
                &raw,
                "has an absolute path or `..` and would be written outside the package",
            )
        })?;
        if rel.as_os_str().is_empty() || rel == Path::new(".tracking") {
            return Err(unsafe_entry(&raw, "has a reserved name"));
        }
        names.push(raw.clone());
        let path = dest.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(FetchError::io(parent))?;
        }
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(FetchError::io(&path))?;
            continue;
        }
        let mode = entry.unix_mode().unwrap_or(0o644);
        if mode & 0o170000 == 0o120000 {
            let mut target = String::new();
            entry
                .read_to_string(&mut target)
                .map_err(|e| bad(e.to_string()))?;
            let resolved = rel.parent().unwrap_or(Path::new("")).join(&target);
            if Path::new(&target).is_absolute() || !stays_inside(&resolved) {
                return Err(unsafe_entry(
                    &raw,
                    &format!("is a symlink to `{target}`, outside the package"),
                ));
            }
            std::os::unix::fs::symlink(&target, &path).map_err(FetchError::io(&path))?;
            continue;
        }
        // create_new: a second entry for the same path (or one through a symlink) is refused.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|_| unsafe_entry(&raw, "collides with an earlier entry"))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(format!("`{raw}`: {e}")))?;
        let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm))
            .map_err(FetchError::io(&path))?;
    }
    let tracking = dest.join(".tracking");
    std::fs::write(&tracking, names.join("\n")).map_err(FetchError::io(&tracking))?;
    Ok(())
}

/// An archive entry name as a relative path, or `None` when it is absolute, contains `..`, a NUL
/// or a backslash (which other unpackers treat as a separator).
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\0') || name.contains('\\') {
        return None;
    }
    let mut out = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether `path` (relative, possibly with `..`) stays inside its root once normalized.
fn stays_inside(path: &Path) -> bool {
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{safe_relative, stays_inside};
    use std::path::Path;

    #[test]
    fn entries_outside_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/../b",
            "a\\..\\b",
            "\0",
        ] {
            assert!(safe_relative(bad).is_none(), "{bad:?}");
        }
        assert_eq!(safe_relative("a/b.py").unwrap(), Path::new("a/b.py"));
        assert_eq!(safe_relative("./a/").unwrap(), Path::new("a"));
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        assert!(stays_inside(Path::new("a/../b")));
        assert!(stays_inside(Path::new("a/b/../../c")));
        assert!(!stays_inside(Path::new("a/../../etc")));
        assert!(!stays_inside(Path::new("/etc")));
    }
}
