//! `store add`: content addressing, deduplication, immutability, references, concurrency.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::*;

fn sample_tree(root: &Path) {
    write_tree(
        root,
        &[
            ("main.py", b"print('hello')\n"),
            ("nodes/a.py", b"A = 1\n"),
            ("nodes/b.py", b"B = 2\n"),
            ("nodes/same-as-a.py", b"A = 1\n"),
            ("bin/run", b"#!/bin/sh\necho run\n"),
        ],
    );
    set_executable(&root.join("bin/run"), true);
    std::os::unix::fs::symlink("nodes/a.py", root.join("link")).unwrap();
}

#[test]
fn same_tree_gives_same_path_and_one_change_gives_another() {
    let env = TestEnv::new();
    let tree = env.path("tree");
    sample_tree(&tree);
    let first = env.add(&tree);
    let again = env.add(&tree);
    assert_eq!(
        first, again,
        "adding the same tree twice gives the same store path"
    );

    // A copy elsewhere with the same name is the same path too: only content and name count.
    let copy = env.path("copy/tree");
    sample_tree(&copy);
    assert_eq!(env.add(&copy), first);

    type Change = fn(&Path);
    let variants: [(&str, Change); 4] = [
        ("one byte", |t| {
            fs::write(t.join("nodes/b.py"), b"B = 3\n").unwrap()
        }),
        ("executable bit", |t| {
            set_executable(&t.join("main.py"), true)
        }),
        ("symlink target", |t| {
            fs::remove_file(t.join("link")).unwrap();
            std::os::unix::fs::symlink("nodes/b.py", t.join("link")).unwrap();
        }),
        ("file name", |t| {
            fs::rename(t.join("nodes/b.py"), t.join("nodes/c.py")).unwrap()
        }),
    ];
    let mut seen = vec![first.clone()];
    for (what, change) in variants {
        let variant = env.path(&format!("variant-{}/tree", what.replace(' ', "-")));
        sample_tree(&variant);
        change(&variant);
        let path = env.add(&variant);
        assert!(
            !seen.contains(&path),
            "a tree differing in its {what} got the same path {path:?}"
        );
        seen.push(path);
    }
}

#[test]
fn identical_contents_are_stored_once() {
    let env = TestEnv::new();
    let one = env.path("one");
    sample_tree(&one);
    let first = env.add(&one);
    // Two identical files inside one tree share an inode.
    assert_eq!(
        inode(&first.join("nodes/a.py")),
        inode(&first.join("nodes/same-as-a.py"))
    );
    let objects_before = env.objects().len();
    let bytes_before = env.content_bytes();
    // 3 distinct non-executable contents + 1 executable.
    assert_eq!(objects_before, 4);

    // A second tree, differently shaped, holding only contents the store already has.
    let two = env.path("two");
    write_tree(
        &two,
        &[("x/y/z.py", b"A = 1\n"), ("other.py", b"print('hello')\n")],
    );
    let second = env.add(&two);
    assert_ne!(first, second);
    assert_eq!(
        inode(&second.join("x/y/z.py")),
        inode(&first.join("nodes/a.py"))
    );
    assert_eq!(
        inode(&second.join("other.py")),
        inode(&first.join("main.py"))
    );
    assert_eq!(env.objects().len(), objects_before, "no new objects");
    assert_eq!(env.content_bytes(), bytes_before, "disk usage unchanged");

    // The same bytes with a different executable bit are a different object (modes live on inodes).
    let three = env.path("three");
    write_tree(&three, &[("a.py", b"A = 1\n")]);
    set_executable(&three.join("a.py"), true);
    let third = env.add(&three);
    assert_ne!(inode(&third.join("a.py")), inode(&first.join("nodes/a.py")));
    assert_eq!(env.objects().len(), objects_before + 1);
}

#[test]
fn store_paths_are_read_only() {
    let env = TestEnv::new();
    let tree = env.path("tree");
    sample_tree(&tree);
    let path = env.add(&tree);
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o555);
    assert_eq!(mode(&path.join("nodes")), 0o555);
    assert_eq!(mode(&path.join("main.py")), 0o444);
    assert_eq!(mode(&path.join("bin/run")), 0o555);
    assert_eq!(
        fs::read_link(path.join("link")).unwrap(),
        Path::new("nodes/a.py")
    );
}

#[test]
fn single_files_and_large_files() {
    let env = TestEnv::new();
    let small = env.path("weights.txt");
    fs::write(&small, b"tiny").unwrap();
    let small_path = env.add(&small);
    assert!(small_path.is_file());
    assert_eq!(fs::read(&small_path).unwrap(), b"tiny");
    assert!(small_path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .ends_with("-weights.txt"));

    // Large files go through the mmap/parallel path; content must survive intact.
    let big = env.path("model.safetensors");
    let data: Vec<u8> = (0..9 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    fs::write(&big, &data).unwrap();
    let big_path = env.add(&big);
    assert_eq!(fs::read(&big_path).unwrap(), data);
    let info = env.json(&["store", "path-info", big_path.to_str().unwrap()]);
    assert_eq!(info["size"], data.len() as u64);
    assert_eq!(info["kind"], "file");
    // Adding it again links the existing object.
    let copy = env.path("copy/model.safetensors");
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    fs::write(&copy, &data).unwrap();
    assert_eq!(env.add(&copy), big_path);
    assert_eq!(env.objects().len(), 2);
}

#[test]
fn names_are_checked_and_references_must_be_valid() {
    let env = TestEnv::new();
    let file = env.path("f.txt");
    fs::write(&file, b"x").unwrap();
    let out = env.run(&["store", "add", file.to_str().unwrap(), "--name", "../evil"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "Invalid store path name `../evil`");
    assert!(stderr(&out).contains("hint:"));

    let out = env.run(&["store", "add", file.to_str().unwrap(), "--ref", "0123-nope"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "`0123-nope` is not a valid path");
    assert_eq!(
        env.ok(&["store", "ls"]),
        "",
        "nothing registered after failures"
    );

    let out = env.run(&["store", "add", env.path("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"));
}

#[test]
fn path_info_reports_references_and_closure() {
    let env = TestEnv::new();
    let dep_src = env.path("dep");
    write_tree(&dep_src, &[("lib.py", &[b'x'; 1000])]);
    let dep = env.add(&dep_src);
    let mid_src = env.path("mid");
    write_tree(&mid_src, &[("mid.py", &[b'y'; 300])]);
    let mid = PathBuf::from(
        env.ok(&[
            "store",
            "add",
            mid_src.to_str().unwrap(),
            "--ref",
            dep.to_str().unwrap(),
        ])
        .trim(),
    );
    let top_src = env.path("top.txt");
    fs::write(&top_src, [b'z'; 20]).unwrap();
    let dep_name = dep.file_name().unwrap().to_str().unwrap();
    let top = PathBuf::from(
        env.ok(&[
            "store",
            "add",
            top_src.to_str().unwrap(),
            "--ref",
            mid.to_str().unwrap(),
            "--ref",
            dep_name,
        ])
        .trim(),
    );

    let info = env.json(&["store", "path-info", top.to_str().unwrap(), "--closure"]);
    assert_eq!(info["size"], 20);
    assert_eq!(info["closure_size"], 1320);
    let refs: Vec<&str> = info["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut expected = vec![dep.to_str().unwrap(), mid.to_str().unwrap()];
    expected.sort();
    assert_eq!(refs, expected);
    assert_eq!(info["closure"].as_array().unwrap().len(), 3);
    assert!(info["registered"].as_str().unwrap().ends_with('Z'));

    let human = env.ok(&["store", "path-info", top.to_str().unwrap()]);
    assert!(
        human.contains("closure size:  1.3 KiB (1320 bytes)"),
        "{human}"
    );
    // A path inside a store path names that store path.
    let inner = env.json(&["store", "path-info", mid.join("mid.py").to_str().unwrap()]);
    assert_eq!(inner["closure_size"], 1300);
}

use std::path::PathBuf;

#[test]
fn concurrent_adds_of_overlapping_trees_share_objects() {
    let env = TestEnv::new();
    let shared: Vec<(String, Vec<u8>)> = (0..400)
        .map(|i| {
            (
                format!("shared/{i:03}.py"),
                format!("shared file {i}\n").into_bytes(),
            )
        })
        .collect();
    for (tree, own) in [("a", "only in a"), ("b", "only in b")] {
        let root = env.path(tree);
        for (rel, contents) in &shared {
            write_tree(&root, &[(rel.as_str(), contents.as_slice())]);
        }
        for i in 0..100 {
            write_tree(
                &root,
                &[(
                    format!("own/{i}.txt").as_str(),
                    format!("{own} {i}").as_bytes(),
                )],
            );
        }
    }
    // Several rounds to give the race many chances.
    let children: Vec<_> = ["a", "b", "a", "b"]
        .iter()
        .map(|tree| {
            env.cmd()
                .args(["store", "add", env.path(tree).to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outputs {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let a = PathBuf::from(stdout(&outputs[0]).trim());
    let b = PathBuf::from(stdout(&outputs[1]).trim());
    assert_eq!(a, PathBuf::from(stdout(&outputs[2]).trim()));
    assert_eq!(b, PathBuf::from(stdout(&outputs[3]).trim()));
    assert_eq!(
        env.objects().len(),
        400 + 200,
        "one object per distinct content"
    );
    for (rel, _) in &shared {
        assert_eq!(
            inode(&a.join(rel)),
            inode(&b.join(rel)),
            "{rel} is stored once"
        );
    }
    assert_eq!(env.ok(&["store", "ls"]).lines().count(), 2);
    env.ok(&["store", "verify", "--check-contents"]);
}

#[test]
fn references_are_part_of_the_path() {
    let env = TestEnv::new();
    let dep_src = env.path("dep.txt");
    fs::write(&dep_src, b"dep").unwrap();
    let dep = env.add(&dep_src);
    let src = env.path("app.txt");
    fs::write(&src, b"app").unwrap();
    let plain = env.add(&src);
    let with_ref = PathBuf::from(
        env.ok(&[
            "store",
            "add",
            src.to_str().unwrap(),
            "--ref",
            dep.to_str().unwrap(),
        ])
        .trim(),
    );
    assert_ne!(
        plain, with_ref,
        "same bytes with other references is another path"
    );
    let info = env.json(&["store", "path-info", plain.to_str().unwrap()]);
    assert_eq!(info["references"].as_array().unwrap().len(), 0);
    // They still share the object.
    assert_eq!(inode(&plain), inode(&with_ref));
}
