//! Adopting an existing install: `snapshot` → `realize`, and `verify-models`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::git::{Entry, TestRepo};
use crate::support::http::TestServer;
use crate::support::*;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn git(dir: &Path, args: &[&str]) {
    run(Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid"));
}

fn head(dir: &Path) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every entry of a tree: kind, bytes or link target, mode — what "unchanged" means.
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .display()
            .to_string();
        let meta = entry.path().symlink_metadata().unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("link {}", fs::read_link(entry.path()).unwrap().display())
        } else if meta.is_file() {
            format!(
                "file {:o} {}",
                meta.permissions().mode(),
                blake3::hash(&fs::read(entry.path()).unwrap()).to_hex()
            )
        } else {
            format!("dir {:o}", meta.permissions().mode())
        };
        out.insert(rel, what);
    }
    out
}

/// `name==version` of every distribution in a venv, but the installer's own.
fn distributions(venv: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for site in fs::read_dir(venv.join("lib")).unwrap().flatten() {
        let site = site.path().join("site-packages");
        for entry in fs::read_dir(&site).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".dist-info") {
                let (dist, version) = stem.rsplit_once('-').unwrap();
                if !["pip", "setuptools", "wheel"].contains(&dist) {
                    out.push(format!("{}=={version}", dist.to_lowercase()));
                }
            }
        }
    }
    out.sort();
    out
}

/// An install as people build them: a git clone of the core, two cloned nodes (one dirty), a
/// registry node unpacked with its `.tracking`, a disabled node in each naming form, models in
/// `models/` and in an external folder that `extra_model_paths.yaml` names, a symlink loop, and a
/// venv with packages installed by uv.
struct Install {
    w: World,
    root: PathBuf,
    core: PathBuf,
    index: TestServer,
    index_url: String,
    ckpt: Vec<u8>,
    lora: Vec<u8>,
}

impl Install {
    fn new() -> Install {
        let w = World::new();
        let root = w.env.path("install");
        fs::create_dir_all(&root).unwrap();
        git(&root, &["clone", "-q", &w.core.url(), "ComfyUI"]);
        let core = root.join("ComfyUI");
        let nodes = core.join("custom_nodes");
        fs::create_dir_all(nodes.join(".disabled")).unwrap();
        git(&nodes, &["clone", "-q", &w.node_a.url(), "ComfyUI-A"]);
        git(
            &nodes,
            &["clone", "-q", "-b", "dev", &w.node_b.url(), "ComfyUI-B"],
        );
        // Node B carries a commit of its own that was never pushed.
        fs::write(nodes.join("ComfyUI-B/__init__.py"), "B local\n").unwrap();
        git(&nodes.join("ComfyUI-B"), &["commit", "-q", "-am", "local"]);
        // Node A left dirty: a changed file and a new one.
        fs::write(nodes.join("ComfyUI-A/__init__.py"), "A = 'edited'\n").unwrap();
        fs::write(nodes.join("ComfyUI-A/scratch.py"), "X = 1\n").unwrap();
        // A registry node as Manager unpacks it, with `.tracking` listing the archive's files.
        let impact = nodes.join("impact");
        fs::create_dir_all(impact.join("modules")).unwrap();
        fs::write(
            impact.join("pyproject.toml"),
            "[project]\nname = \"Impact\"\nversion = \"1.0.0\"\n",
        )
        .unwrap();
        fs::write(impact.join("__init__.py"), "from .modules import impact\n").unwrap();
        fs::write(impact.join("modules/impact.py"), "IMPACT = True\n").unwrap();
        fs::write(
            impact.join(".tracking"),
            "pyproject.toml\n__init__.py\nmodules/impact.py\nmodules/gone.py\n",
        )
        .unwrap();
        // Disabled: Manager's `<id>@nightly` form, and the legacy plain name.
        git(
            &nodes.join(".disabled"),
            &["clone", "-q", &w.node_b.url(), "comfyui-b2@nightly"],
        );
        git(
            &nodes.join(".disabled"),
            &["clone", "-q", &w.node_a.url(), "old-a"],
        );
        // A git repository that is broken.
        fs::create_dir_all(nodes.join("broken/.git")).unwrap();
        fs::write(nodes.join("broken/.git/HEAD"), "garbage").unwrap();
        // Something no one can identify.
        fs::create_dir_all(nodes.join("handmade")).unwrap();
        fs::write(nodes.join("handmade/__init__.py"), "H = 1\n").unwrap();

        let ckpt = pseudo_random(300_000, 11);
        let lora = pseudo_random(200_000, 12);
        fs::create_dir_all(core.join("models/checkpoints/sdxl")).unwrap();
        fs::write(core.join("models/checkpoints/sdxl/base.safetensors"), &ckpt).unwrap();
        fs::write(core.join("models/checkpoints/put_checkpoints_here"), "").unwrap();
        std::os::unix::fs::symlink("..", core.join("models/checkpoints/loop")).unwrap();
        let external = w.env.path("external-models");
        fs::create_dir_all(external.join("my-loras")).unwrap();
        fs::write(external.join("my-loras/detail.safetensors"), &lora).unwrap();
        fs::write(
            core.join("extra_model_paths.yaml"),
            format!(
                "mine:\n    base_path: {}\n    loras: |\n        my-loras\n",
                external.display()
            ),
        )
        .unwrap();

        let index = TestServer::start();
        let index_url = wheels::serve_index(&index, &crate::python::packages());
        let uv = std::env::var("COMFIX_UV").unwrap_or_else(|_| "uv".into());
        run(Command::new(&uv)
            .args(["venv", "-q", "--python", "python3"])
            .arg(root.join(".venv")));
        run(Command::new(&uv)
            .args(["pip", "install", "-q", "--python"])
            .arg(root.join(".venv/bin/python"))
            .args(["--index-url", &index_url, "beta", "gamma"])
            .env("UV_CACHE_DIR", w.env.path("uv-cache")));
        Install {
            w,
            root,
            core,
            index,
            index_url,
            ckpt,
            lora,
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = self.w.cmd(&self.w.env.store);
        cmd.env("UV_DEFAULT_INDEX", &self.index_url)
            .env_remove("UV_INDEX_URL")
            .env_remove("PIP_INDEX_URL");
        cmd
    }
}

/// snapshot → realize into a new home: the same commits, the same node set and enabled states,
/// the same model bytes, the same distributions; every problem named; the install unchanged.
#[test]
fn a_snapshot_of_an_install_realizes_an_equivalent_home() {
    let i = Install::new();
    let before = fingerprint(&i.root);
    let spec = i.w.env.work.join("versions/snap.json");
    let out = i
        .cmd()
        .arg("--json")
        .current_dir(&i.w.env.work)
        .args(["snapshot", "--name", "snap", "--comfy-path", "../install"])
        .arg("-o")
        .arg(&spec)
        .ok();
    assert_eq!(fingerprint(&i.root), before, "snapshot changed the install");
    let doc: Value = json_of(&out);
    let report = &doc["report"];
    let err = stderr(&out);
    // The dirty node's files and the unidentifiable one are named; the loop is reported.
    assert!(err.contains("__init__.py, scratch.py"), "{err}");
    assert!(err.contains("not pushed"), "{err}");
    let unidentified = report["unidentified"].to_string();
    assert!(unidentified.contains("handmade"), "{unidentified}");
    assert!(unidentified.contains("broken"), "{unidentified}");
    assert!(err.contains("modules/gone.py"), "{err}");
    assert!(
        report["unreadable"].to_string().contains("loop"),
        "{report}"
    );
    for model in report["models"].as_array().unwrap() {
        assert!(model.get("known_source").is_none(), "{model}");
    }
    let lock: Value = read_json(&i.w.env.work.join("versions/snap.lock.json"));
    assert_eq!(lock["comfy"]["commit"], head(&i.core));

    // Taken again from the unchanged install: the same lock, and the index is not asked (the
    // Python set is not resolved again).
    let lock_text = fs::read(i.w.env.work.join("versions/snap.lock.json")).unwrap();
    let asked = i.index.requests().len();
    i.cmd()
        .current_dir(&i.w.env.work)
        .args(["snapshot", "--name", "snap", "--comfy-path", "../install"])
        .arg("-o")
        .arg(&spec)
        .ok();
    assert_eq!(i.index.requests().len(), asked, "the index was asked again");
    assert_eq!(
        fs::read(i.w.env.work.join("versions/snap.lock.json")).unwrap(),
        lock_text
    );

    // Upstream git is gone: the snapshot's commits come from the install's own repositories.
    fs::rename(i.w.env.path("repos"), i.w.env.path("repos-gone")).unwrap();
    let home = i.w.env.path("home");
    i.cmd()
        .args(["realize", "--spec"])
        .arg(&spec)
        .arg("--target")
        .arg(&home)
        .ok();
    let nodes = home.join("ComfyUI/custom_nodes");
    let mut enabled: Vec<String> = fs::read_dir(&nodes)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != ".disabled")
        .collect();
    enabled.sort();
    assert_eq!(enabled, ["ComfyUI-A", "ComfyUI-B", "impact"]);
    let mut disabled: Vec<String> = fs::read_dir(nodes.join(".disabled"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    disabled.sort();
    assert_eq!(disabled, ["comfyui-b2@nightly", "old-a@nightly"]);
    let commit_of = |name: &str| {
        lock["custom_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()["git"]["commit"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (name, dir) in [
        ("ComfyUI-A", "ComfyUI-A"),
        ("ComfyUI-B", "ComfyUI-B"),
        ("comfyui-b2", ".disabled/comfyui-b2@nightly"),
        ("old-a", ".disabled/old-a"),
    ] {
        assert_eq!(
            commit_of(name),
            head(&i.core.join("custom_nodes").join(dir)),
            "{name}"
        );
    }
    assert_eq!(
        fs::read(nodes.join("ComfyUI-B/__init__.py")).unwrap(),
        b"B local\n"
    );
    assert_eq!(
        fs::read(home.join("models/checkpoints/sdxl/base.safetensors")).unwrap(),
        i.ckpt
    );
    assert_eq!(
        fs::read(home.join("models/loras/detail.safetensors")).unwrap(),
        i.lora
    );
    assert_eq!(
        distributions(&home.join(".venv")),
        distributions(&i.root.join(".venv"))
    );
    assert!(distributions(&i.root.join(".venv")).contains(&"beta==2.0".to_string()));
    assert_eq!(fingerprint(&i.root), before, "realize changed the install");
}

/// `--link-models` replaces each model file by a link to its verified copy in the store, and
/// nothing else in the install; `--models-spec` names known sources.
#[test]
fn link_models_swaps_verified_files_for_store_links() {
    let i = Install::new();
    let yml = i.w.env.path("models.yml");
    fs::write(
        &yml,
        "models:\n  - source: hf://org/sdxl/base.safetensors\n    target_subdir: checkpoints/sdxl\n    filename: base.safetensors\n",
    )
    .unwrap();
    let before = fingerprint(&i.root);
    let out = i
        .cmd()
        .arg("--json")
        .args([
            "snapshot",
            "--name",
            "snap",
            "--link-models",
            "--dirty-as-dev",
            "--models-spec",
        ])
        .arg(&yml)
        .arg("--comfy-path")
        .arg(&i.root)
        .arg("-o")
        .arg(i.w.env.work.join("versions/snap.json"))
        .ok();
    let doc: Value = json_of(&out);
    let models = doc["report"]["models"].as_array().unwrap();
    let base = models
        .iter()
        .find(|m| m["filename"] == "base.safetensors")
        .unwrap();
    assert_eq!(base["known_source"], "hf://org/sdxl/base.safetensors");
    // The dirty node is recorded as a development node, its edits kept; the clean ones by commit.
    let spec: Value = read_json(&i.w.env.work.join("versions/snap.json"));
    let nodes = spec["custom_nodes"].as_array().unwrap();
    let a = nodes.iter().find(|n| n["name"] == "ComfyUI-A").unwrap();
    assert_eq!(
        a["path"],
        i.core.join("custom_nodes/ComfyUI-A").display().to_string()
    );
    let b = nodes.iter().find(|n| n["name"] == "ComfyUI-B").unwrap();
    assert!(b["commit"].is_string(), "{b}");
    let after = fingerprint(&i.root);
    let ckpt = i.core.join("models/checkpoints/sdxl/base.safetensors");
    let lora = i.w.env.path("external-models/my-loras/detail.safetensors");
    let target = fs::read_link(&ckpt).unwrap();
    assert!(target.starts_with(&i.w.env.store), "{}", target.display());
    assert_eq!(fs::read(&ckpt).unwrap(), i.ckpt);
    // A file outside the install (an external folder the yaml names) is copied, never linked:
    // its mode and bytes stay its owner's.
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::symlink_metadata(&lora).unwrap();
        assert!(meta.is_file(), "the external file is still a file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read(&lora).unwrap(), i.lora);
    }
    // Only the install's model file changed.
    let changed: Vec<&String> = before
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    // Same filesystem: the store took the install's file as it was (a hard link), nothing copied.
    let doc_linked = doc["linked"].as_array().unwrap();
    assert_eq!(doc_linked.len(), 1, "{doc}");
    // Editing the external file afterwards does not touch the store.
    fs::write(&lora, b"edited by its owner").unwrap();
    i.cmd().args(["store", "verify", "--check-contents"]).ok();

    // The link keeps its model from the collector, until it is replaced.
    let gc = |i: &Install| {
        i.cmd().args(["gc"]).ok();
    };
    gc(&i);
    assert_eq!(fs::read(&ckpt).unwrap(), i.ckpt);
    fs::remove_file(&ckpt).unwrap();
    fs::write(&ckpt, b"replaced by the user").unwrap();
    gc(&i);
    assert!(!target.exists(), "{}", target.display());
}

/// A model whose source is known (`--models-spec`, a `.civitai.info`) is named in the spec by that
/// source and its BLAKE3: the snapshot takes the bytes from the install (nothing downloaded), a
/// second snapshot hashes without copying, and another store realizes the spec from the sources.
#[test]
fn a_snapshot_names_known_sources_and_travels_to_another_store() {
    let i = Install::new();
    let w = &i.w;
    let unet = i.core.join("models/diffusion_models/unet.safetensors");
    fs::create_dir_all(unet.parent().unwrap()).unwrap();
    fs::write(&unet, &w.model).unwrap();
    let detail = i.core.join("models/loras/detail2.safetensors");
    fs::create_dir_all(detail.parent().unwrap()).unwrap();
    fs::write(&detail, &w.lora).unwrap();
    fs::write(
        i.core.join("models/loras/detail2.civitai.info"),
        r#"{"id": 123, "modelId": 9, "name": "v1"}"#,
    )
    .unwrap();
    // A file of a Hugging Face hub cache, linked into a model folder.
    let commit = crate::support::HF_COMMIT;
    let sha = crate::support::sha256_hex(&w.model);
    let hub = w.env.path("hf-cache/hub/models--org--wan");
    fs::create_dir_all(hub.join("blobs")).unwrap();
    fs::create_dir_all(hub.join(format!("snapshots/{commit}/split"))).unwrap();
    fs::write(hub.join(format!("blobs/{sha}")), &w.model).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../blobs/{sha}"),
        hub.join(format!("snapshots/{commit}/split/unet.safetensors")),
    )
    .unwrap();
    fs::create_dir_all(i.core.join("models/vae")).unwrap();
    std::os::unix::fs::symlink(
        hub.join(format!("snapshots/{commit}/split/unet.safetensors")),
        i.core.join("models/vae/unet.safetensors"),
    )
    .unwrap();
    let yml = w.env.path("models.yml");
    fs::write(
        &yml,
        "models:\n  - source: hf://org/wan/split/unet.safetensors\n    target_subdir: diffusion_models\n",
    )
    .unwrap();
    let spec_path = w.env.work.join("versions/snap.json");
    let snapshot = || {
        let out = i
            .cmd()
            .args(["snapshot", "--name", "snap", "--models-spec"])
            .arg(&yml)
            .arg("--comfy-path")
            .arg(&i.root)
            .arg("-o")
            .arg(&spec_path)
            .ok();
        stderr(&out)
    };
    let first = snapshot();
    // The hub cache's file has the bytes and name of the model ingested before it: not copied.
    assert_eq!(first.matches("hashed, not copied").count(), 1, "{first}");
    assert!(
        first.contains("model `vae/unet.safetensors`: already in the store"),
        "{first}"
    );
    let spec: Value = read_json(&spec_path);
    let model = |file: &str| {
        spec["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["filename"] == file)
            .unwrap()
            .clone()
    };
    assert_eq!(
        model("unet.safetensors")["source"],
        "hf://org/wan/split/unet.safetensors"
    );
    assert_eq!(model("unet.safetensors")["blake3"], blake3_hex(&w.model));
    let vae = spec["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["target_subdir"] == "vae")
        .unwrap();
    assert_eq!(
        vae["source"],
        format!("hf://org/wan/split/unet.safetensors@{commit}")
    );
    assert_eq!(model("detail2.safetensors")["source"], "civitai://123");
    assert_eq!(model("detail2.safetensors")["blake3"], blake3_hex(&w.lora));
    let base = model("base.safetensors");
    assert!(
        base["source"].as_str().unwrap().starts_with("file:///"),
        "{base}"
    );
    assert_eq!(base["blake3"], blake3_hex(&i.ckpt));
    // Nothing was downloaded: the store took the install's bytes.
    assert_eq!(w.cdn.bytes_served(&format!("/lfs/{sha}")), 0);
    assert_eq!(w.cdn.bytes_served("/civitai/123"), 0);

    // Again: every model is known unchanged by its stat tuple (not read) and in the store.
    let models = spec["models"].as_array().unwrap().len();
    let second = snapshot();
    assert_eq!(
        second.matches("unchanged since it was hashed").count(),
        models,
        "{second}"
    );
    // Same size, other bytes, mtime put back: the change time gives it away — read and hashed
    // again, and the spec has the new bytes' digest; then the old bytes back, hashed again.
    let base = i.core.join("models/checkpoints/sdxl/base.safetensors");
    let reference = w.env.path("base.mtime");
    run(Command::new("cp").arg("-p").arg(&base).arg(&reference));
    let other_bytes = pseudo_random(i.ckpt.len(), 99);
    fs::write(&base, &other_bytes).unwrap();
    run(Command::new("touch").arg("-r").arg(&reference).arg(&base));
    let third = snapshot();
    assert_eq!(
        third.matches("unchanged since it was hashed").count(),
        models - 1,
        "{third}"
    );
    let spec: Value = read_json(&spec_path);
    let digest_of_base = |spec: &Value| {
        spec["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["filename"] == "base.safetensors")
            .unwrap()["blake3"]
            .clone()
    };
    assert_eq!(digest_of_base(&spec), blake3_hex(&other_bytes));
    fs::write(&base, &i.ckpt).unwrap();
    run(Command::new("touch").arg("-r").arg(&reference).arg(&base));
    let fourth = snapshot();
    assert!(
        fourth.contains("model `checkpoints/sdxl/base.safetensors`: already in the store"),
        "{fourth}"
    );
    assert_eq!(digest_of_base(&read_json(&spec_path)), blake3_hex(&i.ckpt));

    // Another store, the install's known-source files gone: fetched from their sources (node
    // B's local commit pushed first, as it must be before anyone else can have it).
    git(
        &i.core.join("custom_nodes/ComfyUI-B"),
        &["push", "-q", "origin", "HEAD:refs/heads/dev"],
    );
    fs::remove_file(&unet).unwrap();
    fs::remove_file(&detail).unwrap();
    let other = w.env.path("other-store");
    let home = w.env.path("home");
    w.cmd(&other)
        .args(["realize", "--spec"])
        .arg(&spec_path)
        .arg("--target")
        .arg(&home)
        .env("UV_DEFAULT_INDEX", &i.index_url)
        .ok();
    assert_eq!(
        fs::read(home.join("models/diffusion_models/unet.safetensors")).unwrap(),
        w.model
    );
    assert_eq!(
        fs::read(home.join("models/vae/unet.safetensors")).unwrap(),
        w.model
    );
    assert_eq!(
        fs::read(home.join("models/loras/detail2.safetensors")).unwrap(),
        w.lora
    );
    assert!(w.cdn.bytes_served(&format!("/lfs/{sha}")) >= w.model.len() as u64);
}

/// verify-models: every model of a lock by digest in a directory — ok, missing, wrong, extra;
/// `--fix` puts the right bytes back (from the store) and the check passes.
#[test]
fn verify_models_names_missing_wrong_and_extra_files_and_fixes_them() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    let home = w.env.path("home");
    ok(realize_v1(&w, &home));
    // A models directory of plain copies, as the original tool kept them.
    let dir = w.env.path("models");
    for entry in walkdir::WalkDir::new(home.join("models")).follow_links(true) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(home.join("models")).unwrap();
        if entry.file_type().is_file() {
            fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
            fs::write(dir.join(rel), fs::read(entry.path()).unwrap()).unwrap();
        }
    }
    let lock = w.env.work.join("versions/v1.lock.json");
    let verify = |fix: bool| {
        let mut cmd = w.cmd(&w.env.store);
        cmd.args(["--json", "verify-models", "--lock"])
            .arg(&lock)
            .arg("--models-dir")
            .arg(&dir);
        if fix {
            cmd.arg("--fix");
        }
        let out = cmd.output().unwrap();
        let doc: Value = json_of(&out);
        (out.status.code(), doc)
    };
    let (code, doc) = verify(false);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["extra"], serde_json::json!([]));

    fs::remove_file(dir.join("unet/unet.safetensors")).unwrap();
    let mut bytes = fs::read(dir.join("loras/detail.safetensors")).unwrap();
    bytes[100] ^= 1;
    fs::write(dir.join("loras/detail.safetensors"), &bytes).unwrap();
    fs::write(dir.join("loras/stray.safetensors"), b"not in the lock").unwrap();
    let (code, doc) = verify(false);
    assert_eq!(code, Some(1), "{doc}");
    let state = |file: &str| {
        doc["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["file"] == file)
            .unwrap()
            .clone()
    };
    assert_eq!(state("unet/unet.safetensors")["status"], "missing");
    let wrong = state("loras/detail.safetensors");
    assert_eq!(wrong["status"], "wrong");
    assert_eq!(wrong["blake3"].as_str().unwrap(), blake3_hex(&w.lora));
    assert_eq!(wrong["found"]["blake3"], blake3_hex(&bytes));
    assert_eq!(state("diffusion_models/unet.safetensors")["status"], "ok");
    assert_eq!(doc["extra"], serde_json::json!(["loras/stray.safetensors"]));

    let (code, doc) = verify(true);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(
        fs::read(dir.join("unet/unet.safetensors")).unwrap(),
        w.model
    );
    assert_eq!(
        fs::read(dir.join("loras/detail.safetensors")).unwrap(),
        w.lora
    );
    // The extra file is named, never removed.
    assert!(dir.join("loras/stray.safetensors").exists());
}

/// `comfix realize v1 --target HOME`.
fn realize_v1(w: &World, home: &Path) -> std::process::Output {
    w.cmd(&w.env.store)
        .args(["realize", "v1", "--target"])
        .arg(home)
        .output()
        .unwrap()
}

/// `comfix spec import FILE --name v1`, with the world's core as ComfyUI's repository.
fn import_as_v1(w: &World, file: &Path) -> std::process::Output {
    w.cmd(&w.env.store)
        .args([
            "spec",
            "import",
            "--name",
            "v1",
            "--comfy-repo",
            &w.core.url(),
        ])
        .arg(file)
        .output()
        .unwrap()
}

/// A Manager snapshot → spec → resolve → `export --manager-snapshot`: the same core commit, the
/// same git nodes at the same commits with the same enabled states, the same registry node.
#[test]
fn manager_snapshots_round_trip_through_a_spec() {
    let w = World::new();
    let core = w.core.head("main");
    let a = w.node_a.head("main");
    let b = w.node_b.head("dev");
    let snapshot = serde_json::json!({
        "comfyui": core,
        "git_custom_nodes": {
            w.node_a.url(): {"hash": a, "disabled": false},
            w.node_b.url(): {"hash": b, "disabled": true}
        },
        "cnr_custom_nodes": {"impact": "1.0.0"},
        "file_custom_nodes": [],
        "pips": {},
        "a_newer_key": true
    });
    let file = w.env.path("snapshot.json");
    fs::write(&file, snapshot.to_string()).unwrap();
    let out = ok(import_as_v1(&w, &file));
    says(&out, "`a_newer_key`");
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    let back = w.env.path("back.json");
    w.cmd(&w.env.store)
        .args(["export", "v1", "--manager-snapshot", "-o"])
        .arg(&back)
        .ok();
    let back: Value = read_json(&back);
    assert_eq!(back["comfyui"], core.to_string());
    assert_eq!(back["git_custom_nodes"], snapshot["git_custom_nodes"]);
    assert_eq!(back["cnr_custom_nodes"], snapshot["cnr_custom_nodes"]);

    // The YAML form, wrapped in `custom_nodes:` as comfy-cli writes it, reads the same.
    let yaml = w.env.path("snapshot.yaml");
    fs::write(
        &yaml,
        format!(
            "comfyui: {core}\ncustom_nodes:\n  git_custom_nodes:\n    {}:\n      hash: {a}\n      disabled: false\n  cnr_custom_nodes:\n    impact: 1.0.0\n",
            w.node_a.url()
        ),
    )
    .unwrap();
    let out = w
        .cmd(&w.env.store)
        .arg("--json")
        .args(["spec", "import", "--name", "v2", "-o"])
        .arg(w.env.work.join("versions/v2.json"))
        .arg(&yaml)
        .ok();
    let doc: Value = json_of(&out);
    assert_eq!(doc["spec"]["custom_nodes"][0]["commit"], a.to_string());
    assert_eq!(doc["spec"]["custom_nodes"][1]["cnr"], "impact");
}

/// A ComfyGit environment `my-env/`: its `pyproject.toml` (these dependencies, and `tool` after
/// `[tool.comfygit]`'s `comfyui_version`) and its `uv.lock`.
fn comfygit_project(w: &World, dependencies: &str, tool: &str, uv_lock: &str) -> PathBuf {
    let env_dir = w.env.path("my-env");
    fs::create_dir_all(&env_dir).unwrap();
    let pyproject = format!(
        "[project]\nname = \"comfygit-env-my-env\"\nversion = \"0.1.0\"\ndependencies = {dependencies}\n\n[tool.comfygit]\ncomfyui_version = \"main\"\n{tool}"
    );
    fs::write(env_dir.join("pyproject.toml"), pyproject).unwrap();
    fs::write(env_dir.join("uv.lock"), uv_lock).unwrap();
    env_dir
}

/// A ComfyGit-style environment (nodes, models with sources, `uv.lock`) → spec → realize.
#[test]
fn a_comfygit_environment_becomes_a_spec_that_realizes() {
    let w = World::new();
    let tool = format!(
        r#"
[tool.comfygit.nodes.impact]
name = "impact"
registry_id = "impact"
version = "1.0.0"
source = "registry"

[tool.comfygit.nodes.comfyui-a]
name = "ComfyUI-A"
repository = "{}"
version = "{}"
source = "git"

[tool.comfygit.models]
aa11 = {{ filename = "mirror.safetensors", relative_path = "diffusion_models/mirror.safetensors", category = "diffusion_models", sources = ["{}"] }}
"#,
        w.node_a.url(),
        w.node_a.head("main"),
        w.cdn.url("/mirror/unet.safetensors")
    );
    let env_dir = comfygit_project(&w, "[]", &tool, "version = 1\n");
    ok(import_as_v1(&w, &env_dir.join("pyproject.toml")));
    let home = w.env.path("home");
    ok(realize_v1(&w, &home));
    assert!(home
        .join("ComfyUI/custom_nodes/impact/modules/impact.py")
        .is_file());
    assert_eq!(
        fs::read(home.join("ComfyUI/custom_nodes/ComfyUI-A/__init__.py")).unwrap(),
        b"A = 2\n"
    );
    assert_eq!(
        fs::read(home.join("models/diffusion_models/mirror.safetensors")).unwrap(),
        w.model
    );
}

/// `--spec git+URL[@REF]#PATH`: a team's versions kept in a repository, fetched through the
/// store's mirrors: realized at the branch, read at a tag, a missing path named with the commit,
/// and with the repository gone, read from the mirror.
#[test]
fn specs_are_read_from_a_git_repository() {
    let w = World::new();
    let mut versions = TestRepo::new(&w.env.path("repos/versions.git"));
    let mut old = w.default_spec();
    old["models"] = serde_json::json!([]);
    let old_text = serde_json::to_string_pretty(&old).unwrap();
    let first = versions.commit(
        "main",
        &[("versions/v1.json", Entry::File(old_text.as_bytes()))],
    );
    versions.tag("old", first);
    let text = serde_json::to_string_pretty(&w.default_spec()).unwrap();
    versions.commit(
        "main",
        &[("versions/v1.json", Entry::File(text.as_bytes()))],
    );
    let at = |suffix: &str| format!("git+{}{suffix}", versions.url());

    let home = w.env.path("home");
    w.cmd(&w.env.store)
        .args(["realize", "--spec", &at("#versions/v1.json"), "--target"])
        .arg(&home)
        .ok();
    assert_eq!(
        fs::read(home.join("models/unet/unet.safetensors")).unwrap(),
        w.model
    );
    let check = |location: &str| {
        let out = w
            .cmd(&w.env.store)
            .args(["--json", "spec", "check", "--spec", location])
            .ok();
        json_of(&out)
    };
    let tagged = check(&at("@old#versions/v1.json"));
    assert_eq!(tagged["spec"]["models"], serde_json::json!([]));

    let out = w
        .cmd(&w.env.store)
        .args(["spec", "check", "--spec", &at("#versions/nope.json")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`versions/nope.json` is not a file at commit"),
        "{err}"
    );

    fs::rename(w.env.path("repos/versions.git"), w.env.path("gone.git")).unwrap();
    let held = check(&at("#versions/v1.json"));
    assert_eq!(held["spec"]["models"].as_array().unwrap().len(), 3);

    // Symlinks committed in the repository are not followed: not a directory link out of it
    // (the spec read from there, its lock written there), not a spec file that is a link.
    let outside = w.env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("team.json"), &text).unwrap();
    let mut linked = TestRepo::new(&w.env.path("repos/linked.git"));
    let out_dir = outside.to_str().unwrap().to_string();
    let out_file = outside.join("team.json").to_str().unwrap().to_string();
    linked.commit(
        "main",
        &[
            ("d", Entry::Link(&out_dir)),
            ("team.json", Entry::Link(&out_file)),
        ],
    );
    for (path, link) in [("d/team.json", "`d`"), ("team.json", "`team.json`")] {
        let location = format!("git+{}#{path}", linked.url());
        let out = w
            .cmd(&w.env.store)
            .args(["resolve", "--spec", &location])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{path}: {}", stderr(&out));
        let err = fails_with(&out, "goes through the symlink");
        assert!(err.contains(link), "{err}");
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "written outside"
    );
}

/// A development node (`"path"`): realized as a link to its directory (edits show at once, no
/// copy in the store), its requirements read from there, its tree hash in the lock, and a
/// warning when it changed since the lock; resolve records the change.
#[test]
fn development_nodes_are_linked_and_their_changes_noticed() {
    let w = World::new();
    let dev = w.env.work.join("my-node");
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("__init__.py"), "DEV = 1\n").unwrap();
    let mut spec = w.default_spec();
    spec["custom_nodes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "path": "../my-node" }));
    w.write_spec(&spec);
    let home = w.env.path("home");
    ok(realize_v1(&w, &home));
    let linked = home.join("ComfyUI/custom_nodes/my-node");
    assert_eq!(
        fs::canonicalize(&linked).unwrap(),
        fs::canonicalize(&dev).unwrap()
    );
    let lock: Value = serde_json::from_str(&w.lock_text()).unwrap();
    let node = lock["custom_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "my-node")
        .unwrap()
        .clone();
    let first_hash = node["local"]["tree_hash"].as_str().unwrap().to_string();
    assert_eq!(first_hash.len(), 64);
    let status = w
        .cmd(&w.env.store)
        .args(["status", "--check-contents", "--target"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}{}",
        stdout(&status),
        stderr(&status)
    );
    // Edits show in the home at once.
    fs::write(dev.join("__init__.py"), "DEV = 2\n").unwrap();
    assert_eq!(fs::read(linked.join("__init__.py")).unwrap(), b"DEV = 2\n");
    // A new generation says the node changed since the lock; resolve records the new hash.
    let out = ok(realize_v1(&w, &home));
    says(&out, "changed since it was locked");
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    let lock: Value = serde_json::from_str(&w.lock_text()).unwrap();
    let now = lock["custom_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "my-node")
        .unwrap()["local"]["tree_hash"]
        .clone();
    assert_ne!(now, serde_json::json!(first_hash));
    // A missing directory is an error naming the node.
    fs::remove_dir_all(&dev).unwrap();
    let out = w
        .cmd(&w.env.store)
        .args(["resolve", "v1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "node `my-node`");
}

/// A snapshot of an install as real ones are: a model file name with spaces; a `custom_nodes:`
/// folder in `extra_model_paths.yaml` (with `~` and `$VAR` in its paths) whose node has a token in
/// its `.git/config`; a Hugging Face cache's file linked into a model folder, under
/// `--link-models`. The node is adopted as a node, nothing of any `.git` is
/// stored, no token appears in the spec, the lock, the output or the store, and the hub cache's
/// blob keeps its mode and bytes (and editing it does not touch the store).
#[test]
fn a_snapshot_keeps_secrets_out_and_adopts_what_real_installs_have() {
    use std::os::unix::fs::PermissionsExt;
    let i = Install::new();
    const TOKEN: &str = "ghp_s3cretT0ken";
    // A model whose name has spaces.
    let spaced = i
        .core
        .join("models/checkpoints/Realistic Vision V6.0 B1.safetensors");
    fs::write(&spaced, pseudo_random(50_000, 21)).unwrap();
    // Extra node folder, named with `~` and `$VAR`, whose node's .git/config carries a token.
    let home = i.w.env.dir.path().to_path_buf(); // the tests' HOME
    let extra_nodes = home.join("extra-nodes");
    fs::create_dir_all(&extra_nodes).unwrap();
    git(
        &extra_nodes,
        &["clone", "-q", &i.w.node_a.url(), "ComfyUI-Extra"],
    );
    let node_config = extra_nodes.join("ComfyUI-Extra/.git/config");
    let config = fs::read_to_string(&node_config).unwrap();
    fs::write(
        &node_config,
        format!("{config}[http]\n\textraheader = AUTHORIZATION: bearer {TOKEN}\n"),
    )
    .unwrap();
    let yaml = fs::read_to_string(i.core.join("extra_model_paths.yaml")).unwrap();
    fs::write(
        i.core.join("extra_model_paths.yaml"),
        format!("{yaml}more:\n    base_path: ~/\n    custom_nodes: ${{NODES_DIR}}\n"),
    )
    .unwrap();
    // A hub cache's file, linked into a model folder.
    let blob_bytes = pseudo_random(80_000, 22);
    let hub = i.w.env.path("hf-cache/hub/models--org--vae");
    fs::create_dir_all(hub.join("blobs")).unwrap();
    fs::create_dir_all(hub.join("snapshots/abc123")).unwrap();
    let blob = hub.join("blobs/0123abcd");
    fs::write(&blob, &blob_bytes).unwrap();
    std::os::unix::fs::symlink(&blob, hub.join("snapshots/abc123/vae.safetensors")).unwrap();
    fs::create_dir_all(i.core.join("models/vae")).unwrap();
    std::os::unix::fs::symlink(
        hub.join("snapshots/abc123/vae.safetensors"),
        i.core.join("models/vae/vae.safetensors"),
    )
    .unwrap();
    let blob_mode = fs::metadata(&blob).unwrap().permissions().mode();

    let out = i
        .cmd()
        .env("NODES_DIR", "extra-nodes")
        .env("HOME", &home)
        .args([
            "snapshot",
            "--name",
            "real",
            "--link-models",
            "--comfy-path",
        ])
        .arg(&i.root)
        .arg("-o")
        .arg(i.w.env.work.join("versions/real.json"))
        .output()
        .unwrap();
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{shown}");
    let spec = fs::read_to_string(i.w.env.work.join("versions/real.json")).unwrap();
    let lock = fs::read_to_string(i.w.env.work.join("versions/real.lock.json")).unwrap();
    let parsed: Value = serde_json::from_str(&spec).unwrap();
    // The extra folder's node is a node, not models.
    assert!(
        parsed["custom_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "ComfyUI-Extra"),
        "{spec}"
    );
    assert!(!spec.contains(".git/"), "{spec}");
    // The spaced name is a valid `file://` source (percent-encoded) with its file name.
    let model = parsed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["filename"] == "Realistic Vision V6.0 B1.safetensors")
        .unwrap_or_else(|| panic!("{spec}"));
    assert!(
        model["source"]
            .as_str()
            .unwrap()
            .contains("Realistic%20Vision"),
        "{model}"
    );
    // No token anywhere: spec, lock, output, the store's files.
    for (what, text) in [("spec", &spec), ("lock", &lock), ("output", &shown)] {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
    }
    for entry in walkdir::WalkDir::new(&i.w.env.store).into_iter().flatten() {
        if entry.file_type().is_file() {
            let bytes = fs::read(entry.path()).unwrap_or_default();
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "the token is in {}",
                entry.path().display()
            );
            assert!(
                !entry.path().to_string_lossy().contains("/.git/"),
                "{}",
                entry.path().display()
            );
        }
    }
    // The hub cache's blob: not taken, mode and bytes unchanged, the link in place.
    assert_eq!(fs::metadata(&blob).unwrap().permissions().mode(), blob_mode);
    assert_eq!(fs::read(&blob).unwrap(), blob_bytes);
    assert!(
        fs::symlink_metadata(i.core.join("models/vae/vae.safetensors"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    fs::write(&blob, b"edited in the hub cache").unwrap();
    i.cmd().args(["store", "verify", "--check-contents"]).ok();
}

/// An origin URL with credentials is written without them, and the snapshot says so.
#[test]
fn credentials_in_an_origin_url_are_left_out_of_the_spec() {
    let i = Install::new();
    const TOKEN: &str = "glpat-T0kenT0ken";
    git(
        &i.core,
        &[
            "remote",
            "set-url",
            "origin",
            &format!("https://user:{TOKEN}@example.invalid/c/ComfyUI"),
        ],
    );
    let out = i
        .cmd()
        .args(["snapshot", "--name", "creds", "--no-lock", "--comfy-path"])
        .arg(&i.root)
        .arg("-o")
        .arg(i.w.env.work.join("versions/creds.json"))
        .output()
        .unwrap();
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{shown}");
    let spec = fs::read_to_string(i.w.env.work.join("versions/creds.json")).unwrap();
    assert!(!spec.contains(TOKEN), "{spec}");
    assert!(spec.contains("https://example.invalid/c/ComfyUI"), "{spec}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(
        shown.contains("carries credentials; they are left out"),
        "{shown}"
    );
}

/// Manager's real snapshot files: the 3.31.11+ JSON (a hash with its trailing newline, `unknown`
/// for a node whose ref git packed) read from inside the install it was taken of — the `unknown`
/// commit is read from that node's git — and the older YAML form; and a version exported as a
/// Manager snapshot in YAML when the file asks for it.
#[test]
fn real_manager_snapshot_files_are_imported_and_yaml_is_exported() {
    let w = World::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manager");
    // An install: the core, and rgthree (disabled) whose ref is packed, at some commit.
    let install = w.env.path("install/ComfyUI");
    fs::create_dir_all(install.join("custom_nodes/.disabled")).unwrap();
    fs::write(install.join("main.py"), "print(1)\n").unwrap();
    let rgthree = install.join("custom_nodes/.disabled/rgthree-comfy");
    git(
        &install.join("custom_nodes/.disabled"),
        &["clone", "-q", &w.node_a.url(), "rgthree-comfy"],
    );
    git(
        &rgthree,
        &[
            "remote",
            "set-url",
            "origin",
            "https://github.com/rgthree/rgthree-comfy.git",
        ],
    );
    git(&rgthree, &["pack-refs", "--all"]);
    let rgthree_head = head(&rgthree);
    let snapshots = install.join("user/default/ComfyUI-Manager/snapshots");
    fs::create_dir_all(&snapshots).unwrap();
    let json_snapshot = snapshots.join("2026-12-01_10-00-00_snapshot.json");
    fs::copy(
        fixtures.join("manager-3.31.11-snapshot.json"),
        &json_snapshot,
    )
    .unwrap();

    let out = w
        .cmd(&w.env.store)
        .args(["spec", "import", "--name", "from-manager"])
        .arg(&json_snapshot)
        .ok();
    let spec: Value = read_json(&w.env.work.join("versions/from-manager.json"));
    let nodes = spec["custom_nodes"].as_array().unwrap();
    let gguf = nodes.iter().find(|n| n["name"] == "ComfyUI-GGUF").unwrap();
    assert_eq!(
        gguf["commit"], "b3f1c6e9f3c6d7a6a1e5b2c4d8e9f0a1b2c3d4e5",
        "trimmed"
    );
    let rg = nodes.iter().find(|n| n["name"] == "rgthree-comfy").unwrap();
    assert_eq!(
        rg["commit"],
        rgthree_head.as_str(),
        "read from the node's git: {rg}"
    );
    assert_eq!(rg["enabled"], false);
    assert!(nodes
        .iter()
        .any(|n| n["cnr"] == "comfyui-impact-pack" && n["version"] == "8.8.1"));
    says(&out, "my_tweaks.py");
    // Away from its install, `unknown` is said, not taken for a branch.
    let elsewhere = w.env.path("elsewhere.json");
    fs::copy(fixtures.join("manager-3.31.11-snapshot.json"), &elsewhere).unwrap();
    let out = w
        .cmd(&w.env.store)
        .args(["spec", "import", "--name", "away", "-o"])
        .arg(w.env.path("away.json"))
        .arg(&elsewhere)
        .ok();
    says(&out, "commit is `unknown`");
    let away = fs::read_to_string(w.env.path("away.json")).unwrap();
    assert!(!away.contains("\"ref\": \"unknown\""), "{away}");
    // The older YAML form.
    w.cmd(&w.env.store)
        .args(["spec", "import", "--name", "from-yaml", "-o"])
        .arg(w.env.path("from-yaml.json"))
        .arg(fixtures.join("manager-2.x-snapshot.yaml"))
        .ok();
    let yaml_spec = fs::read_to_string(w.env.path("from-yaml.json")).unwrap();
    assert!(
        yaml_spec.contains("0c3b6f1a2d4e5f60718293a4b5c6d7e8f9012345"),
        "{yaml_spec}"
    );

    // Export as YAML when asked.
    w.write_spec(&w.default_spec());
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    let exported = w.env.path("v1-snapshot.yaml");
    w.cmd(&w.env.store)
        .args(["export", "v1", "--manager-snapshot", "-o"])
        .arg(&exported)
        .ok();
    let text = fs::read_to_string(&exported).unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "YAML, not JSON: {text}"
    );
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    assert!(docs[0]["git_custom_nodes"].as_hash().is_some(), "{text}");
    assert!(docs[0]["comfyui"].as_str().is_some(), "{text}");
}

/// A ComfyGit project whose requirements carry extras and platform markers: the spec keeps both,
/// pins the whole `uv.lock` set (the transitive `alpha` too), and resolves on Linux — the
/// Windows-only package is left to Windows.
#[test]
fn a_comfygit_project_with_markers_and_extras_resolves_on_linux() {
    let w = World::new();
    let tool = format!(
        r#"python_version = "{}"
"#,
        crate::python::python_version()
    );
    let env_dir = comfygit_project(
        &w,
        r#"["beta[fast]>=1", "winonly==1.0 ; sys_platform == 'win32'"]"#,
        &tool,
        r#"version = 1
[[package]]
name = "comfygit-env-my-env"
version = "0.1.0"
source = { virtual = "." }
dependencies = [
    { name = "beta", extra = ["fast"] },
    { name = "winonly", marker = "sys_platform == 'win32'" },
]
[[package]]
name = "beta"
version = "2.0"
dependencies = [{ name = "alpha" }]
[[package]]
name = "alpha"
version = "1.0"
[[package]]
name = "winonly"
version = "1.0"
"#,
    );
    ok(import_as_v1(&w, &env_dir.join("pyproject.toml")));
    let spec: Value = read_json(&w.env.work.join("versions/v1.json"));
    assert_eq!(
        spec["python"]["requirements"],
        serde_json::json!([
            "alpha==1.0",
            "beta[fast]==2.0",
            "winonly==1.0 ; sys_platform == 'win32'"
        ])
    );
    let wheels = w.env.path("wheelhouse");
    wheels::write_dir(&wheels, &crate::python::packages());
    w.cmd(&w.env.store)
        .args(["resolve", "v1", "--wheels-dir"])
        .arg(&wheels)
        .ok();
    let lock: Value = read_json(&w.env.work.join("versions/v1.lock.json"));
    let names: Vec<&str> = lock["python"]["wheels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
}

/// A snapshot follows no link into the kernel's or the devices' files (a folder link to
/// `/proc/self`, a model that is a link to `/proc/self/exe`): each is named and left out. A
/// folder link elsewhere (models on another disk) is followed, and said so.
#[test]
fn a_snapshot_follows_no_link_into_the_kernel_and_names_links_elsewhere() {
    let i = Install::new();
    let models = i.root.join("ComfyUI/models");
    std::os::unix::fs::symlink("/proc/self", models.join("checkpoints/proc")).unwrap();
    fs::create_dir_all(models.join("loras")).unwrap();
    std::os::unix::fs::symlink("/proc/self/exe", models.join("loras/exe.safetensors")).unwrap();
    let other_disk = i.w.env.path("other-disk");
    fs::create_dir_all(&other_disk).unwrap();
    fs::write(other_disk.join("far.safetensors"), b"far away").unwrap();
    std::os::unix::fs::symlink(&other_disk, models.join("vae")).unwrap();
    let out = i
        .cmd()
        .arg("--json")
        .args(["snapshot", "--no-lock", "--name", "k", "--comfy-path"])
        .arg(&i.root)
        .arg("-o")
        .arg(i.w.env.path("k.json"))
        .ok();
    let doc: Value = json_of(&out);
    let unreadable = doc["report"]["unreadable"].to_string();
    assert!(unreadable.contains("checkpoints/proc"), "{unreadable}");
    assert!(unreadable.contains("exe.safetensors"), "{unreadable}");
    let spec = fs::read_to_string(i.w.env.path("k.json")).unwrap();
    assert!(!spec.contains("/proc"), "{spec}");
    assert!(!spec.contains("exe.safetensors"), "{spec}");
    assert!(spec.contains("far.safetensors"), "{spec}");
    says(&out, "outside the install");
}

/// A venv outside the install is named, not silently ignored: without `--venv` the snapshot says
/// its Python is left out; with it, its packages are in the spec.
#[test]
fn a_venv_outside_the_install_is_named_or_adopted() {
    let i = Install::new();
    let outside = i.w.env.path("venvs/comfy");
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    fs::rename(i.root.join(".venv"), &outside).unwrap();
    let snapshot = |extra: &[&str], name: &str| {
        i.cmd()
            .args(["snapshot", "--no-lock", "--name", name, "--comfy-path"])
            .arg(&i.root)
            .args(extra)
            .arg("-o")
            .arg(i.w.env.path(&format!("{name}.json")))
            .output()
            .unwrap()
    };
    let out = ok(snapshot(&[], "without"));
    says(&out, "no venv in the install");
    let spec = fs::read_to_string(i.w.env.path("without.json")).unwrap();
    assert!(!spec.contains("gamma"), "{spec}");
    ok(snapshot(&["--venv", outside.to_str().unwrap()], "with"));
    let spec = fs::read_to_string(i.w.env.path("with.json")).unwrap();
    assert!(spec.contains("gamma"), "{spec}");
}

/// A registry node is snapshotted while the registry cannot be reached: identified from its files
/// (`pyproject.toml`, `.tracking`), written into the spec, the lock left for later — said so —
/// and the snapshot succeeds.
#[test]
fn a_registry_node_is_snapshotted_while_the_registry_is_unreachable() {
    let i = Install::new();
    let closed = ClosedPort::new();
    let out = i
        .cmd()
        .env("COMFIX_REGISTRY_URL", closed.url())
        .args(["snapshot", "--name", "away", "--comfy-path"])
        .arg(&i.root)
        .arg("-o")
        .arg(i.w.env.work.join("versions/away.json"))
        .ok();
    says(&out, "cannot be reached");
    says(&out, "comfix resolve away");
    let spec: Value = read_json(&i.w.env.work.join("versions/away.json"));
    assert!(
        spec["custom_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["cnr"] == "impact" && n["version"] == "1.0.0"),
        "{spec}"
    );
    assert!(!i.w.env.work.join("versions/away.lock.json").exists());
    // Once the registry answers, the spec resolves.
    i.cmd().args(["resolve", "away"]).ok();
}
