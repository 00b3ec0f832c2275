//! Workflows: ComfyUI's API format (`{"<id>": {"class_type", "inputs"}}`), the UI format the
//! editor saves (`nodes` and `links`) converted to it, the graph's own checks (links, cycles) and
//! what a workflow needs from a home (node classes, model files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

/// `/object_info`: every node class the server knows, with its inputs and outputs.
pub type ObjectInfo = Map<String, Value>;

/// Extensions of model files, to tell a model input from another list of choices.
const MODEL_EXTENSIONS: &[&str] = &[
    ".safetensors",
    ".ckpt",
    ".pt",
    ".pth",
    ".bin",
    ".gguf",
    ".sft",
    ".onnx",
    ".pt2",
];

/// Nodes of the editor that never reach the server (and that no node pack provides).
pub(crate) const EDITOR_ONLY: &[&str] = &["Note", "MarkdownNote", "PrimitiveNode", "Reroute"];

/// A workflow read from a file, in API format.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The file as given (for messages and reports).
    pub name: String,
    pub prompt: Map<String, Value>,
    /// Node packs the editor recorded per class (`properties.cnr_id` / `aux_id`).
    pub packs: BTreeMap<String, String>,
    /// Model sources the editor recorded (`properties.models`): file name → URL.
    pub model_urls: BTreeMap<String, String>,
    /// Read in the UI format (converted with `/object_info`).
    pub from_ui: bool,
}

/// Why a workflow cannot be used, before anything is submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("is not JSON: {0}")]
    NotJson(String),
    #[error("is not a workflow: {0}")]
    NotAWorkflow(String),
    #[error("is in the editor's UI format and cannot be converted: {0}; export it with \"Export (API)\" in ComfyUI's workflow menu and test that file")]
    Unconvertible(String),
    #[error("has bad links:\n{}", .0.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"))]
    BadLinks(Vec<String>),
    #[error("has a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
}

/// A node class the workflow uses that the home does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingNode {
    pub node: String,
    pub class_type: String,
    /// What would bring it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A model file a node input names that is in none of the home's model folders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingModel {
    pub node: String,
    pub class_type: String,
    pub input: String,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub nodes: Vec<MissingNode>,
    pub models: Vec<MissingModel>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.models.is_empty()
    }

    /// One line per missing thing, with what would bring it.
    pub fn lines(&self) -> Vec<String> {
        let with = |hint: &Option<String>| match hint {
            Some(h) => format!(" ({h})"),
            None => String::new(),
        };
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "node {}: class `{}` is not installed{}",
                    n.node,
                    n.class_type,
                    with(&n.hint)
                )
            })
            .collect();
        out.extend(self.models.iter().map(|m| {
            format!(
                "node {} ({}): model `{}` of input `{}` is not in the home's model folders{}",
                m.node,
                m.class_type,
                m.file,
                m.input,
                with(&m.hint)
            )
        }));
        out
    }
}

/// Read a workflow file: JSON, in API or UI format (UI needs `info` to be converted).
pub fn parse(name: &str, text: &str, info: Option<&ObjectInfo>) -> Result<Workflow, WorkflowError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| WorkflowError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(WorkflowError::NotAWorkflow(
            "the top level is not a JSON object".into(),
        ));
    };
    let mut workflow = Workflow {
        name: name.to_string(),
        prompt: Map::new(),
        packs: BTreeMap::new(),
        model_urls: BTreeMap::new(),
        from_ui: false,
    };
    if map.get("nodes").is_some_and(Value::is_array) {
        workflow.from_ui = true;
        let Some(info) = info else {
            return Err(WorkflowError::Unconvertible(
                "converting needs the server's /object_info".into(),
            ));
        };
        from_ui(&map, info, &mut workflow)?;
    } else {
        // `{"prompt": {...}}` as some tools save it, else the prompt itself.
        let prompt = match map.get("prompt") {
            Some(Value::Object(p)) if !map.contains_key("class_type") => p.clone(),
            _ => map,
        };
        for (id, node) in &prompt {
            let Some(node) = node.as_object() else {
                return Err(WorkflowError::NotAWorkflow(format!(
                    "node `{id}` is not an object"
                )));
            };
            if !node.get("class_type").is_some_and(Value::is_string) {
                return Err(WorkflowError::NotAWorkflow(format!(
                    "node `{id}` has no `class_type` (an API-format workflow maps node ids to {{\"class_type\", \"inputs\"}})"
                )));
            }
            if node.get("inputs").is_some_and(|i| !i.is_object()) {
                return Err(WorkflowError::NotAWorkflow(format!(
                    "node `{id}`'s `inputs` is not an object"
                )));
            }
        }
        if prompt.is_empty() {
            return Err(WorkflowError::NotAWorkflow("it has no nodes".into()));
        }
        workflow.prompt = prompt;
    }
    Ok(workflow)
}

/// Read a workflow file from disk.
pub fn load(path: &Path, info: Option<&ObjectInfo>) -> Result<Workflow, WorkflowError> {
    let text = crate::files::read_regular_text(path, crate::files::WORKFLOW_LIMIT)
        .map_err(|e| WorkflowError::NotAWorkflow(format!("cannot be read: {e}")))?;
    parse(&path.display().to_string(), &text, info)
}

fn class_of(node: &Map<String, Value>) -> &str {
    node.get("class_type").and_then(Value::as_str).unwrap_or("")
}

/// A link input: `["<node id>", <output slot>]`.
fn as_link(value: &Value) -> Option<(&str, u64)> {
    match value.as_array()?.as_slice() {
        [Value::String(id), Value::Number(slot)] => Some((id.as_str(), slot.as_u64()?)),
        _ => None,
    }
}

/// The input names of a class in order (required, then optional), each with its spec.
fn inputs_of(info: &ObjectInfo, class: &str) -> Vec<(String, Value)> {
    let Some(class_info) = info.get(class) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for group in ["required", "optional"] {
        let Some(inputs) = class_info
            .get("input")
            .and_then(|i| i.get(group))
            .and_then(Value::as_object)
        else {
            continue;
        };
        let order: Vec<String> = class_info
            .get("input_order")
            .and_then(|o| o.get(group))
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_else(|| inputs.keys().cloned().collect());
        for name in order {
            if let Some(spec) = inputs.get(&name) {
                out.push((name, spec.clone()));
            }
        }
    }
    out
}

/// An input spec's choices: `[[choice…], {…}]`, or `["COMBO", {"options": […]}]`.
fn choices(spec: &Value) -> Option<Vec<&str>> {
    let first = spec.get(0)?;
    let list = match first {
        Value::Array(list) => list,
        Value::String(t) if t == "COMBO" => spec.get(1)?.get("options")?.as_array()?,
        _ => return None,
    };
    Some(list.iter().filter_map(Value::as_str).collect())
}

/// Whether an input is a widget (a value typed in the editor) rather than a link socket.
fn is_widget(spec: &Value) -> bool {
    choices(spec).is_some()
        || matches!(
            spec.get(0).and_then(Value::as_str),
            Some("INT" | "FLOAT" | "STRING" | "BOOLEAN")
        )
}

/// Whether the editor adds a "control after generate" value after this widget.
fn has_control_value(name: &str, spec: &Value) -> bool {
    let typ = spec.get(0).and_then(Value::as_str);
    let flagged = spec
        .get(1)
        .and_then(|o| o.get("control_after_generate"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    flagged || (typ == Some("INT") && matches!(name, "seed" | "noise_seed"))
}

/// Convert the editor's format: each node's linked inputs become `[id, slot]` (through
/// `Reroute`s), its `widgets_values` are assigned to the class's widget inputs in order.
fn from_ui(
    map: &Map<String, Value>,
    info: &ObjectInfo,
    workflow: &mut Workflow,
) -> Result<(), WorkflowError> {
    let bad = |m: String| WorkflowError::Unconvertible(m);
    let nodes = map["nodes"].as_array().expect("checked");
    // link id → (from node, from slot)
    let mut links: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    for link in map
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let parts = link
            .as_array()
            .ok_or_else(|| bad("a link is not a list".into()))?;
        let (Some(id), Some(from), Some(slot)) = (
            parts.first().and_then(Value::as_u64),
            parts.get(1).and_then(id_text),
            parts.get(2).and_then(Value::as_u64),
        ) else {
            return Err(bad(format!(
                "link {link} is not [id, from, slot, to, slot, type]"
            )));
        };
        links.insert(id, (from, slot));
    }
    if map
        .get("definitions")
        .and_then(|d| d.get("subgraphs"))
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(bad("it has subgraphs".into()));
    }
    let by_id: BTreeMap<String, &Map<String, Value>> = nodes
        .iter()
        .filter_map(|n| Some((id_text(n.get("id")?)?, n.as_object()?)))
        .collect();
    // Follow a link back through reroutes to the node that produces the value.
    let source = |link: u64| -> Result<Option<(String, u64)>, WorkflowError> {
        let mut at = links.get(&link).cloned();
        for _ in 0..1000 {
            let Some((from, slot)) = at.clone() else {
                return Ok(None);
            };
            let Some(node) = by_id.get(&from) else {
                return Ok(Some((from, slot)));
            };
            if node.get("type").and_then(Value::as_str) != Some("Reroute") {
                return Ok(Some((from, slot)));
            }
            let upstream = node
                .get("inputs")
                .and_then(Value::as_array)
                .and_then(|i| i.first())
                .and_then(|i| i.get("link"))
                .and_then(Value::as_u64);
            at = upstream.and_then(|l| links.get(&l).cloned());
        }
        Err(bad("reroutes form a loop".into()))
    };
    for node in nodes {
        let node = node
            .as_object()
            .ok_or_else(|| bad("a node is not an object".into()))?;
        let id = node
            .get("id")
            .and_then(id_text)
            .ok_or_else(|| bad("a node has no id".into()))?;
        let class = node
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mode = node.get("mode").and_then(Value::as_u64).unwrap_or(0);
        if let Some(pack) = node
            .get("properties")
            .and_then(|p| p.get("cnr_id").or_else(|| p.get("aux_id")))
            .and_then(Value::as_str)
        {
            if pack != "comfy-core" {
                workflow.packs.insert(class.clone(), pack.to_string());
            }
        }
        for model in node
            .get("properties")
            .and_then(|p| p.get("models"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(url)) = (
                model.get("name").and_then(Value::as_str),
                model.get("url").and_then(Value::as_str),
            ) {
                workflow
                    .model_urls
                    .insert(name.to_string(), url.to_string());
            }
        }
        if mode == 2 || EDITOR_ONLY.contains(&class.as_str()) {
            if class == "PrimitiveNode" {
                return Err(bad(format!(
                    "node {id} is a PrimitiveNode, whose value the editor copies into the widgets it feeds"
                )));
            }
            continue; // muted, or the editor's own
        }
        if mode == 4 {
            return Err(bad(format!("node {id} ({class}) is bypassed")));
        }
        let mut inputs = Map::new();
        let mut linked = BTreeSet::new();
        for input in node
            .get("inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = input.get("name").and_then(Value::as_str) else {
                continue;
            };
            if let Some(link) = input.get("link").and_then(Value::as_u64) {
                if let Some((from, slot)) = source(link)? {
                    inputs.insert(name.to_string(), serde_json::json!([from, slot]));
                    linked.insert(name.to_string());
                }
            }
        }
        if !info.contains_key(&class) {
            // Unknown class: keep what is known; the dependency check names it.
            workflow.prompt.insert(
                id,
                serde_json::json!({"class_type": class, "inputs": inputs}),
            );
            continue;
        }
        let mut values = match node.get("widgets_values") {
            Some(Value::Array(values)) => values.clone().into_iter(),
            Some(Value::Object(named)) => {
                for (name, value) in named {
                    if !linked.contains(name) {
                        inputs.insert(name.clone(), value.clone());
                    }
                }
                Vec::new().into_iter()
            }
            _ => Vec::new().into_iter(),
        };
        for (name, spec) in inputs_of(info, &class) {
            if !is_widget(&spec) {
                continue;
            }
            let Some(value) = values.next() else {
                break;
            };
            if !linked.contains(&name) {
                inputs.insert(name.clone(), value);
            }
            if has_control_value(&name, &spec) {
                let mut peek = values.clone();
                if peek.next().is_some_and(|v| {
                    matches!(
                        v.as_str(),
                        Some("fixed" | "increment" | "decrement" | "randomize")
                    )
                }) {
                    values.next();
                }
            }
        }
        workflow.prompt.insert(
            id,
            serde_json::json!({"class_type": class, "inputs": inputs, "_meta": {"title": node.get("title").cloned().unwrap_or(Value::String(class.clone()))}}),
        );
    }
    if workflow.prompt.is_empty() {
        return Err(WorkflowError::NotAWorkflow("it has no nodes".into()));
    }
    Ok(())
}

/// A node id as the API format writes it: a string (the editor writes numbers).
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The graph's own checks: every link names a node of the workflow and an output it has (when
/// its class is known), and no node depends on itself.
pub fn check_graph(workflow: &Workflow, info: &ObjectInfo) -> Result<(), WorkflowError> {
    let prompt = &workflow.prompt;
    let mut bad = Vec::new();
    for (id, node) in prompt {
        let node = node.as_object().expect("parse checked");
        for (input, value) in node
            .get("inputs")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let Some((from, slot)) = as_link(value) else {
                continue;
            };
            let Some(source) = prompt.get(from).and_then(Value::as_object) else {
                bad.push(format!(
                    "node {id} input `{input}` links to node {from}, which is not in the workflow"
                ));
                continue;
            };
            let class = class_of(source);
            if let Some(outputs) = info
                .get(class)
                .and_then(|c| c.get("output"))
                .and_then(Value::as_array)
            {
                if slot as usize >= outputs.len() {
                    bad.push(format!(
                        "node {id} input `{input}` links to output {slot} of node {from}, but `{class}` has {} output(s)",
                        outputs.len()
                    ));
                }
            }
        }
    }
    if !bad.is_empty() {
        return Err(WorkflowError::BadLinks(bad));
    }
    // Depth-first search for a back edge.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = prompt.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let deps = |id: &str| -> Vec<&str> {
        prompt[id]
            .get("inputs")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| as_link(v).map(|(from, _)| from))
            .collect()
    };
    for start in prompt.keys() {
        if marks[start.as_str()] != Mark::New {
            continue;
        }
        // (node, its dependencies not yet walked)
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start.as_str(), deps(start))];
        marks.insert(start.as_str(), Mark::Open);
        while let Some((node, rest)) = stack.last_mut() {
            let node = *node;
            match rest.pop() {
                Some(next) => match marks[next] {
                    Mark::New => {
                        marks.insert(next, Mark::Open);
                        let next_deps = deps(next);
                        let next = prompt.get_key_value(next).expect("linked").0.as_str();
                        stack.push((next, next_deps));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == next).expect("open");
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(next.to_string());
                        return Err(WorkflowError::Cycle(cycle));
                    }
                    Mark::Done => {}
                },
                None => {
                    marks.insert(node, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

/// What would bring a missing node class or model, from what the home and version know.
pub trait Hints {
    fn node(&self, class_type: &str) -> Option<String>;
    fn model(&self, file: &str) -> Option<String>;
    /// Whether the file is in one of the home's model folders.
    fn model_present(&self, file: &str) -> bool;
}

/// Every node class the workflow uses that `info` lacks, and every model file a node input
/// names (a choice input whose value is a model file) that is neither among the server's
/// choices nor in the home's model folders.
pub fn missing(workflow: &Workflow, info: &ObjectInfo, hints: &dyn Hints) -> Missing {
    let mut out = Missing::default();
    for (id, node) in &workflow.prompt {
        let node = node.as_object().expect("parse checked");
        let class = class_of(node);
        if !info.contains_key(class) {
            let hint = workflow
                .packs
                .get(class)
                .map(|pack| format!("the workflow says node pack `{pack}` provides it"))
                .or_else(|| hints.node(class));
            out.nodes.push(MissingNode {
                node: id.clone(),
                class_type: class.to_string(),
                hint,
            });
            continue;
        }
        let specs: BTreeMap<String, Value> = inputs_of(info, class).into_iter().collect();
        for (input, value) in node
            .get("inputs")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let Some(file) = value.as_str() else {
                continue;
            };
            let Some(options) = specs.get(input).and_then(choices) else {
                continue;
            };
            let is_model = is_model_file(file) || options.iter().any(|o| is_model_file(o));
            if !is_model || options.contains(&file) || hints.model_present(file) {
                continue;
            }
            let hint = hints.model(file).or_else(|| {
                let name = file.rsplit('/').next().unwrap_or(file);
                workflow
                    .model_urls
                    .get(name)
                    .map(|url| format!("the workflow says it comes from {url}"))
            });
            out.models.push(MissingModel {
                node: id.clone(),
                class_type: class.to_string(),
                input: input.clone(),
                file: file.to_string(),
                hint,
            });
        }
    }
    out
}

fn is_model_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MODEL_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> ObjectInfo {
        json!({
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors"], {}]}},
                "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP", "VAE"]},
            "EmptyImage": {"input": {"required": {"width": ["INT", {}], "height": ["INT", {}]}},
                "input_order": {"required": ["width", "height"]}, "output": ["IMAGE"]},
            "KSampler": {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {}], "steps": ["INT", {}]}},
                "input_order": {"required": ["model", "seed", "steps"]}, "output": ["LATENT"]},
            "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}},
                "input_order": {"required": ["images", "filename_prefix"]}, "output": []},
        })
        .as_object()
        .unwrap()
        .clone()
    }

    struct NoHints;
    impl Hints for NoHints {
        fn node(&self, _: &str) -> Option<String> {
            None
        }
        fn model(&self, _: &str) -> Option<String> {
            None
        }
        fn model_present(&self, _: &str) -> bool {
            false
        }
    }

    #[test]
    fn ui_format_is_converted_with_links_widgets_reroutes_and_seed_controls() {
        let ui = json!({
            "nodes": [
                {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "widgets_values": ["a.safetensors"],
                 "inputs": [], "properties": {"models": [{"name": "a.safetensors", "url": "https://x/a"}]}},
                {"id": 2, "type": "KSampler", "mode": 0, "widgets_values": [42, "randomize", 20],
                 "inputs": [{"name": "model", "link": 5}]},
                {"id": 3, "type": "Reroute", "inputs": [{"name": "", "link": 4}]},
                {"id": 4, "type": "Note", "widgets_values": ["hello"]},
                {"id": 5, "type": "GGUFLoader", "mode": 0, "properties": {"cnr_id": "comfyui-gguf"}},
                {"id": 6, "type": "EmptyImage", "mode": 2, "widgets_values": [1, 1]},
            ],
            "links": [[4, 1, 0, 3, 0, "MODEL"], [5, 3, 0, 2, 0, "MODEL"]],
        });
        let w = parse("w.json", &ui.to_string(), Some(&info())).unwrap();
        assert!(w.from_ui);
        assert_eq!(
            w.prompt["2"]["inputs"],
            json!({"model": ["1", 0], "seed": 42, "steps": 20})
        );
        assert_eq!(
            w.prompt["1"]["inputs"],
            json!({"ckpt_name": "a.safetensors"})
        );
        assert!(
            !w.prompt.contains_key("3")
                && !w.prompt.contains_key("4")
                && !w.prompt.contains_key("6")
        );
        assert_eq!(w.packs["GGUFLoader"], "comfyui-gguf");
        let missing = missing(&w, &info(), &NoHints);
        assert_eq!(missing.nodes.len(), 1);
        assert_eq!(missing.nodes[0].class_type, "GGUFLoader");
        assert!(missing.nodes[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("comfyui-gguf"));
    }

    #[test]
    fn a_bypassed_node_or_no_object_info_refuses_the_ui_format() {
        let ui = json!({"nodes": [{"id": 1, "type": "EmptyImage", "mode": 4}], "links": []});
        let err = parse("w.json", &ui.to_string(), Some(&info())).unwrap_err();
        assert!(err.to_string().contains("Export (API)"), "{err}");
        assert!(matches!(
            parse("w.json", &ui.to_string(), None),
            Err(WorkflowError::Unconvertible(_))
        ));
    }

    #[test]
    fn bad_json_bad_shapes_bad_links_and_cycles_are_named() {
        assert!(matches!(
            parse("w", "{", None),
            Err(WorkflowError::NotJson(_))
        ));
        assert!(matches!(
            parse("w", "[1]", None),
            Err(WorkflowError::NotAWorkflow(_))
        ));
        let no_class = json!({"1": {"inputs": {}}}).to_string();
        assert!(parse("w", &no_class, None)
            .unwrap_err()
            .to_string()
            .contains("class_type"));

        let dangling = json!({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}});
        let w = parse("w", &dangling.to_string(), None).unwrap();
        let err = check_graph(&w, &info()).unwrap_err().to_string();
        assert!(
            err.contains("node 1 input `images` links to node 9"),
            "{err}"
        );

        let slot = json!({"1": {"class_type": "EmptyImage", "inputs": {}},
                          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 3]}}});
        let w = parse("w", &slot.to_string(), None).unwrap();
        assert!(check_graph(&w, &info())
            .unwrap_err()
            .to_string()
            .contains("1 output(s)"));

        let cycle = json!({"1": {"class_type": "KSampler", "inputs": {"model": ["3", 0]}},
                           "2": {"class_type": "KSampler", "inputs": {"model": ["1", 0]}},
                           "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0]}},
                           "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}});
        let w = parse("w", &cycle.to_string(), None).unwrap();
        match check_graph(&w, &info()) {
            Err(WorkflowError::Cycle(path)) => {
                assert_eq!(path.first(), path.last());
                assert_eq!(path.len(), 4, "{path:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_model_input_is_missing_unless_offered_or_on_disk() {
        let wf = json!({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
                        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
                        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x.pt"}}});
        let w = parse("w", &wf.to_string(), None).unwrap();
        let m = missing(&w, &info(), &NoHints);
        assert_eq!(m.models.len(), 1, "{m:?}");
        assert_eq!(
            (m.models[0].node.as_str(), m.models[0].file.as_str()),
            ("1", "b.safetensors")
        );
        struct OnDisk;
        impl Hints for OnDisk {
            fn node(&self, _: &str) -> Option<String> {
                None
            }
            fn model(&self, _: &str) -> Option<String> {
                None
            }
            fn model_present(&self, file: &str) -> bool {
                file == "b.safetensors"
            }
        }
        assert!(missing(&w, &info(), &OnDisk).is_empty());
    }
}
