//! Realization benchmark, with everything already in the store (warm):
//!
//! - `warm_realize`: a version with a core of 2,400 files (`COMFIX_BENCH_CORE_FILES`), 20 nodes (60 files each) and 10 models,
//!   realized into a fresh home, next to `minimal_copy_and_link`: a plain sequential program that
//!   creates the same directories, copies the same files and symlinks the same models.
//! - `noop_realize`: realizing the same lock into the same home again (library call), and
//!   `noop_realize_cli`: the whole `comfix realize --offline` process doing that, next to
//!   `cli_version`: `comfix --version`, the process's own start and exit. Both no-ops trust the
//!   directory stamps of `.comfix/checked.json` (recorded after the home is a second old); the
//!   CLI's, from its second run on, is answered from `.comfix/request.json` before any session.
//!
//! Run: `cargo bench --bench realize`. Data goes under `COMFIX_BENCH_DIR` (default: temp dir).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use comfix::lock::{Lock, LockedGit, LockedModel, LockedNode, LockedRegistry, LOCK_VERSION};
use comfix::realize::{self, LinkMode, RealizeOptions};
use comfix::reporter::NoReporter;
use comfix::store::Add;
use comfix::store::{AddOptions, Store};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn write_tree(root: &Path, files: usize, seed: &str) {
    for i in 0..files {
        let dir = root.join(format!("pkg{:02}", i % 40));
        fs::create_dir_all(&dir).unwrap();
        let size = 300 + (i * 7919) % 6000;
        let mut data = vec![0u8; size];
        blake3::Hasher::new()
            .update(format!("{seed}{i}").as_bytes())
            .finalize_xof()
            .fill(&mut data);
        fs::write(dir.join(format!("f{i}.py")), data).unwrap();
    }
}

fn add(store: &Store, path: &Path, name: &str) -> String {
    store
        .add_path(
            path,
            &AddOptions {
                name: Some(name.into()),
                references: vec![],
            },
            &NoReporter,
        )
        .unwrap()
        .record
        .name
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    lock: Lock,
    spec_path: PathBuf,
}

fn fixture() -> Fixture {
    let base = std::env::var_os("COMFIX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let src = dir.path().join("src");
    let store = Store::open(&dir.path().join("store")).unwrap();

    let core_files = std::env::var("COMFIX_BENCH_CORE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2400);
    write_tree(&src.join("ComfyUI"), core_files, "core");
    let core = add(&store, &src.join("ComfyUI"), "ComfyUI");
    let mut nodes = Vec::new();
    let mut spec_nodes = Vec::new();
    for n in 0..20 {
        let path = src.join(format!("node{n}"));
        write_tree(&path, 60, &format!("node{n}"));
        let store_path = add(&store, &path, &format!("node{n}-1.0.0"));
        nodes.push(LockedNode {
            name: format!("node{n}"),
            enabled: true,
            git: None,
            registry: Some(LockedRegistry {
                id: format!("node{n}"),
                version: "1.0.0".into(),
                download_url: format!("https://example.invalid/node{n}.zip"),
                blake3: "0".repeat(64),
                store_path,
            }),
            local: None,
        });
        spec_nodes.push(serde_json::json!({ "cnr": format!("node{n}"), "version": "1.0.0" }));
    }
    let mut models = Vec::new();
    let mut spec_models = Vec::new();
    for m in 0..10 {
        let file = src.join(format!("model{m}.safetensors"));
        let mut data = vec![0u8; 1 << 20];
        blake3::Hasher::new()
            .update(&[m as u8])
            .finalize_xof()
            .fill(&mut data);
        fs::write(&file, &data).unwrap();
        let store_path = add(&store, &file, &format!("model{m}.safetensors"));
        let source = format!("https://example.invalid/model{m}.safetensors");
        models.push(LockedModel {
            source: source.clone(),
            name: None,
            target_subdir: Some("checkpoints".into()),
            filename: format!("model{m}.safetensors"),
            required: true,
            url: source.clone(),
            revision: None,
            size: data.len() as u64,
            sha256: None,
            blake3: blake3::hash(&data).to_hex().to_string(),
            store_path,
        });
        spec_models.push(serde_json::json!({ "source": source, "target_subdir": "checkpoints" }));
    }
    let lock = Lock {
        lock_version: LOCK_VERSION,
        version_id: "bench".into(),
        comfy: LockedGit {
            repo: "https://example.invalid/ComfyUI".into(),
            git_ref: Some("master".into()),
            commit: "0".repeat(40),
            store_path: core,
        },
        custom_nodes: nodes,
        models,
        python: None,
        workflows: Vec::new(),
    };
    let spec = serde_json::json!({
        "schema_version": 2, "version_id": "bench",
        "comfy": { "repo": "https://example.invalid/ComfyUI", "ref": "master" },
        "custom_nodes": spec_nodes, "models": spec_models,
    });
    let spec_path = dir.path().join("bench.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    lock.write(&dir.path().join("bench.lock.json")).unwrap();
    Fixture {
        dir,
        store,
        lock,
        spec_path,
    }
}

/// What a hand-written realization does, sequentially: make the directories, copy the files,
/// recreate symlinks, symlink the models.
fn minimal(store: &Store, lock: &Lock, home: &Path) {
    let copy_tree = |from: &Path, to: &Path| {
        for entry in walkdir::WalkDir::new(from) {
            let entry = entry.unwrap();
            let at = to.join(entry.path().strip_prefix(from).unwrap());
            if entry.file_type().is_dir() {
                fs::create_dir_all(&at).unwrap();
                fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).unwrap();
            } else if entry.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &at).unwrap();
            } else {
                fs::copy(entry.path(), &at).unwrap();
            }
        }
    };
    let comfy = home.join("ComfyUI");
    copy_tree(&store.path_of(&lock.comfy.store_path), &comfy);
    for node in &lock.custom_nodes {
        let path = &node.registry.as_ref().unwrap().store_path;
        copy_tree(
            &store.path_of(path),
            &comfy.join("custom_nodes").join(&node.name),
        );
    }
    for model in &lock.models {
        let dir = home
            .join("models")
            .join(model.target_subdir.as_deref().unwrap_or(""));
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(store.path_of(&model.store_path), dir.join(&model.filename))
            .unwrap();
    }
}

fn make_writable(root: &Path) {
    for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
}

fn bench(c: &mut Criterion) {
    let fx = fixture();
    let options = |target: PathBuf| RealizeOptions {
        target,
        models_dir: None,
        skip_models: false,
        link_mode: LinkMode::Auto,
        venv: None,
        not_fetched: Vec::new(),
        check: false,
        torch: None,
        in_place: Default::default(),
    };
    let mut group = c.benchmark_group("realize");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    let settle = || {
        let _ = Command::new("sync").status();
    };
    group.bench_function("minimal_copy_and_link", |b| {
        b.iter_batched(
            || {
                settle();
                tempfile::tempdir_in(fx.dir.path()).unwrap()
            },
            |home| {
                minimal(&fx.store, &fx.lock, home.path());
                home
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("warm_realize", |b| {
        b.iter_batched(
            || {
                settle();
                tempfile::tempdir_in(fx.dir.path()).unwrap()
            },
            |home| {
                realize::realize(&fx.store, &fx.lock, &options(home.path().join("home"))).unwrap();
                home
            },
            BatchSize::PerIteration,
        )
    });
    let home = fx.dir.path().join("noop-home");
    realize::realize(&fx.store, &fx.lock, &options(home.clone())).unwrap();
    // Stamps less than a second old are not trusted: let the home age, then record them.
    std::thread::sleep(Duration::from_millis(1100));
    realize::realize(&fx.store, &fx.lock, &options(home.clone())).unwrap();
    assert!(home.join(".comfix/checked.json").is_file());
    group.bench_function("noop_realize", |b| {
        b.iter(|| {
            let report = realize::realize(&fx.store, &fx.lock, &options(home.clone())).unwrap();
            assert!(report.up_to_date);
        })
    });
    let exe = env!("CARGO_BIN_EXE_comfix");
    group.bench_function("noop_realize_cli", |b| {
        b.iter(|| {
            let out = Command::new(exe)
                .arg("--store")
                .arg(fx.store.root())
                .args(["-q", "realize", "--offline", "--spec"])
                .arg(&fx.spec_path)
                .arg("--target")
                .arg(&home)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    });
    assert!(
        home.join(".comfix/request.json").is_file(),
        "the CLI's no-op records its request"
    );
    group.bench_function("cli_version", |b| {
        b.iter(|| {
            let out = Command::new(exe).arg("--version").output().unwrap();
            assert!(out.status.success());
        })
    });
    group.finish();
    make_writable(fx.dir.path());
}

criterion_group!(benches, bench);
criterion_main!(benches);
