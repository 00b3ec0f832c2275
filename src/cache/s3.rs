//! A cache in S3-compatible object storage (`s3://BUCKET/PREFIX`): AWS S3, Cloudflare R2, MinIO,
//! Backblaze B2, GCS's interoperability API. The client is `object_store`'s; the endpoint,
//! region and credentials are taken the way AWS's tools take them (`docs/cache.md`). The same
//! backend reads a cache any static HTTP(S) server serves (`https://HOST/PATH`: a directory
//! `store copy --to DIR` wrote, behind nginx, a CDN, GitHub Pages…), read-only.
//!
//! Large archives go up as multipart uploads, one part at a time as they are written, and a
//! push killed midway resumes: the upload's id and each part's digest are journalled under the
//! store's `tmp/uploads/`, and a rerun writes the same bytes again (the archive of a path is
//! reproducible), skipping every part whose digest it finds there. Downloads are streamed in
//! ranges: a transfer that breaks is taken up again at the byte it stopped at, from the same
//! object (its ETag), and what arrives is verified by the importer before anything is
//! registered.

use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use super::Backend;
use crate::closure::{io, ClosureError};

/// The size of an upload's parts (S3 wants at least 5 MiB but for the last).
pub const PART_SIZE: usize = 16 << 20;

/// A bucket and a prefix in it, or a static HTTP(S) server's folder.
pub struct ObjectBackend {
    client: Arc<dyn ObjectStore>,
    /// The bucket's multipart uploads; `None` for a read-only HTTP(S) cache.
    multipart: Option<Arc<dyn MultipartStore>>,
    runtime: tokio::runtime::Runtime,
    /// Where it is, for messages (never a credential).
    shown: String,
    prefix: String,
    /// How long a request may go without an answer (or a transfer without a byte) before the
    /// bucket counts as stalled: [`stall_timeout`].
    stall: Duration,
}

/// `COMFIX_STALL_TIMEOUT` (`30s`, `2min`; default 60 s), like Nix's `stalled-download-timeout`:
/// an S3 endpoint that accepts connections and never answers — or stops sending mid-transfer —
/// is given up on after this long, and a substituter that stalls is passed over.
pub fn stall_timeout() -> Duration {
    std::env::var("COMFIX_STALL_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(60))
}

/// What a stalled request reports: no answer within `limit`.
fn stalled(limit: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: format!(
            "no answer within {} (COMFIX_STALL_TIMEOUT): the endpoint accepts connections but does not respond",
            humantime::format_duration(limit)
        )
        .into(),
    }
}

/// How S3 requests are retried (also the worker's output bucket).
pub(crate) fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 4,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    }
}

/// Connection and request timeouts of S3 clients (also the worker's output bucket).
pub(crate) fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        // A whole request, body included: a large archive takes a while.
        .with_timeout(Duration::from_secs(6 * 3600))
}

fn runtime() -> Result<tokio::runtime::Runtime, ClosureError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("comfix-cache")
        .enable_all()
        .build()
        .map_err(io("the cache client's runtime"))
}

/// Where to reach the bucket and as whom, resolved from the location, the environment and the
/// AWS profile. `Debug` never shows a secret.
#[derive(Default)]
struct Settings {
    endpoint: Option<String>,
    region: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    token: Option<String>,
}

impl ObjectBackend {
    /// `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&profile=P]`.
    pub fn open(location: &str) -> Result<ObjectBackend, ClosureError> {
        let bad = |reason: String| ClosureError::Foreign { reason };
        let url = url::Url::parse(location).map_err(|e| {
            bad(format!(
                "`{location}` is not an `s3://BUCKET/PREFIX` URL: {e}"
            ))
        })?;
        let bucket = url.host_str().unwrap_or("").to_string();
        if url.scheme() != "s3" || bucket.is_empty() {
            return Err(bad(format!(
                "`{location}` is not an `s3://BUCKET/PREFIX` URL"
            )));
        }
        let prefix = url.path().trim_matches('/').to_string();
        let mut query = Settings::default();
        let mut profile = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "endpoint" => query.endpoint = Some(value.into_owned()),
                "region" => query.region = Some(value.into_owned()),
                "profile" => profile = Some(value.into_owned()),
                other => {
                    return Err(bad(format!(
                        "`{other}` in `{location}` is not a setting comfix knows \
                         (endpoint, region, profile)"
                    )))
                }
            }
        }
        let settings = Settings::resolve(query, profile)?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(settings.region.as_deref().unwrap_or("us-east-1"))
            .with_retry(retry())
            .with_client_options(client_options());
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        match (&settings.access_key, &settings.secret_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = &settings.token {
                    builder = builder.with_token(token);
                }
            }
            // Web identity and container credentials are the client's to take; else anonymous
            // (a public bucket), never the EC2 metadata service's timeouts on other machines.
            _ if [
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            ]
            .iter()
            .any(|k| std::env::var_os(k).is_some()) => {}
            _ => builder = builder.with_skip_signature(true),
        }
        let client = builder.build().map_err(|e| ClosureError::Remote {
            location: format!("s3://{bucket}/{prefix}"),
            message: e.to_string(),
        })?;
        let client = Arc::new(client);
        let mut shown = format!("s3://{bucket}");
        if !prefix.is_empty() {
            shown = format!("{shown}/{prefix}");
        }
        if let Some(endpoint) = &settings.endpoint {
            shown = format!("{shown} at {endpoint}");
        }
        Ok(ObjectBackend {
            client: client.clone(),
            multipart: Some(client),
            runtime: runtime()?,
            shown,
            prefix,
            stall: stall_timeout(),
        })
    }

    /// `https://HOST/PATH` (or `http://`): a cache a static server serves, read-only. What it
    /// serves is trusted only as far as its signatures go, as from any cache.
    pub fn open_http(location: &str) -> Result<ObjectBackend, ClosureError> {
        let url = url::Url::parse(location).map_err(|e| ClosureError::Foreign {
            reason: format!("`{location}` is not an `https://HOST/PATH` URL: {e}"),
        })?;
        let mut shown = url.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        let client = HttpBuilder::new()
            .with_url(location.trim_end_matches('/'))
            .with_retry(retry())
            .with_client_options(client_options().with_allow_http(url.scheme() == "http"))
            .build()
            .map_err(|e| ClosureError::Remote {
                location: shown.to_string(),
                message: e.to_string(),
            })?;
        Ok(ObjectBackend {
            client: Arc::new(client),
            multipart: None,
            runtime: runtime()?,
            shown: shown.to_string().trim_end_matches('/').to_string(),
            prefix: String::new(),
            stall: stall_timeout(),
        })
    }

    /// The bucket's multipart uploads, or why there are none.
    fn multipart(&self) -> Result<&dyn MultipartStore, ClosureError> {
        self.multipart.as_deref().ok_or_else(|| self.read_only())
    }

    fn read_only(&self) -> ClosureError {
        self.remote(
            "an HTTP(S) cache is read-only: write to the directory or bucket it serves \
             (`comfix store copy --to DIR`), then publish that",
        )
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn remote(&self, e: impl std::fmt::Display) -> ClosureError {
        ClosureError::Remote {
            location: self.location(),
            message: e.to_string(),
        }
    }

    /// Run a request, bounded: no answer within the stall timeout is an error.
    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        self.block_on_within(self.stall, f)
    }

    /// Run a request that sends a part's bytes: bounded by how long the part may take at a
    /// crawl, never forever.
    fn block_on_sending<T>(
        &self,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        self.block_on_within(self.stall.max(Duration::from_secs(60)) * 10, f)
    }

    fn block_on_within<T>(
        &self,
        limit: Duration,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        self.runtime.block_on(async {
            tokio::time::timeout(limit, f)
                .await
                .unwrap_or_else(|_| Err(stalled(limit)))
        })
    }

    fn head(&self, key: &str) -> Result<Option<object_store::ObjectMeta>, ClosureError> {
        match self.block_on(self.client.head(&self.path(key))) {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.remote(e)),
        }
    }
}

impl Settings {
    /// The location's own settings first, then the environment, then the profile.
    fn resolve(query: Settings, profile: Option<String>) -> Result<Settings, ClosureError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let profile = profile
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let home = env("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(default)))
        };
        let credentials = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")
            .map(|p| ini_section(&p, &profile))
            .transpose()?
            .flatten()
            .unwrap_or_default();
        let config_section = if profile == "default" {
            "default".to_string()
        } else {
            format!("profile {profile}")
        };
        let config = file("AWS_CONFIG_FILE", ".aws/config")
            .map(|p| ini_section(&p, &config_section))
            .transpose()?
            .flatten()
            .unwrap_or_default();
        let from_profile = |k: &str| credentials.get(k).or_else(|| config.get(k)).cloned();
        let (access_key, secret_key, token) =
            match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => (Some(id), Some(secret), env("AWS_SESSION_TOKEN")),
                _ => (
                    from_profile("aws_access_key_id"),
                    from_profile("aws_secret_access_key"),
                    from_profile("aws_session_token"),
                ),
            };
        Ok(Settings {
            endpoint: query
                .endpoint
                .or_else(|| env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .or_else(|| from_profile("endpoint_url")),
            region: query
                .region
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .or_else(|| from_profile("region")),
            access_key,
            secret_key,
            token,
        })
    }
}

/// The `key = value` pairs of `[section]` in an AWS credentials or config file (`None` when the
/// file does not exist or has no such section).
fn ini_section(
    path: &FsPath,
    section: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, ClosureError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut found = None;
    let mut current = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim() == section;
            if current {
                found.get_or_insert_with(std::collections::BTreeMap::new);
            }
            continue;
        }
        if let (true, Some((key, value))) = (current, line.split_once('=')) {
            found
                .get_or_insert_with(std::collections::BTreeMap::new)
                .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    Ok(found)
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.shown.clone()
    }

    fn prepare(&self) -> Result<(), ClosureError> {
        self.multipart()?;
        Ok(()) // an object store has no directories
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, ClosureError> {
        let got = self.block_on(async {
            let result = self.client.get(&self.path(key)).await?;
            result.bytes().await
        });
        match got {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.remote(e)),
        }
    }

    fn write(&self, key: &str, bytes: Vec<u8>) -> Result<(), ClosureError> {
        self.multipart()?;
        // One PUT: an object is whole or absent.
        self.block_on(self.client.put(&self.path(key), PutPayload::from(bytes)))
            .map_err(|e| self.remote(e))?;
        Ok(())
    }

    fn size(&self, key: &str) -> Result<Option<u64>, ClosureError> {
        Ok(self.head(key)?.map(|m| m.size))
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, SystemTime)>, ClosureError> {
        let prefix = self.path(dir);
        let found: Vec<object_store::ObjectMeta> = self
            .block_on(self.client.list(Some(&prefix)).try_collect())
            .map_err(|e| self.remote(e))?;
        Ok(found
            .into_iter()
            .filter_map(|m| {
                let rest = m.location.as_ref().strip_prefix(prefix.as_ref())?;
                let rest = rest.trim_start_matches('/');
                (!rest.is_empty() && !rest.contains('/'))
                    .then(|| (rest.to_string(), SystemTime::from(m.last_modified)))
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<(), ClosureError> {
        self.multipart()?;
        match self.block_on(self.client.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.remote(e)),
        }
    }

    fn upload(
        &self,
        key: &str,
        work: &FsPath,
        produce: &mut dyn FnMut(&mut dyn Write) -> Result<(), ClosureError>,
    ) -> Result<u64, ClosureError> {
        self.multipart()?;
        let dir = work.join("uploads");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let id = blake3::hash(format!("{}\n{key}", self.location()).as_bytes()).to_hex();
        let journal = dir.join(format!("{}.json", &id[..32]));
        // One process at a time per object on this machine; another machine's push of the same
        // object writes the same bytes, and whichever completes last wins.
        let lock_path = dir.join(format!("{}.lock", &id[..32]));
        let _lock = crate::store::flock::exclusive(&lock_path).map_err(io(&lock_path))?;
        if let Some(size) = self.size(key)? {
            return Ok(size);
        }
        let mut writer = PartWriter {
            backend: self,
            path: self.path(key),
            journal_path: journal,
            journal: None,
            buffer: Vec::with_capacity(PART_SIZE),
            parts: Vec::new(),
            total: 0,
        };
        writer.journal = writer.load_journal();
        produce(&mut writer)?;
        writer.finish()
    }

    fn open(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ClosureError> {
        let Some(meta) = self.head(key)? else {
            return Ok(None);
        };
        Ok(Some(Box::new(ObjectReader {
            backend: self,
            path: self.path(key),
            size: meta.size,
            etag: meta.e_tag,
            position: 0,
            stream: None,
            chunk: bytes::Bytes::new(),
            failures: 0,
        })))
    }
}

/// The journal of one multipart upload: its id and each part's BLAKE3 and ETag, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    object: String,
    upload_id: String,
    part_size: usize,
    parts: Vec<JournalPart>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalPart {
    blake3: String,
    etag: String,
}

/// Writes an object as it is produced: a single PUT when it stays under one part, else a
/// multipart upload, part by part.
struct PartWriter<'a> {
    backend: &'a ObjectBackend,
    path: Path,
    journal_path: PathBuf,
    journal: Option<Journal>,
    buffer: Vec<u8>,
    parts: Vec<PartId>,
    total: u64,
}

impl PartWriter<'_> {
    fn load_journal(&self) -> Option<Journal> {
        let text = std::fs::read(&self.journal_path).ok()?;
        let journal: Journal = serde_json::from_slice(&text).ok()?;
        (journal.object == self.path.as_ref() && journal.part_size == PART_SIZE).then_some(journal)
    }

    fn save_journal(&self) -> Result<(), ClosureError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let text = serde_json::to_vec(journal).expect("a journal serializes");
        let dir = self.journal_path.parent().expect("in a directory");
        let mut temp = crate::files::temp_in(dir).map_err(io(dir))?;
        temp.write_all(&text).map_err(io(&self.journal_path))?;
        temp.persist(&self.journal_path)
            .map_err(|e| io(&self.journal_path)(e.error))?;
        Ok(())
    }

    /// Send part number `self.parts.len()`, unless the journal has these very bytes.
    fn send_part(&mut self, bytes: Vec<u8>) -> Result<(), ClosureError> {
        let backend = self.backend;
        let index = self.parts.len();
        let digest = blake3::hash(&bytes).to_hex().to_string();
        if self.journal.is_none() {
            let id = backend
                .block_on(backend.multipart()?.create_multipart(&self.path))
                .map_err(|e| backend.remote(e))?;
            self.journal = Some(Journal {
                object: self.path.to_string(),
                upload_id: id,
                part_size: PART_SIZE,
                parts: Vec::new(),
            });
            self.save_journal()?;
        }
        let journal = self.journal.as_mut().expect("made above");
        if let Some(done) = journal.parts.get(index) {
            if done.blake3 == digest {
                self.parts.push(PartId {
                    content_id: done.etag.clone(),
                });
                return Ok(());
            }
            // Other bytes than last time: this part and the rest are sent again.
            journal.parts.truncate(index);
        }
        let upload_id = journal.upload_id.clone();
        let part = backend.block_on_sending(backend.multipart()?.put_part(
            &self.path,
            &upload_id,
            index,
            PutPayload::from(bytes),
        ));
        let part = match part {
            Ok(part) => part,
            Err(e) => {
                // An upload that is gone (aborted, expired) cannot be resumed: start afresh
                // next time.
                if matches!(e, object_store::Error::NotFound { .. }) {
                    let _ = std::fs::remove_file(&self.journal_path);
                }
                return Err(backend.remote(e));
            }
        };
        let journal = self.journal.as_mut().expect("made above");
        journal.parts.push(JournalPart {
            blake3: digest,
            etag: part.content_id.clone(),
        });
        self.parts.push(part);
        self.save_journal()?;
        crate::fault::pause_point("s3-part-uploaded");
        Ok(())
    }

    fn finish(mut self) -> Result<u64, ClosureError> {
        let backend = self.backend;
        if self.journal.is_none() && self.parts.is_empty() {
            let bytes = std::mem::take(&mut self.buffer);
            backend
                .block_on_sending(backend.client.put(&self.path, PutPayload::from(bytes)))
                .map_err(|e| backend.remote(e))?;
            return Ok(self.total);
        }
        if !self.buffer.is_empty() || self.parts.is_empty() {
            let last = std::mem::take(&mut self.buffer);
            self.send_part(last)?;
        }
        let journal = self.journal.clone().expect("a multipart upload");
        let done = backend.block_on(backend.multipart()?.complete_multipart(
            &self.path,
            &journal.upload_id,
            self.parts.clone(),
        ));
        let _ = std::fs::remove_file(&self.journal_path);
        if let Err(e) = done {
            // Completed by another process meanwhile: the object is there, whole.
            let key = self.path.as_ref().to_string();
            match backend.block_on(backend.client.head(&Path::from(key))) {
                Ok(meta) if meta.size == self.total => {}
                _ => return Err(backend.remote(e)),
            }
        }
        Ok(self.total)
    }
}

impl Write for PartWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        self.total += bytes.len() as u64;
        while self.buffer.len() >= PART_SIZE {
            let rest = self.buffer.split_off(PART_SIZE);
            let part = std::mem::replace(&mut self.buffer, rest);
            self.send_part(part).map_err(std::io::Error::other)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads an object as a stream of ranged GETs of the same version (its ETag), taking up a
/// broken transfer where it stopped.
struct ObjectReader<'a> {
    backend: &'a ObjectBackend,
    path: Path,
    size: u64,
    etag: Option<String>,
    position: u64,
    /// The transfer in progress: its chunks, received ahead by a task of the runtime so the
    /// network is read while the importer unpacks and hashes.
    stream: Option<tokio::sync::mpsc::Receiver<object_store::Result<bytes::Bytes>>>,
    chunk: bytes::Bytes,
    failures: u32,
}

const READ_ATTEMPTS: u32 = 5;

/// How many chunks a transfer may receive ahead of the importer.
const READ_AHEAD: usize = 4096;

/// Receive `stream` into a channel, ahead of its reader, until the reader goes.
fn read_ahead(
    runtime: &tokio::runtime::Runtime,
    mut stream: BoxStream<'static, object_store::Result<bytes::Bytes>>,
) -> tokio::sync::mpsc::Receiver<object_store::Result<bytes::Bytes>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(READ_AHEAD);
    runtime.spawn(async move {
        while let Some(item) = stream.next().await {
            if sender.send(item).await.is_err() {
                break;
            }
        }
    });
    receiver
}

impl ObjectReader<'_> {
    fn next_chunk(&mut self) -> std::io::Result<()> {
        let backend = self.backend;
        loop {
            if self.stream.is_none() {
                let options = GetOptions {
                    range: (self.position > 0).then_some(GetRange::Offset(self.position)),
                    if_match: self.etag.clone(),
                    ..GetOptions::default()
                };
                match backend.block_on(backend.client.get_opts(&self.path, options)) {
                    Ok(result) => {
                        self.stream = Some(read_ahead(&backend.runtime, result.into_stream()))
                    }
                    Err(e) => {
                        self.fail(e)?;
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            // A transfer that stops sending is given up on after the stall timeout.
            let received = backend
                .block_on(async { Ok(stream.recv().await) })
                .unwrap_or_else(|stalled| Some(Err(stalled)));
            match received {
                Some(Ok(bytes)) => {
                    self.chunk = bytes;
                    return Ok(());
                }
                Some(Err(e)) => self.fail(e)?,
                None if self.position < self.size => self.fail(format!(
                    "the transfer ended at byte {} of {}",
                    self.position, self.size
                ))?,
                None => return Ok(()),
            }
        }
    }

    /// Count a failed transfer, drop it, and say whether another may be tried.
    fn fail(&mut self, e: impl std::fmt::Display) -> std::io::Result<()> {
        self.stream = None;
        self.failures += 1;
        let message = format!("`{}`: {e}", self.path);
        if self.failures >= READ_ATTEMPTS {
            return Err(std::io::Error::other(message));
        }
        tracing::debug!("retrying from byte {}: {message}", self.position);
        std::thread::sleep(Duration::from_millis(200 << self.failures.min(4)));
        Ok(())
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.chunk.is_empty() {
            if self.position >= self.size {
                return Ok(0);
            }
            self.next_chunk()?;
            if self.chunk.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        self.position += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "[default]\nregion = eu-west-1\n\n[profile team]\n# a comment\nregion=auto\n\
             endpoint_url = https://r2.example\n",
        )
        .unwrap();
        let team = ini_section(&path, "profile team").unwrap().unwrap();
        assert_eq!(team["region"], "auto");
        assert_eq!(team["endpoint_url"], "https://r2.example");
        assert_eq!(
            ini_section(&path, "default").unwrap().unwrap()["region"],
            "eu-west-1"
        );
        assert!(ini_section(&path, "profile other").unwrap().is_none());
        assert!(ini_section(&dir.path().join("absent"), "default")
            .unwrap()
            .is_none());
    }

    #[test]
    fn locations_name_a_bucket_and_known_settings() {
        for bad in ["s3:///prefix", "s3://b/p?token=x", "http://b/p"] {
            assert!(ObjectBackend::open(bad).is_err(), "{bad}");
        }
        let backend =
            ObjectBackend::open("s3://team-cache/comfix/?endpoint=http://127.0.0.1:9").unwrap();
        assert_eq!(
            backend.location(),
            "s3://team-cache/comfix at http://127.0.0.1:9"
        );
        assert_eq!(backend.path("paths/x.json").as_ref(), "comfix/paths/x.json");
    }
}
