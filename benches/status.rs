//! `status` of a home with a 20,000-file core (`COMFIX_BENCH_FILES`), realized by copy:
//!
//! - `cheap`: the default check (size, mtime, inode and change time of every managed file), next
//!   to `find -printf` of the same metadata (one `fstatat` per file, single-threaded);
//! - `cheap_cli`: `comfix status` as a process, next to `cli_version` (`comfix --version`);
//! - `noop_realize`: realizing the same lock into that home again (library call), trusting the
//!   directory stamps a clean full check recorded (`.comfix/checked.json`), and
//!   `noop_realize_full_check`: the same with that record removed first, so every file is looked at;
//! - `check_contents`: hashing every managed file, next to `b3sum --num-threads 2` of the same
//!   files (when `b3sum` is installed: `cargo install b3sum`) in the same run.
//!
//! Run: `cargo bench --bench status`. Data goes under `COMFIX_BENCH_DIR` (default: temp dir).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use comfix::lock::{Lock, LockedGit, LOCK_VERSION};
use comfix::realize::{self, LinkMode, RealizeOptions};
use comfix::reporter::NoReporter;
use comfix::store::Add;
use comfix::store::{AddOptions, Store};
use criterion::{criterion_group, criterion_main, Criterion};

fn write_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("pkg{:02}/mod{:03}", i % 50, (i / 50) % 40));
        fs::create_dir_all(&dir).unwrap();
        let size = 200 + (i * 7919) % 8000;
        let mut data = vec![0u8; size];
        blake3::Hasher::new()
            .update(&(i as u64).to_le_bytes())
            .finalize_xof()
            .fill(&mut data);
        fs::write(dir.join(format!("file{i}.py")), data).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let files: usize = std::env::var("COMFIX_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let base = std::env::var_os("COMFIX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let src = dir.path().join("ComfyUI");
    write_tree(&src, files);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let core = store
        .add_path(
            &src,
            &AddOptions {
                name: Some("ComfyUI".into()),
                references: vec![],
            },
            &NoReporter,
        )
        .unwrap()
        .record
        .name;
    let lock = Lock {
        lock_version: LOCK_VERSION,
        version_id: "bench".into(),
        comfy: LockedGit {
            repo: "https://example.invalid/ComfyUI".into(),
            git_ref: Some("master".into()),
            commit: "0".repeat(40),
            store_path: core,
        },
        custom_nodes: Vec::new(),
        models: Vec::new(),
        python: None,
        workflows: Vec::new(),
    };
    let home = dir.path().join("home");
    let options = RealizeOptions {
        target: home.clone(),
        models_dir: None,
        skip_models: false,
        link_mode: LinkMode::Copy,
        venv: None,
        not_fetched: Vec::new(),
        check: false,
        torch: None,
        in_place: Default::default(),
    };
    realize::realize(&store, &lock, &options).unwrap();
    let core_dir = home.join("ComfyUI/");
    let status = realize::status(&store, &home, true).unwrap();
    assert!(status.changed.is_empty() && status.missing.is_empty());

    let mut group = c.benchmark_group("status");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("cheap", |b| {
        b.iter(|| realize::status(&store, &home, false).unwrap())
    });
    // Stamps less than a second old are not trusted: let the home age, then record them.
    std::thread::sleep(Duration::from_millis(1100));
    realize::realize(&store, &lock, &options).unwrap();
    let checked = home.join(".comfix/checked.json");
    assert!(checked.is_file());
    group.bench_function("noop_realize_full_check", |b| {
        b.iter(|| {
            fs::remove_file(&checked).unwrap();
            assert!(
                realize::realize(&store, &lock, &options)
                    .unwrap()
                    .up_to_date
            )
        })
    });
    group.bench_function("noop_realize", |b| {
        b.iter(|| {
            assert!(
                realize::realize(&store, &lock, &options)
                    .unwrap()
                    .up_to_date
            )
        })
    });
    // The same through the command line, next to the process's own start and exit.
    let exe = env!("CARGO_BIN_EXE_comfix");
    group.bench_function("cheap_cli", |b| {
        b.iter(|| {
            let out = Command::new(exe)
                .arg("--store")
                .arg(store.root())
                .args(["status", "--target"])
                .arg(&home)
                .output()
                .unwrap();
            assert!(out.status.success());
        })
    });
    group.bench_function("cli_version", |b| {
        b.iter(|| {
            let out = Command::new(exe).arg("--version").output().unwrap();
            assert!(out.status.success());
        })
    });
    group.bench_function("find_printf_stat", |b| {
        b.iter(|| {
            let out = Command::new("find")
                .arg(&core_dir)
                .args(["-printf", "%s %T@ %i %C@\n"])
                .output()
                .unwrap();
            assert!(out.status.success());
        })
    });
    group.bench_function("check_contents", |b| {
        b.iter(|| realize::status(&store, &home, true).unwrap())
    });
    if Command::new("b3sum").arg("--version").output().is_ok() {
        let list: Vec<PathBuf> = walkdir::WalkDir::new(&core_dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect();
        group.bench_function("b3sum_2_threads", |b| {
            b.iter(|| {
                let out = Command::new("b3sum")
                    .args(["--num-threads", "2", "--no-names"])
                    .args(&list)
                    .output()
                    .unwrap();
                assert!(out.status.success());
            })
        });
    } else {
        eprintln!("b3sum not found: `cargo install b3sum` for the baseline");
    }
    group.finish();
    for entry in walkdir::WalkDir::new(dir.path()).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
