//! A store never takes a lost database for an empty one: commands refuse, nothing is deleted,
//! and `store rebuild-db` gets the registrations and roots back from what is on disk. Homes and
//! stores never contain each other.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use serde_json::json;

use crate::support::*;

/// A resolved and realized version: core, git nodes, registry node, models, and its home root.
fn realized(w: &World) -> std::path::PathBuf {
    let mut spec = w.default_spec();
    spec["models"] = json!([
        { "source": w.cdn.url("/mirror/unet.safetensors"), "target_subdir": "unet" }
    ]);
    w.write_spec(&spec);
    let home = w.env.path("home");
    ok(crate::realize::realize(w, "v1", &home, &[]));
    home
}

fn remove_db(store: &Path) {
    for name in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm"] {
        let _ = fs::remove_file(store.join("db").join(name));
    }
}

fn path_count(store: &Path) -> usize {
    fs::read_dir(store.join("paths")).unwrap().count()
}

#[test]
fn a_lost_database_is_refused_then_rebuilt_with_its_roots() {
    let w = World::new();
    let home = realized(&w);
    let listed = w.env.ok(&["store", "ls"]);
    let roots = w.env.ok(&["roots"]);
    let before = path_count(&w.env.store);

    remove_db(&w.env.store);
    for args in [
        &["store", "verify"][..],
        &["gc"],
        &["store", "ls"],
        &["roots"],
    ] {
        let out = w.env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("database") && err.contains("missing"), "{err}");
        assert!(err.contains("comfix store rebuild-db"), "{err}");
    }
    assert_eq!(path_count(&w.env.store), before, "nothing was deleted");
    assert!(
        !w.env.store.join("db/db.sqlite").exists(),
        "no empty db was made"
    );

    ok(w.env.run(&["store", "rebuild-db"]));
    assert_eq!(w.env.ok(&["store", "ls"]), listed, "every path is back");
    assert_eq!(w.env.ok(&["roots"]), roots, "and every root");
    w.env.ok(&["store", "verify", "--check-contents"]);
    // The home is still a root: gc keeps all of it.
    w.env.ok(&["gc"]);
    assert_eq!(w.env.ok(&["store", "ls"]), listed);
    assert_eq!(
        fs::read(home.join("models/unet/unet.safetensors")).unwrap(),
        w.model
    );
    // A readable db is not rebuilt over.
    let out = w.env.run(&["store", "rebuild-db"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "nothing to rebuild");
}

#[test]
fn a_damaged_database_is_moved_aside_and_damaged_paths_are_not_registered() {
    let w = World::new();
    realized(&w);
    let listed: Vec<String> = w
        .env
        .ok(&["store", "ls"])
        .lines()
        .map(String::from)
        .collect();
    remove_db(&w.env.store);
    fs::write(w.env.store.join("db/db.sqlite"), vec![0x5a; 8192]).unwrap();
    let out = w.env.run(&["store", "ls"]);
    assert_ne!(out.status.code(), Some(0));
    says(&out, "rebuild-db");

    // Damage one file of the model's path (its only object): that path is not recovered.
    let model = listed
        .iter()
        .find(|p| p.ends_with("-unet.safetensors"))
        .unwrap()
        .clone();
    overwrite(Path::new(&model), b"not the model");
    let out = w.env.run(&["--json", "store", "rebuild-db"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = json_of(&out);
    let unrecovered: Vec<&str> = report["unrecovered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u[0].as_str().unwrap())
        .collect();
    let model_name = Path::new(&model).file_name().unwrap().to_str().unwrap();
    assert!(unrecovered.contains(&model_name), "{report}");
    // The home manifest references the model, so it is not registered either.
    assert!(
        unrecovered.iter().any(|u| u.contains("-home-v1")),
        "{report}"
    );
    assert!(report["old_db"].as_str().unwrap().contains("broken"));
    let now = w.env.ok(&["store", "ls"]);
    assert!(!now.contains(model_name));
    w.env.ok(&["store", "verify"]);
    // A collection would delete what could not be recovered: it refuses until told to.
    let out = w.env.run(&["gc"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "could not recover");
    says(&out, "--delete-unrecovered");
    assert!(Path::new(&model).exists());
    w.env.ok(&["gc", "--delete-unrecovered"]);
    assert!(!Path::new(&model).exists());
    w.env.ok(&["gc"]);
    w.env.ok(&["store", "verify", "--check-contents"]);
}

/// The database lost a second time with more of its metadata: with `roots/` gone too, the
/// rebuild pins the manifests it finds (every generation, every pinned version) so the next
/// collection deletes nothing a home uses, and says so; with `meta/` gone too, what cannot be
/// proved is not registered and the collection refuses; `rebuild-db` works with `db/` removed
/// whole.
#[test]
fn a_second_metadata_loss_loses_nothing_a_home_uses() {
    let w = World::new();
    let home = realized(&w);
    let listed = w.env.ok(&["store", "ls"]);
    let before = path_count(&w.env.store);
    let store = &w.env.store;
    let copy = w.env.path("store-copy");
    assert!(std::process::Command::new("cp")
        .args(["-a"])
        .arg(store)
        .arg(&copy)
        .status()
        .unwrap()
        .success());

    fs::remove_dir_all(store.join("db")).unwrap();
    fs::remove_dir_all(store.join("roots")).unwrap();
    let out = w.env.run(&["store", "rebuild-db"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    says(&out, "pinned as `recovered-");
    assert_eq!(w.env.ok(&["store", "ls"]), listed);
    w.env.ok(&["gc"]);
    assert_eq!(
        w.env.ok(&["store", "ls"]),
        listed,
        "gc deleted a home's paths"
    );
    assert_eq!(path_count(store), before);
    assert_eq!(
        fs::read(home.join("models/unet/unet.safetensors")).unwrap(),
        w.model
    );
    w.env.ok(&["store", "verify", "--check-contents"]);

    // The same store, its db and its sidecars lost.
    let env_copy = |args: &[&str]| {
        w.env
            .cmd_without_store()
            .arg("--store")
            .arg(&copy)
            .args(args)
            .output()
            .unwrap()
    };
    fs::remove_dir_all(copy.join("db")).unwrap();
    let meta = copy.join("meta");
    for entry in fs::read_dir(&meta).unwrap().flatten() {
        fs::remove_file(entry.path()).unwrap();
    }
    let out = env_copy(&["store", "rebuild-db"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "could not be recovered");
    let out = env_copy(&["gc"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "could not recover");
    assert_eq!(path_count(&copy), before, "gc deleted unrecovered paths");
}

#[test]
fn rebuild_db_killed_at_any_registration_changes_nothing() {
    let w = World::new();
    realized(&w);
    let listed = w.env.ok(&["store", "ls"]);
    remove_db(&w.env.store);
    let faults = w.env.path("faults");
    fs::create_dir_all(&faults).unwrap();
    for point in ["rebuild-registered", "rebuild-written"] {
        let mut child = w
            .env
            .cmd()
            .args(["store", "rebuild-db"])
            .env("COMFIX_FAULT_PAUSE", point)
            .env("COMFIX_FAULT_DIR", &faults)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&faults.join(point), &mut child);
        child.kill().unwrap();
        child.wait().unwrap();
        fs::remove_file(faults.join(point)).unwrap();
        // Still no database: commands still refuse rather than see an empty store.
        let out = w.env.run(&["gc"]);
        assert_eq!(out.status.code(), Some(1), "after a kill at {point}");
    }
    w.env.ok(&["store", "rebuild-db"]);
    assert_eq!(w.env.ok(&["store", "ls"]), listed);
}

#[test]
fn a_store_without_sidecars_gets_them_from_its_db() {
    let env = TestEnv::new();
    let tree = env.path("tree");
    write_tree(&tree, &[("a.txt", b"a"), ("b/c.txt", b"c")]);
    let a = env.add(&tree);
    let file = env.path("one.bin");
    fs::write(&file, b"one").unwrap();
    let b = env.ok(&[
        "store",
        "add",
        file.to_str().unwrap(),
        "--ref",
        a.to_str().unwrap(),
    ]);
    env.ok(&["store", "pin", b.trim(), "--name", "keep"]);
    // As a store made before sidecars existed.
    fs::remove_dir_all(env.store.join("meta")).unwrap();
    fs::remove_dir_all(env.store.join("roots")).unwrap();
    let listed = env.ok(&["store", "ls"]);
    assert!(env.store.join("meta/.complete").exists());
    remove_db(&env.store);
    env.ok(&["store", "rebuild-db"]);
    assert_eq!(env.ok(&["store", "ls"]), listed);
    assert!(env.ok(&["roots"]).contains("pin:keep"));
    let info = env.ok(&["store", "path-info", b.trim()]);
    assert!(
        info.contains(a.file_name().unwrap().to_str().unwrap()),
        "{info}"
    );
}

#[test]
fn homes_and_stores_never_contain_each_other() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    let store = w.env.store.clone();
    fs::create_dir_all(store.join("tmp")).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--target".into(), store.display().to_string()],
            "inside the store",
        ),
        (
            vec![
                "--target".into(),
                store.join("paths/x").display().to_string(),
            ],
            "inside the store",
        ),
        (
            vec![
                "--target".into(),
                store.join("tmp/../tmp/home").display().to_string(),
            ],
            "inside the store",
        ),
        (
            vec!["--target".into(), w.env.dir.path().display().to_string()],
            "The store",
        ),
        (
            vec![
                "--target".into(),
                w.env.path("home").display().to_string(),
                "--models-dir".into(),
                store.join("models").display().to_string(),
            ],
            "the models directory",
        ),
    ];
    for (args, expected) in cases {
        let out = w
            .cmd(&store)
            .args(["realize", "v1"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        says(&out, "never contain each other");
    }
    // A symlink into the store is seen through.
    let link = w.env.path("sneaky");
    std::os::unix::fs::symlink(store.join("tmp"), &link).unwrap();
    let out = w
        .cmd(&store)
        .args(["realize", "v1", "--target"])
        .arg(link.join("home"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !store.join("tmp/home").exists(),
        "nothing was written there"
    );
    assert!(!store.join("paths/x").exists());
}
