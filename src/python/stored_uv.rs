//! uv from the store: where uv is not on this machine, comfix's pinned uv is taken from PyPI's
//! wheel (its SHA-256 pinned here) into the store as `<digest>-uv-<version>` (`bin/uv`), kept by
//! the pin `pin:comfix-uv`, and used from there; offline, only a store that holds it (an imported
//! closure carries it) can serve.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::uv::UV_VERSION;
use super::PythonError;
use crate::fetch::http::{Client, Download, Got};
use crate::fetch::{Expected, Origin};
use crate::reporter::Reporter;
use crate::store::Add;
use crate::store::{sanitize_name, AddOptions, Store};

/// The pinned wheels of [`UV_VERSION`], per machine architecture: path under PyPI's files (as
/// its index names it) and SHA-256.
const WHEELS: &[(&str, &str, &str)] = &[
    (
        "x86_64",
        "c5/32/52ee34636aea1ab3f8baeeae1c3599461b8cddfb379862cc72ac61b8d91c/\
         uv-0.13.8-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "e18a57b8b352eb7c8feb317b9f6f533c8f0ad9673fd6cf34bbe3cf1a9f6a8984",
    ),
    (
        "aarch64",
        "9e/f0/d989ac5fcebf83f1c8c5d78974f27788e8364945969eb646f5d0db35d924/\
         uv-0.13.8-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
        "0b3e8b1a4f5e405e31e2ff33de8af4744831e9f7338539671efbd8c3c94e791d",
    ),
];

/// PyPI's files, by the paths its simple index gives (the short form
/// `/packages/<python tag>/<letter>/<project>/<file>` is not served everywhere).
const FILES: &str = "https://files.pythonhosted.org/packages/";

/// The store path name part of the stored uv.
fn path_name() -> String {
    sanitize_name(&format!("uv-{UV_VERSION}"))
}

/// Where the wheel comes from and its SHA-256: `COMFIX_UV_WHEEL_URL` and
/// `COMFIX_UV_WHEEL_SHA256` (a mirror, an air gap's file server), else PyPI and the pin above.
fn wheel(env: impl Fn(&str) -> Option<String>) -> Option<(String, String, String)> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let (Some(url), Some(sha256)) = (set("COMFIX_UV_WHEEL_URL"), set("COMFIX_UV_WHEEL_SHA256")) {
        let file = url.rsplit('/').next().unwrap_or("uv.whl").to_string();
        return Some((url, file, sha256));
    }
    WHEELS
        .iter()
        .find(|(arch, _, _)| *arch == std::env::consts::ARCH)
        .map(|(_, path, sha)| {
            let file = path.rsplit('/').next().unwrap_or(path);
            (format!("{FILES}{path}"), file.to_string(), sha.to_string())
        })
}

/// The store path of a valid stored uv, protected for this process: the pinned version, else
/// the one the pin `pin:comfix-uv` names (a machine's own uv, stored by an export).
pub fn stored_path(store: &Store) -> Option<String> {
    let name = match store.named(&path_name()).ok()?.into_iter().next() {
        Some(record) => record.name,
        None => {
            store
                .roots()
                .ok()?
                .into_iter()
                .find(|r| r.name == format!("pin:{PIN}"))?
                .path
        }
    };
    let record = store.valid(&name).ok()??;
    store
        .path_of(&record.name)
        .join("bin/uv")
        .is_file()
        .then_some(record.name)
}

/// The pin that keeps the stored uv.
const PIN: &str = "comfix-uv";

/// Store `uv` (the machine's, found on `PATH` or as `COMFIX_UV`) as `<digest>-uv-<version>`,
/// pinned, unless the store holds a uv already: a closure of a Python version carries the uv it
/// was built with, so a machine without uv realizes it offline. Returns the stored path.
pub fn store_machine_uv(store: &Store, uv: &super::Uv) -> Result<String, PythonError> {
    if let Some(path) = stored_path(store) {
        return Ok(path);
    }
    let staging = store.staging()?;
    let bin = staging.path().join("uv/bin");
    std::fs::create_dir_all(&bin).map_err(PythonError::io(&bin))?;
    let exe = bin.join("uv");
    std::fs::copy(&uv.exe, &exe).map_err(PythonError::io(&uv.exe))?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
        .map_err(PythonError::io(&exe))?;
    let options = AddOptions {
        name: Some(sanitize_name(&format!("uv-{}", uv.version))),
        references: Vec::new(),
    };
    let added = store.add_staged(staging, "uv", &options, None)?;
    store.pin(PIN, &added.record.name)?;
    tracing::info!(
        "stored this machine's uv {} (`{}`) as `{}`, for the closure",
        uv.version,
        uv.exe.display(),
        added.record.name
    );
    Ok(added.record.name)
}

/// The uv executable of a valid stored uv, protected for this process.
pub fn stored(store: &Store) -> Option<PathBuf> {
    stored_path(store).map(|name| store.path_of(&name).join("bin/uv"))
}

/// Make sure uv can be found: on this machine, in the store, or fetched into the store from its
/// pinned wheel (not offline).
///
/// Returns whether it was fetched now. `online` is the executor's word on connectivity.
pub async fn ensure(
    store: &Store,
    client: &Client,
    reporter: &dyn Reporter,
    online: bool,
) -> Result<bool, PythonError> {
    if super::find_uv(store).is_ok() {
        return Ok(false);
    }
    let env = |k: &str| std::env::var(k).ok();
    let Some((url, file, sha256)) = wheel(env) else {
        return Err(PythonError::NoUv);
    };
    if !online {
        return Err(PythonError::NoUv);
    }
    tracing::info!("uv is not on this machine; fetching uv {UV_VERSION} into the store");
    let parsed = url::Url::parse(&url).map_err(|_| PythonError::BadWheelUrl {
        filename: file.clone(),
        url: url.clone(),
    })?;
    let download = Download {
        what: format!("uv {UV_VERSION}"),
        auth: None,
        url: parsed,
        size: None,
        sha256: Some(Expected::new(
            &sha256,
            Origin::Source {
                who: "comfix's pin of uv".into(),
            },
        )),
        blake3: None,
        file_name: file.clone(),
        store_name: None,
    };
    let unavailable = |reason: String| PythonError::UvUnavailable { reason };
    let fetched = match client.download(store, reporter, &download).await {
        Ok(Got::Fetched(fetched)) => *fetched,
        Ok(Got::Stored(_)) => return Err(unavailable("the download was not kept".into())),
        Err(err) => return Err(unavailable(err.to_string())),
    };
    let wheel = fetched.staging.path().join(&fetched.file_name);
    let tree = fetched.staging.path().join("uv");
    tokio::task::block_in_place(|| unpack(&wheel, &tree))?;
    std::fs::remove_file(&wheel).map_err(PythonError::io(&wheel))?;
    let options = AddOptions {
        name: Some(path_name()),
        references: Vec::new(),
    };
    let added =
        tokio::task::block_in_place(|| store.add_staged(fetched.staging, "uv", &options, None))?;
    store.pin(PIN, &added.record.name)?;
    Ok(true)
}

/// `bin/uv` out of the wheel's `uv-<version>.data/scripts/uv`.
fn unpack(wheel: &std::path::Path, tree: &std::path::Path) -> Result<(), PythonError> {
    let bad = |reason: String| PythonError::UvUnavailable { reason };
    let file = std::fs::File::open(wheel).map_err(PythonError::io(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("the uv wheel: {e}")))?;
    let inside = format!("uv-{UV_VERSION}.data/scripts/uv");
    let mut entry = zip
        .by_name(&inside)
        .map_err(|_| bad(format!("the uv wheel has no `{inside}`")))?;
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(PythonError::io(wheel))?;
    let bin = tree.join("bin");
    std::fs::create_dir_all(&bin).map_err(PythonError::io(&bin))?;
    let exe = bin.join("uv");
    std::fs::write(&exe, bytes).map_err(PythonError::io(&exe))?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
        .map_err(PythonError::io(&exe))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pin names a wheel of the pinned version by the full path PyPI's index gives (the
    /// short `/packages/py3/u/uv/` form answers 404 on PyPI's CDN).
    #[test]
    fn pinned_wheels_are_named_by_their_index_paths() {
        for (arch, path, sha) in WHEELS {
            let parts: Vec<&str> = path.split('/').collect();
            assert_eq!(parts.len(), 4, "{arch}: {path}");
            assert_eq!(
                parts[..3].iter().map(|p| p.len()).collect::<Vec<_>>(),
                [2, 2, 60]
            );
            assert!(
                parts[3].starts_with(&format!("uv-{UV_VERSION}-py3-none-")),
                "{path}"
            );
            assert!(parts[3].contains(arch), "{path}");
            assert_eq!(sha.len(), 64);
        }
        let (url, file, _) = wheel(|_| None).expect("a pin for this machine");
        assert!(url.starts_with(FILES) && url.ends_with(&file), "{url}");
    }
}
