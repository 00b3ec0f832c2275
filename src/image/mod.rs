//! Container images of a version, from the store, without a container daemon: an OCI image layout
//! (`image build -o DIR`, which `skopeo`, `umoci` and registries' tools read). One layer per store
//! path of the version's closure — a deterministic tar (sorted entries, uid/gid 0, mtime 0, the
//! store's read-only modes) of `/comfix/store/paths/<name>` and its sidecar `meta/<name>.json` —
//! so two versions share every layer of the paths they share, and a one-node change makes one new
//! path layer. A layer's digest is computed once per store path and remembered
//! (`cache/image-layers/`): a path never changes. comfix has a layer of its own; the top layer
//! holds the store's database of exactly the image's paths, and the version's spec, lock and
//! workflows; a base's layers (`--from`) lie below, as they are. The same version gives the same
//! image digest on any store. `push.rs` sends an image to a registry (and pulls bases from one).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub mod push;

use crate::closure::{self, ClosureError, Models, Version};
use crate::store::layout::Cache;
use crate::store::{PathMeta, Store};

/// Where the store is inside an image (never under `/runpod-volume`: a volume mounts over it).
pub const STORE_DIR: &str = "comfix/store";
/// Where the version's spec and lock are inside an image.
pub const VERSIONS_DIR: &str = "comfix/versions";

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The `oci-layout` file of an image layout.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The annotation that tags an image in a layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation naming the store path a layer holds.
const PATH_ANNOTATION: &str = "org.comfix.store-path";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Closure(#[from] ClosureError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("`{reference}` is not an image reference to push to: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("Registry `{registry}`, {what}: {reason}")]
    Registry {
        registry: String,
        what: String,
        reason: String,
    },
    #[error("Base image `{base}`: {reason}")]
    BadBase { base: String, reason: String },
    #[error("The image layout `{}` has no image tagged `{id}`", dir.display())]
    NotInLayout { dir: PathBuf, id: String },
    #[error("Cannot write the image at `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::hint::Hint for ImageError {
    fn is_user_error(&self) -> bool {
        match self {
            ImageError::Closure(e) => e.is_user_error(),
            ImageError::Store(e) => e.is_user_error(),
            ImageError::BadReference { .. }
            | ImageError::NotInLayout { .. }
            | ImageError::BadBase { .. } => true,
            ImageError::Registry { .. } | ImageError::Io { .. } => false,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ImageError::Closure(e) => e.hint(),
            ImageError::Store(e) => e.hint(),
            ImageError::BadReference { .. } => {
                Some("e.g. `registry.example.com/team/wan22:v3`, or `127.0.0.1:5000/wan22`".into())
            }
            ImageError::Registry { .. } => Some(
                "nothing is tagged until every blob is there: run the push again to finish it"
                    .into(),
            ),
            ImageError::BadBase { .. } => Some(
                "a base is an OCI image layout (`skopeo copy docker://debian:bookworm-slim oci:base:bookworm` makes one), `--from base:bookworm`".into(),
            ),
            ImageError::NotInLayout { .. } | ImageError::Io { .. } => None,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A blob of the image: its digest (`sha256:<hex>`) and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// One layer of a built image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Layer {
    /// The store path it holds (`None`: comfix's layer, a group of small paths, the top layer).
    pub path: Option<String>,
    #[serde(flatten)]
    pub blob: Blob,
    /// Written by this build (`false`: the layout had it).
    pub written: bool,
}

/// What `image build` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    /// The image's digest: its manifest's.
    pub digest: String,
    pub config: Blob,
    pub layers: Vec<Layer>,
}

/// Writes through, hashing with SHA-256 and counting.
struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An OCI image layout directory being written.
struct Layout {
    dir: PathBuf,
    blobs: PathBuf,
}

impl Layout {
    fn create(dir: &Path) -> Result<Layout, ImageError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let marker = dir.join("oci-layout");
        std::fs::write(&marker, OCI_LAYOUT).map_err(io(&marker))?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            blobs,
        })
    }

    fn path_of(&self, digest: &str) -> PathBuf {
        blob_path(&self.dir, digest)
    }

    /// Whether the layout holds `blob` (by its file's size; its name is its digest).
    fn has(&self, blob: &Blob) -> bool {
        std::fs::metadata(self.path_of(&blob.digest)).is_ok_and(|m| m.len() == blob.size)
    }

    /// Write a blob by `write`, hashed while written, renamed to its digest once complete.
    fn write_with(
        &self,
        write: impl FnOnce(&mut dyn Write) -> Result<(), ImageError>,
    ) -> Result<Blob, ImageError> {
        let part = tempfile::NamedTempFile::new_in(&self.blobs).map_err(io(&self.blobs))?;
        let blob = {
            let mut out = Sha256Writer {
                inner: std::io::BufWriter::with_capacity(1 << 20, part.as_file()),
                hasher: Sha256::new(),
                size: 0,
            };
            write(&mut out)?;
            out.flush().map_err(io(&self.blobs))?;
            Blob {
                digest: format!("sha256:{}", crate::files::hex(&out.hasher.finalize())),
                size: out.size,
            }
        };
        let at = self.path_of(&blob.digest);
        part.persist(&at).map_err(|e| io(&at)(e.error))?;
        Ok(blob)
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<Blob, ImageError> {
        self.write_with(|out| out.write_all(bytes).map_err(io(&self.blobs)))
    }
}

/// The directories above a layer's entries, as entries of their own (mode `0555`, mtime 0).
fn append_dirs<W: Write>(tar: &mut tar::Builder<W>, dirs: &[&str]) -> std::io::Result<()> {
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o555);
        header.set_size(0);
        header.set_mtime(0);
        tar.append_data(&mut header, dir, std::io::empty())?;
    }
    Ok(())
}

/// A regular file entry (mode `0444`, mtime 0).
fn append_file<W: Write>(tar: &mut tar::Builder<W>, at: &str, bytes: &[u8]) -> std::io::Result<()> {
    append_regular(tar, at, bytes, 0o444)
}

/// A regular file entry with `mode` (mtime 0).
fn append_regular<W: Write>(
    tar: &mut tar::Builder<W>,
    at: &str,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(bytes.len() as u64);
    header.set_mtime(0);
    tar.append_data(&mut header, at, bytes)
}

/// The layer remembered as `key` (`cache/image-layers/<key>`) when the layout has its blob, else
/// written by `fill` (and remembered).
fn remembered_layer(
    store: &Store,
    layout: &Layout,
    key: &str,
    fill: impl FnOnce(&mut tar::Builder<&mut dyn Write>) -> Result<(), ImageError>,
) -> Result<Layer, ImageError> {
    let remembered = store.cache_dir(Cache::ImageLayers).join(key);
    let known = std::fs::read_to_string(&remembered).ok().and_then(|text| {
        let (digest, size) = text.trim().split_once(' ')?;
        Some(Blob {
            digest: digest.to_string(),
            size: size.parse().ok()?,
        })
    });
    if let Some(blob) = known.filter(|b| layout.has(b)) {
        return Ok(Layer {
            path: Some(key.to_string()),
            blob,
            written: false,
        });
    }
    let blob = layout.write_with(|out| {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        fill(&mut tar)?;
        tar.into_inner().map_err(io(&layout.dir))?;
        Ok(())
    })?;
    // Remembered where the store can keep it (a read-only store computes it again next time).
    if let Some(dir) = remembered.parent() {
        let line = format!("{} {}\n", blob.digest, blob.size);
        let _ = std::fs::create_dir_all(dir)
            .and_then(|()| crate::files::write_atomic(&remembered, line.as_bytes()));
    }
    Ok(Layer {
        path: Some(key.to_string()),
        blob,
        written: true,
    })
}

/// The most layers an image gets (its base's included): overlay filesystems stack at most 128,
/// and `streamLayeredImage` stops at 100 too.
pub const MAX_LAYERS: usize = 100;

/// Which paths get a layer of their own when at most `room` layers are left for them: all when
/// they fit; else the largest `room - 1` (models, the venv, the core: what changes alone and
/// costs most to push again), the rest — the smallest — in one grouped layer, in closure order.
fn split_layers(paths: &[PathMeta], room: usize) -> (Vec<&str>, Vec<&PathMeta>) {
    if paths.len() <= room {
        return (paths.iter().map(|p| p.name.as_str()).collect(), Vec::new());
    }
    let mut by_size: Vec<&PathMeta> = paths.iter().collect();
    by_size.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
    let own: Vec<&str> = by_size
        .iter()
        .take(room.saturating_sub(1))
        .map(|p| p.name.as_str())
        .collect();
    let grouped = paths
        .iter()
        .filter(|p| !own.contains(&p.name.as_str()))
        .collect();
    (own, grouped)
}

/// One layer for several small paths (remembered by their names: the same group, the same layer).
fn group_layer(store: &Store, layout: &Layout, paths: &[&PathMeta]) -> Result<Layer, ImageError> {
    let mut names: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    let key = format!(
        "group-{}",
        blake3::hash(names.join("\n").as_bytes()).to_hex()
    );
    remembered_layer(store, layout, &key, |tar| {
        append_dirs(tar, &STORE_DIRS).map_err(io(&layout.dir))?;
        for meta in paths {
            append_store_path(tar, store, layout, meta)?;
        }
        Ok(())
    })
    .map(|mut layer| {
        layer.path = None;
        layer
    })
}

/// The directories above a layer's store paths and sidecars.
const STORE_DIRS: [&str; 4] = [
    "comfix",
    STORE_DIR,
    "comfix/store/meta",
    "comfix/store/paths",
];

/// Store path `meta.name` under `/comfix/store/paths/`, with its sidecar as any store would
/// have it (when it was registered is this store's own: 0).
fn append_store_path(
    tar: &mut tar::Builder<&mut dyn Write>,
    store: &Store,
    layout: &Layout,
    meta: &PathMeta,
) -> Result<(), ImageError> {
    let sidecar = PathMeta {
        registered_at: 0,
        ..meta.clone()
    };
    let sidecar = serde_json::to_vec_pretty(&sidecar).expect("json");
    let at = format!("{STORE_DIR}/meta/{}.json", meta.name);
    append_file(tar, &at, &sidecar).map_err(io(&layout.dir))?;
    let paths = Path::new(STORE_DIR).join("paths");
    closure::append_path_under(tar, store, &meta.name, &paths, true)?;
    Ok(())
}

/// The layer of store path `meta.name`: the path and its sidecar.
fn path_layer(store: &Store, layout: &Layout, meta: &PathMeta) -> Result<Layer, ImageError> {
    remembered_layer(store, layout, &meta.name, |tar| {
        append_dirs(tar, &STORE_DIRS).map_err(io(&layout.dir))?;
        append_store_path(tar, store, layout, meta)
    })
}

/// The machine's architecture as OCI names it.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What goes into an image besides the version's closure.
pub struct BuildOptions<'a> {
    pub models: Models,
    /// The image it is built on (its layers kept as they are, below ours).
    pub base: Option<&'a Base>,
    /// The comfix binary the image carries (`/comfix/bin/comfix`, its entrypoint).
    pub comfix: PathBuf,
    /// Where the models come from at start when the image leaves them out (`--models volume`):
    /// the substituters the image's comfix asks (a cache on the network volume, a bucket), and
    /// the keys their paths must be signed by.
    pub models_from: Vec<String>,
    pub trusted_keys: Vec<String>,
}

/// A base image read from an OCI image layout: its layers' descriptors, diff ids and config.
pub struct Base {
    dir: PathBuf,
    shown: String,
    layers: Vec<Value>,
    config: Value,
}

impl Base {
    /// `DIR[:TAG]`: the image tagged `TAG` in the OCI image layout `DIR` (`oci:` before it is
    /// taken, as skopeo writes it); without a tag, the layout's only image.
    pub fn open(text: &str) -> Result<Base, ImageError> {
        let plain = text.strip_prefix("oci:").unwrap_or(text);
        let (dir, tag) = match plain.rsplit_once(':') {
            Some((dir, tag))
                if !tag.contains('/') && Path::new(dir).join("index.json").is_file() =>
            {
                (dir, Some(tag))
            }
            _ => (plain, None),
        };
        let dir = PathBuf::from(dir);
        let index_path = dir.join("index.json");
        let index = read_json(&index_path)?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let entry = match tag {
            Some(tag) => manifests.iter().find(|m| m["annotations"][REF_NAME] == tag),
            None if manifests.len() == 1 => manifests.first(),
            None => None,
        }
        .ok_or_else(|| ImageError::BadBase {
            base: text.to_string(),
            reason: match tag {
                Some(tag) => format!("its layout has no image tagged `{tag}`"),
                None => format!(
                    "its layout holds {} images: name one (`DIR:TAG`)",
                    manifests.len()
                ),
            },
        })?;
        let manifest = read_json(&blob_path(
            &dir,
            entry["digest"].as_str().unwrap_or_default(),
        ))?;
        let config = read_json(&blob_path(
            &dir,
            manifest["config"]["digest"].as_str().unwrap_or_default(),
        ))?;
        Base::checked(text, dir, &manifest, config)
    }

    /// The base of `manifest` and `config` (its blobs in the layout `dir`), when this machine can
    /// build on it.
    fn checked(
        text: &str,
        dir: PathBuf,
        manifest: &Value,
        config: Value,
    ) -> Result<Base, ImageError> {
        if manifest["mediaType"]
            .as_str()
            .is_some_and(|m| m.contains("index") || m.contains("list"))
        {
            return Err(ImageError::BadBase {
                base: text.to_string(),
                reason: "it is an index of images for several platforms: name the one for this machine by its manifest".into(),
            });
        }
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
        if diff_ids != layers.len() {
            return Err(ImageError::BadBase {
                base: text.to_string(),
                reason: format!(
                    "its config lists {diff_ids} layers, its manifest {}",
                    layers.len()
                ),
            });
        }
        let arch = config["architecture"].as_str().unwrap_or_default();
        if arch != architecture() || config["os"].as_str().is_some_and(|os| os != "linux") {
            return Err(ImageError::BadBase {
                base: text.to_string(),
                reason: format!(
                    "it is for {}/{arch}; this machine builds linux/{} (its store paths, venv and comfix are this machine's)",
                    config["os"].as_str().unwrap_or("?"),
                    architecture()
                ),
            });
        }
        Ok(Base {
            dir,
            shown: text.to_string(),
            layers,
            config,
        })
    }
}

fn read_json(path: &Path) -> Result<Value, ImageError> {
    read_json_bytes(path).map(|(_, value)| value)
}

/// A JSON file's bytes (a manifest's digest is theirs) and what they hold.
fn read_json_bytes(path: &Path) -> Result<(Vec<u8>, Value), ImageError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| io(path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok((bytes, value))
}

/// A store database registering exactly `paths` (closure order: references first), as the
/// store inside the image opens it; registration times are 0, so the bytes depend only on the
/// paths.
fn image_db(store: &Store, paths: &[PathMeta], scratch: &Path) -> Result<Vec<u8>, ImageError> {
    let file = scratch.join("db.sqlite");
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| io(&file)(std::io::Error::other(e));
    {
        let mut conn = crate::store::db::open(&file, crate::store::db::Journal::Delete)
            .map_err(|e| failed(e.into()))?;
        for meta in paths {
            let mut record = store.query(&meta.name)?.ok_or_else(|| {
                ImageError::Closure(ClosureError::NotInStore {
                    name: meta.name.clone(),
                })
            })?;
            record.registered_at = 0;
            crate::store::db::register(&mut conn, &record, &meta.references)
                .map_err(|e| failed(e.into()))?;
        }
        crate::store::db::make_reproducible(&conn).map_err(|e| failed(e.into()))?;
    }
    std::fs::read(&file).map_err(io(&file))
}

/// The layer of the comfix binary (`/comfix/bin/comfix`), remembered by the binary's BLAKE3 as
/// a path's layer is by its name.
fn comfix_layer(store: &Store, layout: &Layout, binary: &Path) -> Result<Layer, ImageError> {
    // Its digest as the store's file index knows it (by its stat tuple): read only when changed.
    let digest = match store.known_digest(binary).ok().flatten() {
        Some(digest) => digest,
        None => {
            let meta = std::fs::metadata(binary).map_err(io(binary))?;
            let stamp = crate::store::db::FileStamp::of(&meta);
            let digest = crate::store::tree::hash_file(binary, meta.len()).map_err(io(binary))?;
            let _ = store.remember_digest(binary, &stamp, &digest);
            digest
        }
    };
    let key = format!("comfix-{}", blake3::Hash::from(digest).to_hex());
    remembered_layer(store, layout, &key, |tar| {
        let bytes = std::fs::read(binary).map_err(io(binary))?;
        append_dirs(tar, &["comfix", "comfix/bin"]).map_err(io(&layout.dir))?;
        append_regular(tar, "comfix/bin/comfix", &bytes, 0o555).map_err(io(&layout.dir))
    })
    .map(|mut layer| {
        layer.path = None;
        layer
    })
}

/// The image's top layer: the version's spec and lock, and the store's own files (its
/// layout version, a database of exactly the image's paths, the sidecars' completion mark).
fn top_layer(layout: &Layout, versions: &Path, db: &[u8]) -> Result<Blob, ImageError> {
    layout.write_with(|out| {
        let mut tar = tar::Builder::new(out);
        let dirs = ["comfix", STORE_DIR, "comfix/store/db", "comfix/store/meta"];
        append_dirs(&mut tar, &dirs).map_err(io(&layout.dir))?;
        let version_file = format!("{STORE_DIR}/VERSION");
        let layout_version = format!("{}\n", crate::store::LAYOUT_VERSION);
        append_file(&mut tar, &version_file, layout_version.as_bytes()).map_err(io(&layout.dir))?;
        append_file(&mut tar, &format!("{STORE_DIR}/db/db.sqlite"), db).map_err(io(&layout.dir))?;
        append_file(&mut tar, &format!("{STORE_DIR}/meta/.complete"), b"")
            .map_err(io(&layout.dir))?;
        // The spec, the lock and the workflow files beside them, sorted.
        for entry in walkdir::WalkDir::new(versions).sort_by_file_name() {
            let entry = entry.map_err(|e| io(versions)(e.into()))?;
            let rel = entry.path().strip_prefix(versions).unwrap_or(entry.path());
            let at = Path::new(VERSIONS_DIR).join(rel);
            let at = at.to_string_lossy();
            if entry.file_type().is_dir() {
                append_dirs(&mut tar, &[at.as_ref()]).map_err(io(&layout.dir))?;
            } else {
                let bytes = std::fs::read(entry.path()).map_err(io(entry.path()))?;
                append_file(&mut tar, &at, &bytes).map_err(io(&layout.dir))?;
            }
        }
        tar.into_inner().map_err(io(&layout.dir))?;
        Ok(())
    })
}

/// Build the image of `version` (its closure, models as `options.models` says) as an OCI image
/// layout in `out`, tagged with the version's id. Blobs the layout already has are not written
/// again. Its entrypoint is comfix on the image's store; by default it serves the version's
/// workflows as RunPod jobs (`serve ID --runpod`), realizing the home `/comfix/home` at start.
pub fn build(
    store: &Store,
    version: &Version<'_>,
    options: &BuildOptions<'_>,
    out: &Path,
) -> Result<Built, ImageError> {
    let _span = tracing::debug_span!("image-build").entered();
    let layout = Layout::create(out)?;
    let id = &version.lock.version_id;
    let paths = closure::paths_of(store, std::slice::from_ref(version), options.models)?;
    let base_layers = options.base.map_or(0, |b| b.layers.len());
    let (own, grouped) = split_layers(&paths, MAX_LAYERS.saturating_sub(base_layers + 2));
    let mut layers = Vec::new();
    for meta in &paths {
        if own.contains(&meta.name.as_str()) {
            layers.push(path_layer(store, &layout, meta)?);
        }
    }
    if !grouped.is_empty() {
        layers.push(group_layer(store, &layout, &grouped)?);
    }
    let scratch = tempfile::tempdir_in(&layout.blobs).map_err(io(&layout.blobs))?;
    let db = image_db(store, &paths, scratch.path())?;
    layers.push(comfix_layer(store, &layout, &options.comfix)?);
    let versions = scratch.path().join("versions");
    std::fs::create_dir_all(&versions).map_err(io(&versions))?;
    let spec_file = versions.join(format!("{id}.json"));
    std::fs::write(&spec_file, version.spec).map_err(io(&spec_file))?;
    let lock_file = versions.join(format!("{id}.lock.json"));
    std::fs::write(&lock_file, version.lock.to_text()).map_err(io(&lock_file))?;
    closure::write_workflow_files(store, version.lock, &versions)?;
    let top = top_layer(&layout, &versions, &db)?;
    layers.push(Layer {
        path: None,
        blob: top,
        written: true,
    });

    // The base's layers first, as they are (copied into this layout when it lacks them).
    let mut descriptors: Vec<Value> = Vec::new();
    let mut diff_ids: Vec<Value> = Vec::new();
    let mut env: Vec<Value> = Vec::new();
    let mut labels = serde_json::Map::new();
    if let Some(base) = options.base {
        for layer in &base.layers {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let to = blob_path(out, digest);
            if !to.exists() {
                let from = blob_path(&base.dir, digest);
                std::fs::hard_link(&from, &to)
                    .or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
                    .map_err(io(&from))?;
            }
            descriptors.push(layer.clone());
        }
        diff_ids.extend(
            base.config["rootfs"]["diff_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        env.extend(
            base.config["config"]["Env"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        if let Some(base_labels) = base.config["config"]["Labels"].as_object() {
            labels.extend(base_labels.clone());
        }
        labels.insert("org.comfix.base".into(), json!(base.shown));
    }
    if !env
        .iter()
        .any(|e| e.as_str().is_some_and(|e| e.starts_with("PATH=")))
    {
        env.push(json!(
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ));
    }
    env.push(json!(format!("COMFIX_STORE=/{STORE_DIR}")));
    if !options.models_from.is_empty() {
        env.push(json!(format!(
            "COMFIX_SUBSTITUTERS={}",
            options.models_from.join(" ")
        )));
    }
    if !options.trusted_keys.is_empty() {
        env.push(json!(format!(
            "COMFIX_TRUSTED_KEYS={}",
            options.trusted_keys.join(" ")
        )));
    }
    labels.insert("org.comfix.version".into(), json!(id));
    for layer in &layers {
        let mut d =
            json!({ "mediaType": LAYER, "digest": layer.blob.digest, "size": layer.blob.size });
        if let Some(path) = &layer.path {
            d["annotations"] = json!({ PATH_ANNOTATION: path });
        }
        descriptors.push(d);
        // Uncompressed layers: a layer's digest is its diff id.
        diff_ids.push(json!(layer.blob.digest));
    }
    let config = json!({
        "architecture": architecture(),
        "os": "linux",
        "config": {
            "Env": env,
            "Entrypoint": ["/comfix/bin/comfix", "--store", format!("/{STORE_DIR}")],
            // Offline: what the image lacks (models left out) comes from its substituters alone.
            "Cmd": ["serve", id, "--runpod", "--offline", "--target", "/comfix/home"],
            "WorkingDir": "/comfix",
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = layout.write_bytes(&serde_json::to_vec(&config).expect("json"))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": CONFIG, "digest": config.digest, "size": config.size },
        "layers": descriptors,
    });
    let manifest = layout.write_bytes(&serde_json::to_vec(&manifest).expect("json"))?;
    // The layout's other images stay; this version's tag now names the new manifest.
    let index_path = out.join("index.json");
    let mut manifests: Vec<Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|index| index["manifests"].as_array().cloned())
        .unwrap_or_default();
    manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(id.as_str()));
    manifests.push(json!({
        "mediaType": MANIFEST,
        "digest": manifest.digest,
        "size": manifest.size,
        "annotations": { REF_NAME: id },
    }));
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    crate::files::write_atomic(&index_path, &serde_json::to_vec(&index).expect("json"))
        .map_err(io(&index_path))?;
    Ok(Built {
        digest: manifest.digest,
        config,
        layers,
    })
}

/// An image of a layout: its manifest's digest, bytes and JSON, and its blobs (config first,
/// then the layers) with their sizes.
pub(crate) struct Stored {
    pub digest: String,
    pub manifest_bytes: Vec<u8>,
    pub blobs: Vec<(String, u64)>,
}

/// Read the image tagged `id` in the layout `dir`.
pub(crate) fn read_image(dir: &Path, id: &str) -> Result<Stored, ImageError> {
    let index = read_json(&dir.join("index.json"))?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["annotations"][REF_NAME] == id))
        .ok_or_else(|| ImageError::NotInLayout {
            dir: dir.to_path_buf(),
            id: id.to_string(),
        })?;
    let digest = entry["digest"].as_str().unwrap_or_default().to_string();
    let (manifest_bytes, manifest) = read_json_bytes(&blob_path(dir, &digest))?;
    let blob = |d: &Value| {
        (
            d["digest"].as_str().unwrap_or_default().to_string(),
            d["size"].as_u64().unwrap_or_default(),
        )
    };
    let mut blobs = vec![blob(&manifest["config"])];
    blobs.extend(
        manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(blob),
    );
    Ok(Stored {
        digest,
        manifest_bytes,
        blobs,
    })
}

/// Where a layout keeps blob `digest`.
pub(crate) fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap_or(digest))
}

/// The name `docker load` gives the image of version `id`.
pub fn docker_tag(id: &str) -> String {
    format!("comfix/{}:latest", id.to_ascii_lowercase())
}

/// Write the image tagged `id` in the layout `dir` as a `docker load` archive at `out` (written
/// beside it and renamed: a failed write leaves no half archive): `manifest.json` as `docker
/// save` writes it, the blobs, and the OCI layout's `index.json` and `oci-layout`, which newer
/// Dockers and `skopeo` read too.
pub fn docker_archive(dir: &Path, id: &str, out: &Path) -> Result<(), ImageError> {
    let image = read_image(dir, id)?;
    let rel = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let docker = json!([{
        "Config": rel(&image.blobs[0].0),
        "RepoTags": [docker_tag(id)],
        "Layers": image.blobs[1..].iter().map(|(d, _)| rel(d)).collect::<Vec<_>>(),
    }]);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST,
            "digest": image.digest,
            "size": image.manifest_bytes.len(),
            "annotations": { REF_NAME: id, "io.containerd.image.name": docker_tag(id) },
        }],
    });
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = tempfile::NamedTempFile::new_in(parent).map_err(io(parent))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, temp.as_file()));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut digests: Vec<&str> = vec![image.digest.as_str()];
    digests.extend(image.blobs.iter().map(|(d, _)| d.as_str()));
    digests.sort_unstable();
    digests.dedup();
    append_dirs(&mut tar, &["blobs", "blobs/sha256"]).map_err(io(out))?;
    for digest in digests {
        let path = blob_path(dir, digest);
        let mut file = std::fs::File::open(&path).map_err(io(&path))?;
        tar.append_file(rel(digest), &mut file).map_err(io(&path))?;
    }
    let docker = serde_json::to_vec(&docker).expect("json");
    append_file(&mut tar, "manifest.json", &docker).map_err(io(out))?;
    let index = serde_json::to_vec(&index).expect("json");
    append_file(&mut tar, "index.json", &index).map_err(io(out))?;
    append_file(&mut tar, "oci-layout", OCI_LAYOUT).map_err(io(out))?;
    let mut buffered = tar.into_inner().map_err(io(out))?;
    buffered.flush().map_err(io(out))?;
    drop(buffered);
    temp.persist(out).map_err(|e| io(out)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Add;

    /// A closure of more paths than an image may have layers: the largest keep their own layers,
    /// the smallest share one; the image stays under the limit and builds the same way twice.
    #[test]
    fn closures_over_the_layer_limit_group_their_smallest_paths() {
        let scratch = tempfile::tempdir().unwrap();
        let store = Store::open(&scratch.path().join("store")).unwrap();
        let mut models = Vec::new();
        for i in 0..(MAX_LAYERS + 20) {
            let bytes = vec![b'x'; 100 + i];
            let added = store.add_bytes(&format!("m{i}.bin"), &bytes, &[]).unwrap();
            models.push(crate::lock::LockedModel {
                source: format!("https://example.invalid/m{i}.bin"),
                name: None,
                target_subdir: Some("checkpoints".into()),
                filename: format!("m{i}.bin"),
                required: true,
                url: format!("https://example.invalid/m{i}.bin"),
                revision: None,
                size: bytes.len() as u64,
                sha256: None,
                blake3: blake3::hash(&bytes).to_hex().to_string(),
                store_path: added.record.name,
            });
        }
        let core = store
            .add_bytes("main.py", b"print(1)", &[])
            .unwrap()
            .record
            .name;
        let lock = crate::lock::Lock {
            lock_version: crate::lock::LOCK_VERSION,
            version_id: "big".into(),
            comfy: crate::lock::LockedGit {
                repo: "https://example.invalid/c.git".into(),
                git_ref: None,
                commit: "0".repeat(40),
                store_path: core,
            },
            custom_nodes: Vec::new(),
            models,
            python: None,
            workflows: Vec::new(),
        };
        let comfix = scratch.path().join("comfix");
        std::fs::write(&comfix, b"#!/bin/sh\n").unwrap();
        let version = Version {
            spec: b"{}",
            lock: &lock,
            venv: None,
            extra: Vec::new(),
        };
        let options = BuildOptions {
            models: Models::All,
            base: None,
            comfix,
            models_from: Vec::new(),
            trusted_keys: Vec::new(),
        };
        let out = scratch.path().join("layout");
        let built = build(&store, &version, &options, &out).unwrap();
        assert_eq!(built.layers.len(), MAX_LAYERS, "{}", built.layers.len());
        let own: Vec<&str> = built
            .layers
            .iter()
            .filter_map(|l| l.path.as_deref())
            .collect();
        assert_eq!(
            own.len(),
            MAX_LAYERS - 3,
            "paths of their own; the group, comfix, the top"
        );
        // The largest have their own layers (m119 is the largest model), the smallest do not.
        assert!(own.iter().any(|p| p.ends_with("-m119.bin")));
        assert!(!own.iter().any(|p| p.ends_with("-m0.bin")));
        let again = build(&store, &version, &options, &scratch.path().join("again")).unwrap();
        assert_eq!(again.digest, built.digest);
    }
}
