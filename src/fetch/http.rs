//! HTTP(S): JSON APIs, metadata requests and resumable, verified downloads into the store.
//!
//! Redirects are followed by hand so that a token is attached only to requests whose host is the
//! token's own host. Downloads stream into `tmp/downloads/<key>.part` (key: BLAKE3 of the URL),
//! hashed while written on a separate thread; an interrupted download, in this process or a later
//! one, resumes with a `Range` request from where the file ends. Transient failures (connection
//! errors, 5xx, 429) are retried with exponential backoff.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_RANGE, ETAG, IF_RANGE, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode};
use sha2::Digest as _;
use url::Url;

use super::{Expected, FetchConfig, FetchError};
use crate::reporter::Reporter;
use crate::spec::Secret;
use crate::store::Add;
use crate::store::{flock, Staging, Store};

/// A credential for one host: sent only to `host` (host and port), never to a redirect target.
#[derive(Debug, Clone)]
pub struct Auth {
    host: String,
    /// The `Authorization` header value, when the token is set.
    header: Option<Secret>,
    /// The variable the token comes from, for hints.
    pub var: &'static str,
}

fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

impl Auth {
    /// A bearer token for the host of `base`.
    pub fn bearer(base: &Url, token: Option<&Secret>, var: &'static str) -> Auth {
        Auth {
            host: host_key(base),
            header: token.map(|t| Secret::new(format!("Bearer {}", t.expose()))),
            var,
        }
    }

    /// A user and password for the host of `url` (HTTP Basic), from `origin` (for hints).
    pub fn basic(url: &Url, user: &str, password: &str, origin: &'static str) -> Auth {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Auth {
            host: host_key(url),
            header: Some(Secret::new(format!("Basic {pair}"))),
            var: origin,
        }
    }

    fn applies(&self, url: &Url) -> bool {
        host_key(url) == self.host
    }

    fn host(&self) -> &str {
        self.host.rsplit_once(':').map_or(&self.host, |(h, _)| h)
    }
}

/// One file to download.
#[derive(Debug, Clone)]
pub struct Download {
    /// What it is, for messages (`model wan-vae`).
    pub what: String,
    pub url: Url,
    pub auth: Option<Auth>,
    pub size: Option<u64>,
    pub sha256: Option<Expected>,
    pub blake3: Option<Expected>,
    /// The file name inside the staging directory.
    pub file_name: String,
    /// The store path name the caller makes of these bytes: when another process already
    /// downloaded the same URL into a path of this name with the expected digests, that path is
    /// used instead of downloading again.
    pub store_name: Option<String>,
}

/// What [`Client::download`] got.
pub enum Got {
    /// New bytes, verified and staged: the caller adds them and then tells the receipt where
    /// they went ([`Receipt::stored`]). Boxed: it carries the staging directory and the lock.
    Fetched(Box<Fetched>),
    /// Another process downloaded the same URL meanwhile (or earlier) and stored it as this valid
    /// path, protected for this process, with the digests the download expected.
    Stored(StoredDownload),
}

/// A finished download of the same URL that is a valid store path.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredDownload {
    pub store_path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub blake3: String,
}

/// A verified download, staged in the store but not yet registered. It holds the URL's download
/// lock until [`Fetched::stored`] (or drop), so a process waiting for the same URL finds the
/// registered path instead of downloading it again.
pub struct Fetched {
    pub staging: Staging,
    pub file_name: String,
    pub size: u64,
    /// Computed when an expected SHA-256 was given (and then equal to it).
    pub sha256: Option<String>,
    pub blake3: crate::store::tree::Digest,
    /// The file name the server gave in `Content-Disposition`, when it gave a safe one.
    pub suggested_name: Option<String>,
    /// Holds the URL's download lock; tell it where the bytes went.
    pub receipt: Receipt,
}

/// The URL's download lock, and the record to leave for the next process that wants the URL.
pub struct Receipt {
    done: PathBuf,
    record: StoredDownload,
    _lock: flock::LockGuard,
}

impl Receipt {
    /// Record that the bytes are now the valid store path `store_path`, and release the lock.
    pub fn stored(self, store_path: &str) {
        let record = StoredDownload {
            store_path: store_path.to_string(),
            ..self.record
        };
        let temp = self
            .done
            .with_extension(format!("done.{}", std::process::id()));
        let text = serde_json::to_string(&record).expect("a download record serializes");
        if std::fs::write(&temp, text).is_ok() {
            let _ = std::fs::rename(&temp, &self.done);
        }
    }
}

/// The download key of a URL: the name of its partial file, lock and record under
/// `tmp/downloads/` (`<key>.part`, `.etag`, `.lock`, `.done`).
pub fn download_key(url: &str) -> String {
    blake3::hash(url.as_bytes()).to_hex()[..32].to_string()
}

/// The HTTP client of a fetch session.
pub struct Client {
    /// Built on the first request: loading the machine's certificates costs milliseconds that a
    /// command which downloads nothing (a no-op realize, `status`) should not pay.
    http: std::sync::OnceLock<reqwest::Client>,
    config: Arc<FetchConfig>,
    next_id: AtomicU64,
}

fn status_error(
    what: &str,
    url: &Url,
    status: StatusCode,
    headers: &HeaderMap,
    auth: Option<&Auth>,
) -> FetchError {
    let hint = match status.as_u16() {
        401 | 403 => Some(match auth {
            Some(auth) if auth.header.is_some() => format!(
                "`{}` refused the token in `{}`; check that it grants access to this file",
                auth.host(),
                auth.var
            ),
            Some(auth) => format!(
                "set `{}` to a token with access (it is sent only to `{}`){}",
                auth.var,
                auth.host(),
                if auth.var == "HF_TOKEN" {
                    ", or log in with `hf auth login`"
                } else {
                    ""
                }
            ),
            None => "the server requires authentication for this URL".to_string(),
        }),
        404 => Some(format!(
            "check the source (path, revision, id) of {what}; `{url}` does not exist"
        )),
        _ => None,
    };
    // `Retry-After` in seconds (an HTTP date is left to the backoff).
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    FetchError::Status {
        what: what.to_string(),
        url: url.to_string(),
        status: status.as_u16(),
        hint,
        retry_after,
    }
}

fn http_error(what: &str, url: &Url, err: impl std::fmt::Display) -> FetchError {
    FetchError::Http {
        what: what.to_string(),
        url: url.to_string(),
        message: err.to_string(),
    }
}

/// A failed request as the user needs to see it: the cause (DNS, connection, TLS, timeout, proxy)
/// and the host, not just "error sending request". An untrusted certificate is its own error.
fn request_error(what: &str, url: &Url, err: &reqwest::Error, config: &FetchConfig) -> FetchError {
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(0);
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !chain.iter().any(|c: &String| c.contains(&text)) {
            chain.push(text);
        }
        source = cause.source();
    }
    let causes = chain.join(": ");
    let lower = causes.to_ascii_lowercase();
    if lower.contains("invalid peer certificate") || lower.contains("certificate verify failed") {
        return FetchError::Tls {
            what: what.to_string(),
            host,
            message: causes,
        };
    }
    let kind = if err.is_timeout() {
        let limit = if err.is_connect() {
            config.connect_timeout
        } else {
            config.read_timeout
        };
        format!(
            "timed out after {} s waiting for `{host}:{port}` (`COMFIX_CONNECT_TIMEOUT`, `COMFIX_READ_TIMEOUT`)",
            limit.as_secs_f64()
        )
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        format!("cannot resolve the host name `{host}` (DNS)")
    } else if lower.contains("connection refused") {
        format!("connection to `{host}:{port}` refused")
    } else if lower.contains("proxy") || lower.contains("tunnel") {
        "the proxy failed (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`)".to_string()
    } else if lower.contains("tls") || lower.contains("handshake") || lower.contains("certificate")
    {
        format!("TLS with `{host}:{port}` failed")
    } else if err.is_connect() {
        format!("cannot connect to `{host}:{port}`")
    } else if err.is_body() || err.is_decode() {
        format!("the transfer from `{host}:{port}` broke off")
    } else {
        format!("request to `{host}:{port}` failed")
    };
    let message = if causes.is_empty() {
        format!("{kind}: {err}")
    } else {
        format!("{kind}: {causes}")
    };
    FetchError::Http {
        what: what.to_string(),
        url: url.to_string(),
        message,
    }
}

/// The file name of a `Content-Disposition` header, when it is a safe single name.
fn disposition_name(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(reqwest::header::CONTENT_DISPOSITION)?
        .to_str()
        .ok()?;
    let mut plain = None;
    for part in value.split(';').map(str::trim) {
        if let Some(encoded) = part.strip_prefix("filename*=") {
            // RFC 5987: charset'language'percent-encoded
            let raw = encoded.splitn(3, '\'').nth(2)?;
            let decoded = url::form_urlencoded::parse(format!("n={raw}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())?;
            return safe_file_name(&decoded);
        }
        if let Some(name) = part.strip_prefix("filename=") {
            plain = Some(name.trim_matches('"').to_string());
        }
    }
    plain.and_then(|n| safe_file_name(&n))
}

/// `name` when it can be a file name in a models folder: one path component, nothing hidden.
pub fn safe_file_name(name: &str) -> Option<String> {
    let name = name.trim();
    (crate::spec::check_path_component(name).is_ok() && !name.starts_with('.'))
        .then(|| name.to_string())
}

impl Client {
    pub fn new(config: Arc<FetchConfig>) -> Client {
        Client {
            http: std::sync::OnceLock::new(),
            config,
            next_id: AtomicU64::new(0),
        }
    }

    /// The HTTP client, built the first time it is needed.
    fn http(&self) -> Result<&reqwest::Client, FetchError> {
        if let Some(http) = self.http.get() {
            return Ok(http);
        }
        let built = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("comfix/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.config.connect_timeout)
            .read_timeout(self.config.read_timeout)
            .build()
            .map_err(|e| FetchError::Config {
                message: format!("cannot create the HTTP client: {e}"),
            })?;
        Ok(self.http.get_or_init(|| built))
    }

    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Send one request, following redirects by hand when `follow`; the token goes only to its
    /// own host. Returns the response and the URL that answered.
    async fn send(
        &self,
        what: &str,
        method: Method,
        url: &Url,
        auth: Option<&Auth>,
        headers: &[(reqwest::header::HeaderName, String)],
        follow: bool,
    ) -> Result<(Response, Url), FetchError> {
        if self.config.offline {
            return Err(FetchError::Offline {
                missing: vec![format!("{what} (`{url}`)")],
            });
        }
        let mut current = url.clone();
        for _ in 0..10 {
            let mut request = self.http()?.request(method.clone(), current.clone());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            if let Some(auth) = auth.filter(|a| a.applies(&current)) {
                if let Some(header) = &auth.header {
                    request = request.header(AUTHORIZATION, header.expose());
                }
            }
            let response = request
                .send()
                .await
                .map_err(|e| request_error(what, &current, &e, &self.config))?;
            if follow && response.status().is_redirection() {
                if let Some(location) = response.headers().get(LOCATION) {
                    let location = location
                        .to_str()
                        .map_err(|e| http_error(what, &current, e))?;
                    let next = current
                        .join(location)
                        .map_err(|e| http_error(what, &current, e))?;
                    tracing::debug!("{what}: redirected to `{}`", next.host_str().unwrap_or(""));
                    current = next;
                    continue;
                }
            }
            return Ok((response, current));
        }
        Err(http_error(what, url, "too many redirects"))
    }

    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let mut delay = self.config.retry_base;
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(err) if err.is_transient() && tries < self.config.attempts => {
                    let wait = super::retry_wait(&err, delay);
                    tracing::warn!("{err}; retrying in {wait:.1?}");
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    /// GET a JSON document.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: &Url,
        auth: Option<&Auth>,
    ) -> Result<T, FetchError> {
        self.retrying(|| async {
            let (response, at) = self.send(what, Method::GET, url, auth, &[], true).await?;
            if !response.status().is_success() {
                let status = response.status();
                return Err(status_error(what, &at, status, response.headers(), auth));
            }
            let text = response
                .text()
                .await
                .map_err(|e| request_error(what, &at, &e, &self.config))?;
            serde_json::from_str(&text).map_err(|e| FetchError::BadAnswer {
                what: what.to_string(),
                message: format!("unexpected answer from `{at}`: {e}"),
            })
        })
        .await
    }

    /// HEAD without following redirects: the status and headers of the first answer.
    pub async fn head(
        &self,
        what: &str,
        url: &Url,
        auth: Option<&Auth>,
    ) -> Result<(StatusCode, HeaderMap), FetchError> {
        self.retrying(|| async {
            let (response, at) = self.send(what, Method::HEAD, url, auth, &[], false).await?;
            let status = response.status();
            if status.is_success() || status.is_redirection() {
                Ok((status, response.headers().clone()))
            } else {
                Err(status_error(what, &at, status, response.headers(), auth))
            }
        })
        .await
    }

    /// Download `d` into the store's staging area, verified against every expected value. When
    /// another process holds the same URL's download, this waits for it and then uses what it
    /// stored (one download per URL across processes).
    // Long on purpose: the retry loop and the download lock around one attempt; the attempt is `download_once`.
    #[tracing::instrument(level = "debug", name = "download", skip_all, fields(what = %d.what))]
    pub async fn download(
        &self,
        store: &Store,
        reporter: &dyn Reporter,
        d: &Download,
    ) -> Result<Got, FetchError> {
        let dir = store.downloads_dir();
        std::fs::create_dir_all(&dir).map_err(FetchError::io(&dir))?;
        let key = download_key(d.url.as_str());
        let part = dir.join(format!("{key}.part"));
        let meta = dir.join(format!("{key}.etag"));
        let done = dir.join(format!("{key}.done"));
        let lock_path = dir.join(format!("{key}.lock"));
        let held = {
            let lock_path = lock_path.clone();
            let shown = lock_path.clone();
            tokio::task::spawn_blocking(move || flock::exclusive(&lock_path))
                .await
                .expect("the lock task does not panic")
                .map_err(FetchError::io(shown))?
        };
        if let Some(stored) = self.already_stored(store, d, &done)? {
            tracing::info!("{}: already downloaded as `{}`", d.what, stored.store_path);
            return Ok(Got::Stored(stored));
        }

        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        reporter.item_start(id, &d.what, d.size);
        let mut sink = Sink::resume(&part, d.sha256.is_some())?;
        if sink.written > 0 {
            tracing::info!("{}: resuming at byte {}", d.what, sink.written);
            reporter.item_advance(id, sink.written);
        }
        let etag = std::fs::read_to_string(&meta).ok();
        let mut delay = self.config.retry_base;
        let mut tries = 1;
        let mut suggested = None;
        let result = loop {
            let (result, back) = self
                .download_once(d, sink, etag.as_deref(), &meta, reporter, id)
                .await;
            sink = back;
            match result {
                Err(err) if err.is_transient() && tries < self.config.attempts => {
                    let wait = super::retry_wait(&err, delay);
                    tracing::warn!("{err}; retrying in {wait:.1?} from byte {}", sink.written);
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                    tries += 1;
                }
                Ok(name) => {
                    suggested = name;
                    break Ok(());
                }
                Err(err) => break Err(err),
            }
        };
        reporter.item_finish(id);
        result?;
        let (size, sha256, blake3) = sink.finish().map_err(FetchError::io(&part))?;

        let discard = || {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&meta);
        };
        let blake3_hex = blake3::Hash::from(blake3).to_hex().to_string();
        if let Some(expected) = d.size.filter(|e| *e != size) {
            discard();
            return Err(FetchError::SizeMismatch {
                what: d.what.clone(),
                url: d.url.to_string(),
                expected,
                actual: size,
            });
        }
        let checks = [
            ("SHA-256", &d.sha256, sha256.as_deref()),
            ("BLAKE3", &d.blake3, Some(blake3_hex.as_str())),
        ];
        for (algorithm, expected, actual) in checks {
            if let (Some(expected), Some(actual)) = (expected, actual) {
                if let Err(err) = expected.check(&d.what, d.url.as_str(), algorithm, actual) {
                    discard();
                    return Err(err);
                }
            }
        }
        let staging = store.staging()?;
        let staged = staging.path().join(&d.file_name);
        std::fs::rename(&part, &staged).map_err(FetchError::io(&staged))?;
        let _ = std::fs::remove_file(&meta);
        let receipt = Receipt {
            done,
            record: StoredDownload {
                store_path: String::new(),
                size,
                sha256: sha256.clone(),
                blake3: blake3_hex,
            },
            _lock: held,
        };
        Ok(Got::Fetched(Box::new(Fetched {
            staging,
            file_name: d.file_name.clone(),
            size,
            sha256,
            blake3,
            suggested_name: suggested,
            receipt,
        })))
    }

    /// The record another download of the same URL left, if it names a valid store path of the
    /// wanted name with every digest `d` expects. The path is protected before it is checked.
    fn already_stored(
        &self,
        store: &Store,
        d: &Download,
        done: &Path,
    ) -> Result<Option<StoredDownload>, FetchError> {
        let Some(name) = &d.store_name else {
            return Ok(None);
        };
        let Some(record) = std::fs::read_to_string(done)
            .ok()
            .and_then(|t| serde_json::from_str::<StoredDownload>(&t).ok())
        else {
            return Ok(None);
        };
        let same = |expected: &Option<Expected>, actual: Option<&String>| match expected {
            None => true,
            Some(e) => actual.is_some_and(|a| a.eq_ignore_ascii_case(&e.hex)),
        };
        let fits = record
            .store_path
            .split_once('-')
            .is_some_and(|(_, n)| n == name)
            && d.size.is_none_or(|s| s == record.size)
            && same(&d.sha256, record.sha256.as_ref())
            && same(&d.blake3, Some(&record.blake3));
        if !fits {
            return Ok(None);
        }
        Ok(store.valid(&record.store_path)?.map(|_| record))
    }

    /// One attempt: request from `sink.written` on, stream the body into the sink. Always hands
    /// the sink back, with whatever was written.
    // Long on purpose: the streaming protocol (resume, hash while writing, verify, rename) reads top to bottom.
    async fn download_once(
        &self,
        d: &Download,
        mut sink: Sink,
        etag: Option<&str>,
        meta: &Path,
        reporter: &dyn Reporter,
        id: u64,
    ) -> (Result<Option<String>, FetchError>, Sink) {
        let mut headers = Vec::new();
        if sink.written > 0 {
            headers.push((RANGE, format!("bytes={}-", sink.written)));
            if let Some(etag) = etag {
                headers.push((IF_RANGE, etag.to_string()));
            }
        }
        let (mut response, at) = match self
            .send(
                &d.what,
                Method::GET,
                &d.url,
                d.auth.as_ref(),
                &headers,
                true,
            )
            .await
        {
            Ok(answer) => answer,
            Err(err) => return (Err(err), sink),
        };
        let status = response.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE && sink.written > 0 {
            // Either complete already or the file changed: start over.
            if d.size == Some(sink.written) {
                return (Ok(None), sink);
            }
            return match sink.restart() {
                Ok(()) => (
                    Err(http_error(
                        &d.what,
                        &at,
                        "range not satisfiable; restarting",
                    )),
                    sink,
                ),
                Err(e) => (Err(FetchError::io(&sink.path)(e)), sink),
            };
        }
        if !status.is_success() {
            return (
                Err(status_error(
                    &d.what,
                    &at,
                    status,
                    response.headers(),
                    d.auth.as_ref(),
                )),
                sink,
            );
        }
        let resumed = status == StatusCode::PARTIAL_CONTENT
            && response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {}-", sink.written)));
        if !resumed && sink.written > 0 {
            tracing::info!("{}: the server sent the whole file; starting over", d.what);
            if let Err(e) = sink.restart() {
                return (Err(FetchError::io(&sink.path)(e)), sink);
            }
        }
        if d.size.is_none() {
            if let Some(length) = response.content_length() {
                reporter.item_length(id, sink.written + length);
            }
        }
        // Fail before writing what the disk cannot hold.
        if let Some(length) = response.content_length() {
            let dir = sink.path.parent().unwrap_or(Path::new("."));
            if let Err(err) = super::check_space(&d.what, dir, length) {
                return (Err(err), sink);
            }
        }
        if let Some(tag) = response.headers().get(ETAG).and_then(|v| v.to_str().ok()) {
            let _ = std::fs::write(meta, tag);
        }
        let suggested = disposition_name(response.headers());

        // Hash and write on a blocking thread while this task receives.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        let writer = tokio::task::spawn_blocking(move || {
            let mut result = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = sink.write(&chunk) {
                    result = Err(e);
                    break;
                }
            }
            (result, sink)
        });
        let mut received = Ok(());
        let mut at_byte = 0u64;
        loop {
            // A transfer that sends nothing for a while is reported, not silently waited on; the
            // client's read timeout ends it.
            let next = response.chunk();
            tokio::pin!(next);
            let mut stalled = std::time::Duration::ZERO;
            let got = loop {
                tokio::select! {
                    got = &mut next => break got,
                    _ = tokio::time::sleep(self.config.stall_warning) => {
                        stalled += self.config.stall_warning;
                        tracing::warn!(
                            "{}: no data from `{}` for {} s (at byte {}); still waiting, giving up after {} s without data (`COMFIX_READ_TIMEOUT`)",
                            d.what,
                            at.host_str().unwrap_or_default(),
                            stalled.as_secs_f64(),
                            at_byte,
                            self.config.read_timeout.as_secs_f64()
                        );
                    }
                }
            };
            match got {
                Ok(Some(chunk)) => {
                    let len = chunk.len() as u64;
                    at_byte += len;
                    if tx.send(chunk).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                    reporter.item_advance(id, len);
                }
                Ok(None) => break,
                Err(e) => {
                    received = Err(request_error(&d.what, &at, &e, &self.config));
                    break;
                }
            }
        }
        drop(tx);
        let (written, mut sink) = writer.await.expect("the writer thread does not panic");
        if let Err(e) = written {
            let path = sink.path.clone();
            if e.kind() == std::io::ErrorKind::StorageFull {
                // A full disk: the partial file would only keep it full.
                let needed = d.size.unwrap_or(sink.written);
                let _ = sink.restart();
                let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                let available = super::available_bytes(&dir).unwrap_or(0);
                return (
                    Err(FetchError::NoSpace {
                        what: d.what.clone(),
                        needed,
                        available,
                        path: dir,
                    }),
                    sink,
                );
            }
            return (Err(FetchError::io(path)(e)), sink);
        }
        (received.map(|()| suggested), sink)
    }
}

/// The file being downloaded and the hashes of what it holds so far.
struct Sink {
    path: PathBuf,
    file: File,
    blake3: blake3::Hasher,
    sha256: Option<sha2::Sha256>,
    written: u64,
}

impl Sink {
    /// Open `path` for appending, hashing what an earlier attempt left in it.
    fn resume(path: &Path, want_sha256: bool) -> Result<Sink, FetchError> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(FetchError::io(path))?;
        let mut sink = Sink {
            path: path.to_path_buf(),
            file: file.try_clone().map_err(FetchError::io(path))?,
            blake3: blake3::Hasher::new(),
            sha256: want_sha256.then(sha2::Sha256::new),
            written: 0,
        };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(FetchError::io(path))?;
            if n == 0 {
                break;
            }
            sink.hash(&buf[..n]);
        }
        Ok(sink)
    }

    fn hash(&mut self, bytes: &[u8]) {
        self.blake3.update(bytes);
        if let Some(sha) = &mut self.sha256 {
            sha.update(bytes);
        }
        self.written += bytes.len() as u64;
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.hash(bytes);
        Ok(())
    }

    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.blake3.reset();
        if let Some(sha) = &mut self.sha256 {
            *sha = sha2::Sha256::new();
        }
        self.written = 0;
        Ok(())
    }

    fn finish(self) -> std::io::Result<(u64, Option<String>, crate::store::tree::Digest)> {
        self.file.sync_data()?;
        let sha256 = self.sha256.map(|s| crate::files::hex(&s.finalize()));
        Ok((self.written, sha256, *self.blake3.finalize().as_bytes()))
    }
}
