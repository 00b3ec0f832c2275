//! `store verify --repair`: fetch or rebuild what is corrupt or missing, from the sources named by
//! the locks the store keeps alive (home manifests and pinned versions hold their `lock.json`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::fetch::http::Client;
use crate::fetch::{git, model, registry, FetchError};
use crate::lockfile::Lock;
use crate::reporter::Reporter;
use crate::store::{Store, VerifyReport};

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub repaired: Vec<String>,
    /// `(path, why)` for what could not be repaired.
    pub failed: Vec<(String, String)>,
}

/// Where a store path's content comes from.
enum Source {
    Git {
        repo: String,
        commit: String,
    },
    Registry {
        id: String,
        version: String,
        url: String,
        blake3: String,
    },
    Model {
        url: String,
        size: u64,
        sha256: Option<String>,
        blake3: String,
        filename: String,
    },
}

fn sources(store: &Store) -> HashMap<String, Source> {
    let mut out = HashMap::new();
    for root in store.all_roots().unwrap_or_default() {
        let Ok(text) = std::fs::read_to_string(store.path_of(&root.path)) else {
            continue;
        };
        let Ok(lock) = serde_json::from_str::<Lock>(&text) else {
            continue;
        };
        out.insert(
            lock.comfy.store_path.clone(),
            Source::Git {
                repo: lock.comfy.repo.clone(),
                commit: lock.comfy.commit.clone(),
            },
        );
        for node in &lock.custom_nodes {
            if let Some(g) = &node.git {
                out.insert(
                    g.store_path.clone(),
                    Source::Git {
                        repo: g.repo.clone(),
                        commit: g.commit.clone(),
                    },
                );
            }
            if let Some(r) = &node.registry {
                out.insert(
                    r.store_path.clone(),
                    Source::Registry {
                        id: r.id.clone(),
                        version: r.version.clone(),
                        url: r.download_url.clone(),
                        blake3: r.blake3.clone(),
                    },
                );
            }
        }
        for m in &lock.models {
            out.insert(
                m.store_path.clone(),
                Source::Model {
                    url: m.url.clone(),
                    size: m.size,
                    sha256: m.sha256.clone(),
                    blake3: m.blake3.clone(),
                    filename: m.filename.clone(),
                },
            );
        }
    }
    out
}

/// Repair every missing or corrupted path of `report`.
pub async fn repair(
    store: Arc<Store>,
    client: Arc<Client>,
    reporter: Arc<dyn Reporter>,
    report: &VerifyReport,
) -> RepairReport {
    let sources = sources(&store);
    let mut out = RepairReport::default();
    let broken = report
        .missing
        .iter()
        .chain(report.corrupted.iter().map(|c| &c.path))
        .filter_map(|p| {
            std::path::Path::new(p)
                .file_name()?
                .to_str()
                .map(str::to_string)
        });
    for name in broken {
        let Some(source) = sources.get(&name) else {
            out.failed
                .push((name, "no live lock names its source".into()));
            continue;
        };
        match repair_one(&store, &client, reporter.as_ref(), &name, source).await {
            Ok(()) => out.repaired.push(name),
            Err(err) => out.failed.push((name, err.to_string())),
        }
    }
    out
}

async fn repair_one(
    store: &Store,
    client: &Client,
    reporter: &dyn Reporter,
    name: &str,
    source: &Source,
) -> Result<(), FetchError> {
    // Move the damaged copy and its damaged objects out of the way, then fetch as usual: the
    // add protocol sees the path missing and puts verified content back under the same name.
    tokio::task::block_in_place(|| store.discard_damaged(name))?;
    let added = match source {
        Source::Git { repo, commit } => {
            let path_name = name.split_once('-').map_or(name, |(_, n)| n).to_string();
            let (repo, commit) = (repo.clone(), commit.clone());
            tokio::task::block_in_place(|| {
                if !git::has_commit(store, &repo, &commit) && !client.config().offline {
                    git::fetch_commit(store, &repo, &commit, None)?;
                }
                git::checkout(store, &repo, &commit, &path_name, !client.config().offline)
            })?
            .record
            .name
        }
        Source::Registry {
            id,
            version,
            url,
            blake3,
        } => {
            registry::fetch(client, store, reporter, id, version, url, Some(blake3))
                .await?
                .1
                .record
                .name
        }
        Source::Model {
            url,
            size,
            sha256,
            blake3,
            filename,
        } => {
            let parsed = url::Url::parse(url).map_err(|e| FetchError::Api {
                what: format!("repair of `{name}`"),
                message: e.to_string(),
            })?;
            // The lock's URL is the pinned download (or the `file://` source itself).
            let source = crate::spec::ModelSource::parse(url);
            let lock = |hex: &String| crate::fetch::Expected::new(hex, crate::fetch::Origin::Lock);
            let request = model::ModelRequest {
                what: format!("model `{filename}`"),
                source,
                file_name: Some(filename.clone()),
                derived_name: filename.clone(),
                pinned: (parsed.scheme() != "file").then(|| model::Pinned {
                    url: parsed.clone(),
                    revision: None,
                    size: Some(*size),
                    sha256: sha256.clone(),
                    blake3: Some(blake3.clone()),
                    file_name: Some(filename.clone()),
                }),
                sha256: sha256.as_ref().map(lock),
                blake3: Some(lock(blake3)),
            };
            model::fetch(client, store, reporter, &request)
                .await?
                .store_path
        }
    };
    if added != name {
        return Err(FetchError::Api {
            what: format!("repair of `{name}`"),
            message: format!("the source now gives `{added}`"),
        });
    }
    Ok(())
}
