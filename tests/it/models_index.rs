//! The models index (`comfix models index`) and the Hugging Face hub cache: models a version
//! needs that already sit on this machine are taken, verified, instead of downloaded; the user's
//! files are only read; a file changed since it was indexed, or a blob with the wrong bytes, is
//! never used.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::world::*;
use crate::support::*;

/// The model files a user already has: the CivitAI LoRA in a ComfyUI models folder (under another
/// name, closed to other users), the Hugging Face unet in the hub cache where huggingface_hub
/// puts it (`XDG_CACHE_HOME/huggingface/hub`, which the tests' environment sets).
struct Have {
    folder: PathBuf,
    lora: PathBuf,
    blob: PathBuf,
}

fn have(w: &World) -> Have {
    let folder = w.env.path("ComfyUI/models");
    let lora = folder.join("loras/my-detail.safetensors");
    fs::create_dir_all(lora.parent().unwrap()).unwrap();
    fs::write(&lora, &w.lora).unwrap();
    fs::set_permissions(&lora, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(folder.join("loras/notes.txt"), b"my loras\n").unwrap();
    let repo = w.env.path("xdg-cache/huggingface/hub/models--org--wan");
    let blob = repo.join("blobs").join(sha256_hex(&w.model));
    fs::create_dir_all(blob.parent().unwrap()).unwrap();
    fs::write(&blob, &w.model).unwrap();
    let snapshot = repo.join(format!("snapshots/{HF_COMMIT}/split"));
    fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink(&blob, snapshot.join("unet.safetensors")).unwrap();
    Have { folder, lora, blob }
}

/// The bytes served of each model file, by every fake upstream.
fn model_bytes_served(w: &World) -> u64 {
    let sha = sha256_hex(&w.model);
    w.cdn.bytes_served(&format!("/lfs/{sha}"))
        + w.cdn.bytes_served("/civitai/123")
        + w.cdn.bytes_served("/mirror/unet.safetensors")
}

/// The home has the version's LoRA and unet, with their bytes.
fn assert_models(w: &World, home: &Path) {
    for (rel, bytes) in [
        ("models/loras/detail.safetensors", &w.lora),
        ("models/unet/unet.safetensors", &w.model),
    ] {
        assert_eq!(&fs::read(home.join(rel)).unwrap(), bytes, "{rel}");
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn index(w: &World, store: &Path, dirs: &[&Path]) -> Value {
    let mut cmd = w.cmd(store);
    cmd.args(["--json", "models", "index"]).args(dirs);
    json_of(&cmd.ok())
}

/// A version pinned on an empty store downloads none of its models when they are in an indexed
/// folder and the hub cache (the sources are only asked for their digests, a URL's is the
/// spec's); a second empty store
/// takes them for the locked version (offline, they are not what it lacks); the user's files keep their bytes and
/// modes, and the store verifies.
#[test]
fn models_this_machine_has_are_taken_not_downloaded() {
    let w = World::new();
    // A plain URL reports no digest: the spec's SHA-256 is what finds it on this machine.
    let mut spec = w.default_spec();
    spec["models"][2]["sha256"] = sha256_hex(&w.model).into();
    w.write_spec(&spec);
    let have = have(&w);
    let store = w.env.store.clone();
    let report = index(&w, &store, &[&have.folder]);
    assert_eq!(report["files"], 2, "{report}");
    assert_eq!(report["hashed"], 2, "{report}");

    let out = w.resolve_ok(&[]);
    assert!(!out.is_empty());
    assert_eq!(model_bytes_served(&w), 0, "a model was downloaded");
    let lock = w.lock();
    let models = lock["models"].as_array().unwrap();
    let detail = models.iter().find(|m| m["name"] == "detail").unwrap();
    assert_eq!(detail["blake3"], blake3_hex(&w.lora));
    let unet = models.iter().find(|m| m["name"] == "wan-unet").unwrap();
    assert_eq!(unet["sha256"], sha256_hex(&w.model));
    assert_eq!(unet["revision"], HF_COMMIT, "the lock is the source's pin");
    for m in models {
        let stored = fs::read(w.store_path(m["store_path"].as_str().unwrap())).unwrap();
        assert_eq!(blake3_hex(&stored), m["blake3"].as_str().unwrap(), "{m}");
    }
    assert_eq!(fs::read(&have.lora).unwrap(), w.lora);
    assert_eq!(mode(&have.lora), 0o640);
    assert_eq!(fs::read(&have.blob).unwrap(), w.model);
    assert_eq!(
        mode(&have.blob) & 0o200,
        0o200,
        "the blob was made read-only"
    );
    w.cmd(&store).args(["store", "verify"]).ok();

    // A second empty store with the lock: every model from this machine.
    let store_b = w.env.path("store-b");
    index(&w, &store_b, &[&have.folder]);
    let home = w.env.path("home-b");
    let out = w
        .cmd(&store_b)
        .args(["--json", "realize", "v1", "--target"])
        .arg(&home)
        .ok();
    let report = json_of(&out);
    let models: Vec<&Value> = report["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "fetch-model")
        .collect();
    assert!(!models.is_empty(), "{report}");
    for d in &models {
        assert!(
            d["outcome"] == "substituted" || d["outcome"] == "valid",
            "{d}"
        );
    }
    let froms: Vec<&str> = models.iter().filter_map(|d| d["from"].as_str()).collect();
    assert!(
        froms.contains(&format!("file://{}", have.lora.display()).as_str()),
        "{froms:?}"
    );
    assert!(
        froms.contains(&format!("file://{}", have.blob.display()).as_str()),
        "{froms:?}"
    );
    assert_eq!(model_bytes_served(&w), 0);
    assert_models(&w, &home);
    w.cmd(&store_b).args(["store", "verify"]).ok();

    // Offline on a third empty store, the models are not what it lacks (the code is).
    let store_c = w.env.path("store-c");
    index(&w, &store_c, &[&have.folder]);
    let lacks = w
        .cmd(&store_c)
        .args(["realize", "v1", "--offline", "--target"])
        .arg(w.env.path("home-c"))
        .fails_with("Offline, and the store lacks");
    let lacks = &lacks[lacks.find("error:").unwrap()..];
    assert!(lacks.contains("core `comfy`"), "{lacks}");
    assert!(!lacks.contains("model `"), "{lacks}");

    // What the index holds, and what a file is.
    let ls = json_of(&w.cmd(&store_b).args(["--json", "models", "ls"]).ok());
    assert_eq!(ls[0]["files"], 2, "{ls}");
    let which = json_of(
        &w.cmd(&store_b)
            .args(["--json", "models", "which"])
            .arg(&have.lora)
            .ok(),
    );
    assert_eq!(which["indexed"], true, "{which}");
    assert_eq!(which["blake3"], blake3_hex(&w.lora));
    assert_eq!(which["store_paths"].as_array().unwrap().len(), 1, "{which}");
}

/// A file edited in place after it was indexed (same size, its mtime put back) is never taken:
/// the model is downloaded, and the index says the file changed. A hub blob whose bytes are not
/// its name's is not used either. Indexing again hashes only what changed, and forgets what is
/// gone.
#[test]
fn changed_files_and_wrong_blobs_are_never_used() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    w.resolve_ok(&[]);
    let downloaded = model_bytes_served(&w);
    assert!(downloaded > 0);
    let have = have(&w);
    let store = w.env.path("store-b");
    index(&w, &store, &[&have.folder]);

    let mtime = fs::metadata(&have.lora).unwrap().modified().unwrap();
    let mut edited = w.lora.clone();
    edited[100] ^= 0xff;
    fs::write(&have.lora, &edited).unwrap();
    fs::File::options()
        .write(true)
        .open(&have.lora)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let mut wrong = w.model.clone();
    wrong[7] ^= 0xff;
    fs::set_permissions(&have.blob, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&have.blob, &wrong).unwrap();

    let files = json_of(
        &w.cmd(&store)
            .args(["--json", "models", "ls", "--files"])
            .ok(),
    );
    let lora = files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == have.lora.to_str().unwrap())
        .unwrap();
    assert_eq!(lora["changed"], true, "{files}");

    let home = w.env.path("home");
    let out = w
        .cmd(&store)
        .args(["--json", "realize", "v1", "--target"])
        .arg(&home)
        .ok();
    let detail = json_of(&out)["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "fetch-model" && d["name"] == "detail")
        .cloned()
        .unwrap();
    assert_eq!(detail["outcome"], "fetched", "{detail}");
    assert!(
        model_bytes_served(&w) > downloaded,
        "nothing was downloaded"
    );
    assert_models(&w, &home);
    assert_eq!(
        fs::read(&have.lora).unwrap(),
        edited,
        "the user's file changed"
    );
    w.cmd(&store).args(["store", "verify"]).ok();

    // Indexed again: only the edited file is read; a deleted one is forgotten.
    fs::remove_file(have.folder.join("loras/notes.txt")).unwrap();
    let report = index(&w, &store, &[]);
    assert_eq!(report["hashed"], 1, "{report}");
    assert_eq!(report["forgotten"], 1, "{report}");
    let again = index(&w, &store, &[]);
    assert_eq!(again["hashed"], 0, "{again}");
}

/// `realize --models-in-place` of a spec without a lock: the models that indexed folders hold are
/// pinned and linked where they lie — nothing downloaded, nothing copied into the store — and the
/// home survives `gc`; `status`
/// checks each file by its stat tuple (by its digest with `--check-contents`); a file edited in
/// place is not used again: the next realize takes the model into the store.
#[test]
fn models_in_place_are_linked_where_they_lie() {
    let w = World::new();
    // The plain URL (which reports no digest, so only a download can pin it) is left out.
    let mut spec = w.default_spec();
    spec["models"].as_array_mut().unwrap().truncate(2);
    w.write_spec(&spec);
    let served = 0;
    let have = have(&w);
    let hub = w.env.path("xdg-cache/huggingface/hub");
    let store = w.env.path("store-b");
    index(&w, &store, &[&have.folder, &hub]);
    let home = w.env.path("home");
    let realize = || {
        w.cmd(&store)
            .args(["--json", "realize", "v1", "--models-in-place", "--target"])
            .arg(&home)
            .ok()
    };
    realize();
    let lora_at = home.join("models/loras/detail.safetensors");
    assert_eq!(fs::read_link(&lora_at).unwrap(), have.lora);
    assert_eq!(
        fs::read_link(home.join("models/unet/unet.safetensors")).unwrap(),
        have.blob
    );
    assert_eq!(model_bytes_served(&w), served, "a model was downloaded");
    let lock = w.lock();
    let in_store = registered(&w, &store);
    for m in lock["models"].as_array().unwrap() {
        let path = m["store_path"].as_str().unwrap();
        assert!(!in_store.iter().any(|p| p == path), "{path} was stored");
    }
    let status = |args: &[&str]| {
        json_of(
            &w.cmd(&store)
                .args(["--json", "status", "--target"])
                .arg(&home)
                .args(args)
                .ok(),
        )
    };
    w.cmd(&store).arg("gc").ok();
    let clean = status(&["--check-contents"]);
    assert_eq!(clean["changed"], json!([]), "{clean}");
    assert_eq!(clean["missing"], json!([]), "{clean}");
    assert_eq!(fs::read(&lora_at).unwrap(), w.lora);
    let again = json_of(&realize());
    assert_eq!(again["up_to_date"], true, "{again}");

    // Edited in place: status says so; the next realize takes the model into the store.
    let mut edited = w.lora.clone();
    edited[0] ^= 0xff;
    fs::write(&have.lora, &edited).unwrap();
    let drift = status(&[]);
    assert_eq!(
        drift["changed"],
        json!(["models/loras/detail.safetensors"]),
        "{drift}"
    );
    realize();
    assert!(
        model_bytes_served(&w) > served,
        "the model was not fetched again"
    );
    assert_eq!(fs::read(&lora_at).unwrap(), w.lora);
    assert!(fs::read_link(&lora_at).unwrap().starts_with(&store));
    assert_eq!(
        fs::read(&have.lora).unwrap(),
        edited,
        "the user's file changed"
    );
}
