//! Pushing an image of a layout to a registry by the OCI distribution API, without a daemon: each
//! blob is asked for first (`HEAD`), only the missing ones are uploaded (one streamed `PUT` each,
//! from the layout's file), and the manifest — which tags the image — goes last, so an image whose
//! push broke is never tagged. Credentials come from the container tools' files
//! (`REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`); a registry that
//! asks for a token (`WWW-Authenticate: Bearer …`) gets one from its realm, with those
//! credentials. `429` and `5xx` answers are retried after `Retry-After` (or a short backoff).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{Base, ImageError, MANIFEST};

/// Where an image goes: `HOST[:PORT]/REPOSITORY[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl Reference {
    /// Read `HOST[:PORT]/REPOSITORY[:TAG]` (the tag defaults to `latest`). The registry must be
    /// named: an image has no default registry here.
    pub fn parse(text: &str) -> Result<Reference, ImageError> {
        let bad = |reason: &str| ImageError::BadReference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.contains('@') {
            return Err(bad("a push names a tag, not a digest"));
        }
        let (registry, rest) = text
            .split_once('/')
            .ok_or_else(|| bad("it names no registry (`HOST[:PORT]/REPOSITORY[:TAG]`)"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                "its first part is not a registry host (`HOST[:PORT]/…`)",
            ));
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (rest, "latest"),
        };
        let component = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        };
        if !repository.split('/').all(component) {
            return Err(bad(
                "a repository is lowercase letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !tag_ok {
            return Err(bad("a tag is letters, digits, `.`, `_`, `-` (128 at most)"));
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The registry's base URL: plain HTTP on loopback (as Docker allows), HTTPS elsewhere.
    fn base(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
        let scheme = if loopback { "http" } else { "https" };
        // Docker Hub's API is not at the name people give it; its official images are `library/`.
        let (host, repository) = match self.registry.as_str() {
            "docker.io" | "index.docker.io" if !self.repository.contains('/') => (
                "registry-1.docker.io",
                format!("library/{}", self.repository),
            ),
            "docker.io" | "index.docker.io" => ("registry-1.docker.io", self.repository.clone()),
            other => (other, self.repository.clone()),
        };
        format!("{scheme}://{host}/v2/{repository}")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PushReport {
    pub reference: String,
    /// The manifest's digest, as the registry now serves it under the tag.
    pub digest: String,
    /// The blobs uploaded (digests), and their bytes.
    pub uploaded: Vec<String>,
    pub uploaded_bytes: u64,
    /// The blobs the registry had already.
    pub present: usize,
    /// The base's blobs the registry linked from the base's repository (no bytes sent).
    pub mounted: usize,
}

/// `user:password` for `registry` from the container tools' credential files.
fn credentials(registry: &str, env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut files: Vec<PathBuf> = Vec::new();
    files.extend(env("REGISTRY_AUTH_FILE").map(PathBuf::from));
    if let Some(dir) = env("XDG_RUNTIME_DIR") {
        files.push(Path::new(&dir).join("containers/auth.json"));
    }
    files.extend(env("DOCKER_CONFIG").map(|d| Path::new(&d).join("config.json")));
    files.extend(env("HOME").map(|h| Path::new(&h).join(".docker/config.json")));
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let Ok(config) = serde_json::from_slice::<Value>(&bytes) else {
            tracing::warn!(
                "`{}` is not JSON; its credentials are not used",
                file.display()
            );
            continue;
        };
        let entry = config["auths"].as_object().and_then(|auths| {
            auths.iter().find_map(|(key, value)| {
                let host = key
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
                (host == registry).then_some(value)
            })
        });
        let decoded = entry
            .and_then(|e| e["auth"].as_str())
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if decoded.is_some() {
            return decoded;
        }
    }
    None
}

/// A registry session: the client, the credentials, the token once the registry gave one.
struct Registry {
    http: reqwest::Client,
    reference: Reference,
    basic: Option<String>,
    authorization: Option<String>,
}

/// The parameters of a `WWW-Authenticate: Bearer k="v",…` challenge.
fn challenge(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.strip_prefix("Bearer ")?;
    let mut out = Vec::new();
    let mut chars = rest.trim();
    while !chars.is_empty() {
        let (key, after) = chars.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let (value, tail) = after.split_once('"')?;
        out.push((key.trim().to_string(), value.to_string()));
        chars = tail.trim_start_matches(',').trim();
    }
    Some(out)
}

impl Registry {
    /// A session with `reference`'s registry, with the credentials the environment's files hold.
    fn open(
        reference: Reference,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Registry, ImageError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("comfix/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ImageError::Registry {
                registry: reference.registry.clone(),
                what: "the HTTP client".into(),
                reason: e.to_string(),
            })?;
        Ok(Registry {
            http,
            basic: credentials(&reference.registry, env),
            reference,
            authorization: None,
        })
    }

    fn failed(&self, what: &str, reason: String) -> ImageError {
        ImageError::Registry {
            registry: self.reference.registry.clone(),
            what: what.to_string(),
            reason,
        }
    }

    /// Answer a `401`: a token from the challenge's realm, or the basic credentials.
    async fn authenticate(&mut self, header: Option<&str>) -> Result<(), ImageError> {
        let basic = self.basic.as_ref().map(|b| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        });
        let Some(params) = header.and_then(challenge) else {
            return match basic {
                Some(basic) if self.authorization.as_ref() != Some(&basic) => {
                    self.authorization = Some(basic);
                    Ok(())
                }
                _ => Err(self.failed(
                    "authentication",
                    "it refused the request (401) and there are no credentials for it in \
                     `~/.docker/config.json`, `$DOCKER_CONFIG` or `REGISTRY_AUTH_FILE`"
                        .into(),
                )),
            };
        };
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let realm = get("realm").ok_or_else(|| self.failed("authentication", "no realm".into()))?;
        let mut url = url::Url::parse(&realm)
            .map_err(|e| self.failed("authentication", format!("bad realm `{realm}`: {e}")))?;
        if let Some(service) = get("service") {
            url.query_pairs_mut().append_pair("service", &service);
        }
        // The scope the registry asked for (a mount's names the other repository too), and ours.
        let ours = format!("repository:{}:pull,push", self.reference.repository);
        if let Some(asked) = get("scope").filter(|s| *s != ours) {
            url.query_pairs_mut().append_pair("scope", &asked);
        }
        url.query_pairs_mut().append_pair("scope", &ours);
        let mut request = self.http.get(url);
        if let Some(basic) = &basic {
            request = request.header(AUTHORIZATION, basic);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| self.failed("authentication", e.to_string()))?;
        if !answer.status().is_success() {
            return Err(self.failed(
                "authentication",
                format!("its token service answered {}", answer.status()),
            ));
        }
        let body: Value = answer
            .json()
            .await
            .map_err(|e| self.failed("authentication", e.to_string()))?;
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(|| {
                self.failed("authentication", "its token service gave no token".into())
            })?;
        self.authorization = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// Send a request built by `build`, authenticating on `401` and retrying `429`/`5xx`.
    async fn send(
        &mut self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> Result<reqwest::RequestBuilder, ImageError>,
    ) -> Result<reqwest::Response, ImageError> {
        let mut delay = Duration::from_millis(200);
        let mut authenticated = false;
        for attempt in 0..6 {
            let mut request = build(&self.http)?;
            if let Some(auth) = &self.authorization {
                request = request.header(AUTHORIZATION, auth);
            }
            let answer = match request.send().await {
                Ok(answer) => answer,
                Err(e) if attempt < 5 && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    continue;
                }
                Err(e) => return Err(self.failed(what, e.to_string())),
            };
            let status = answer.status();
            if status == StatusCode::UNAUTHORIZED && !authenticated {
                authenticated = true;
                let header = answer
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                self.authenticate(header.as_deref()).await?;
                continue;
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) && attempt < 5
            {
                let wait = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .map_or(delay, |s| Duration::from_secs(s.min(30)));
                tracing::debug!("{what}: {status}; again in {wait:?}");
                tokio::time::sleep(wait).await;
                delay *= 2;
                continue;
            }
            return Ok(answer);
        }
        Err(self.failed(what, "it kept answering 429 or 5xx".into()))
    }

    /// Whether the registry has blob `digest`.
    async fn has(&mut self, digest: &str) -> Result<bool, ImageError> {
        let url = format!("{}/blobs/{digest}", self.reference.base());
        let answer = self
            .send(&format!("blob {digest}"), |c| Ok(c.head(&url)))
            .await?;
        match answer.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(self.failed(&format!("blob {digest}"), format!("it answered {other}"))),
        }
    }

    /// Link blob `digest` from this registry's repository `from` (a cross-repository mount):
    /// whether it did (`201`); a registry that will not starts an upload instead, left unused.
    async fn mount(&mut self, digest: &str, from: &str) -> Result<bool, ImageError> {
        let what = format!("mount of {digest} from `{from}`");
        let mut url = url::Url::parse(&format!("{}/blobs/uploads/", self.reference.base()))
            .map_err(|e| self.failed(&what, e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let answer = self
            .send(&what, |c| Ok(c.post(url.clone()).header(CONTENT_LENGTH, 0)))
            .await?;
        Ok(answer.status() == StatusCode::CREATED)
    }

    /// Upload blob `digest` from `file`: a session (`POST`), then the bytes in one `PUT`.
    async fn upload(&mut self, digest: &str, file: &Path, size: u64) -> Result<(), ImageError> {
        let what = format!("upload of {digest}");
        let start = format!("{}/blobs/uploads/", self.reference.base());
        let answer = self
            .send(&what, |c| Ok(c.post(&start).header(CONTENT_LENGTH, 0)))
            .await?;
        if answer.status() != StatusCode::ACCEPTED {
            return Err(self.failed(
                &what,
                format!("it answered {} to the upload's start", answer.status()),
            ));
        }
        let location = answer
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| self.failed(&what, "its answer has no Location".into()))?
            .to_string();
        let base = url::Url::parse(&start).map_err(|e| self.failed(&what, e.to_string()))?;
        let mut url = base
            .join(&location)
            .map_err(|e| self.failed(&what, format!("bad Location `{location}`: {e}")))?;
        url.query_pairs_mut().append_pair("digest", digest);
        let answer = self
            .send(&what, |c| {
                let file = std::fs::File::open(file).map_err(super::io(file))?;
                Ok(c.put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(reqwest::Body::from(tokio::fs::File::from_std(file))))
            })
            .await?;
        if answer.status() != StatusCode::CREATED {
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            return Err(self.failed(&what, format!("it answered {status}: {}", body.trim())));
        }
        Ok(())
    }
}

/// The base an image's config names (`org.comfix.base`), when it came from a registry.
fn read_base_label(dir: &Path, config: &str) -> Option<String> {
    let config = super::read_json(&super::blob_path(dir, config)).ok()?;
    let base = config["config"]["Labels"]["org.comfix.base"].as_str()?;
    is_registry_base(base).then(|| base.to_string())
}

/// Push the image tagged `id` in the layout `dir` to `reference`.
pub async fn push(
    dir: &Path,
    id: &str,
    reference: &Reference,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<PushReport, ImageError> {
    let image = super::read_image(dir, id)?;
    let digest = image.digest.clone();
    let manifest_bytes = image.manifest_bytes;
    let mut registry = Registry::open(reference.clone(), env)?;
    let mut report = PushReport {
        reference: reference.to_string(),
        digest: digest.clone(),
        ..PushReport::default()
    };
    // A base pulled from this registry's other repository: its layers are mounted from there.
    let mount_from = read_base_label(dir, &image.blobs[0].0)
        .and_then(|base| Reference::parse(base.split_once('@')?.0).ok())
        .filter(|base| {
            base.registry == reference.registry && base.repository != reference.repository
        })
        .map(|base| base.repository);
    for (digest, size) in &image.blobs {
        if registry.has(digest).await? {
            report.present += 1;
            continue;
        }
        if let Some(from) = &mount_from {
            if registry.mount(digest, from).await? {
                report.mounted += 1;
                continue;
            }
        }
        registry
            .upload(digest, &super::blob_path(dir, digest), *size)
            .await?;
        report.uploaded.push(digest.clone());
        report.uploaded_bytes += size;
    }
    // Last: the tag names the image only once every blob is there.
    let url = format!("{}/manifests/{}", reference.base(), reference.tag);
    let what = format!("manifest of {reference}");
    let answer = registry
        .send(&what, |c| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(MANIFEST));
            Ok(c.request(Method::PUT, &url)
                .headers(headers)
                .body(manifest_bytes.clone()))
        })
        .await?;
    if answer.status() != StatusCode::CREATED {
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        return Err(registry.failed(&what, format!("it answered {status}: {}", body.trim())));
    }
    Ok(report)
}

/// The media types a manifest may come as, asked for in this order.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// `HOST[:PORT]/REPOSITORY@sha256:HEX`: a base named by its digest (a tag moves; a digest is
/// the lock of its layers).
pub fn is_registry_base(text: &str) -> bool {
    text.contains("@sha256:")
}

impl Registry {
    /// GET `url`, answered 200, checked against `digest` while written to a blob of the layout
    /// `dir` (kept only when it matches).
    async fn fetch_blob(&mut self, dir: &Path, digest: &str) -> Result<(), ImageError> {
        use sha2::Digest as _;
        use std::io::Write as _;
        let to = super::blob_path(dir, digest);
        if to.exists() {
            return Ok(());
        }
        let what = format!("blob {digest}");
        let url = format!("{}/blobs/{digest}", self.reference.base());
        let mut answer = self.send(&what, |c| Ok(c.get(&url))).await?;
        if !answer.status().is_success() {
            return Err(self.failed(&what, format!("it answered {}", answer.status())));
        }
        let blobs = dir.join("blobs/sha256");
        let mut part = tempfile::NamedTempFile::new_in(&blobs).map_err(super::io(&blobs))?;
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| self.failed(&what, e.to_string()))?
        {
            hasher.update(&chunk);
            part.write_all(&chunk).map_err(super::io(&blobs))?;
        }
        let got = format!("sha256:{}", crate::files::hex(&hasher.finalize()));
        if got != digest {
            return Err(self.failed(&what, format!("its bytes hash to {got}, not {digest}")));
        }
        part.persist(&to).map_err(|e| super::io(&to)(e.error))?;
        Ok(())
    }

    /// The manifest `digest`, checked against it.
    async fn manifest(&mut self, digest: &str) -> Result<Value, ImageError> {
        use sha2::Digest as _;
        let what = format!("manifest {digest}");
        let url = format!("{}/manifests/{digest}", self.reference.base());
        let answer = self
            .send(&what, |c| {
                Ok(c.get(&url).header(reqwest::header::ACCEPT, MANIFEST_TYPES))
            })
            .await?;
        if !answer.status().is_success() {
            return Err(self.failed(&what, format!("it answered {}", answer.status())));
        }
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| self.failed(&what, e.to_string()))?;
        let got = format!(
            "sha256:{}",
            crate::files::hex(&sha2::Sha256::digest(&bytes))
        );
        if got != digest {
            return Err(self.failed(&what, format!("its bytes hash to {got}, not {digest}")));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.failed(&what, format!("not JSON: {e}")))
    }
}

/// Pull the base `text` (`HOST[:PORT]/REPOSITORY@sha256:HEX`) into the layout `dir`: its
/// manifest (this machine's, when the digest names an index of platforms), config and layers,
/// each checked against its digest; blobs the layout has are not fetched again.
pub async fn pull_base(
    text: &str,
    dir: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Base, ImageError> {
    let (name, digest) = text.split_once('@').unwrap_or((text, ""));
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ImageError::BadBase {
            base: text.to_string(),
            reason: "a registry base is named by its digest, `HOST/REPOSITORY@sha256:<64 hex>`"
                .into(),
        });
    }
    let reference = Reference::parse(name)?;
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(super::io(dir))?;
    let mut registry = Registry::open(reference, env)?;
    let mut manifest = registry.manifest(digest).await?;
    if let Some(platforms) = manifest["manifests"].as_array() {
        let arch = super::architecture();
        let own = platforms
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .map(str::to_string)
            .ok_or_else(|| ImageError::BadBase {
                base: text.to_string(),
                reason: format!("its index has no image for linux/{arch}"),
            })?;
        manifest = registry.manifest(&own).await?;
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    registry.fetch_blob(dir, &config_digest).await?;
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        registry
            .fetch_blob(dir, layer["digest"].as_str().unwrap_or_default())
            .await?;
    }
    let config = super::read_json(&super::blob_path(dir, &config_digest))?;
    Base::checked(text, dir.to_path_buf(), &manifest, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag() {
        let r = Reference::parse("127.0.0.1:5000/comfy/wan22:v2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("127.0.0.1:5000", "comfy/wan22", "v2")
        );
        assert_eq!(r.base(), "http://127.0.0.1:5000/v2/comfy/wan22");
        let hub = Reference::parse("docker.io/team/comfy:v1").unwrap();
        assert_eq!(hub.base(), "https://registry-1.docker.io/v2/team/comfy");
        let r = Reference::parse("ghcr.io/team/comfy").unwrap();
        assert_eq!(r.tag, "latest");
        assert!(r.base().starts_with("https://ghcr.io/"));
        for bad in [
            "wan22",
            "comfy/wan22",
            "ghcr.io/Team/x",
            "ghcr.io/x@sha256:00",
            "ghcr.io/x:",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_challenges_are_read() {
        let c = challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull""#,
        )
        .unwrap();
        assert_eq!(c[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(c[1], ("service".into(), "reg".into()));
        assert_eq!(c.len(), 3);
        assert!(challenge("Basic realm=\"x\"").is_none());
    }

    #[test]
    fn credentials_come_from_the_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
        let config =
            serde_json::json!({ "auths": { "https://reg.example:5000": { "auth": auth } } });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let d = dir.path().display().to_string();
        let env = |k: &str| (k == "DOCKER_CONFIG").then(|| d.clone());
        assert_eq!(
            credentials("reg.example:5000", &env).as_deref(),
            Some("ci:s3cret")
        );
        assert_eq!(credentials("other.example", &env), None);
    }
}
