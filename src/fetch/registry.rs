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
use crate::store::Add;
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

/// Ask the registry for `id` at `version` (or the latest version). An id the registry does not
/// know is answered with the ids it knows that are closest (`did you mean`).
pub async fn pin(client: &Client, id: &str, version: Option<&str>) -> Result<Pinned, FetchError> {
    let mut result = ask(client, id, version).await;
    if !matches!(result, Err(FetchError::Status { status: 404, .. })) {
        return result;
    }
    // A missing version of a known node keeps its message; an unknown node gets names.
    let known = version.is_some() && ask(client, id, None).await.is_ok();
    let near = if known {
        Vec::new()
    } else {
        similar(client, id).await
    };
    if let (Err(FetchError::Status { hint, .. }), false) = (&mut result, near.is_empty()) {
        let names: Vec<String> = near.iter().map(|n| format!("`{n}`")).collect();
        *hint = Some(format!(
            "the registry has no node `{id}`; did you mean {}?",
            names.join(", ")
        ));
    }
    result
}

#[derive(Debug, Deserialize)]
struct SearchAnswer {
    #[serde(default)]
    nodes: Vec<SearchNode>,
}

#[derive(Debug, Deserialize)]
struct SearchNode {
    id: String,
}

/// Words of a node id that say nothing about which node it is.
const GENERIC_WORDS: &[&str] = &[
    "comfyui", "comfy", "node", "nodes", "pack", "suite", "custom",
];

/// Up to three ids the registry's search finds for `id` (or, when it finds none, for its two
/// longest telling words), closest first; none when the search fails (it only improves a
/// message).
async fn similar(client: &Client, id: &str) -> Vec<String> {
    let base = &client.config().registry;
    let mut words: Vec<&str> = id
        .split(['-', '_', '.'])
        .filter(|w| w.len() >= 3 && !GENERIC_WORDS.contains(&w.to_lowercase().as_str()))
        .collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    let mut found: Vec<String> = Vec::new();
    for query in std::iter::once(id).chain(words.into_iter().take(2)) {
        let Ok(mut url) = base.join("nodes/search") else {
            return Vec::new();
        };
        url.query_pairs_mut()
            .append_pair("search", query)
            .append_pair("limit", "20");
        if let Ok(answer) = client
            .get_json::<SearchAnswer>("the registry's search", &url, None)
            .await
        {
            found.extend(answer.nodes.into_iter().map(|n| n.id));
        }
        if !found.is_empty() {
            break;
        }
    }
    found.sort();
    found.dedup();
    let wanted = id.to_lowercase();
    let mut scored: Vec<(f64, String)> = found
        .into_iter()
        .map(|n| {
            (
                strsim::normalized_levenshtein(&wanted, &n.to_lowercase()),
                n,
            )
        })
        .filter(|(score, _)| *score >= 0.5)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.into_iter().take(3).map(|(_, n)| n).collect()
}

async fn ask(client: &Client, id: &str, version: Option<&str>) -> Result<Pinned, FetchError> {
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
/// paths, `..`, entries written through a symlink (every create is beneath `dest`, no symlink
/// followed: [`crate::files::Beneath`]), and symlinks that lead outside the package, directly or
/// through the package's other links. Writes `.tracking`.
pub fn unpack(zip: &Path, dest: &Path, url: &str) -> Result<(), FetchError> {
    use crate::files::{Beneath, BeneathError};
    let bad = |at: Option<&str>, source: Box<dyn std::error::Error + Send + Sync>| {
        FetchError::BadArchive {
            url: url.to_string(),
            at: at.map(str::to_string),
            source,
        }
    };
    let unsafe_entry = |entry: &str, reason: &str| FetchError::UnsafeArchive {
        url: url.to_string(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let file = std::fs::File::open(zip).map_err(FetchError::io(zip))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(None, e.into()))?;
    let mut beneath = Beneath::new(dest).map_err(|e| match e {
        BeneathError::Io { path, source } => FetchError::io(path)(source),
        other => bad(None, other.into()),
    })?;
    let refused = |raw: &str, e: BeneathError| match e {
        BeneathError::Through(_) => {
            unsafe_entry(raw, "would be written through a symlink or a file")
        }
        BeneathError::Exists(_) => unsafe_entry(raw, "collides with an earlier entry"),
        BeneathError::NotRelative(_) => unsafe_entry(raw, "has a reserved name"),
        BeneathError::Io { path, source } => FetchError::io(path)(source),
    };
    let mut names = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(None, e.into()))?;
        let raw = entry.name().map_err(|e| bad(None, e.into()))?.to_string();
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
        if entry.is_dir() {
            beneath.create_dir_all(&rel).map_err(|e| refused(&raw, e))?;
            continue;
        }
        let mode = entry.unix_mode().unwrap_or(0o644);
        if mode & 0o170000 == 0o120000 {
            let mut target = String::new();
            entry
                .read_to_string(&mut target)
                .map_err(|e| bad(Some(&raw), e.into()))?;
            let resolved = rel.parent().unwrap_or(Path::new("")).join(&target);
            if Path::new(&target).is_absolute() || !stays_inside(&resolved) {
                return Err(unsafe_entry(
                    &raw,
                    &format!("is a symlink to `{target}`, outside the package"),
                ));
            }
            beneath
                .symlink(&rel, Path::new(&target))
                .map_err(|e| refused(&raw, e))?;
            continue;
        }
        let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        let mut out = beneath
            .create_file(&rel, perm)
            .map_err(|e| refused(&raw, e))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(Some(&raw), e.into()))?;
    }
    // Each link resolved as the kernel would, through the package's other links.
    let leaving =
        crate::files::links_leaving(dest, beneath.links()).map_err(FetchError::io(dest))?;
    if let Some((link, target)) = leaving.first() {
        return Err(unsafe_entry(
            &link.display().to_string(),
            &format!(
                "is a symlink to `{}`, which leads outside the package (through its other links)",
                target.display()
            ),
        ));
    }
    let mut tracking = beneath
        .create_file(Path::new(".tracking"), 0o644)
        .map_err(|e| refused(".tracking", e))?;
    std::io::Write::write_all(&mut tracking, names.join("\n").as_bytes())
        .map_err(FetchError::io(dest.join(".tracking")))?;
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

    /// One zip entry: a directory, a file, or a symlink to a target.
    #[derive(Debug, Clone)]
    enum Item {
        Dir(String),
        File(String),
        Link(String, String),
    }

    fn zip_of(items: &[Item]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        for item in items {
            // The writer itself refuses some names; the fuzzer only needs what it accepts.
            let _ = match item {
                Item::Dir(name) => zip.add_directory(name, options),
                Item::File(name) => zip
                    .start_file(name, options)
                    .and_then(|()| std::io::Write::write_all(&mut zip, b"x").map_err(Into::into)),
                Item::Link(name, target) => zip.add_symlink(name, target, options),
            };
        }
        zip.finish().unwrap().into_inner()
    }

    /// Everything under `dir` (relative paths), not following links.
    fn listing(dir: &Path) -> Vec<std::path::PathBuf> {
        walkdir::WalkDir::new(dir)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .flatten()
            .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
            .collect()
    }

    /// Unpack `items` into `sandbox/dest` beside `sandbox/outside` (a directory with a file);
    /// check nothing outside `dest` changed, and, when unpacked, that every link stays inside.
    fn unpack_contained(sandbox: &Path, items: &[Item]) -> Result<(), super::FetchError> {
        let outside = sandbox.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep.txt"), b"keep").unwrap();
        let before = listing(sandbox);
        let zip = sandbox.join("package.zip");
        std::fs::write(&zip, zip_of(items)).unwrap();
        let dest = sandbox.join("dest");
        let result = super::unpack(&zip, &dest, "http://127.0.0.1/package.zip");
        let after: Vec<_> = listing(sandbox)
            .into_iter()
            .filter(|p| !p.starts_with("dest") && p != Path::new("package.zip"))
            .collect();
        let before: Vec<_> = before
            .into_iter()
            .filter(|p| !p.starts_with("dest"))
            .collect();
        assert_eq!(
            after, before,
            "something was written outside `dest`: {items:?}"
        );
        assert_eq!(std::fs::read(outside.join("keep.txt")).unwrap(), b"keep");
        if result.is_ok() {
            for link in listing(&dest) {
                let at = dest.join(&link);
                if std::fs::symlink_metadata(&at)
                    .unwrap()
                    .file_type()
                    .is_symlink()
                {
                    if let Ok(real) = std::fs::canonicalize(&at) {
                        let root = std::fs::canonicalize(&dest).unwrap();
                        assert!(
                            real.starts_with(&root),
                            "{link:?} leads to {real:?}: {items:?}"
                        );
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dest);
        let _ = std::fs::remove_file(&zip);
        result
    }

    /// The five-entry zip that escaped before: a link to `..`, a chain of links through it, and
    /// a file written through the chain. Refused; nothing lands outside.
    #[test]
    fn a_chain_of_links_cannot_carry_a_file_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = tmp.path().join("a/b/c");
        std::fs::create_dir_all(&sandbox).unwrap();
        let items = [
            Item::Dir("d/".into()),
            Item::Link("d/l".into(), "..".into()),
            Item::Link("d/l/d/l/d/l/E".into(), "../../../..".into()),
            Item::File("d/l/d/l/d/l/E/pwned.txt".into()),
            Item::File("pyproject.toml".into()),
        ];
        let err = unpack_contained(&sandbox, &items).unwrap_err();
        assert!(err.to_string().contains("through a symlink"), "{err}");
        assert!(!tmp.path().join("a/pwned.txt").exists());
        // Links that only lead out through other links are refused too.
        let items = [
            Item::Dir("d/".into()),
            Item::Link("d/up".into(), "..".into()),
            Item::Link("x".into(), "d/up/d/up/..".into()),
        ];
        let err = unpack_contained(&sandbox, &items).unwrap_err();
        assert!(err.to_string().contains("outside the package"), "{err}");
        // A link planted beside an entry's directory before it: never followed.
        let items = [
            Item::Link("e".into(), "d".into()),
            Item::Dir("d/".into()),
            Item::File("e/f.txt".into()),
        ];
        let err = unpack_contained(&sandbox, &items).unwrap_err();
        assert!(err.to_string().contains("through a symlink"), "{err}");
        // What stays inside unpacks.
        let items = [
            Item::Dir("d/".into()),
            Item::File("d/a.py".into()),
            Item::Link("d/b.py".into(), "a.py".into()),
            Item::Link("top".into(), "d/../d/a.py".into()),
        ];
        unpack_contained(&sandbox, &items).unwrap();
    }

    /// A few thousand generated archives — links to `..` and to each other, chains, loops,
    /// duplicate names, case twins, long names, files under links — never write outside the
    /// destination, and every one that unpacks keeps its links inside.
    #[test]
    fn generated_archives_never_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = tmp.path().join("s/t/u");
        std::fs::create_dir_all(&sandbox).unwrap();
        let mut rng = blake3::Hasher::new().update(b"comfix-fuzz").finalize_xof();
        let mut byte = || {
            let mut b = [0u8; 1];
            rng.fill(&mut b);
            b[0] as usize
        };
        let names = [
            "a",
            "b",
            "A",
            "d",
            "d/a",
            "d/b",
            "d/d",
            "a/b",
            "a/b/c",
            "x",
            &"n".repeat(200),
        ];
        let targets = [
            "..",
            "../..",
            "../../..",
            "a",
            "d",
            "d/a",
            ".",
            "a/..",
            "d/../..",
            "b/../..",
            "/tmp",
            "x/y",
            "d/d/..",
            "../u/dest",
            "../../t/u/outside",
        ];
        let (mut unpacked, mut refused) = (0, 0);
        for _ in 0..3000 {
            let count = 1 + byte() % 6;
            let mut items = Vec::new();
            for _ in 0..count {
                let mut name = names[byte() % names.len()].to_string();
                if byte() % 4 == 0 {
                    name = format!("{}/{}", names[byte() % names.len()], name);
                }
                items.push(match byte() % 3 {
                    0 => Item::Dir(format!("{name}/")),
                    1 => Item::File(name),
                    _ => Item::Link(name, targets[byte() % targets.len()].to_string()),
                });
            }
            match unpack_contained(&sandbox, &items) {
                Ok(()) => unpacked += 1,
                Err(_) => refused += 1,
            }
        }
        // Both outcomes were exercised.
        assert!(
            unpacked > 100 && refused > 100,
            "{unpacked} unpacked, {refused} refused"
        );
    }
}
