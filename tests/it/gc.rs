//! Garbage collection, roots, pins and introspection, including GC racing a realize.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Stdio;

use serde_json::{json, Value};

use crate::support::*;

/// Two versions: v1 has node-b, v2 does not; both share the core, node-a, impact and the models.
fn two_versions(w: &World) {
    let mut v1 = w.default_spec();
    v1["version_id"] = json!("v1");
    w.write_spec_as("v1", &v1);
    let mut v2 = v1.clone();
    v2["version_id"] = json!("v2");
    v2["custom_nodes"].as_array_mut().unwrap().remove(1);
    w.write_spec_as("v2", &v2);
}

fn comfix_json(w: &World, args: &[&str]) -> Value {
    let out = w.cmd(&w.env.store).arg("--json").args(args).ok();
    crate::support::json_of(&out)
}

fn realize(w: &World, id: &str, home: &Path) {
    w.cmd(&w.env.store)
        .args(["realize", id, "--target"])
        .arg(home)
        .ok();
}

fn lock_paths(w: &World, id: &str) -> BTreeSet<String> {
    let lock: Value = serde_json::from_str(
        &fs::read_to_string(w.env.work.join(format!("versions/{id}.lock.json"))).unwrap(),
    )
    .unwrap();
    let mut out = BTreeSet::new();
    out.insert(lock["comfy"]["store_path"].as_str().unwrap().to_string());
    for node in lock["custom_nodes"].as_array().unwrap() {
        let entry = if node["git"].is_object() {
            &node["git"]
        } else {
            &node["registry"]
        };
        out.insert(entry["store_path"].as_str().unwrap().to_string());
    }
    for model in lock["models"].as_array().unwrap() {
        out.insert(model["store_path"].as_str().unwrap().to_string());
    }
    out
}

fn valid_paths(w: &World) -> BTreeSet<String> {
    comfix_json(w, &["store", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn deleting_a_home_frees_exactly_what_only_it_used() {
    let w = World::new();
    two_versions(&w);
    let (home1, home2) = (w.env.path("home1"), w.env.path("home2"));
    realize(&w, "v1", &home1);
    realize(&w, "v2", &home2);
    let roots = comfix_json(&w, &["roots"]);
    let homes: Vec<&Value> = roots
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "home")
        .collect();
    assert_eq!(homes.len(), 2);
    assert!(homes
        .iter()
        .all(|r| r["live"] == true && r["closure_paths"].as_u64() > Some(5)));

    // Nothing is garbage while both homes exist.
    let dry = comfix_json(&w, &["gc", "--dry-run"]);
    assert_eq!(dry["report"]["deleted_paths"], json!([]));

    let only_v1: BTreeSet<String> = lock_paths(&w, "v1")
        .difference(&lock_paths(&w, "v2"))
        .cloned()
        .collect();
    assert_eq!(only_v1.len(), 1, "node-b: {only_v1:?}");
    // What `store du` says only home1 holds is what gc frees once home1 is gone.
    let du = comfix_json(&w, &["store", "du"]);
    let home1_group = format!("home:{}", home1.display());
    // (A submodule's mirror is a cache no lock names: garbage, but no path.)
    let dry = comfix_json(&w, &["gc", "--dry-run"]);
    assert_eq!(
        du["garbage"]["disk"], dry["report"]["freed_bytes"],
        "{du}\n{dry}"
    );
    assert_eq!(dry["report"]["deleted_paths"], json!([]));
    comfix_json(&w, &["gc"]);
    let du = comfix_json(&w, &["store", "du"]);
    let unique = du["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == home1_group.as_str())
        .unwrap_or_else(|| panic!("{du}"))["unique"]
        .clone();
    assert_eq!(du["garbage"]["disk"], 0, "{du}");
    fs::remove_dir_all(&home1).unwrap();
    let stale = comfix_json(&w, &["roots"]);
    assert!(stale
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "home" && r["live"] == false && r["home_gone"] == true));

    let before_paths = valid_paths(&w);
    let before_bytes = w.env.content_bytes();
    let before_disk = w.env.disk_bytes(&[&home2]);
    // The home may have moved: what it used is kept for the grace period, and gc says so.
    let kept = w.cmd(&w.env.store).args(["gc"]).ok();
    assert!(
        stderr(&kept).contains(&format!(
            "kept what `{}` used: the home is gone",
            home1.display()
        )),
        "{}",
        stderr(&kept)
    );
    assert_eq!(
        valid_paths(&w),
        before_paths,
        "the grace period keeps the home's paths"
    );
    assert_eq!(comfix_json(&w, &["store", "du"])["garbage"]["disk"], 0);
    // Past it (here: no grace), exactly what only that home used goes.
    let du = comfix_json(&w, &["store", "du", "--home-grace", "0s"]);
    let dry = comfix_json(&w, &["gc", "--dry-run", "--home-grace", "0s"]);
    assert_eq!(du["garbage"]["disk"], dry["report"]["freed_bytes"], "{du}");
    assert_eq!(
        du["garbage"]["content"],
        dry["report"]["freed_content_bytes"]
    );
    assert_eq!(
        unique["disk"], dry["report"]["freed_bytes"],
        "du's unique of home1"
    );
    let would: BTreeSet<String> = dry["report"]["deleted_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // node-b's checkout and v1's home manifest, nothing else.
    assert_eq!(would.len(), 2, "{would:?}");
    assert!(only_v1.is_subset(&would));
    assert!(would.iter().any(|p| p.ends_with("-home-v1")));
    assert_eq!(valid_paths(&w), before_paths, "--dry-run deletes nothing");
    assert_eq!(w.env.content_bytes(), before_bytes);

    let done = comfix_json(&w, &["gc", "--home-grace", "0s"]);
    let deleted: BTreeSet<String> = done["report"]["deleted_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        deleted, would,
        "the real run deletes what the dry run reported"
    );
    for field in ["freed_bytes", "freed_content_bytes", "removed_objects"] {
        assert_eq!(done["report"][field], dry["report"][field], "{field}");
    }
    assert_eq!(
        before_disk - w.env.disk_bytes(&[&home2]),
        done["report"]["freed_bytes"].as_u64().unwrap(),
        "freed bytes are the bytes gone from disk (du -B1)"
    );
    assert!(before_bytes > w.env.content_bytes());
    assert!(done["report"]["freed_bytes"].as_u64().unwrap() > 0);
    let after = comfix_json(&w, &["store", "du"]);
    assert_eq!(after["garbage"]["disk"], 0, "{after}");
    // No lock file nobody holds survives a collection.
    let locks: Vec<_> = ["locks", "tmp/downloads", "git"]
        .iter()
        .flat_map(|dir| fs::read_dir(w.env.store.join(dir)).unwrap().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
        .filter(|p| !p.with_extension("git").exists())
        .collect();
    assert!(locks.is_empty(), "{locks:?}");
    let after = valid_paths(&w);
    assert!(
        lock_paths(&w, "v2").is_subset(&after),
        "everything home2 uses is kept"
    );
    w.cmd(&w.env.store)
        .args(["store", "verify", "--check-contents"])
        .status()
        .unwrap()
        .success()
        .then_some(())
        .unwrap();
    assert_eq!(
        comfix_json(&w, &["status", "--target", home2.to_str().unwrap()])["missing"],
        json!([])
    );
    // A second collection finds nothing more.
    assert_eq!(
        comfix_json(&w, &["gc"])["report"]["deleted_paths"],
        json!([])
    );
}

#[test]
fn gc_during_a_realize_leaves_it_intact() {
    let w = World::new();
    two_versions(&w);
    // First while fetching into an empty store; then with everything already fetched (and no
    // root but the realizing process's own).
    for (round, prefetch) in [("fetching", false), ("kept", true)] {
        let store = w.env.path(&format!("store-{round}"));
        if prefetch {
            w.cmd(&store).args(["resolve", "v1"]).ok();
        }
        let faults = w.env.path(&format!("faults-{round}"));
        fs::create_dir_all(&faults).unwrap();
        let home = w.env.path(&format!("home-{round}"));
        let mut child = w
            .cmd(&store)
            .args(["realize", "v1", "--target"])
            .arg(&home)
            .env("COMFIX_FAULT_WAIT", "realize-resolved")
            .env("COMFIX_FAULT_DIR", &faults)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(&faults.join("realize-resolved"), &mut child);
        // The collector runs while the realize holds its fetched paths only by temporary roots.
        let out = w.cmd(&store).arg("--json").arg("gc").ok();
        let report: Value = json_of(&out);
        let deleted = report["report"]["deleted_paths"].as_array().unwrap();
        assert!(
            deleted.is_empty(),
            "{round}: GC deleted what the realize uses: {deleted:?}"
        );
        fs::write(faults.join("realize-resolved.go"), b"").unwrap();
        ok(child.wait_with_output().unwrap());
        let status = w
            .cmd(&store)
            .arg("--json")
            .args(["status", "--target"])
            .arg(&home)
            .output()
            .unwrap();
        let status: Value = json_of(&status);
        assert_eq!(
            (status["changed"].clone(), status["missing"].clone()),
            (json!([]), json!([])),
            "{round}"
        );
        assert!(w
            .cmd(&store)
            .args(["store", "verify", "--check-contents"])
            .status()
            .unwrap()
            .success());
    }
}

#[test]
fn gc_killed_mid_sweep_leaves_a_verifiable_store() {
    let w = World::new();
    two_versions(&w);
    let home = w.env.path("home");
    realize(&w, "v1", &home);
    fs::remove_dir_all(&home).unwrap();
    let faults = w.env.path("faults");
    fs::create_dir_all(&faults).unwrap();
    let mut child = w
        .cmd(&w.env.store)
        .args(["gc", "--home-grace", "0s"])
        .env("COMFIX_FAULT_PAUSE", "gc-unregistered")
        .env("COMFIX_FAULT_DIR", &faults)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&faults.join("gc-unregistered"), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    w.cmd(&w.env.store)
        .args(["store", "verify", "--check-contents"])
        .ok();
    let report = comfix_json(&w, &["gc", "--home-grace", "0s"]);
    assert!(report["report"]["errors"].as_array().unwrap().is_empty());
    assert_eq!(
        valid_paths(&w),
        BTreeSet::new(),
        "nothing is rooted any more"
    );
    assert!(
        fs::read_dir(w.env.store.join("paths"))
            .unwrap()
            .next()
            .is_none(),
        "leftovers swept"
    );
    assert_eq!(w.env.objects().len(), 0);
    assert!(
        fs::read_dir(w.env.store.join("git"))
            .unwrap()
            .next()
            .is_none(),
        "unneeded mirrors swept"
    );
}

#[test]
fn pins_max_freed_old_generations_and_introspection() {
    let w = World::new();
    two_versions(&w);
    let home = w.env.path("home");
    realize(&w, "v1", &home);
    realize(&w, "v2", &home);
    let lock1 = lock_paths(&w, "v1");
    let node_b: String = lock1
        .difference(&lock_paths(&w, "v2"))
        .next()
        .unwrap()
        .clone();

    // why-depends: v1's home manifest → node-b's checkout.
    let manifest = valid_paths(&w)
        .into_iter()
        .find(|p| p.ends_with("-home-v1"))
        .unwrap();
    let chain = comfix_json(&w, &["store", "why-depends", &manifest, &node_b]);
    assert_eq!(chain.as_array().unwrap().len(), 2);
    let out = w
        .cmd(&w.env.store)
        .args(["store", "why-depends", &node_b, &manifest])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // du: v1 and v2 share everything but node-b.
    let du = comfix_json(&w, &["store", "du"]);
    let group = |name: &str| {
        du["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["group"] == name)
            .cloned()
            .unwrap()
    };
    let node_b_size = comfix_json(&w, &["store", "path-info", &node_b])["size"]
        .as_u64()
        .unwrap();
    let v1 = group("version:v1");
    let manifest_size = comfix_json(&w, &["store", "path-info", &manifest])["size"]
        .as_u64()
        .unwrap();
    // v1's unique files are node-b's and the manifest's, plus node-b's mirror and the sidecars
    // and root records that go with them (checked to the byte below).
    let unique_content = v1["unique"]["content"].as_u64().unwrap();
    assert!(unique_content > node_b_size + manifest_size, "{v1}");
    assert!(v1["shared"]["disk"].as_u64().unwrap() > 0);
    let v1_unique = v1["unique"].clone();
    let garbage = du["garbage"]["disk"].as_u64().unwrap();
    let gen1 = home.join(".comfix/generations/1");
    let gen1_disk = w.env.disk_bytes(&[&gen1]) - w.env.disk_bytes(&[]);

    // Old generations go first, never the current one.
    let dry = comfix_json(&w, &["gc", "--delete-older-than", "0s", "--dry-run"]);
    assert_eq!(dry["removed_generations"].as_array().unwrap().len(), 1);
    assert!(
        home.join(".comfix/generations/1").is_dir(),
        "--dry-run removes nothing"
    );
    // The generation's own files, exactly what du said only v1 holds, and today's garbage.
    assert_eq!(
        dry["report"]["freed_bytes"].as_u64().unwrap(),
        gen1_disk + v1_unique["disk"].as_u64().unwrap() + garbage,
        "{dry}"
    );
    let before_disk = w.env.disk_bytes(&[&home]);
    let out = comfix_json(&w, &["gc", "--delete-older-than", "0s"]);
    assert_eq!(out["removed_generations"].as_array().unwrap().len(), 1);
    assert_eq!(out["report"]["freed_bytes"], dry["report"]["freed_bytes"]);
    assert_eq!(
        before_disk - w.env.disk_bytes(&[&home]),
        out["report"]["freed_bytes"].as_u64().unwrap()
    );
    assert!(
        !home.join(".comfix/generations/1").exists() && home.join(".comfix/generations/2").is_dir()
    );
    assert!(!valid_paths(&w).contains(&node_b));

    // A pin keeps a path; --max-freed stops early.
    let spare = w.env.path("spare");
    write_tree(&spare, &[("a.bin", &[1u8; 5000]), ("b.bin", &[2u8; 7000])]);
    let spare_path = w.env.add(&spare);
    let spare_name = spare_path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for i in 0..3u8 {
        let f = w.env.path(&format!("extra{i}.bin"));
        fs::write(&f, vec![i + 10; 4096]).unwrap();
        w.env.add(&f);
    }
    w.env.ok(&[
        "store",
        "pin",
        spare_path.to_str().unwrap(),
        "--name",
        "keep",
    ]);
    let limited = comfix_json(&w, &["gc", "--max-freed", "1"]);
    assert_eq!(
        limited["report"]["deleted_paths"].as_array().unwrap().len(),
        1,
        "{limited}"
    );
    let rest = comfix_json(&w, &["gc"]);
    assert_eq!(rest["report"]["deleted_paths"].as_array().unwrap().len(), 2);
    assert!(valid_paths(&w).contains(&spare_name), "pinned");
    w.env.ok(&["store", "unpin", "keep"]);
    let sidecar = fs::metadata(w.env.store.join(format!("meta/{spare_name}.json")))
        .unwrap()
        .len();
    let freed = comfix_json(&w, &["gc"]);
    assert_eq!(freed["report"]["deleted_paths"], json!([spare_name]));
    assert_eq!(freed["report"]["freed_content_bytes"], 12000 + sidecar);
}

#[test]
fn verify_repair_restores_a_corrupted_model_and_node_file() {
    let w = World::new();
    two_versions(&w);
    let home = w.env.path("home");
    realize(&w, "v1", &home);
    let lock: Value = read_json(&w.env.work.join("versions/v1.lock.json"));
    let model = w.store_path(lock["models"][0]["store_path"].as_str().unwrap());
    let node = w.store_path(
        lock["custom_nodes"][0]["git"]["store_path"]
            .as_str()
            .unwrap(),
    );
    let mut bad = w.model.clone();
    bad[1000] ^= 0xff;
    overwrite(&model, &bad);
    overwrite(&node.join("__init__.py"), b"A = 9\n");
    let out = w
        .cmd(&w.env.store)
        .args(["store", "verify", "--check-contents"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("corrupted\t"))
            .count(),
        2,
        "{}",
        stdout(&out)
    );

    let out = w
        .cmd(&w.env.store)
        .args(["store", "verify", "--repair"])
        .ok();
    assert_eq!(
        stderr(&out).matches("repaired\t").count(),
        2,
        "{}",
        stderr(&out)
    );
    w.cmd(&w.env.store)
        .args(["store", "verify", "--check-contents"])
        .ok();
    assert_eq!(fs::read(&model).unwrap(), w.model);
    assert_eq!(
        fs::read(home.join("models/unet/unet.safetensors")).unwrap(),
        w.model,
        "the home's link sees the repair"
    );
    assert_eq!(fs::read(node.join("__init__.py")).unwrap(), b"A = 1\n");
}

/// A home that was moved (renamed) loses nothing: until a command runs in it, the collector keeps
/// what it used for the grace period; its next command registers its generations where it is;
/// commands without `--target` find the one home the store knows, or say where they looked.
#[test]
fn a_moved_home_is_kept_then_registered_again_where_it_is() {
    let w = World::new();
    two_versions(&w);
    let home = w.env.path("home");
    realize(&w, "v1", &home);
    let used = lock_paths(&w, "v1");
    let moved = w.env.path("moved");
    fs::rename(&home, &moved).unwrap();

    let roots = comfix_json(&w, &["roots"]);
    assert!(
        roots
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["home_gone"] == true),
        "{roots}"
    );
    let out = w.cmd(&w.env.store).arg("gc").ok();
    says(&out, "the home is gone");
    assert!(
        used.is_subset(&valid_paths(&w)),
        "the grace period keeps it"
    );

    // Found without `--target`: the one home the store knows is the old one, which is gone; from
    // inside the moved home it is the current directory.
    let status = w
        .cmd(&w.env.store)
        .args(["--json", "status"])
        .current_dir(&moved)
        .ok();
    says(&status, "registered its 1 generation(s) as GC roots again");
    let roots = comfix_json(&w, &["roots"]);
    let name = format!("home:{}#1", moved.display());
    assert!(
        roots
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == name.as_str() && r["live"] == true),
        "{roots}"
    );
    // With no grace at all, the old roots go and nothing the moved home uses does.
    comfix_json(&w, &["gc", "--home-grace", "0s"]);
    assert!(used.is_subset(&valid_paths(&w)));
    assert!(moved.join("ComfyUI").exists());

    // From elsewhere: the one home the store knows.
    let status = comfix_json(&w, &["status"]);
    assert_eq!(status["target"], moved.display().to_string());
    // Two homes: named, and the command says where it looked.
    realize(&w, "v2", &w.env.path("second"));
    let out = w.cmd(&w.env.store).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("`$COMFY_HOME` is not set"), "{err}");
    assert!(err.contains("the store knows 2 homes"), "{err}");
    assert!(err.contains(&moved.display().to_string()), "{err}");
    w.cmd(&w.env.store)
        .arg("status")
        .env("COMFY_HOME", &moved)
        .ok();
}

/// `store pin <ID>` roots a version's locked closure through a manifest the executor writes (a
/// `write-manifest` derivation, reported with `-v`); gc keeps all of it until it is unpinned.
#[test]
fn a_pinned_version_keeps_its_closure_until_unpinned() {
    let w = World::new();
    two_versions(&w);
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    let closure = lock_paths(&w, "v1");
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "-v", "store", "pin", "v1"])
        .ok();
    let pinned: Value = crate::support::json_of(&out);
    assert_eq!(pinned["root"], "pin:v1", "{pinned}");
    let manifest = pinned["path"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(manifest.ends_with("-pin-v1"), "{manifest}");
    assert!(
        crate::support::stderr(&out).contains("derive{kind=\"write-manifest\""),
        "the manifest is a derivation the executor ran"
    );
    comfix_json(&w, &["gc"]);
    let kept = valid_paths(&w);
    for path in closure.iter().chain([&manifest]) {
        assert!(kept.contains(path), "{path} was collected while pinned");
    }
    w.cmd(&w.env.store).args(["store", "unpin", "v1"]).ok();
    comfix_json(&w, &["gc"]);
    let left = valid_paths(&w);
    assert!(
        closure.iter().all(|p| !left.contains(p)) && !left.contains(&manifest),
        "{left:?}"
    );
}
