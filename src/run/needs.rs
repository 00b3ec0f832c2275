//! What a workflow file says it needs, as ComfyUI's editor records it — no server asked: each
//! node's pack (`properties.cnr_id` with `ver`, a registry id; or `aux_id`, a GitHub
//! `owner/repo`) and each loader's models (`properties.models`: `name`, `url`, `directory`, and
//! `hash` with `hash_type`). Subgraphs (`definitions.subgraphs[].nodes`) are read too.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// The pack the editor's core nodes carry: nothing to install.
const CORE_PACK: &str = "comfy-core";

use super::workflow::EDITOR_ONLY;
use crate::spec::is_hex;

/// Where a node pack comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Pack {
    /// A Comfy Node Registry id, at the version the editor saw when it is one.
    Registry { id: String, version: Option<String> },
    /// A GitHub repository (`aux_id` is `owner/repo`), at the commit the editor saw when known.
    Github {
        repo: String,
        commit: Option<String>,
    },
}

/// A node pack the workflow uses, with the nodes that use it (`node 5 (GGUFLoader)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackNeed {
    pub pack: Pack,
    pub used_by: Vec<String>,
}

/// A model file a loader names, with where the editor says it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelNeed {
    pub name: String,
    pub url: String,
    /// The folder under `models/` (`vae`, `loras`, …).
    pub directory: Option<String>,
    pub sha256: Option<String>,
    pub used_by: String,
}

/// Everything the workflow names, and what it uses without saying where it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Needs {
    pub packs: Vec<PackNeed>,
    pub models: Vec<ModelNeed>,
    /// One line each: a node with no pack recorded, a model with no URL.
    pub unidentified: Vec<String>,
}

/// Why a workflow's needs cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NeedsError {
    #[error("it is not JSON: {0}")]
    NotJson(String),
    #[error("it has no metadata to read (no `nodes` with `properties`): an API-format workflow does not say which packs and models it needs; use the file ComfyUI's editor saves (Workflow → Save)")]
    NoMetadata,
}

/// Read what `text` (a workflow in the editor's format) needs.
pub fn needs(text: &str) -> Result<Needs, NeedsError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| NeedsError::NotJson(e.to_string()))?;
    needs_of(&value)
}

/// What a workflow already read as JSON needs.
pub fn needs_of(value: &Value) -> Result<Needs, NeedsError> {
    let Some(nodes) = value.get("nodes").and_then(Value::as_array) else {
        return Err(NeedsError::NoMetadata);
    };
    let subgraphs: Vec<&Map<String, Value>> = value
        .get("definitions")
        .and_then(|d| d.get("subgraphs"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect();
    // A subgraph's instances have its id as their type: their nodes are read instead.
    let subgraph_ids: Vec<&str> = subgraphs
        .iter()
        .filter_map(|s| s.get("id").and_then(Value::as_str))
        .collect();
    let mut reader = Reader::default();
    let all = nodes.iter().chain(
        subgraphs
            .iter()
            .filter_map(|s| s.get("nodes").and_then(Value::as_array))
            .flatten(),
    );
    for node in all.filter_map(Value::as_object) {
        reader.node(node, &subgraph_ids);
    }
    Ok(reader.finish())
}

#[derive(Default)]
struct Reader {
    /// Keyed by the pack's id or repository, in the order first seen.
    packs: BTreeMap<String, (usize, PackNeed)>,
    /// Keyed by `directory/name`.
    models: BTreeMap<String, ModelNeed>,
    unidentified: Vec<String>,
}

impl Reader {
    fn node(&mut self, node: &Map<String, Value>, subgraph_ids: &[&str]) {
        let class = node.get("type").and_then(Value::as_str).unwrap_or("");
        let id = node
            .get("id")
            .map(|id| match id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        let label = format!("node {id} ({class})");
        if EDITOR_ONLY.contains(&class) || subgraph_ids.contains(&class) {
            return;
        }
        let empty = Map::new();
        let properties = node
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let text = |key: &str| {
            properties
                .get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let version = text("ver").map(str::to_string);
        let pack = match (text("cnr_id"), text("aux_id")) {
            (Some(CORE_PACK), _) => None,
            (Some(cnr), _) => Some(Pack::Registry {
                id: cnr.to_string(),
                // A registry version is a number; a commit there means an unpublished build.
                version: version.filter(|v| v.contains('.')),
            }),
            (None, Some(aux)) if aux.split('/').count() == 2 => Some(Pack::Github {
                repo: format!("https://github.com/{aux}"),
                commit: version.filter(|v| (7..=40).contains(&v.len()) && is_hex(v)),
            }),
            _ => {
                self.unidentified.push(format!(
                    "{label}: no node pack recorded (`cnr_id` or `aux_id`)"
                ));
                None
            }
        };
        if let Some(pack) = pack {
            let key = match &pack {
                Pack::Registry { id, .. } => id.to_lowercase(),
                Pack::Github { repo, .. } => repo.to_lowercase(),
            };
            let order = self.packs.len();
            self.packs
                .entry(key)
                .or_insert_with(|| {
                    (
                        order,
                        PackNeed {
                            pack,
                            used_by: Vec::new(),
                        },
                    )
                })
                .1
                .used_by
                .push(label.clone());
        }
        for model in properties
            .get("models")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |key: &str| {
                model
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
            };
            let Some(name) = field("name") else {
                continue;
            };
            let Some(url) = field("url") else {
                self.unidentified
                    .push(format!("{label}: model `{name}` has no URL"));
                continue;
            };
            let sha256 = field("hash")
                .filter(|h| {
                    field("hash_type").is_none_or(|t| t.eq_ignore_ascii_case("sha256"))
                        && h.len() == 64
                        && is_hex(h)
                })
                .map(str::to_lowercase);
            let directory = field("directory").map(str::to_string);
            let key = format!("{}/{name}", directory.as_deref().unwrap_or(""));
            self.models.entry(key).or_insert_with(|| ModelNeed {
                name: name.to_string(),
                url: url.to_string(),
                directory,
                sha256,
                used_by: label.clone(),
            });
        }
    }

    fn finish(self) -> Needs {
        let mut packs: Vec<(usize, PackNeed)> = self.packs.into_values().collect();
        packs.sort_by_key(|(order, _)| *order);
        Needs {
            packs: packs.into_iter().map(|(_, p)| p).collect(),
            models: self.models.into_values().collect(),
            unidentified: self.unidentified,
        }
    }
}

/// A model URL as a spec source: Hugging Face's `resolve` URLs become `hf://` (so the token and
/// the endpoint settings apply), the editor's `?download=true` is dropped; others stay as given.
pub fn model_source(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.host_str() == Some("huggingface.co") {
        let segments: Vec<&str> = parsed.path_segments().into_iter().flatten().collect();
        if let [owner, repo, "resolve", revision, path @ ..] = segments.as_slice() {
            if !path.is_empty() {
                let at = if *revision == "main" {
                    String::new()
                } else {
                    format!("@{revision}")
                };
                return format!("hf://{owner}/{repo}/{}{at}", path.join("/"));
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_editor_s_metadata_is_read_with_subgraphs() {
        let sha = "ab".repeat(32);
        let workflow = json!({
            "nodes": [
                {"id": 1, "type": "VAELoader", "properties": {"cnr_id": "comfy-core", "ver": "0.3.40",
                    "models": [{"name": "vae.safetensors", "directory": "vae", "hash": sha.to_uppercase(), "hash_type": "SHA256",
                        "url": "https://huggingface.co/org/repo/resolve/main/split/vae.safetensors?download=true"}]}},
                {"id": 2, "type": "UnetLoaderGGUF", "properties": {"cnr_id": "comfyui-gguf", "ver": "1.1.2"}},
                {"id": 3, "type": "UnetLoaderGGUF", "properties": {"cnr_id": "comfyui-gguf", "ver": "1.1.2"}},
                {"id": 4, "type": "WanVideoSampler", "properties": {"aux_id": "kijai/ComfyUI-WanVideoWrapper", "ver": "5a2383621a05825d0d0437781afcb8552d9590fd"}},
                {"id": 5, "type": "Mystery", "properties": {}},
                {"id": 6, "type": "Note", "properties": {}},
                {"id": 7, "type": "f0e1-subgraph", "properties": {}},
                {"id": 8, "type": "LoraLoader", "properties": {"cnr_id": "comfy-core", "models": [{"name": "x.safetensors"}]}}
            ],
            "definitions": {"subgraphs": [{"id": "f0e1-subgraph", "nodes": [
                {"id": 1, "type": "KJNode", "properties": {"cnr_id": "comfyui-kjnodes", "ver": "c3dc82108a2a86c17094107ead61d63f8c76200e"}}
            ]}]}
        });
        let needs = needs(&workflow.to_string()).unwrap();
        let packs: Vec<&Pack> = needs.packs.iter().map(|p| &p.pack).collect();
        assert_eq!(
            packs,
            [
                &Pack::Registry {
                    id: "comfyui-gguf".into(),
                    version: Some("1.1.2".into())
                },
                &Pack::Github {
                    repo: "https://github.com/kijai/ComfyUI-WanVideoWrapper".into(),
                    commit: Some("5a2383621a05825d0d0437781afcb8552d9590fd".into())
                },
                &Pack::Registry {
                    id: "comfyui-kjnodes".into(),
                    version: None
                },
            ]
        );
        assert_eq!(
            needs.packs[0].used_by,
            ["node 2 (UnetLoaderGGUF)", "node 3 (UnetLoaderGGUF)"]
        );
        assert_eq!(needs.models.len(), 1);
        assert_eq!(needs.models[0].sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(needs.models[0].directory.as_deref(), Some("vae"));
        assert_eq!(
            needs.unidentified,
            [
                "node 5 (Mystery): no node pack recorded (`cnr_id` or `aux_id`)",
                "node 8 (LoraLoader): model `x.safetensors` has no URL"
            ]
        );
    }

    #[test]
    fn an_api_format_workflow_has_no_metadata() {
        let api = json!({"3": {"class_type": "KSampler", "inputs": {}}});
        assert_eq!(needs(&api.to_string()), Err(NeedsError::NoMetadata));
        assert!(matches!(needs("{"), Err(NeedsError::NotJson(_))));
    }

    #[test]
    fn hugging_face_urls_become_hf_sources() {
        assert_eq!(
            model_source("https://huggingface.co/o/r/resolve/main/a/b.safetensors?download=true"),
            "hf://o/r/a/b.safetensors"
        );
        assert_eq!(
            model_source("https://huggingface.co/o/r/resolve/abc123/b.gguf"),
            "hf://o/r/b.gguf@abc123"
        );
        assert_eq!(
            model_source("https://example.com/m.safetensors"),
            "https://example.com/m.safetensors"
        );
        assert_eq!(
            model_source("https://huggingface.co/o/r/blob/main/b.gguf"),
            "https://huggingface.co/o/r/blob/main/b.gguf"
        );
    }
}
