//! Inputs you can trust: TLS with the machine's (or `SSL_CERT_FILE`'s) roots and proxies, every
//! digest checked for every scheme, `file://` under a policy, real file names, narrow git
//! fetches, resumed resolutions, one download per URL across processes, optional models and
//! workflows.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};

use crate::support::git::{Entry, TestRepo};
use crate::support::http::{Route, TestServer};
use crate::support::tls::{ConnectProxy, TestCa};
use crate::support::*;

fn sha256_hex(bytes: &[u8]) -> String {
    crate::support::wheels::sha256_hex(bytes)
}

fn models_only(w: &World, models: Value) -> Value {
    let mut spec = w.default_spec();
    spec["custom_nodes"] = json!([]);
    spec["models"] = models;
    spec
}

fn registered(w: &World, needle: &str) -> bool {
    w.env.ok(&["store", "ls"]).contains(needle)
}

#[test]
fn https_trusts_ssl_cert_file_and_goes_through_a_proxy() {
    let w = World::new();
    let ca = TestCa::new();
    let pem = ca.write_pem(&w.env.path("ca.pem"));
    let tls = TestServer::start_tls(ca.server.clone());
    let data = pseudo_random(1 << 20, 7);
    tls.route("/m/model.safetensors", Route::file(data.clone()));
    w.write_spec(&models_only(
        &w,
        json!([{ "source": tls.other_host_url("/m/model.safetensors") }]),
    ));

    // Without the CA: the cause is named, with the variables to set; nothing is stored.
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("certificate of `localhost` is not trusted"),
        "{err}"
    );
    assert!(
        err.contains("SSL_CERT_FILE") && err.contains("SSL_CERT_DIR"),
        "{err}"
    );
    assert!(!registered(&w, "model.safetensors"));

    // With SSL_CERT_FILE naming it, through an HTTPS_PROXY: the download works and the proxy
    // carried it.
    let proxy = ConnectProxy::start();
    w.cmd(&w.env.store)
        .args(["resolve", "v1"])
        .env("SSL_CERT_FILE", &pem)
        .env("HTTPS_PROXY", proxy.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .ok();
    assert_eq!(w.lock()["models"][0]["blake3"], blake3_hex(&data));
    let tunnels = proxy.tunnels.lock().unwrap().clone();
    assert!(
        tunnels.contains(&format!("localhost:{}", tls.addr.port())),
        "the proxy saw {tunnels:?}"
    );
}

/// A server that answers 429 with `Retry-After` is waited on as long as it asked, not hit again
/// at the backoff's pace (10 ms here).
#[test]
fn retry_after_is_honoured() {
    let w = World::new();
    w.cdn.route(
        "/busy.safetensors",
        Route {
            status: 429,
            ..Route::default()
        }
        .header("Retry-After", "1"),
    );
    w.write_spec(&models_only(
        &w,
        json!([{ "source": w.cdn.url("/busy.safetensors") }]),
    ));
    let started = std::time::Instant::now();
    let out = w
        .cmd(&w.env.store)
        .env("COMFIX_RETRIES", "3")
        .args(["resolve", "v1"])
        .output()
        .unwrap();
    let took = started.elapsed();
    fails_with(&out, "answered 429");
    assert_eq!(w.cdn.requests_to("/busy.safetensors").len(), 3);
    assert!(
        took >= std::time::Duration::from_millis(1900),
        "two waits of 1 s asked for, took {took:?}"
    );
}

#[test]
fn network_errors_name_the_cause_and_the_host() {
    let w = World::new();
    let closed = ClosedPort::new();
    let port = closed.port;
    w.write_spec(&models_only(
        &w,
        json!([{ "source": format!("http://127.0.0.1:{port}/x.safetensors") }]),
    ));
    let out = w.resolve(&["--jobs", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("connection to `127.0.0.1:{port}` refused")),
        "{err}"
    );
}

#[test]
fn a_stalled_download_warns_and_then_completes() {
    let w = World::new();
    let data = pseudo_random(600_000, 3);
    let mut route = Route::file(data.clone());
    route.stall_after = Some(100_000);
    w.cdn.route("/slow/model.safetensors", route);
    w.cdn.set_stall(true);
    w.write_spec(&models_only(
        &w,
        json!([{ "source": w.cdn.url("/slow/model.safetensors") }]),
    ));
    let child = w
        .cmd(&w.env.store)
        .args(["resolve", "v1"])
        .env("COMFIX_STALL_WARNING", "0.3")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while w.cdn.stalls_reached() == 0 {
        assert!(start.elapsed().as_secs() < 30, "the transfer never stalled");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    w.cdn.set_stall(false);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    // The stalled connection is closed when released; the retry resumes from byte 100000.
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no data from `127.0.0.1`"), "{err}");
    assert_eq!(w.lock()["models"][0]["blake3"], blake3_hex(&data));
}

#[test]
fn file_sources_are_checked_against_every_digest() {
    let w = World::new();
    let data = pseudo_random(300_000, 4);
    let file = w.env.path("local/model.safetensors");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, &data).unwrap();
    let source = format!("file://{}", file.display());
    let zeros = "0".repeat(64);
    w.write_spec(&models_only(
        &w,
        json!([{ "source": source, "sha256": zeros }]),
    ));
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("expected `{zeros}`")), "{err}");
    assert!(
        err.contains(&format!("got `{}`", sha256_hex(&data))),
        "{err}"
    );
    assert!(err.contains("the spec's `models[0].sha256`"), "{err}");
    assert!(
        err.contains("correct `models[0].sha256`"),
        "the hint fits: {err}"
    );
    assert!(!err.contains("--update"), "no hint that cannot help: {err}");
    assert!(!w.env.work.join("versions/v1.lock.json").exists());
    assert!(!registered(&w, "model.safetensors"));

    // The right digest: the lock records the SHA-256 it computed.
    w.write_spec(&models_only(
        &w,
        json!([{ "source": source, "sha256": sha256_hex(&data) }]),
    ));
    w.resolve_ok(&[]);
    assert_eq!(w.lock()["models"][0]["sha256"], sha256_hex(&data));
    assert_eq!(w.lock()["models"][0]["blake3"], blake3_hex(&data));

    // A wrong BLAKE3 is refused the same way.
    w.write_spec(&models_only(
        &w,
        json!([{ "source": source, "filename": "other.safetensors", "blake3": "a".repeat(64) }]),
    ));
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "BLAKE3 mismatch");
    assert!(!registered(&w, "other.safetensors"));
}

#[test]
fn file_sources_take_only_readable_regular_files() {
    let w = World::new();
    let check = |source: &str| {
        w.write_spec(&models_only(
            &w,
            json!([{ "source": source, "filename": "m.safetensors" }]),
        ));
        w.env.run(&["spec", "check", "v1"])
    };
    for source in [
        "file:///proc/self/environ",
        "file:///dev/zero",
        "file:///sys/kernel/notes",
    ] {
        let out = check(source);
        assert_eq!(out.status.code(), Some(1), "{source}: {}", stderr(&out));
        says(&out, "models[0].source");
    }

    // A FIFO is refused at spec check and never hangs resolve.
    let fifo = w.env.path("model.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = check(&format!("file://{}", fifo.display()));
    assert_eq!(out.status.code(), Some(1));
    says(&out, "FIFO");

    // Private files are not published into a store every user can read: the test's folder is
    // opened (0755, as a machine's shared store would sit), so its store is reachable.
    fs::set_permissions(w.env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let private = w.env.path("private.safetensors");
    fs::write(&private, b"secret weights").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(&format!("file://{}", private.display()));
    assert_eq!(out.status.code(), Some(1));
    says(&out, "other users cannot read it");
    says(&out, "chmod o+r");
    // A readable file in a folder closed to others is as private.
    let closed = w.env.path("closed");
    fs::create_dir_all(&closed).unwrap();
    let hidden = closed.join("hidden.safetensors");
    fs::write(&hidden, b"hidden weights").unwrap();
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
    let source = format!("file://{}", hidden.display());
    let out = check(&source);
    assert_eq!(out.status.code(), Some(1));
    says(&out, &format!("`{}` is closed to them", closed.display()));
    w.write_spec(&models_only(
        &w,
        json!([{ "source": source, "filename": "m.safetensors" }]),
    ));
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "is closed to them");
    // A store only this user can reach publishes nothing: it takes both.
    let mine = w.env.path("mine");
    fs::create_dir_all(&mine).unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o700)).unwrap();
    ok(w.resolve_in(&mine.join("store"), &[]));

    // A symlink into /proc passes the name check and is caught when resolved; the environment
    // (with its tokens) never reaches the store.
    let link = w.env.path("innocent.safetensors");
    std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
    w.write_spec(&models_only(
        &w,
        json!([{ "source": format!("file://{}", link.display()) }]),
    ));
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "/proc");
    for entry in walkdir::WalkDir::new(&w.env.store).into_iter().flatten() {
        if entry.file_type().is_file() {
            let bytes = fs::read(entry.path()).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(crate::support::HF_TOKEN),
                "{}",
                entry.path().display()
            );
        }
    }
}

#[test]
fn models_get_their_real_file_names() {
    let w = World::new();
    let lora = pseudo_random(50_000, 5);
    w.civitai.route(
        "/api/v1/model-versions/1001",
        Route::json(
            json!({ "files": [{ "primary": true, "name": "detail-v2.safetensors",
            "hashes": { "SHA256": sha256_hex(&lora) }, "downloadUrl": w.cdn.url("/civ/1001") }] }),
        ),
    );
    w.cdn.route("/civ/1001", Route::file(lora.clone()));
    let blob = pseudo_random(40_000, 6);
    w.cdn.route(
        "/download/777",
        Route::file(blob.clone()).header(
            "Content-Disposition",
            "attachment; filename=\"upscaler-4x.pth\"",
        ),
    );
    w.write_spec(&models_only(
        &w,
        json!([
            { "source": "civitai://1001", "target_subdir": "loras" },
            { "source": w.cdn.url("/download/777"), "target_subdir": "upscale_models" }
        ]),
    ));
    // A name ComfyUI would not list is a warning at spec check.
    let out = ok(w.env.run(&["spec", "check", "v1"]));
    says(&out, "models[1]");
    says(&out, "Content-Disposition");
    assert!(!stderr(&out).contains("models[0]"), "{}", stderr(&out));

    let home = w.env.path("home");
    ok(crate::realize::realize(&w, "v1", &home, &[]));
    assert_eq!(
        fs::read(home.join("models/loras/detail-v2.safetensors")).unwrap(),
        lora
    );
    assert_eq!(
        fs::read(home.join("models/upscale_models/upscaler-4x.pth")).unwrap(),
        blob
    );
    let lock = w.lock();
    assert_eq!(lock["models"][0]["filename"], "detail-v2.safetensors");
    assert_eq!(lock["models"][1]["filename"], "upscaler-4x.pth");
    // The lock's names are kept: the next realize is a no-op without asking anyone.
    let before = w.total_requests();
    let out = ok(crate::realize::realize(&w, "v1", &home, &[]));
    says(&out, "up to date");
    assert_eq!(w.total_requests(), before);
}

#[test]
fn git_fetches_only_the_wanted_ref() {
    let w = World::new();
    let repos = w.env.path("repos");
    let mut node = TestRepo::new(&repos.join("narrow.git"));
    node.commit("main", &[("__init__.py", Entry::File(b"OK = 1\n"))]);
    let damaged = b"only on the other branch\n";
    node.commit("other", &[("blob.txt", Entry::File(damaged))]);
    // Remove the object that only `other` reaches: a full fetch cannot read it.
    let blob = git2::Oid::hash_object(git2::ObjectType::Blob, damaged).unwrap();
    let hex = blob.to_string();
    let git_dir = repos.join("narrow.git");
    let candidates = [
        git_dir.join("objects").join(&hex[..2]).join(&hex[2..]),
        git_dir.join(".git/objects").join(&hex[..2]).join(&hex[2..]),
    ];
    let object = candidates
        .iter()
        .find(|p| p.exists())
        .expect("a loose object");
    fs::remove_file(object).unwrap();

    let mut spec = models_only(&w, json!([]));
    spec["custom_nodes"] = json!([{ "repo": node.url(), "name": "narrow", "ref": "main" }]);
    w.write_spec(&spec);
    w.resolve_ok(&[]);
    let path = w.lock()["custom_nodes"][0]["git"]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fs::read(w.store_path(&path).join("__init__.py")).unwrap(),
        b"OK = 1\n"
    );
    // A commit given without a ref is fetched by its id.
    let head = crate::support::head_of(&node, "main");
    spec["custom_nodes"] = json!([{ "repo": node.url(), "name": "narrow", "commit": head }]);
    w.write_spec(&spec);
    let other_store = w.env.path("store2");
    ok(w.resolve_in(&other_store, &[]));
}

#[test]
fn concurrent_resolves_download_a_model_once() {
    let w = World::new();
    let data = pseudo_random(8 << 20, 8);
    w.cdn
        .route("/big/model.safetensors", Route::file(data.clone()));
    w.write_spec(&models_only(
        &w,
        json!([{ "source": w.cdn.url("/big/model.safetensors") }]),
    ));
    let children: Vec<_> = (0..4)
        .map(|_| {
            w.cmd(&w.env.store)
                .args(["resolve", "v1"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    all_ok(children);
    assert_eq!(
        w.cdn.bytes_served("/big/model.safetensors"),
        data.len() as u64,
        "one copy on the wire for four processes"
    );
}

#[test]
fn an_optional_model_that_fails_is_left_out_and_shown_missing() {
    let w = World::new();
    w.write_spec(&models_only(
        &w,
        json!([
            { "source": w.cdn.url("/mirror/unet.safetensors"), "target_subdir": "unet" },
            { "source": w.cdn.url("/gone/extra.safetensors"), "target_subdir": "loras", "required": false }
        ]),
    ));
    let home = w.env.path("home");
    let dry = w
        .cmd(&w.env.store)
        .args(["--json", "realize", "v1", "--dry-run", "--target"])
        .arg(&home)
        .output()
        .unwrap();
    let plan: Value = json_of(&dry);
    let states: Vec<&str> = plan["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "fetch-model")
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["resolve", "optional"]);

    let out = ok(crate::realize::realize(&w, "v1", &home, &[]));
    says(&out, "optional model");
    assert!(home.join("models/unet/unet.safetensors").exists());
    assert!(!home.join("models/loras/extra.safetensors").exists());
    let status = w.env.json(&["status", "--target", home.to_str().unwrap()]);
    assert_eq!(status["not_fetched"], json!(["loras/extra.safetensors"]));
    // The required one failing still fails.
    w.write_spec(&models_only(
        &w,
        json!([{ "source": w.cdn.url("/gone/extra.safetensors"), "target_subdir": "loras" }]),
    ));
    let out = crate::realize::realize(&w, "v1", &home, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn workflows_are_checked_and_stored_with_the_version() {
    let w = World::new();
    let mut spec = models_only(&w, json!([]));
    spec["workflows"] = json!(["flows/minimal.json"]);
    w.write_spec(&spec);
    let out = w.env.run(&["spec", "check", "v1"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "workflows[0]");

    let flows = w.env.work.join("versions/flows");
    fs::create_dir_all(&flows).unwrap();
    fs::write(flows.join("minimal.json"), b"{ not json").unwrap();
    let out = w.env.run(&["spec", "check", "v1"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "is not JSON");

    let workflow = br#"{"1": {"class_type": "SaveImage", "inputs": {}}}"#;
    fs::write(flows.join("minimal.json"), workflow).unwrap();
    w.resolve_ok(&[]);
    let lock = w.lock();
    let locked = &lock["workflows"][0];
    assert_eq!(locked["path"], "flows/minimal.json");
    assert_eq!(locked["blake3"], blake3_hex(workflow));
    let stored = w.store_path(locked["store_path"].as_str().unwrap());
    assert_eq!(fs::read(stored).unwrap(), workflow);
}

#[test]
fn a_failed_resolve_keeps_what_resolved() {
    let w = World::new();
    let good = pseudo_random(100_000, 11);
    w.cdn.route("/ok/a.safetensors", Route::file(good.clone()));
    w.write_spec(&models_only(
        &w,
        json!([
            { "source": "hf://org/wan/split/unet.safetensors", "target_subdir": "unet" },
            { "source": w.cdn.url("/later/b.safetensors"), "target_subdir": "loras" }
        ]),
    ));
    let out = w.resolve(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let heads = w.hub.requests().len();
    assert!(heads > 0);
    // The missing file appears; the next resolve does not ask Hugging Face again.
    w.cdn
        .route("/later/b.safetensors", Route::file(good.clone()));
    let out = ok(w.resolve(&[]));
    says(&out, "continuing");
    assert_eq!(
        w.hub.requests().len(),
        heads,
        "the kept pin is not asked again"
    );
    assert_eq!(w.lock()["models"][1]["blake3"], blake3_hex(&good));
    assert!(!w.env.store.join("cache/resolutions/v1.json").exists());
}
