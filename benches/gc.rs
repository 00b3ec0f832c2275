//! GC benchmark: a store of 20 versions × 5,000 distinct files (100,000 objects), half of the
//! versions unreachable, collected by `Store::gc`, next to `rm -rf` of exactly the same
//! unreachable path directories and objects in an identical copy of the store (`cp -a`), in the
//! same run. One measurement each: building the store dominates (minutes on a slow disk).
//!
//! Run: `cargo bench --bench gc`. Sizes: `COMFIX_BENCH_GC_VERSIONS` (20),
//! `COMFIX_BENCH_GC_FILES` (5000 per version). Data under `COMFIX_BENCH_DIR`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use comfix::reporter::NoReporter;
use comfix::store::Add;
use comfix::store::{AddOptions, GcOptions, Store};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn make_writable(root: &Path) {
    for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and criterion-style listing: nothing to run
    }
    let versions = env_usize("COMFIX_BENCH_GC_VERSIONS", 20);
    let files = env_usize("COMFIX_BENCH_GC_FILES", 5000);
    let base = std::env::var_os("COMFIX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(base).unwrap();
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir).unwrap();

    let started = Instant::now();
    let mut names = Vec::new();
    for v in 0..versions {
        let src = work.path().join(format!("src{v}"));
        for i in 0..files {
            let dir = src.join(format!("d{:02}", i % 50));
            fs::create_dir_all(&dir).unwrap();
            let mut f = fs::File::create(dir.join(format!("f{i}.py"))).unwrap();
            writeln!(f, "version {v} file {i}").unwrap();
        }
        let added = store
            .add_path(
                &src,
                &AddOptions {
                    name: Some(format!("version{v}")),
                    references: vec![],
                },
                &NoReporter,
            )
            .unwrap();
        names.push(added.record.name);
        fs::remove_dir_all(&src).unwrap();
    }
    // Half the versions stay reachable.
    for name in names.iter().step_by(2) {
        store.pin(name, name).unwrap();
    }
    let dead: Vec<&String> = names.iter().skip(1).step_by(2).collect();
    eprintln!(
        "built {} versions × {files} files in {:.1?}",
        versions,
        started.elapsed()
    );
    // This process added every path, so each is its temporary root until the store is closed.
    drop(store);
    let store = Store::open(&store_dir).unwrap();

    // The baseline's copy, and the list of what is unreachable in it.
    let copy = work.path().join("copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&store_dir)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    make_writable(&copy);
    let mut victims: Vec<PathBuf> = Vec::new();
    for name in &dead {
        let path = copy.join("paths").join(name);
        for entry in walkdir::WalkDir::new(&path).into_iter().flatten() {
            if entry.file_type().is_file() {
                use std::os::unix::fs::MetadataExt;
                let meta = entry.metadata().unwrap();
                // The object of this file: same inode under objects/.
                let digest = blake3::hash(&fs::read(entry.path()).unwrap()).to_hex();
                let object = copy
                    .join("objects")
                    .join(&digest[..2])
                    .join(digest.as_str());
                if fs::metadata(&object).map(|m| m.ino()).ok() == Some(meta.ino()) {
                    victims.push(object);
                }
            }
        }
        victims.push(path);
    }
    let list = work.path().join("victims");
    fs::write(
        &list,
        victims
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();

    sync();
    let t = Instant::now();
    assert!(Command::new("xargs")
        .arg("-a")
        .arg(&list)
        .args(["rm", "-rf"])
        .status()
        .unwrap()
        .success());
    let rm = t.elapsed();

    sync();
    let t = Instant::now();
    let report = store
        .gc(&GcOptions::default(), &comfix::derive::keep::LiveLocks)
        .unwrap();
    let gc = t.elapsed();
    assert_eq!(
        report.deleted_paths.len(),
        dead.len(),
        "roots: {:?}",
        store.all_roots().unwrap()
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    println!("gc/objects_total          {}", versions * files);
    println!("gc/unreachable_objects    {}", report.removed_objects);
    println!("gc/rm_rf_same_files       {rm:.3?}");
    println!(
        "gc/comfix_gc              {gc:.3?}  ({:.2}× rm -rf)",
        gc.as_secs_f64() / rm.as_secs_f64()
    );
    make_writable(work.path());
}
