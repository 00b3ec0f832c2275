//! The neighbours' formats: ComfyUI-Manager snapshots (`save-snapshot`, JSON or YAML) and
//! ComfyGit/ComfyDock environments (`pyproject.toml` with `[tool.comfygit]`, and `uv.lock`),
//! read into specs; and a comfix version written back as a Manager snapshot.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::lock::Lock;

/// ComfyUI's own repository, where a format names only a version or a commit of it.
pub const COMFYUI_REPO: &str = "https://github.com/comfyanonymous/ComfyUI";

/// A spec read from another tool's file, and what could not be carried over.
#[derive(Debug, Clone)]
pub struct Imported {
    pub spec: Value,
    pub warnings: Vec<String>,
}

fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn repo_name(url: &str) -> String {
    crate::spec::repo_basename(url).to_string()
}

/// A Manager snapshot (`comfyui`, `git_custom_nodes`, `cnr_custom_nodes`, `file_custom_nodes`,
/// `pips`; the YAML form may wrap them in `custom_nodes:`) as the spec of version `name`.
/// Manager writes hashes as it reads them from `.git/HEAD` — a detached HEAD with its trailing
/// newline — and `"unknown"` where the branch's ref is only in `packed-refs`: hashes are trimmed,
/// and an `"unknown"` one is read from the install's git when `install` (the ComfyUI directory
/// the snapshot belongs to) is known, else the spec follows the default branch, saying so.
pub fn from_manager(
    snapshot: &Value,
    name: &str,
    install: Option<&Path>,
) -> Result<Imported, String> {
    let Some(top) = snapshot.as_object() else {
        return Err("a Manager snapshot is a JSON or YAML mapping".into());
    };
    let mut warnings = Vec::new();
    let mut body = top.clone();
    if let Some(Value::Object(inner)) = top.get("custom_nodes") {
        body.remove("custom_nodes");
        body.extend(inner.clone());
    }
    const KNOWN: &[&str] = &[
        "comfyui",
        "git_custom_nodes",
        "cnr_custom_nodes",
        "file_custom_nodes",
        "pips",
    ];
    for key in body.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        warnings.push(format!(
            "`{key}` is not a key of Manager snapshots comfix knows ({}): ignored",
            KNOWN.join(", ")
        ));
    }
    let comfyui = body.get("comfyui").and_then(Value::as_str).map(str::trim);
    let comfyui = match comfyui {
        Some("unknown") => match install.and_then(head_commit) {
            Some(commit) => Some(commit),
            None => {
                warnings.push("the snapshot's ComfyUI commit is `unknown` and no install is at hand to read it from: the spec follows `master`".into());
                None
            }
        },
        other => other.map(String::from),
    };
    let comfy = match comfyui.as_deref() {
        Some(commit) if is_commit(commit) => json!({ "repo": COMFYUI_REPO, "commit": commit }),
        Some(reference) if !reference.is_empty() => {
            json!({ "repo": COMFYUI_REPO, "ref": reference })
        }
        _ => {
            warnings.push("the snapshot names no ComfyUI commit: the spec follows `master`".into());
            json!({ "repo": COMFYUI_REPO, "ref": "master" })
        }
    };
    let mut nodes = Vec::new();
    if let Some(git) = body.get("git_custom_nodes").and_then(Value::as_object) {
        for (url, entry) in git {
            let mut node = json!({ "repo": url, "name": repo_name(url) });
            let hash = entry.get("hash").and_then(Value::as_str).map(str::trim);
            let hash = match hash {
                Some("unknown") => {
                    let found = install.and_then(|i| node_commit(i, url));
                    if found.is_none() {
                        warnings.push(format!(
                            "`{url}`: the snapshot's commit is `unknown` and the node's git is not at hand: the spec follows its default branch"
                        ));
                    }
                    found
                }
                other => other.map(String::from),
            };
            match hash.as_deref() {
                Some(hash) if is_commit(hash) => node["commit"] = json!(hash),
                Some(other) if !other.is_empty() => node["ref"] = json!(other),
                _ => {
                    warnings.push(format!(
                        "`{url}` has no commit: the spec follows its default branch"
                    ));
                    node["ref"] = json!("HEAD");
                }
            }
            if entry.get("disabled").and_then(Value::as_bool) == Some(true) {
                node["enabled"] = json!(false);
            }
            nodes.push(node);
        }
    }
    match body.get("cnr_custom_nodes") {
        Some(Value::Object(cnr)) => {
            for (id, version) in cnr {
                let mut node = json!({ "cnr": id.trim().to_lowercase() });
                match version.as_str() {
                    Some(v) if !v.is_empty() && v != "nightly" => node["version"] = json!(v),
                    _ => warnings.push(format!(
                        "registry node `{id}` has no version: the spec takes the latest"
                    )),
                }
                nodes.push(node);
            }
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            warnings.push("`cnr_custom_nodes` is a list, not `{id: version}`: ignored".into())
        }
        _ => {}
    }
    for file in body
        .get("file_custom_nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = file.get("filename").and_then(Value::as_str).unwrap_or("?");
        warnings.push(format!(
            "single-file node `{name}`: comfix carries node packs (put it in a git repository); left out"
        ));
    }
    let mut requirements = Vec::new();
    if let Some(pips) = body.get("pips").and_then(Value::as_object) {
        for (key, value) in pips {
            let value = value.as_str().unwrap_or("");
            let requirement = if key.contains("==") || key.contains("://") || value.is_empty() {
                key.clone()
            } else {
                format!("{key}=={value}")
            };
            requirements.push(requirement);
        }
    }
    requirements.sort();
    let mut spec = json!({
        "schema_version": 2,
        "version_id": name,
        "comfy": comfy,
        "custom_nodes": nodes,
        "models": [],
    });
    if !requirements.is_empty() {
        spec["python"] = json!({ "requirements": requirements });
    }
    Ok(Imported { spec, warnings })
}

/// The HEAD commit of the git repository at `dir`.
fn head_commit(dir: &Path) -> Option<String> {
    let repo = git2::Repository::open(dir).ok()?;
    let commit = repo.head().ok()?.peel_to_commit().ok()?;
    Some(commit.id().to_string())
}

/// The HEAD commit of the node of `install` whose origin is `url` (under `custom_nodes/`, or
/// `custom_nodes/.disabled/`).
fn node_commit(install: &Path, url: &str) -> Option<String> {
    let same = |a: &str, b: &str| {
        let norm = |u: &str| {
            u.trim_end_matches('/')
                .trim_end_matches(".git")
                .to_lowercase()
        };
        norm(a) == norm(b)
    };
    let nodes = install.join("custom_nodes");
    let dirs = std::fs::read_dir(&nodes)
        .into_iter()
        .flatten()
        .chain(
            std::fs::read_dir(nodes.join(".disabled"))
                .into_iter()
                .flatten(),
        )
        .flatten()
        .map(|e| e.path());
    for dir in dirs {
        let Ok(repo) = git2::Repository::open(&dir) else {
            continue;
        };
        let origin = repo
            .find_remote("origin")
            .ok()
            .and_then(|r| r.url().ok().map(String::from));
        if origin.is_some_and(|o| same(&o, url)) {
            return head_commit(&dir);
        }
    }
    None
}

/// The ComfyUI directory a Manager snapshot file is in (Manager keeps them in
/// `ComfyUI/user/default/ComfyUI-Manager/snapshots/`, older ones in
/// `ComfyUI/custom_nodes/ComfyUI-Manager/snapshots/`): the nearest ancestor with `main.py` and
/// `custom_nodes/`.
pub fn install_of(file: &Path) -> Option<PathBuf> {
    let file = std::fs::canonicalize(file).ok()?;
    file.ancestors()
        .skip(1)
        .find(|a| a.join("main.py").is_file() && a.join("custom_nodes").is_dir())
        .map(Path::to_path_buf)
}

/// Version `lock` (with its spec's enabled states) as a Manager snapshot that `cm-cli
/// restore-snapshot` restores.
pub fn to_manager(lock: &Lock, spec: &crate::spec::Spec) -> Value {
    let mut git = Map::new();
    let mut cnr = Map::new();
    for node in &lock.custom_nodes {
        let enabled = spec
            .custom_nodes
            .iter()
            .find(|n| n.dir_name() == node.name)
            .is_none_or(|n| n.is_enabled());
        if let Some(g) = &node.git {
            git.insert(
                g.repo.clone(),
                json!({ "hash": g.commit, "disabled": !enabled }),
            );
        }
        if let Some(r) = &node.registry {
            cnr.insert(r.id.clone(), json!(r.version));
        }
    }
    let mut pips = Map::new();
    for wheel in lock.python.iter().flat_map(|p| &p.wheels) {
        pips.insert(format!("{}=={}", wheel.name, wheel.version), json!(""));
    }
    json!({
        "comfyui": lock.comfy.commit,
        "git_custom_nodes": git,
        "cnr_custom_nodes": cnr,
        "file_custom_nodes": [],
        "pips": pips,
    })
}

/// A YAML document as JSON values (mappings with string keys, scalars, lists).
/// `value` as YAML text (for a Manager snapshot asked for as `.yaml`, as Manager's own YAML
/// snapshots are).
pub fn json_to_yaml_text(value: &Value) -> String {
    fn convert(value: &Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match value {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(list) => Yaml::Array(list.iter().map(convert).collect()),
            Value::Object(map) => Yaml::Hash(
                map.iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), convert(v)))
                    .collect(),
            ),
        }
    }
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter
        .dump(&convert(value))
        .expect("writing to a String cannot fail");
    out.push('\n');
    out
}

pub fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Real(r) => r.clone(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => String::new(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Array(list) => Value::Array(list.iter().map(yaml_to_json).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => r.parse::<f64>().map(|f| json!(f)).unwrap_or(json!(r)),
        Yaml::Boolean(b) => json!(b),
        _ => Value::Null,
    }
}

/// A ComfyGit/ComfyDock environment (`pyproject.toml` with `[tool.comfygit]` or
/// `[tool.comfydock]`, and its `uv.lock`) as the spec of version `name`.
pub fn from_comfygit(
    pyproject: &str,
    uv_lock: Option<&str>,
    name: &str,
) -> Result<Imported, String> {
    let doc: toml::Value =
        toml::from_str(pyproject).map_err(|e| format!("not a pyproject.toml: {e}"))?;
    let tool = doc
        .get("tool")
        .and_then(|t| t.get("comfygit").or_else(|| t.get("comfydock")))
        .ok_or("no `[tool.comfygit]` (or `[tool.comfydock]`) table: not a ComfyGit environment")?;
    let mut warnings = Vec::new();
    let text = |v: &toml::Value, k: &str| v.get(k).and_then(toml::Value::as_str).map(String::from);
    let comfy = match text(tool, "comfyui_version") {
        Some(v) if is_commit(&v) => json!({ "repo": COMFYUI_REPO, "commit": v }),
        Some(v) => json!({ "repo": COMFYUI_REPO, "ref": v }),
        None => {
            warnings.push("no `comfyui_version`: the spec follows `master`".into());
            json!({ "repo": COMFYUI_REPO, "ref": "master" })
        }
    };
    let mut nodes = Vec::new();
    for (id, node) in tool
        .get("nodes")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
    {
        let dir = text(node, "name").unwrap_or_else(|| id.clone());
        let version = text(node, "version");
        match text(node, "source").as_deref() {
            Some("registry") => {
                let cnr = text(node, "registry_id").unwrap_or_else(|| id.clone());
                let mut entry = json!({ "cnr": cnr.to_lowercase(), "name": dir });
                if let Some(v) = version {
                    entry["version"] = json!(v);
                }
                nodes.push(entry);
            }
            Some("git") | None if text(node, "repository").is_some() => {
                let repo = text(node, "repository").expect("checked");
                let mut entry = json!({ "repo": repo, "name": dir });
                match version {
                    Some(v) if is_commit(&v) => entry["commit"] = json!(v),
                    Some(v) => entry["ref"] = json!(v),
                    None => entry["ref"] = json!("HEAD"),
                }
                nodes.push(entry);
            }
            Some("development") => warnings.push(format!(
                "`{id}` is a development node (a local directory): left out"
            )),
            other => warnings.push(format!(
                "node `{id}` has source {other:?} and no repository: left out"
            )),
        }
    }
    let mut models = Vec::new();
    for (hash, model) in tool
        .get("models")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
    {
        // Older exports nest `required`/`optional` tables of models.
        let entries: Vec<(&String, &toml::Value)> = match model.get("filename") {
            Some(_) => vec![(hash, model)],
            None => model
                .as_table()
                .map(|t| t.iter().collect())
                .unwrap_or_default(),
        };
        for (hash, model) in entries {
            let Some(filename) = text(model, "filename") else {
                continue;
            };
            let relative = text(model, "relative_path").unwrap_or_else(|| filename.clone());
            let folder = relative
                .rsplit_once('/')
                .map(|(dir, _)| dir.to_string())
                .or_else(|| text(model, "category"));
            let sources: Vec<String> = model
                .get("sources")
                .and_then(toml::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let Some(source) = sources.first() else {
                warnings.push(format!(
                    "model `{relative}` ({hash}) has no source: left out (add it with its URL)"
                ));
                continue;
            };
            let mut entry = json!({ "source": source, "filename": filename });
            if let Some(folder) = folder {
                entry["target_subdir"] = json!(folder);
            }
            models.push(entry);
        }
    }
    // Python: the project's and every dependency group's requirements, pinned by uv.lock.
    let mut wanted: Vec<String> = doc
        .get("project")
        .and_then(|p| p.get("dependencies"))
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(String::from))
        .collect();
    for (_, group) in doc
        .get("dependency-groups")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
    {
        wanted.extend(
            group
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(String::from)),
        );
    }
    let project = doc
        .get("project")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .map(normalize);
    let locked = match uv_lock {
        Some(text) => Some(
            toml::from_str::<toml::Value>(text)
                .map_err(|e| format!("`uv.lock` is not TOML: {e}"))?,
        ),
        None => {
            warnings.push(
                "the environment has no `uv.lock`: its requirements are taken unpinned".into(),
            );
            None
        }
    };
    let pins = locked.as_ref().map(lock_pins).unwrap_or_default();
    // The direct requirements, pinned, their extras and markers kept.
    let mut requirements: Vec<String> = wanted
        .iter()
        .map(|r| {
            let parsed = Requirement::parse(r);
            match pins.get(&normalize(&parsed.name)) {
                Some((version, _)) => parsed.pinned(version),
                None => r.clone(),
            }
        })
        .collect();
    // Every other package uv.lock resolved for them, pinned too, under the markers of the paths
    // that lead to it (a Windows-only `pywin32` stays Windows-only), so nothing floats.
    let direct: std::collections::BTreeSet<String> = wanted
        .iter()
        .map(|r| normalize(&Requirement::parse(r).name))
        .collect();
    if let Some(lock) = &locked {
        for (name, (version, marker)) in transitive_pins(lock, project.as_deref()) {
            if direct.contains(&name) || Some(&name) == project.as_ref() {
                continue;
            }
            let display = pins.get(&name).map(|(_, n)| n.clone()).unwrap_or(name);
            requirements.push(match marker {
                Some(marker) => format!("{display}=={version} ; {marker}"),
                None => format!("{display}=={version}"),
            });
        }
    }
    requirements.sort();
    requirements.dedup();
    let mut spec = json!({
        "schema_version": 2,
        "version_id": name,
        "comfy": comfy,
        "custom_nodes": nodes,
        "models": models,
    });
    let mut python = json!({});
    if let Some(v) = text(tool, "python_version") {
        python["version"] = json!(v);
    }
    if !requirements.is_empty() {
        python["requirements"] = json!(requirements);
    }
    if python.as_object().is_some_and(|p| !p.is_empty()) {
        spec["python"] = python;
    }
    Ok(Imported { spec, warnings })
}

/// A PEP 508 requirement, as much as an import needs: its name, extras, the rest of its version
/// specifier and its marker.
struct Requirement {
    name: String,
    extras: Option<String>,
    marker: Option<String>,
}

impl Requirement {
    fn parse(text: &str) -> Requirement {
        let (head, marker) = match text.split_once(';') {
            Some((head, marker)) => (head, Some(marker.trim().to_string())),
            None => (text, None),
        };
        let name = requirement_name(head.trim());
        let rest = head.trim()[name.len()..].trim_start();
        let extras = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(extras, _)| extras.trim().to_string());
        Requirement {
            name,
            extras,
            marker: marker.filter(|m| !m.is_empty()),
        }
    }

    /// `name[extras]==version ; marker`.
    fn pinned(&self, version: &str) -> String {
        let mut out = self.name.clone();
        if let Some(extras) = &self.extras {
            out.push_str(&format!("[{extras}]"));
        }
        out.push_str(&format!("=={version}"));
        if let Some(marker) = &self.marker {
            out.push_str(&format!(" ; {marker}"));
        }
        out
    }
}

/// uv.lock's packages: normalized name → (version, name as written).
fn lock_pins(lock: &toml::Value) -> std::collections::BTreeMap<String, (String, String)> {
    lock.get("package")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            Some((
                normalize(name),
                (p.get("version")?.as_str()?.to_string(), name.to_string()),
            ))
        })
        .collect()
}

/// Every package uv.lock resolved for the project (reachable from its dependencies, optional
/// ones and groups), with its version and the marker under which it is needed (`None`: always),
/// the markers of every path to it joined. A package reached by more than 16 distinct paths of
/// markers is left unpinned (its parents still require it).
fn transitive_pins(
    lock: &toml::Value,
    project: Option<&str>,
) -> std::collections::BTreeMap<String, (String, Option<String>)> {
    use std::collections::{BTreeMap, BTreeSet};
    #[derive(Clone, PartialEq)]
    enum Cond {
        Always,
        Any(BTreeSet<String>),
        TooMany,
    }
    let packages: Vec<&toml::Value> = lock
        .get("package")
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let name_of = |p: &toml::Value| p.get("name").and_then(toml::Value::as_str).map(normalize);
    // Edges: package → [(dependency, marker)], from every dependency list it has.
    let mut edges: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
    for package in &packages {
        let Some(name) = name_of(package) else {
            continue;
        };
        let mut lists: Vec<&toml::Value> = package.get("dependencies").into_iter().collect();
        for key in ["optional-dependencies", "dev-dependencies"] {
            if let Some(table) = package.get(key).and_then(toml::Value::as_table) {
                lists.extend(table.values());
            }
        }
        for list in lists {
            for dep in list.as_array().into_iter().flatten() {
                let Some(dep_name) = dep.get("name").and_then(toml::Value::as_str) else {
                    continue;
                };
                let marker = dep
                    .get("marker")
                    .and_then(toml::Value::as_str)
                    .map(String::from);
                edges
                    .entry(name.clone())
                    .or_default()
                    .push((normalize(dep_name), marker));
            }
        }
    }
    let root = packages
        .iter()
        .find(|p| {
            p.get("source")
                .and_then(|s| s.get("virtual").or_else(|| s.get("editable")))
                .and_then(toml::Value::as_str)
                == Some(".")
        })
        .and_then(|p| name_of(p))
        .or_else(|| project.map(String::from));
    let Some(root) = root else {
        return BTreeMap::new();
    };
    let mut cond: BTreeMap<String, Cond> = BTreeMap::new();
    cond.insert(root.clone(), Cond::Always);
    for _ in 0..64 {
        let mut changed = false;
        let snapshot = cond.clone();
        for (parent, parent_cond) in &snapshot {
            for (child, marker) in edges.get(parent).into_iter().flatten() {
                let through = match (parent_cond, marker) {
                    (Cond::TooMany, _) => Cond::TooMany,
                    (Cond::Always, None) => Cond::Always,
                    (Cond::Always, Some(m)) => Cond::Any([m.clone()].into()),
                    (Cond::Any(set), None) => Cond::Any(set.clone()),
                    (Cond::Any(set), Some(m)) => {
                        Cond::Any(set.iter().map(|s| format!("({s}) and ({m})")).collect())
                    }
                };
                let merged = match (cond.get(child), through) {
                    (None, t) => t,
                    (Some(Cond::Always), _) | (_, Cond::Always) => Cond::Always,
                    (Some(Cond::TooMany), _) | (_, Cond::TooMany) => Cond::TooMany,
                    (Some(Cond::Any(a)), Cond::Any(b)) => {
                        let all: BTreeSet<String> = a.union(&b).cloned().collect();
                        if all.len() > 16 {
                            Cond::TooMany
                        } else {
                            Cond::Any(all)
                        }
                    }
                };
                if cond.get(child) != Some(&merged) {
                    cond.insert(child.clone(), merged);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let versions = lock_pins(lock);
    cond.into_iter()
        .filter(|(name, _)| *name != root)
        .filter_map(|(name, c)| {
            let (version, _) = versions.get(&name)?.clone();
            match c {
                Cond::Always => Some((name, (version, None))),
                Cond::Any(set) => {
                    let marker = if set.len() == 1 {
                        set.into_iter().next().expect("one")
                    } else {
                        set.into_iter()
                            .map(|s| format!("({s})"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    };
                    Some((name, (version, Some(marker))))
                }
                Cond::TooMany => None,
            }
        })
        .collect()
}

/// PEP 503's normalized name.
fn normalize(name: &str) -> String {
    name.to_lowercase().replace(['_', '.'], "-")
}

/// The distribution name a requirement starts with.
fn requirement_name(requirement: &str) -> String {
    requirement
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .next()
        .unwrap_or(requirement)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_snapshots_become_specs_and_unknown_keys_are_named() {
        let snapshot = json!({
            "comfyui": "a".repeat(40),
            "git_custom_nodes": {
                "https://github.com/city96/ComfyUI-GGUF": {"hash": "b".repeat(40), "disabled": false},
                "https://github.com/rgthree/rgthree-comfy.git": {"hash": "c".repeat(40), "disabled": true}
            },
            "cnr_custom_nodes": {"ComfyUI-KJNodes": "1.0.5"},
            "file_custom_nodes": [{"filename": "x.py", "disabled": false}],
            "pips": {"torch==2.5.1": "", "numpy": "1.26.4"},
            "extras": 1
        });
        let imported = from_manager(&snapshot, "v", None).unwrap();
        let spec = &imported.spec;
        assert_eq!(spec["comfy"]["commit"], "a".repeat(40));
        assert_eq!(spec["custom_nodes"][0]["name"], "ComfyUI-GGUF");
        assert_eq!(spec["custom_nodes"][1]["name"], "rgthree-comfy");
        assert_eq!(spec["custom_nodes"][1]["enabled"], false);
        assert_eq!(
            spec["custom_nodes"][2],
            json!({"cnr": "comfyui-kjnodes", "version": "1.0.5"})
        );
        assert_eq!(
            spec["python"]["requirements"],
            json!(["numpy==1.26.4", "torch==2.5.1"])
        );
        let warnings = imported.warnings.join("\n");
        assert!(warnings.contains("`extras`"), "{warnings}");
        assert!(warnings.contains("x.py"), "{warnings}");
    }

    #[test]
    fn comfygit_requirements_keep_extras_and_markers_and_pin_the_whole_lock() {
        let pyproject = r#"
[project]
name = "comfygit-env"
dependencies = ["huggingface-hub[hf-xet]>=0.34", "pywin32>=306 ; sys_platform == 'win32'", "pillow"]

[tool.comfygit]
comfyui_version = "v0.3.68"
"#;
        let uv_lock = r#"
version = 1
[[package]]
name = "comfygit-env"
version = "0.1.0"
source = { virtual = "." }
dependencies = [
    { name = "huggingface-hub", extra = ["hf-xet"] },
    { name = "pillow" },
    { name = "pywin32", marker = "sys_platform == 'win32'" },
]
[[package]]
name = "huggingface-hub"
version = "0.35.0"
dependencies = [{ name = "tqdm" }]
[package.optional-dependencies]
hf-xet = [{ name = "hf-xet" }]
[[package]]
name = "hf-xet"
version = "1.1.10"
[[package]]
name = "tqdm"
version = "4.67.1"
dependencies = [{ name = "colorama", marker = "platform_system == 'Windows'" }]
[[package]]
name = "colorama"
version = "0.4.6"
[[package]]
name = "pillow"
version = "11.3.0"
[[package]]
name = "pywin32"
version = "311"
"#;
        let imported = from_comfygit(pyproject, Some(uv_lock), "v").unwrap();
        let requirements: Vec<String> = imported.spec["python"]["requirements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            requirements,
            [
                "colorama==0.4.6 ; platform_system == 'Windows'",
                "hf-xet==1.1.10",
                "huggingface-hub[hf-xet]==0.35.0",
                "pillow==11.3.0",
                "pywin32==311 ; sys_platform == 'win32'",
                "tqdm==4.67.1",
            ]
        );
    }

    #[test]
    fn comfygit_environments_pin_requirements_from_uv_lock() {
        let pyproject = r#"
[project]
name = "comfygit-env-x"
dependencies = ["pillow", "numpy>=1.25"]

[tool.comfygit]
comfyui_version = "v0.3.68"
python_version = "3.12"

[tool.comfygit.nodes.comfyui-impact-pack]
name = "ComfyUI-Impact-Pack"
registry_id = "comfyui-impact-pack"
version = "5.5.0"
source = "registry"

[tool.comfygit.nodes.gguf]
name = "ComfyUI-GGUF"
repository = "https://github.com/city96/ComfyUI-GGUF"
version = "0123456789abcdef0123456789abcdef01234567"
source = "git"

[tool.comfygit.nodes.mine]
name = "mine"
source = "development"

[dependency-groups]
comfyui-impact-pack-a1b2 = ["ultralytics>=8"]

[tool.comfygit.models]
0b222b1d568748dc = { filename = "clip_vision_h.safetensors", relative_path = "clip_vision/clip_vision_h.safetensors", sources = ["https://example.org/clip_vision_h.safetensors"] }
1111 = { filename = "nosource.safetensors", relative_path = "loras/nosource.safetensors" }
"#;
        let uv_lock = "version = 1\n[[package]]\nname = \"numpy\"\nversion = \"2.1.0\"\n[[package]]\nname = \"Pillow\"\nversion = \"11.0.0\"\n";
        let imported = from_comfygit(pyproject, Some(uv_lock), "v").unwrap();
        let spec = &imported.spec;
        assert_eq!(spec["comfy"]["ref"], "v0.3.68");
        assert_eq!(spec["custom_nodes"].as_array().unwrap().len(), 2);
        assert_eq!(spec["python"]["version"], "3.12");
        assert_eq!(
            spec["python"]["requirements"],
            json!(["numpy==2.1.0", "pillow==11.0.0", "ultralytics>=8"])
        );
        assert_eq!(spec["models"][0]["target_subdir"], "clip_vision");
        let warnings = imported.warnings.join("\n");
        assert!(warnings.contains("development"), "{warnings}");
        assert!(warnings.contains("nosource"), "{warnings}");
        let unlocked = from_comfygit(pyproject, None, "v").unwrap();
        assert!(unlocked.warnings.join("\n").contains("no `uv.lock`"));
        assert!(from_comfygit("[project]\nname='x'\n", None, "v").is_err());
    }
}
