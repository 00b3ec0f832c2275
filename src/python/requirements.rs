//! The requirements of a version: the core's `requirements.txt`, each enabled node's
//! `requirements.txt` (or its `pyproject.toml` dependencies) and the spec's `python.requirements`,
//! each line remembered with where it came from, so a conflict can name who wants what.

use std::path::Path;

use serde::Deserialize;

use super::PythonError;

pub use crate::lock::Group;

/// Read the requirements of a core or node tree (`requirements.txt`, else `pyproject.toml`'s
/// `[project] dependencies`). Option lines (`--extra-index-url`, `-e`, `-r`) are left out with a
/// warning: the index is the machine's choice, not a node's.
pub fn of_tree(origin: &str, tree: &Path) -> Result<Group, PythonError> {
    let txt = tree.join("requirements.txt");
    let requirements = match std::fs::read_to_string(&txt) {
        Ok(text) => parse_requirements_txt(origin, &text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let toml_path = tree.join("pyproject.toml");
            match std::fs::read_to_string(&toml_path) {
                Ok(text) => {
                    pyproject_dependencies(&text).map_err(|message| PythonError::Pyproject {
                        path: toml_path.clone(),
                        message,
                    })?
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(PythonError::Io {
                        path: toml_path,
                        source,
                    })
                }
            }
        }
        Err(source) => return Err(PythonError::Io { path: txt, source }),
    };
    Ok(Group {
        origin: origin.to_string(),
        requirements,
    })
}

fn parse_requirements_txt(origin: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Backslash continuations join lines.
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    for line in joined.lines() {
        let line = match line.find(" #").or_else(|| line.find("\t#")) {
            Some(at) => &line[..at],
            None => line,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('-') {
            tracing::warn!("{origin}: ignoring `{line}` in requirements.txt");
            continue;
        }
        out.push(line.to_string());
    }
    out
}

fn pyproject_dependencies(text: &str) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct PyProject {
        project: Option<Project>,
    }
    #[derive(Deserialize)]
    struct Project {
        #[serde(default)]
        dependencies: Vec<String>,
    }
    let parsed: PyProject = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(parsed
        .project
        .map(|p| p.dependencies)
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect())
}

/// The lines uv resolves, in order, without duplicates.
pub fn merged(groups: &[&Group]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for group in groups {
        for requirement in &group.requirements {
            if !out.contains(requirement) {
                out.push(requirement.clone());
            }
        }
    }
    out
}

/// The normalized project name a requirement line starts with (`Foo_Bar[x]>=1` → `foo-bar`).
pub fn project_name(requirement: &str) -> String {
    let end = requirement
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(requirement.len());
    normalize(&requirement[..end])
}

/// PEP 503 normalization.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_txt_lines_drop_comments_options_and_blank_lines() {
        let text = "# comment\ntorch>=2 # pinned\n\n--extra-index-url https://x\n-r other.txt\nnumpy<2; python_version < \"3.13\"\nfoo \\\n  ==1.0\n";
        assert_eq!(
            parse_requirements_txt("core", text),
            vec![
                "torch>=2",
                "numpy<2; python_version < \"3.13\"",
                "foo    ==1.0"
            ]
        );
    }

    #[test]
    fn pyproject_dependencies_are_read_and_bad_toml_is_an_error() {
        let text = "[project]\nname = \"x\"\ndependencies = [\"a>=1\", \" b \"]\n";
        assert_eq!(pyproject_dependencies(text).unwrap(), vec!["a>=1", "b"]);
        assert_eq!(
            pyproject_dependencies("[tool.x]\n").unwrap(),
            Vec::<String>::new()
        );
        assert!(pyproject_dependencies("[project\n").is_err());
    }

    #[test]
    fn project_names_are_normalized() {
        assert_eq!(project_name("Foo_Bar[x]>=1"), "foo-bar");
        assert_eq!(project_name("numpy"), "numpy");
        assert_eq!(project_name("a.b ==1"), "a-b");
    }
}
