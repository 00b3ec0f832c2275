//! `comfix realize`, `rollback`, `status`, `diff`: homes from local sources, in generations.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::git::{Entry, TestRepo};
use crate::support::http::TestServer;
use crate::support::*;

/// The default world's spec plus a third git node and a disabled one.
fn full_spec(w: &World, id: &str) -> Value {
    let mut spec = w.default_spec();
    spec["version_id"] = json!(id);
    let nodes = spec["custom_nodes"].as_array_mut().unwrap();
    nodes.push(json!({ "repo": w.node_a.url(), "name": "node-c", "ref": "main" }));
    nodes
        .push(json!({ "repo": w.node_b.url(), "name": "node-d", "ref": "main", "enabled": false }));
    spec
}

pub(crate) fn realize(w: &World, id: &str, target: &Path, args: &[&str]) -> Output {
    w.cmd(&w.env.store)
        .args(["realize", id, "--target"])
        .arg(target)
        .args(args)
        .output()
        .unwrap()
}

fn realize_ok(w: &World, id: &str, target: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = w
        .cmd(&w.env.store)
        .arg("--json")
        .args(["realize", id, "--target"])
        .arg(target)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "realize {id} failed:\n{}",
        stderr(&out)
    );
    json_of(&out)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .ok();
    stdout(&out).trim().to_string()
}

fn home_json(w: &World, cmd: &str, home: &Path) -> Value {
    let out = w
        .cmd(&w.env.store)
        .arg("--json")
        .arg(cmd)
        .arg("--target")
        .arg(home)
        .ok();
    json_of(&out)
}

#[test]
fn realized_home_has_the_tree_markers_and_model_paths() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let home = w.env.path("home");
    let report = realize_ok(&w, "v1", &home, &[]);
    assert_eq!(report["generation"], 1);
    assert_eq!(report["link_modes"]["model"], "symlink");
    let comfy = home.join("ComfyUI");
    let lock = w.lock_text_of("v1");

    // The tree.
    for (file, contents) in [
        ("main.py", "print('comfy')\n"),
        ("vendor/sub/lib.py", "LIB = 1\n"),
        ("custom_nodes/node-a/__init__.py", "A = 1\n"),
        ("custom_nodes/node-b/__init__.py", "B dev\n"),
        ("custom_nodes/node-c/__init__.py", "A = 2\n"),
    ] {
        assert_eq!(
            fs::read_to_string(comfy.join(file)).unwrap(),
            contents,
            "{file}"
        );
    }
    assert!(!comfy.join("custom_nodes/node-d").exists());
    assert!(comfy
        .join("custom_nodes/.disabled/node-d@nightly/__init__.py")
        .is_file());

    // ComfyUI-Manager's markers: git working trees at the locked commit with the spec's origin...
    for (node, repo, refname) in [
        ("node-a", &w.node_a, "refs/tags/v1"),
        ("node-b", &w.node_b, "refs/heads/dev"),
        ("node-c", &w.node_a, "refs/heads/main"),
    ] {
        let dir = comfy.join("custom_nodes").join(node);
        assert_eq!(
            git(&dir, &["rev-parse", "HEAD"]),
            head_of(repo, refname),
            "{node}"
        );
        assert_eq!(git(&dir, &["remote", "get-url", "origin"]), repo.url());
        assert_eq!(git(&dir, &["status", "--porcelain"]), "", "{node} is clean");
        // The objects are one pack that git itself checks, not a file per object.
        git(&dir, &["fsck", "--strict", "--no-dangling"]);
        let count = git(&dir, &["count-objects", "-v"]);
        assert!(
            count.contains("count: 0") && count.contains("packs: 1"),
            "{node}: {count}"
        );
    }
    assert_eq!(
        git(
            &comfy.join("custom_nodes/node-b"),
            &["rev-parse", "--abbrev-ref", "HEAD"]
        ),
        "dev"
    );
    // ...and registry nodes with .tracking and pyproject.toml, without .git.
    let impact = comfy.join("custom_nodes/impact");
    assert!(impact.join(".tracking").is_file() && impact.join("pyproject.toml").is_file());
    assert!(!impact.join(".git").exists());

    // Models: symlinks into the store, at <models>/<target_subdir>/<filename>.
    let models = home.join("models");
    for (rel, key) in [
        ("unet/unet.safetensors", 0),
        ("loras/detail.safetensors", 1),
        ("diffusion_models/unet.safetensors", 2),
    ] {
        let link = fs::read_link(models.join(rel)).unwrap();
        assert!(
            link.starts_with(w.env.store.canonicalize().unwrap().join("paths")),
            "{rel} -> {link:?}"
        );
        assert_eq!(
            link.file_name().unwrap().to_str().unwrap(),
            lock["models"][key]["store_path"].as_str().unwrap()
        );
    }
    assert_eq!(
        fs::read(models.join("unet/unet.safetensors")).unwrap(),
        w.model
    );

    // extra_model_paths.yaml, read by Python's yaml parser as ComfyUI does: exactly the folders.
    let out = tool_python()
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(comfy.join("extra_model_paths.yaml"))
        .ok();
    let yaml: Value = json_of(&out);
    assert_eq!(
        yaml,
        // (This core has no loader that knows `is_default`: see
        // `the_model_paths_yaml_suits_the_cores_loader`.)
        json!({ "comfix": {
            "base_path": models.to_str().unwrap(),
            "unet": "unet", "loras": "loras", "diffusion_models": "diffusion_models" } })
    );

    // User data directories live outside the generation.
    for dir in ["output", "input", "user", "temp"] {
        assert!(home.join("data").join(dir).is_dir());
        assert_eq!(
            fs::read_link(comfy.join(dir)).unwrap(),
            PathBuf::from(format!("../../../../data/{dir}"))
        );
    }
    assert_eq!(home_json(&w, "status", &home)["changed"], json!([]));

    // Writing into a realized core file changes the home, never the store.
    fs::write(comfy.join("main.py"), b"print('edited')\n").unwrap();
    w.env.ok(&["store", "verify", "--check-contents"]);
    let status = home_json(&w, "status", &home);
    assert_eq!(status["changed"], json!(["ComfyUI/main.py"]));
}

/// `full_spec` as `v1`, realized into the home `home`; returns the home.
fn realized_full_v1(w: &World) -> PathBuf {
    w.write_spec_as("v1", &full_spec(w, "v1"));
    let home = w.env.path("home");
    realize_ok(w, "v1", &home, &[]);
    home
}

fn realize_check(w: &World, home: &Path) -> Output {
    w.cmd(&w.env.store)
        .args(["--json", "realize", "v1", "--check", "--target"])
        .arg(home)
        .output()
        .unwrap()
}

fn status_with(w: &World, home: &Path, args: &[&str]) -> Value {
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "status", "--target"])
        .arg(home)
        .args(args)
        .ok();
    json_of(&out)
}

/// Edits, deletions and a same-size edit with its mtime put back are all drift; `realize
/// --check` reports them and changes nothing; `realize` restores every managed file and keeps
/// each edit aside, naming it.
#[test]
fn a_drifted_home_is_reported_restored_and_its_edits_kept() {
    let w = World::new();
    let home = realized_full_v1(&w);
    let comfy = home.join("ComfyUI");
    let pristine_main = fs::read(comfy.join("main.py")).unwrap();
    assert_eq!(realize_check(&w, &home).status.code(), Some(0));

    fs::write(comfy.join("main.py"), b"print('edited by hand')\n").unwrap();
    fs::remove_file(comfy.join("custom_nodes/node-b/__init__.py")).unwrap();
    let node_a = comfy.join("custom_nodes/node-a/__init__.py");
    let before = fs::metadata(&node_a).unwrap();
    let original = fs::read(&node_a).unwrap();
    let mut same_size = original.clone();
    same_size[0] ^= 0x20;
    fs::write(&node_a, &same_size).unwrap();
    let mtime = filetime_of(&before);
    set_mtime(&node_a, mtime);
    assert_eq!(filetime_of(&fs::metadata(&node_a).unwrap()), mtime);
    let yaml = comfy.join("extra_model_paths.yaml");
    let mut text = fs::read_to_string(&yaml).unwrap();
    text.push_str("# mine\n");
    fs::write(&yaml, text).unwrap();

    let changed = json!([
        "ComfyUI/custom_nodes/node-a/__init__.py",
        "ComfyUI/extra_model_paths.yaml",
        "ComfyUI/main.py"
    ]);
    for args in [&[][..], &["--check-contents"]] {
        let status = status_with(&w, &home, args);
        assert_eq!(status["changed"], changed, "{args:?}");
        assert_eq!(
            status["missing"],
            json!(["ComfyUI/custom_nodes/node-b/__init__.py"]),
            "{args:?}"
        );
    }

    // --check: exit 1, the drift listed, nothing touched.
    let out = realize_check(&w, &home);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = json_of(&out);
    assert_eq!(report["up_to_date"], false);
    assert_eq!(report["drift"].as_array().unwrap().len(), 4, "{report}");
    assert_eq!(
        fs::read(comfy.join("main.py")).unwrap(),
        b"print('edited by hand')\n"
    );
    assert!(!home.join(".comfix/generations/2").exists());

    // realize: a new generation with every managed file back, the edits kept aside.
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "realize", "v1", "--target"])
        .arg(&home)
        .ok();
    let report: Value = json_of(&out);
    assert_eq!(report["up_to_date"], false);
    assert_eq!(report["generation"], 2);
    says(&out, "kept your edit of `ComfyUI/main.py`");
    assert_eq!(fs::read(comfy.join("main.py")).unwrap(), pristine_main);
    assert_eq!(fs::read(&node_a).unwrap(), original);
    assert!(comfy.join("custom_nodes/node-b/__init__.py").is_file());
    assert!(!fs::read_to_string(&yaml).unwrap().contains("# mine"));
    let saved = home.join(".comfix/saved/1/ComfyUI");
    assert_eq!(
        fs::read(saved.join("main.py")).unwrap(),
        b"print('edited by hand')\n"
    );
    assert_eq!(
        fs::read(saved.join("custom_nodes/node-a/__init__.py")).unwrap(),
        same_size
    );
    assert!(fs::read_to_string(saved.join("extra_model_paths.yaml"))
        .unwrap()
        .contains("# mine"));
    assert_eq!(report["saved"].as_array().unwrap().len(), 3, "{report}");

    let status = status_with(&w, &home, &["--check-contents"]);
    assert_eq!(status["changed"], json!([]));
    assert_eq!(status["missing"], json!([]));
    assert_eq!(realize_check(&w, &home).status.code(), Some(0));
    let again = realize_ok(&w, "v1", &home, &[]);
    assert_eq!(again["up_to_date"], true);
    assert_eq!(again["generation"], 2);
}

/// A no-op `realize` trusts the directories' stamps once a full check found every file in
/// place: a file added, removed or replaced changes its directory and is looked at and healed; an
/// edit in place is not looked for (that is the no-op's speed), but `status` finds it and makes
/// the next `realize` look at every file and heal it.
#[test]
fn a_no_op_trusts_directory_stamps_until_a_check_finds_drift() {
    let w = World::new();
    let home = realized_full_v1(&w);
    let comfy = home.join("ComfyUI");
    let checked = home.join(".comfix/checked.json");
    let age_dirs = || age_generations(&home);
    age_dirs();
    let first = realize_ok(&w, "v1", &home, &[]);
    assert_eq!(first["up_to_date"], true);
    assert!(checked.is_file(), "a clean full check records the stamps");

    // Python's bytecode directory in a core directory: looked at, nothing drifted, trusted again.
    fs::create_dir(comfy.join("__pycache__")).unwrap();
    age_dirs();
    assert_eq!(realize_ok(&w, "v1", &home, &[])["up_to_date"], true);
    assert!(checked.is_file());

    // An edit in place leaves the directory's stamp: the no-op does not see it.
    let pristine = fs::read(comfy.join("main.py")).unwrap();
    fs::write(comfy.join("main.py"), b"print('edited in place')\n").unwrap();
    let blind = realize_ok(&w, "v1", &home, &[]);
    assert_eq!(blind["up_to_date"], true, "{blind}");
    assert_eq!(blind["generation"], 1);
    // `status` looks at every file, finds it, and forgets the stamps...
    let status = status_with(&w, &home, &[]);
    assert_eq!(status["changed"], json!(["ComfyUI/main.py"]));
    assert!(!checked.exists());
    // ...so the next realize looks too, and heals it, keeping the edit.
    let healed = realize_ok(&w, "v1", &home, &[]);
    assert_eq!(healed["up_to_date"], false);
    assert_eq!(healed["generation"], 2);
    assert_eq!(fs::read(comfy.join("main.py")).unwrap(), pristine);
    assert!(home.join(".comfix/saved/1/ComfyUI/main.py").is_file());

    // A file removed changes its directory: the no-op looks and heals at once.
    age_dirs();
    assert_eq!(realize_ok(&w, "v1", &home, &[])["up_to_date"], true);
    assert!(checked.is_file());
    fs::remove_file(comfy.join("custom_nodes/node-b/__init__.py")).unwrap();
    let back = realize_ok(&w, "v1", &home, &[]);
    assert_eq!(back["up_to_date"], false, "{back}");
    assert_eq!(
        back["drift"],
        json!(["missing:ComfyUI/custom_nodes/node-b/__init__.py"])
    );
    assert!(comfy.join("custom_nodes/node-b/__init__.py").is_file());

    // `realize --check` never trusts the stamps: it looks at every file.
    age_dirs();
    assert_eq!(realize_ok(&w, "v1", &home, &[])["up_to_date"], true);
    fs::write(comfy.join("main.py"), b"print('again')\n").unwrap();
    assert_eq!(realize_check(&w, &home).status.code(), Some(1));
}

/// Directories changed within the last second are not trusted by a no-op (the clock's tick):
/// age the home's generations by ten seconds.
fn age_generations(home: &Path) {
    let ten_s_ago = std::time::SystemTime::now() - Duration::from_secs(10);
    for entry in walkdir::WalkDir::new(home.join(".comfix/generations")) {
        let entry = entry.unwrap();
        if entry.file_type().is_dir() && !entry.path().ends_with(".git") {
            let dir = fs::File::open(entry.path()).unwrap();
            if dir.set_modified(ten_s_ago).is_err() {
                continue; // a read-only `.git` inside
            }
        }
    }
}

/// A no-op `realize` of `v1` into `home` with `env` added: its JSON, and whether the home's
/// record of the request answered it (no session).
fn noop_with(w: &World, home: &Path, env: &[(&str, &std::ffi::OsStr)]) -> (Value, bool) {
    let out = w
        .cmd(&w.env.store)
        .args(["-v", "--json", "realize", "v1", "--target"])
        .arg(home)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let answered = stderr(&out).contains("the home's record of this request answers it");
    let report = json_of(&out);
    assert_eq!(report["up_to_date"], true, "{report}");
    assert_eq!(report["generation"], 1, "{report}");
    (report, answered)
}

/// The same request again is answered from the home's record, as the whole way answers it;
/// another spec text, environment, program on `PATH`, a home touched, or a store path it links
/// gone takes the whole way again (which records the new request).
#[test]
fn the_same_request_again_is_answered_from_the_homes_record() {
    let w = World::new();
    let home = realized_full_v1(&w);
    age_generations(&home);
    let (whole_way, answered) = noop_with(&w, &home, &[]);
    assert!(!answered, "nothing recorded yet");
    assert!(!whole_way["derivations"].as_array().unwrap().is_empty());
    let (recorded, answered) = noop_with(&w, &home, &[]);
    assert!(answered);
    assert_eq!(recorded, whole_way, "the same answer as the whole way");

    // The environment is part of the request (uv, Python and comfix read it).
    let other = std::ffi::OsStr::new("1");
    assert!(!noop_with(&w, &home, &[("UV_OFFLINE", other)]).1);
    assert!(noop_with(&w, &home, &[("UV_OFFLINE", other)]).1);
    assert!(!noop_with(&w, &home, &[]).1, "one request is recorded");
    assert!(noop_with(&w, &home, &[]).1);

    // A program appearing on `PATH` (a new uv, another Python) changes the machine.
    let bin = w.env.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let with_bin = [("PATH", path.as_os_str())];
    assert!(!noop_with(&w, &home, &with_bin).1);
    assert!(noop_with(&w, &home, &with_bin).1);
    fs::write(bin.join("python3.11"), b"#!/bin/sh\n").unwrap();
    assert!(!noop_with(&w, &home, &with_bin).1);
    assert!(noop_with(&w, &home, &with_bin).1);

    // The spec's text, even one that means the same.
    let spec_file = w.env.work.join("versions/v1.json");
    let text = fs::read_to_string(&spec_file).unwrap();
    fs::write(&spec_file, format!("{text}\n")).unwrap();
    assert!(!noop_with(&w, &home, &with_bin).1);
    assert!(noop_with(&w, &home, &with_bin).1);

    // A file added to the home: its directory changed, so the whole way (which keeps it).
    fs::write(home.join("ComfyUI/mine.txt"), b"mine").unwrap();
    assert!(!noop_with(&w, &home, &with_bin).1);
    age_generations(&home);
    assert!(!noop_with(&w, &home, &with_bin).1, "looked at again");
    assert!(noop_with(&w, &home, &with_bin).1);

    // A model the home links, gone from the store: never answered from the record.
    let link = fs::read_dir(home.join("models/unet"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let object = fs::canonicalize(&link).unwrap();
    let parent = object.parent().unwrap();
    let mode = fs::metadata(parent).unwrap().permissions();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::remove_file(&object).unwrap();
    fs::set_permissions(parent, mode).unwrap();
    let out = w
        .cmd(&w.env.store)
        .args(["-v", "--json", "realize", "v1", "--target"])
        .arg(&home)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("the home's record of this request answers it"));
}

fn filetime_of(meta: &fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime(), meta.mtime_nsec())
}

fn set_mtime(path: &Path, (secs, nanos): (i64, i64)) {
    let file = fs::File::options().write(true).open(path).unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos as u32);
    file.set_modified(when).unwrap();
}

impl World {
    fn lock_text_of(&self, id: &str) -> Value {
        serde_json::from_str(
            &fs::read_to_string(self.env.work.join(format!("versions/{id}.lock.json"))).unwrap(),
        )
        .unwrap()
    }
}

fn model_objects(env: &TestEnv, size: usize) -> usize {
    env.objects()
        .iter()
        .filter(|o| fs::metadata(o).unwrap().len() == size as u64)
        .count()
}

#[test]
fn switching_versions_shares_models_and_keeps_user_data() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let mut v2 = full_spec(&w, "v2");
    v2["custom_nodes"].as_array_mut().unwrap().remove(1); // no node-b
    w.write_spec_as("v2", &v2);
    let home = w.env.path("home");
    realize_ok(&w, "v1", &home, &[]);
    let comfy = home.join("ComfyUI");

    // User data, and files the user added to the trees.
    fs::write(comfy.join("output/image.png"), b"png").unwrap();
    fs::create_dir_all(comfy.join("user/default")).unwrap();
    fs::write(comfy.join("user/default/settings.json"), b"{}").unwrap();
    fs::write(comfy.join("my_notes.txt"), b"notes").unwrap();
    fs::create_dir_all(comfy.join("custom_nodes/my-node")).unwrap();
    fs::write(
        comfy.join("custom_nodes/my-node/__init__.py"),
        b"MINE = 1\n",
    )
    .unwrap();
    let user_files = [
        "output/image.png",
        "user/default/settings.json",
        "my_notes.txt",
        "custom_nodes/my-node/__init__.py",
    ];
    assert_eq!(
        home_json(&w, "status", &home)["added"],
        json!([
            "ComfyUI/custom_nodes/my-node/__init__.py",
            "ComfyUI/my_notes.txt"
        ])
    );

    let model_copies = model_objects(&w.env, w.model.len());
    let report = realize_ok(&w, "v2", &home, &[]);
    assert_eq!(report["generation"], 2);
    assert_eq!(report["previous"], 1);
    assert_eq!(
        model_objects(&w.env, w.model.len()),
        model_copies,
        "the second version adds no model bytes"
    );
    assert!(!comfy.join("custom_nodes/node-b").exists());
    for file in user_files {
        assert!(comfy.join(file).is_file(), "{file} survived the switch");
    }

    let rolled = home_json(&w, "rollback", &home);
    assert_eq!(
        (rolled["from"].as_u64(), rolled["to"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(comfy.join("custom_nodes/node-b").is_dir());
    for file in user_files {
        assert!(comfy.join(file).is_file(), "{file} survived the rollback");
    }
    let status = home_json(&w, "status", &home);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["version_id"], "v1");
    assert_eq!(status["generations"], json!([1, 2]));

    // No generation before 1.
    let out = w
        .cmd(&w.env.store)
        .args(["rollback", "--target"])
        .arg(&home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    says(&out, "no generation before 1");

    // diff: what differs between the two versions' closures.
    let diff = w.cmd(&w.env.store).args(["diff", "v1", "v2"]).ok();
    let text = stdout(&diff);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("node node-b: ") && text.contains("→ ∅, -"),
        "{text}"
    );
}

#[test]
fn killed_mid_switch_leaves_a_whole_generation() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let mut v2 = full_spec(&w, "v2");
    v2["custom_nodes"].as_array_mut().unwrap().remove(1);
    w.write_spec_as("v2", &v2);
    let home = w.env.path("home");
    realize_ok(&w, "v1", &home, &[]);
    realize_ok(&w, "v2", &home, &["--dry-run"]); // nothing
    w.cmd(&w.env.store)
        .args(["resolve", "v2"])
        .output()
        .unwrap();

    for point in ["realize-built", "realize-switched"] {
        let faults = w.env.path(&format!("faults-{point}"));
        fs::create_dir_all(&faults).unwrap();
        let mut child = w
            .cmd(&w.env.store)
            .args(["realize", "v2", "--target"])
            .arg(&home)
            .env("COMFIX_FAULT_PAUSE", point)
            .env("COMFIX_FAULT_DIR", &faults)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !faults.join(point).exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "realize exited before {point}"
            );
            assert!(start.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // A whole generation: the one `current` names, consistent with what is on disk.
        let status = home_json(&w, "status", &home);
        let expect_b = status["version_id"] == "v1";
        assert_eq!(
            home.join("ComfyUI/custom_nodes/node-b").exists(),
            expect_b,
            "{point}: {status}"
        );
        assert_eq!(status["changed"], json!([]), "{point}");
        assert_eq!(status["missing"], json!([]), "{point}");
        // And the next realize completes.
        let report = realize_ok(&w, "v2", &home, &[]);
        assert_eq!(
            home_json(&w, "status", &home)["version_id"],
            "v2",
            "{point}: {report}"
        );
        realize_ok(&w, "v1", &home, &[]); // back to v1 for the next kill
    }
}

fn snapshot(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| !e.path().to_string_lossy().contains("db.sqlite"))
        .map(|e| e.path().display().to_string())
        .collect();
    out.sort();
    out
}

/// `{"id": kind}` of a dry run's steps, or of a realize report's derivations.
fn ids(list: &Value) -> std::collections::BTreeMap<String, String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What `--dry-run` shows is what runs: with a lock, the plan on an empty store and the
/// derivations the realize then reports are the same set under the same ids, each `fetch` step
/// fetched, and a second realize finds them all valid.
#[test]
fn the_dry_run_plan_is_what_realize_runs() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    w.cmd(&w.env.path("first-store"))
        .args(["resolve", "v1"])
        .ok();
    let home = w.env.path("home");
    let out = w
        .cmd(&w.env.store)
        .arg("--json")
        .args(["realize", "v1", "--dry-run", "--target"])
        .arg(&home)
        .ok();
    let plan: Value = json_of(&out)["plan"].clone();
    assert_eq!(plan["lock"], "current");
    let report = realize_ok(&w, "v1", &home, &[]);
    let planned = ids(&plan["steps"]);
    assert_eq!(planned.len(), 10, "core, 5 nodes, 3 models, the home");
    assert_eq!(ids(&report["derivations"]), planned);
    for step in plan["steps"].as_array().unwrap() {
        let ran = report["derivations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == step["id"])
            .unwrap();
        let expected = match step["state"].as_str().unwrap() {
            "fetch" => "fetched",
            "build" => "built",
            other => panic!("unexpected state {other} on an empty store"),
        };
        assert_eq!(ran["outcome"], expected, "{step}");
        assert_eq!(ran["output"], step["output"], "{step}");
    }
    // Again, elsewhere: every output is valid now, the home is built anew.
    let again = realize_ok(&w, "v1", &w.env.path("home2"), &[]);
    assert_eq!(ids(&again["derivations"]), planned);
    for d in again["derivations"].as_array().unwrap() {
        let expected = if d["kind"] == "assemble-home" {
            "built"
        } else {
            "valid"
        };
        assert_eq!(d["outcome"], expected, "{d}");
    }
}

/// Pins are derivations the dry run shows and realize reports under the same ids: a spec without
/// a lock plans the pins of its core, nodes, models and workflow (`resolve`), and realize reports
/// each of them with the derivation of what it pinned; an unchanged workflow is then the lock's
/// derivation (not added again), a changed one is pinned anew.
#[test]
fn pins_are_planned_and_reported_workflows_too() {
    let w = World::new();
    let mut spec = w.default_spec();
    spec["workflows"] = json!(["workflows/w.json"]);
    w.write_spec(&spec);
    let dir = w.env.work.join("versions/workflows");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("w.json"), b"{\"1\": {}}").unwrap();
    let home = w.env.path("home");
    let planned = || -> Value {
        let out = w
            .cmd(&w.env.store)
            .args(["--json", "realize", "v1", "--dry-run", "--target"])
            .arg(&home)
            .ok();
        json_of(&out)["plan"]["steps"].clone()
    };
    let plan = planned();
    let pins: Vec<&Value> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "resolve")
        .collect();
    assert!(pins.iter().any(|s| s["kind"] == "add-workflow"), "{plan}");
    assert!(pins.iter().any(|s| s["kind"] == "fetch-git"), "{plan}");
    let report = realize_ok(&w, "v1", &home, &[]);
    let reported = ids(&report["derivations"]);
    for pin in &pins {
        let id = pin["id"].as_str().unwrap();
        assert_eq!(
            reported.get(id),
            Some(&pin["kind"].as_str().unwrap().to_string()),
            "{pin}"
        );
    }
    let lock = w.lock();
    let stored = lock["workflows"][0]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
    let workflow_outcomes = |report: &Value| -> Vec<(String, String)> {
        report["derivations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "add-workflow")
            .map(|d| {
                (
                    d["outcome"].as_str().unwrap().to_string(),
                    d["output"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    assert!(
        workflow_outcomes(&report).contains(&("fetched".into(), stored.clone())),
        "{report}"
    );
    // Unchanged: the lock's derivation, valid; the plan and the report are the same set.
    let plan = planned();
    let again = realize_ok(&w, "v1", &home, &[]);
    assert_eq!(ids(&again["derivations"]), ids(&plan));
    assert_eq!(
        workflow_outcomes(&again),
        [("valid".to_string(), stored.clone())]
    );
    // Changed: pinned again, to another store path.
    fs::write(dir.join("w.json"), b"{\"2\": {}}").unwrap();
    let changed = realize_ok(&w, "v1", &home, &[]);
    let now = w.lock()["workflows"][0]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(now, stored);
    assert!(
        workflow_outcomes(&changed).contains(&("fetched".into(), now)),
        "{changed}"
    );
}

#[test]
fn dry_run_changes_nothing() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let home = w.env.path("home");
    // Nothing anywhere yet: the plan says what would be resolved, and nothing is created.
    let out = w
        .cmd(&w.env.store)
        .arg("--json")
        .args(["realize", "v1", "--dry-run", "--target"])
        .arg(&home)
        .ok();
    let plan: Value = json_of(&out);
    assert_eq!(plan["plan"]["lock"], "missing");
    assert_eq!(
        plan["plan"]["totals"]["to_resolve"], 9,
        "core, 5 nodes, 3 models"
    );
    assert!(!w.env.store.exists() && !home.exists());
    assert!(!w.env.work.join("versions/v1.lock.json").exists());
    assert_eq!(w.total_requests(), 0);

    // With a lock and a partly filled store: steps, states, sizes; still nothing changes.
    w.resolve_in(&w.env.store, &[]); // v1 is versions/v1.json
    let before = snapshot(&w.env.store);
    let plan = {
        let out = w
            .cmd(&w.env.store)
            .arg("--json")
            .args(["realize", "v1", "--dry-run", "--target"])
            .arg(&home)
            .output()
            .unwrap();
        json_of(&out)["plan"].clone()
    };
    assert_eq!(plan["lock"], "current");
    let steps = plan["steps"].as_array().unwrap();
    let home_step = steps.last().unwrap();
    assert_eq!(home_step["kind"], "assemble-home");
    assert_eq!(
        home_step["inputs"].as_array().unwrap().len(),
        steps.len() - 1
    );
    assert!(
        steps
            .iter()
            .all(|s| s["state"] == "valid" || s["kind"] == "assemble-home"),
        "{plan}"
    );
    let human = stdout(
        &w.cmd(&w.env.store)
            .args(["realize", "v1", "--dry-run", "--target"])
            .arg(&home)
            .output()
            .unwrap(),
    );
    assert!(
        human.contains("fetch-model")
            && human.contains("assemble-home")
            && human.contains("10 steps"),
        "{human}"
    );
    assert_eq!(snapshot(&w.env.store), before);
    assert!(!home.exists());
}

#[test]
fn offline_realize_from_a_complete_store_without_network() {
    let mut w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    w.cmd(&w.env.store)
        .args(["resolve", "v1"])
        .output()
        .unwrap();
    // Take the network away: every service now refuses connections.
    for server in [&mut w.hub, &mut w.cdn, &mut w.civitai, &mut w.registry] {
        drop(std::mem::replace(server, TestServer::start()));
    }
    let home = w.env.path("home");
    let report = realize_ok(&w, "v1", &home, &["--offline"]);
    assert_eq!(report["generation"], 1);
    assert_eq!(
        fs::read(home.join("models/unet/unet.safetensors")).unwrap(),
        w.model
    );
    // Without the offline flag the complete store still needs no request.
    realize_ok(&w, "v1", &w.env.path("home2"), &[]);
}

/// A store without its git mirrors (an imported store holds none) still realizes: the git nodes
/// and the core are placed without `.git`, with a warning, instead of failing.
#[test]
fn a_store_without_git_mirrors_realizes_homes_without_dot_git() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    fs::remove_dir_all(w.env.store.join("git")).unwrap();
    let home = w.env.path("home");
    let out = ok(realize(&w, "v1", &home, &["--offline"]));
    let err = stderr(&out);
    assert!(
        err.contains("the store has no mirror of the core's repository"),
        "{err}"
    );
    assert!(
        err.contains("node `node-a`: the store has no mirror"),
        "{err}"
    );
    assert!(home.join("ComfyUI/main.py").is_file());
    assert!(!home.join("ComfyUI/.git").exists());
    assert!(home
        .join("ComfyUI/custom_nodes/node-a/__init__.py")
        .is_file());
    assert!(!home.join("ComfyUI/custom_nodes/node-a/.git").exists());
}

#[test]
fn link_modes_are_chosen_reported_and_overridable() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let lock_path = |w: &World| w.lock_text_of("v1");

    let auto = realize_ok(&w, "v1", &w.env.path("auto"), &[]);
    // ext4 here cannot reflink: auto falls back to copy and says so (the XFS test covers reflink).
    assert!(matches!(
        auto["link_modes"]["core"].as_str(),
        Some("copy" | "reflink")
    ));
    let lock = lock_path(&w);
    let core_store = w.store_path(lock["comfy"]["store_path"].as_str().unwrap());

    let hard = realize_ok(&w, "v1", &w.env.path("hard"), &["--link-mode", "hardlink"]);
    assert_eq!(
        hard["link_modes"],
        json!({ "core": "hardlink", "node": "hardlink", "model": "hardlink" })
    );
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&w.env.path("hard/ComfyUI/main.py")),
        ino(&core_store.join("main.py"))
    );
    assert!(
        !fs::symlink_metadata(w.env.path("hard/models/unet/unet.safetensors"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let copy = realize_ok(&w, "v1", &w.env.path("copy"), &["--link-mode", "copy"]);
    assert_eq!(
        copy["link_modes"],
        json!({ "core": "copy", "node": "copy", "model": "copy" })
    );
    assert_ne!(
        ino(&w.env.path("copy/ComfyUI/main.py")),
        ino(&core_store.join("main.py"))
    );
    assert_eq!(
        fs::read(w.env.path("copy/models/unet/unet.safetensors")).unwrap(),
        w.model
    );

    // Symlinks only suit models: asking for them for the trees is refused clearly.
    let out = realize(&w, "v1", &w.env.path("sym"), &["--link-mode", "symlink"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "`symlink` cannot be used for the core and node trees");
    w.env.ok(&["store", "verify", "--check-contents"]);
}

#[test]
fn frozen_refuses_to_change_the_lock() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let home = w.env.path("home");
    let out = realize(&w, "v1", &home, &["--frozen"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "`--frozen`, but there is no lock");
    w.cmd(&w.env.store)
        .args(["resolve", "v1"])
        .output()
        .unwrap();
    let mut changed = full_spec(&w, "v1");
    changed["custom_nodes"][1]["ref"] = json!("main");
    w.write_spec_as("v1", &changed);
    let out = realize(&w, "v1", &home, &["--frozen"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "node `node-b`");
    assert!(!home.exists());
}

/// A loop-mounted XFS image (reflinks), unmounted when dropped; `None`, said why, when this
/// machine cannot make one (not root, no xfsprogs, no loop devices).
pub(crate) struct Xfs {
    pub(crate) mount: PathBuf,
}

impl Xfs {
    pub(crate) fn mount(w: &World) -> Option<Xfs> {
        let skip = |why: &str| {
            eprintln!("skipping the reflink test: {why}");
            None
        };
        if !rustix_is_root() {
            return skip("not running as root (mounting needs it)");
        }
        if std::process::Command::new("mkfs.xfs")
            .arg("-V")
            .output()
            .is_err()
        {
            return skip("mkfs.xfs is not installed (apt-get install xfsprogs)");
        }
        let image = w.env.path("xfs.img");
        let mount = w.env.path("xfs");
        fs::create_dir_all(&mount).unwrap();
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        assert!(run("truncate", &["-s", "300M", image.to_str().unwrap()]));
        assert!(run("mkfs.xfs", &["-q", "-f", image.to_str().unwrap()]));
        let mounted = run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        if !mounted {
            return skip("loop mounting is not permitted here");
        }
        Some(Xfs { mount })
    }

    /// Bytes free on it.
    pub(crate) fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.mount).unwrap();
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
    }
}

/// Reflinks need a filesystem that has them: a loop-mounted XFS image, when running as root.
#[test]
fn reflink_mode_on_a_loop_mounted_xfs() {
    let w = World::new();
    let Some(xfs) = Xfs::mount(&w) else {
        return;
    };
    let mount = xfs.mount.clone();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let store = mount.join("store");
    let home = mount.join("home");
    let out = w
        .cmd(&store)
        .arg("--json")
        .args(["realize", "v1", "--link-mode", "reflink", "--target"])
        .arg(&home)
        .ok();
    let report: Value = json_of(&out);
    assert_eq!(report["link_modes"]["core"], "reflink");
    assert_eq!(report["link_modes"]["node"], "reflink");
    // Auto picks reflink here too, and writing into the reflinked copy leaves the store intact.
    let out = w
        .cmd(&store)
        .arg("--json")
        .args(["realize", "v1", "--target"])
        .arg(mount.join("home2"))
        .ok();
    let auto: Value = json_of(&out);
    assert_eq!(auto["link_modes"]["core"], "reflink");
    fs::write(home.join("ComfyUI/main.py"), b"edited").unwrap();
    w.cmd(&store)
        .args(["store", "verify", "--check-contents"])
        .ok();
}

fn rustix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| stdout(&o).trim() == "0")
        .unwrap_or(false)
}

/// Entries planted in a target are refused, never followed: a `.comfix` symlink would make
/// realize write its generations where it points.
#[test]
fn planted_entries_in_a_target_are_refused() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let elsewhere = w.env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    // (the entry made a link, the directories made first, where it points)
    let cases = [
        (".comfix", "", "elsewhere"),
        (".comfix/generations", ".comfix", "elsewhere"),
        (".comfix/lock", ".comfix/generations", "elsewhere/x"),
        (".comfix/generations/1", ".comfix/generations", "elsewhere"),
        (".comfix/current", ".comfix/generations", "/etc"),
        ("ComfyUI", "", "elsewhere"),
        ("models", "", "elsewhere"),
    ];
    for (i, (entry, parents, target)) in cases.into_iter().enumerate() {
        let home = w.env.path(&format!("home{i}"));
        fs::create_dir_all(home.join(parents)).unwrap();
        std::os::unix::fs::symlink(w.env.path(target), home.join(entry)).unwrap();
        let out = realize(&w, "v1", &home, &[]);
        assert_eq!(out.status.code(), Some(1), "{entry}: {}", stderr(&out));
        let err = fails_with(&out, "neither follows nor replaces");
        assert!(
            err.contains(&format!("{}`", home.join(entry).display())),
            "{err}"
        );
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "{entry}: nothing written there"
        );
    }
}

/// The loader of ComfyUI before 2024-09-19: every key but `base_path` is a folder whose value it
/// splits — a boolean `is_default` crashes it at startup.
const OLD_LOADER: &str = r#"import os, sys, yaml
def load_extra_path_config(yaml_path):
    with open(yaml_path, 'r') as stream:
        config = yaml.safe_load(stream)
    for c in config:
        conf = config[c]
        base_path = conf.pop("base_path", None)
        for x in conf:
            for y in conf[x].split("\n"):
                print(x, os.path.join(base_path, y))
load_extra_path_config(os.path.join(os.path.dirname(os.path.realpath(__file__)), "extra_model_paths.yaml"))
"#;

/// Today's loader (utils/extra_config.py): it pops `is_default` first.
const NEW_LOADER: &str = r#"import os, yaml
def load_extra_path_config(yaml_path):
    with open(yaml_path, 'r') as stream:
        config = yaml.safe_load(stream)
    for c in config:
        conf = config[c]
        base_path = conf.pop("base_path", None)
        is_default = False
        if "is_default" in conf:
            is_default = conf.pop("is_default")
        for x in conf:
            for y in conf[x].split("\n"):
                print(x, os.path.join(base_path, y), is_default)
"#;

/// `extra_model_paths.yaml` uses only what the realized core's loader understands (read from its
/// code), so a stand-in for an old core starts; the core is a git working tree at its commit.
#[test]
fn the_model_paths_yaml_suits_the_cores_loader() {
    let w = World::new();
    let mut old = TestRepo::new(&w.env.path("repos/old-core.git"));
    let old_commit = old.commit("master", &[("main.py", Entry::File(OLD_LOADER.as_bytes()))]);
    let mut new = TestRepo::new(&w.env.path("repos/new-core.git"));
    new.commit(
        "master",
        &[
            (
                "main.py",
                Entry::File(b"import utils.extra_config as e, os\ne.load_extra_path_config(os.path.join(os.path.dirname(os.path.realpath(__file__)), 'extra_model_paths.yaml'))\n"),
            ),
            ("utils/__init__.py", Entry::File(b"")),
            ("utils/extra_config.py", Entry::File(NEW_LOADER.as_bytes())),
        ],
    );
    for (id, repo, default) in [("old", &old, false), ("new", &new, true)] {
        let mut spec = full_spec(&w, id);
        spec["comfy"] = json!({ "repo": repo.url(), "ref": "master" });
        w.write_spec_as(id, &spec);
        let home = w.env.path(&format!("home-{id}"));
        realize_ok(&w, id, &home, &[]);
        let out = tool_python().arg(home.join("ComfyUI/main.py")).ok();
        let printed = stdout(&out);
        assert!(printed.contains("unet "), "{id}: {printed}");
        assert_eq!(printed.contains("True"), default, "{id}: {printed}");
    }

    // Manager-style reads of the core's commit.
    let home = w.env.path("home-old");
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(home.join("ComfyUI"))
        .args(["rev-parse", "HEAD"])
        .ok();
    assert_eq!(stdout(&out).trim(), old_commit.to_string());
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(home.join("ComfyUI"))
        .args(["remote", "get-url", "origin"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), old.url());
}

/// `--skip-models` works from a store that never had the models, with a lock that pins them.
#[test]
fn skip_models_needs_no_models_in_the_store() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    realize_ok(&w, "v1", &w.env.path("home"), &[]); // the lock now pins the models
    let store2 = w.env.path("store2");
    let home2 = w.env.path("home2");
    w.cmd(&store2)
        .args(["realize", "v1", "--skip-models", "--frozen", "--target"])
        .arg(&home2)
        .ok();
    assert!(home2.join("ComfyUI/main.py").is_file());
    let listed = w.cmd(&store2).args(["store", "ls"]).output().unwrap();
    assert!(
        !stdout(&listed).contains(".safetensors"),
        "{}",
        stdout(&listed)
    );
    let out = w
        .cmd(&store2)
        .args(["--json", "status", "--target"])
        .arg(&home2)
        .output()
        .unwrap();
    let status: Value = json_of(&out);
    assert_eq!(status["missing"], json!([]), "{status}");
}

/// After a rollback the home is behind its version's lock, and `status` says so; `history`
/// lists the generations with their versions, the current one marked.
#[test]
fn status_says_when_the_home_is_behind_its_lock_and_history_lists_generations() {
    let mut w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let home = w.env.path("home");
    realize_ok(&w, "v1", &home, &[]);
    assert_eq!(home_json(&w, "status", &home)["behind_lock"], false);
    w.node_b
        .commit("dev", &[("__init__.py", Entry::File(b"B dev 9\n"))]);
    w.cmd(&w.env.store)
        .args(["resolve", "v1", "--update", "node-b"])
        .ok();
    assert_eq!(home_json(&w, "status", &home)["behind_lock"], true);
    realize_ok(&w, "v1", &home, &[]);
    assert_eq!(home_json(&w, "status", &home)["behind_lock"], false);
    w.cmd(&w.env.store)
        .args(["rollback", "--target"])
        .arg(&home)
        .ok();
    assert_eq!(home_json(&w, "status", &home)["behind_lock"], true);
    let out = w
        .cmd(&w.env.store)
        .args(["status", "--target"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("behind `v1.lock.json`"),
        "{}",
        stdout(&out)
    );

    let history = home_json(&w, "history", &home);
    let entries = history.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["generation"], 1);
    assert_eq!(entries[0]["current"], true);
    assert_eq!(entries[1]["current"], false);
    assert!(entries
        .iter()
        .all(|e| e["version_id"] == "v1" && e["created_at"].as_i64() > Some(0)));
}

/// `diff` takes version ids, spec files and homes (`--target H` compares the home's current
/// generation with a version); the help has examples.
#[test]
fn diff_compares_ids_spec_files_and_homes() {
    let w = World::new();
    w.write_spec_as("v1", &full_spec(&w, "v1"));
    let mut v2 = full_spec(&w, "v2");
    v2["custom_nodes"].as_array_mut().unwrap().remove(1); // no node-b
    w.write_spec_as("v2", &v2);
    let home = w.env.path("home");
    realize_ok(&w, "v1", &home, &[]);
    realize_ok(&w, "v2", &w.env.path("home2"), &[]);
    let diff = |args: &[&str]| -> Value {
        let out = w
            .cmd(&w.env.store)
            .arg("--json")
            .arg("diff")
            .args(args)
            .ok();
        json_of(&out)
    };
    let by_id = diff(&["v1", "v2"])["changes"].clone();
    assert!(
        by_id
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "node-b" && c["b"].is_null()),
        "{by_id}"
    );
    let v1_file = w.env.work.join("versions/v1.json");
    let v2_file = w.env.work.join("versions/v2.json");
    assert_eq!(
        diff(&[v1_file.to_str().unwrap(), v2_file.to_str().unwrap()])["changes"],
        by_id
    );
    assert_eq!(
        diff(&["--target", home.to_str().unwrap(), "v2"])["changes"],
        by_id
    );
    assert_eq!(diff(&[home.to_str().unwrap(), "v2"])["changes"], by_id);
    assert_eq!(
        diff(&["--target", home.to_str().unwrap(), "v1"])["changes"],
        json!([])
    );

    for sub in [
        &["diff"][..],
        &["realize"],
        &["store", "du"],
        &["gc"],
        &["history"],
    ] {
        let out = w
            .cmd(&w.env.store)
            .args(sub)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            stdout(&out).contains("Examples:\n  comfix"),
            "{sub:?}: {}",
            stdout(&out)
        );
    }
}

/// A core whose tree links `custom_nodes` (or a user data folder) out of the home is refused
/// before any node is placed: nothing is written where the link points.
#[test]
fn a_core_linking_its_folders_out_of_the_home_is_refused() {
    let w = World::new();
    let outside = w.env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    for folder in ["custom_nodes", "output"] {
        let mut core = TestRepo::new(&w.env.path(&format!("repos/evil-{folder}.git")));
        core.commit(
            "master",
            &[
                ("main.py", Entry::File(b"print('core')\n")),
                (folder, Entry::Link(outside.to_str().unwrap())),
            ],
        );
        let id = format!("evil-{folder}");
        let mut spec = full_spec(&w, &id);
        spec["comfy"] = json!({ "repo": core.url(), "ref": "master" });
        w.write_spec_as(&id, &spec);
        let home = w.env.path(&format!("home-{folder}"));
        let out = realize(&w, &id, &home, &[]);
        assert_eq!(out.status.code(), Some(1), "{folder}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("ComfyUI/{folder}`")),
            "{}",
            stderr(&out)
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{folder}");
        assert!(!home.join(".comfix/current").exists());
    }
}

/// A local model on a filesystem with reflinks is cloned into the store, not copied: resolving a
/// 64 MiB `file://` model takes (almost) no space, and its bytes and digest are the file's.
#[test]
fn local_models_are_cloned_where_the_filesystem_can() {
    let w = World::new();
    let Some(xfs) = Xfs::mount(&w) else {
        return;
    };
    let model = crate::support::pseudo_random(64 << 20, 9);
    let file = xfs.mount.join("local.safetensors");
    fs::write(&file, &model).unwrap();
    let mut spec = full_spec(&w, "v1");
    spec["models"] =
        json!([{ "source": format!("file://{}", file.display()), "target_subdir": "checkpoints" }]);
    w.write_spec_as("v1", &spec);
    let store = xfs.mount.join("store");
    // The store's own files first (db, the git trees), so only the model is measured.
    w.cmd(&store)
        .args(["store", "add"])
        .arg(w.env.path("repos"))
        .ok();
    let _ = std::process::Command::new("sync").status();
    let before = xfs.free();
    w.cmd(&store).args(["resolve", "v1"]).ok();
    let _ = std::process::Command::new("sync").status();
    let used = before.saturating_sub(xfs.free());
    assert!(
        used < 16 << 20,
        "resolving a 64 MiB local model used {used} bytes"
    );
    let lock: Value = serde_json::from_str(&w.lock_text()).unwrap();
    assert_eq!(
        lock["models"][0]["blake3"],
        crate::support::blake3_hex(&model)
    );
    let stored = store
        .join("paths")
        .join(lock["models"][0]["store_path"].as_str().unwrap());
    assert_eq!(fs::read(stored).unwrap(), model);
}

/// Homes and stores never contain each other, another home included: a home inside a home, and a
/// store inside a home, are refused before anything is written.
#[test]
fn a_home_or_a_store_inside_another_home_is_refused() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    let home = w.env.path("home");
    realize_ok(&w, "v1", &home, &[]);
    let nested = home.join("data/second");
    let out = w
        .cmd(&w.env.store)
        .args(["realize", "v1", "--target"])
        .arg(&nested)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "is inside the comfix home");
    assert!(!nested.exists());
    let inner_store = home.join("data/store");
    let out = w
        .cmd(&inner_store)
        .args(["realize", "v1", "--target"])
        .arg(w.env.path("elsewhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "the store");
    assert!(!inner_store.exists(), "no store was made inside the home");
}
