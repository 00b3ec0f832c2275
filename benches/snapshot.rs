//! Snapshot benchmark: `comfix snapshot` of an install with three models of
//! `COMFIX_BENCH_SNAPSHOT_MODEL_MIB` MiB (default 1024) vs `b3sum` of the same three files, in the
//! same run. The snapshot hashes every model and ingests it into a fresh store (one read, one
//! write, made durable); `b3sum` only reads. A second snapshot into the same store (the models
//! there already and unchanged since they were hashed: known by their stat tuples, neither read
//! nor written) is timed too, and a snapshot with `--link-models`
//! into a fresh store (on the store's filesystem the store takes each file as a hard link and
//! the install gets a link back: read and hashed, nothing written).
//!
//! Each is timed with a warm page cache, and — as root, where the cache can be dropped before
//! each timing — with a cold one, as hundreds of GB of models always are.
//!
//! Run: `cargo bench --bench snapshot` (needs `b3sum`: `cargo install b3sum`). Data under
//! `COMFIX_BENCH_DIR` (on XFS or btrfs, the models are cloned into the store, not copied).

use std::process::Command;
use std::time::Duration;

mod common;
use common::{env_usize, git, pseudo_random, work_dir};

use common::timed_cold as timed;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if Command::new("b3sum").arg("--version").output().is_err() {
        eprintln!("b3sum not found: `cargo install b3sum` for the baseline");
        return;
    }
    let mib = env_usize("COMFIX_BENCH_SNAPSHOT_MODEL_MIB", 1024);
    let work = work_dir();
    let work = work.path();
    let origin = work.join("origin");
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::write(origin.join("main.py"), "print('comfy')\n").unwrap();
    std::fs::write(origin.join(".gitignore"), "models/\ncustom_nodes/\n").unwrap();
    git(&origin, &["init", "-q", "-b", "main"]);
    git(&origin, &["add", "."]);
    git(&origin, &["commit", "-q", "-m", "core"]);
    let install = work.join("install");
    git(work, &["clone", "-q", origin.to_str().unwrap(), "install"]);
    let models = install.join("models/checkpoints");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(install.join("custom_nodes")).unwrap();
    let files: Vec<_> = (0..3u64)
        .map(|i| {
            let path = models.join(format!("m{i}.safetensors"));
            std::fs::write(&path, pseudo_random(mib << 20, 10 + i)).unwrap();
            path
        })
        .collect();

    for cache in ["warm", "cold"] {
        if cache == "cold" && !common::go_cold() {
            println!("snapshot/cold                   (not measured: dropping the page cache needs root)");
            break;
        }
        measure(work, &install, &files, mib, cache);
    }
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(work).status();
}

/// Best of three: `b3sum` of the files, a snapshot into a fresh store, one into a store that
/// has the models.
fn measure(
    work: &std::path::Path,
    install: &std::path::Path,
    files: &[std::path::PathBuf],
    mib: usize,
    cache: &str,
) {
    let mut b3sum = Duration::MAX;
    let mut first = Duration::MAX;
    let mut again = Duration::MAX;
    let mut linking = Duration::MAX;
    for round in 0..3 {
        b3sum = b3sum.min(timed(Command::new("b3sum").args(files)));
        let store = work.join(format!("store-{round}"));
        let snapshot = |name: &str| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfix"));
            cmd.current_dir(work)
                .arg("--store")
                .arg(&store)
                .args(["-q", "snapshot", "--name", name, "--comfy-path"])
                .arg(install)
                .arg("-o")
                .arg(work.join(format!("versions/{name}.json")))
                .env("HOME", work);
            cmd
        };
        first = first.min(timed(&mut snapshot("s")));
        again = again.min(timed(&mut snapshot("s2")));
        let remove = |store: &std::path::Path| {
            let _ = Command::new("chmod")
                .args(["-R", "u+w"])
                .arg(store)
                .status();
            std::fs::remove_dir_all(store).unwrap();
        };
        remove(&store);
        let store = work.join(format!("store-link-{round}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfix"));
        cmd.current_dir(work)
            .arg("--store")
            .arg(&store)
            .args([
                "-q",
                "snapshot",
                "--name",
                "l",
                "--link-models",
                "--comfy-path",
            ])
            .arg(install)
            .arg("-o")
            .arg(work.join("versions/l.json"))
            .env("HOME", work);
        linking = linking.min(timed(&mut cmd));
        // The install's files back as plain files for the next round.
        for file in files {
            let target = std::fs::read_link(file).expect("a linked model");
            let back = file.with_extension("back");
            std::fs::copy(&target, &back).unwrap();
            std::fs::set_permissions(&back, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
            std::fs::rename(&back, file).unwrap();
        }
        remove(&store);
    }
    let total = (3 * mib) as f64;
    println!("snapshot/{cache}/models_mib             {total:.0}");
    println!(
        "snapshot/{cache}/b3sum                  {:.3}s  {:.0} MiB/s",
        b3sum.as_secs_f64(),
        total / b3sum.as_secs_f64()
    );
    println!(
        "snapshot/{cache}/into_a_fresh_store     {:.3}s  {:.0} MiB/s  ({:.2}× b3sum's time)",
        first.as_secs_f64(),
        total / first.as_secs_f64(),
        first.as_secs_f64() / b3sum.as_secs_f64()
    );
    println!(
        "snapshot/{cache}/models_already_stored  {:.3}s  {:.0} MiB/s  ({:.2}× b3sum's time)",
        again.as_secs_f64(),
        total / again.as_secs_f64(),
        again.as_secs_f64() / b3sum.as_secs_f64()
    );
    println!(
        "snapshot/{cache}/link_models_fresh      {:.3}s  {:.0} MiB/s  ({:.2}× b3sum's time)",
        linking.as_secs_f64(),
        total / linking.as_secs_f64(),
        linking.as_secs_f64() / b3sum.as_secs_f64()
    );
}
