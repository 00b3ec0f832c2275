//! Closure benchmark: exporting a version's closure (a core of 2,000 source files and four
//! 64 MiB models) as one `.tar.zst`, next to `tar -c | zstd -3 -T0` of the same store paths; and
//! importing it into an empty store (which also verifies every path, registers it and makes it
//! durable), next to `zstd -d | tar -x` into a directory, and the same followed by `sync`. Same
//! run; the best of three runs each, alternating, after a warm-up.
//!
//! Run: `cargo bench --bench closure`. Model size: `COMFIX_BENCH_CLOSURE_MODEL_MIB` (64). Data
//! under `COMFIX_BENCH_DIR`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use comfix::closure::{self, Models, Version};
use comfix::lock::{Lock, LockedGit, LockedModel, LOCK_VERSION};
use comfix::reporter::NoReporter;
use comfix::sign::Trust;
use comfix::store::{AddOptions, Store};

mod common;
use comfix::store::Add;
use common::{env_usize, pseudo_random, remove_tree, sync, work_dir};

fn shell(script: &str) -> Duration {
    sync();
    let started = Instant::now();
    let status = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script}");
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let model_mib = env_usize("COMFIX_BENCH_CLOSURE_MODEL_MIB", 64);
    let work = work_dir();
    let store = Store::open(&work.path().join("store")).unwrap();

    let core = work.path().join("core");
    for i in 0..2000 {
        let dir = core.join(format!("comfy/d{:02}", i % 40));
        fs::create_dir_all(&dir).unwrap();
        let mut f = fs::File::create(dir.join(format!("m{i}.py"))).unwrap();
        for line in 0..40 {
            writeln!(f, "def f_{i}_{line}(x):\n    return x * {line} + {i}").unwrap();
        }
    }
    let options = |name: &str| AddOptions {
        name: Some(name.into()),
        references: Vec::new(),
    };
    let core_path = store
        .add_path(&core, &options("ComfyUI"), &NoReporter)
        .unwrap();
    let mut models = Vec::new();
    for m in 0..4 {
        let bytes = pseudo_random(model_mib << 20, m + 1);
        let name = format!("model{m}.safetensors");
        let added = store.add_bytes(&name, &bytes, &[]).unwrap();
        models.push(LockedModel {
            source: format!("https://example.invalid/{name}"),
            name: None,
            target_subdir: Some("checkpoints".into()),
            filename: name.clone(),
            required: true,
            url: format!("https://example.invalid/{name}"),
            revision: None,
            size: bytes.len() as u64,
            sha256: None,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            store_path: added.record.name,
        });
    }
    let lock = Lock {
        lock_version: LOCK_VERSION,
        version_id: "bench".into(),
        comfy: LockedGit {
            repo: "https://example.invalid/ComfyUI.git".into(),
            git_ref: None,
            commit: "0".repeat(40),
            store_path: core_path.record.name.clone(),
        },
        custom_nodes: Vec::new(),
        models,
        python: None,
        workflows: Vec::new(),
    };
    let names: Vec<String> = lock.store_paths().iter().map(|s| s.to_string()).collect();
    let bytes: u64 = lock.models.iter().map(|m| m.size).sum::<u64>() + core_path.record.size;
    let spec = serde_json::to_vec(&serde_json::json!({
        "schema_version": 2,
        "version_id": "bench",
        "comfy": { "repo": "https://example.invalid/ComfyUI.git", "commit": "0".repeat(40) },
        "models": lock.models.iter().map(|m| serde_json::json!({
            "source": m.source, "target_subdir": "checkpoints", "filename": m.filename,
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let export = |to: &Path| -> Duration {
        sync();
        let started = Instant::now();
        let out = std::io::BufWriter::new(fs::File::create(to).unwrap());
        let version = Version {
            spec: &spec,
            lock: &lock,
            venv: None,
            extra: Vec::new(),
        };
        closure::export(&store, &[version], Models::All, None, out).unwrap();
        started.elapsed()
    };
    let archive = work.path().join("closure.tar.zst");
    let baseline = work.path().join("baseline.tar.zst");
    let paths = store.root().join("paths");
    let tar_zstd = format!(
        "tar -cf - -C {} {} | zstd -3 -T0 -q -f -o {}",
        paths.display(),
        names.join(" "),
        baseline.display()
    );
    // Warm the page cache for both, then the best of three runs each, alternating.
    export(&archive);
    shell(&tar_zstd);
    let (mut ours, mut theirs) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        ours = ours.min(export(&archive));
        theirs = theirs.min(shell(&tar_zstd));
    }
    let mib = bytes as f64 / (1 << 20) as f64;
    println!("closure/content_mib          {mib:.0}");
    println!(
        "closure/export               {:.3}s  {:.0} MiB/s",
        ours.as_secs_f64(),
        mib / ours.as_secs_f64()
    );
    println!(
        "closure/tar_zstd             {:.3}s  {:.0} MiB/s  (export throughput {:.2}× of tar | zstd)",
        theirs.as_secs_f64(),
        mib / theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    println!(
        "closure/archive_bytes        {} (tar | zstd: {})",
        fs::metadata(&archive).unwrap().len(),
        fs::metadata(&baseline).unwrap().len()
    );

    let trust = Trust {
        keys: Vec::new(),
        accept_unsigned: true,
    };
    let import = |round: usize| -> Duration {
        let target = Store::open(&work.path().join(format!("store-import-{round}"))).unwrap();
        let versions = work.path().join(format!("versions-{round}"));
        sync();
        let started = Instant::now();
        let input = std::io::BufReader::new(fs::File::open(&archive).unwrap());
        let report = closure::import(&target, input, &versions, &trust).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(report.imported.len(), names.len());
        drop(target);
        remove_tree(&work.path().join(format!("store-import-{round}")));
        elapsed
    };
    // `then` runs after the unpacking, inside the timing (`sync`: as durable as an import).
    let untar = |round: String, then: &str| -> Duration {
        let dir = work.path().join(format!("untar-{round}"));
        fs::create_dir_all(&dir).unwrap();
        let took = shell(&format!(
            "zstd -d -c -q {} | tar -xf - -C {}{then}",
            baseline.display(),
            dir.display()
        ));
        remove_tree(&dir);
        took
    };
    import(0);
    untar("warm".into(), "");
    let (mut ours, mut theirs, mut durable) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 1..4 {
        ours = ours.min(import(round));
        theirs = theirs.min(untar(format!("{round}"), ""));
        durable = durable.min(untar(format!("{round}-sync"), " && sync"));
    }
    println!(
        "closure/import               {:.3}s  {:.0} MiB/s  (verifies and registers)",
        ours.as_secs_f64(),
        mib / ours.as_secs_f64()
    );
    println!(
        "closure/zstd_d_tar_x         {:.3}s  {:.0} MiB/s  (import takes {:.2}× the time)",
        theirs.as_secs_f64(),
        mib / theirs.as_secs_f64(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    println!(
        "closure/zstd_d_tar_x_sync    {:.3}s  {:.0} MiB/s  (import takes {:.2}× the time)",
        durable.as_secs_f64(),
        mib / durable.as_secs_f64(),
        ours.as_secs_f64() / durable.as_secs_f64()
    );
    let _ = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(work.path())
        .status();
}
