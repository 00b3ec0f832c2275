//! What the db knows, also on disk, so a lost db is never mistaken for an empty store and can be
//! rebuilt: `meta/<name>.json` for every registered path (written before it is registered) and
//! `roots/<key>.json` for every root. `comfix store rebuild-db` reads them back, re-verifying
//! every path against its tree hash (and, for content-addressed paths, its name).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::db::{self, Journal, PathRecord};
use super::{flock, tree, Result, Store, StoreError};

/// The sidecar of a store path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathMeta {
    pub name: String,
    pub kind: String,
    pub tree_hash: String,
    pub size: u64,
    pub file_count: u64,
    pub references: Vec<String>,
    /// `content` (the name's digest is computed from the tree, name and references) or `input`
    /// (fixed by a recipe; only the tree hash can be checked).
    pub naming: String,
    pub registered_at: i64,
}

/// The on-disk copy of a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    pub name: String,
    pub path: String,
    pub kind: String,
}

/// What `store rebuild-db` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub registered: Vec<String>,
    pub roots: usize,
    /// Manifests (of homes and pinned versions) that no recovered root kept, pinned as
    /// `recovered-<name>` so that no collection takes what they reference.
    pub recovered_pins: Vec<String>,
    /// Entries under `paths/` that could not be registered, with the reason.
    pub unrecovered: Vec<(String, String)>,
    /// Where the unreadable database was moved, if there was one.
    pub old_db: Option<PathBuf>,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs_err::write(
        &tmp,
        serde_json::to_vec(value).expect("metadata serializes"),
    )?;
    fs_err::rename(&tmp, path)?;
    Ok(())
}

fn root_key(name: &str) -> String {
    blake3::hash(name.as_bytes()).to_hex()[..32].to_string()
}

/// Whether the name of `record` is its content's (tree, name and references), not a recipe's.
fn content_named(record: &PathRecord, references: &[String]) -> bool {
    let Some((digest, short)) = record.name.split_once('-') else {
        return false;
    };
    let Ok(tree_hash) = blake3::Hash::from_hex(&record.tree_hash) else {
        return false;
    };
    tree::path_digest(short, tree_hash.as_bytes(), references) == digest
}

/// Whether the store directory holds content a db should describe.
pub(super) fn holds_content(root: &Path) -> bool {
    let non_empty =
        |dir: PathBuf| fs::read_dir(dir).is_ok_and(|mut entries| entries.any(|e| e.is_ok()));
    if non_empty(root.join(super::layout::PATHS)) || non_empty(root.join(super::layout::ROOTS)) {
        return true;
    }
    (0..=255u8).any(|shard| {
        non_empty(
            root.join(super::layout::OBJECTS)
                .join(format!("{shard:02x}")),
        )
    })
}

impl Store {
    pub(super) fn meta_path(&self, name: &str) -> PathBuf {
        self.root
            .join(super::layout::META)
            .join(format!("{name}.json"))
    }

    /// The on-disk record `roots/<key>.json` of the root `name`.
    pub(super) fn root_meta_path(&self, name: &str) -> PathBuf {
        self.root
            .join(super::layout::ROOTS)
            .join(format!("{}.json", root_key(name)))
    }

    /// The sidecar of the valid path `name` (what a path that travels carries with it).
    pub fn path_meta(&self, name: &str) -> Result<PathMeta> {
        let text = std::fs::read_to_string(self.meta_path(name))?;
        serde_json::from_str(&text).map_err(|e| {
            StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the sidecar of `{name}` is not readable: {e}"),
            ))
        })
    }

    /// Record the sidecar of a path about to be registered.
    pub(super) fn write_path_meta(
        &self,
        record: &PathRecord,
        references: &[String],
        input_addressed: bool,
    ) -> Result<()> {
        let meta = PathMeta {
            name: record.name.clone(),
            kind: record.kind.clone(),
            tree_hash: record.tree_hash.clone(),
            size: record.size,
            file_count: record.file_count,
            references: references.to_vec(),
            naming: if input_addressed { "input" } else { "content" }.into(),
            registered_at: record.registered_at,
        };
        write_json(&self.meta_path(&record.name), &meta)
    }

    /// Drop the sidecar of a path that is no longer registered.
    pub(super) fn write_root_meta(&self, name: &str, path: &str, kind: &str) -> Result<()> {
        let meta = RootMeta {
            name: name.into(),
            path: path.into(),
            kind: kind.into(),
        };
        write_json(&self.root_meta_path(name), &meta)
    }

    pub(super) fn remove_root_meta(&self, name: &str) {
        let _ = fs::remove_file(self.root_meta_path(name));
    }

    /// A store made before sidecars existed gets them from its db, once (`meta/.complete`).
    pub(super) fn backfill_meta(&self) -> Result<()> {
        let done = self.root.join(super::layout::META_COMPLETE);
        if done.exists() {
            return Ok(());
        }
        let _open = flock::exclusive(&self.root.join(super::layout::DB_OPEN_LOCK))?;
        if done.exists() {
            return Ok(());
        }
        let conn = self.db();
        let records = db::list(&conn).map_err(|e| self.db_err(e))?;
        for record in &records {
            let references = db::references(&conn, record.id).map_err(|e| self.db_err(e))?;
            let input = !content_named(record, &references);
            self.write_path_meta(record, &references, input)?;
        }
        for root in db::roots(&conn).map_err(|e| self.db_err(e))? {
            self.write_root_meta(&root.name, &root.path, &root.kind)?;
        }
        drop(conn);
        fs_err::write(&done, b"")?;
        Ok(())
    }

    /// Rebuild the db of the store at `root` from what is on disk: every entry of `paths/` whose
    /// sidecar (or, without one, whose content-addressed name) its bytes prove, registered once
    /// everything it references is; then the roots of `roots/`. The new db is written beside the
    /// old one and renamed into place last, so an interrupted rebuild changes nothing.
    // Long on purpose: the rebuild protocol: prove each path by its bytes, register in reference order, swap the db.
    pub fn rebuild_db(root: &Path) -> Result<RebuildReport> {
        let root = fs_err::canonicalize(root)?;
        if !root.join(super::layout::VERSION).is_file() {
            return Err(StoreError::Missing { root });
        }
        if super::read_only_dir(&root) {
            return Err(StoreError::ReadOnly { root });
        }
        let db_dir = root.join(super::layout::DB_DIR);
        // `rm -rf db` is what a user may have done: the rebuild starts from nothing.
        fs_err::create_dir_all(&db_dir)?;
        let _open = flock::exclusive(&db_dir.join("open.lock"))?;
        let _gc = flock::exclusive(&root.join(super::layout::GC_LOCK))?;
        let db_path = db_dir.join("db.sqlite");
        let mut report = RebuildReport::default();
        if fs::metadata(&db_path).is_ok_and(|m| m.len() > 0) {
            let readable = db::open(&db_path, Journal::Delete)
                .and_then(|c| db::list(&c).map(|_| ()))
                .is_ok();
            if readable {
                return Err(StoreError::DbIsReadable { path: db_path });
            }
        }

        let new_path = db_dir.join("rebuild.sqlite");
        for stale in ["rebuild.sqlite", "rebuild.sqlite-journal"] {
            let _ = fs::remove_file(db_dir.join(stale));
        }
        let mut conn = db::open(&new_path, Journal::Delete).map_err(|source| StoreError::Db {
            path: new_path.clone(),
            source,
        })?;
        let db_err = |source| StoreError::Db {
            path: new_path.clone(),
            source,
        };

        // Every entry, proved by its bytes.
        let mut proven: BTreeMap<String, (PathRecord, Vec<String>)> = BTreeMap::new();
        for entry in fs_err::read_dir(root.join(super::layout::PATHS))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            match prove(&root, &name) {
                Ok(found) => {
                    proven.insert(name, found);
                }
                Err(reason) => report.unrecovered.push((name, reason)),
            }
        }
        // Referenced paths first; a path whose references cannot be registered is not either.
        let mut registered: HashSet<String> = HashSet::new();
        loop {
            let ready: Vec<String> = proven
                .iter()
                .filter(|(_, (_, refs))| refs.iter().all(|r| registered.contains(r)))
                .map(|(name, _)| name.clone())
                .collect();
            if ready.is_empty() {
                break;
            }
            for name in ready {
                let (record, references) = proven.remove(&name).expect("listed above");
                db::register(&mut conn, &record, &references)?;
                crate::fault::pause_point("rebuild-registered");
                registered.insert(name.clone());
                report.registered.push(name);
            }
        }
        for (name, (_, references)) in proven {
            let missing: Vec<&String> = references
                .iter()
                .filter(|r| !registered.contains(*r))
                .collect();
            report.unrecovered.push((
                name,
                format!(
                    "it references paths that could not be recovered: {}",
                    missing
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let mut rooted: HashSet<String> = HashSet::new();
        fs_err::create_dir_all(root.join(super::layout::ROOTS))?;
        for entry in fs::read_dir(root.join(super::layout::ROOTS))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(meta) = serde_json::from_slice::<RootMeta>(&text) else {
                continue;
            };
            if registered.contains(&meta.path) {
                db::add_root(&conn, &meta.name, &meta.path, &meta.kind).map_err(db_err)?;
                rooted.insert(meta.path);
                report.roots += 1;
            }
        }
        // Manifests no recovered root keeps (`roots/` lost too): a live home's generation is
        // among them, so each is pinned until the user says otherwise (`store unpin`); a home's
        // next command registers its own roots again.
        for name in &report.registered {
            if rooted.contains(name) || !is_manifest(&root, name) {
                continue;
            }
            let pin = format!("recovered-{name}");
            let key = format!("pin:{pin}");
            let meta = RootMeta {
                name: key.clone(),
                path: name.clone(),
                kind: "pin".into(),
            };
            write_json(
                &root
                    .join(super::layout::ROOTS)
                    .join(format!("{}.json", root_key(&key))),
                &meta,
            )?;
            db::add_root(&conn, &key, name, "pin").map_err(db_err)?;
            report.recovered_pins.push(pin);
        }
        drop(conn);
        crate::fault::pause_point("rebuild-written");

        // Into place: the old database (if any) and its journals out of the way first, so SQLite
        // never applies an old write-ahead log to the new file.
        if fs::symlink_metadata(&db_path).is_ok() {
            let aside = db_dir.join(format!("db.sqlite.broken-{}", db::now()));
            fs_err::rename(&db_path, &aside)?;
            report.old_db = Some(aside);
        }
        for journal in ["db.sqlite-wal", "db.sqlite-shm", "db.sqlite-journal"] {
            let _ = fs::remove_file(db_dir.join(journal));
        }
        fs_err::File::open(&new_path)?.sync_all()?;
        fs_err::rename(&new_path, &db_path)?;
        fs_err::File::open(&db_dir)?.sync_all()?;
        report.unrecovered.sort();
        // What could not be recovered stays until the user decides: the collector refuses to
        // delete it while this list names entries still on disk.
        let marker = root.join(super::layout::UNRECOVERED);
        if report.unrecovered.is_empty() {
            let _ = fs::remove_file(&marker);
        } else {
            let names: Vec<&String> = report.unrecovered.iter().map(|(n, _)| n).collect();
            write_json(&marker, &names)?;
        }
        Ok(report)
    }
}

/// Whether the registered `paths/<name>` is a manifest: a home's generation (`-home-<id>`) or a
/// pinned version (`-pin-<id>`), a lock by its contents.
fn is_manifest(root: &Path, name: &str) -> bool {
    let Some((_, rest)) = name.split_once('-') else {
        return false;
    };
    if !(rest.starts_with("home-") || rest.starts_with("pin-")) {
        return false;
    }
    // A lock, by its shape (the store knows no lock type): an object naming its version and
    // its core.
    let path = root.join(super::layout::PATHS).join(name);
    fs::read(&path)
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .is_some_and(|v| v["version_id"].is_string() && v["comfy"].is_object())
}

/// The record and references of `paths/<name>` if its bytes prove them: the tree hash matches
/// the sidecar's, and a content-addressed name matches its content. Without a sidecar, only a
/// content-addressed path without references can be proved.
fn prove(root: &Path, name: &str) -> std::result::Result<(PathRecord, Vec<String>), String> {
    let path = root.join(super::layout::PATHS).join(name);
    let node = tree::hash_tree(&path).map_err(|e| format!("unreadable: {e}"))?;
    let tree_hash = blake3::Hash::from(node.tree_hash()).to_hex().to_string();
    let sidecar = fs::read(root.join(super::layout::META).join(format!("{name}.json")))
        .ok()
        .and_then(|t| serde_json::from_slice::<PathMeta>(&t).ok())
        .filter(|m| m.name == name);
    let record = PathRecord {
        id: 0,
        name: name.to_string(),
        kind: if matches!(node, tree::Node::Directory { .. }) {
            "tree".into()
        } else {
            "file".into()
        },
        tree_hash: tree_hash.clone(),
        size: node.content_size(),
        file_count: node.file_count(),
        registered_at: sidecar.as_ref().map_or_else(db::now, |m| m.registered_at),
    };
    match sidecar {
        Some(meta) => {
            if meta.tree_hash != tree_hash {
                return Err(format!(
                    "its contents changed: tree hash `{tree_hash}`, registered as `{}`",
                    meta.tree_hash
                ));
            }
            if meta.naming != "input" && !content_named(&record, &meta.references) {
                return Err("its name does not match its contents and references".into());
            }
            Ok((record, meta.references))
        }
        None if content_named(&record, &[]) => Ok((record, Vec::new())),
        None => Err("no metadata, and its name is not its contents' (input-addressed, referencing other paths, or damaged)".into()),
    }
}
