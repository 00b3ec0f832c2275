//! A team cache in a real S3-compatible server (moto, on 127.0.0.1): `store copy --to/--from
//! s3://…`, `--substituter s3://…`, `cache prune`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::closure::{assert_store_whole as verify, registered, status_manifest as manifest};
use crate::resolve::{pseudo_random, World};
use crate::support::http::TestServer;
use crate::support::s3::{Moto, SECRET_KEY};
use crate::support::*;

const BUCKET: &str = "team-cache";

/// A version with git nodes, a registry node, models and a venv, realized in store A; the
/// upstreams' servers and the package index are kept so the test can take them away.
struct Team {
    w: World,
    moto: Moto,
    index: TestServer,
    index_url: String,
    home_a: PathBuf,
}

impl Team {
    fn new() -> Team {
        let moto = Moto::start();
        moto.create_bucket(BUCKET);
        let w = World::new();
        let index = TestServer::start();
        let index_url = wheels::serve_index(&index, &crate::python::packages());
        let mut spec = w.default_spec();
        spec["python"] = json!({
            "version": crate::python::python_version(),
            "requirements": ["beta", "gamma"]
        });
        w.write_spec(&spec);
        let team = Team {
            home_a: w.env.path("home-a"),
            w,
            moto,
            index,
            index_url,
        };
        let out = team.realize(&team.w.env.store.clone(), &team.home_a.clone(), &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        team
    }

    fn cmd(&self, store: &Path) -> Command {
        let mut cmd = self.w.cmd(store);
        self.moto.env(&mut cmd);
        cmd.env("UV_DEFAULT_INDEX", &self.index_url)
            .env_remove("UV_INDEX_URL")
            .env_remove("PIP_INDEX_URL");
        cmd
    }

    fn realize(&self, store: &Path, home: &Path, args: &[&str]) -> Output {
        self.cmd(store)
            .arg("--json")
            .args(["realize", "v1", "--target"])
            .arg(home)
            .args(args)
            .output()
            .unwrap()
    }

    fn push(&self, url: &str, args: &[&str]) -> Output {
        self.cmd(&self.w.env.store)
            .args(["store", "copy", "--to", url, "v1"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Every upstream gone: hub, CDN, CivitAI, registry, git repositories, package index.
    fn cut_upstream(&mut self) {
        for server in [
            &mut self.w.hub,
            &mut self.w.cdn,
            &mut self.w.civitai,
            &mut self.w.registry,
            &mut self.index,
        ] {
            drop(std::mem::replace(server, TestServer::start()));
        }
        fs::rename(self.w.env.path("repos"), self.w.env.path("repos-gone")).unwrap();
    }

    fn lock(&self) -> Value {
        serde_json::from_str(&self.w.lock_text()).unwrap()
    }
}

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

/// Store A pushes a signed version to the bucket; store B, empty, with every upstream gone,
/// realizes it from the bucket alone: every derivation substituted from `s3://…`, the server saw
/// the reads, the same home as A's. A directory cache copied into the bucket object by object
/// is a cache too.
#[test]
fn a_version_is_realized_from_a_bucket_alone() {
    let mut t = Team::new();
    let (secret, public) = crate::closure::key(&t.w, "team-1");
    let url = format!("s3://{BUCKET}/comfix");
    let push = t.push(&url, &["--sign-key", secret.to_str().unwrap(), "-j", "4"]);
    assert!(push.status.success(), "{}", stderr(&push));
    let keys = t.moto.keys(BUCKET, "comfix/");
    assert!(
        keys.contains(&"comfix/comfix-cache.json".to_string()),
        "{keys:?}"
    );
    let entries = keys
        .iter()
        .filter(|k| k.starts_with("comfix/paths/"))
        .count();
    assert!(entries >= 8, "{keys:?}");

    // The same closure through a directory cache, then into the bucket as plain objects.
    let dir = t.w.env.path("dir-cache");
    let out = t
        .cmd(&t.w.env.store)
        .args(["store", "copy", "--to"])
        .arg(&dir)
        .args(["v1", "--sign-key", secret.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for entry in walkdir::WalkDir::new(&dir).into_iter().flatten() {
        let rel = entry
            .path()
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .to_string();
        if entry.file_type().is_file() && !rel.starts_with("tmp") {
            t.moto.put(
                BUCKET,
                &format!("synced/{rel}"),
                &fs::read(entry.path()).unwrap(),
            );
        }
    }

    t.cut_upstream();
    let reads_before = t.moto.requests().len();
    for (prefix, store, home) in [
        ("comfix", "store-b", "home-b"),
        ("synced", "store-c", "home-c"),
    ] {
        let store = t.w.env.path(store);
        let home = t.w.env.path(home);
        let substituter = format!("s3://{BUCKET}/{prefix}");
        let out = t.realize(
            &store,
            &home,
            &["--substituter", &substituter, "--trusted-key", &public],
        );
        assert!(out.status.success(), "{prefix}: {}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let derivations = report["derivations"].as_array().unwrap();
        assert!(
            derivations.iter().any(|d| d["kind"] == "build-venv"),
            "{report}"
        );
        for d in derivations {
            if d["kind"] == "assemble-home" {
                assert_eq!(d["outcome"], "built", "{d}");
            } else {
                assert_eq!(d["outcome"], "substituted", "{d}");
                assert!(d["from"].as_str().unwrap().starts_with(&substituter), "{d}");
            }
        }
        assert_eq!(t.w.total_requests(), 0, "went upstream");
        assert_eq!(
            manifest(&t.w, &store, &home),
            manifest(&t.w, &t.w.env.store, &t.home_a)
        );
        assert_eq!(
            fs::read(home.join("models/unet/unet.safetensors")).unwrap(),
            t.w.model
        );
        assert!(home.join(".venv").exists());
        verify(&t.w, &store);
        assert_no_secret(&[&store, &home], &[&out, &push]);
    }
    // The server saw every archive read, from both prefixes.
    let reads: Vec<String> = t.moto.requests()[reads_before..]
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/archives/"))
        .cloned()
        .collect();
    for prefix in ["comfix", "synced"] {
        let n = reads
            .iter()
            .filter(|r| r.contains(&format!("/{BUCKET}/{prefix}/archives/")))
            .count();
        assert!(
            n >= entries,
            "{prefix}: {n} archive reads of {entries} paths"
        );
    }
    assert_no_secret(&[&t.w.env.work], &[]);
}

/// Paths that no trusted key signed are refused from a bucket (and with upstream gone the
/// realize fails saying why, nothing from the bucket registered); a corrupted archive in the
/// bucket is refused naming the tree hashes, nothing of it registered.
#[test]
fn unsigned_and_corrupted_objects_in_a_bucket_are_refused() {
    let mut t = Team::new();
    let url = format!("s3://{BUCKET}/unsigned");
    let out = t.push(&url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (secret, public) = crate::closure::key(&t.w, "team-1");
    let signed = format!("s3://{BUCKET}/signed");
    let out = t.push(&signed, &["--sign-key", secret.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = t.lock();
    let model = lock["models"][0]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
    // One byte of the model changed inside its archive, in the signed cache.
    let entry: Value = serde_json::from_slice(
        &t.moto
            .get(BUCKET, &format!("signed/paths/{model}.json"))
            .unwrap(),
    )
    .unwrap();
    let key = format!("signed/{}", entry["archive"].as_str().unwrap());
    let mut tar = Vec::new();
    zstd::stream::read::Decoder::new(&t.moto.get(BUCKET, &key).unwrap()[..])
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let at = tar.windows(64).position(|w| w == &t.w.model[..64]).unwrap();
    tar[at + 10] ^= 0xff;
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.write_all(&tar).unwrap();
    t.moto.put(BUCKET, &key, &encoder.finish().unwrap());
    t.cut_upstream();

    let store = t.w.env.path("store-unsigned");
    let out = t.realize(
        &store,
        &t.w.env.path("home-x"),
        &["--substituter", &url, "--trusted-key", &public],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not signed by a trusted key"),
        "{}",
        stderr(&out)
    );
    let names = registered(&t.w, &store);
    for m in lock["models"].as_array().unwrap() {
        let name = m["store_path"].as_str().unwrap().to_string();
        assert!(!names.contains(&name), "{name} came from an unsigned cache");
    }

    let store = t.w.env.path("store-corrupt");
    let out = t.realize(
        &store,
        &t.w.env.path("home-y"),
        &["--substituter", &signed, "--trusted-key", &public],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("tree hash"), "{err}");
    assert!(err.contains("model `wan-unet`"), "{err}");
    assert!(!registered(&t.w, &store).contains(&model));
    verify(&t.w, &store);
}

/// A store of plain paths: one of `big` bytes (several upload parts) and `small` little ones.
fn plain_store(env: &TestEnv, store: &Path, big: usize, small: usize) -> Vec<String> {
    let mut names = Vec::new();
    let dir = env.path("inputs");
    fs::create_dir_all(&dir).unwrap();
    let mut files = vec![("big.bin".to_string(), pseudo_random(big, 7))];
    for i in 0..small {
        files.push((
            format!("small-{i}.txt"),
            format!("small file {i}\n").into_bytes(),
        ));
    }
    for (name, bytes) in files {
        let path = dir.join(&name);
        fs::write(&path, &bytes).unwrap();
        let out = env
            .cmd_without_store()
            .arg("--store")
            .arg(store)
            .args(["store", "add"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let printed = String::from_utf8(out.stdout).unwrap();
        names.push(
            Path::new(printed.trim())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string(),
        );
    }
    names
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
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let store = env.path("store-a");
    // 40 MiB of incompressible bytes: three parts of 16 MiB, 16 MiB and 8 MiB.
    let names = plain_store(&env, &store, 40 << 20, 3);
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
            let out = s3_cmd(&env, &moto, &store)
                .args(["store", "copy", "--to", &url])
                .args(&names)
                .output()
                .unwrap();
            assert!(out.status.success(), "{context}: {}", stderr(&out));
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
            let out = s3_cmd(&env, &moto, &pulled)
                .args(["store", "copy", "--no-check-sigs", "--from", &url])
                .args(&names)
                .output()
                .unwrap();
            assert!(out.status.success(), "{context}: {}", stderr(&out));
            let out = s3_cmd(&env, &moto, &pulled)
                .args(["store", "verify", "--check-contents"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{context}: {}", stderr(&out));
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

/// Two stores push the same paths to one new prefix at once, three times: both succeed each
/// time, no metadata dangles, and a third store pulls every path, verified.
#[test]
fn two_stores_push_to_one_bucket_at_once() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let (store_a, store_b) = (env.path("store-a"), env.path("store-b"));
    let names = plain_store(&env, &store_a, 20 << 20, 6);
    assert_eq!(plain_store(&env, &store_b, 20 << 20, 6), names);
    for round in 0..3 {
        let url = format!("s3://{BUCKET}/shared-{round}");
        let mut pushes: Vec<_> = [&store_a, &store_b]
            .iter()
            .map(|store| {
                s3_cmd(&env, &moto, store)
                    .args(["store", "copy", "-j", "4", "--to", &url])
                    .args(&names)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for push in pushes.iter_mut() {
            let mut err = String::new();
            push.stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(push.wait().unwrap().success(), "round {round}: {err}");
        }
        assert_no_dangling_metadata(&moto, &format!("shared-{round}/"), "at once");
        let pulled = env.path(&format!("store-e-{round}"));
        let out = s3_cmd(&env, &moto, &pulled)
            .args(["store", "copy", "--no-check-sigs", "--from", &url])
            .args(&names)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let out = s3_cmd(&env, &moto, &pulled)
            .args(["store", "verify", "--check-contents"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// `cache prune` keeps what it is told to keep (with what that references) and removes the
/// rest, metadata before archives; `--dry-run` removes nothing; young archives no metadata
/// names (a push in progress) stay.
#[test]
fn cache_prune_keeps_what_is_named_and_removes_the_rest() {
    let env = TestEnv::new();
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let store = env.path("store");
    let names = plain_store(&env, &store, 1 << 20, 3);
    let url = format!("s3://{BUCKET}/p");
    let out = s3_cmd(&env, &moto, &store)
        .args(["store", "copy", "--to", &url])
        .args(&names)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
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
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
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
    let out = s3_cmd(&env, &moto, &pulled)
        .args(["store", "copy", "--no-check-sigs", "--from", &url])
        .args(&names[..2])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
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
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("s3://no-such-bucket/x"), "{err}");
    assert_no_secret(&[&store], &[&out]);
    drop(moto);
    let moto = Moto::start();
    let port = moto.port;
    drop(moto);
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
