//! Model sources: `hf://`, `civitai://` (and civitai.com URLs), `https://`/`http://`, `file://`,
//! pinned to a download URL plus whatever hashes and size the source reports.

use serde::Deserialize;
use url::Url;

use super::http::{safe_file_name, Auth, Client, Download, Got};
use super::{indexed, local, Expected, FetchConfig, FetchError, Origin};
use crate::reporter::Reporter;
use crate::spec::{ModelSource, SourceKind};
use crate::store::Add;
use crate::store::{sanitize_name, AddOptions, Store};

/// The credential for `url`, if it belongs to Hugging Face or CivitAI. Tokens are matched by
/// host, so a lock's pinned URL gets the right token without the lock ever holding one.
pub fn auth_for(config: &FetchConfig, url: &Url) -> Option<Auth> {
    let same_host = |base: &Url| {
        base.host_str() == url.host_str()
            && base.port_or_known_default() == url.port_or_known_default()
    };
    if same_host(&config.hf_endpoint) {
        return Some(Auth::bearer(
            &config.hf_endpoint,
            config.hf_token.as_ref(),
            "HF_TOKEN",
        ));
    }
    if same_host(&config.civitai_api) || url.host_str() == Some("civitai.com") {
        return Some(Auth::bearer(
            url,
            config.civitai_token.as_ref(),
            "CIVITAI_TOKEN",
        ));
    }
    None
}

/// What a source reports about the file before it is downloaded.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub url: Url,
    pub revision: Option<String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub blake3: Option<String>,
    /// The file's name as the source reports it (CivitAI's `files[].name`), not yet checked.
    pub file_name: Option<String>,
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn sha256_from_etag(etag: &str) -> Option<String> {
    let tag = etag.trim_start_matches("W/").trim_matches('"');
    (tag.len() == 64 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| tag.to_ascii_lowercase())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CivitaiVersion {
    files: Vec<CivitaiFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CivitaiFile {
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
    download_url: String,
    #[serde(default)]
    name: Option<String>,
}

/// Pin a remote source: ask the source what the file is (`file://` sources are not remote).
// Long on purpose: one arm per kind of source, each a short request.
pub async fn pin(client: &Client, what: &str, source: &SourceKind) -> Result<Pinned, FetchError> {
    let config = client.config();
    match source {
        SourceKind::HuggingFace {
            repo,
            path,
            revision,
        } => {
            let at = |rev: &str| {
                config
                    .hf_endpoint
                    .join(&format!("{repo}/resolve/{rev}/{path}"))
                    .map_err(|e| FetchError::Config {
                        message: format!("bad Hugging Face URL: {e}"),
                    })
            };
            let url = at(revision)?;
            let auth = auth_for(config, &url);
            let (_, headers) = client.head(what, &url, auth.as_ref()).await?;
            let commit = header(&headers, "x-repo-commit").map(str::to_string);
            let size = header(&headers, "x-linked-size")
                .or_else(|| header(&headers, "content-length"))
                .and_then(|v| v.parse().ok());
            let sha256 = header(&headers, "x-linked-etag").and_then(sha256_from_etag);
            let pinned = match &commit {
                Some(commit) => at(commit)?,
                None => url,
            };
            Ok(Pinned {
                url: pinned,
                revision: commit,
                size,
                sha256,
                blake3: None,
                file_name: None,
            })
        }
        SourceKind::Civitai { version_id } => {
            let url = config
                .civitai_api
                .join(&format!("model-versions/{version_id}"))
                .map_err(|e| FetchError::Config {
                    message: format!("bad CivitAI URL: {e}"),
                })?;
            let auth = auth_for(config, &url);
            let info: CivitaiVersion = client.get_json(what, &url, auth.as_ref()).await?;
            let file = info
                .files
                .iter()
                .find(|f| f.primary)
                .or_else(|| info.files.first())
                .ok_or_else(|| FetchError::BadAnswer {
                    what: what.to_string(),
                    message: format!("CivitAI model version {version_id} has no files"),
                })?;
            let hash = |name: &str| {
                file.hashes
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_ascii_lowercase())
            };
            Ok(Pinned {
                url: Url::parse(&file.download_url).map_err(|e| FetchError::BadUrl {
                    what: what.to_string(),
                    url: file.download_url.clone(),
                    reason: e.to_string(),
                })?,
                revision: Some(version_id.clone()),
                size: None,
                sha256: hash("SHA256"),
                blake3: hash("BLAKE3"),
                file_name: file.name.clone(),
            })
        }
        SourceKind::Url(url) => Ok(Pinned {
            url: url.clone(),
            revision: None,
            size: None,
            sha256: None,
            blake3: None,
            file_name: None,
        }),
        SourceKind::File(path) => Err(FetchError::BadSource {
            text: format!("file://{}", path.display()),
            reason: "a local file is not a remote source".into(),
        }),
    }
}

/// One model to fetch into the store: from a spec entry (first resolve) or a lock entry (kept
/// pin whose path is gone, or a repair).
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// For messages: `model `wan-vae``.
    pub what: String,
    /// The source as written (a `file://` URL is also the locked URL), parsed.
    pub source: ModelSource,
    /// The file name when it is fixed: the spec's `filename`, or the lock's.
    pub file_name: Option<String>,
    /// The name derived from the source's last path segment.
    pub derived_name: String,
    /// What the lock pinned; `None` asks the source.
    pub pinned: Option<Pinned>,
    pub sha256: Option<Expected>,
    pub blake3: Option<Expected>,
    /// Whether the network may be used: the executor's word (offline, only the store and local
    /// files serve).
    pub online: bool,
    /// `--models-in-place`: an indexed file that holds the model pins it where it lies (its store
    /// path named, not made).
    pub in_place: bool,
}

/// A model in the store, with what the lock records of it: only digests computed from the bytes.
#[derive(Debug, Clone)]
pub struct FetchedModel {
    pub url: String,
    pub revision: Option<String>,
    pub file_name: String,
    pub size: u64,
    pub sha256: Option<String>,
    pub blake3: String,
    pub store_path: String,
    /// The file of this machine it was taken from (the models index, the hub cache), not
    /// downloaded.
    pub taken_from: Option<std::path::PathBuf>,
}

/// The file name of a model whose spec gives none and whose source reports none: the server's
/// `Content-Disposition` name when the URL's last segment is no model file name, else that segment.
fn chosen_name(derived: &str, suggested: Option<&str>) -> String {
    if !crate::spec::has_model_extension(derived) {
        if let Some(name) = suggested.and_then(safe_file_name) {
            return name;
        }
    }
    derived.to_string()
}

/// Every digest anyone names for the model: the spec's, and the source's (or the lock's). A source
/// that reports another digest than the spec names is refused before anything is downloaded.
fn expected_digests(
    request: &ModelRequest,
    pinned: &Pinned,
) -> Result<(Option<Expected>, Option<Expected>), FetchError> {
    let who = match request.source.kind() {
        Ok(SourceKind::Civitai { .. }) => "the CivitAI API",
        Ok(SourceKind::HuggingFace { .. }) => "Hugging Face",
        _ => "the source",
    };
    let reported = |hex: &Option<String>| {
        hex.as_ref().map(|h| {
            let from = if request.pinned.is_some() {
                Origin::Lock
            } else {
                Origin::Source { who: who.into() }
            };
            Expected::new(h, from)
        })
    };
    for (algorithm, ours, theirs) in [
        ("SHA-256", &request.sha256, reported(&pinned.sha256)),
        ("BLAKE3", &request.blake3, reported(&pinned.blake3)),
    ] {
        if let (Some(ours), Some(theirs)) = (ours, theirs) {
            if ours.hex != theirs.hex {
                return Err(FetchError::HashMismatch {
                    what: request.what.clone(),
                    url: pinned.url.to_string(),
                    algorithm,
                    expected: ours.hex.clone(),
                    actual: format!("{} (reported by {})", theirs.hex, theirs.from),
                    from: Box::new(ours.from.clone()),
                });
            }
        }
    }
    Ok((
        request.sha256.clone().or_else(|| reported(&pinned.sha256)),
        request.blake3.clone().or_else(|| reported(&pinned.blake3)),
    ))
}

/// A `file://` model: staged under the local-file policy, checked, added.
fn fetch_local(
    store: &Store,
    request: &ModelRequest,
    path: &std::path::Path,
) -> Result<FetchedModel, FetchError> {
    let file_name = request
        .file_name
        .clone()
        .unwrap_or_else(|| request.derived_name.clone());
    let added = local::add_file(
        store,
        &request.what,
        path,
        &file_name,
        &local::How {
            sha256: request.sha256.as_ref(),
            blake3: request.blake3.as_ref(),
            progress: &|_| {},
            hard_link: false,
            asked_by_digest: false,
        },
    )?;
    Ok(FetchedModel {
        url: request.source.to_string(),
        revision: None,
        file_name,
        size: added.size,
        sha256: added.sha256,
        blake3: blake3::Hash::from(added.blake3).to_hex().to_string(),
        store_path: added.store_path,
        taken_from: None,
    })
}

/// The model taken from a file of this machine that holds its digests (`indexed`), verified;
/// recorded as if downloaded from `url`, which has the same bytes.
fn from_this_machine(
    config: &FetchConfig,
    store: &Store,
    request: &ModelRequest,
    wanted: &indexed::Wanted<'_>,
    file_name: Option<&str>,
    url: impl FnOnce() -> Option<(String, Option<String>)>,
) -> Result<Option<FetchedModel>, FetchError> {
    let Some(file_name) = file_name else {
        return Ok(None);
    };
    if wanted.blake3.is_none() && wanted.sha256.is_none() {
        return Ok(None);
    }
    let Some((url, revision)) = url() else {
        return Ok(None);
    };
    let what = &request.what;
    if request.in_place {
        if let Some(file) = tokio::task::block_in_place(|| indexed::in_place(store, wanted))? {
            tracing::info!("{what}: where it lies, `{}`", file.path);
            let digest = blake3::Hash::from_hex(&file.blake3).map_err(|e| FetchError::Config {
                message: format!("the models index's digest of `{}`: {e}", file.path),
            })?;
            return Ok(Some(FetchedModel {
                url,
                revision,
                file_name: file_name.to_string(),
                size: file.stamp.size,
                // Only what was asked (and checked): a lock never depends on the machine.
                sha256: wanted.sha256.map(|e| e.hex.clone()),
                blake3: file.blake3.clone(),
                store_path: crate::store::tree::file_path_name(
                    file_name,
                    file.stamp.size,
                    digest.as_bytes(),
                ),
                taken_from: Some(file.path.into()),
            }));
        }
    }
    let Some(taken) =
        tokio::task::block_in_place(|| indexed::take(store, config, what, file_name, wanted))?
    else {
        return Ok(None);
    };
    Ok(Some(FetchedModel {
        url,
        revision,
        file_name: file_name.to_string(),
        size: taken.added.size,
        sha256: taken.added.sha256,
        blake3: blake3::Hash::from(taken.added.blake3).to_hex().to_string(),
        store_path: taken.added.store_path,
        taken_from: Some(taken.from),
    }))
}

/// The model the store already holds with the expected BLAKE3 under `file_name`: it is not
/// fetched again, wherever it was first taken from (another URL, a local file, a snapshot). Only
/// when no SHA-256 other than the lock's is expected: the store keeps BLAKE3s, not SHA-256s.
fn already_in_store(
    store: &Store,
    request: &ModelRequest,
    blake3: Option<&Expected>,
    sha256: Option<&Expected>,
    file_name: Option<&str>,
    url: impl FnOnce() -> Option<(String, Option<String>)>,
) -> Result<Option<FetchedModel>, FetchError> {
    let (Some(expected), Some(file_name)) = (blake3, file_name) else {
        return Ok(None);
    };
    let Ok(digest) = blake3::Hash::from_hex(&expected.hex) else {
        return Ok(None);
    };
    // A SHA-256 the spec demands is checked against the bytes, which means reading them: only the
    // lock's and the source's own (which came with this BLAKE3) are taken as they are.
    if request
        .sha256
        .as_ref()
        .is_some_and(|e| !matches!(e.from, Origin::Lock))
    {
        return Ok(None);
    }
    let Some(record) = store.find_file(&sanitize_name(file_name), digest.as_bytes())? else {
        return Ok(None);
    };
    let Some((url, revision)) = url() else {
        return Ok(None);
    };
    // Protected, then checked again: a collector that ran between the lookup and the protection
    // may have taken it.
    store.protect(&[&record.name])?;
    let name = sanitize_name(file_name);
    if store
        .find_file(&name, digest.as_bytes())?
        .is_none_or(|again| again.name != record.name)
    {
        return Ok(None);
    }
    tracing::info!(
        "{}: already in the store as `{}`",
        request.what,
        record.name
    );
    Ok(Some(FetchedModel {
        url,
        revision,
        file_name: file_name.to_string(),
        size: record.size,
        sha256: sha256.map(|e| e.hex.clone()),
        blake3: expected.hex.clone(),
        store_path: record.name,
        taken_from: None,
    }))
}

/// Where a source's file is, without asking it: the lock's pin, else what the source's text
/// names (Hugging Face at the spec's revision). `None` for CivitAI, whose download URL only its
/// API knows.
fn unasked_url(
    config: &FetchConfig,
    request: &ModelRequest,
    kind: &SourceKind,
) -> Option<(String, Option<String>)> {
    if let Some(pinned) = &request.pinned {
        return Some((pinned.url.to_string(), pinned.revision.clone()));
    }
    match kind {
        SourceKind::HuggingFace {
            repo,
            path,
            revision,
        } => {
            let url = config
                .hf_endpoint
                .join(&format!("{repo}/resolve/{revision}/{path}"))
                .ok()?;
            Some((url.to_string(), None))
        }
        SourceKind::Url(url) => Some((url.to_string(), None)),
        SourceKind::File(_) => Some((request.source.to_string(), None)),
        SourceKind::Civitai { .. } => None,
    }
}

/// Fetch one model into the store, checking every expected digest; nothing is registered on a
/// mismatch. Local files need no network, even offline.
// Long on purpose: the digests, the file name and the download are decided in this order, and the order is the contract.
pub async fn fetch(
    client: &Client,
    store: &Store,
    reporter: &dyn Reporter,
    request: &ModelRequest,
) -> Result<FetchedModel, FetchError> {
    let what = &request.what;
    let kind = request
        .source
        .kind()
        .map_err(|reason| FetchError::BadSource {
            text: request.source.to_string(),
            reason: reason.to_string(),
        })?;
    let known_name = request
        .file_name
        .clone()
        .or_else(|| request.pinned.as_ref().and_then(|p| p.file_name.clone()))
        .or_else(|| {
            crate::spec::has_model_extension(&request.derived_name)
                .then(|| request.derived_name.clone())
        });
    // Not asking the source is right only when asking would add nothing to the lock: the lock
    // pinned it already, the source reports nothing (a URL, a file), or nothing may be asked
    // (offline). Otherwise a warm store would give another lock (no commit, no SHA-256) than an
    // empty one: a lock is a function of the spec and the sources, never of the store.
    let asking_adds_nothing = request.pinned.is_some()
        || matches!(kind, SourceKind::Url(_) | SourceKind::File(_))
        || !request.online;
    let unasked = || {
        already_in_store(
            store,
            request,
            request.blake3.as_ref(),
            request.sha256.as_ref(),
            known_name.as_deref(),
            || unasked_url(client.config(), request, kind),
        )
    };
    if asking_adds_nothing {
        if let Some(stored) = unasked()? {
            return Ok(stored);
        }
        // The lock's digests (or the spec's) found in a file of this machine: offline too.
        let wanted = indexed::Wanted {
            blake3: request.blake3.as_ref(),
            sha256: request.sha256.as_ref(),
            size: request.pinned.as_ref().and_then(|p| p.size),
        };
        if !matches!(kind, SourceKind::File(_)) {
            if let Some(taken) = from_this_machine(
                client.config(),
                store,
                request,
                &wanted,
                known_name.as_deref(),
                || unasked_url(client.config(), request, kind),
            )? {
                return Ok(taken);
            }
        }
    }
    if let SourceKind::File(path) = kind {
        return tokio::task::block_in_place(|| fetch_local(store, request, path));
    }
    if !request.online {
        return Err(FetchError::Offline {
            missing: vec![format!("{what} ({})", request.source)],
        });
    }
    let pinned = match &request.pinned {
        Some(p) => p.clone(),
        None => match pin(client, what, kind).await {
            Ok(pinned) => pinned,
            Err(err) => {
                // The source cannot be asked (down, gone, not reachable from here) but the store
                // holds these bytes: pinned from what the store has, and said so — the lock may
                // then lack what the source would have added (its commit, its SHA-256).
                match unasked()? {
                    Some(stored) => {
                        tracing::warn!("{what}: {err}; pinned from the store, which holds its bytes (resolve again once the source answers for a complete pin)");
                        return Ok(stored);
                    }
                    None => return Err(err),
                }
            }
        },
    };
    let (sha256, blake3) = expected_digests(request, &pinned)?;
    let fixed_name = request.file_name.clone().or_else(|| {
        pinned
            .file_name
            .as_deref()
            .and_then(safe_file_name)
            .or_else(|| {
                crate::spec::has_model_extension(&request.derived_name)
                    .then(|| request.derived_name.clone())
            })
    });
    let pinned_url = (pinned.url.to_string(), pinned.revision.clone());
    if let Some(stored) = already_in_store(
        store,
        request,
        blake3.as_ref(),
        sha256.as_ref(),
        fixed_name.as_deref(),
        || Some(pinned_url.clone()),
    )? {
        return Ok(stored);
    }
    // What the source reports (Hugging Face: the SHA-256 and size) found in a file of this machine.
    let wanted = indexed::Wanted {
        blake3: blake3.as_ref(),
        sha256: sha256.as_ref(),
        size: pinned.size,
    };
    if let Some(taken) = from_this_machine(
        client.config(),
        store,
        request,
        &wanted,
        fixed_name.as_deref(),
        || Some(pinned_url),
    )? {
        return Ok(taken);
    }
    let download = Download {
        what: what.clone(),
        auth: auth_for(client.config(), &pinned.url),
        url: pinned.url.clone(),
        size: pinned.size,
        sha256,
        blake3,
        file_name: "model".into(),
        store_name: fixed_name.as_deref().map(sanitize_name),
    };
    let (file_name, size, sha256, digest, store_path) =
        match client.download(store, reporter, &download).await? {
            Got::Stored(stored) => (
                fixed_name.expect("a stored download is found by its name"),
                stored.size,
                stored.sha256,
                stored.blake3,
                stored.store_path,
            ),
            Got::Fetched(fetched) => {
                let fetched = *fetched;
                let file_name = fixed_name.clone().unwrap_or_else(|| {
                    chosen_name(&request.derived_name, fetched.suggested_name.as_deref())
                });
                let options = AddOptions {
                    name: Some(sanitize_name(&file_name)),
                    references: Vec::new(),
                };
                let (size, sha256, digest) = (fetched.size, fetched.sha256.clone(), fetched.blake3);
                let added = tokio::task::block_in_place(|| {
                    store.add_staged(fetched.staging, "model", &options, Some(digest))
                })?;
                fetched.receipt.stored(&added.record.name);
                (
                    file_name,
                    size,
                    sha256,
                    blake3::Hash::from(digest).to_hex().to_string(),
                    added.record.name,
                )
            }
        };
    Ok(FetchedModel {
        url: pinned.url.to_string(),
        revision: pinned.revision,
        file_name,
        size,
        sha256,
        blake3: digest,
        store_path,
        taken_from: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        let sha = "a".repeat(64);
        assert_eq!(sha256_from_etag(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(sha256_from_etag("\"abc\""), None);
    }
}
