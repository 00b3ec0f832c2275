//! comfix — a Nix-style content-addressed store and builder for ComfyUI environments.
//!
//! The library holds everything; `src/main.rs` only calls [`cli::main`]. Each stage of the
//! pipeline is a module with its own error type (see `docs/ARCHITECTURE.md`):
//!
//! - [`spec`]: the version spec (`versions/<id>.json`, schema_version 2), parsed and validated.
//! - [`store`]: the content-addressed store — objects, store paths, the SQLite db, locks.
//! - [`lock`]: the lock, `<id>.lock.json`, with every moving part pinned.
//! - [`fetch`]: git mirrors and checkouts, registry packages, model downloads.
//! - [`resolve`]: spec + existing lock → complete lock, fetching what it pins.
//! - [`derive`]: derivations (one store path each) and the executor that runs their DAG.
//! - [`plan`]: spec + lock → the DAG of derivations a realization runs.
//! - [`realize`]: a lock's store paths materialized as a `COMFY_HOME`, in generations.
//! - [`adopt`]: an existing install snapshotted into a spec; models verified against a lock.
//! - [`run`]: ComfyUI started from a home; workflows checked, run and their outputs collected.
//! - [`session`]: one command's settings, resolved once, and its executor: `resolve`, `realize`.
//! - [`repair`]: `store verify --repair`, from the sources live locks name.
//! - [`closure`]: a version's closure as one archive (`export`, `import`).
//! - [`cache`]: a binary cache (a directory or an S3 bucket) shared by many stores, and a
//!   substituter.
//! - [`sign`]: ed25519 signatures of store paths, and which keys are trusted.
//! - [`reporter`]: how library code reports progress without printing.
//! - [`files`]: files written for the user, atomically, with the modes the umask gives.
//! - [`cli`]: the command-line interface, a thin layer that maps errors to exit codes.

pub mod adopt;
pub mod cache;
pub mod cli;
pub mod closure;
pub mod derive;
pub mod fault;
pub mod fetch;
pub mod files;
pub mod hint;
pub mod image;
pub mod lock;
pub mod plan;
pub mod python;
pub mod realize;
pub mod repair;
pub mod reporter;
pub mod resolve;
pub mod run;
pub mod serve;
pub mod session;
pub mod sign;
pub mod spec;
pub mod store;
pub mod units;

#[cfg(test)]
mod layers {
    //! The module map of `docs/ARCHITECTURE.md` kept true: a module names only modules below it.

    use std::path::Path;

    /// Lower layers first; a module may use any module of a lower layer.
    const LAYERS: &[&[&str]] = &[
        &["hint", "units", "reporter", "fault"],
        &["files"],
        &["store", "spec"],
        &["lock", "sign"],
        &["fetch"],
        &["python"],
        &["realize"],
        &["derive"],
        &["closure"],
        &["cache"],
        &["resolve", "plan", "repair"],
        &["session"],
        &["run", "adopt", "image"],
        &["serve"],
        &["cli"],
    ];

    fn layer(module: &str) -> usize {
        LAYERS
            .iter()
            .position(|l| l.contains(&module))
            .unwrap_or_else(|| panic!("module `{module}` is in no layer"))
    }

    fn sources(module: &str) -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let file = src.join(format!("{module}.rs"));
        let mut out = Vec::new();
        if file.is_file() {
            out.push((
                file.display().to_string(),
                std::fs::read_to_string(&file).unwrap(),
            ));
        }
        for entry in walkdir::WalkDir::new(src.join(module))
            .into_iter()
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(entry.path()).unwrap();
                out.push((entry.path().display().to_string(), text));
            }
        }
        out
    }

    /// The modules `text` names after `crate::`, grouped imports (`crate::{a, b::c}`) included.
    fn used_modules(text: &str) -> Vec<String> {
        let word = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        };
        let mut out = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + 7..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    // Top-level names of the group: after `{` and after each `,` at depth 0.
                    let mut depth = 0;
                    let mut start = true;
                    for (i, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => start = true,
                            c if c.is_whitespace() => {}
                            _ if start => {
                                out.push(word(&group[i..]));
                                start = false;
                            }
                            _ => {}
                        }
                    }
                }
                None => out.push(word(rest)),
            }
        }
        out.retain(|m| !m.is_empty() && m != "self");
        out
    }

    /// The modules that may write store paths (`store::Add`): the derivations' steps the
    /// executor runs (fetchers, Python builds, manifests), the importer — and, by file, `store
    /// add` (a user's tree taken in, as Nix's `nix store add-path`).
    const WRITERS: &[&str] = &["store", "derive", "fetch", "python", "lock", "closure"];
    const WRITER_FILES: &[&str] = &["src/cli/store.rs"];

    /// Whether `text` names the store's write capability, alone or in a group.
    fn names_add(text: &str) -> bool {
        let token = |s: &str| !s.starts_with(|c: char| c.is_alphanumeric() || c == '_');
        text.match_indices("store::").any(|(at, _)| {
            let rest = &text[at + 7..];
            if let Some(after) = rest.strip_prefix("Add") {
                return token(after);
            }
            rest.strip_prefix('{').is_some_and(|group| {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group.split([',', ' ', '\n']).any(|name| name == "Add")
            })
        })
    }

    #[test]
    fn write_capability_is_read() {
        assert!(names_add("use crate::store::Add;"));
        assert!(names_add("use crate::store::{Store,\n    Add, flock};"));
        assert!(!names_add("use crate::store::{AddOptions, Store};"));
        assert!(!names_add("use crate::store::Added;"));
    }

    #[test]
    fn only_producers_write_store_paths() {
        let mut wrong = Vec::new();
        for module in LAYERS.iter().flat_map(|l| l.iter()) {
            if WRITERS.contains(module) {
                continue;
            }
            for (file, text) in sources(module) {
                // Tests set up stores as they need.
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                if names_add(code) && !WRITER_FILES.iter().any(|f| file.ends_with(f)) {
                    wrong.push(format!("{file}: `{module}` writes store paths"));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn grouped_imports_are_read() {
        let text = "use crate::{store::{Store, flock}, spec::Spec,\n    fetch};\nlet x = crate::lock::read();";
        assert_eq!(used_modules(text), ["store", "spec", "fetch", "lock"]);
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let mut wrong = Vec::new();
        for module in LAYERS.iter().flat_map(|l| l.iter()) {
            for (file, text) in sources(module) {
                for used in used_modules(&text) {
                    if used == *module {
                        continue;
                    }
                    // The bottom layer too: a utility uses no other module.
                    if layer(&used) >= layer(module) {
                        wrong.push(format!("{file}: `{module}` uses `{used}`"));
                    }
                }
            }
        }
        wrong.sort();
        wrong.dedup();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
