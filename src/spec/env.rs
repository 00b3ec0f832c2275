//! `${VAR}` expansion in a spec's `env`, with values that never print.

use std::collections::BTreeMap;
use std::fmt;

use super::validate::template_vars;
use super::SpecError;

/// A value that must not reach output, logs, locks or exports. `Debug` prints `<redacted>`, and
/// there is deliberately no `Display`; use [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself, for passing to a child process or an HTTP header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A spec's `env` after expansion.
#[derive(Debug, Clone, Default)]
pub struct ExpandedEnv(pub BTreeMap<String, Secret>);

impl ExpandedEnv {
    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.0.get(key)
    }
}

pub(super) fn expand(
    env: &BTreeMap<String, String>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ExpandedEnv, SpecError> {
    let mut out = BTreeMap::new();
    for (key, template) in env {
        // A validated spec has well-formed templates; an unvalidated one still gets a clean error.
        template_vars(template).map_err(|_| SpecError::MissingEnvVar {
            key: key.clone(),
            var: template.clone(),
        })?;
        // One pass, so a value that itself contains `${...}` is never expanded again.
        let mut value = String::with_capacity(template.len());
        let mut rest = template.as_str();
        while let Some(start) = rest.find("${") {
            value.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').expect("template_vars checked the braces");
            let var = &after[..end];
            let replacement = lookup(var).ok_or_else(|| SpecError::MissingEnvVar {
                key: key.clone(),
                var: var.to_string(),
            })?;
            value.push_str(&replacement);
            rest = &after[end + 1..];
        }
        value.push_str(rest);
        out.insert(key.clone(), Secret::new(value));
    }
    Ok(ExpandedEnv(out))
}
