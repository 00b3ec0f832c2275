//! A model's `source`, parsed once when the spec is read: the one grammar that validation, the
//! file-name derivation, the plan and the fetchers all use.
//!
//! - `hf://<owner>/<repo>/<path>[@<revision>]`: the revision is what follows the *last* `@`
//!   when it holds no `/` (so `@` inside the path stays part of it); `main` when there is none.
//! - `civitai://<model-version-id>` and civitai.com URLs that name a version
//!   (`?modelVersionId=<id>` or `/api/download/models/<id>`); the id is a number.
//! - `https://` and `http://` URLs with a host.
//! - `file:///<absolute path>`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// What a source names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    HuggingFace {
        /// `<owner>/<repo>`.
        repo: String,
        /// The file's path inside the repository.
        path: String,
        revision: String,
    },
    Civitai {
        version_id: String,
    },
    Url(Url),
    File(PathBuf),
}

/// A model source as written in the spec, with what it parses to (or why it does not).
///
/// It is compared, serialized and hashed by its text, so locks and plan ids do not change.
#[derive(Debug, Clone)]
pub struct ModelSource {
    text: String,
    parsed: Result<SourceKind, String>,
}

impl ModelSource {
    pub fn parse(text: &str) -> ModelSource {
        ModelSource {
            text: text.to_string(),
            parsed: parse(text),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What the source names; the error says what is wrong with it (a validated spec has none).
    pub fn kind(&self) -> Result<&SourceKind, &str> {
        self.parsed.as_ref().map_err(String::as_str)
    }

    /// Whether the file's real name comes from the CivitAI API.
    pub fn is_civitai(&self) -> bool {
        matches!(self.parsed, Ok(SourceKind::Civitai { .. }))
    }

    /// Whether it is fetched over HTTP(S) from a plain URL.
    pub fn is_web_url(&self) -> bool {
        matches!(self.parsed, Ok(SourceKind::Url(_)))
    }

    /// The file name the source suggests: the last segment of the Hugging Face path, of the
    /// URL's path (without query or fragment) or of the file's path; for CivitAI the last path
    /// segment as written (the API gives the real name). Empty when there is none.
    pub fn derived_file_name(&self) -> String {
        match &self.parsed {
            Ok(SourceKind::HuggingFace { path, .. }) => last_segment(path).to_string(),
            Ok(SourceKind::File(path)) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            _ => {
                let text = self.text.split(['?', '#']).next().unwrap_or_default();
                last_segment(text).to_string()
            }
        }
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

impl PartialEq for ModelSource {
    fn eq(&self, other: &ModelSource) -> bool {
        self.text == other.text
    }
}

impl Eq for ModelSource {}

impl PartialEq<str> for ModelSource {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<String> for ModelSource {
    fn eq(&self, other: &String) -> bool {
        self.text == *other
    }
}

impl PartialEq<ModelSource> for String {
    fn eq(&self, other: &ModelSource) -> bool {
        *self == other.text
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<&str> for ModelSource {
    fn from(text: &str) -> ModelSource {
        ModelSource::parse(text)
    }
}

impl Serialize for ModelSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ModelSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ModelSource, D::Error> {
        // A bad source is not a parse error: validation reports it with every other problem.
        String::deserialize(deserializer).map(|text| ModelSource::parse(&text))
    }
}

const EXPECTED: &str = "expected a URL: `hf://`, `civitai://`, `https://`, `http://` or `file://`";

fn parse(source: &str) -> Result<SourceKind, String> {
    let Some((scheme, rest)) = source.split_once("://") else {
        return Err(EXPECTED.into());
    };
    if source.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    match scheme {
        "hf" => hugging_face(rest),
        "civitai" => civitai_id(rest)
            .map(|version_id| SourceKind::Civitai { version_id })
            .ok_or_else(|| "expected `civitai://<model-version-id>` (a number)".into()),
        "https" | "http" => {
            let url = Url::parse(source).map_err(|e| format!("not a URL: {e}"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err("the URL has no host".into());
            }
            if url
                .host_str()
                .is_some_and(|h| h == "civitai.com" || h.ends_with(".civitai.com"))
            {
                return civitai_version_in_url(&url)
                    .map(|version_id| SourceKind::Civitai { version_id })
                    .ok_or_else(|| {
                        "a civitai.com URL must name a model version (`?modelVersionId=<id>` or \
                         `/api/download/models/<id>`)"
                            .into()
                    });
            }
            Ok(SourceKind::Url(url))
        }
        "file" => Url::parse(source)
            .ok()
            .filter(|u| u.host_str().is_none_or(str::is_empty))
            .and_then(|u| u.to_file_path().ok())
            .map(SourceKind::File)
            .ok_or_else(|| "expected `file:///<absolute path>` (no host)".into()),
        other => Err(format!(
            "unsupported scheme `{other}`; expected `hf`, `civitai`, `https`, `http` or `file`"
        )),
    }
}

fn hugging_face(rest: &str) -> Result<SourceKind, String> {
    let (path, revision) = match rest.rsplit_once('@') {
        Some((path, rev)) if !rev.contains('/') => (path, Some(rev)),
        _ => (rest, None),
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) || revision == Some("") {
        return Err("expected `hf://<owner>/<repo>/<path>[@<revision>]`".into());
    }
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err("`.` and `..` are not allowed in a Hugging Face path".into());
    }
    Ok(SourceKind::HuggingFace {
        repo: format!("{}/{}", parts[0], parts[1]),
        path: parts[2..].join("/"),
        revision: revision.unwrap_or("main").to_string(),
    })
}

fn civitai_id(text: &str) -> Option<String> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.to_string())
}

fn civitai_version_in_url(url: &Url) -> Option<String> {
    if let Some((_, id)) = url.query_pairs().find(|(k, _)| k == "modelVersionId") {
        return civitai_id(&id);
    }
    let segments: Vec<&str> = url.path_segments()?.collect();
    match segments.as_slice() {
        ["api", "download", "models", id, ..] => civitai_id(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Result<SourceKind, String> {
        ModelSource::parse(text)
            .kind()
            .cloned()
            .map_err(String::from)
    }

    #[test]
    fn hugging_face_revision_is_after_the_last_at() {
        assert_eq!(
            kind("hf://org/repo/dir/f.safetensors@abc").unwrap(),
            SourceKind::HuggingFace {
                repo: "org/repo".into(),
                path: "dir/f.safetensors".into(),
                revision: "abc".into()
            }
        );
        // An `@` inside the path is part of it; the revision follows the last `@`.
        let source = ModelSource::parse("hf://org/repo/v@2/f.safetensors@rev1");
        assert_eq!(
            source.kind().unwrap(),
            &SourceKind::HuggingFace {
                repo: "org/repo".into(),
                path: "v@2/f.safetensors".into(),
                revision: "rev1".into()
            }
        );
        assert_eq!(source.derived_file_name(), "f.safetensors");
        // No revision: `main`, and the file name keeps nothing of an `@` that was not one.
        let source = ModelSource::parse("hf://org/repo/v@2/f.safetensors");
        assert!(matches!(source.kind().unwrap(),
            SourceKind::HuggingFace { path, revision, .. } if path == "v@2/f.safetensors" && revision == "main"));
        assert_eq!(source.derived_file_name(), "f.safetensors");
        assert!(kind("hf://org/repo").is_err());
        assert!(kind("hf://org/repo/f@").is_err());
        assert!(kind("hf://org/repo/../x").is_err());
    }

    #[test]
    fn civitai_urls_must_name_a_version() {
        for (text, id) in [
            ("civitai://42", "42"),
            ("https://civitai.com/models/1?modelVersionId=42", "42"),
            ("https://civitai.com/api/download/models/7", "7"),
        ] {
            assert_eq!(
                kind(text).unwrap(),
                SourceKind::Civitai {
                    version_id: id.into()
                },
                "{text}"
            );
        }
        for bad in [
            "https://civitai.com/models/1",
            "https://civitai.com/models/1?modelVersionId=abc",
            "civitai://",
            "civitai://12x",
        ] {
            assert!(kind(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_schemes() {
        assert!(matches!(
            kind("file:///tmp/x.safetensors").unwrap(),
            SourceKind::File(_)
        ));
        assert!(kind("file://host/tmp/x").is_err());
        assert!(kind("https://").is_err());
        assert!(kind("ftp://x/y")
            .unwrap_err()
            .contains("unsupported scheme"));
        assert!(kind("x.safetensors")
            .unwrap_err()
            .contains("expected a URL"));
        assert!(kind("https://h/a b").is_err());
        let url = ModelSource::parse("https://h.example/d/model.ckpt?download=1");
        assert!(url.is_web_url());
        assert_eq!(url.derived_file_name(), "model.ckpt");
    }

    #[test]
    fn serde_keeps_the_text() {
        let source: ModelSource = serde_json::from_str("\"ftp://x\"").unwrap();
        assert!(source.kind().is_err());
        assert_eq!(serde_json::to_string(&source).unwrap(), "\"ftp://x\"");
    }
}
