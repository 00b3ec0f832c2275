//! Reads out of the store are verified: a copy with a damaged object fails the realize, naming
//! the file and the repair; `store verify` sees writable files and missing objects, and
//! `--repair` restores them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::resolve::World;
use crate::support::*;

fn spec(w: &World) -> serde_json::Value {
    let mut spec = w.default_spec();
    spec["custom_nodes"] = json!([]);
    spec["models"] = json!([
        { "source": w.cdn.url("/mirror/unet.safetensors"), "target_subdir": "unet" }
    ]);
    spec
}

fn realize(w: &World, home: &Path) -> std::process::Output {
    w.cmd(&w.env.store)
        .args(["realize", "v1", "--target"])
        .arg(home)
        .output()
        .unwrap()
}

/// The object file of `file` inside a store path (the same inode).
fn object_of(env: &TestEnv, file: &Path) -> PathBuf {
    let ino = inode(file);
    env.objects()
        .into_iter()
        .find(|o| inode(o) == ino)
        .expect("every store file is an object")
}

#[test]
fn a_damaged_object_fails_the_copy_and_is_repaired() {
    let w = World::new();
    w.write_spec(&spec(&w));
    let first = w.env.path("home-1");
    assert!(realize(&w, &first).status.success());
    let core = w.lock()["comfy"]["store_path"].as_str().unwrap().to_string();
    let main_py = w.store_path(&core).join("main.py");
    let good = fs::read(&main_py).unwrap();
    // One flipped byte in the object every copy of main.py comes from.
    let mut bad = good.clone();
    bad[0] ^= 0x01;
    overwrite(&object_of(&w.env, &main_py), &bad);

    let second = w.env.path("home-2");
    let out = realize(&w, &second);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&core) && err.contains("main.py"), "{err}");
    assert!(err.contains("comfix store verify --repair"), "{err}");
    assert!(!second.join("ComfyUI").exists(), "no generation was switched to");

    let out = w.cmd(&w.env.store).args(["store", "verify", "--repair"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = realize(&w, &second);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(second.join("ComfyUI/main.py")).unwrap(), good);
}

#[test]
fn writable_files_and_missing_objects_are_found_and_repaired() {
    let w = World::new();
    w.write_spec(&spec(&w));
    let home = w.env.path("home");
    assert!(realize(&w, &home).status.success());
    w.env.ok(&["store", "verify", "--check-contents"]);

    // chmod through the home's model link changes the store's file.
    let model = home.join("models/unet/unet.safetensors");
    fs::set_permissions(&model, fs::Permissions::from_mode(0o666)).unwrap();
    let out = w.env.run(&["store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("writable"), "{}", stdout(&out));

    // A deleted object is reported (its path's bytes are intact).
    let core = w.lock()["comfy"]["store_path"].as_str().unwrap().to_string();
    let main_py = w.store_path(&core).join("main.py");
    let object = object_of(&w.env, &main_py);
    fs::remove_file(&object).unwrap();
    let out = w.env.run(&["store", "verify", "--check-contents"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("missing-object"), "{}", stdout(&out));
    assert!(stdout(&out).contains("main.py"), "{}", stdout(&out));

    let out = w.env.run(&["store", "verify", "--repair"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::metadata(fs::canonicalize(&model).unwrap()).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert_eq!(inode(&object), inode(&main_py), "the object is linked again");
    w.env.ok(&["store", "verify", "--check-contents"]);
}
