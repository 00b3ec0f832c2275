//! The outside world of a version: local git repositories (a core with a submodule, two nodes)
//! and loopback servers that behave like Hugging Face, its CDN, CivitAI and the node registry,
//! with the bytes they serve. One `World` per test; `World::cmd` points comfix at it.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};
use sha2::Digest as _;

use super::git::{Entry, TestRepo};
use super::http::{Route, TestServer};
use super::*;

pub const HF_TOKEN: &str = "hf_test_token_123";
pub const CIVITAI_TOKEN: &str = "civitai_test_token_456";
pub const HF_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

pub fn pseudo_random(len: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut out);
    out
}

pub fn make_zip(entries: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
        for (name, bytes) in entries {
            if name.ends_with('/') {
                zip.add_directory(*name, options).unwrap();
            } else {
                zip.start_file(*name, options).unwrap();
                zip.write_all(bytes).unwrap();
            }
        }
        for (name, target) in symlinks {
            zip.add_symlink(*name, *target, options).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// Local repositories and the services a spec refers to.
pub struct World {
    pub env: TestEnv,
    pub hub: TestServer,
    pub cdn: TestServer,
    pub civitai: TestServer,
    pub registry: TestServer,
    pub core: TestRepo,
    pub _sub: TestRepo,
    pub node_a: TestRepo,
    pub node_b: TestRepo,
    pub model: Vec<u8>,
    pub lora: Vec<u8>,
    pub zip: Vec<u8>,
}

impl World {
    pub fn new() -> World {
        let env = TestEnv::new();
        let repos = env.path("repos");
        let mut sub = TestRepo::new(&repos.join("sub.git"));
        let sub_commit = sub.commit("main", &[("lib.py", Entry::File(b"LIB = 1\n"))]);
        let mut core = TestRepo::new(&repos.join("ComfyUI.git"));
        let gitmodules =
            "[submodule \"vendor/sub\"]\n\tpath = vendor/sub\n\turl = ../sub.git\n".to_string();
        core.commit(
            "main",
            &[
                ("main.py", Entry::File(b"print('comfy')\n")),
                ("comfy/__init__.py", Entry::File(b"")),
                ("run.sh", Entry::Exec(b"#!/bin/sh\n")),
                ("latest", Entry::Link("main.py")),
                (".gitmodules", Entry::File(gitmodules.as_bytes())),
                ("vendor/sub", Entry::Gitlink(sub_commit)),
            ],
        );
        let mut node_a = TestRepo::new(&repos.join("ComfyUI-A.git"));
        let a1 = node_a.commit("main", &[("__init__.py", Entry::File(b"A = 1\n"))]);
        node_a.tag("v1", a1);
        node_a.commit("main", &[("__init__.py", Entry::File(b"A = 2\n"))]);
        let mut node_b = TestRepo::new(&repos.join("ComfyUI-B.git"));
        node_b.commit("main", &[("__init__.py", Entry::File(b"B main\n"))]);
        node_b.commit("dev", &[("__init__.py", Entry::File(b"B dev\n"))]);

        let hub = TestServer::start();
        let cdn = TestServer::start();
        let civitai = TestServer::start();
        let registry = TestServer::start();
        let model = pseudo_random(3 << 20, 1);
        let lora = pseudo_random(200_000, 2);
        let sha = sha256_hex(&model);
        let auth = format!("Bearer {HF_TOKEN}");
        for rev in ["main", HF_COMMIT] {
            let mut route = Route::redirect(&cdn.other_host_url(&format!("/lfs/{sha}")))
                .header("X-Repo-Commit", HF_COMMIT)
                .header("X-Linked-Etag", &format!("\"{sha}\""))
                .header("X-Linked-Size", &model.len().to_string());
            route.require_auth = Some(auth.clone());
            hub.route(
                &format!("/org/wan/resolve/{rev}/split/unet.safetensors"),
                route,
            );
        }
        cdn.route(&format!("/lfs/{sha}"), Route::file(model.clone()));
        cdn.route("/mirror/unet.safetensors", Route::file(model.clone()));

        let mut api = Route::json(json!({
            "id": 123,
            "files": [
                { "primary": false, "name": "other.bin", "hashes": {}, "downloadUrl": civitai.url("/nope") },
                { "primary": true, "name": "detail.safetensors",
                  "hashes": { "SHA256": sha256_hex(&lora).to_uppercase(), "BLAKE3": blake3_hex(&lora).to_uppercase() },
                  "downloadUrl": civitai.url("/api/download/models/123") }
            ]
        }));
        api.require_auth = Some(format!("Bearer {CIVITAI_TOKEN}"));
        civitai.route("/api/v1/model-versions/123", api);
        civitai.route(
            "/api/download/models/123",
            Route::redirect(&cdn.other_host_url("/civitai/123")),
        );
        cdn.route("/civitai/123", Route::file(lora.clone()));

        let zip = make_zip(
            &[
                (
                    "pyproject.toml",
                    b"[project]\nname = \"impact\"\nversion = \"1.0.0\"\n",
                ),
                ("modules/", b""),
                ("modules/impact.py", b"IMPACT = True\n"),
                ("__init__.py", b"from .modules import impact\n"),
            ],
            &[("alias.py", "modules/impact.py")],
        );
        registry.route(
            "/nodes/impact/versions/1.0.0",
            Route::json(
                json!({ "version": "1.0.0", "downloadUrl": registry.url("/dl/impact-1.0.0.zip") }),
            ),
        );
        registry.route(
            "/nodes/impact",
            Route::json(json!({ "latest_version": { "version": "1.0.0", "downloadUrl": registry.url("/dl/impact-1.0.0.zip") } })),
        );
        registry.route("/dl/impact-1.0.0.zip", Route::file(zip.clone()));
        // The registry's search, for "did you mean".
        registry.route(
            "/nodes/search",
            Route::json(json!({ "nodes": [{ "id": "impact" }, { "id": "unrelated-words" }] })),
        );

        World {
            env,
            hub,
            cdn,
            civitai,
            registry,
            core,
            _sub: sub,
            node_a,
            node_b,
            model,
            lora,
            zip,
        }
    }

    pub fn default_spec(&self) -> Value {
        json!({
            "schema_version": 2,
            "version_id": "v1",
            "comfy": { "repo": self.core.url(), "ref": "main" },
            "custom_nodes": [
                { "repo": self.node_a.url(), "name": "node-a", "ref": "v1" },
                { "repo": self.node_b.url(), "name": "node-b", "ref": "dev" },
                { "cnr": "impact", "version": "1.0.0" }
            ],
            "models": [
                { "source": "hf://org/wan/split/unet.safetensors", "name": "wan-unet", "target_subdir": "unet" },
                { "source": "civitai://123", "name": "detail", "target_subdir": "loras", "filename": "detail.safetensors" },
                { "source": self.cdn.url("/mirror/unet.safetensors"), "name": "unet-mirror", "target_subdir": "diffusion_models" }
            ],
            "env": { "HF_TOKEN": "${HF_TOKEN}" }
        })
    }

    pub fn write_spec(&self, spec: &Value) {
        self.write_spec_as("v1", spec)
    }

    /// `versions/<id>.json` in the work directory.
    pub fn write_spec_as(&self, id: &str, spec: &Value) {
        let dir = self.env.work.join("versions");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_string_pretty(spec).unwrap(),
        )
        .unwrap();
    }

    pub fn cmd(&self, store: &Path) -> std::process::Command {
        let mut cmd = self.env.cmd_without_store();
        cmd.arg("--store")
            .arg(store)
            .env("HF_ENDPOINT", self.hub.url(""))
            .env("COMFIX_CIVITAI_URL", self.civitai.url("/api/v1"))
            .env("COMFIX_REGISTRY_URL", self.registry.url(""))
            .env("HF_TOKEN", HF_TOKEN)
            .env("CIVITAI_TOKEN", CIVITAI_TOKEN)
            .env("COMFIX_RETRY_BASE_MS", "10");
        cmd
    }

    pub fn resolve_in(&self, store: &Path, args: &[&str]) -> Output {
        self.cmd(store)
            .args(["resolve", "v1"])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn resolve(&self, args: &[&str]) -> Output {
        self.resolve_in(&self.env.store, args)
    }

    pub fn resolve_ok(&self, args: &[&str]) -> String {
        let out = self.resolve(args);
        assert!(out.status.success(), "resolve failed:\n{}", stderr(&out));
        stdout(&out)
    }

    pub fn lock_text(&self) -> String {
        std::fs::read_to_string(self.env.work.join("versions/v1.lock.json")).unwrap()
    }

    pub fn lock(&self) -> Value {
        serde_json::from_str(&self.lock_text()).unwrap()
    }

    pub fn store_path(&self, name: &str) -> PathBuf {
        self.env.store.join("paths").join(name)
    }

    pub fn total_requests(&self) -> usize {
        [&self.hub, &self.cdn, &self.civitai, &self.registry]
            .iter()
            .map(|s| s.requests().len())
            .sum()
    }
}

pub fn head_of(repo: &TestRepo, refname: &str) -> String {
    repo.repo
        .revparse_single(refname)
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id()
        .to_string()
}

pub fn status_manifest(w: &World, store: &Path, home: &Path) -> String {
    let out = w
        .cmd(store)
        .args(["--json", "status", "--target"])
        .arg(home)
        .ok();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    status["manifest"].as_str().unwrap().to_string()
}

/// A key pair in `dir`: the secret key's file and the public key.
pub fn key(w: &World, name: &str) -> (PathBuf, String) {
    let dir = w.env.path("keys");
    let out = w
        .cmd(&w.env.store)
        .args(["key", "generate", "--name", name, "--dir"])
        .arg(&dir)
        .ok();
    (
        dir.join(format!("{name}.secret")),
        stdout(&out).trim().to_string(),
    )
}

/// Every path a store registered is whole: `store verify --check-contents` finds nothing.
pub fn assert_store_whole(w: &World, store: &Path) {
    if !store.join("db").exists() {
        return;
    }
    w.cmd(store)
        .args(["store", "verify", "--check-contents"])
        .ok();
}

pub fn registered(w: &World, store: &Path) -> Vec<String> {
    let out = w
        .cmd(store)
        .args(["--json", "store", "ls"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn decompress(archive: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(fs::File::open(archive).unwrap())
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn compress(tar: &[u8], to: &Path) {
    let mut encoder = zstd::stream::write::Encoder::new(fs::File::create(to).unwrap(), 3).unwrap();
    encoder.write_all(tar).unwrap();
    encoder.finish().unwrap();
}

/// A store of plain paths: one of `big` bytes (several upload parts) and `small` little ones.
pub fn plain_store(env: &TestEnv, store: &Path, big: usize, small: usize) -> Vec<String> {
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
            .ok();
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
