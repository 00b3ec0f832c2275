//! Substitution benchmark: a version (a git core and four models, 64 MiB each by default,
//! `COMFIX_BENCH_SUBSTITUTE_MODEL_MIB`) put into an empty store three ways, each by the `comfix`
//! binary, in the same run: resolved from its loopback sources without a lock, resolved from
//! them with the lock, and substituted from a cache directory (`--substituter file://DIR`).
//!
//! Run: `cargo bench --bench substitute`. Data under `COMFIX_BENCH_DIR`.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{env_usize, git, pseudo_random, read_head, sync, work_dir};

/// Serve `files[i]` at `/m<i>.safetensors` over plain HTTP on a loopback port.
fn serve(files: Arc<Vec<Vec<u8>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let files = files.clone();
            std::thread::spawn(move || {
                let Some(text) = read_head(&mut stream) else {
                    return;
                };
                let path = text.split_whitespace().nth(1).unwrap_or("");
                let index: Option<usize> = path
                    .strip_prefix("/m")
                    .and_then(|p| p.strip_suffix(".safetensors"))
                    .and_then(|i| i.parse().ok());
                match index.and_then(|i| files.get(i)) {
                    Some(body) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        if !text.starts_with("HEAD") {
                            let _ = stream.write_all(body);
                        }
                    }
                    None => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn comfix(work: &Path, store: &Path, args: &[&str]) -> Duration {
    sync();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_comfix"))
        .current_dir(work)
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("COMFIX_SUBSTITUTERS")
        .env("HOME", work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "comfix {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mib = env_usize("COMFIX_BENCH_SUBSTITUTE_MODEL_MIB", 64);
    let work = work_dir();
    let work = work.path();
    let core = work.join("ComfyUI");
    std::fs::create_dir_all(core.join("comfy")).unwrap();
    for i in 0..500 {
        std::fs::write(
            core.join(format!("comfy/m{i}.py")),
            format!("X = {i}\n").repeat(50),
        )
        .unwrap();
    }
    git(&core, &["init", "-q", "-b", "main"]);
    git(&core, &["add", "."]);
    git(&core, &["commit", "-q", "-m", "core"]);
    let files: Vec<Vec<u8>> = (0..4).map(|i| pseudo_random(mib << 20, i + 1)).collect();
    let url = serve(Arc::new(files));
    let models: Vec<serde_json::Value> = (0..4)
        .map(|i| {
            serde_json::json!({
                "source": format!("{url}/m{i}.safetensors"),
                "target_subdir": "checkpoints"
            })
        })
        .collect();
    let spec = serde_json::json!({
        "schema_version": 2,
        "version_id": "v1",
        "comfy": { "repo": core.display().to_string(), "ref": "main" },
        "models": models,
    });
    std::fs::create_dir_all(work.join("versions")).unwrap();
    std::fs::write(work.join("versions/v1.json"), spec.to_string()).unwrap();

    let unlocked = comfix(work, &work.join("store-a"), &["resolve", "v1"]);
    let cache = work.join("cache");
    let cache_arg = cache.display().to_string();
    comfix(
        work,
        &work.join("store-a"),
        &["store", "copy", "--to", &cache_arg, "v1"],
    );
    let substituter = format!("file://{}", cache.display());
    let (mut locked, mut substituted) = (Duration::MAX, Duration::MAX);
    for round in 0..3 {
        let store = work.join(format!("store-locked-{round}"));
        locked = locked.min(comfix(work, &store, &["resolve", "v1"]));
        let store = work.join(format!("store-substituted-{round}"));
        let args = [
            "resolve",
            "v1",
            "--substituter",
            &substituter,
            "--no-check-sigs",
        ];
        substituted = substituted.min(comfix(work, &store, &args));
    }
    let total = (4 * mib) as f64;
    println!("substitute/content_mib         {total:.0}");
    println!(
        "substitute/resolve_unlocked    {:.3}s",
        unlocked.as_secs_f64()
    );
    println!(
        "substitute/resolve_locked      {:.3}s  {:.0} MiB/s",
        locked.as_secs_f64(),
        total / locked.as_secs_f64()
    );
    println!(
        "substitute/from_cache_dir      {:.3}s  {:.0} MiB/s  ({:.2}× the time of resolving from the loopback sources)",
        substituted.as_secs_f64(),
        total / substituted.as_secs_f64(),
        substituted.as_secs_f64() / locked.as_secs_f64()
    );
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(work).status();
}
