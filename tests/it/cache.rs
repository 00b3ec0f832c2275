//! A binary cache directory: `store copy --to/--from`, and `--substituter file://DIR`.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::closure::{assert_store_whole as verify, registered, status_manifest as manifest};
use crate::resolve::World;
use crate::support::http::TestServer;
use crate::support::*;

fn realize_json(w: &World, store: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    w.cmd(store)
        .arg("--json")
        .args(["realize", "v1", "--target"])
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

fn copy_to(w: &World, store: &Path, cache: &Path) -> std::process::Output {
    w.cmd(store)
        .args(["store", "copy", "--to"])
        .arg(cache)
        .arg("v1")
        .output()
        .unwrap()
}

/// A world whose version is realized in its store and pushed, signed, to `cache/`, then every
/// upstream is gone; the public key to trust.
fn offline_world() -> (World, std::path::PathBuf, String) {
    let mut w = World::new();
    w.write_spec(&w.default_spec());
    let home = w.env.path("home-a");
    let out = realize_json(&w, &w.env.store, &home, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (secret, public) = crate::closure::key(&w, "team-1");
    let out = w
        .cmd(&w.env.store)
        .args(["store", "copy", "--to"])
        .arg(w.env.path("cache"))
        .arg("v1")
        .arg("--sign-key")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for server in [&mut w.hub, &mut w.cdn, &mut w.civitai, &mut w.registry] {
        drop(std::mem::replace(server, TestServer::start()));
    }
    (w, home, public)
}

/// Store A pushes a version; store B, with every upstream gone, realizes it from the cache alone:
/// every derivation substituted, the home's manifest A's, no request upstream.
#[test]
fn a_version_is_realized_from_a_cache_directory_alone() {
    let (w, home_a, public) = offline_world();
    fs::rename(w.env.path("repos"), w.env.path("repos-gone")).unwrap();
    let cache = w.env.path("cache");
    assert!(cache.join("comfix-cache.json").is_file());
    let store_b = w.env.path("store-b");
    let home_b = w.env.path("home-b");
    let url = format!("file://{}", cache.display());
    let out = realize_json(
        &w,
        &store_b,
        &home_b,
        &["--substituter", &url, "--trusted-key", &public],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for d in report["derivations"].as_array().unwrap() {
        let expected = if d["kind"] == "assemble-home" {
            "built"
        } else {
            "substituted"
        };
        assert_eq!(d["outcome"], expected, "{d}");
    }
    assert_eq!(w.total_requests(), 0, "went upstream");
    assert_eq!(
        manifest(&w, &store_b, &home_b),
        manifest(&w, &w.env.store, &home_a)
    );
    assert_eq!(
        fs::read(home_b.join("models/unet/unet.safetensors")).unwrap(),
        w.model
    );
    verify(&w, &store_b);

    // The same through the environment, into another store, for resolve.
    let store_c = w.env.path("store-c");
    let out = w
        .cmd(&store_c)
        .env("COMFIX_SUBSTITUTERS", &url)
        .env("COMFIX_TRUSTED_KEYS", &public)
        .args(["resolve", "v1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    verify(&w, &store_c);
}

/// A cache whose archive was changed: the substitution is refused (both hashes named), nothing
/// unverified is registered, and with upstream gone the realize fails saying so.
#[test]
fn a_corrupted_cache_archive_is_refused_and_nothing_registered() {
    let (w, _home, public) = offline_world();
    let cache = w.env.path("cache");
    let lock: Value = serde_json::from_str(&w.lock_text()).unwrap();
    let model = lock["models"][0]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
    let entry: Value =
        serde_json::from_slice(&fs::read(cache.join(format!("paths/{model}.json"))).unwrap())
            .unwrap();
    let archive = cache.join(entry["archive"].as_str().unwrap());
    // Recompress the archive with one byte of the model changed.
    let mut tar = crate::closure::decompress(&archive);
    let at = tar
        .windows(64)
        .position(|win| win == &w.model[..64])
        .unwrap();
    tar[at + 10] ^= 0xff;
    crate::closure::compress(&tar, &archive);

    let store = w.env.path("store-d");
    let url = format!("file://{}", cache.display());
    let out = realize_json(
        &w,
        &store,
        &w.env.path("home-d"),
        &["--substituter", &url, "--trusted-key", &public],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("tree hash"), "{err}");
    assert!(err.contains("model `wan-unet`"), "{err}");
    assert!(!registered(&w, &store).contains(&model));
    verify(&w, &store);
}

/// Two stores push the same closure into one new cache at once: both succeed, and a third store
/// pulls every path from it, verified.
#[test]
fn two_stores_push_to_one_cache_at_once() {
    let (w, _home, public) = offline_world();
    let store_b = w.env.path("store-b");
    let url = format!("file://{}", w.env.path("cache").display());
    let out = realize_json(
        &w,
        &store_b,
        &w.env.path("home-b"),
        &["--substituter", &url, "--trusted-key", &public],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for round in 0..3 {
        let shared = w.env.path(&format!("shared-{round}"));
        let mut pushes: Vec<_> = [&w.env.store, &store_b]
            .iter()
            .map(|store| {
                w.cmd(store)
                    .args(["store", "copy", "--to"])
                    .arg(&shared)
                    .arg("v1")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for push in pushes.iter_mut() {
            let status = push.wait().unwrap();
            assert!(status.success(), "round {round}");
        }
        let entries = fs::read_dir(shared.join("paths")).unwrap().count();
        let names: Vec<String> = fs::read_dir(shared.join("paths"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".json")
                    .to_string()
            })
            .collect();
        assert!(entries >= 6, "round {round}: {entries} entries");
        let store_e = w.env.path(&format!("store-e-{round}"));
        let out = w
            .cmd(&store_e)
            .args(["store", "copy", "--no-check-sigs", "--from"])
            .arg(&shared)
            .args(&names)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        verify(&w, &store_e);
        // Nothing half-written is left where readers look.
        assert_eq!(fs::read_dir(shared.join("tmp")).unwrap().count(), 0);
    }
}

/// A cache's paths are taken only when a trusted key signed them: unsigned, or signed by another
/// key, the substitution is refused (and with upstream gone the realize fails, naming why);
/// `--no-check-sigs` takes them, their digests still checked.
#[test]
fn unsigned_cache_paths_are_refused() {
    let (w, _home, _public) = offline_world();
    let unsigned = w.env.path("unsigned-cache");
    let out = copy_to(&w, &w.env.store, &unsigned);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = format!("file://{}", unsigned.display());
    let (_, other) = crate::closure::key(&w, "someone-else");
    for (store, args) in [
        ("s1", vec!["--substituter", url.as_str()]),
        (
            "s2",
            vec![
                "--substituter",
                url.as_str(),
                "--trusted-key",
                other.as_str(),
            ],
        ),
    ] {
        let store = w.env.path(store);
        let out = realize_json(&w, &store, &w.env.path("home-x"), &args);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("is not signed by a trusted key"),
            "{}",
            stderr(&out)
        );
        // The git trees came from their (local) repositories; nothing came from the cache.
        let names = registered(&w, &store);
        let lock: Value = serde_json::from_str(&w.lock_text()).unwrap();
        for model in lock["models"].as_array().unwrap() {
            let name = model["store_path"].as_str().unwrap().to_string();
            assert!(!names.contains(&name), "{name} came from an unsigned cache");
        }
    }
    let store = w.env.path("s3");
    let out = realize_json(
        &w,
        &store,
        &w.env.path("home-y"),
        &["--substituter", &url, "--no-check-sigs"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    verify(&w, &store);
}
