//! Reads out of the store are verified: a copy with a damaged object fails the realize, naming
//! the file and the repair; `store verify` sees writable files and missing objects, and
//! `--repair` restores them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

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
    crate::realize::realize(w, "v1", home, &[])
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
    let core = w.lock()["comfy"]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
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
    assert!(
        !second.join("ComfyUI").exists(),
        "no generation was switched to"
    );
    let leftovers: Vec<_> = fs::read_dir(second.join(".comfix/generations"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "the unfinished generation is gone: {leftovers:?}"
    );

    w.cmd(&w.env.store)
        .args(["store", "verify", "--repair"])
        .ok();
    ok(realize(&w, &second));
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
    let core = w.lock()["comfy"]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
    let main_py = w.store_path(&core).join("main.py");
    let object = object_of(&w.env, &main_py);
    fs::remove_file(&object).unwrap();
    // Found by a stat alone (its link count), without hashing anything.
    let out = w.env.run(&["store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("missing-object"), "{}", stdout(&out));
    assert!(stdout(&out).contains("main.py"), "{}", stdout(&out));
    let out = w.env.run(&["store", "verify", "--check-contents"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("missing-object"), "{}", stdout(&out));
    assert!(stdout(&out).contains("main.py"), "{}", stdout(&out));

    ok(w.env.run(&["store", "verify", "--repair"]));
    assert_eq!(
        fs::metadata(fs::canonicalize(&model).unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o444
    );
    assert_eq!(
        inode(&object),
        inode(&main_py),
        "the object is linked again"
    );
    w.env.ok(&["store", "verify", "--check-contents"]);
}

/// A tmpfs of `mib` MiB at `dir`, or `None` (with the reason printed) where it cannot be mounted.
pub(crate) fn small_filesystem(dir: &Path, mib: u64) -> Option<Mounted> {
    fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "skipping: cannot mount a tmpfs here ({})",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(Mounted(dir.to_path_buf()))
}

pub(crate) struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn downloads_that_cannot_fit_fail_before_writing() {
    let w = World::new();
    w.write_spec(&spec(&w));
    // The model is 3 MiB; a 2 MiB filesystem cannot hold it.
    let small = w.env.path("small");
    let Some(_mounted) = small_filesystem(&small, 2) else {
        return;
    };
    let store = small.join("store");
    let out = w.resolve_in(&store, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("needs 3.0 MiB"), "{err}");
    assert!(err.contains("free at least"), "{err}");
    let parts: Vec<_> = fs::read_dir(store.join("tmp/downloads"))
        .map(|d| {
            d.flatten()
                .filter(|e| fs::metadata(e.path()).is_ok_and(|m| m.len() > 0))
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(parts.is_empty(), "nothing partial kept: {parts:?}");

    // With the lock pinning the size, the whole version's need is known up front.
    ok(w.resolve(&[]));
    let before = w.cdn.requests().len();
    let out = w.resolve_in(&store, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "the models to download needs");
    assert_eq!(w.cdn.requests().len(), before, "nothing was downloaded");
}

/// `dir` bind-mounted read-only at `at`, or `None` (with the reason printed) where it cannot be.
fn read_only_view(dir: &Path, at: &Path) -> Option<Mounted> {
    fs::create_dir_all(at).unwrap();
    let bind = std::process::Command::new("mount")
        .arg("--bind")
        .arg(dir)
        .arg(at)
        .output()
        .ok()?;
    if !bind.status.success() {
        eprintln!(
            "skipping: cannot bind-mount here ({})",
            String::from_utf8_lossy(&bind.stderr)
        );
        return None;
    }
    let mounted = Mounted(at.to_path_buf());
    let ro = std::process::Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(at)
        .output()
        .ok()?;
    if !ro.status.success() {
        eprintln!(
            "skipping: cannot remount read-only ({})",
            String::from_utf8_lossy(&ro.stderr)
        );
        return None;
    }
    Some(mounted)
}

#[test]
fn a_read_only_store_serves_reads_and_refuses_writes() {
    let w = World::new();
    w.write_spec(&spec(&w));
    ok(realize(&w, &w.env.path("home")));
    let view = w.env.path("ro-store");
    let Some(_mounted) = read_only_view(&w.env.store, &view) else {
        return;
    };
    let run = |args: &[&str]| w.cmd(&view).args(args).output().unwrap();

    // Reads work.
    for args in [
        &["store", "ls"][..],
        &["store", "verify", "--check-contents"],
        &["store", "du"],
        &["roots"],
    ] {
        ok(run(args));
    }
    let first = stdout(&run(&["store", "ls"]));
    let name = first.lines().next().unwrap().split('\t').next().unwrap();
    ok(run(&["store", "path-info", name]));
    w.cmd(&view)
        .args(["status", "--target"])
        .arg(w.env.path("home"))
        .ok();

    // A version the store holds realizes by copy, without a GC root (said so).
    let home2 = w.env.path("home2");
    let out = w
        .cmd(&view)
        .args(["realize", "v1", "--link-mode", "copy", "--target"])
        .arg(&home2)
        .ok();
    says(&out, "not recorded as a GC root");
    assert!(home2.join("ComfyUI/main.py").is_file());
    assert!(fs::read_dir(home2.join("models/unet")).unwrap().count() == 1);

    // Writers say the store is read-only, and exit 1.
    let file = w.env.path("new.bin");
    fs::write(&file, b"new").unwrap();
    let add = ["store", "add", file.to_str().unwrap()];
    for args in [&add[..], &["gc"], &["store", "pin", name, "--name", "x"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is read-only"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}
