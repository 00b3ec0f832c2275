//! One contract for every kind of binary cache. Each case runs against a cache directory
//! (`file://…`) and an S3-compatible bucket (moto on 127.0.0.1), through the same commands:
//! `store copy --to/--from`, `--substituter`, `COMFIX_SUBSTITUTERS`. What only one kind has (a
//! push killed mid-multipart, `cache prune`, credentials) stays in `s3.rs`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::support::http::TestServer;
use crate::support::s3::Moto;
use crate::support::*;

const BUCKET: &str = "contract";

/// Where a test's caches live: directories under the test's own folder, or prefixes of one
/// bucket. `name` tells one cache from another within a test.
enum Backend {
    Directory(PathBuf),
    Bucket(Moto),
}

impl Backend {
    fn new(kind: &str, env: &TestEnv) -> Backend {
        match kind {
            "directory" => Backend::Directory(env.path("caches")),
            _ => {
                let moto = Moto::start();
                moto.create_bucket(BUCKET);
                Backend::Bucket(moto)
            }
        }
    }

    /// How a substituted derivation's `from` names cache `name`.
    fn shown_as(&self, name: &str) -> String {
        match self {
            Backend::Directory(root) => root.join(name).display().to_string(),
            Backend::Bucket(_) => self.url(name),
        }
    }

    fn url(&self, name: &str) -> String {
        match self {
            Backend::Directory(root) => format!("file://{}", root.join(name).display()),
            Backend::Bucket(_) => format!("s3://{BUCKET}/{name}"),
        }
    }

    /// The cache's credentials and endpoint, for a command that uses it.
    fn env(&self, cmd: &mut Command) {
        if let Backend::Bucket(moto) = self {
            moto.env(cmd);
        }
    }

    fn get(&self, name: &str, key: &str) -> Vec<u8> {
        match self {
            Backend::Directory(root) => fs::read(root.join(name).join(key)).unwrap(),
            Backend::Bucket(moto) => moto.get(BUCKET, &format!("{name}/{key}")).unwrap(),
        }
    }

    fn put(&self, name: &str, key: &str, bytes: &[u8]) {
        match self {
            Backend::Directory(root) => {
                let path = root.join(name).join(key);
                let _ = fs::remove_file(&path);
                fs::write(path, bytes).unwrap()
            }
            Backend::Bucket(moto) => moto.put(BUCKET, &format!("{name}/{key}"), bytes),
        }
    }

    /// Every key of cache `name` (files of the directory, objects of the prefix).
    fn keys(&self, name: &str) -> Vec<String> {
        match self {
            Backend::Directory(root) => walkdir::WalkDir::new(root.join(name))
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_file())
                .map(|e| {
                    let rel = e.path().strip_prefix(root.join(name)).unwrap();
                    rel.to_string_lossy().into_owned()
                })
                .collect(),
            Backend::Bucket(moto) => moto
                .keys(BUCKET, &format!("{name}/"))
                .into_iter()
                .map(|k| k[name.len() + 1..].to_string())
                .collect(),
        }
    }

    /// What readers see is whole: every path's metadata names an archive the cache has, and
    /// nothing half-written is left where readers look.
    fn assert_consistent(&self, name: &str, context: &str) {
        let keys = self.keys(name);
        for key in keys.iter().filter(|k| k.starts_with("paths/")) {
            let entry: Value = serde_json::from_slice(&self.get(name, key)).unwrap();
            let archive = entry["archive"].as_str().unwrap();
            assert!(
                keys.iter().any(|k| k == archive),
                "{context}: {key} names the missing {archive}"
            );
        }
        assert!(
            !keys.iter().any(|k| k.starts_with("tmp/")),
            "{context}: half-written files left: {keys:?}"
        );
    }
}

/// A version with git nodes, a registry node, models and a venv, realized in the world's store;
/// the package index kept so the test can take it away with the other upstreams.
struct Team {
    w: World,
    backend: Backend,
    index: TestServer,
    index_url: String,
    home: PathBuf,
}

impl Team {
    fn new(kind: &str) -> Team {
        let w = World::new();
        let backend = Backend::new(kind, &w.env);
        let index = TestServer::start();
        let index_url = wheels::serve_index(&index, &crate::python::packages());
        let mut spec = w.default_spec();
        spec["python"] = json!({
            "version": crate::python::python_version(),
            "requirements": ["beta", "gamma"]
        });
        w.write_spec(&spec);
        let team = Team {
            home: w.env.path("home-a"),
            w,
            backend,
            index,
            index_url,
        };
        ok(team.realize(&team.w.env.store, &team.home, &[]));
        team
    }

    fn cmd(&self, store: &Path) -> Command {
        let mut cmd = self.w.cmd(store);
        self.backend.env(&mut cmd);
        cmd.env("UV_DEFAULT_INDEX", &self.index_url);
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

    /// `store copy --to` cache `name` of the version, with `args`.
    fn push(&self, name: &str, args: &[&str]) {
        self.cmd(&self.w.env.store)
            .args(["store", "copy", "--to", &self.backend.url(name), "v1"])
            .args(args)
            .ok();
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

    fn model_path(&self) -> String {
        self.w.lock()["models"][0]["store_path"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Runs each case against both kinds of cache, as tests named `<case>::directory` and
/// `<case>::bucket`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn directory() {
                super::$case("directory")
            }
            #[test]
            fn bucket() {
                super::$case("bucket")
            }
        }
    )*};
}

contract!(
    a_cache_that_hangs_is_passed_over_within_the_stall_timeout,
    a_version_is_realized_from_the_cache_alone,
    a_corrupted_archive_is_refused_and_nothing_registered,
    unsigned_paths_are_refused_unless_signatures_are_waived,
    two_stores_push_to_one_cache_at_once,
);

/// Store A pushes a signed version; store B, empty, with every upstream gone, realizes it from
/// the cache alone: every derivation substituted from the cache, nothing asked upstream, the
/// same home as A's. The same through `COMFIX_SUBSTITUTERS`, for `resolve`.
fn a_version_is_realized_from_the_cache_alone(kind: &str) {
    let mut t = Team::new(kind);
    let (secret, public) = key(&t.w, "team-1");
    t.push("team", &["--sign-key", secret.to_str().unwrap(), "-j", "4"]);
    let keys = t.backend.keys("team");
    assert!(keys.contains(&"comfix-cache.json".to_string()), "{keys:?}");
    let paths = keys.iter().filter(|k| k.starts_with("paths/")).count();
    assert!(paths >= 8, "{keys:?}");
    t.backend.assert_consistent("team", "pushed");

    t.cut_upstream();
    let (store, home) = (t.w.env.path("store-b"), t.w.env.path("home-b"));
    let url = t.backend.url("team");
    let out = ok(t.realize(
        &store,
        &home,
        &["--substituter", &url, "--trusted-key", &public],
    ));
    let report: Value = json_of(&out);
    let derivations = report["derivations"].as_array().unwrap();
    assert!(
        derivations.iter().any(|d| d["kind"] == "build-venv"),
        "{report}"
    );
    for d in derivations {
        if d["kind"] == "assemble-home" {
            assert_eq!(d["outcome"], "built", "{d}");
        } else if d["kind"] == "fetch-uv" || d["kind"] == "fetch-python" {
            // The machine's own tools: no store path, nothing to substitute.
            assert_eq!(d["outcome"], "valid", "{d}");
            assert!(d["output"].is_null(), "{d}");
        } else {
            assert_eq!(d["outcome"], "substituted", "{d}");
            let from = d["from"].as_str().unwrap();
            assert!(from.starts_with(&t.backend.shown_as("team")), "{d}");
        }
    }
    assert_eq!(t.w.total_requests(), 0, "went upstream");
    assert_eq!(
        status_manifest(&t.w, &store, &home),
        status_manifest(&t.w, &t.w.env.store, &t.home)
    );
    assert_eq!(
        fs::read(home.join("models/unet/unet.safetensors")).unwrap(),
        t.w.model
    );
    assert!(home.join(".venv").exists());
    assert_store_whole(&t.w, &store);

    let store_c = t.w.env.path("store-c");
    t.cmd(&store_c)
        .env("COMFIX_SUBSTITUTERS", &url)
        .env("COMFIX_TRUSTED_KEYS", &public)
        .args(["resolve", "v1"])
        .ok();
    assert_store_whole(&t.w, &store_c);
}

/// One byte of a model changed inside its (signed) archive: the substitution is refused naming
/// the tree hashes and the model, nothing of it registered, and with upstream gone the realize
/// fails.
fn a_corrupted_archive_is_refused_and_nothing_registered(kind: &str) {
    let mut t = Team::new(kind);
    let (secret, public) = key(&t.w, "team-1");
    t.push("signed", &["--sign-key", secret.to_str().unwrap()]);
    let model = t.model_path();
    let entry: Value =
        serde_json::from_slice(&t.backend.get("signed", &format!("paths/{model}.json"))).unwrap();
    let archive = entry["archive"].as_str().unwrap();
    let mut tar = Vec::new();
    zstd::stream::read::Decoder::new(&t.backend.get("signed", archive)[..])
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let at = tar.windows(64).position(|w| w == &t.w.model[..64]).unwrap();
    tar[at + 10] ^= 0xff;
    t.backend
        .put("signed", archive, &zstd::encode_all(&tar[..], 3).unwrap());
    t.cut_upstream();

    let store = t.w.env.path("store-corrupt");
    let url = t.backend.url("signed");
    let out = t.realize(
        &store,
        &t.w.env.path("home-y"),
        &["--substituter", &url, "--trusted-key", &public],
    );
    let err = fails_with(&out, "tree hash");
    assert!(err.contains("model `wan-unet`"), "{err}");
    assert!(!registered(&t.w, &store).contains(&model));
    assert_store_whole(&t.w, &store);
}

/// Paths no trusted key signed — unsigned, or signed by another key — are refused (with
/// upstream gone the realize fails saying why, no model from the cache registered);
/// `--no-check-sigs` takes them, their digests still checked.
fn unsigned_paths_are_refused_unless_signatures_are_waived(kind: &str) {
    let mut t = Team::new(kind);
    t.push("unsigned", &[]);
    let (_, other) = key(&t.w, "someone-else");
    t.cut_upstream();
    let url = t.backend.url("unsigned");
    let models: Vec<String> = t.w.lock()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["store_path"].as_str().unwrap().to_string())
        .collect();
    for (store, trusted) in [("s1", vec![]), ("s2", vec!["--trusted-key", &other])] {
        let store = t.w.env.path(store);
        let mut args = vec!["--substituter", url.as_str()];
        args.extend(trusted);
        let out = t.realize(&store, &t.w.env.path("home-x"), &args);
        fails_with(&out, "is not signed by a trusted key");
        let names = registered(&t.w, &store);
        for name in &models {
            assert!(!names.contains(name), "{name} came from an unsigned cache");
        }
    }
    let store = t.w.env.path("s3");
    ok(t.realize(
        &store,
        &t.w.env.path("home-y"),
        &["--substituter", &url, "--no-check-sigs"],
    ));
    assert_store_whole(&t.w, &store);
}

/// Two stores push the same paths into one new cache at once, three times: both succeed each
/// time, what readers see is whole, and a third store pulls every path, verified.
fn two_stores_push_to_one_cache_at_once(kind: &str) {
    let env = TestEnv::new();
    let backend = Backend::new(kind, &env);
    let (store_a, store_b) = (env.path("store-a"), env.path("store-b"));
    let names = plain_store(&env, &store_a, 20 << 20, 6);
    assert_eq!(plain_store(&env, &store_b, 20 << 20, 6), names);
    let cmd = |store: &Path| {
        let mut cmd = env.cmd_without_store();
        cmd.arg("--store").arg(store);
        backend.env(&mut cmd);
        cmd
    };
    for round in 0..3 {
        let name = format!("shared-{round}");
        let url = backend.url(&name);
        let mut pushes: Vec<_> = [&store_a, &store_b]
            .iter()
            .map(|store| {
                cmd(store)
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
        backend.assert_consistent(&name, &format!("round {round}"));
        let pulled = env.path(&format!("store-pulled-{round}"));
        cmd(&pulled)
            .args(["store", "copy", "--no-check-sigs", "--from", &url])
            .args(&names)
            .ok();
        cmd(&pulled)
            .args(["store", "verify", "--check-contents"])
            .ok();
    }
}

/// A cache that hangs — a bucket whose endpoint accepts connections and never answers, a FIFO
/// where a directory cache's metadata belongs — is passed over within the stall timeout, with a
/// warning, and the version comes from upstream; `store copy --from` it fails naming why.
fn a_cache_that_hangs_is_passed_over_within_the_stall_timeout(kind: &str) {
    let w = World::new();
    w.write_spec(&w.default_spec());
    w.resolve_ok(&[]);
    let hole = BlackHole::start();
    let url = match kind {
        "directory" => {
            let dir = w.env.path("caches/hung");
            fs::create_dir_all(dir.join("paths")).unwrap();
            let fifo =
                std::ffi::CString::new(dir.join("comfix-cache.json").to_str().unwrap()).unwrap();
            // SAFETY: mkfifo on a path in the test's own directory.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
            format!("file://{}", dir.display())
        }
        _ => format!("s3://bucket/x?endpoint=http://127.0.0.1:{}", hole.port),
    };
    // A short stall timeout, and credentials so the client asks the endpoint at all.
    let hung = |store: &str| {
        let mut cmd = w.cmd(&w.env.path(store));
        cmd.env("COMFIX_STALL_TIMEOUT", "2s")
            .env("AWS_ACCESS_KEY_ID", "AKIA")
            .env("AWS_SECRET_ACCESS_KEY", "secret");
        cmd
    };
    let started = std::time::Instant::now();
    let out = hung("store-b")
        .args([
            "realize",
            "v1",
            "--no-check-sigs",
            "--substituter",
            &url,
            "--target",
        ])
        .arg(w.env.path("home"))
        .ok();
    let took = started.elapsed();
    says(&out, "passing over the substituter");
    assert!(took < std::time::Duration::from_secs(45), "took {took:?}");
    assert_eq!(
        fs::read(w.env.path("home/models/unet/unet.safetensors")).unwrap(),
        w.model
    );
    if kind == "bucket" {
        assert!(hole.connections() > 0, "the endpoint was never asked");
    }
    let started = std::time::Instant::now();
    let out = hung("store-c")
        .args(["store", "copy", "--no-check-sigs", "--from", &url, "v1"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let expected = match kind {
        "directory" => "not a regular file",
        _ => "no answer within 2s",
    };
    fails_with(&out, expected);
    assert!(took < std::time::Duration::from_secs(45), "took {took:?}");
}

/// A cache directory served by a plain static HTTPS server (a private CA, as `SSL_CERT_FILE`
/// names it) realizes a signed version in an empty store with every upstream gone: each path
/// substituted from the `https://` URL; an archive whose transfer breaks midway is taken up again
/// at the byte it stopped at (`Range`). A cache signed by a key the store does not trust, or
/// missing an archive, gives nothing: the realize fails and the store holds nothing unverified.
#[test]
fn a_static_https_server_serves_a_cache() {
    use crate::support::http::Route;
    use crate::support::tls::TestCa;

    let mut t = Team::new("directory");
    let (secret, public) = key(&t.w, "team-1");
    let (_, stranger) = key(&t.w, "stranger");
    t.push("team", &["--sign-key", secret.to_str().unwrap()]);
    let ca = TestCa::new();
    let pem = ca.write_pem(&t.w.env.path("ca.pem"));
    let server = TestServer::start_tls(ca.server.clone());
    let model = t.model_path();
    let entry: Value =
        serde_json::from_slice(&t.backend.get("team", &format!("paths/{model}.json"))).unwrap();
    let model_archive = entry["archive"].as_str().unwrap().to_string();
    let files: Vec<(String, Vec<u8>)> = t
        .backend
        .keys("team")
        .into_iter()
        .map(|key| {
            let bytes = t.backend.get("team", &key);
            (key, bytes)
        })
        .collect();
    let serve = |server: &TestServer, skip: Option<&str>| {
        for (key, bytes) in &files {
            let mut route = Route::file(bytes.clone());
            if *key == model_archive {
                route.drop_after = Some(bytes.len() as u64 / 2);
            }
            if Some(key.as_str()) == skip {
                route = Route {
                    status: 404,
                    ..Route::file(Vec::new())
                };
            }
            server.route(&format!("/team/{key}"), route);
        }
    };
    serve(&server, None);
    t.cut_upstream();
    let url = server.url("/team");
    let realize = |store: &Path, trusted: &str| {
        t.cmd(store)
            .env("SSL_CERT_FILE", &pem)
            .arg("--json")
            .args(["realize", "v1", "--target"])
            .arg(
                t.w.env
                    .path(&format!("home-{}", store.display().to_string().len())),
            )
            .args(["--substituter", &url, "--trusted-key", trusted])
            .output()
            .unwrap()
    };

    // Signed by a key it does not trust: nothing taken.
    let store = t.w.env.path("store-stranger");
    let out = realize(&store, &stranger);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        !registered(&t.w, &store).contains(&model),
        "an untrusted path was registered"
    );

    let store = t.w.env.path("store-b");
    let out = ok(realize(&store, &public));
    let report = json_of(&out);
    for d in report["derivations"].as_array().unwrap() {
        if d["kind"] == "fetch-model" {
            assert_eq!(d["outcome"], "substituted", "{d}");
            assert!(d["from"].as_str().unwrap().starts_with(&url), "{d}");
        }
    }
    let ranged = server
        .requests_to(&format!("/team/{model_archive}"))
        .iter()
        .any(|r| r.headers.contains_key("range"));
    assert!(ranged, "the broken transfer was not resumed by range");
    assert_store_whole(&t.w, &store);

    // An archive the server lacks: that path is not taken, nothing half-registered.
    let server = TestServer::start_tls(ca.server.clone());
    serve(&server, Some(&model_archive));
    let store = t.w.env.path("store-c");
    let url_c = server.url("/team");
    let out = t
        .cmd(&store)
        .env("SSL_CERT_FILE", &pem)
        .args(["realize", "v1", "--target"])
        .arg(t.w.env.path("home-c"))
        .args(["--substituter", &url_c, "--trusted-key", &public])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(!registered(&t.w, &store).contains(&model));
    t.cmd(&store).args(["store", "verify"]).ok();

    // Read-only: a push to it is refused, saying so.
    t.cmd(&t.w.env.store)
        .env("SSL_CERT_FILE", &pem)
        .args(["store", "copy", "--to", &url, "v1"])
        .fails_with("read-only");
}
