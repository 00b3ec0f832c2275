//! What the collector keeps beside the store paths: the partial downloads and git mirrors that
//! the locks of live roots (home manifests and pinned versions hold their `lock.json`) fetch from.

use crate::fetch::git::mirror_name;
use crate::fetch::http::download_key;
use crate::lock::manifest;
use crate::store::{Keep, Kept, Store};

/// The store's [`Keep`]: reads each live root as a lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveLocks;

impl Keep for LiveLocks {
    fn caches(&self, store: &Store, live_roots: &[String]) -> Kept {
        let mut kept = Kept::default();
        for lock in live_roots
            .iter()
            .filter_map(|root| manifest::read(store, root))
        {
            let mut urls: Vec<&str> = Vec::new();
            let mut repos = vec![lock.comfy.repo.as_str()];
            for node in &lock.custom_nodes {
                repos.extend(node.git.as_ref().map(|g| g.repo.as_str()));
                urls.extend(node.registry.as_ref().map(|r| r.download_url.as_str()));
            }
            urls.extend(lock.models.iter().map(|m| m.url.as_str()));
            if let Some(python) = &lock.python {
                urls.extend(python.wheels.iter().filter_map(|w| w.url.as_deref()));
            }
            kept.download_keys
                .extend(urls.into_iter().map(download_key));
            kept.mirrors.extend(repos.into_iter().map(mirror_name));
        }
        kept
    }

    fn version_of(&self, store: &Store, root_path: &str) -> Option<String> {
        manifest::read(store, root_path).map(|l| l.version_id)
    }
}
