//! Models index benchmark (`docs/models.md`), each row beside its baseline in the same run:
//!
//! - `index`: `comfix models index` of three models of `COMFIX_BENCH_INDEX_MODEL_MIB` MiB
//!   (default 1024) into a fresh store vs `b3sum` of the same files;
//! - `reindex`: `comfix models index` again over `COMFIX_BENCH_INDEX_FILES` files (default
//!   10,000) of which none changed, vs `comfix --version` (the process alone);
//! - `realize`: a version whose three models are only in the index (an empty store: each copied
//!   in and verified) vs the same realize with the models already in the store.
//!
//! Warm page cache, and — as root — cold (dropped before each timing), as hundreds of GB of
//! models are. Run: `cargo bench --bench models_index` (needs `cargo install b3sum`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::{env_usize, git, pseudo_random, remove_tree, work_dir};

use common::timed_cold as timed;

fn comfix(work: &Path, store: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfix"));
    cmd.current_dir(work)
        .arg("--store")
        .arg(store)
        .arg("-q")
        .env("HOME", work)
        .env("HF_HUB_CACHE", "");
    cmd
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if Command::new("b3sum").arg("--version").output().is_err() {
        eprintln!("b3sum not found: `cargo install b3sum` for the baseline");
        return;
    }
    let mib = env_usize("COMFIX_BENCH_INDEX_MODEL_MIB", 1024);
    let small = env_usize("COMFIX_BENCH_INDEX_FILES", 10_000);
    let work = work_dir();
    let work = work.path();
    let models = work.join("models/checkpoints");
    std::fs::create_dir_all(&models).unwrap();
    let files: Vec<PathBuf> = (0..3u64)
        .map(|i| {
            let path = models.join(format!("m{i}.safetensors"));
            std::fs::write(&path, pseudo_random(mib << 20, 20 + i)).unwrap();
            path
        })
        .collect();
    let many = work.join("many");
    for i in 0..small {
        let dir = many.join(format!("{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.bin")), pseudo_random(64, i as u64)).unwrap();
    }
    version(work, &files);

    // Re-indexing nothing changed: the page cache is warm for the stats (they are what it costs).
    let store = work.join("store-many");
    comfix(work, &store)
        .args(["models", "index"])
        .arg(&many)
        .output()
        .unwrap();
    let mut reindex = Duration::MAX;
    let mut process = Duration::MAX;
    for _ in 0..5 {
        reindex = reindex.min(common::timed(
            comfix(work, &store).args(["models", "index"]),
        ));
        process = process.min(common::timed(comfix(work, &store).arg("--version")));
    }
    println!("models_index/reindex/files             {small}");
    println!(
        "models_index/reindex/nothing_changed   {:.1} ms  ({:.1} ms per 10,000 files; `comfix --version` {:.1} ms)",
        reindex.as_secs_f64() * 1e3,
        reindex.as_secs_f64() * 1e3 * 10_000.0 / small as f64,
        process.as_secs_f64() * 1e3
    );
    remove_tree(&store);

    for cache in ["warm", "cold"] {
        if cache == "cold" && !common::go_cold() {
            println!("models_index/cold       (not measured: dropping the page cache needs root)");
            break;
        }
        measure(work, &files, mib, cache);
    }
    remove_tree(work);
}

/// A version `b`: a core from a local repository and the three models from a URL nobody
/// answers, named by their BLAKE3 (so only a file of this machine can give them).
fn version(work: &Path, files: &[PathBuf]) {
    let origin = work.join("origin");
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::write(origin.join("main.py"), "print('comfy')\n").unwrap();
    git(&origin, &["init", "-q", "-b", "main"]);
    git(&origin, &["add", "."]);
    git(&origin, &["commit", "-q", "-m", "core"]);
    let models: Vec<serde_json::Value> = files
        .iter()
        .map(|file| {
            let mut hasher = blake3::Hasher::new();
            hasher.update_mmap(file).unwrap();
            serde_json::json!({
                "source": format!("http://127.0.0.1:9/{}", file.file_name().unwrap().to_string_lossy()),
                "target_subdir": "checkpoints",
                "blake3": hasher.finalize().to_hex().to_string(),
            })
        })
        .collect();
    let spec = serde_json::json!({
        "schema_version": 2,
        "version_id": "b",
        "comfy": { "repo": origin.display().to_string(), "ref": "main" },
        "models": models,
    });
    std::fs::create_dir_all(work.join("versions")).unwrap();
    std::fs::write(work.join("versions/b.json"), spec.to_string()).unwrap();
}

/// Best of three, interleaved.
fn measure(work: &Path, files: &[PathBuf], mib: usize, cache: &str) {
    let folder = files[0].parent().unwrap();
    let (mut b3sum, mut index, mut from_index, mut from_store) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..3 {
        b3sum = b3sum.min(timed(Command::new("b3sum").args(files)));
        let store = work.join(format!("store-{cache}-{round}"));
        index = index.min(timed(
            comfix(work, &store).args(["models", "index"]).arg(folder),
        ));
        let home = work.join(format!("home-{cache}-{round}"));
        from_index = from_index.min(timed(
            comfix(work, &store)
                .args(["realize", "b", "--target"])
                .arg(&home),
        ));
        let again = work.join(format!("home2-{cache}-{round}"));
        from_store = from_store.min(timed(
            comfix(work, &store)
                .args(["realize", "b", "--target"])
                .arg(&again),
        ));
        for dir in [&store, &home, &again] {
            remove_tree(dir);
        }
        let _ = std::fs::remove_file(work.join("versions/b.lock.json"));
    }
    let total = (3 * mib) as f64;
    let rate = |d: Duration| total / d.as_secs_f64();
    println!("models_index/{cache}/models_mib               {total:.0}");
    println!(
        "models_index/{cache}/b3sum                    {:.3}s  {:.0} MiB/s",
        b3sum.as_secs_f64(),
        rate(b3sum)
    );
    println!(
        "models_index/{cache}/index                    {:.3}s  {:.0} MiB/s  ({:.2}× b3sum's time)",
        index.as_secs_f64(),
        rate(index),
        index.as_secs_f64() / b3sum.as_secs_f64()
    );
    println!(
        "models_index/{cache}/realize_models_in_store  {:.3}s",
        from_store.as_secs_f64()
    );
    println!(
        "models_index/{cache}/realize_from_the_index   {:.3}s  {:.0} MiB/s  ({:.1}× the realize with the models in the store)",
        from_index.as_secs_f64(),
        rate(from_index),
        from_index.as_secs_f64() / from_store.as_secs_f64()
    );
}
