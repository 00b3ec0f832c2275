//! Bucket cache benchmark against a real S3-compatible server on 127.0.0.1 (moto's server, as
//! the tests use it), in the same run:
//!
//! - one model of `COMFIX_BENCH_S3_MODEL_MIB` MiB (default 1024) substituted into an empty store
//!   (`store copy --from s3://…`: download, verify, register) vs a plain client download of the
//!   same object (`curl --aws-sigv4` to a file);
//! - a version of 20 paths (`COMFIX_BENCH_S3_PATH_MIB` MiB each, default 8) pushed with
//!   `--jobs 8` vs `--jobs 1`.
//!
//! Run: `cargo bench --bench s3` (needs `moto_server` and `curl`). Data under `COMFIX_BENCH_DIR`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{env_usize, pseudo_random, sync, work_dir};

#[allow(dead_code)]
#[path = "../tests/it/support/s3.rs"]
mod moto;
use moto::{Moto, ACCESS_KEY, SECRET_KEY};

const BUCKET: &str = "bench";

fn comfix(moto: &Moto, work: &Path, store: &Path, args: &[&str]) -> (Duration, String) {
    sync();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfix"));
    cmd.current_dir(work)
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("COMFIX_SUBSTITUTERS")
        .env("HOME", work);
    moto.env(&mut cmd);
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "comfix {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        took,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn add(moto: &Moto, work: &Path, store: &Path, name: &str, bytes: &[u8]) -> String {
    let file = work.join(name);
    std::fs::write(&file, bytes).unwrap();
    let (_, printed) = comfix(moto, work, store, &["store", "add", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    Path::new(&printed)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let model_mib = env_usize("COMFIX_BENCH_S3_MODEL_MIB", 1024);
    let path_mib = env_usize("COMFIX_BENCH_S3_PATH_MIB", 8);
    let work = work_dir();
    let work = work.path();
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let store = work.join("store-a");

    // One large model, pushed once.
    let model = add(
        &moto,
        work,
        &store,
        "model.safetensors",
        &pseudo_random(model_mib << 20, 1),
    );
    let url = format!("s3://{BUCKET}/model");
    let (pushed, _) = comfix(
        &moto,
        work,
        &store,
        &["store", "copy", "--to", &url, &model],
    );
    let entry: serde_json::Value = serde_json::from_slice(
        &moto
            .get(BUCKET, &format!("model/paths/{model}.json"))
            .unwrap(),
    )
    .unwrap();
    let archive = entry["archive"].as_str().unwrap();
    let archive_bytes = entry["archive_size"].as_u64().unwrap() as f64;
    let object_url = format!("{}/{BUCKET}/model/{archive}", moto.endpoint());
    // curl's file is not made durable; comfix's store path is (syncfs before registering), so
    // curl is timed both ways: alone, and until `sync` returns.
    let (mut by_curl, mut by_curl_synced, mut by_comfix) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..3 {
        let file = work.join("download.bin");
        sync();
        let started = Instant::now();
        let status = Command::new("curl")
            .args(["-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
            .arg("-o")
            .arg(&file)
            .arg(&object_url)
            .status()
            .unwrap();
        assert!(status.success(), "curl");
        by_curl = by_curl.min(started.elapsed());
        sync();
        by_curl_synced = by_curl_synced.min(started.elapsed());
        std::fs::remove_file(&file).unwrap();
        let empty = work.join(format!("store-b-{round}"));
        let args = ["store", "copy", "--no-check-sigs", "--from", &url, &model];
        by_comfix = by_comfix.min(comfix(&moto, work, &empty, &args).0);
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&empty)
            .status();
        std::fs::remove_dir_all(&empty).unwrap();
    }
    let mib = archive_bytes / f64::from(1 << 20);
    println!("s3/model_archive_mib          {mib:.0}");
    println!(
        "s3/push_model                 {:.3}s  {:.0} MiB/s",
        pushed.as_secs_f64(),
        mib / pushed.as_secs_f64()
    );
    println!(
        "s3/download_by_curl           {:.3}s  {:.0} MiB/s",
        by_curl.as_secs_f64(),
        mib / by_curl.as_secs_f64()
    );
    println!(
        "s3/download_by_curl_and_sync  {:.3}s  {:.0} MiB/s",
        by_curl_synced.as_secs_f64(),
        mib / by_curl_synced.as_secs_f64()
    );
    println!(
        "s3/substitute_by_comfix       {:.3}s  {:.0} MiB/s  ({:.2}× curl's throughput, {:.2}× curl+sync's)",
        by_comfix.as_secs_f64(),
        mib / by_comfix.as_secs_f64(),
        by_curl.as_secs_f64() / by_comfix.as_secs_f64(),
        by_curl_synced.as_secs_f64() / by_comfix.as_secs_f64()
    );

    // Twenty paths, pushed one archive at a time and eight at a time.
    let names: Vec<String> = (0..20)
        .map(|i| {
            let bytes = pseudo_random(path_mib << 20, 100 + i);
            add(&moto, work, &store, &format!("part-{i}.bin"), &bytes)
        })
        .collect();
    let mut timings = Vec::new();
    for jobs in [1, 8] {
        let mut best = Duration::MAX;
        for round in 0..2 {
            let url = format!("s3://{BUCKET}/push-j{jobs}-{round}");
            let mut args = vec!["store", "copy", "--to", &url];
            let jobs_text = jobs.to_string();
            args.extend(["-j", &jobs_text]);
            args.extend(names.iter().map(String::as_str));
            best = best.min(comfix(&moto, work, &store, &args).0);
        }
        timings.push(best);
    }
    let total = (20 * path_mib) as f64;
    for (jobs, took) in [1, 8].iter().zip(&timings) {
        println!(
            "s3/push_20_paths_jobs_{jobs}       {:.3}s  {:.0} MiB/s",
            took.as_secs_f64(),
            total / took.as_secs_f64()
        );
    }
    println!(
        "s3/push_speedup_jobs_8        {:.2}×",
        timings[0].as_secs_f64() / timings[1].as_secs_f64()
    );
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(work).status();
}
