//! `comfix image build`: a version's OCI image from the store — one layer per store path, the
//! same digest on any store, a one-node change one new layer; read back by hand and, where they
//! are installed (CI installs them), by `skopeo` and `umoci`.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::realize::realize;
use crate::support::*;

fn build(w: &World, store: &Path, id: &str, out: &Path, args: &[&str]) -> Value {
    let out = w
        .cmd(store)
        .args(["--json", "image", "build", id, "-o"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "image build failed:\n{}",
        stderr(&out)
    );
    json_of(&out)
}

/// Read the layout by hand: `index.json` names the manifest of `id`; every blob the manifest
/// names is there with the SHA-256 its name says; the config's diff ids are the layers.
fn read_layout(dir: &Path, id: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == id)
        .unwrap_or_else(|| panic!("no manifest for {id} in {index}"))
        .clone();
    let blob = |digest: &Value| -> Vec<u8> {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap();
        let actual = sha256_hex(&bytes);
        assert_eq!(actual, hex, "a blob's name is its digest");
        bytes
    };
    let manifest: Value = serde_json::from_slice(&blob(&entry["digest"])).unwrap();
    let config: Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    for layer in layers {
        assert_eq!(
            blob(&layer["digest"]).len() as u64,
            layer["size"].as_u64().unwrap()
        );
    }
    let digests: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let diff_ids: Vec<&Value> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(
        digests, diff_ids,
        "uncompressed layers: digests are diff ids"
    );
    json!({ "digest": entry["digest"], "manifest": manifest, "config": config })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The store path each layer holds (`None`: the top layer).
fn layer_paths(manifest: &Value) -> Vec<(Option<String>, String)> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["annotations"]["org.comfix.store-path"]
                    .as_str()
                    .map(str::to_string),
                l["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Whether `tool` is on PATH; CI (which installs them) must have it.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs `{tool}` (.ci/run)"
        );
        eprintln!("`{tool}` is not installed: the layout was checked by hand only");
    }
    found
}

#[test]
fn an_image_is_a_layer_per_store_path_the_same_on_any_store() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    let home = w.env.path("home");
    assert!(realize(&w, "v1", &home, &[]).status.success());
    let a = w.env.path("image-a");
    let built = build(&w, &w.env.store, "v1", &a, &[]);
    let read = read_layout(&a, "v1");
    assert_eq!(built["digest"], read["digest"]);
    let layers = layer_paths(&read["manifest"]);
    // The lock's store paths (core, nodes, models), each its own layer, and the top layer.
    let listed = w.cmd(&w.env.store).args(["store", "ls"]).output().unwrap();
    let paths = layers.iter().filter(|(p, _)| p.is_some()).count();
    // Two of the three models have the same bytes and name: one store path.
    assert_eq!(paths, 6, "core, 3 nodes, 2 model paths: {layers:?}");
    for (path, _) in layers.iter().filter(|(p, _)| p.is_some()) {
        assert!(
            stdout(&listed).contains(path.as_deref().unwrap()),
            "{path:?}"
        );
    }
    assert_eq!(layers.last().unwrap().0, None, "the top layer is last");
    assert_eq!(read["config"]["os"], "linux");

    // Again into the same layout: every path layer is there already, nothing written but the top.
    let again = build(&w, &w.env.store, "v1", &a, &[]);
    assert_eq!(again["digest"], built["digest"]);
    for layer in again["layers"].as_array().unwrap() {
        assert_eq!(layer["written"], layer["path"].is_null(), "{layer}");
    }

    // Another store realizing the same lock gives the same image, byte for byte.
    let other = w.env.path("other-store");
    let home2 = w.env.path("home2");
    let out = w
        .cmd(&other)
        .args(["realize", "v1", "--target"])
        .arg(&home2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let b = w.env.path("image-b");
    assert_eq!(build(&w, &other, "v1", &b, &[])["digest"], built["digest"]);

    // A version one node apart shares every other layer; its build writes one path layer.
    let mut v2 = w.default_spec();
    v2["version_id"] = json!("v2");
    v2["custom_nodes"][0]["ref"] = json!("main");
    w.write_spec_as("v2", &v2);
    assert!(realize(&w, "v2", &w.env.path("home-v2"), &[])
        .status
        .success());
    let second = build(&w, &w.env.store, "v2", &a, &[]);
    let written: Vec<&Value> = second["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["written"] == true && !l["path"].is_null())
        .collect();
    assert_eq!(written.len(), 1, "one new path layer: {written:?}");
    let read2 = read_layout(&a, "v2");
    let first: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
    let new: Vec<String> = layer_paths(&read2["manifest"])
        .into_iter()
        .filter(|(p, d)| p.is_some() && !first.contains(d))
        .map(|(p, _)| p.unwrap())
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(
        new[0].ends_with("node-a") || new[0].contains("ComfyUI-A"),
        "{new:?}"
    );
    read_layout(&a, "v1"); // the first image is still whole in the shared layout

    // Real OCI tools read it: skopeo's view of the layers, umoci's unpacked root filesystem.
    if have("skopeo") {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:v1", a.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let raw: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(raw, read["manifest"]);
    }
    if have("umoci") {
        let bundle = w.env.path("bundle");
        let mut umoci = Command::new("umoci");
        umoci.arg("unpack");
        if !rustix::process::geteuid().is_root() {
            umoci.arg("--rootless");
        }
        let out = umoci
            .arg("--image")
            .arg(format!("{}:v1", a.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let rootfs = bundle.join("rootfs");
        let core = layers[0..paths]
            .iter()
            .filter_map(|(p, _)| p.clone())
            .find(|p| p.ends_with("-ComfyUI") || p.contains("ComfyUI"))
            .unwrap();
        let tree = rootfs.join("comfix/store/paths").join(&core);
        assert!(tree.join("main.py").is_file(), "{}", tree.display());
        assert!(rootfs.join("comfix/versions/v1.lock.json").is_file());
        let sidecar = rootfs.join(format!("comfix/store/meta/{core}.json"));
        let meta: Value = serde_json::from_slice(&std::fs::read(sidecar).unwrap()).unwrap();
        assert_eq!(meta["name"], core.as_str());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tree.join("main.py"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o222,
            0,
            "the store's files are read-only in the image"
        );
        make_writable(&bundle);
    }
}

fn make_writable(dir: &Path) {
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(dir).status();
}
