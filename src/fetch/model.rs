//! Model sources: `hf://`, `civitai://` (and civitai.com URLs), `https://`/`http://`, `file://`,
//! pinned to a download URL plus whatever hashes and size the source reports.

use serde::Deserialize;
use url::Url;

use super::http::{Auth, Client};
use super::{FetchConfig, FetchError};

/// A parsed model source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    HuggingFace {
        repo: String,
        path: String,
        revision: String,
    },
    Civitai {
        version_id: String,
    },
    Url(Url),
    File(std::path::PathBuf),
}

impl Source {
    pub fn parse(source: &str) -> Result<Source, FetchError> {
        let bad = |message: &str| FetchError::Api {
            what: format!("model source `{source}`"),
            message: message.to_string(),
        };
        if let Some(rest) = source.strip_prefix("hf://") {
            let (path, revision) = match rest.rsplit_once('@') {
                Some((path, rev)) if !rev.contains('/') => (path, rev.to_string()),
                _ => (rest, "main".to_string()),
            };
            let mut parts = path.splitn(3, '/');
            let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected `hf://<owner>/<repo>/<path>[@<revision>]`"));
            };
            return Ok(Source::HuggingFace {
                repo: format!("{owner}/{repo}"),
                path: file.to_string(),
                revision,
            });
        }
        if let Some(id) = source.strip_prefix("civitai://") {
            return Ok(Source::Civitai {
                version_id: id.to_string(),
            });
        }
        let url = Url::parse(source).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() == "file" {
            return url
                .to_file_path()
                .map(Source::File)
                .map_err(|_| bad("not a local file path"));
        }
        if url
            .host_str()
            .is_some_and(|h| h == "civitai.com" || h.ends_with(".civitai.com"))
        {
            if let Some(id) = civitai_version_in_url(&url) {
                return Ok(Source::Civitai { version_id: id });
            }
            return Err(bad(
                "a civitai.com URL must name a model version (`?modelVersionId=<id>` or `/api/download/models/<id>`)",
            ));
        }
        Ok(Source::Url(url))
    }
}

fn civitai_version_in_url(url: &Url) -> Option<String> {
    if let Some((_, id)) = url.query_pairs().find(|(k, _)| k == "modelVersionId") {
        return Some(id.into_owned());
    }
    let segments: Vec<&str> = url.path_segments()?.collect();
    match segments.as_slice() {
        ["api", "download", "models", id, ..] => Some(id.to_string()),
        _ => None,
    }
}

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
}

/// Pin a remote source: ask the source what the file is (`file://` sources are not remote).
pub async fn pin(client: &Client, what: &str, source: &Source) -> Result<Pinned, FetchError> {
    let config = client.config();
    match source {
        Source::HuggingFace {
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
            })
        }
        Source::Civitai { version_id } => {
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
                .ok_or_else(|| FetchError::Api {
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
                url: Url::parse(&file.download_url).map_err(|e| FetchError::Api {
                    what: what.to_string(),
                    message: format!("bad download URL `{}`: {e}", file.download_url),
                })?,
                revision: Some(version_id.clone()),
                size: None,
                sha256: hash("SHA256"),
                blake3: hash("BLAKE3"),
            })
        }
        Source::Url(url) => Ok(Pinned {
            url: url.clone(),
            revision: None,
            size: None,
            sha256: None,
            blake3: None,
        }),
        Source::File(path) => Err(FetchError::Api {
            what: what.to_string(),
            message: format!("`{}` is a local file, not a remote source", path.display()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("hf://org/repo/dir/f.safetensors@abc").unwrap(),
            Source::HuggingFace {
                repo: "org/repo".into(),
                path: "dir/f.safetensors".into(),
                revision: "abc".into()
            }
        );
        assert_eq!(
            Source::parse("https://civitai.com/models/1?modelVersionId=42").unwrap(),
            Source::Civitai {
                version_id: "42".into()
            }
        );
        assert_eq!(
            Source::parse("https://civitai.com/api/download/models/7").unwrap(),
            Source::Civitai {
                version_id: "7".into()
            }
        );
        assert!(Source::parse("https://civitai.com/models/1").is_err());
        assert!(matches!(
            Source::parse("file:///tmp/x").unwrap(),
            Source::File(_)
        ));
    }

    #[test]
    fn etags() {
        let sha = "a".repeat(64);
        assert_eq!(sha256_from_etag(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(sha256_from_etag("\"abc\""), None);
    }
}
