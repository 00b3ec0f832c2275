//! Python requirements read from the core and node trees, and how one wheel is fetched.

use std::path::{Path, PathBuf};

use super::{requirements, Group, PinnedWheel, PythonError, Uv};
use crate::fetch::http::{Download, Got};
use crate::fetch::{Expected, Origin};
use crate::lock::{LockedGit, LockedNode, LockedWheel};
use crate::spec::Spec;
use crate::store::layout::Cache;
use crate::store::Add;
use crate::store::{sanitize_name, AddOptions, Store};

/// The requirement groups of a version whose core and nodes are in the store: the core, each
/// enabled node, then the spec's own.
pub fn groups(
    store: &Store,
    spec: &Spec,
    core: &LockedGit,
    nodes: &[LockedNode],
) -> Result<Vec<Group>, PythonError> {
    let mut out = vec![requirements::of_tree(
        "core",
        &store.path_of(&core.store_path),
    )?];
    for node in nodes.iter().filter(|n| n.enabled) {
        let tree = match (&node.git, &node.registry, &node.local) {
            (Some(g), _, _) => store.path_of(&g.store_path),
            (_, Some(r), _) => store.path_of(&r.store_path),
            (_, _, Some(l)) => std::path::PathBuf::from(&l.path),
            _ => continue,
        };
        out.push(requirements::of_tree(
            &format!("node `{}`", node.name),
            &tree,
        )?);
    }
    out.push(Group {
        origin: "spec".into(),
        requirements: spec
            .python
            .as_ref()
            .map(|p| p.requirements.clone())
            .unwrap_or_default(),
    });
    Ok(out)
}

/// Find uv with the store's cache.
/// uv is `$COMFIX_UV`, else on `PATH`, else the one in the store (`stored_uv`).
pub fn find_uv(store: &Store) -> Result<Uv, PythonError> {
    let (cache, probes) = (store.cache_dir(Cache::Uv), store.cache_dir(Cache::Probes));
    // uv fails on a cache it cannot write, saying only that it found no Python: say what it is.
    for dir in [&cache, &probes] {
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).map_err(Into::into)
            })
            .map_err(|source| PythonError::CacheNotWritable {
                path: dir.clone(),
                source,
            })?;
    }
    match Uv::find(|k| std::env::var(k).ok(), &cache, &probes) {
        Err(PythonError::NoUv) => {
            let Some(exe) = super::stored_uv::stored(store) else {
                return Err(PythonError::NoUv);
            };
            let exe = exe.display().to_string();
            Uv::find(|k| (k == "COMFIX_UV").then(|| exe.clone()), &cache, &probes)
        }
        other => other,
    }
}

/// Where a wheel may come from besides its URL.
pub struct WheelSource<'a> {
    /// `--wheels-dir`: the only place wheels come from when given.
    pub wheels_dir: Option<&'a Path>,
    /// Whether the SHA-256 is the lock's (else the index's), for messages.
    pub from_lock: bool,
}

impl WheelSource<'_> {
    /// Whether fetching `url` needs the network.
    pub fn needs_network(&self, url: Option<&str>) -> bool {
        self.wheels_dir.is_none() && url.is_some_and(|u| !u.starts_with("file:"))
    }
}

/// Put `wheel` into the store: the same file stored already, else from `--wheels-dir`, a
/// `file://` URL, or a download bounded by `jobs`. Returns the store path.
pub async fn fetch_wheel(
    store: &Store,
    client: &crate::fetch::http::Client,
    reporter: &dyn crate::reporter::Reporter,
    source: &WheelSource<'_>,
    wheel: &PinnedWheel,
    jobs: &tokio::sync::Semaphore,
) -> Result<String, PythonError> {
    let what = format!("wheel `{}`", wheel.filename);
    let options = AddOptions {
        name: Some(sanitize_name(&wheel.filename)),
        references: Vec::new(),
    };
    // The same file may be in the store already, for another version's lock.
    if let Some(found) = tokio::task::block_in_place(|| stored_wheel(store, wheel))? {
        return Ok(found);
    }
    if let Some(dir) = source.wheels_dir {
        let file = dir.join(&wheel.filename);
        return tokio::task::block_in_place(|| add_local_wheel(store, &file, wheel, &options, dir));
    }
    let bad_url = || PythonError::BadWheelUrl {
        filename: wheel.filename.clone(),
        url: wheel.url.clone(),
    };
    if wheel.url.is_empty() {
        return Err(PythonError::NoWheelUrl {
            filename: wheel.filename.clone(),
        });
    }
    let url = url::Url::parse(&wheel.url).map_err(|_| bad_url())?;
    if url.scheme() == "file" {
        let file = url.to_file_path().map_err(|()| bad_url())?;
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        return tokio::task::block_in_place(|| {
            add_local_wheel(store, &file, wheel, &options, &dir)
        });
    }
    let _permit = jobs.acquire().await.expect("the semaphore is never closed");
    let from = if source.from_lock {
        Origin::Lock
    } else {
        Origin::Source {
            who: "the package index".into(),
        }
    };
    // A private index's credentials, as uv finds them (an index URL's, `.netrc`): sent to its
    // host only, never written into the lock.
    let auth = crate::fetch::credentials::for_host(&url, &|k| std::env::var(k).ok());
    let download = Download {
        what,
        auth,
        url,
        size: wheel.size,
        sha256: Some(Expected::new(&wheel.sha256, from)),
        blake3: None,
        file_name: wheel.filename.clone(),
        store_name: options.name.clone(),
    };
    match client.download(store, reporter, &download).await? {
        Got::Stored(stored) => Ok(stored.store_path),
        Got::Fetched(fetched) => {
            let fetched = *fetched;
            let digest = fetched.blake3;
            let added = tokio::task::block_in_place(|| {
                store.add_staged(fetched.staging, &wheel.filename, &options, Some(digest))
            })?;
            fetched.receipt.stored(&added.record.name);
            Ok(added.record.name)
        }
    }
}

/// The pin of a locked wheel, to fetch it again.
pub fn pinned_of(wheel: &LockedWheel) -> PinnedWheel {
    PinnedWheel {
        name: wheel.name.clone(),
        version: wheel.version.clone(),
        filename: wheel.filename.clone(),
        url: wheel.url.clone().unwrap_or_default(),
        sha256: wheel.sha256.clone(),
        size: None,
    }
}

/// The lock entry of `wheel`, stored at `store_path` (empty while not fetched).
pub fn locked_of(wheel: &PinnedWheel, store_path: String) -> LockedWheel {
    LockedWheel {
        name: wheel.name.clone(),
        version: wheel.version.clone(),
        filename: wheel.filename.clone(),
        url: (!wheel.url.is_empty()).then(|| wheel.url.clone()),
        sha256: wheel.sha256.clone(),
        store_path,
    }
}

/// A valid store path holding exactly this wheel (same file name and SHA-256), protected.
pub(super) fn stored_wheel(
    store: &Store,
    wheel: &PinnedWheel,
) -> Result<Option<String>, PythonError> {
    for record in store.named(&sanitize_name(&wheel.filename))? {
        store.protect(&[&record.name])?;
        let path = store.path_of(&record.name);
        if sha256_of(&path).is_ok_and(|h| h.eq_ignore_ascii_case(&wheel.sha256)) {
            return Ok(Some(record.name));
        }
    }
    Ok(None)
}

/// Add a wheel from a local directory, checking its SHA-256 against the lock first.
fn add_local_wheel(
    store: &Store,
    file: &Path,
    wheel: &PinnedWheel,
    options: &AddOptions,
    dir: &Path,
) -> Result<String, PythonError> {
    if !file.is_file() {
        return Err(PythonError::MissingWheel {
            filename: wheel.filename.clone(),
            dir: PathBuf::from(dir),
        });
    }
    // One read: copied into a staging directory while both digests are taken, the SHA-256
    // checked on the bytes the store gets (not on a first read of a file that could change
    // before a second), the BLAKE3 handed to the store so it does not read the copy again.
    let mut source = crate::files::open_regular(file).map_err(PythonError::io(file))?;
    let staging = store.staging()?;
    let rel = options.name.clone().unwrap_or_else(|| "wheel".into());
    let staged = staging.path().join(&rel);
    let (_, _, digest, actual) = crate::files::copy_hashing(&mut source, &staged, true, &|_| {})
        .map_err(|e| match e {
            crate::files::CopyError::Read(e) => PythonError::io(file)(e),
            crate::files::CopyError::Write(e) => PythonError::io(&staged)(e),
        })?;
    let actual = actual.unwrap_or_default();
    Expected::new(&wheel.sha256, Origin::Lock).check(
        &format!("wheel `{}`", wheel.filename),
        &file.display().to_string(),
        "SHA-256",
        &actual,
    )?;
    Ok(store
        .add_staged(staging, &rel, options, Some(digest))?
        .record
        .name)
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    crate::files::sha256_hex_of(std::fs::File::open(path)?)
}
