//! `comfix diff <A> <B>`: what differs between two versions' locked closures, like
//! `nix store diff-closures`: the core, nodes, models and Python wheels added, removed or changed,
//! with sizes.

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;

use super::{format_bytes, Context, Outcome};
use crate::lock::{lock_path_for, Lock};
use crate::spec::Spec;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first: a version id, a spec file (its lock beside it), or a home (its current
    /// generation)
    pub a: String,
    /// The second, likewise (with `--target`, the only one)
    pub b: Option<String>,
    /// Compare this home's current generation with A
    #[arg(long, value_name = "DIR")]
    pub target: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("Version `{id}` has no lock `{}`", .path.display())]
pub struct NoLock {
    pub id: String,
    pub path: std::path::PathBuf,
}

/// `diff` was given the wrong number of operands.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiffUsage(pub &'static str);

/// One entry that differs.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub name: String,
    /// What A pins (commit, version, or blake3), when A has it.
    pub a: Option<String>,
    pub b: Option<String>,
    /// Bytes of B's store path minus A's, when known.
    pub size_delta: Option<i64>,
}

fn load_lock(id: &str) -> anyhow::Result<Lock> {
    let spec_path = Spec::find(&std::env::current_dir()?, id)?;
    spec_lock(&spec_path, id)
}

fn spec_lock(spec_path: &std::path::Path, shown: &str) -> anyhow::Result<Lock> {
    let loaded = Spec::load(spec_path)?;
    let path = lock_path_for(spec_path, &loaded.spec.version_id);
    Lock::read(&path)?.ok_or_else(|| {
        NoLock {
            id: shown.to_string(),
            path,
        }
        .into()
    })
}

/// The lock the current generation of `home` was realized from (its manifest in the store).
fn home_lock(home: &std::path::Path, context: &Context) -> anyhow::Result<Lock> {
    let store = context.open_existing_store()?;
    let name = crate::realize::current_manifest(home)?;
    Ok(crate::lock::manifest::read(&store, &name).ok_or_else(|| {
        crate::store::StoreError::NotValid {
            arg: name.clone(),
            root: store.root().to_path_buf(),
        }
    })?)
}

/// An operand of `diff`: a home, a spec file, or a version id.
fn operand(arg: &str, context: &Context) -> anyhow::Result<Lock> {
    let path = std::path::Path::new(arg);
    if path.join(".comfix").is_dir() {
        return home_lock(path, context);
    }
    if path.is_file() || arg.ends_with(".json") || arg.contains('/') {
        return spec_lock(path, arg);
    }
    load_lock(arg)
}

/// `kind/name → (pin, store path)` for every entry of a lock.
fn entries(lock: &Lock) -> BTreeMap<(&'static str, String), (String, String)> {
    let mut out = BTreeMap::new();
    out.insert(
        ("core", "comfy".to_string()),
        (lock.comfy.commit.clone(), lock.comfy.store_path.clone()),
    );
    for node in &lock.custom_nodes {
        if let Some(git) = &node.git {
            out.insert(
                ("node", node.name.clone()),
                (git.commit.clone(), git.store_path.clone()),
            );
        }
        if let Some(reg) = &node.registry {
            out.insert(
                ("node", node.name.clone()),
                (reg.version.clone(), reg.store_path.clone()),
            );
        }
    }
    for model in &lock.models {
        let name = match &model.target_subdir {
            Some(sub) => format!("{sub}/{}", model.filename),
            None => model.filename.clone(),
        };
        out.insert(
            ("model", name),
            (
                format!("blake3:{}", &model.blake3[..12]),
                model.store_path.clone(),
            ),
        );
    }
    for wheel in lock.python.iter().flat_map(|p| &p.wheels) {
        out.insert(
            ("wheel", wheel.name.clone()),
            (wheel.version.clone(), wheel.store_path.clone()),
        );
    }
    out
}

pub fn run(args: DiffArgs, context: &Context) -> anyhow::Result<Outcome> {
    let (a_name, b_name, a, b) = match (&args.target, &args.b) {
        (Some(home), None) => (
            home.display().to_string(),
            args.a.clone(),
            home_lock(home, context)?,
            operand(&args.a, context)?,
        ),
        (None, Some(b)) => (
            args.a.clone(),
            b.clone(),
            operand(&args.a, context)?,
            operand(b, context)?,
        ),
        (Some(_), Some(_)) => anyhow::bail!(DiffUsage(
            "with `--target`, give one version to compare with"
        )),
        (None, None) => anyhow::bail!(DiffUsage(
            "give two versions, or `--target HOME` and one version"
        )),
    };
    let store = crate::store::Store::open_existing(&context.store_dir)?;
    let changes = changes(Some(&a), &b, store.as_ref());
    if context.json {
        context.print_json(&serde_json::json!({ "a": a_name, "b": b_name, "changes": changes }))?;
        return Ok(Outcome::Success);
    }
    if changes.is_empty() {
        tracing::info!("`{a_name}` and `{b_name}` have the same closure");
    }
    print_changes(&changes);
    Ok(Outcome::Success)
}

/// What differs between lock `a` (none: an empty closure) and lock `b`, entry by entry, with
/// size differences from `store` where it holds both paths.
pub fn changes(a: Option<&Lock>, b: &Lock, store: Option<&crate::store::Store>) -> Vec<Change> {
    let size = |path: &str| -> Option<i64> {
        store
            .and_then(|s| s.query(path).ok().flatten())
            .map(|r| r.size as i64)
    };
    let (ea, eb) = (a.map(entries).unwrap_or_default(), entries(b));
    let mut keys: Vec<_> = ea.keys().chain(eb.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let mut changes = Vec::new();
    for key in keys {
        let (pa, pb) = (ea.get(&key), eb.get(&key));
        if pa.map(|p| &p.1) == pb.map(|p| &p.1) {
            continue; // the same store path
        }
        let size_delta = match (pa, pb) {
            (Some(x), Some(y)) => size(&y.1).zip(size(&x.1)).map(|(y, x)| y - x),
            (None, Some(y)) => size(&y.1),
            (Some(x), None) => size(&x.1).map(|s| -s),
            (None, None) => None,
        };
        changes.push(Change {
            kind: key.0,
            name: key.1.clone(),
            a: pa.map(|p| p.0.clone()),
            b: pb.map(|p| p.0.clone()),
            size_delta,
        });
    }
    changes
}

/// One line per change: `kind name: old → new, ±size`.
pub fn print_changes(changes: &[Change]) {
    let short = |s: &Option<String>| {
        s.as_deref()
            .map(|v| {
                if v.len() == 40 {
                    v[..12].to_string()
                } else {
                    v.to_string()
                }
            })
            .unwrap_or_else(|| "∅".into())
    };
    for c in changes {
        let delta = match c.size_delta {
            Some(d) if d >= 0 => format!(", +{}", format_bytes(d as u64)),
            Some(d) => format!(", -{}", format_bytes(d.unsigned_abs())),
            None => String::new(),
        };
        println!(
            "{} {}: {} → {}{delta}",
            c.kind,
            c.name,
            short(&c.a),
            short(&c.b)
        );
    }
}
