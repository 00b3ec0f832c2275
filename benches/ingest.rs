//! Store ingest benchmarks, each next to its baseline in the same run:
//!
//! - `large_file`: adding one generated file (default 1 GiB, `COMFIX_BENCH_LARGE_MIB`) to a fresh
//!   store, re-adding it to a store that already holds it, and `b3sum --num-threads 2` on it.
//! - `tree`: adding a tree of many small files (default 20,000, `COMFIX_BENCH_FILES`) to a fresh
//!   store, re-adding it, and `cp -a` of the same tree (plain, and followed by `sync` since an add
//!   makes its data durable).
//!
//! Data is generated under `COMFIX_BENCH_DIR` (default: the system temp dir), which should be on
//! the filesystem under test. Run: `cargo bench --bench ingest`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use comfix::reporter::NoReporter;
use comfix::store::Add;
use comfix::store::{AddOptions, Store};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("COMFIX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&base).expect("create the bench directory");
    tempfile::Builder::new()
        .prefix("comfix-bench-")
        .tempdir_in(base)
        .expect("create a temporary directory")
}

/// Incompressible bytes, fast: BLAKE3's extendable output.
fn write_large_file(path: &Path, mib: u64) {
    let mut out = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut reader = blake3::Hasher::new().update(b"comfix bench").finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        reader.fill(&mut buf);
        out.write_all(&buf).unwrap();
    }
    out.flush().unwrap();
}

/// A source-code-like tree: `files` files of 200 B – 8 KiB in 2 levels of directories, with 5%
/// duplicated contents (as `__init__.py` files and licenses are in real node packs).
fn write_tree(root: &Path, files: u64) {
    for i in 0..files {
        let dir = root.join(format!("pkg{:02}/mod{:03}", i % 50, (i / 50) % 40));
        fs::create_dir_all(&dir).unwrap();
        let size = 200 + (i * 7919) % 8000;
        let seed = if i % 20 == 0 { 0 } else { i };
        let mut reader = blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof();
        let mut data = vec![0u8; size as usize];
        reader.fill(&mut data);
        fs::write(dir.join(format!("file{i}.py")), &data).unwrap();
    }
}

fn make_writable(root: &Path) {
    for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
}

/// A fresh store in its own directory; removed (untimed) when dropped.
struct FreshStore {
    dir: tempfile::TempDir,
    store: Store,
}

/// Flush the previous iteration's writes and deletions (this disk may discard on delete) so they
/// are not charged to the next timed iteration. Used in the untimed setup of every batched bench.
fn settle() {
    run(&mut Command::new("sync"));
}

fn fresh_dir(base: &Path) -> tempfile::TempDir {
    settle();
    tempfile::tempdir_in(base).unwrap()
}

impl FreshStore {
    fn new(base: &Path) -> Self {
        let dir = tempfile::tempdir_in(base).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        settle();
        FreshStore { dir, store }
    }
}

impl Drop for FreshStore {
    fn drop(&mut self) {
        make_writable(self.dir.path());
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run baseline command");
    assert!(status.success(), "{cmd:?} failed");
}

fn large_file(c: &mut Criterion) {
    let work = bench_dir();
    let mib = env_u64("COMFIX_BENCH_LARGE_MIB", 1024);
    let file = work.path().join("model.safetensors");
    write_large_file(&file, mib);

    let mut group = c.benchmark_group("large_file");
    group.throughput(Throughput::Bytes(mib << 20));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(20));

    if Command::new("b3sum").arg("--version").output().is_ok() {
        group.bench_function("b3sum_2_threads", |b| {
            b.iter(|| {
                run(Command::new("b3sum")
                    .args(["--num-threads", "2"])
                    .arg(&file)
                    .stdout(std::process::Stdio::null()))
            })
        });
    } else {
        eprintln!("b3sum not found: `cargo install b3sum` for the baseline");
    }
    group.bench_function("comfix_add_new", |b| {
        b.iter_batched(
            || FreshStore::new(work.path()),
            |fresh| {
                fresh
                    .store
                    .add_path(&file, &AddOptions::default(), &NoReporter)
                    .unwrap();
                fresh
            },
            BatchSize::PerIteration,
        )
    });
    let warm = FreshStore::new(work.path());
    warm.store
        .add_path(&file, &AddOptions::default(), &NoReporter)
        .unwrap();
    group.bench_function("comfix_add_existing", |b| {
        b.iter(|| {
            warm.store
                .add_path(&file, &AddOptions::default(), &NoReporter)
                .unwrap()
        })
    });
    group.bench_function("cp_and_sync", |b| {
        b.iter_batched(
            || fresh_dir(work.path()),
            |dir| {
                let to = dir.path().join("copy");
                run(Command::new("cp").arg(&file).arg(&to));
                run(Command::new("sync").arg("-f").arg(&to));
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn tree(c: &mut Criterion) {
    let work = bench_dir();
    let files = env_u64("COMFIX_BENCH_FILES", 20_000);
    let src = work.path().join("ComfyUI");
    write_tree(&src, files);

    let mut group = c.benchmark_group("tree");
    group.throughput(Throughput::Elements(files));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(15));

    group.bench_function("cp_a", |b| {
        b.iter_batched(
            || fresh_dir(work.path()),
            |dir| {
                run(Command::new("cp")
                    .arg("-a")
                    .arg(&src)
                    .arg(dir.path().join("copy")));
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("cp_a_and_sync", |b| {
        b.iter_batched(
            || fresh_dir(work.path()),
            |dir| {
                let to = dir.path().join("copy");
                run(Command::new("cp").arg("-a").arg(&src).arg(&to));
                run(Command::new("sync").arg("-f").arg(&to));
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("comfix_add_new", |b| {
        b.iter_batched(
            || FreshStore::new(work.path()),
            |fresh| {
                fresh
                    .store
                    .add_path(&src, &AddOptions::default(), &NoReporter)
                    .unwrap();
                fresh
            },
            BatchSize::PerIteration,
        )
    });
    let warm = FreshStore::new(work.path());
    warm.store
        .add_path(&src, &AddOptions::default(), &NoReporter)
        .unwrap();
    group.bench_function("comfix_add_existing", |b| {
        b.iter(|| {
            warm.store
                .add_path(&src, &AddOptions::default(), &NoReporter)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, large_file, tree);
criterion_main!(benches);
