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
    let again_layers = again["layers"].as_array().unwrap();
    for (i, layer) in again_layers.iter().enumerate() {
        // Only the top layer (the store's database, spec and lock) is written each time.
        assert_eq!(layer["written"], i + 1 == again_layers.len(), "{layer}");
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

/// A CNCF distribution registry (Debian's `docker-registry`) on a loopback port, its log kept.
struct TestRegistry {
    child: std::process::Child,
    addr: String,
    log: std::path::PathBuf,
}

impl TestRegistry {
    fn start(dir: &Path, read_only: bool) -> TestRegistry {
        let port = comfix::run::server::free_port().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    readonly:\n      enabled: {read_only}\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(std::fs::File::create(dir.join("registry.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Dropped (killed and waited for) on every path, a failed start too.
        let registry = TestRegistry { child, addr, log };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return registry;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!(
            "the registry did not start: {}",
            std::fs::read_to_string(&registry.log).unwrap()
        );
    }

    /// How many blob uploads the registry completed (`PUT …/blobs/uploads/…` answered 201).
    fn uploads(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self.log.with_file_name("registry.out")).unwrap_or_default();
        log.lines()
            .filter(|l| {
                l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains("\" 201 ")
            })
            .count()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushing sends only the blobs the registry lacks and tags last: the first version sends every
/// layer and its config; the second, one node apart, sends its one new path layer, its top layer
/// and config — counted in the registry's own log — and skopeo reads both back by tag. A registry
/// that refuses writes fails the push with its answer and tags nothing. `--docker-archive`
/// writes what `docker load` (and skopeo) read.
#[test]
fn pushing_sends_what_the_registry_lacks_and_tags_last() {
    if !have("docker-registry") {
        return;
    }
    let w = World::new();
    w.write_spec(&w.default_spec());
    let mut v2 = w.default_spec();
    v2["version_id"] = json!("v2");
    v2["custom_nodes"][0]["ref"] = json!("main");
    w.write_spec_as("v2", &v2);
    for id in ["v1", "v2"] {
        assert!(realize(&w, id, &w.env.path(&format!("home-{id}")), &[])
            .status
            .success());
    }
    let registry = TestRegistry::start(&w.env.path("registry"), false);
    let target = |tag: &str| format!("{}/comfy/demo:{tag}", registry.addr);

    // Without -o: the layout is the store's scratch.
    let first = build(&w, &w.env.store, "v1", &w.env.path("unused"), &[]);
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "image", "build", "v1", "--push", &target("v1")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pushed = json_of(&out);
    assert_eq!(pushed["digest"], first["digest"]);
    let layers = first["layers"].as_array().unwrap().len();
    assert_eq!(
        pushed["pushed"]["uploaded"].as_array().unwrap().len(),
        layers + 1,
        "layers and config"
    );
    assert_eq!(registry.uploads(), layers + 1);

    let layout = w.env.path("layout");
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "image", "build", "v2", "-o"])
        .arg(&layout)
        .args(["--push", &target("v2"), "--docker-archive"])
        .arg(w.env.path("v2.tar"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let second = json_of(&out);
    let sent = second["pushed"]["uploaded"].as_array().unwrap();
    assert_eq!(
        sent.len(),
        3,
        "the new node's layer, the top layer, the config: {sent:?}"
    );
    assert_eq!(
        second["pushed"]["present"].as_u64().unwrap() as usize,
        layers - 2
    );
    let sizes: u64 = second["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| sent.contains(&l["digest"]))
        .map(|l| l["size"].as_u64().unwrap())
        .sum::<u64>()
        + second["config"]["size"].as_u64().unwrap();
    assert_eq!(second["pushed"]["uploaded_bytes"].as_u64().unwrap(), sizes);
    assert_eq!(registry.uploads(), layers + 1 + 3);

    if have("skopeo") {
        for (tag, built) in [("v1", &first), ("v2", &second)] {
            let out = Command::new("skopeo")
                .args(["inspect", "--tls-verify=false"])
                .arg(format!("docker://{}", target(tag)))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(json_of(&out)["Digest"], built["digest"], "{tag}");
        }
        let out = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("docker-archive:{}", w.env.path("v2.tar").display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let raw = json_of(&out);
        let digests: Vec<&Value> = raw["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        let built: Vec<&Value> = second["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        assert_eq!(digests, built);
    }

    // The first image as a base, pulled from the registry by its digest: its layers come first,
    // as they are; a digest the registry lacks is refused.
    let from = format!(
        "{}/comfy/demo@{}",
        registry.addr,
        first["digest"].as_str().unwrap()
    );
    let on_base = w.env.path("on-base");
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "image", "build", "v2", "--from", &from, "-o"])
        .arg(&on_base)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let layered = read_layout(&on_base, "v2");
    let base_digests: Vec<&Value> = first["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    let bottom: Vec<&Value> = layered["manifest"]["layers"].as_array().unwrap()
        [..base_digests.len()]
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(bottom, base_digests);
    assert_eq!(
        layered["config"]["config"]["Labels"]["org.comfix.base"],
        from.as_str()
    );
    // Pushed to another repository of the same registry: the base's layers are mounted from
    // the base's repository, not sent again.
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "image", "build", "v2", "--from", &from, "-o"])
        .arg(&on_base)
        .args(["--push", &format!("{}/comfy/other:v2", registry.addr)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pushed = json_of(&out)["pushed"].clone();
    // (v2's own layers are in the base's repository too, from the push above: mounted as well.)
    assert!(
        pushed["mounted"].as_u64().unwrap() as usize >= base_digests.len(),
        "{pushed}"
    );
    assert!(
        pushed["uploaded_bytes"].as_u64().unwrap() < 64 << 10,
        "only the new config: {pushed}"
    );
    let missing = format!("{}/comfy/demo@sha256:{}", registry.addr, "0".repeat(64));
    let out = w
        .cmd(&w.env.store)
        .args(["image", "build", "v2", "--from", &missing, "-o"])
        .arg(w.env.path("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("manifest sha256:000"),
        "{}",
        stderr(&out)
    );

    // A registry that refuses writes: the push fails naming it, and no tag appears.
    let refusing = TestRegistry::start(&w.env.path("registry-ro"), true);
    let tag = format!("{}/comfy/demo:v1", refusing.addr);
    let out = w
        .cmd(&w.env.store)
        .args(["image", "build", "v1", "--push", &tag])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("Registry `{}`", refusing.addr)),
        "{err}"
    );
    let url = format!("http://{}/v2/comfy/demo/manifests/v1", refusing.addr);
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I", &url])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "404",
        "nothing tagged"
    );
}

/// The image runs with nothing from the host: built `--from` a Debian base (a debootstrapped
/// root filesystem with python3, made into an OCI layout by `umoci`), unpacked by `umoci`, and
/// run with `chroot` in the image's environment — comfix inside realizes the home from the
/// image's own store (its database came in the image) and `comfix test` passes the version's
/// workflow on the stand-in ComfyUI. With `--models volume` the model is not in the image: it
/// comes, offline, from a signed cache on the "network volume", checked against the key the image
/// names.
/// Opt-in: `COMFIX_TEST_IMAGE_BASE` names the root filesystem (`.ci/run` makes one with
/// `debootstrap --variant=minbase --include=python3 bookworm`); it needs root (chroot).
#[test]
fn the_image_runs_the_version_s_workflows_in_a_chroot() {
    let Some(base_root) = std::env::var_os("COMFIX_TEST_IMAGE_BASE").filter(|v| !v.is_empty())
    else {
        eprintln!("COMFIX_TEST_IMAGE_BASE is not set: the image was not run (see the test's doc)");
        return;
    };
    assert!(
        Path::new(&base_root).join("usr/bin/python3").is_file(),
        "COMFIX_TEST_IMAGE_BASE {base_root:?} is no root filesystem with python3"
    );
    if !rustix::process::geteuid().is_root() || !have("umoci") {
        eprintln!("not root or no umoci: the image was not run");
        return;
    }
    let rig = Rig::new();
    let base = rig.env.path("base");
    let umoci = |args: &[&str]| {
        let out = Command::new("umoci").args(args).output().unwrap();
        assert!(out.status.success(), "umoci {args:?}: {}", stderr(&out));
    };
    let base_s = base.display().to_string();
    umoci(&["init", "--layout", &base_s]);
    umoci(&["new", "--image", &format!("{base_s}:bookworm")]);
    umoci(&[
        "insert",
        "--image",
        &format!("{base_s}:bookworm"),
        &std::path::Path::new(&base_root).display().to_string(),
        "/",
    ]);
    // Models baked in; then left out and fetched at start from a signed cache on the "volume".
    let key_dir = rig.env.path("keys");
    let out = rig
        .cmd()
        .args(["key", "generate", "--name", "ci", "--dir"])
        .arg(&key_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let public = stdout(&out).trim().to_string();
    for (name, extra) in [
        ("bake", vec![]),
        (
            "volume",
            vec!["--models", "volume", "--trusted-key", public.as_str()],
        ),
    ] {
        let out_dir = rig.env.path(&format!("image-{name}"));
        let out = rig
            .cmd()
            .args(["--json", "image", "build", "v1", "--from"])
            .arg(format!("{base_s}:bookworm"))
            .arg("-o")
            .arg(&out_dir)
            .args(&extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let built = json_of(&out);
        let has_model = built["layers"].as_array().unwrap().iter().any(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("tiny.safetensors"))
        });
        assert_eq!(has_model, name == "bake", "{built}");
        let bundle = rig.env.path(&format!("bundle-{name}"));
        umoci(&[
            "unpack",
            "--image",
            &format!("{}:v1", out_dir.display()),
            &bundle.display().to_string(),
        ]);
        let rootfs = bundle.join("rootfs");
        if name == "volume" {
            // The network volume: a cache the version's closure was copied to, signed.
            let cache = rootfs.join("runpod-volume/comfix-cache");
            let out = rig
                .cmd()
                .args(["store", "copy", "v1", "--to"])
                .arg(&cache)
                .arg("--sign-key")
                .arg(key_dir.join("ci.secret"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let config: Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        // What the image runs by default: comfix serving the version's workflows as RunPod jobs.
        let argv: Vec<&str> = config["process"]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            argv[..3],
            ["/comfix/bin/comfix", "--store", "/comfix/store"]
        );
        assert!(
            argv.contains(&"--runpod") && argv.contains(&"--offline"),
            "{argv:?}"
        );
        // Run as a container would: the image's environment only, nothing of this machine's.
        let mut chroot = Command::new("chroot");
        chroot.arg(&rootfs).env_clear();
        for pair in config["process"]["env"].as_array().unwrap() {
            let (k, v) = pair.as_str().unwrap().split_once('=').unwrap();
            chroot.env(k, v);
        }
        let out = chroot
            .env("HOME", "/root")
            .args([
                "/bin/sh",
                "-c",
                "cd /comfix && /comfix/bin/comfix test v1 --offline --target /comfix/home -- --cpu",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "comfix test in the {name} image:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("ok      workflows/ok.json"),
            "{}",
            stderr(&out)
        );
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&bundle)
            .status();
    }
}

/// A registry's front that asks for a bearer token (its realm hands one out) and answers the
/// first blob upload `429 Too Many Requests`, forwarding the rest to the real registry behind.
struct Gatekeeper {
    port: u16,
    /// Requests seen: (method, path, status answered).
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>>,
}

impl Gatekeeper {
    fn start(upstream: String) -> Gatekeeper {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>> = Default::default();
        let shared = seen.clone();
        let throttled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, upstream, throttled) =
                    (shared.clone(), upstream.clone(), throttled.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    while let Some(request) = crate::support::http::read_request(&mut reader) {
                        let code = gate(&request, &mut out, port, &upstream, &throttled);
                        seen.lock()
                            .unwrap()
                            .push((request.method, request.path, code));
                    }
                });
            }
        });
        Gatekeeper { port, seen }
    }
}

/// Answer one request at the gate (the status it got): a token for the docker config's
/// credentials, a challenge without it, the first upload throttled, the rest forwarded.
fn gate(
    request: &crate::support::http::RawRequest,
    out: &mut std::net::TcpStream,
    port: u16,
    upstream: &str,
    throttled: &std::sync::atomic::AtomicBool,
) -> u16 {
    use std::io::{Read, Write};
    let reply =
        |out: &mut std::net::TcpStream, code: u16, status: &str, extra: &str, body: &str| {
            let text = format!(
                "HTTP/1.1 {code} {status}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            out.write_all(text.as_bytes()).unwrap();
            code
        };
    let auth = request.header("authorization");
    let (method, path) = (&request.method, &request.path);
    // The token is given for the credentials of the test's docker config only.
    if path.starts_with("/token") && auth != Some("Basic Y2k6c2VjcmV0") {
        return reply(out, 401, "Unauthorized", "", "");
    }
    if path.starts_with("/token") {
        let json = "Content-Type: application/json\r\n";
        return reply(out, 200, "OK", json, r#"{"token": "t0k3n"}"#);
    }
    if auth != Some("Bearer t0k3n") {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\"\r\n"
        );
        return reply(out, 401, "Unauthorized", &challenge, "");
    }
    if method == "PUT"
        && path.contains("/blobs/uploads/")
        && !throttled.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return reply(out, 429, "Too Many Requests", "Retry-After: 0\r\n", "");
    }
    // Forwarded, one connection per request; the client's Host is kept, so the registry's upload
    // locations name the gate.
    let mut up = std::net::TcpStream::connect(upstream).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("connection") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    up.write_all(head.as_bytes()).unwrap();
    up.write_all(&request.body).unwrap();
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |p| p + 4);
    // Relayed as it came, but kept open: without the upstream's `Connection: close`.
    let head = String::from_utf8_lossy(&answer[..split]).replacen("Connection: close\r\n", "", 1);
    out.write_all(head.as_bytes()).unwrap();
    out.write_all(&answer[split..]).unwrap();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A registry that wants a bearer token and throttles: the push gets a token from the realm the
/// challenge names (with the credentials of `$DOCKER_CONFIG/config.json`), waits out the `429`,
/// and the image arrives whole and tagged.
#[test]
fn pushes_get_tokens_and_wait_out_throttling() {
    if !have("docker-registry") {
        return;
    }
    let w = World::new();
    w.write_spec(&w.default_spec());
    assert!(realize(&w, "v1", &w.env.path("home"), &[]).status.success());
    let registry = TestRegistry::start(&w.env.path("registry"), false);
    let gate = Gatekeeper::start(registry.addr.clone());
    let docker = w.env.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:secret");
    let config = json!({ "auths": { format!("127.0.0.1:{}", gate.port): { "auth": auth } } });
    std::fs::write(docker.join("config.json"), config.to_string()).unwrap();
    let out = w
        .cmd(&w.env.store)
        .args(["--json", "image", "build", "v1", "--push"])
        .arg(format!("127.0.0.1:{}/comfy/demo:v1", gate.port))
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let built = json_of(&out);
    let seen = gate.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(_, p, c)| p.starts_with("/token") && *c == 200),
        "{seen:?}"
    );
    assert!(seen.iter().any(|(_, _, c)| *c == 429), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(m, p, c)| m == "PUT" && p.contains("/manifests/v1") && *c == 201),
        "{seen:?}"
    );
    // Behind the gate, the registry serves the whole image under its tag.
    if have("skopeo") {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{}/comfy/demo:v1", registry.addr))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(json_of(&out)["Digest"], built["digest"]);
    }
}

/// A base that cannot carry this machine's store paths is refused before anything is written:
/// one for another architecture, a layout without the tag asked for.
#[test]
fn bases_for_other_machines_are_refused_with_the_reason() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    assert!(realize(&w, "v1", &w.env.path("home"), &[]).status.success());
    // An OCI layout holding one image for arm64, written by hand (no layers: a config is enough).
    let base = w.env.path("arm-base");
    let blobs = base.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> Value {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        json!({ "digest": format!("sha256:{hex}"), "size": bytes.len() })
    };
    let config = put(json!({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).to_string().as_bytes());
    let mut config_ref = config.clone();
    config_ref["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let manifest = put(json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config_ref, "layers": []}).to_string().as_bytes());
    let mut entry = manifest.clone();
    entry["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "arm"});
    std::fs::write(
        base.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [entry]}).to_string(),
    )
    .unwrap();
    std::fs::write(base.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let out_dir = w.env.path("image");
    for (from, expected) in [
        (format!("{}:arm", base.display()), "it is for linux/arm64"),
        (format!("{}:nope", base.display()), "no image tagged `nope`"),
    ] {
        let out = w
            .cmd(&w.env.store)
            .args(["image", "build", "v1", "--from", &from, "-o"])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
        assert!(!out_dir.join("index.json").exists(), "nothing written");
    }
}
