//! The version spec: `versions/<id>.json` (schema_version 2).
//!
//! The seed format is accepted unchanged; the additive fields of `DESIGN.md` are optional.
//! [`Spec::load`] parses a file and validates it, reporting every problem with the file, the JSON
//! path of the field and what is wrong. Unknown fields are rejected with a hint.

mod env;
pub mod local;

/// The store this process works with (`--store`), set once by the command line: a `git+URL#PATH`
/// spec is fetched through its mirrors, and a private `file://` source is judged by whether
/// other users can reach it.
pub static STORE_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
mod source;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use env::{ExpandedEnv, Secret};
pub use source::{ModelSource, SourceKind};
pub use validate::{check_path_component, is_hex};

use crate::hint::Hint;

/// The only schema version comfix reads.
pub const SCHEMA_VERSION: u32 = 2;

/// A ComfyUI version: core, custom nodes, models and Python requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub schema_version: u32,
    pub version_id: String,
    pub comfy: Comfy,
    #[serde(default)]
    pub custom_nodes: Vec<CustomNode>,
    #[serde(default)]
    pub models: Vec<Model>,
    /// Extra environment variables; values may reference the process environment as `${VAR}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub options: Options,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<Python>,
    /// Workflow JSON files that belong to the version, relative to the spec's directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<String>,
}

/// The ComfyUI core checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comfy {
    pub repo: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// A custom node pack, from a git repository (`repo`) or the Comfy Node Registry (`cnr`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// A development node: a directory on this machine (relative to the spec), linked, not copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Where a custom node comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSource<'a> {
    Git {
        repo: &'a str,
    },
    Registry {
        id: &'a str,
        version: Option<&'a str>,
    },
    /// A directory on this machine (relative to the spec's directory).
    Local {
        path: &'a str,
    },
}

impl CustomNode {
    /// The node's source; validation guarantees exactly one of `repo` and `cnr` is set.
    pub fn source(&self) -> NodeSource<'_> {
        if let (Some(path), None, None) = (&self.path, &self.repo, &self.cnr) {
            return NodeSource::Local { path };
        }
        match (&self.repo, &self.cnr) {
            (_, Some(id)) => NodeSource::Registry {
                id,
                version: self.version.as_deref(),
            },
            (Some(repo), None) => NodeSource::Git { repo },
            (None, None) => NodeSource::Git { repo: "" },
        }
    }

    /// The directory name under `custom_nodes/`: `name`, else the registry id, else the
    /// repository's last path segment without `.git`.
    pub fn dir_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.source() {
            NodeSource::Registry { id, .. } => id.to_string(),
            NodeSource::Git { repo } => repo_basename(repo).to_string(),
            NodeSource::Local { path } => path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(path)
                .to_string(),
        }
    }

    /// Whether the node is enabled (the default).
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// A model file to place under the models directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub source: ModelSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_subdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

impl Model {
    /// The file name in the models directory: `filename`, else the source's last path segment
    /// (without any `@rev` or query string).
    pub fn file_name(&self) -> String {
        if let Some(name) = &self.filename {
            return name.clone();
        }
        self.source.derived_file_name()
    }

    /// Whether the version cannot be realized without this model (the default).
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(true)
    }
}

/// Default flags for realization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    pub offline: bool,
    #[serde(default)]
    pub skip_models: bool,
}

/// The Python environment of the version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Python {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// Resolve for every platform (`uv pip compile --universal`): one lock serves a team's
    /// Linux x86_64 and aarch64 (and macOS) machines, each choosing the wheels that fit it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub universal: bool,
}

/// One problem found in a spec: the JSON path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// The JSON path of the field, such as `custom_nodes[2].repo` (empty for the whole document).
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Errors from finding, reading, parsing and validating a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("No spec found for version `{id}` (looked for {})", display_paths(.searched))]
    NotFound { id: String, searched: Vec<PathBuf> },
    #[error("Invalid version id `{id}`: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("Failed to read spec `{}`", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid JSON in spec `{}` at line {line}, column {column}: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("Invalid spec `{}`:\n{}", .path.display(), display_issues(.issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
    #[error("Environment variable `{var}` used by `env.{key}` is not set")]
    MissingEnvVar { key: String, var: String },
}

fn display_paths(paths: &[PathBuf]) -> String {
    crate::hint::code_list(paths.iter().map(|p| p.display()))
}

fn display_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Hint for SpecError {
    fn hint(&self) -> Option<String> {
        match self {
            SpecError::NotFound { id, .. } => Some(format!(
                "create `versions/{id}.json`, run from the directory that holds `versions/`, or pass `--spec FILE`"
            )),
            SpecError::InvalidId { .. } => Some(
                "a version id is a single path component: letters, digits, `.`, `_`, `-`".into(),
            ),
            SpecError::Invalid { issues, .. } => {
                let hints: Vec<String> = issues
                    .iter()
                    .filter_map(|i| i.hint.as_ref().map(|h| format!("{}: {h}", i.field)))
                    .collect();
                if hints.is_empty() {
                    Some("see `specs/spec.schema.json` for the format".into())
                } else {
                    Some(hints.join("\nhint: "))
                }
            }
            SpecError::MissingEnvVar { var, .. } => {
                Some(format!("export `{var}` before running comfix"))
            }
            SpecError::Read { source, .. } => match source.kind() {
                std::io::ErrorKind::InvalidData => {
                    Some("a spec is UTF-8 JSON text; re-save it as UTF-8".into())
                }
                std::io::ErrorKind::IsADirectory => {
                    Some("pass the spec file (`versions/<ID>.json`), not its directory".into())
                }
                _ => None,
            },
            SpecError::Syntax { .. } => None,
        }
    }

    fn is_user_error(&self) -> bool {
        use std::io::ErrorKind::*;
        // A spec that is missing, a directory, not text or not readable is the user's to fix;
        // only a failing disk is ours.
        !matches!(self, SpecError::Read { source, .. }
            if !matches!(source.kind(), NotFound | InvalidData | IsADirectory | PermissionDenied))
    }
}

/// Where a spec was found and what it says.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub path: PathBuf,
    pub spec: Spec,
    /// What is allowed but probably wrong (a model file name ComfyUI would not list).
    pub warnings: Vec<Issue>,
}

impl LoadedSpec {
    /// The directory the spec's relative paths (`workflows`) are relative to.
    pub fn dir(&self) -> PathBuf {
        spec_dir(&self.path)
    }

    /// Log the warnings (for commands that use the spec without printing it).
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            match &warning.hint {
                Some(hint) => tracing::warn!("{}: {warning} ({hint})", self.path.display()),
                None => tracing::warn!("{}: {warning}", self.path.display()),
            }
        }
    }
}

/// The directory a spec's relative paths are relative to.
pub fn spec_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// File extensions ComfyUI's model folders list (`folder_paths.supported_pt_extensions`), with
/// `.gguf` (ComfyUI-GGUF) and `.onnx`, which common node packs load from the same folders.
pub const MODEL_EXTENSIONS: [&str; 10] = [
    "safetensors",
    "ckpt",
    "pt",
    "pt2",
    "pth",
    "bin",
    "pkl",
    "sft",
    "gguf",
    "onnx",
];

/// Whether ComfyUI would list a model file of this name.
pub fn has_model_extension(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| MODEL_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

impl Spec {
    /// Read, parse and validate the spec at `path`.
    pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let spec = Spec::parse(&text, path)?;
        let issues = validate::on_disk(&spec, &spec_dir(path));
        if !issues.is_empty() {
            return Err(SpecError::Invalid {
                path: path.to_path_buf(),
                issues,
            });
        }
        let warnings = validate::warnings(&spec);
        Ok(LoadedSpec {
            path: path.to_path_buf(),
            spec,
            warnings,
        })
    }

    /// Parse and validate spec text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Spec, SpecError> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let mut issues = Vec::new();
        let spec: Spec = match serde_path_to_error::deserialize(deserializer) {
            Ok(spec) => spec,
            Err(err) if err.inner().is_syntax() || err.inner().is_eof() => {
                return Err(validate::deserialize_error(err, path))
            }
            // Every problem at once: an unknown field is reported and taken out; a value of the
            // wrong type is reported and stood in for by a placeholder of a type that fits
            // (`null`, `""`, `false`, `0`, `[]`, `{}` in turn), and parsing goes on. What the
            // placeholders then fail in validation is not reported again.
            Err(mut err) => {
                const PLACEHOLDERS: [fn() -> serde_json::Value; 6] = [
                    || serde_json::Value::Null,
                    || serde_json::Value::String(String::new()),
                    || serde_json::Value::Bool(false),
                    || serde_json::json!(0),
                    || serde_json::json!([]),
                    || serde_json::json!({}),
                ];
                let mut value: serde_json::Value =
                    serde_json::from_str(text).expect("the text is JSON (no syntax error)");
                let mut tried: BTreeMap<String, usize> = BTreeMap::new();
                let spec: Spec = loop {
                    let at = err.path().to_string();
                    let unknown = err.inner().to_string().starts_with("unknown field");
                    let fixed = if unknown {
                        remove_at(&mut value, err.path())
                    } else {
                        let attempt = tried.entry(at.clone()).or_insert(0);
                        *attempt += 1;
                        *attempt <= PLACEHOLDERS.len()
                            && set_at(&mut value, err.path(), PLACEHOLDERS[*attempt - 1]())
                    };
                    // A placeholder that does not fit is not the spec's problem: reported once.
                    let first = unknown || tried.get(&at).is_some_and(|n| *n == 1);
                    if first {
                        match validate::deserialize_error(err, path) {
                            SpecError::Invalid { issues: found, .. } => issues.extend(found),
                            other => return Err(other),
                        }
                    }
                    if !fixed || tried.len() > 200 {
                        return Err(SpecError::Invalid {
                            path: path.to_path_buf(),
                            issues,
                        });
                    }
                    match serde_path_to_error::deserialize(&value) {
                        Ok(spec) => break spec,
                        Err(next) => err = next,
                    }
                };
                let stood_in: Vec<String> = tried.into_keys().collect();
                let found = validate::validate(&spec);
                issues.extend(found.into_iter().filter(|issue| {
                    !stood_in.iter().any(|p| {
                        issue.field == *p
                            || issue.field.starts_with(&format!("{p}."))
                            || issue.field.starts_with(&format!("{p}["))
                    })
                }));
                return Err(SpecError::Invalid {
                    path: path.to_path_buf(),
                    issues,
                });
            }
        };
        issues.extend(validate::validate(&spec));
        if issues.is_empty() {
            Ok(spec)
        } else {
            Err(SpecError::Invalid {
                path: path.to_path_buf(),
                issues,
            })
        }
    }

    /// Find the spec of version `id`: `versions/<id>.json`, then `specs/<id>.json`, under `base`.
    pub fn find(base: &Path, id: &str) -> Result<PathBuf, SpecError> {
        if let Err(reason) = check_path_component(id) {
            return Err(SpecError::InvalidId {
                id: id.to_string(),
                reason,
            });
        }
        let searched: Vec<PathBuf> = ["versions", "specs"]
            .iter()
            .map(|dir| base.join(dir).join(format!("{id}.json")))
            .collect();
        match searched.iter().find(|p| p.is_file()) {
            Some(found) => Ok(found.clone()),
            None => Err(SpecError::NotFound {
                id: id.to_string(),
                searched,
            }),
        }
    }

    /// Like [`Spec::expand_env`], but entries whose variables are unset are left out instead of
    /// failing: for optional credentials such as `HF_TOKEN: ${HF_TOKEN}` on public models.
    pub fn expand_env_available(&self, lookup: impl Fn(&str) -> Option<String>) -> ExpandedEnv {
        let mut out = ExpandedEnv::default();
        for (key, template) in &self.env {
            let single: BTreeMap<String, String> = [(key.clone(), template.clone())].into();
            if let Ok(expanded) = env::expand(&single, &lookup) {
                out.0.extend(expanded.0);
            }
        }
        out
    }

    /// Expand `${VAR}` references in `env` from `lookup` (normally the process environment).
    /// The values are wrapped in [`Secret`] so they never reach output by accident.
    pub fn expand_env(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ExpandedEnv, SpecError> {
        env::expand(&self.env, lookup)
    }
}

/// The value the segments `path` lead to in `value`, if they do.
fn walk_to<'a>(
    value: &'a mut serde_json::Value,
    path: &[&serde_path_to_error::Segment],
) -> Option<&'a mut serde_json::Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |at, segment| match segment {
        Segment::Map { key } => at.get_mut(key.as_str()),
        Segment::Seq { index } => at.get_mut(*index),
        _ => None,
    })
}

/// Replace the value at `path` with `new`; false if it is not there.
fn set_at(
    value: &mut serde_json::Value,
    path: &serde_path_to_error::Path,
    new: serde_json::Value,
) -> bool {
    let segments: Vec<_> = path.iter().collect();
    match walk_to(value, &segments) {
        Some(at) => {
            *at = new;
            true
        }
        None => false,
    }
}

/// Remove the entry `path` names (an unknown field) from `value`; false if it is not there.
fn remove_at(value: &mut serde_json::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    walk_to(value, parents)
        .and_then(|at| at.as_object_mut())
        .and_then(|o| o.remove(key.as_str()))
        .is_some()
}

/// The last path segment of a repository URL, without a trailing `.git`.
pub fn repo_basename(repo: &str) -> &str {
    let trimmed = repo.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    last.strip_suffix(".git").unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(text, Path::new("versions/t.json"))
    }

    const SEED: &str = r#"{ "schema_version": 2, "version_id": "wan22-fast",
      "comfy": { "repo": "https://github.com/comfyanonymous/ComfyUI", "ref": "master" },
      "custom_nodes": [ { "repo": "https://github.com/city96/ComfyUI-GGUF", "name": "gguf", "ref": "main" } ],
      "models": [ { "source": "hf://org/repo/path/file.safetensors@abc", "name": "wan22-unet", "target_subdir": "unet" } ],
      "env": { "HF_TOKEN": "${HF_TOKEN}" },
      "options": { "offline": false, "skip_models": false } }"#;

    #[test]
    fn seed_format_parses_unchanged() {
        let spec = parse(SEED).unwrap();
        assert_eq!(spec.version_id, "wan22-fast");
        assert_eq!(spec.custom_nodes[0].dir_name(), "gguf");
        assert_eq!(spec.models[0].file_name(), "file.safetensors");
        assert!(spec.models[0].is_required());
        assert!(spec.custom_nodes[0].is_enabled());
    }

    #[test]
    fn derived_names() {
        let node = |repo: &str| CustomNode {
            repo: Some(repo.into()),
            cnr: None,
            version: None,
            name: None,
            git_ref: None,
            commit: None,
            enabled: None,
            path: None,
        };
        assert_eq!(
            node("https://github.com/a/ComfyUI-KJNodes.git").dir_name(),
            "ComfyUI-KJNodes"
        );
        assert_eq!(node("git@github.com:a/b.git").dir_name(), "b");
        assert_eq!(node("/srv/git/nodes/").dir_name(), "nodes");
        let model = |source: &str| Model {
            source: source.into(),
            name: None,
            target_subdir: None,
            filename: None,
            sha256: None,
            blake3: None,
            required: None,
        };
        assert_eq!(
            model("https://h/x/model.pth?download=true").file_name(),
            "model.pth"
        );
        assert_eq!(model("hf://o/r/dir/f.gguf@main").file_name(), "f.gguf");
    }

    #[test]
    fn env_expansion_is_redacted_and_reports_missing_vars() {
        let spec = parse(SEED).unwrap();
        let env = spec
            .expand_env(|k| (k == "HF_TOKEN").then(|| "hf_secret".to_string()))
            .unwrap();
        assert_eq!(env.get("HF_TOKEN").unwrap().expose(), "hf_secret");
        assert!(!format!("{env:?}").contains("hf_secret"));
        let err = spec.expand_env(|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Environment variable `HF_TOKEN` used by `env.HF_TOKEN` is not set"
        );
    }

    #[test]
    fn expansion_is_single_pass() {
        let mut map = BTreeMap::new();
        map.insert("A".to_string(), "x-${ONE}-${TWO}-y".to_string());
        let env = env::expand(&map, |k| match k {
            "ONE" => Some("${TWO}".into()),
            "TWO" => Some("2".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(env.get("A").unwrap().expose(), "x-${TWO}-2-y");
    }

    #[test]
    fn path_components() {
        for bad in ["", ".", "..", "a/b", "/abs", "a\\b", "a\nb", "a\0b"] {
            assert!(check_path_component(bad).is_err(), "{bad:?}");
        }
        for good in ["unet", "ComfyUI-GGUF", "a..b", "model.v2", "ünïcode"] {
            assert!(check_path_component(good).is_ok(), "{good:?}");
        }
    }
}
