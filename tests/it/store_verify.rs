//! `store verify` finds exactly what is missing or corrupted.

use std::fs;

use crate::support::*;

#[test]
fn corrupted_object_is_reported_for_exactly_its_path() {
    let env = TestEnv::new();
    let good = env.path("good");
    write_tree(&good, &[("a.txt", b"shared"), ("b.txt", b"only good")]);
    let bad = env.path("bad");
    write_tree(&bad, &[("a.txt", b"shared"), ("c.txt", b"only bad")]);
    let good_path = env.add(&good);
    let bad_path = env.add(&bad);
    env.ok(&["store", "verify", "--check-contents"]);

    // Corrupt the object behind c.txt (same length, different bytes).
    overwrite(&bad_path.join("c.txt"), b"ONLY BAD");
    let out = env.run(&["store", "verify", "--check-contents"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = stdout(&out);
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("corrupted\t"))
        .collect();
    assert_eq!(lines.len(), 1, "{report}");
    assert!(
        lines[0].starts_with(&format!("corrupted\t{}\t", bad_path.display())),
        "{report}"
    );
    assert!(!report.contains(good_path.to_str().unwrap()));
    assert!(
        report.contains("corrupted-object\t"),
        "the object itself is named: {report}"
    );

    let json = serde_json::from_str::<serde_json::Value>(&stdout(&env.run(&[
        "--json",
        "store",
        "verify",
        "--check-contents",
    ])))
    .unwrap();
    let corrupted = json["corrupted"].as_array().unwrap();
    assert_eq!(corrupted.len(), 1);
    assert_eq!(corrupted[0]["path"], bad_path.to_str().unwrap());
    assert_ne!(corrupted[0]["expected"], corrupted[0]["actual"]);

    // Without --check-contents only existence is checked, and that still holds.
    env.ok(&["store", "verify"]);
}

#[test]
fn missing_path_is_reported() {
    let env = TestEnv::new();
    let file = env.path("f.txt");
    fs::write(&file, b"x").unwrap();
    let path = env.add(&file);
    fs::remove_file(&path).unwrap();
    let out = env.run(&["store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).trim(), format!("missing\t{}", path.display()));
    // Adding it again restores it.
    assert_eq!(env.add(&file), path);
    env.ok(&["store", "verify", "--check-contents"]);
}
