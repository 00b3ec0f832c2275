//! GC never fails a running process: realizes with `comfix gc` forced in at each of their pause
//! points, then ≥ 50 realizes while gc runs in a loop — on a store that must fetch again (its
//! homes removed, so gc collects everything) and on one that holds the version. Zero failures,
//! and the store verifies.

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

fn spawn_realize(w: &World, home: &Path, fault: Option<(&str, &Path)>) -> Child {
    let mut cmd = w.cmd(&w.env.store);
    cmd.args(["realize", "v1", "--target"])
        .arg(home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((point, dir)) = fault {
        cmd.env("COMFIX_FAULT_WAIT", point)
            .env("COMFIX_FAULT_DIR", dir);
    }
    cmd.spawn().unwrap()
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed:\n{}", stderr(&out));
}

fn remove_home(home: &Path) {
    if home.exists() {
        for entry in walkdir::WalkDir::new(home).into_iter().flatten() {
            if entry.file_type().is_dir() {
                let _ = fs::set_permissions(
                    entry.path(),
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                );
            }
        }
        fs::remove_dir_all(home).unwrap();
    }
}

#[test]
fn gc_forced_in_at_every_pause_point_of_realize() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    let faults = w.env.path("faults");
    fs::create_dir_all(&faults).unwrap();
    let points = [
        "realize-resolved",
        "add-staged",
        "add-objects-published",
        "add-renamed",
        "realize-built",
        "realize-switched",
    ];
    let mut interleavings = 0;
    for (i, point) in points.iter().enumerate() {
        // An empty store again: the realize fetches everything while gc runs.
        let home = w.env.path(&format!("home-{i}"));
        let mut child = spawn_realize(&w, &home, Some((point, &faults)));
        wait_for(&faults.join(point), &mut child);
        let gc = w
            .env
            .cmd()
            .arg("gc")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        fs::write(faults.join(format!("{point}.go")), b"").unwrap();
        finish(child, &format!("realize paused at {point}"));
        finish(gc, &format!("gc during {point}"));
        interleavings += 1;
        w.env.ok(&["store", "verify", "--check-contents"]);
        remove_home(&home);
        w.env.ok(&["gc", "--home-grace", "0s"]);
        for f in [point.to_string(), format!("{point}.go")] {
            let _ = fs::remove_file(faults.join(f));
        }
    }
    eprintln!("forced interleavings: {interleavings}");
}

#[test]
fn fifty_realizes_while_gc_loops() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    // The store exists before gc loops in it (gc does not create one).
    let first = spawn_realize(&w, &w.env.path("home-0"), None);
    finish(first, "the first realize");
    let stop = Arc::new(AtomicBool::new(false));
    let gcs = Arc::new(AtomicUsize::new(0));
    let gc_failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let looping = {
        let (stop, gcs, failures) = (stop.clone(), gcs.clone(), gc_failures.clone());
        let mut cmd = w.env.cmd();
        cmd.arg("gc");
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = cmd.output().unwrap();
                if !out.status.success() {
                    failures.lock().unwrap().push(stderr(&out));
                }
                gcs.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let start = Instant::now();
    let mut failures = Vec::new();
    let homes: Vec<_> = (0..3).map(|i| w.env.path(&format!("home-{i}"))).collect();
    let runs = 50;
    for i in 0..runs {
        // Every fifth run starts from a store whose homes are all gone (gc collects everything,
        // the realize fetches again); the others find most of the version in the store.
        if i % 5 == 0 {
            homes.iter().for_each(|h| remove_home(h));
        }
        let home = &homes[i % homes.len()];
        let out = spawn_realize(&w, home, None).wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(format!("run {i}: {}", stderr(&out)));
        }
    }
    stop.store(true, Ordering::SeqCst);
    looping.join().unwrap();
    eprintln!(
        "{runs} realizes, {} concurrent gc runs, in {:?}",
        gcs.load(Ordering::SeqCst),
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let gc_failures = gc_failures.lock().unwrap();
    assert!(
        gc_failures.is_empty(),
        "gc failed:\n{}",
        gc_failures.join("\n")
    );
    assert!(gcs.load(Ordering::SeqCst) >= 10, "gc really ran alongside");
    w.env.ok(&["store", "verify", "--check-contents"]);
}

#[test]
fn gc_removes_the_half_built_generation_of_a_killed_realize() {
    let w = World::new();
    let mut spec = w.default_spec();
    w.write_spec(&spec);
    let home = w.env.path("home");
    finish(spawn_realize(&w, &home, None), "the first realize");
    // Another version into the same home, killed while its manifest is being added.
    spec["models"] = serde_json::json!([]);
    w.write_spec(&spec);
    let faults = w.env.path("faults");
    fs::create_dir_all(&faults).unwrap();
    let mut child = w
        .cmd(&w.env.store)
        .args(["realize", "v1", "--target"])
        .arg(&home)
        .env("COMFIX_FAULT_PAUSE", "add-staged")
        .env("COMFIX_FAULT_DIR", &faults)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&faults.join("add-staged"), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let unfinished = home.join(".comfix/generations/2.tmp");
    assert!(
        unfinished.is_dir(),
        "the killed realize left its generation"
    );
    let out = w.env.ok(&["gc"]);
    assert!(!unfinished.exists(), "gc removed it: {out}");
    assert!(
        home.join(".comfix/generations/1").is_dir(),
        "the live one stays"
    );
    assert!(home.join("ComfyUI/main.py").is_file());
}
