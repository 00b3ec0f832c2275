//! Field-by-field validation of a parsed spec, and translation of serde's errors into [`Issue`]s.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Issue, NodeSource, Spec, SpecError, SCHEMA_VERSION};

/// Check that `value` can be used as a single path component: not empty, not `.` or `..`, no
/// separators, not absolute, no control characters.
pub fn check_path_component(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value == "." || value == ".." {
        return Err(format!("`{value}` is not allowed as a name"));
    }
    if value.contains('/') || value.contains('\\') {
        return Err(format!(
            "`{}` must be a single name, without `/` or `\\`",
            value.escape_debug()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "`{}` contains a control character",
            value.escape_debug()
        ));
    }
    if let Some(c) = value.chars().find(|c| is_invisible(*c)) {
        return Err(format!(
            "`{}` contains an invisible or text-direction character (U+{:04X}), which makes a name look like another",
            value.escape_unicode(),
            c as u32
        ));
    }
    if value.len() > 255 {
        return Err("is longer than 255 bytes".into());
    }
    Ok(())
}

/// Bidirectional controls and zero-width characters: they make a name display as another.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// Whether `value` is hexadecimal digits only (lengths are the caller's to check).
pub fn is_hex(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `repo` looks like something git can clone: a URL with a scheme git knows, an scp-like
/// `user@host:path`, or an absolute local path.
fn is_git_remote(repo: &str) -> bool {
    if repo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if let Some((scheme, rest)) = repo.split_once("://") {
        return matches!(
            scheme,
            "https" | "http" | "git" | "ssh" | "file" | "git+ssh"
        ) && !rest.is_empty();
    }
    if repo.starts_with('/') {
        return repo.len() > 1;
    }
    // scp-like syntax: [user@]host:path
    matches!(repo.split_once(':'), Some((host, path)) if !host.is_empty() && !path.is_empty() && !host.contains('/'))
}

/// The source's grammar is `ModelSource`'s; a `file://` path must also not name a kernel
/// filesystem or device.
fn is_model_source(source: &super::ModelSource) -> Result<(), String> {
    match source.kind()? {
        super::SourceKind::File(path) => match super::local::refused_by_name(path) {
            Some(reason) => Err(reason),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Check a `${VAR}` template; returns the referenced variable names.
pub(super) fn template_vars(value: &str) -> Result<Vec<String>, String> {
    let mut vars = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated `${` (expected `${NAME}`)".into());
        };
        let name = &after[..end];
        if !is_env_name(name) {
            return Err(format!(
                "`${{{name}}}` is not a valid variable reference (expected `${{NAME}}` with letters, digits and `_`)"
            ));
        }
        vars.push(name.to_string());
        rest = &after[end + 1..];
    }
    Ok(vars)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_registry_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && check_path_component(id).is_ok()
}

struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            field: field.into(),
            message: message.into(),
            hint: None,
        });
    }

    fn add_hint(&mut self, field: impl Into<String>, message: impl Into<String>, hint: &str) {
        self.0.push(Issue {
            field: field.into(),
            message: message.into(),
            hint: Some(hint.into()),
        });
    }

    fn component(&mut self, field: String, value: &str) {
        if let Err(reason) = check_path_component(value) {
            self.add(field, reason);
        }
    }

    fn git_ref(&mut self, field: String, value: &Option<String>) {
        if let Some(value) = value {
            if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
                self.add(field, "expected a branch, tag or other git ref name");
            }
        }
    }

    fn commit(&mut self, field: String, value: &Option<String>) {
        if let Some(value) = value {
            if !(7..=64).contains(&value.len()) || !is_hex(value) {
                self.add(
                    field,
                    format!(
                        "expected a hexadecimal commit id, got `{}`",
                        value.escape_debug()
                    ),
                );
            }
        }
    }

    fn digest(&mut self, field: String, value: &Option<String>, algo: &str) {
        if let Some(value) = value {
            if value.len() != 64 || !is_hex(value) {
                self.add(
                    field,
                    format!("expected a {algo} digest as 64 hexadecimal digits"),
                );
            }
        }
    }
}

/// Every problem in `spec`, in document order.
pub(super) fn validate(spec: &Spec) -> Vec<Issue> {
    let mut issues = Issues(Vec::new());
    if spec.schema_version != SCHEMA_VERSION {
        issues.add_hint(
            "schema_version",
            format!(
                "unsupported schema version {}, expected {SCHEMA_VERSION}",
                spec.schema_version
            ),
            "comfix reads schema_version 2 specs",
        );
    }
    issues.component("version_id".into(), &spec.version_id);

    if !is_git_remote(&spec.comfy.repo) {
        issues.add(
            "comfy.repo",
            format!("expected a URL, got `{}`", spec.comfy.repo.escape_debug()),
        );
    }
    issues.git_ref("comfy.ref".into(), &spec.comfy.git_ref);
    issues.commit("comfy.commit".into(), &spec.comfy.commit);

    nodes(&mut issues, spec);
    models(&mut issues, spec);
    env(&mut issues, spec);
    python(&mut issues, spec);
    workflows(&mut issues, spec);
    issues.0
}

/// Each node's source, pins and directory name (unique, not `.disabled`).
fn nodes(issues: &mut Issues, spec: &Spec) {
    let mut node_dirs: BTreeMap<String, usize> = BTreeMap::new();
    for (i, node) in spec.custom_nodes.iter().enumerate() {
        let at = format!("custom_nodes[{i}]");
        let sources = [node.repo.is_some(), node.cnr.is_some(), node.path.is_some()];
        match sources.iter().filter(|s| **s).count() {
            0 => issues.add_hint(
                at.clone(),
                "has neither `repo` nor `cnr` nor `path`",
                "set `repo` to a git URL, `cnr` to a Comfy Node Registry id, or `path` to a directory",
            ),
            1 => {}
            n => issues.add_hint(
                at.clone(),
                {
                    let set: Vec<&str> = ["`repo`", "`cnr`", "`path`"]
                        .into_iter()
                        .zip(sources)
                        .filter_map(|(name, on)| on.then_some(name))
                        .collect();
                    match n {
                        2 => format!("has both {} and {}", set[0], set[1]),
                        _ => format!("has {}, {} and {}", set[0], set[1], set[2]),
                    }
                },
                "a node comes from a git repository (`repo`), the registry (`cnr`) or a local directory (`path`), one of them",
            ),
        }
        node_source(issues, &at, node);
        issues.git_ref(format!("{at}.ref"), &node.git_ref);
        issues.commit(format!("{at}.commit"), &node.commit);

        let dir = node.dir_name();
        let name_field = if node.name.is_some() {
            format!("{at}.name")
        } else {
            at.clone()
        };
        match check_path_component(&dir) {
            Err(reason) if node.name.is_some() => issues.add(name_field, reason),
            Err(_) => issues.add_hint(
                name_field,
                "cannot derive a directory name from the source",
                "set `name`",
            ),
            Ok(()) if dir.eq_ignore_ascii_case(".disabled") => issues.add_hint(
                name_field,
                "`.disabled` is the directory ComfyUI-Manager keeps disabled nodes in",
                "give the node another `name`, or set `\"enabled\": false` to disable it",
            ),
            Ok(()) => {
                if let Some(first) = node_dirs.insert(dir.clone(), i) {
                    issues.add_hint(
                        name_field,
                        format!("duplicate node name `{dir}` (also used by custom_nodes[{first}])"),
                        "give one of the nodes a different `name`",
                    );
                }
            }
        }
    }
}

/// A git node's URL and a registry node's id and version, and pins that do not apply.
fn node_source(issues: &mut Issues, at: &str, node: &super::CustomNode) {
    match node.source() {
        NodeSource::Local { path } => {
            if path.is_empty() || path.chars().any(char::is_control) {
                issues.add(format!("{at}.path"), "expected a directory");
            }
            if node.git_ref.is_some() || node.commit.is_some() || node.version.is_some() {
                issues.add_hint(
                    format!("{at}.path"),
                    "`ref`, `commit` and `version` do not apply to a local directory",
                    "a development node is taken as it is on disk; the lock records its digest",
                );
            }
        }
        NodeSource::Git { repo } => {
            if node.repo.is_some() && !is_git_remote(repo) {
                issues.add(
                    format!("{at}.repo"),
                    format!("expected a URL, got `{}`", repo.escape_debug()),
                );
            }
            if node.version.is_some() {
                issues.add_hint(
                    format!("{at}.version"),
                    "`version` applies only to registry nodes",
                    "use `ref` or `commit` to pin a git node",
                );
            }
        }
        NodeSource::Registry { id, version } => {
            if !is_registry_id(id) {
                issues.add(
                    format!("{at}.cnr"),
                    format!(
                        "expected a registry id (letters, digits, `-`, `_`, `.`), got `{}`",
                        id.escape_debug()
                    ),
                );
            }
            if let Some(version) = version {
                if version.is_empty()
                    || !version
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
                {
                    issues.add(
                        format!("{at}.version"),
                        format!(
                            "expected a version such as `1.2.3`, got `{}`",
                            version.escape_debug()
                        ),
                    );
                }
            }
            if node.git_ref.is_some() || node.commit.is_some() {
                issues.add_hint(
                    format!("{at}.ref"),
                    "`ref` and `commit` apply only to git nodes",
                    "use `version` to pin a registry node",
                );
            }
        }
    }
}

/// Each model's source, folder, file name (unique per folder) and digests.
fn models(issues: &mut Issues, spec: &Spec) {
    let mut model_files: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, model) in spec.models.iter().enumerate() {
        let at = format!("models[{i}]");
        if let Err(reason) = is_model_source(&model.source) {
            issues.add(format!("{at}.source"), reason);
        }
        if let Some(subdir) = &model.target_subdir {
            // A folder and, as ComfyUI lists them, subfolders: `checkpoints/sdxl`.
            let field = format!("{at}.target_subdir");
            match subdir
                .split('/')
                .find_map(|part| check_path_component(part).err())
            {
                Some(_) if subdir.contains("..") || subdir.starts_with('/') => issues.add(
                    field,
                    format!(
                        "`{}` must be a folder under the models directory, without `..`",
                        subdir.escape_debug()
                    ),
                ),
                Some(reason) => issues.add(field, reason),
                None => {}
            }
        }
        let file = model.file_name();
        match check_path_component(&file) {
            Err(reason) if model.filename.is_some() => issues.add(format!("{at}.filename"), reason),
            Err(_) => issues.add_hint(
                at.clone(),
                "cannot derive a file name from the source",
                "set `filename`",
            ),
            Ok(()) => {
                let key = (
                    model.target_subdir.clone().unwrap_or_default(),
                    file.clone(),
                );
                if let Some(first) = model_files.insert(key, i) {
                    issues.add_hint(
                        at.clone(),
                        format!("duplicate model file `{file}` (also placed by models[{first}])"),
                        "set a different `filename` or `target_subdir`",
                    );
                }
            }
        }
        issues.digest(format!("{at}.sha256"), &model.sha256, "SHA-256");
        issues.digest(format!("{at}.blake3"), &model.blake3, "BLAKE3");
    }
}

/// `env` names and their `${VAR}` templates.
fn env(issues: &mut Issues, spec: &Spec) {
    for (key, value) in &spec.env {
        let at = format!("env.{key}");
        if !is_env_name(key) {
            issues.add(
                at.clone(),
                "expected an environment variable name (letters, digits and `_`)",
            );
        }
        if let Err(reason) = template_vars(value) {
            issues.add(at, reason);
        }
    }
}

/// The Python version and requirements.
fn python(issues: &mut Issues, spec: &Spec) {
    if let Some(python) = &spec.python {
        if let Some(version) = &python.version {
            let parts: Vec<&str> = version.split('.').collect();
            if !(2..=3).contains(&parts.len())
                || parts
                    .iter()
                    .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                issues.add(
                    "python.version",
                    format!(
                        "expected a Python version such as `3.11`, got `{}`",
                        version.escape_debug()
                    ),
                );
            }
        }
        for (i, req) in python.requirements.iter().enumerate() {
            if req.trim().is_empty() || req.chars().any(char::is_control) {
                issues.add(
                    format!("python.requirements[{i}]"),
                    "expected a requirement such as `numpy>=1.26` on one line",
                );
            }
        }
    }
}

/// Workflow paths: relative, inside the spec's directory.
fn workflows(issues: &mut Issues, spec: &Spec) {
    for (i, workflow) in spec.workflows.iter().enumerate() {
        let at = format!("workflows[{i}]");
        let path = Path::new(workflow);
        if workflow.is_empty() || workflow.chars().any(char::is_control) {
            issues.add(at, "expected a relative path to a workflow JSON file");
        } else if path.is_absolute() {
            issues.add(at, "must be relative to the spec's directory, not absolute");
        } else if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            issues.add(at, "must not contain `..`");
        }
    }
}

/// Problems only the file system shows: `file://` sources that exist but are not readable
/// regular files, and workflows that are missing or not JSON. A `file://` source that does not
/// exist is left to resolve (a store that holds it realizes without it).
pub(super) fn on_disk(spec: &Spec, dir: &Path) -> Vec<Issue> {
    let mut issues = Issues(Vec::new());
    for (i, model) in spec.models.iter().enumerate() {
        let Ok(super::SourceKind::File(path)) = model.source.kind() else {
            continue;
        };
        if let Some(reason) = std::fs::canonicalize(path)
            .ok()
            .and_then(|real| super::local::refused_by_name(&real).map(|r| (real, r)))
            .map(|(real, r)| format!("it leads to `{}`: {r}", real.display()))
        {
            issues.add(format!("models[{i}].source"), reason);
            continue;
        }
        if let Ok(meta) = std::fs::metadata(path) {
            let refused = super::local::refused_by_kind(&meta)
                .or_else(|| super::local::would_publish(path, &meta));
            if let Some((reason, hint)) = refused {
                match hint {
                    Some(hint) => issues.add_hint(format!("models[{i}].source"), reason, &hint),
                    None => issues.add(format!("models[{i}].source"), reason),
                }
            }
        }
    }
    for (i, workflow) in spec.workflows.iter().enumerate() {
        let at = format!("workflows[{i}]");
        let path = dir.join(workflow);
        match std::fs::read(&path) {
            Err(e) => issues.add_hint(
                at,
                format!("cannot read `{}`: {e}", path.display()),
                "workflow paths are relative to the spec's directory",
            ),
            Ok(bytes) => {
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    issues.add(at, format!("`{}` is not JSON: {e}", path.display()));
                }
            }
        }
    }
    issues.0
}

/// What is valid but probably not what the author wants.
pub(super) fn warnings(spec: &Spec) -> Vec<Issue> {
    let mut issues = Issues(Vec::new());
    for (i, model) in spec.models.iter().enumerate() {
        let civitai_default = model.filename.is_none() && model.source.is_civitai();
        if civitai_default {
            continue; // the file's real name comes from the CivitAI API
        }
        let name = model.file_name();
        if super::has_model_extension(&name) {
            continue;
        }
        let web = model.source.is_web_url();
        let hint = if model.filename.is_none() && web {
            "the name the server gives (`Content-Disposition`) is used when it sends one; set `filename` to be sure"
        } else {
            "set `filename` to the model's file name with its extension"
        };
        issues.add_hint(
            format!("models[{i}]"),
            format!(
                "ComfyUI lists only files with a model extension ({}), and `{}` has none",
                super::MODEL_EXTENSIONS.map(|e| format!(".{e}")).join(", "),
                name.escape_debug()
            ),
            hint,
        );
    }
    issues.0
}

/// Turn a deserialization error into a [`SpecError`] that names the field.
pub(super) fn deserialize_error(
    err: serde_path_to_error::Error<serde_json::Error>,
    path: &Path,
) -> SpecError {
    let inner = err.inner();
    let message = inner.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    };
    if inner.is_syntax() || inner.is_eof() {
        return SpecError::Syntax {
            path: path.to_path_buf(),
            line: inner.line(),
            column: inner.column(),
            message,
        };
    }
    let field = err.path().to_string();
    let field = if field == "." { String::new() } else { field };
    let issue = match parse_unknown_field(&message) {
        Some((unknown, expected)) => {
            // The path names the unknown field itself; report it on its parent object.
            let parent = field
                .strip_suffix(unknown.as_str())
                .map(|p| p.trim_end_matches('.').to_string())
                .unwrap_or(field.clone());
            let shown = if parent.is_empty() {
                unknown.clone()
            } else {
                format!("{parent}.{unknown}")
            };
            let suggestion = expected
                .iter()
                .map(|e| (strsim::jaro_winkler(&unknown, e), e))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, e)| format!("did you mean `{e}`? "))
                .unwrap_or_default();
            Issue {
                field: shown,
                message: "unknown field".into(),
                hint: Some(format!(
                    "{suggestion}known fields here: {}",
                    expected
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        None => Issue {
            field,
            message,
            hint: None,
        },
    };
    SpecError::Invalid {
        path: path.to_path_buf(),
        issues: vec![issue],
    }
}

/// Split serde's "unknown field `x`, expected one of `a`, `b`" into the field and the list.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((unknown.to_string(), expected))
}
