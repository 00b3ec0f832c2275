//! `comfix resolve`: git refs, registry packages and models pinned into a lock and fetched into
//! the store, hermetically (local git repos, loopback servers).

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::git::Entry;
use crate::support::http::{Route, TestServer};
use crate::support::*;

#[test]
fn resolve_pins_every_source_and_fetches_it() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    w.resolve_ok(&[]);
    let lock = w.lock();

    // Git: refs pinned to commits; checkouts without .git, with the submodule at its commit.
    assert_eq!(lock["comfy"]["commit"], head_of(&w.core, "refs/heads/main"));
    assert_eq!(
        lock["custom_nodes"][0]["git"]["commit"],
        head_of(&w.node_a, "refs/tags/v1")
    );
    assert_eq!(
        lock["custom_nodes"][1]["git"]["commit"],
        head_of(&w.node_b, "refs/heads/dev")
    );
    let core = w.store_path(lock["comfy"]["store_path"].as_str().unwrap());
    assert_eq!(
        std::fs::read(core.join("vendor/sub/lib.py")).unwrap(),
        b"LIB = 1\n"
    );
    assert!(!core.join(".git").exists());
    assert_eq!(
        std::fs::read_link(core.join("latest")).unwrap(),
        Path::new("main.py")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(core.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111,
        0o111
    );
    let node_a = w.store_path(
        lock["custom_nodes"][0]["git"]["store_path"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        std::fs::read(node_a.join("__init__.py")).unwrap(),
        b"A = 1\n",
        "the tag, not main"
    );

    // Registry: download URL and the zip's BLAKE3; unpacked as Manager installs it.
    let reg = &lock["custom_nodes"][2]["registry"];
    assert_eq!(reg["version"], "1.0.0");
    assert_eq!(reg["blake3"], blake3_hex(&w.zip));
    let pkg = w.store_path(reg["store_path"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(pkg.join(".tracking")).unwrap(),
        "pyproject.toml\nmodules/\nmodules/impact.py\n__init__.py\nalias.py"
    );
    assert!(pkg.join("pyproject.toml").is_file());
    assert_eq!(
        std::fs::read_link(pkg.join("alias.py")).unwrap(),
        Path::new("modules/impact.py")
    );

    // Hugging Face: pinned to the commit the hub reports, with its size and SHA-256.
    let hf = &lock["models"][0];
    assert_eq!(hf["revision"], HF_COMMIT);
    assert!(hf["url"]
        .as_str()
        .unwrap()
        .contains(&format!("/resolve/{HF_COMMIT}/split/unet.safetensors")));
    assert_eq!(hf["size"], w.model.len() as u64);
    assert_eq!(hf["sha256"], sha256_hex(&w.model));
    assert_eq!(hf["blake3"], blake3_hex(&w.model));
    // CivitAI: the primary file, its reported hashes verified and recorded.
    let civ = &lock["models"][1];
    assert_eq!(civ["blake3"], blake3_hex(&w.lora));
    assert_eq!(civ["sha256"], sha256_hex(&w.lora));
    assert_eq!(civ["revision"], "123");
    // The same bytes from two URLs are one store path.
    assert_eq!(lock["models"][2]["store_path"], hf["store_path"]);
    assert_eq!(
        std::fs::read(w.store_path(hf["store_path"].as_str().unwrap())).unwrap(),
        w.model
    );

    // Tokens: sent to their own hosts, never to the redirect target.
    let hub_auth: Vec<_> = w
        .hub
        .requests()
        .iter()
        .map(|r| r.headers.get("authorization").cloned())
        .collect();
    assert!(
        hub_auth
            .iter()
            .all(|a| a.as_deref() == Some(&*format!("Bearer {HF_TOKEN}"))),
        "{hub_auth:?}"
    );
    assert!(!w.cdn.requests().is_empty());
    for request in w.cdn.requests() {
        assert!(
            !request.headers.contains_key("authorization"),
            "token leaked to {}",
            request.path
        );
    }
    for request in w.registry.requests() {
        assert!(!request.headers.contains_key("authorization"));
    }

    // No secret in the lock, and the store verifies.
    let text = w.lock_text();
    assert!(!text.contains(HF_TOKEN) && !text.contains(CIVITAI_TOKEN));
    w.env.ok(&["store", "verify", "--check-contents"]);
}

#[test]
fn resolve_is_deterministic_and_keeps_the_lock() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    w.resolve_ok(&[]);
    let first = w.lock_text();
    let served = w.total_requests();
    // Again: the same lock, and nothing fetched (everything is valid in the store).
    w.resolve_ok(&[]);
    assert_eq!(w.lock_text(), first);
    assert_eq!(
        w.total_requests(),
        served,
        "a complete store needs no request"
    );
    // From scratch in another store: the same lock, store paths included.
    std::fs::remove_file(w.env.work.join("versions/v1.lock.json")).unwrap();
    let other = w.env.path("other-store");
    ok(w.resolve_in(&other, &[]));
    assert_eq!(w.lock_text(), first);
}

#[test]
fn update_changes_only_what_it_names() {
    let mut w = World::new();
    w.write_spec(&w.default_spec());
    w.resolve_ok(&[]);
    let before = w.lock();
    w.node_b
        .commit("dev", &[("__init__.py", Entry::File(b"B dev 2\n"))]);
    w.core
        .commit("main", &[("main.py", Entry::File(b"print('comfy 2')\n"))]);

    // Without --update the lock is kept as it is.
    w.resolve_ok(&[]);
    assert_eq!(w.lock(), before);

    w.resolve_ok(&["--update", "node-b"]);
    let after = w.lock();
    assert_eq!(
        after["custom_nodes"][1]["git"]["commit"],
        head_of(&w.node_b, "refs/heads/dev")
    );
    assert_ne!(after["custom_nodes"][1], before["custom_nodes"][1]);
    let mut expected = before.clone();
    expected["custom_nodes"][1] = after["custom_nodes"][1].clone();
    assert_eq!(after, expected, "only node-b changed");

    // An unknown name is an error that lists the known ones.
    let out = w.resolve(&["--update", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "`nope` not in the spec");
    assert!(stderr(&out).contains("`node-b`"));

    // `--update` alone re-resolves everything.
    w.resolve_ok(&["--update"]);
    assert_eq!(
        w.lock()["comfy"]["commit"],
        head_of(&w.core, "refs/heads/main")
    );
}

/// A resolve killed inside a git update leaves libgit2's lock files in the mirror (seen as
/// "failed to lock file `…/config.lock` for writing" on the next run); the next update, holding
/// the mirror's lock, clears them.
#[test]
fn a_mirror_left_locked_by_a_killed_fetch_is_updated() {
    let mut w = World::new();
    w.write_spec(&w.default_spec());
    w.resolve_ok(&[]);
    let mut planted = 0;
    for mirror in std::fs::read_dir(w.env.store.join("git"))
        .unwrap()
        .flatten()
    {
        let path = mirror.path();
        if path.extension().is_some_and(|e| e == "git") {
            for lock in [
                "config.lock",
                "packed-refs.lock",
                "HEAD.lock",
                "shallow.lock",
            ] {
                std::fs::write(path.join(lock), b"").unwrap();
            }
            for entry in walkdir::WalkDir::new(path.join("refs"))
                .into_iter()
                .flatten()
            {
                if entry.file_type().is_file() {
                    let name = format!("{}.lock", entry.file_name().to_string_lossy());
                    std::fs::write(entry.path().with_file_name(name), b"").unwrap();
                }
            }
            planted += 1;
        }
    }
    assert!(planted >= 3);
    w.node_b
        .commit("dev", &[("__init__.py", Entry::File(b"B dev 3\n"))]);
    w.core
        .commit("main", &[("main.py", Entry::File(b"print('comfy 3')\n"))]);
    w.resolve_ok(&["--update"]);
    assert_eq!(
        w.lock()["comfy"]["commit"],
        head_of(&w.core, "refs/heads/main")
    );
}

#[test]
fn force_pushed_refs_and_pinned_commits() {
    let mut w = World::new();
    let mut spec = w.default_spec();
    spec["custom_nodes"] = json!([]);
    spec["models"] = json!([]);
    w.write_spec(&spec);
    w.resolve_ok(&[]);
    let old = w.lock()["comfy"]["commit"].as_str().unwrap().to_string();

    // Force-push main to an unrelated history.
    let new = w
        .core
        .commit_with_parent(
            "refs/heads/main",
            &[("main.py", Entry::File(b"rewritten\n"))],
            None,
        )
        .to_string();
    w.resolve_ok(&["--update", "comfy"]);
    assert_eq!(w.lock()["comfy"]["commit"], new.as_str());

    // A pinned commit still resolves from the mirror that saw it...
    spec["comfy"]["commit"] = json!(old);
    w.write_spec(&spec);
    w.resolve_ok(&[]);
    assert_eq!(w.lock()["comfy"]["commit"], old.as_str());
    // ...but not from a fresh store: the remote no longer has it.
    std::fs::remove_file(w.env.work.join("versions/v1.lock.json")).unwrap();
    let out = w.resolve_in(&w.env.path("fresh-store"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("Commit `{old}` not found")),
        "{}",
        stderr(&out)
    );

    // A missing ref is a clear error too.
    spec["comfy"] = json!({ "repo": w.core.url(), "ref": "no-such-branch" });
    w.write_spec(&spec);
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "Ref `no-such-branch` not found");
}

/// The commits of `ids` the store's mirror of the repository `name` holds.
fn mirrored(store: &Path, name: &str, ids: &[String]) -> Vec<String> {
    let mirror = fs::read_dir(store.join("git"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let file = p.file_name().unwrap().to_string_lossy();
            file.contains(name) && file.ends_with(".git")
        })
        .expect("a mirror of the repository");
    let repo = git2::Repository::open_bare(mirror).unwrap();
    ids.iter()
        .filter(|id| repo.find_commit(git2::Oid::from_str(id).unwrap()).is_ok())
        .cloned()
        .collect()
}

#[test]
fn pinned_commits_are_fetched_alone_over_smart_http() {
    use crate::support::git_http::{long_history, GitHttpServer};
    let w = World::new();
    let served = w.env.path("served");
    let ids = long_history(&served, "long.git", 300);
    let (by_id, refs_only) = (
        GitHttpServer::start(&served, true),
        GitHttpServer::start(&served, false),
    );
    let pinned = ids[ids.len() - 3].clone();
    let mut spec = w.default_spec();
    spec["models"] = json!([]);
    let mut node = |url: String, commit: Option<&str>| {
        let mut node = json!({ "repo": url, "name": "long", "ref": "main" });
        if let Some(commit) = commit {
            node["commit"] = json!(commit);
        }
        spec["custom_nodes"] = json!([node]);
        spec.clone()
    };

    // A server that gives a commit by its id: that commit alone, at depth 1.
    w.write_spec(&node(by_id.url("long.git"), Some(&pinned)));
    w.resolve_ok(&[]);
    assert_eq!(
        w.lock()["custom_nodes"][0]["git"]["commit"],
        pinned.as_str()
    );
    let held = mirrored(&w.env.store, "long", &ids);
    assert!(
        held == [pinned.clone()],
        "the mirror holds {} of {} commits",
        held.len(),
        ids.len()
    );
    let alone = by_id.bytes_sent();

    // One that gives only what its refs name: the branch at depth 1 is not enough (the pin is
    // two commits behind), so the branch's history is fetched, and nothing else.
    let store = w.env.path("store-refs-only");
    w.write_spec(&node(refs_only.url("long.git"), Some(&pinned)));
    std::fs::remove_file(w.env.work.join("versions/v1.lock.json")).unwrap();
    let out = w.resolve_in(&store, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        w.lock()["custom_nodes"][0]["git"]["commit"],
        pinned.as_str()
    );
    assert_eq!(mirrored(&store, "long", &ids).len(), ids.len());
    let whole = refs_only.bytes_sent();
    assert!(
        alone * 5 < whole,
        "the commit alone took {alone} bytes, the history {whole}"
    );

    // A mirror made shallow by a branch's tip is deepened when an older pin needs it.
    let store = w.env.path("store-deepened");
    w.write_spec(&node(refs_only.url("long.git"), None));
    std::fs::remove_file(w.env.work.join("versions/v1.lock.json")).unwrap();
    let out = w.resolve_in(&store, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        mirrored(&store, "long", &ids),
        vec![ids.last().unwrap().clone()]
    );
    w.write_spec(&node(refs_only.url("long.git"), Some(&pinned)));
    let out = w.resolve_in(&store, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        w.lock()["custom_nodes"][0]["git"]["commit"],
        pinned.as_str()
    );

    // A commit the server does not have, after every narrower way failed: the user's error.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    w.write_spec(&node(by_id.url("long.git"), Some(missing)));
    let out = w.resolve_in(&store, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, &format!("Commit `{missing}` not found"));
}

fn models_only(w: &World, models: Value) -> Value {
    let mut spec = w.default_spec();
    spec["custom_nodes"] = json!([]);
    spec["models"] = models;
    spec
}

#[test]
fn killed_download_resumes_where_it_stopped() {
    let w = World::new();
    let big = pseudo_random(8 << 20, 9);
    let mut route = Route::file(big.clone());
    route.stall_after = Some(4 << 20);
    w.cdn.route("/big.bin", route);
    w.cdn.set_stall(true);
    w.write_spec(&models_only(
        &w,
        json!([{ "source": w.cdn.url("/big.bin"), "target_subdir": "checkpoints" }]),
    ));

    let mut child = w
        .cmd(&w.env.store)
        .args(["resolve", "v1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while w.cdn.stalls_reached() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the download never reached the stall"
        );
        assert!(child.try_wait().unwrap().is_none(), "resolve exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200)); // let the client write what it received
    child.kill().unwrap(); // SIGKILL at ~50%
    child.wait().unwrap();
    w.cdn.set_stall(false);
    assert_eq!(
        w.env
            .ok(&["store", "ls"])
            .lines()
            .filter(|l| l.ends_with("big.bin"))
            .count(),
        0
    );

    w.resolve_ok(&[]);
    let served = w.cdn.bytes_served("/big.bin");
    assert!(
        served < big.len() as u64 + (64 << 10),
        "restart transferred only the rest: {served} bytes served for {}",
        big.len()
    );
    let requests = w.cdn.requests_to("/big.bin");
    let range = requests
        .last()
        .unwrap()
        .headers
        .get("range")
        .cloned()
        .unwrap_or_default();
    assert!(
        range.starts_with("bytes=") && range != "bytes=0-",
        "resumed with {range:?}"
    );
    let lock = w.lock();
    assert_eq!(lock["models"][0]["blake3"], blake3_hex(&big));
    assert_eq!(
        std::fs::read(w.store_path(lock["models"][0]["store_path"].as_str().unwrap())).unwrap(),
        big
    );
}

#[test]
fn dropped_connection_is_retried_from_where_it_broke() {
    let w = World::new();
    let data = pseudo_random(2 << 20, 5);
    let mut route = Route::file(data.clone());
    route.drop_after = Some(1 << 20);
    w.cdn.route("/flaky.bin", route);
    w.write_spec(&models_only(
        &w,
        json!([{ "source": w.cdn.url("/flaky.bin") }]),
    ));
    w.resolve_ok(&[]);
    let requests = w.cdn.requests_to("/flaky.bin");
    assert_eq!(requests.len(), 2, "one retry");
    assert_eq!(
        requests[1].headers.get("range").map(String::as_str),
        Some("bytes=1048576-")
    );
    assert_eq!(w.cdn.bytes_served("/flaky.bin"), data.len() as u64);
    assert_eq!(w.lock()["models"][0]["blake3"], blake3_hex(&data));
}

#[test]
fn wrong_bytes_register_nothing_and_name_both_hashes() {
    let w = World::new();
    let wrong = "f".repeat(64);
    w.write_spec(&models_only(
        &w,
        json!([{ "source": w.cdn.url("/mirror/unet.safetensors"), "sha256": wrong }]),
    ));
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("expected `{wrong}`")), "{err}");
    assert!(
        err.contains(&format!("got `{}`", sha256_hex(&w.model))),
        "{err}"
    );
    assert!(
        err.contains("/mirror/unet.safetensors"),
        "names the URL: {err}"
    );
    assert!(
        !w.env.work.join("versions/v1.lock.json").exists(),
        "no lock written"
    );
    let listed = w.env.ok(&["store", "ls"]);
    assert!(
        !listed.contains("unet.safetensors"),
        "the bad model is not registered: {listed}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(w.env.store.join("tmp/downloads"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "the bad download is discarded");

    // CivitAI's reported hash is checked too.
    w.civitai.route("/api/v1/model-versions/9", Route::json(json!({ "files": [{ "primary": true,
        "hashes": { "BLAKE3": "AB".repeat(32) }, "downloadUrl": w.cdn.url("/mirror/unet.safetensors") }] })));
    w.write_spec(&models_only(
        &w,
        json!([{ "source": "civitai://9", "filename": "x.safetensors" }]),
    ));
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "BLAKE3 mismatch");
    assert!(stderr(&out).contains(&"ab".repeat(32)));
}

/// `@` is split in one place: the revision follows the last `@` (when it has no `/`), so a file
/// whose name holds an `@` is fetched at that path and placed under that name. Validation, the
/// file-name derivation and the fetcher used to split at different `@`s.
#[test]
fn an_at_sign_in_a_hugging_face_path_is_part_of_the_file_name() {
    let w = World::new();
    let model = pseudo_random(4096, 7);
    w.hub.route(
        &format!("/org/wan/resolve/{HF_COMMIT}/split/unet@fp8.safetensors"),
        Route::file(model.clone()).header("X-Repo-Commit", HF_COMMIT),
    );
    w.write_spec(&models_only(
        &w,
        json!([{ "source": format!("hf://org/wan/split/unet@fp8.safetensors@{HF_COMMIT}"), "target_subdir": "unet" }]),
    ));
    let out = ok(w.resolve(&[]));
    assert!(
        !stderr(&out).contains("warning"),
        "the derived name has its extension: {}",
        stderr(&out)
    );
    let lock = w.lock();
    assert_eq!(lock["models"][0]["filename"], "unet@fp8.safetensors");
    assert_eq!(lock["models"][0]["blake3"], blake3_hex(&model));
    assert!(!w
        .hub
        .requests_to(&format!(
            "/org/wan/resolve/{HF_COMMIT}/split/unet@fp8.safetensors"
        ))
        .is_empty());
}

#[test]
fn missing_token_is_a_clear_error() {
    let w = World::new();
    w.write_spec(&models_only(
        &w,
        json!([{ "source": "hf://org/wan/split/unet.safetensors", "name": "wan-unet" }]),
    ));
    let no_login = w.env.path("no-hf-login");
    let out = w
        .cmd(&w.env.store)
        .env_remove("HF_TOKEN")
        .env("HF_HOME", &no_login)
        .args(["resolve", "v1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("model `wan-unet`") && err.contains("answered 401"),
        "{err}"
    );
    assert!(err.contains("hint: set `HF_TOKEN`"), "{err}");
    assert!(err.contains("hf auth login"), "{err}");
}

/// Without `HF_TOKEN`, the token `hf auth login` saved is used, where huggingface_hub reads it:
/// `HF_TOKEN_PATH`, else `$HF_HOME/token`; it never reaches the lock.
#[test]
fn the_hugging_face_login_token_file_is_used() {
    let w = World::new();
    w.write_spec(&models_only(
        &w,
        json!([{ "source": "hf://org/wan/split/unet.safetensors", "name": "wan-unet" }]),
    ));
    let home = w.env.path("hf-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), format!("{HF_TOKEN}\n")).unwrap();
    let elsewhere = w.env.path("token-elsewhere");
    std::fs::write(&elsewhere, HF_TOKEN).unwrap();
    let lock_file = w.env.work.join("versions/v1.lock.json");
    for (var, value) in [("HF_HOME", &home), ("HF_TOKEN_PATH", &elsewhere)] {
        let _ = std::fs::remove_file(&lock_file);
        let store = w.env.path(&format!("store-{var}"));
        w.cmd(&store)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HOME")
            .env(var, value)
            .args(["resolve", "v1"])
            .ok();
        let lock = std::fs::read_to_string(&lock_file).unwrap();
        assert!(!lock.contains(HF_TOKEN), "{lock}");
    }
}

/// CivitAI's token is read as `CIVITAI_TOKEN` or, as comfy-cli names it, `CIVITAI_API_TOKEN`.
#[test]
fn civitai_s_token_is_read_under_either_name() {
    let w = World::new();
    w.write_spec(&models_only(
        &w,
        json!([{ "source": "civitai://123", "name": "detail", "filename": "detail.safetensors" }]),
    ));
    let resolve = |name: Option<&str>| {
        let mut cmd = w.cmd(&w.env.store);
        cmd.env_remove("CIVITAI_TOKEN").args(["resolve", "v1"]);
        if let Some(name) = name {
            cmd.env(name, CIVITAI_TOKEN);
        }
        cmd.output().unwrap()
    };
    fails_with(&resolve(None), "answered 401");
    ok(resolve(Some("CIVITAI_API_TOKEN")));
}

#[test]
fn malicious_zips_write_nothing_outside() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "parent",
            make_zip(&[("ok.py", b"x"), ("../../evil.txt", b"pwned")], &[]),
        ),
        (
            "absolute",
            make_zip(&[("/tmp/comfix-evil-abs.txt", b"pwned")], &[]),
        ),
        (
            "symlink",
            make_zip(&[("ok.py", b"x")], &[("link", "../../../evil-link")]),
        ),
        ("through-symlink", make_zip(&[], &[("dir", "/tmp")])),
    ];
    for (what, zip) in cases {
        let w = World::new();
        w.registry.route(
            "/nodes/evil/versions/1.0.0",
            Route::json(json!({ "downloadUrl": w.registry.url("/evil.zip") })),
        );
        w.registry.route("/evil.zip", Route::file(zip));
        let mut spec = models_only(&w, json!([]));
        spec["custom_nodes"] = json!([{ "cnr": "evil", "version": "1.0.0" }]);
        w.write_spec(&spec);
        let out = w.resolve(&[]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is unsafe"),
            "{what}: {}",
            stderr(&out)
        );
        let escaped: Vec<_> = walkdir::WalkDir::new(w.env.dir.path())
            .into_iter()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("evil"))
            .collect();
        assert!(escaped.is_empty(), "{what}: wrote {escaped:?}");
        assert!(!Path::new("/tmp/comfix-evil-abs.txt").exists());
        assert_eq!(
            w.env
                .ok(&["store", "ls"])
                .lines()
                .filter(|l| l.contains("evil"))
                .count(),
            0
        );
    }
}

#[test]
fn offline_uses_the_store_or_lists_everything_missing() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    w.resolve_ok(&[]);
    let lock = w.lock_text();
    let served = w.total_requests();
    // Complete store: works with no request at all.
    w.resolve_ok(&["--offline"]);
    assert_eq!(w.total_requests(), served);
    assert_eq!(w.lock_text(), lock);

    // Empty store: one error listing every missing item.
    let out = w.resolve_in(&w.env.path("empty-store"), &["--offline"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Offline, and the store lacks"), "{err}");
    for item in [
        "core `comfy`",
        "node `node-a`",
        "node `node-b`",
        "registry node `impact`",
        "model `wan-unet`",
        "model `detail`",
        "model `unet-mirror`",
    ] {
        assert!(err.contains(item), "{item} missing from:\n{err}");
    }
    assert_eq!(w.total_requests(), served, "offline touched the network");
}

/// A lock is a function of the spec and the sources: the same spec — git, registry, Hugging Face
/// (with its BLAKE3 in the spec, so the store may be searched by it), CivitAI, a URL, a local
/// file, Python wheels and a workflow — gives the same lock bytes on an empty store, on a warm
/// one, after a collection, and on a store that holds the model files from elsewhere.
#[test]
fn the_lock_is_the_same_on_empty_warm_and_collected_stores() {
    let w = World::new();
    let index = TestServer::start();
    let index_url = crate::support::wheels::serve_index(&index, &crate::python::packages());
    let local = w.env.path("local/vae.safetensors");
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::write(&local, pseudo_random(100_000, 7)).unwrap();
    let mut spec = w.default_spec();
    spec["models"][0]["blake3"] = json!(blake3_hex(&w.model));
    spec["models"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "source": format!("file://{}", local.display()), "target_subdir": "vae" }));
    spec["python"] =
        json!({ "version": crate::python::python_version(), "requirements": ["beta"] });
    spec["workflows"] = json!(["workflows/w.json"]);
    w.write_spec(&spec);
    std::fs::create_dir_all(w.env.work.join("versions/workflows")).unwrap();
    std::fs::write(w.env.work.join("versions/workflows/w.json"), b"{\"1\": {}}").unwrap();
    let lock_file = w.env.work.join("versions/v1.lock.json");
    let resolve = |store: &Path| -> String {
        let _ = std::fs::remove_file(&lock_file);
        w.cmd(store)
            .env("UV_DEFAULT_INDEX", &index_url)
            .args(["resolve", "v1"])
            .ok();
        std::fs::read_to_string(&lock_file).unwrap()
    };
    let empty = resolve(&w.env.store);
    let lock: Value = serde_json::from_str(&empty).unwrap();
    assert!(
        lock["models"][1]["sha256"].is_string(),
        "CivitAI's SHA-256: {lock}"
    );
    assert!(
        lock["models"][0]["sha256"].is_string(),
        "Hugging Face's SHA-256: {lock}"
    );
    assert_eq!(
        resolve(&w.env.store),
        empty,
        "a warm store gives another lock"
    );
    w.cmd(&w.env.store).args(["gc", "--home-grace", "0s"]).ok();
    assert_eq!(
        resolve(&w.env.store),
        empty,
        "a collected store gives another lock"
    );
    // A store that holds the model files already, added from elsewhere under their names.
    let other = w.env.path("other-store");
    let files = w.env.path("elsewhere");
    std::fs::create_dir_all(&files).unwrap();
    for (name, bytes) in [
        ("unet.safetensors", &w.model),
        ("detail.safetensors", &w.lora),
    ] {
        std::fs::write(files.join(name), bytes).unwrap();
        w.cmd(&other)
            .args(["store", "add"])
            .arg(files.join(name))
            .ok();
    }
    assert_eq!(
        resolve(&other),
        empty,
        "a store holding the files gives another lock"
    );
}

/// `add node` (git and registry) and `add model` pin what they add — fetched, a model verified
/// by digest — against the existing lock (the rest kept) before spec and lock are written; a
/// duplicate, a ref that does not exist or a digest that does not match writes nothing.
#[test]
fn add_node_and_add_model_pin_before_they_write() {
    let w = World::new();
    w.write_spec(&models_only(&w, json!([])));
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    let spec_path = w.env.work.join("versions/v1.json");
    let lock_path = w.env.work.join("versions/v1.lock.json");
    let core = w.lock()["comfy"].clone();
    let add = |args: &[&str]| w.cmd(&w.env.store).arg("add").args(args).output().unwrap();

    ok(add(&[
        "node",
        "v1",
        &format!("{}@v1", w.node_a.url()),
        "--name",
        "node-a",
    ]));
    ok(add(&["node", "v1", "impact@1.0.0"]));
    let lock = w.lock();
    let nodes = lock["custom_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{lock}");
    assert!(nodes[0]["git"]["commit"].is_string(), "{lock}");
    assert_eq!(nodes[1]["registry"]["version"], "1.0.0", "{lock}");
    assert_eq!(lock["comfy"], core, "the rest of the lock is kept");

    // A dry run resolves and shows the lock's change, and writes neither file.
    let (spec_before, lock_before) = (fs::read(&spec_path).unwrap(), fs::read(&lock_path).unwrap());
    let out = ok(w
        .cmd(&w.env.store)
        .args(["--json", "add", "node", "v1", "--dry-run"])
        .arg(format!("{}@main", w.node_b.url()))
        .output()
        .unwrap());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["changes"][0]["name"], "ComfyUI-B", "{report}");
    assert_eq!(report["changes"][0]["a"], Value::Null, "{report}");
    assert_eq!(fs::read(&spec_path).unwrap(), spec_before);
    assert_eq!(fs::read(&lock_path).unwrap(), lock_before);

    let asked = w.hub.requests().len();
    ok(add(&[
        "model",
        "v1",
        "hf://org/wan/split/unet.safetensors",
        "--folder",
        "unet",
        "--name",
        "wan-unet",
    ]));
    assert!(w.hub.requests().len() > asked, "pinned at `add` time");
    let model = &w.lock()["models"][0];
    assert!(
        model["sha256"].is_string() && model["store_path"].is_string(),
        "{model}"
    );

    // Refused, and nothing written.
    let (spec_before, lock_before) = (fs::read(&spec_path).unwrap(), fs::read(&lock_path).unwrap());
    let wrong = "0".repeat(64);
    let mirror = w.cdn.url("/mirror/unet.safetensors");
    let missing_repo = format!("file://{}", w.env.path("no-such-repo.git").display());
    let missing_file = w.cdn.url("/no/such/file.safetensors");
    for (args, says_what) in [
        (vec!["node", "v1", "impact"], "already"),
        (
            vec![
                "node",
                "v1",
                &format!("{}@no-such-ref", w.node_b.url()),
                "--name",
                "b",
            ],
            "no-such-ref",
        ),
        (
            vec!["model", "v1", &mirror, "--name", "m", "--sha256", &wrong],
            wrong.as_str(),
        ),
        (vec!["node", "v1", "not/a/registry/id"], "neither a git URL"),
        (vec!["node", "v1", "impakt"], "did you mean `impact`?"),
        (vec!["node", "v1", &missing_repo], "no-such-repo"),
        (vec!["model", "v1", &missing_file, "--name", "n"], "404"),
    ] {
        let out = add(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        says(&out, says_what);
        assert_eq!(fs::read(&spec_path).unwrap(), spec_before, "{args:?}");
        assert_eq!(fs::read(&lock_path).unwrap(), lock_before, "{args:?}");
    }
    // Several names at once: each found where the earlier removals left the entries.
    ok(w.cmd(&w.env.store)
        .args(["remove", "v1", "node-a", "impact", "wan-unet"])
        .output()
        .unwrap());
    let lock = w.lock();
    assert_eq!(lock["custom_nodes"], json!([]), "{lock}");
    assert_eq!(lock["models"], json!([]), "{lock}");
}

/// A workflow as ComfyUI's editor saves it: core loaders with `properties.models` (Hugging Face,
/// CivitAI and a plain URL, one with its SHA-256), a registry node, a GitHub node the version has
/// already, a node with no pack recorded and a model with no URL.
fn editor_workflow(w: &World) -> Value {
    let node = |id: u64, kind: &str, properties: Value, widgets: Value| {
        json!({ "id": id, "type": kind, "pos": [100 * id, 80], "size": [315, 82], "flags": {},
                "order": id - 1, "mode": 0, "inputs": [], "outputs": [],
                "properties": properties, "widgets_values": widgets })
    };
    json!({
        "id": "5f0c5b7e-0c7a-4a4e-9d7e-3c2a1b0f9e11",
        "revision": 0,
        "last_node_id": 7,
        "last_link_id": 0,
        "nodes": [
            node(1, "UNETLoader", json!({ "cnr_id": "comfy-core", "ver": "0.3.40",
                "Node name for S&R": "UNETLoader",
                "models": [{ "name": "unet.safetensors",
                    "url": "https://huggingface.co/org/wan/resolve/main/split/unet.safetensors?download=true",
                    "hash": sha256_hex(&w.model), "hash_type": "SHA256",
                    "directory": "diffusion_models" }] }), json!(["unet.safetensors", "default"])),
            node(2, "LoraLoaderModelOnly", json!({ "cnr_id": "comfy-core", "ver": "0.3.40",
                "models": [{ "name": "detail.safetensors",
                    "url": "https://civitai.com/api/download/models/123", "directory": "loras" }] }),
                json!(["detail.safetensors", 1.0])),
            node(3, "UpscaleModelLoader", json!({ "cnr_id": "comfy-core",
                "models": [{ "name": "up.safetensors",
                    "url": w.cdn.url("/mirror/unet.safetensors"), "directory": "upscale_models" }] }),
                json!(["up.safetensors"])),
            node(4, "ImpactWildcardProcessor", json!({ "cnr_id": "impact", "ver": "1.0.0" }), json!([])),
            node(5, "ANode", json!({ "aux_id": "someone/ComfyUI-A", "ver": "0123456789abcdef0123456789abcdef01234567" }), json!([])),
            node(6, "MysteryNode", json!({ "Node name for S&R": "MysteryNode" }), json!([])),
            node(7, "CLIPLoader", json!({ "cnr_id": "comfy-core",
                "models": [{ "name": "clip.safetensors", "directory": "text_encoders" }] }),
                json!(["clip.safetensors"])),
        ],
        "links": [],
        "groups": [],
        "config": {},
        "extra": { "ds": { "scale": 1.0, "offset": [0, 0] }, "frontendVersion": "1.23.4" },
        "version": 0.4
    })
}

#[test]
fn a_workflow_s_packs_and_models_are_added_with_where_they_came_from() {
    let w = World::new();
    let mut spec = models_only(&w, json!([]));
    spec["custom_nodes"] = json!([{ "repo": w.node_a.url(), "name": "ComfyUI-A", "ref": "v1" }]);
    w.write_spec(&spec);
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    let spec_path = w.env.work.join("versions/v1.json");
    let lock_path = w.env.work.join("versions/v1.lock.json");
    let file = w.env.work.join("versions/workflows/wan_t2v.json");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(
        &file,
        serde_json::to_string_pretty(&editor_workflow(&w)).unwrap(),
    )
    .unwrap();
    let add = |file: &Path, after: &[&str]| {
        w.cmd(&w.env.store)
            .args(["--json", "add", "v1", "--from-workflow"])
            .arg(file)
            .args(after)
            .output()
            .unwrap()
    };
    let unchanged = |what: &str, spec: &[u8], lock: &[u8]| {
        assert_eq!(fs::read(&spec_path).unwrap(), spec, "{what}: spec");
        assert_eq!(fs::read(&lock_path).unwrap(), lock, "{what}: lock");
    };
    let (spec_before, lock_before) = (fs::read(&spec_path).unwrap(), fs::read(&lock_path).unwrap());

    // A dry run: the lock's difference, nothing written.
    let out = ok(add(&file, &["--dry-run"]));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true, "{report}");
    let mut changed: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            "diffusion_models/unet.safetensors",
            "impact",
            "loras/detail.safetensors",
            "upscale_models/up.safetensors"
        ],
        "{report}"
    );
    unchanged("a dry run", &spec_before, &lock_before);

    // The edit: each entry named with the nodes that need it; the rest listed.
    let out = ok(add(&file, &[]));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["written"], true, "{report}");
    let added = report["added"].to_string();
    assert!(
        added.contains("node 4 (ImpactWildcardProcessor)")
            && added.contains("node 2 (LoraLoaderModelOnly)"),
        "{report}"
    );
    assert!(
        report["present"].to_string().contains("node 5 (ANode)"),
        "{report}"
    );
    assert_eq!(
        report["unidentified"],
        json!([
            "node 6 (MysteryNode): no node pack recorded (`cnr_id` or `aux_id`)",
            "node 7 (CLIPLoader): model `clip.safetensors` has no URL"
        ]),
        "{report}"
    );
    let spec: Value = serde_json::from_slice(&fs::read(&spec_path).unwrap()).unwrap();
    assert_eq!(
        spec["custom_nodes"][1],
        json!({ "cnr": "impact", "version": "1.0.0" })
    );
    assert_eq!(
        spec["models"][0],
        json!({ "source": "hf://org/wan/split/unet.safetensors", "target_subdir": "diffusion_models",
                "sha256": sha256_hex(&w.model) }),
        "a Hugging Face URL is a hf:// source (the token and endpoint apply)"
    );
    assert_eq!(spec["models"][2]["filename"], "up.safetensors", "{spec}");
    let lock = w.lock();
    assert_eq!(
        lock["custom_nodes"][1]["registry"]["version"], "1.0.0",
        "{lock}"
    );
    let blake3s: Vec<&str> = lock["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["blake3"].as_str().unwrap())
        .collect();
    assert_eq!(blake3s.len(), 3, "{lock}");
    assert!(blake3s.contains(&blake3_hex(&w.lora).as_str()), "{lock}");

    // Again: all there, nothing resolved or written.
    let (spec_now, lock_now) = (fs::read(&spec_path).unwrap(), fs::read(&lock_path).unwrap());
    let asked = w.total_requests();
    let report: Value = serde_json::from_slice(&ok(add(&file, &[])).stdout).unwrap();
    assert_eq!(report["written"], false, "{report}");
    assert_eq!(report["added"], json!([]), "{report}");
    assert_eq!(w.total_requests(), asked, "nothing asked of the network");
    unchanged("a second add", &spec_now, &lock_now);

    // What the version's own workflows use is not removed unless forced.
    let mut spec: Value = serde_json::from_slice(&fs::read(&spec_path).unwrap()).unwrap();
    spec["workflows"] = json!(["workflows/wan_t2v.json"]);
    w.write_spec(&spec);
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    let (spec_now, lock_now) = (fs::read(&spec_path).unwrap(), fs::read(&lock_path).unwrap());
    let remove = |args: &[&str]| {
        w.cmd(&w.env.store)
            .args(["remove", "v1"])
            .args(args)
            .output()
            .unwrap()
    };
    for (name, says_what) in [
        (
            "impact",
            "node 4 (ImpactWildcardProcessor) of `workflows/wan_t2v.json`",
        ),
        (
            "up.safetensors",
            "`up.safetensors` is named in `workflows/wan_t2v.json`",
        ),
    ] {
        let out = remove(&[name]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        says(&out, says_what);
        says(&out, "--force");
        unchanged(name, &spec_now, &lock_now);
    }
    ok(remove(&["impact", "--force"]));
    assert_eq!(w.lock()["custom_nodes"].as_array().unwrap().len(), 1);
    let (spec_now, lock_now) = (fs::read(&spec_path).unwrap(), fs::read(&lock_path).unwrap());

    // A workflow without the editor's metadata, or not JSON: refused, nothing written.
    let api = w.env.work.join("api.json");
    fs::write(&api, r#"{"3": {"class_type": "KSampler", "inputs": {}}}"#).unwrap();
    let broken = w.env.work.join("broken.json");
    fs::write(&broken, "{\"nodes\": [").unwrap();
    for (file, says_what) in [(&api, "no metadata"), (&broken, "is not JSON")] {
        let out = add(file, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stdout(&out).contains(says_what), "{}", stdout(&out));
        unchanged(says_what, &spec_now, &lock_now);
    }
}

#[test]
fn concurrent_edits_take_turns_and_lose_nothing() {
    let w = World::new();
    w.write_spec(&models_only(&w, json!([])));
    w.cmd(&w.env.store).args(["resolve", "v1"]).ok();
    for round in 0..3 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let spawn = |source: String, name: &str| {
            w.cmd(&w.env.store)
                .args(["add", "node", "v1", &source, "--name", name])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let first = spawn(format!("{}@v1", w.node_a.url()), &a);
        let second = spawn(format!("{}@main", w.node_b.url()), &b);
        for child in [first, second] {
            ok(child.wait_with_output().unwrap());
        }
        let names: Vec<String> = w.lock()["custom_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names.len(),
            2 * (round + 1),
            "round {round}: an edit was lost: {names:?}"
        );
        assert!(
            names.contains(&a) && names.contains(&b),
            "round {round}: {names:?}"
        );
    }
}
