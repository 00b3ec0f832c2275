//! Channels: CI publishes a signed pointer to a version into a cache; a machine follows it,
//! switching its home only to a version whose workflows pass, and going back when they fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::support::*;

fn generate_key(rig: &Rig, name: &str) -> (PathBuf, String) {
    let dir = rig.env.path("keys");
    let out = rig
        .cmd()
        .args(["key", "generate", "--name", name, "--dir"])
        .arg(&dir)
        .ok();
    (
        dir.join(format!("{name}.secret")),
        stdout(&out).trim().to_string(),
    )
}

fn publish(rig: &Rig, cache: &Path, id: &str, secret: &Path) {
    rig.cmd()
        .args(["channel", "publish"])
        .arg(cache)
        .args(["prod", id, "--sign-key"])
        .arg(secret)
        .ok();
}

/// A follower: its own store, home and versions folder; the publisher's upstreams still there.
struct Follower {
    store: PathBuf,
    home: PathBuf,
    versions: PathBuf,
}

impl Follower {
    fn cmd(&self, rig: &Rig) -> Command {
        let mut cmd = rig.env.cmd_without_store();
        cmd.arg("--store").arg(&self.store).env("TMPDIR", &rig.tmp);
        cmd
    }

    fn follow(&self, rig: &Rig, cache: &Path, key: &str, extra: &[&str]) -> Output {
        self.cmd(rig)
            .args(["--json", "follow"])
            .arg(cache)
            .arg("prod")
            .arg("--target")
            .arg(&self.home)
            .arg("--versions-dir")
            .arg(&self.versions)
            .args(["--trusted-key", key])
            .args(extra)
            .output()
            .unwrap()
    }

    fn version(&self, rig: &Rig) -> String {
        let out = self
            .cmd(rig)
            .args(["--json", "status", "--target"])
            .arg(&self.home)
            .ok();
        json_of(&out)["version_id"].as_str().unwrap().to_string()
    }
}

/// `follow --test` realizes the channel's version in a new store and keeps it (its workflows
/// pass); again, it is up to date. A version whose workflows fail is realized, tested, and gone
/// back from (exit 1), the home at the version before; without `--test` it is switched to. A
/// channel signed by a key the follower does not trust is not followed.
#[test]
fn follow_switches_to_versions_whose_workflows_pass_and_goes_back_otherwise() {
    let rig = Rig::new();
    let (secret, public) = generate_key(&rig, "ci");
    let (_, stranger) = generate_key(&rig, "stranger");
    let cache = rig.env.path("cache");
    publish(&rig, &cache, "v1", &secret);
    let f = Follower {
        store: rig.env.path("store-f"),
        home: rig.env.path("home-f"),
        versions: rig.env.path("follower-versions"),
    };

    let out = f.follow(&rig, &cache, &stranger, &["--test"]);
    fails_with(&out, "is not signed by a trusted key");
    assert!(!f.home.exists(), "an untrusted channel was followed");

    let out = f.follow(&rig, &cache, &public, &["--test"]);
    let report = json_of(&ok(out));
    assert_eq!(report["outcome"], "switched", "{report}");
    assert_eq!(report["version_id"], "v1");
    assert_eq!(report["tested"], true);
    assert_eq!(
        fs::read(f.home.join("models/checkpoints/tiny.safetensors")).unwrap(),
        b"model bytes".repeat(100)
    );
    assert!(f.versions.join("v1.lock.json").is_file());
    let first = report["generation"].as_u64().unwrap();

    let again = json_of(&ok(f.follow(&rig, &cache, &public, &["--test"])));
    assert_eq!(again["outcome"], "up-to-date", "{again}");
    assert_eq!(again["generation"].as_u64().unwrap(), first);

    // v2: the same version with a workflow that needs a node nobody has.
    let versions = rig.env.work.join("versions");
    fs::write(
        versions.join("workflows/bad.json"),
        empty_then("NoSuchNode", json!({})).to_string(),
    )
    .unwrap();
    let mut spec: Value = read_json(&versions.join("v1.json"));
    spec["version_id"] = "v2".into();
    spec["workflows"] = json!(["workflows/bad.json"]);
    fs::write(versions.join("v2.json"), spec.to_string()).unwrap();
    rig.cmd().args(["resolve", "v2"]).ok();
    publish(&rig, &cache, "v2", &secret);

    let out = f.follow(&rig, &cache, &public, &["--test"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    assert_eq!(report["tested"], false);
    assert_eq!(report["generation"].as_u64().unwrap(), first);
    assert_eq!(f.version(&rig), "v1");

    let report = json_of(&ok(f.follow(&rig, &cache, &public, &[])));
    assert_eq!(report["outcome"], "switched", "{report}");
    assert_eq!(f.version(&rig), "v2");
}

/// A channel that names a version the cache lacks (its core's path pruned from the cache) with
/// the upstream repository gone: `follow` fails naming the repository it could not get (not an
/// "unsupported URL protocol", as libgit2 calls a path that is gone), and leaves no home.
#[test]
fn a_channel_whose_version_the_cache_lacks_is_not_followed() {
    let rig = Rig::new();
    let (secret, public) = generate_key(&rig, "ci");
    let cache = rig.env.path("cache");
    publish(&rig, &cache, "v1", &secret);
    let lock = read_json(&rig.env.work.join("versions/v1.lock.json"));
    let core = lock["comfy"]["store_path"].as_str().unwrap();
    fs::remove_file(cache.join(format!("paths/{core}.json"))).unwrap();
    fs::rename(rig.env.path("repos"), rig.env.path("repos-gone")).unwrap();
    let f = Follower {
        store: rig.env.path("store-f"),
        home: rig.env.path("home-f"),
        versions: rig.env.path("follower-versions"),
    };
    let out = f.follow(&rig, &cache, &public, &[]);
    assert!(!out.status.success(), "{}", stderr(&out));
    says(&out, "Repository");
    says(&out, "ComfyUI.git` does not exist");
    assert!(
        !f.home.join(".comfix/current").exists(),
        "a home was switched to a version it could not realize"
    );
}

/// The channel moved back and forth between two versions while a machine follows it, 8 times
/// each: every `follow` realizes one whole version — the one its report names, which the home is
/// then at — never a mix of two pointers.
#[test]
fn a_channel_moved_while_followed_gives_one_version_or_the_other() {
    let rig = Rig::new();
    let (secret, public) = generate_key(&rig, "ci");
    let versions = rig.env.work.join("versions");
    let mut spec: Value = read_json(&versions.join("v1.json"));
    spec["version_id"] = "v2".into();
    fs::write(versions.join("v2.json"), spec.to_string()).unwrap();
    rig.cmd().args(["resolve", "v2"]).ok();
    let cache = rig.env.path("cache");
    publish(&rig, &cache, "v1", &secret);
    publish(&rig, &cache, "v2", &secret);
    let f = Follower {
        store: rig.env.path("store-f"),
        home: rig.env.path("home-f"),
        versions: rig.env.path("follower-versions"),
    };
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            for _ in 0..8 {
                for id in ["v1", "v2"] {
                    publish(&rig, &cache, id, &secret);
                }
            }
        });
        let mut seen = std::collections::BTreeSet::new();
        let mut follows = 0;
        while !publisher.is_finished() || seen.len() < 2 || follows < 10 {
            follows += 1;
            let report = json_of(&ok(f.follow(&rig, &cache, &public, &[])));
            let id = report["version_id"].as_str().unwrap().to_string();
            assert_eq!(f.version(&rig), id, "{report}");
            let lock = read_json(&f.versions.join(format!("{id}.lock.json")));
            assert_eq!(lock["version_id"], id.as_str());
            seen.insert(id);
            if publisher.is_finished() && seen.len() < 2 {
                publish(
                    &rig,
                    &cache,
                    if seen.contains("v1") { "v2" } else { "v1" },
                    &secret,
                );
            }
        }
    });
}
