//! The torch backend: a machine-local overlay over one shared lock, from a loopback index that
//! serves stub `torch` wheels with local versions (`+cpu`, `+cu121`), as the PyTorch index does.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::python::{packages, python_version};
use crate::support::git::{Entry, TestRepo};
use crate::support::http::TestServer;
use crate::support::wheels::{self, Wheel};
use crate::support::*;

fn torch(version: &str) -> Wheel {
    Wheel::new("torch", version, &format!("__version__ = {version:?}\n"))
}

fn vision(version: &str) -> Wheel {
    Wheel::new(
        "torchvision",
        version,
        &format!("import torch\n__version__ = {version:?}\n"),
    )
    .requires("torch==2.5.1")
}

struct TorchWorld {
    env: TestEnv,
    _pypi: TestServer,
    pypi_url: String,
    backends: TestServer,
    _core: TestRepo,
}

impl TorchWorld {
    fn new() -> TorchWorld {
        let env = TestEnv::new();
        let mut core = TestRepo::new(&env.path("repos/ComfyUI.git"));
        core.commit(
            "main",
            &[
                ("main.py", Entry::File(b"print('comfy')\n")),
                (
                    "requirements.txt",
                    Entry::File(b"torch\ntorchvision\ngamma\n"),
                ),
            ],
        );
        // The default index (PyPI's role): plain torch, as the shared lock resolves it.
        let pypi = TestServer::start();
        let mut served = packages();
        served.extend([torch("2.5.1"), vision("0.20.1")]);
        let pypi_url = wheels::serve_index(&pypi, &served);
        // One server, one index per backend (`/<backend>/simple/`), as download.pytorch.org.
        let backends = TestServer::start();
        wheels::serve_index_under(
            &backends,
            "/cpu",
            &[torch("2.5.1+cpu"), vision("0.20.1+cpu")],
        );
        wheels::serve_index_under(
            &backends,
            "/cu121",
            &[
                torch("2.5.1+cu121").requires("nvidia-cublas-cu12==12.1.3.1"),
                vision("0.20.1+cu121"),
                Wheel::new("nvidia_cublas_cu12", "12.1.3.1", "CUBLAS = 1\n"),
            ],
        );
        let spec = json!({
            "schema_version": 2,
            "version_id": "v1",
            "comfy": { "repo": core.url(), "ref": "main" },
            "python": { "version": python_version() }
        });
        let dir = env.work.join("versions");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("v1.json"),
            serde_json::to_string_pretty(&spec).unwrap(),
        )
        .unwrap();
        TorchWorld {
            env,
            _pypi: pypi,
            pypi_url,
            backends,
            _core: core,
        }
    }

    fn cmd(&self, store: &Path) -> Command {
        let mut cmd = self.env.cmd_without_store();
        cmd.arg("--store")
            .arg(store)
            .env("UV_DEFAULT_INDEX", &self.pypi_url)
            .env_remove("UV_INDEX_URL")
            .env_remove("PIP_INDEX_URL")
            .env_remove("COMFIX_TORCH_BACKEND")
            .env(
                "COMFIX_TORCH_INDEX",
                self.backends.url("/{backend}/simple/"),
            )
            .env("COMFIX_RETRY_BASE_MS", "10");
        cmd
    }

    fn realize(&self, store: &Path, home: &str, args: &[&str]) -> Output {
        self.cmd(store)
            .args(["--json", "realize", "v1", "--target"])
            .arg(self.env.path(home))
            .args(args)
            .output()
            .unwrap()
    }

    fn lock_text(&self) -> String {
        fs::read_to_string(self.env.work.join("versions/v1.lock.json")).unwrap()
    }

    /// `module.__version__` in the home's venv.
    fn version_in(&self, home: &str, module: &str) -> String {
        let python = self.env.path(home).join(".venv/bin/python");
        let out = Command::new(python)
            .args([
                "-c",
                &format!("import {module}; print({module}.__version__)"),
            ])
            .ok();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

fn ok_json(out: Output) -> Value {
    assert!(out.status.success(), "{}", stderr(&out));
    json_of(&out)
}

/// Two machines (two stores, two backends) share one lock and get different overlays; the shared
/// lock stays byte-identical; `--offline` realizes from the overlay in the store; `status` says
/// which backend a home uses.
#[test]
fn two_machines_share_one_lock_with_their_own_torch_backends() {
    let w = TorchWorld::new();
    let a = w.env.path("store-a");
    let b = w.env.path("store-b");
    ok_json(w.realize(&a, "plain", &[]));
    let shared = w.lock_text();
    assert!(shared.contains("torch-2.5.1-py3-none-any.whl"), "{shared}");
    assert_eq!(w.version_in("plain", "torch"), "2.5.1");

    // The overlay is a step of the plan and a derivation the executor runs and reports.
    let overlay_step = |report: &Value, key: &str| -> Value {
        report["plan"][key]
            .as_array()
            .or(report[key].as_array())
            .unwrap()
            .iter()
            .find(|d| d["kind"] == "build-overlay")
            .cloned()
            .unwrap_or_else(|| panic!("no overlay step: {report}"))
    };
    let dry = ok_json(w.realize(&a, "home-cpu", &["--torch-backend", "cpu", "--dry-run"]));
    let planned = overlay_step(&dry, "steps");
    assert_eq!(planned["state"], "build", "{planned}");
    let first = ok_json(w.realize(&a, "home-cpu", &["--torch-backend", "cpu"]));
    let ran = overlay_step(&first, "derivations");
    assert_eq!(ran["id"], planned["id"], "{ran}");
    assert_eq!(ran["outcome"], "built", "{ran}");
    assert!(
        ran["output"].as_str().unwrap().ends_with("-torch-cpu"),
        "{ran}"
    );
    let dry = ok_json(w.realize(&a, "home-cpu", &["--torch-backend", "cpu", "--dry-run"]));
    assert_eq!(overlay_step(&dry, "steps")["state"], "valid");
    assert_eq!(w.version_in("home-cpu", "torch"), "2.5.1+cpu");
    assert_eq!(w.version_in("home-cpu", "torchvision"), "0.20.1+cpu");
    let gamma = Command::new(w.env.path("home-cpu/.venv/bin/python"))
        .args(["-c", "import gamma; print(gamma.G)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&gamma.stdout).trim(), "gamma");
    assert_eq!(w.lock_text(), shared, "the shared lock changed");

    ok_json(w.realize(&b, "home-cu", &["--torch-backend", "cu121"]));
    assert_eq!(w.version_in("home-cu", "torch"), "2.5.1+cu121");
    assert_eq!(w.version_in("home-cu", "torchvision"), "0.20.1+cu121");
    let cublas = w.env.path("home-cu/.venv/bin/python");
    Command::new(cublas)
        .args(["-c", "import nvidia_cublas_cu12 as c; print(c.CUBLAS)"])
        .ok();
    assert_eq!(w.lock_text(), shared, "the shared lock changed");

    // The homes' venvs differ; each store holds its own overlay, and only that one.
    assert_ne!(
        fs::canonicalize(w.env.path("home-cpu/.venv")).unwrap(),
        fs::canonicalize(w.env.path("plain/.venv")).unwrap()
    );
    let overlays = |store: &Path| -> Vec<String> {
        fs::read_dir(store.join("paths"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains("-torch-") && !n.ends_with(".whl"))
            .collect()
    };
    let in_a = overlays(&a);
    assert_eq!(in_a.len(), 1, "{in_a:?}");
    assert!(in_a[0].ends_with("-torch-cpu"), "{in_a:?}");
    let in_b = overlays(&b);
    assert!(
        in_b.len() == 1 && in_b[0].ends_with("-torch-cu121"),
        "{in_b:?}"
    );

    // Offline: the overlay in the store serves; the backend index is not asked.
    let asked = w.backends.requests().len();
    ok_json(w.realize(&a, "home-offline", &["--offline", "--torch-backend", "cpu"]));
    assert_eq!(w.version_in("home-offline", "torch"), "2.5.1+cpu");
    assert_eq!(
        w.backends.requests().len(),
        asked,
        "the backend index was asked"
    );

    // An export from the cu121 machine carries its overlay and venv; an air-gapped machine with
    // the same backend realizes it offline. The archive's lock is the shared one.
    // Signed: the overlay and the venv are input-addressed, taken only on a trusted signature.
    let archive = w.env.path("v1-cu.tar.zst");
    let keys = w.env.path("keys");
    let generated = w
        .cmd(&b)
        .args(["key", "generate", "--name", "machine-b", "--dir"])
        .arg(&keys)
        .ok();
    let public = stdout(&generated).trim().to_string();
    w.cmd(&b)
        .args(["export", "v1", "--torch-backend", "cu121", "--sign-key"])
        .arg(keys.join("machine-b.secret"))
        .arg("-o")
        .arg(&archive)
        .ok();
    let c = w.env.path("store-c");
    let imported = w.env.path("imported");
    w.cmd(&c)
        .args(["import", "--trusted-key", &public, "--versions-dir"])
        .arg(&imported)
        .arg(&archive)
        .ok();
    assert_eq!(
        fs::read_to_string(imported.join("v1.lock.json")).unwrap(),
        shared
    );
    let asked = w.backends.requests().len();
    ok_json(w.realize(&c, "home-air", &["--offline", "--torch-backend", "cu121"]));
    assert_eq!(w.version_in("home-air", "torch"), "2.5.1+cu121");
    assert_eq!(
        w.backends.requests().len(),
        asked,
        "the backend index was asked"
    );

    // `status` names the backend, and the home is at its lock.
    let out = w
        .cmd(&a)
        .args(["--json", "status", "--target"])
        .arg(w.env.path("home-cpu"))
        .current_dir(&w.env.work)
        .output()
        .unwrap();
    let status = ok_json(out);
    assert_eq!(status["torch"]["backend"], "cpu", "{status}");
    assert_eq!(status["behind_lock"], false, "{status}");
    // Realizing again with the same backend changes nothing.
    let again = ok_json(w.realize(&a, "home-cpu", &["--torch-backend", "cpu"]));
    assert_eq!(again["up_to_date"], true, "{again}");
    w.cmd(&a)
        .args([
            "realize",
            "v1",
            "--check",
            "--torch-backend",
            "cpu",
            "--target",
        ])
        .arg(w.env.path("home-cpu"))
        .ok();
}

/// An unknown backend, a backend whose index lacks the lock's torch, and a backend asked for
/// offline before it was resolved: each named, nothing half-built registered.
#[test]
fn bad_backends_are_named_and_leave_nothing_behind() {
    let w = TorchWorld::new();
    let a = w.env.path("store-a");
    ok_json(w.realize(&a, "plain", &[]));
    let shared = w.lock_text();
    let paths_before: Vec<String> = store_paths(&a);

    let out = w.realize(&a, "h1", &["--torch-backend", "cuda12"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "`cuda12`");

    // No index serves rocm6.2 here.
    let out = w.realize(&a, "h2", &["--torch-backend", "rocm6.2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("rocm6.2") && err.contains("/rocm6.2/simple/"),
        "{err}"
    );

    let out = w.realize(&a, "h3", &["--torch-backend", "cu121", "--offline"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cu121") && err.contains("--offline"), "{err}");

    assert_eq!(store_paths(&a), paths_before, "something was registered");
    assert_eq!(w.lock_text(), shared);
    for home in ["h1", "h2", "h3"] {
        assert!(!w.env.path(home).join(".venv").exists(), "{home}");
    }
}

fn store_paths(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.join("paths"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

/// A universal lock (`python.universal`): one lock file for every platform, with each package's
/// marker and all its wheels; a machine installs the wheels that fit it, and the lock file is the
/// same whichever machine resolved or realized it. A lock that has no wheel for this machine says
/// so, naming the package and the platform.
#[test]
fn a_universal_lock_serves_each_platform_its_own_wheels() {
    let env = TestEnv::new();
    let mut core = TestRepo::new(&env.path("repos/ComfyUI.git"));
    core.commit("main", &[("main.py", Entry::File(b"print('comfy')\n"))]);
    let index = TestServer::start();
    let mut served = packages();
    served.extend([
        Wheel::new("plat", "1.0", "P = 'x86_64'\n")
            .platform("manylinux_2_17_x86_64")
            .requires("armonly; platform_machine == 'aarch64'"),
        Wheel::new("plat", "1.0", "P = 'aarch64'\n")
            .platform("manylinux_2_17_aarch64")
            .requires("armonly; platform_machine == 'aarch64'"),
        Wheel::new("armonly", "1.0", "A = 1\n"),
        Wheel::new("onlyarm", "1.0", "O = 1\n").platform("manylinux_2_17_aarch64"),
    ]);
    let index_url = wheels::serve_index(&index, &served);
    let write_spec = |id: &str, requirements: &[&str]| {
        let spec = json!({
            "schema_version": 2,
            "version_id": id,
            "comfy": { "repo": core.url(), "ref": "main" },
            "python": { "version": python_version(), "requirements": requirements, "universal": true }
        });
        let dir = env.work.join("versions");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{id}.json")), spec.to_string()).unwrap();
    };
    write_spec("u1", &["plat", "gamma"]);
    let realize = |store: &str, id: &str, home: &str| {
        env.cmd_without_store()
            .arg("--store")
            .arg(env.path(store))
            .args(["realize", id, "--target"])
            .arg(env.path(home))
            .env("UV_DEFAULT_INDEX", &index_url)
            .env_remove("UV_INDEX_URL")
            .env_remove("COMFIX_TORCH_BACKEND")
            .output()
            .unwrap()
    };
    ok(realize("store-a", "u1", "home-a"));
    let text = fs::read_to_string(env.work.join("versions/u1.lock.json")).unwrap();
    let lock: Value = serde_json::from_str(&text).unwrap();
    let python = &lock["python"];
    assert_eq!(python["wheels"], json!([]), "{python}");
    let universal = python["universal"].as_array().unwrap();
    let plat = universal.iter().find(|p| p["name"] == "plat").unwrap();
    let files: Vec<&str> = plat["wheels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["filename"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{plat}");
    assert!(
        files.iter().any(|f| f.ends_with("aarch64.whl")),
        "{files:?}"
    );
    let armonly = universal.iter().find(|p| p["name"] == "armonly").unwrap();
    assert!(
        armonly["marker"].as_str().unwrap().contains("aarch64"),
        "{armonly}"
    );
    // This machine's wheels: its own `plat`, and no `armonly`.
    let python_of = |home: &str| env.path(home).join(".venv/bin/python");
    let machine = std::env::consts::ARCH;
    let out = Command::new(python_of("home-a"))
        .args(["-c", "import plat; print(plat.P)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), machine);
    let out = Command::new(python_of("home-a"))
        .args(["-c", "import armonly"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.success(),
        machine == "aarch64",
        "armonly installed where its marker does not hold"
    );

    // Another machine's store realizes the same lock; the file does not change. Its configured
    // torch backend has nothing to change in a set without torch (and asks no index for it).
    ok(realize("store-b", "u1", "home-b"));
    let config = env.path("config/comfix/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        "torch-backend = \"cpu\"\ntorch-index = \"http://127.0.0.1:9/{backend}/\"\n",
    )
    .unwrap();
    let out = ok(realize("store-b", "u1", "home-b"));
    says(&out, "has no torch");
    fs::remove_file(&config).unwrap();
    assert_eq!(
        fs::read_to_string(env.work.join("versions/u1.lock.json")).unwrap(),
        text
    );
    env.cmd_without_store()
        .arg("--store")
        .arg(env.path("store-b"))
        .args(["realize", "u1", "--check", "--target"])
        .arg(env.path("home-b"))
        .ok();
    // Exported, it carries this machine's wheels: another store realizes it offline.
    let archive = env.path("u1.tar.zst");
    env.cmd_without_store()
        .arg("--store")
        .arg(env.path("store-b"))
        .args(["export", "u1", "-o"])
        .arg(&archive)
        .ok();
    env.cmd_without_store()
        .arg("--store")
        .arg(env.path("store-c"))
        .args(["import", "--no-check-sigs", "--versions-dir"])
        .arg(env.path("imported"))
        .arg(&archive)
        .ok();
    env.cmd_without_store()
        .arg("--store")
        .arg(env.path("store-c"))
        .args(["realize", "u1", "--offline", "--target"])
        .arg(env.path("home-air2"))
        .env("UV_DEFAULT_INDEX", "http://127.0.0.1:9/simple/")
        .ok();

    // A lock resolved on another platform (not universal): named before uv refuses a wheel.
    if machine == "x86_64" {
        let other = plat["wheels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["filename"].as_str().unwrap().ends_with("aarch64.whl"))
            .unwrap();
        let spec = json!({
            "schema_version": 2,
            "version_id": "u3",
            "comfy": { "repo": core.url(), "ref": "main" },
            "python": { "version": python_version(), "requirements": ["plat"] }
        });
        fs::write(env.work.join("versions/u3.json"), spec.to_string()).unwrap();
        env.cmd_without_store()
            .arg("--store")
            .arg(env.path("store-a"))
            .args(["resolve", "u3"])
            .env("UV_DEFAULT_INDEX", &index_url)
            .ok();
        let path = env.work.join("versions/u3.lock.json");
        let mut lock: Value = read_json(&path);
        lock["python"]["wheels"] = json!([{
            "name": "plat", "version": "1.0", "filename": other["filename"],
            "url": other["url"], "sha256": other["sha256"], "store_path": ""
        }]);
        fs::write(&path, serde_json::to_string_pretty(&lock).unwrap()).unwrap();
        let out = realize("store-a", "u3", "home-d");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("resolved on another platform") && err.contains("aarch64.whl"),
            "{err}"
        );
        assert!(err.contains("universal"), "{err}");
    }

    // A package with wheels for another platform only: this machine is not covered.
    if machine == "x86_64" {
        write_spec("u2", &["onlyarm"]);
        let out = realize("store-a", "u2", "home-c");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("does not cover this machine") && err.contains("onlyarm"),
            "{err}"
        );
        assert!(err.contains("x86_64"), "{err}");
    }
}

/// A Python the machine does not have: uv installs a managed one (from a loopback stand-in of its
/// download list, holding a relocatable build of this machine's Python), comfix stores it, and the
/// venv is built on it; an offline realize and another store importing the version's closure use
/// the stored interpreter without asking anyone.
#[test]
fn a_python_the_machine_lacks_is_installed_managed_and_stored() {
    let env = TestEnv::new();
    // This machine's Python as a python-build-standalone style archive (`python/…`); links
    // followed (Debian's `sitecustomize.py` links to `/etc`, which an archive must not).
    let info = Command::new("python3")
        .args([
            "-c",
            "import sys, sysconfig; print(sys.executable); print(sys.base_prefix); print('%d.%d.%d' % sys.version_info[:3]); print(sysconfig.get_config_var('LDLIBRARY') or '')",
        ])
        .output()
        .unwrap();
    let info = String::from_utf8(info.stdout).unwrap();
    let lines: Vec<&str> = info.lines().collect();
    let (executable, prefix, full) = (lines[0], lines[1], lines[2]);
    let minor: String = full.rsplit_once('.').unwrap().0.to_string();
    let build = env.path("pbs");
    let script = format!(
        "set -e; mkdir -p {b}/python/bin {b}/python/lib; cp -L {exe} {b}/python/bin/python{minor}; \
         ln -s python{minor} {b}/python/bin/python3; ln -s python{minor} {b}/python/bin/python; \
         cp -a {p}/lib/libpython{minor}*.so* {b}/python/lib/ 2>/dev/null || true; \
         (cd {p}/lib && tar chf - --exclude=site-packages --exclude=dist-packages --exclude=test \
           --exclude=__pycache__ --exclude=idlelib --exclude=tkinter --exclude=ensurepip \
           --exclude=lib2to3 python{minor}) | (cd {b}/python/lib && tar xf -); \
         mkdir -p {b}/python/lib/python{minor}/site-packages; \
         cd {b} && tar czf archive.tar.gz python",
        b = build.display(),
        exe = executable,
        p = prefix,
    );
    Command::new("sh").args(["-c", &script]).ok();
    let archive = fs::read(build.join("archive.tar.gz")).unwrap();
    let downloads = TestServer::start();
    let key = format!("cpython-{full}-linux-{}-gnu", std::env::consts::ARCH);
    let file = format!(
        "cpython-{full}+20990101-{}-unknown-linux-gnu-install_only.tar.gz",
        std::env::consts::ARCH
    );
    downloads.route(
        &format!("/{file}"),
        crate::support::http::Route::file(archive.clone()),
    );
    let parts: Vec<u32> = full.split('.').map(|p| p.parse().unwrap()).collect();
    downloads.route(
        "/downloads.json",
        crate::support::http::Route::json(json!({
            key.clone(): {
                "name": "cpython",
                "arch": { "family": std::env::consts::ARCH, "variant": null },
                "os": "linux", "libc": "gnu",
                "major": parts[0], "minor": parts[1], "patch": parts[2], "prerelease": "",
                "url": downloads.url(&format!("/{file}")),
                "sha256": crate::support::wheels::sha256_hex(&archive),
                "variant": null, "build": "20990101"
            }
        })),
    );

    let mut core = TestRepo::new(&env.path("repos/ComfyUI.git"));
    core.commit("main", &[("main.py", Entry::File(b"print('comfy')\n"))]);
    let index = TestServer::start();
    let index_url = wheels::serve_index(&index, &packages());
    let spec = json!({
        "schema_version": 2,
        "version_id": "m1",
        "comfy": { "repo": core.url(), "ref": "main" },
        "python": { "version": full, "requirements": ["gamma"] }
    });
    fs::create_dir_all(env.work.join("versions")).unwrap();
    fs::write(env.work.join("versions/m1.json"), spec.to_string()).unwrap();
    // A PATH with no Python on it: the machine "lacks" this version (uv itself by path).
    let uv = String::from_utf8(
        Command::new("sh")
            .args(["-c", "pyenv which uv 2>/dev/null || command -v uv"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let bare = env.path("bare-bin");
    fs::create_dir_all(&bare).unwrap();
    let comfix = |store: &str| {
        let mut cmd = env.cmd_without_store();
        cmd.arg("--store")
            .arg(env.path(store))
            .env("PATH", &bare)
            .env("COMFIX_UV", &uv)
            .env("UV_DEFAULT_INDEX", &index_url)
            .env(
                "UV_PYTHON_DOWNLOADS_JSON_URL",
                downloads.url("/downloads.json"),
            )
            .env_remove("UV_INDEX_URL")
            .env_remove("UV_PYTHON_INSTALL_DIR")
            .env(
                "COMFIX_LOG",
                std::env::var("COMFIX_LOG").unwrap_or_else(|_| "comfix=info".into()),
            );
        cmd
    };
    let out = comfix("store")
        .args(["realize", "m1", "--target"])
        .arg(env.path("home"))
        .ok();
    says(&out, "installing a managed one");
    let venv_python = env.path("home/.venv/bin/python");
    let ask = |python: &Path| {
        let out = Command::new(python)
            .args([
                "-c",
                "import sys, gamma; print(sys.version.split()[0]); print(sys.base_prefix)",
            ])
            .ok();
        String::from_utf8(out.stdout).unwrap()
    };
    let answer = ask(&venv_python);
    let mut answer = answer.lines();
    assert_eq!(answer.next(), Some(full));
    let base = answer.next().unwrap().to_string();
    assert!(
        base.starts_with(&env.path("store/paths").display().to_string()),
        "the venv's interpreter is not the stored one: {base}"
    );
    assert!(base.ends_with(&key), "{base}");
    let fetched = downloads.requests().len();

    // Offline, into another home: the stored interpreter, nothing asked.
    comfix("store")
        .args(["realize", "m1", "--offline", "--target"])
        .arg(env.path("home-2"))
        .ok();
    assert_eq!(downloads.requests().len(), fetched);
    // gc keeps it (pinned, and referenced by the venv).
    comfix("store").args(["gc"]).ok();
    assert_eq!(
        ask(&env.path("home-2/.venv/bin/python")).lines().next(),
        Some(full)
    );

    // The version's closure carries the interpreter: another store realizes it offline.
    let archive_path = env.path("m1.tar.zst");
    comfix("store")
        .args(["export", "m1", "-o"])
        .arg(&archive_path)
        .ok();
    comfix("other")
        .args(["import", "--no-check-sigs"])
        .arg(&archive_path)
        .ok();
    comfix("other")
        .args(["realize", "m1", "--offline", "--target"])
        .arg(env.path("home-3"))
        .ok();
    assert_eq!(downloads.requests().len(), fetched);
    assert_eq!(
        ask(&env.path("home-3/.venv/bin/python")).lines().next(),
        Some(full)
    );
}
