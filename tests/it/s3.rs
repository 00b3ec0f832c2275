//! What only an S3-compatible cache has (a real server: moto, on 127.0.0.1): multipart pushes
//! killed at every step, `cache prune`, credentials and unreachable endpoints, a bucket filled
//! by syncing a directory cache. What every cache does is in `cache_contract.rs`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::s3::{Moto, SECRET_KEY};
use crate::support::*;

const BUCKET: &str = "team-cache";
/// The store's files that name things: sidecars, roots, the lock; none may hold a secret.
fn assert_no_secret(dirs: &[&Path], outputs: &[&Output]) {
    for out in outputs {
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(text).contains(SECRET_KEY),
                "a secret in the output"
            );
        }
    }
    for dir in dirs {
        for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
            let name = entry.path().to_string_lossy().to_string();
            let small = entry.file_type().is_file()
                && entry.metadata().map(|m| m.len() < 1 << 20).unwrap_or(false);
            if small && (name.ends_with(".json") || name.contains("/meta/")) {
                let text = fs::read(entry.path()).unwrap();
                assert!(
                    !String::from_utf8_lossy(&text).contains(SECRET_KEY),
                    "a secret in {name}"
                );
            }
        }
    }
}

/// A test's world: a server with the bucket, and a store of plain paths (`big` bytes in one, and
/// `small` little ones) at `store`.
struct Bucket {
    env: TestEnv,
    moto: Moto,
    store: std::path::PathBuf,
    names: Vec<String>,
}

impl Bucket {
    fn new(store: &str, big: usize, small: usize) -> Bucket {
        let env = TestEnv::new();
        let moto = Moto::start();
        moto.create_bucket(BUCKET);
        let store = env.path(store);
        let names = plain_store(&env, &store, big, small);
        Bucket {
            env,
            moto,
            store,
            names,
        }
    }
}

fn s3_cmd(env: &TestEnv, moto: &Moto, store: &Path) -> Command {
    let mut cmd = env.cmd_without_store();
    cmd.arg("--store").arg(store);
    moto.env(&mut cmd);
    cmd
}

/// Every metadata object under `prefix` names an archive the bucket has.
fn assert_no_dangling_metadata(moto: &Moto, prefix: &str, context: &str) {
    let keys = moto.keys(BUCKET, prefix);
    for key in keys.iter().filter(|k| k.contains("/paths/")) {
        let entry: Value = serde_json::from_slice(&moto.get(BUCKET, key).unwrap()).unwrap();
        let archive = format!("{prefix}{}", entry["archive"].as_str().unwrap());
        assert!(
            keys.contains(&archive),
            "{context}: {key} names the missing {archive}"
        );
    }
}

/// A push killed with SIGKILL at every step — after each part of a multipart upload, after each
/// path's metadata — leaves no metadata naming missing data; the rerun completes without sending
/// again the parts the killed push sent, and another store pulls every path, verified.
#[test]
fn a_push_killed_at_every_step_leaves_no_dangling_metadata_and_resumes() {
    // 40 MiB of incompressible bytes: three parts of 16 MiB, 16 MiB and 8 MiB.
    let Bucket {
        env,
        moto,
        store,
        names,
    } = Bucket::new("store-a", 40 << 20, 3);
    let faults = env.path("faults");
    fs::create_dir_all(&faults).unwrap();
    let mut round = 0;
    for (point, hits) in [("s3-part-uploaded", 3), ("cache-pushed-one", 4)] {
        for nth in 1..=hits {
            round += 1;
            let prefix = format!("kill-{round}/");
            let url = format!("s3://{BUCKET}/kill-{round}");
            let marker = faults.join(point);
            let _ = fs::remove_file(&marker);
            let mut child = s3_cmd(&env, &moto, &store)
                .args(["store", "copy", "-j", "1", "--to", &url])
                .args(&names)
                .env("COMFIX_FAULT_PAUSE", point)
                .env("COMFIX_FAULT_AFTER", nth.to_string())
                .env("COMFIX_FAULT_DIR", &faults)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !marker.exists() {
                assert!(Instant::now() < deadline, "{point} #{nth} never reached");
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "{point} #{nth}: exited"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let context = format!("killed at {point} #{nth}");
            assert_no_dangling_metadata(&moto, &prefix, &context);

            let sent_before = part_uploads(&moto, &prefix);
            s3_cmd(&env, &moto, &store)
                .args(["store", "copy", "--to", &url])
                .args(&names)
                .ok();
            assert_no_dangling_metadata(&moto, &prefix, &context);
            let sent = part_uploads(&moto, &prefix);
            if point == "s3-part-uploaded" {
                // Parts 1..=nth went up before the kill, and not again.
                for part in 1..=nth {
                    assert_eq!(sent[part - 1], 1, "{context}: part {part} sent {sent:?}");
                }
                assert_eq!(sent_before.iter().sum::<usize>(), nth, "{context}");
                assert_eq!(sent.iter().sum::<usize>(), 3, "{context}: {sent:?}");
            }
            let pulled = env.path(&format!("store-pull-{round}"));
            s3_cmd(&env, &moto, &pulled)
                .args(["store", "copy", "--no-check-sigs", "--from", &url])
                .args(&names)
                .ok();
            s3_cmd(&env, &moto, &pulled)
                .args(["store", "verify", "--check-contents"])
                .ok();
        }
    }
}

/// How many times each part number (1, 2, 3) of an archive under `prefix` was sent.
fn part_uploads(moto: &Moto, prefix: &str) -> [usize; 3] {
    let mut counts = [0; 3];
    for r in moto.requests() {
        if !(r.starts_with("PUT ") && r.contains(&format!("/{BUCKET}/{prefix}archives/"))) {
            continue;
        }
        for (i, count) in counts.iter_mut().enumerate() {
            if r.contains(&format!("partNumber={}&", i + 1))
                || r.contains(&format!("partNumber={} ", i + 1))
            {
                *count += 1;
            }
        }
    }
    counts
}

/// `cache prune` keeps what it is told to keep (with what that references) and removes the
/// rest, metadata before archives; `--dry-run` removes nothing; young archives no metadata
/// names (a push in progress) stay.
#[test]
fn cache_prune_keeps_what_is_named_and_removes_the_rest() {
    let Bucket {
        env,
        moto,
        store,
        names,
    } = Bucket::new("store", 1 << 20, 3);
    let url = format!("s3://{BUCKET}/p");
    s3_cmd(&env, &moto, &store)
        .args(["store", "copy", "--to", &url])
        .args(&names)
        .ok();
    // An archive of a push in progress: no metadata names it yet, and it is younger than the
    // grace period; the pushed ones are older.
    std::thread::sleep(Duration::from_secs(3));
    moto.put(
        BUCKET,
        &format!("p/archives/{}.tar.zst", "0".repeat(64)),
        b"partial",
    );
    let prune = |extra: &[&str]| {
        let out = s3_cmd(&env, &moto, &store)
            .arg("--json")
            .args([
                "cache", "prune", &url, "--keep", &names[0], "--keep", &names[1],
            ])
            .args(extra)
            .ok();
        json_of(&out)
    };
    let before = moto.keys(BUCKET, "p/");
    let dry = prune(&["--dry-run", "--grace", "2s"]);
    assert_eq!(
        moto.keys(BUCKET, "p/"),
        before,
        "a dry run removed something"
    );
    assert_eq!(dry["kept"], 2);
    let mut gone: Vec<String> = names[2..].to_vec();
    gone.sort();
    assert_eq!(dry["removed_paths"], json!(gone));

    let report = prune(&["--grace", "2s"]);
    assert_eq!(report["removed_paths"], json!(gone));
    assert_eq!(report["removed_archives"].as_array().unwrap().len(), 2);
    assert_eq!(report["young_archives"], 1);
    let keys = moto.keys(BUCKET, "p/");
    for name in &names[..2] {
        assert!(keys.contains(&format!("p/paths/{name}.json")), "{keys:?}");
    }
    for name in &names[2..] {
        assert!(!keys.contains(&format!("p/paths/{name}.json")), "{keys:?}");
    }
    assert_no_dangling_metadata(&moto, "p/", "pruned");
    // What was kept still pulls.
    let pulled = env.path("pulled");
    s3_cmd(&env, &moto, &pulled)
        .args(["store", "copy", "--no-check-sigs", "--from", &url])
        .args(&names[..2])
        .ok();
}

/// An unreachable endpoint or a missing bucket: a clear error naming the cache, no secret.
#[test]
fn an_unreachable_bucket_is_named_without_its_credentials() {
    let env = TestEnv::new();
    let moto = Moto::start();
    let store = env.path("store");
    let names = plain_store(&env, &store, 1000, 0);
    let out = s3_cmd(&env, &moto, &store)
        .args(["store", "copy", "--to", "s3://no-such-bucket/x"])
        .args(&names)
        .output()
        .unwrap();
    fails_with(&out, "s3://no-such-bucket/x");
    assert_no_secret(&[&store], &[&out]);
    drop(moto);
    let closed = ClosedPort::new();
    let port = closed.port;
    let empty = env.path("store-empty");
    let out = env
        .cmd_without_store()
        .arg("--store")
        .arg(&empty)
        .env("AWS_ACCESS_KEY_ID", "AKIA")
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .args(["store", "copy", "--no-check-sigs", "--from"])
        .arg(format!("s3://{BUCKET}/x?endpoint=http://127.0.0.1:{port}"))
        .args(&names)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("s3://{BUCKET}/x")), "{err}");
    assert_no_secret(&[&empty], &[&out]);
}

/// A directory cache copied into a bucket object by object (as `aws s3 sync` would) is a cache:
/// another store pulls every path from it, verified, and no secret is written anywhere.
#[test]
fn a_directory_cache_synced_into_a_bucket_is_a_cache() {
    let Bucket {
        env,
        moto,
        store,
        names,
    } = Bucket::new("store-a", 1 << 20, 3);
    let dir = env.path("dir-cache");
    let push = s3_cmd(&env, &moto, &store)
        .args(["store", "copy", "--to"])
        .arg(&dir)
        .args(&names)
        .ok();
    for entry in walkdir::WalkDir::new(&dir).into_iter().flatten() {
        let rel = entry.path().strip_prefix(&dir).unwrap().to_string_lossy();
        if entry.file_type().is_file() && !rel.starts_with("tmp") {
            moto.put(
                BUCKET,
                &format!("synced/{rel}"),
                &fs::read(entry.path()).unwrap(),
            );
        }
    }
    let pulled = env.path("store-b");
    let reads_before = moto.requests().len();
    let pull = s3_cmd(&env, &moto, &pulled)
        .args(["store", "copy", "--no-check-sigs", "--from"])
        .arg(format!("s3://{BUCKET}/synced"))
        .args(&names)
        .ok();
    s3_cmd(&env, &moto, &pulled)
        .args(["store", "verify", "--check-contents"])
        .ok();
    let reads = moto.requests()[reads_before..]
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&format!("/{BUCKET}/synced/archives/")))
        .count();
    assert!(
        reads >= names.len(),
        "{reads} archive reads of {} paths",
        names.len()
    );
    assert_no_secret(&[&pulled], &[&push, &pull]);
}
