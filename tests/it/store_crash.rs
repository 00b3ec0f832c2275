//! A `store add` killed with SIGKILL at any point leaves no registered path, a store that
//! verifies, and a next add that succeeds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

fn big_tree(root: &Path) {
    for i in 0..300 {
        write_tree(
            root,
            &[(
                format!("dir{}/f{i}.py", i % 7).as_str(),
                format!("content {i}\n").as_bytes(),
            )],
        );
    }
    let big: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    write_tree(root, &[("model.bin", &big)]);
}

fn assert_recovers(env: &TestEnv, tree: &Path) {
    // Killed before the store was created, there is no store: a read command says so.
    if env.store.join("VERSION").exists() {
        assert_eq!(
            env.ok(&["store", "ls"]),
            "",
            "the killed add registered nothing"
        );
        env.ok(&["store", "verify", "--check-contents"]);
    } else {
        let out = env.run(&["store", "ls"]);
        says(&out, "no comfix store");
    }
    let path = env.add(tree);
    assert_eq!(env.ok(&["store", "ls"]).trim(), path.to_str().unwrap());
    env.ok(&["store", "verify", "--check-contents"]);
    // And the result matches the source.
    assert_eq!(
        std::fs::read(path.join("dir3/f3.py")).unwrap(),
        std::fs::read(tree.join("dir3/f3.py")).unwrap()
    );
}

#[test]
fn killed_at_each_stage_of_add() {
    for point in ["add-staged", "add-objects-published", "add-renamed"] {
        let env = TestEnv::new();
        let tree = env.path("tree");
        big_tree(&tree);
        let fault_dir = env.path("fault");
        std::fs::create_dir_all(&fault_dir).unwrap();
        let mut child = env
            .cmd()
            .args(["store", "add", tree.to_str().unwrap()])
            .env("COMFIX_FAULT_PAUSE", point)
            .env("COMFIX_FAULT_DIR", &fault_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&fault_dir.join(point), &mut child);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_recovers(&env, &tree);
    }
}

#[test]
fn killed_at_arbitrary_moments() {
    // No hook: kill after growing delays, so some kills land in the middle of staging.
    let env = TestEnv::new();
    let tree = env.path("tree");
    big_tree(&tree);
    for delay_ms in [5u64, 20, 60] {
        let mut child = env
            .cmd()
            .args(["store", "add", tree.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !env.store.join("VERSION").exists() {
            // Killed before the store existed: there is none, and a read command says so.
            let out = env.run(&["store", "ls"]);
            says(&out, "no comfix store");
            continue;
        }
        let listed = env.ok(&["store", "ls"]);
        if status.success() {
            // It finished before the kill: then it must be complete and valid.
            assert_eq!(listed.lines().count(), 1);
            env.ok(&["store", "verify", "--check-contents"]);
            return;
        }
        assert_eq!(listed, "", "a killed add registered nothing");
        env.ok(&["store", "verify", "--check-contents"]);
    }
    let path: PathBuf = env.add(&tree);
    assert!(path.join("model.bin").is_file());
    env.ok(&["store", "verify", "--check-contents"]);
}
