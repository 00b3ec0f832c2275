//! Fetchers: git repositories, Comfy Node Registry packages and model files into the store.
//!
//! Every fetch either checks the bytes against an expected hash (from the lock, the spec or the
//! source's own report) or records the hash it found; on a mismatch nothing is registered and the
//! error names both hashes. Tokens are sent only to their own hosts, never across a redirect to
//! another host, and never logged.

pub mod credentials;
pub mod git;
pub mod http;
pub mod indexed;
pub mod local;
pub mod model;
pub mod registry;

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::hint::Hint;
use crate::spec::{ExpandedEnv, Secret};
use crate::store::StoreError;

/// Bytes free for this user on the filesystem of `path` (`None` when it cannot be asked).
pub fn available_bytes(path: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Fail before writing `needed` bytes under `path` when the filesystem cannot hold them.
pub fn check_space(what: &str, path: &std::path::Path, needed: u64) -> Result<(), FetchError> {
    match available_bytes(path) {
        Some(available) if available < needed => Err(FetchError::NoSpace {
            what: what.to_string(),
            needed,
            available,
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Where the outside services are and how to talk to them.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Hugging Face base URL (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub hf_endpoint: Url,
    pub hf_token: Option<Secret>,
    /// CivitAI API base (`COMFIX_CIVITAI_URL`, default `https://civitai.com/api/v1`).
    pub civitai_api: Url,
    pub civitai_token: Option<Secret>,
    /// Comfy Node Registry API base (`COMFIX_REGISTRY_URL`, default `https://api.comfy.org`).
    pub registry: Url,
    /// Touch no network at all.
    pub offline: bool,
    /// Concurrent downloads.
    pub jobs: usize,
    /// Attempts per request for transient errors (`COMFIX_RETRIES`, default 5).
    pub attempts: u32,
    /// First backoff delay, doubled per attempt (`COMFIX_RETRY_BASE_MS`, default 500).
    pub retry_base: Duration,
    /// Giving up on a connection attempt (`COMFIX_CONNECT_TIMEOUT`, seconds, default 30).
    pub connect_timeout: Duration,
    /// Giving up on a transfer that sends nothing (`COMFIX_READ_TIMEOUT`, seconds, default 120).
    pub read_timeout: Duration,
    /// Warning about a transfer that sends nothing (`COMFIX_STALL_WARNING`, seconds, default 30).
    pub stall_warning: Duration,
    /// The Hugging Face hub cache, whose blobs are named by their SHA-256: models found there are
    /// taken, verified, instead of downloaded (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`, as huggingface_hub reads
    /// them; `HF_HUB_CACHE=` set empty: none).
    pub hf_hub_cache: Option<PathBuf>,
}

/// Where huggingface_hub keeps its cache, as it finds it.
fn hf_hub_cache(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = env("HF_HUB_CACHE") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|cache| cache.join("huggingface")))
        .or_else(|| var("HOME").map(|home| home.join(".cache/huggingface")))
        .map(|home| home.join("hub"))
}

fn parse_base(value: &str, var: &str) -> Result<Url, FetchError> {
    let with_slash = if value.ends_with('/') {
        value.to_string()
    } else {
        format!("{value}/")
    };
    Url::parse(&with_slash).map_err(|e| FetchError::Config {
        message: format!("`{var}` is not a URL (`{value}`): {e}"),
    })
}

/// The token `hf auth login` saved, where huggingface_hub reads it: `HF_TOKEN_PATH`, else
/// `$HF_HOME/token`, `HF_HOME` being `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface` by
/// default. `None` when there is no such file or it is empty.
fn hf_token_file(env: &impl Fn(&str) -> Option<String>) -> Option<Secret> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = var("HF_TOKEN_PATH")
        .or_else(|| var("HF_HOME").map(|home| home.join("token")))
        .or_else(|| var("XDG_CACHE_HOME").map(|cache| cache.join("huggingface/token")))
        .or_else(|| var("HOME").map(|home| home.join(".cache/huggingface/token")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| Secret::new(token.to_string()))
}

impl FetchConfig {
    /// Build the configuration from the process environment; a spec's expanded `env` overrides it
    /// for the tokens (`HF_TOKEN`, else the file `hf auth login` wrote; `CIVITAI_TOKEN` or
    /// `CIVITAI_API_TOKEN`).
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        spec_env: &ExpandedEnv,
        offline: bool,
        jobs: usize,
    ) -> Result<FetchConfig, FetchError> {
        let token = |var: &str| {
            spec_env
                .get(var)
                .filter(|s| !s.expose().is_empty())
                .cloned()
                .or_else(|| env(var).filter(|v| !v.is_empty()).map(Secret::new))
        };
        let seconds = |var: &str, default: f64| -> Result<Duration, FetchError> {
            match env(var).filter(|v| !v.is_empty()) {
                None => Ok(Duration::from_secs_f64(default)),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| FetchError::Config {
                        message: format!("`{var}` must be a number of seconds, got `{v}`"),
                    }),
            }
        };
        let base = |var: &str, default: &str| {
            parse_base(
                &env(var).filter(|v| !v.is_empty()).unwrap_or(default.into()),
                var,
            )
        };
        Ok(FetchConfig {
            hf_endpoint: base("HF_ENDPOINT", "https://huggingface.co")?,
            // `hf auth login` saves it in a file huggingface_hub reads when `HF_TOKEN` is unset.
            hf_token: token("HF_TOKEN").or_else(|| hf_token_file(&env)),
            civitai_api: base("COMFIX_CIVITAI_URL", "https://civitai.com/api/v1")?,
            // comfy-cli and others read `CIVITAI_API_TOKEN`: either works.
            civitai_token: token("CIVITAI_TOKEN").or_else(|| token("CIVITAI_API_TOKEN")),
            registry: base("COMFIX_REGISTRY_URL", "https://api.comfy.org")?,
            offline,
            jobs: jobs.max(1),
            attempts: env("COMFIX_RETRIES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5u32)
                .max(1),
            retry_base: Duration::from_millis(
                env("COMFIX_RETRY_BASE_MS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(500),
            ),
            connect_timeout: seconds("COMFIX_CONNECT_TIMEOUT", 30.0)?,
            read_timeout: seconds("COMFIX_READ_TIMEOUT", 120.0)?,
            stall_warning: seconds("COMFIX_STALL_WARNING", 30.0)?,
            hf_hub_cache: hf_hub_cache(&env),
        })
    }
}

/// Where an expected digest or size comes from: what to do about a mismatch depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The spec names it, at this field (`models[0].sha256`).
    Spec { field: String },
    /// The lock pinned it when the entry was first resolved.
    Lock,
    /// The source itself reported it (`the CivitAI API`, `Hugging Face`, `the package index`).
    Source { who: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Spec { field } => write!(f, "the spec's `{field}`"),
            Origin::Lock => write!(f, "the lock"),
            Origin::Source { who } => write!(f, "{who}"),
        }
    }
}

/// A digest a fetched file must have, and who says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Lower-case hexadecimal.
    pub hex: String,
    pub from: Origin,
}

impl Expected {
    pub fn new(hex: &str, from: Origin) -> Expected {
        Expected {
            hex: hex.to_ascii_lowercase(),
            from,
        }
    }

    /// Check `actual` against this digest.
    pub fn check(
        &self,
        what: &str,
        url: &str,
        algorithm: &'static str,
        actual: &str,
    ) -> Result<(), FetchError> {
        if self.hex.eq_ignore_ascii_case(actual) {
            return Ok(());
        }
        Err(FetchError::HashMismatch {
            what: what.to_string(),
            url: url.to_string(),
            algorithm,
            expected: self.hex.clone(),
            actual: actual.to_ascii_lowercase(),
            from: Box::new(self.from.clone()),
        })
    }
}

/// libgit2's error under a git [`FetchError`], kept whole (its class and code tell a network
/// failure from a refused credential). Its message is the fetch error's own text, so it shows only
/// what it adds.
#[derive(Debug, thiserror::Error)]
#[error("libgit2: class {:?}, code {:?}", .0.class(), .0.code())]
pub struct GitCause(pub git2::Error);

/// Errors from fetching.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{message}")]
    Config { message: String },
    #[error("Git operation on `{url}` failed: {}", .source.0.message())]
    Git {
        url: String,
        #[source]
        source: GitCause,
    },
    #[error("Submodule `{path}` of `{url}` is not declared in .gitmodules")]
    GitSubmoduleUndeclared { url: String, path: String },
    #[error(
        "Repository `{url}` does not exist, or is private and needs credentials ({})",
        .source.0.message()
    )]
    GitRepoNotFound {
        url: String,
        #[source]
        source: GitCause,
    },
    #[error("Ref `{reference}` not found in `{url}`")]
    GitRefNotFound { url: String, reference: String },
    #[error("Commit `{commit}` not found in `{url}`")]
    GitCommitNotFound { url: String, commit: String },
    #[error("Request for {what} to `{url}` failed: {message}")]
    Http {
        what: String,
        url: String,
        message: String,
    },
    #[error("{what}: `{url}` answered {status}")]
    Status {
        what: String,
        url: String,
        status: u16,
        hint: Option<String>,
        /// How long the server asked to wait before asking again (`Retry-After`, in seconds).
        retry_after: Option<Duration>,
    },
    #[error("{what}: {algorithm} mismatch for `{url}`: expected `{expected}` (from {from}), got `{actual}`")]
    HashMismatch {
        what: String,
        url: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
        /// Boxed: keeps every `Result<_, FetchError>` small.
        from: Box<Origin>,
    },
    #[error("{what} needs {} but the filesystem of `{}` has {} free", crate::units::format_bytes(*.needed), .path.display(), crate::units::format_bytes(*.available))]
    NoSpace {
        what: String,
        needed: u64,
        available: u64,
        path: PathBuf,
    },
    #[error("{what}: the certificate of `{host}` is not trusted ({message})")]
    Tls {
        what: String,
        host: String,
        message: String,
    },
    #[error("{what}: `{file}` cannot be used: {reason}")]
    LocalSource {
        what: String,
        file: String,
        reason: String,
        hint: Option<String>,
    },
    #[error("{what}: size mismatch for `{url}`: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("Archive `{url}` is unsafe: entry `{entry}` {reason}")]
    UnsafeArchive {
        url: String,
        entry: String,
        reason: String,
    },
    /// An archive that is not what its format says (a broken zip, an entry cut short); `at`,
    /// the entry it broke at.
    #[error("Archive `{url}` could not be read{}", at.as_ref().map(|a| format!(" at `{a}`")).unwrap_or_default())]
    BadArchive {
        url: String,
        at: Option<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source answered, but not with what it should have (no files, no version, bad JSON).
    #[error("{what}: {message}")]
    BadAnswer { what: String, message: String },
    #[error("{what}: bad URL `{url}`: {reason}")]
    BadUrl {
        what: String,
        url: String,
        reason: String,
    },
    #[error("Model source `{text}`: {reason}")]
    BadSource { text: String, reason: String },
    #[error("{what}: `{path}` vanished from the store while it was used")]
    Vanished { what: String, path: String },
    #[error("Offline, and the store lacks:\n{}", .missing.iter().map(|m| format!("  {m}")).collect::<Vec<_>>().join("\n"))]
    Offline { missing: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("I/O error on `{}`: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.into();
        move |source| FetchError::Io { path, source }
    }

    /// How long the server asked to wait before the next try, when it said (a 429 or 503 with
    /// `Retry-After`), at most [`MAX_RETRY_AFTER`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Http { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

/// The longest `Retry-After` honoured: a server asking for more is waited on this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// The wait before the next try after `err`: what the server asked for, else `delay` (which
/// doubles per try) spread by ±50 % so that many clients refused at once do not return at once.
pub fn retry_wait(err: &FetchError, delay: Duration) -> Duration {
    if let Some(asked) = err.retry_after() {
        return asked;
    }
    use std::hash::{BuildHasher, Hasher};
    // A random number from the standard library: `RandomState` is seeded per process and per
    // instance.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(delay.as_nanos() as u64);
    let spread = (hasher.finish() % 1000) as f64 / 1000.0; // [0, 1)
    delay.mul_f64(0.5 + spread)
}

impl Hint for FetchError {
    fn hint(&self) -> Option<String> {
        match self {
            FetchError::Status { hint, .. } => hint.clone(),
            FetchError::HashMismatch { from, .. } => Some(match from.as_ref() {
                Origin::Spec { field } => format!(
                    "nothing was stored. The digest comes from the spec: if the new file is the right one, correct `{field}` (or remove it to trust the first download)"
                ),
                Origin::Lock => "the source changed since it was locked, or the download was corrupted; nothing was stored. If the new content is intended, run `comfix resolve --update <NAME>`".into(),
                Origin::Source { who } => format!(
                    "{who} reported this digest for the file; the download was corrupted or the source is inconsistent. Nothing was stored; run the command again"
                ),
            }),
            FetchError::SizeMismatch { .. } => Some(
                "the source changed or the download was corrupted; nothing was stored. If the new content is intended, run `comfix resolve --update <NAME>`".into(),
            ),
            FetchError::Tls { .. } => Some(
                "if a proxy or a private CA signs this host's certificate, install the CA in the system's trust store or point `SSL_CERT_FILE` (a PEM bundle) or `SSL_CERT_DIR` at it, as for curl, pip and uv".into(),
            ),
            FetchError::LocalSource { hint, .. } => hint.clone(),
            FetchError::NoSpace { needed, available, .. } => Some(format!(
                "free at least {} there (`comfix gc` reclaims what no version uses), or use a store on a larger filesystem (`--store`); no partial file was left behind",
                crate::units::format_bytes(needed.saturating_sub(*available))
            )),
            FetchError::GitRepoNotFound { .. } => Some(
                "check the repository's URL; a private one needs credentials (`GIT_TOKEN` or `GITHUB_TOKEN`, or git's credential helper)".into(),
            ),
            FetchError::GitRefNotFound { .. } => {
                Some("check the spec's `ref`; branches and tags are looked up by name".into())
            }
            FetchError::GitCommitNotFound { .. } => Some(
                "the commit may have been force-pushed away; pin another `commit` or run `comfix resolve --update <NAME>`".into(),
            ),
            FetchError::Offline { .. } => Some(
                "run once with network access (without `--offline`) to fill the store".into(),
            ),
            FetchError::Store(e) => e.hint(),
            _ => None,
        }
    }

    fn is_user_error(&self) -> bool {
        match self {
            FetchError::Store(e) => e.is_user_error(),
            // The network or the disk failed, not the user's input.
            FetchError::Io { .. }
            | FetchError::Http { .. }
            | FetchError::Git { .. }
            | FetchError::Tls { .. } => false,
            FetchError::Vanished { .. } => false,
            FetchError::Status { status, .. } => *status < 500,
            _ => true,
        }
    }
}

/// Attach which item an offline error is about.
pub fn name_offline(err: FetchError, what: &str) -> FetchError {
    match err {
        FetchError::Offline { missing } => FetchError::Offline {
            missing: missing
                .into_iter()
                .map(|m| format!("{what}: {m}"))
                .collect(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's `Retry-After` is waited on (at most two minutes); else the backoff's delay is
    /// spread by ±50 %, differently from one try to the next.
    #[test]
    fn retry_waits_follow_the_server_or_spread_the_backoff() {
        let asked = |secs: u64| FetchError::Status {
            what: "x".into(),
            url: "http://h/".into(),
            status: 429,
            hint: None,
            retry_after: Some(Duration::from_secs(secs)),
        };
        let delay = Duration::from_millis(1000);
        assert_eq!(retry_wait(&asked(7), delay), Duration::from_secs(7));
        assert_eq!(retry_wait(&asked(3600), delay), MAX_RETRY_AFTER);
        let plain = FetchError::Status {
            what: "x".into(),
            url: "http://h/".into(),
            status: 503,
            hint: None,
            retry_after: None,
        };
        let waits: Vec<Duration> = (0..50).map(|_| retry_wait(&plain, delay)).collect();
        assert!(waits.iter().all(|w| *w >= delay / 2 && *w < delay * 3 / 2));
        assert!(waits.iter().any(|w| *w != waits[0]), "no spread: {waits:?}");
    }
}
