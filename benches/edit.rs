//! Editing benchmark: `comfix add node` of a registry node into a resolved version with 20
//! registry nodes, next to `comfix resolve` of the same edited spec without its lock (what a
//! tool that re-resolves everything on each change does), in the same run, over a loopback
//! registry that counts the requests each makes. Both see a warm store (every zip already in it):
//! the difference is the pinning.
//!
//! Run: `cargo bench --bench edit`. Data under `COMFIX_BENCH_DIR`; `COMFIX_BENCH_EDIT_ROUNDS`
//! rounds (default 5), medians reported.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{env_usize, git, read_head, timed, work_dir};

const NODES: usize = 20;

/// A registry package: a few modules, as small node packs are.
fn node_zip(i: usize) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let options = zip::write::SimpleFileOptions::default();
    for f in 0..30 {
        zip.start_file(format!("nodes/n{f}.py"), options).unwrap();
        zip.write_all(format!("NODE = {i}\nF = {f}\n").repeat(40).as_bytes())
            .unwrap();
    }
    zip.start_file("__init__.py", options).unwrap();
    zip.write_all(b"NODE_CLASS_MAPPINGS = {}\n").unwrap();
    zip.finish().unwrap();
    buf.into_inner()
}

/// A loopback registry of `node0`..`node{count-1}` at version 1.0.0; `asked` counts the metadata
/// requests (pins), `downloads` the zips.
fn serve(count: usize, asked: Arc<AtomicUsize>, downloads: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let zips: Arc<Vec<Vec<u8>>> = Arc::new((0..count).map(node_zip).collect());
    let url = base.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let (zips, asked, downloads, url) =
                (zips.clone(), asked.clone(), downloads.clone(), url.clone());
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let node = |p: &str| -> Option<usize> {
                    p.strip_prefix("node")?.parse().ok().filter(|i| *i < count)
                };
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let body: Option<(&str, Vec<u8>)> = match parts.as_slice() {
                    ["nodes", id] | ["nodes", id, "versions", "1.0.0"] => node(id).map(|i| {
                        asked.fetch_add(1, Ordering::SeqCst);
                        let info = serde_json::json!({
                            "version": "1.0.0",
                            "downloadUrl": format!("{url}/dl/node{i}.zip"),
                        });
                        let body = match parts.len() {
                            2 => serde_json::json!({ "latest_version": info }),
                            _ => info,
                        };
                        ("application/json", body.to_string().into_bytes())
                    }),
                    ["dl", file] => file.strip_suffix(".zip").and_then(node).map(|i| {
                        downloads.fetch_add(1, Ordering::SeqCst);
                        ("application/zip", zips[i].clone())
                    }),
                    _ => None,
                };
                let _ = match body {
                    Some((kind, body)) => write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .and_then(|_| stream.write_all(&body)),
                    None => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            });
        }
    });
    base
}

fn comfix(work: &Path, store: &Path, registry: &str, args: &[&str]) -> Duration {
    timed(
        Command::new(env!("CARGO_BIN_EXE_comfix"))
            .current_dir(work)
            .arg("--store")
            .arg(store)
            .args(args)
            .env_remove("COMFIX_SUBSTITUTERS")
            .env("COMFIX_REGISTRY_URL", registry)
            .env("HOME", work),
    )
}

fn spec(core: &Path, nodes: usize) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = (0..nodes)
        .map(|i| serde_json::json!({ "cnr": format!("node{i}"), "version": "1.0.0" }))
        .collect();
    serde_json::json!({
        "schema_version": 2,
        "version_id": "v1",
        "comfy": { "repo": core.display().to_string(), "ref": "main" },
        "custom_nodes": nodes,
    })
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rounds = env_usize("COMFIX_BENCH_EDIT_ROUNDS", 5).max(1);
    let work = work_dir();
    let work = work.path();
    let core = work.join("ComfyUI");
    std::fs::create_dir_all(core.join("comfy")).unwrap();
    for i in 0..300 {
        std::fs::write(core.join(format!("comfy/m{i}.py")), format!("X = {i}\n")).unwrap();
    }
    git(&core, &["init", "-q", "-b", "main"]);
    git(&core, &["add", "."]);
    git(&core, &["commit", "-q", "-m", "core"]);
    let (asked, downloads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let registry = serve(NODES + 1, asked.clone(), downloads.clone());
    let store = work.join("store");

    // The resolved version with 20 nodes; the store warmed with the 21st's zip too.
    let pristine = work.join("pristine");
    std::fs::create_dir_all(pristine.join("versions")).unwrap();
    std::fs::write(
        pristine.join("versions/v1.json"),
        spec(&core, NODES).to_string(),
    )
    .unwrap();
    comfix(&pristine, &store, &registry, &["resolve", "v1"]);
    let warm = work.join("warm");
    copy_versions(&pristine, &warm);
    let new_node = format!("node{NODES}@1.0.0");
    comfix(&warm, &store, &registry, &["add", "node", "v1", &new_node]);

    let (mut add, mut resolve) = (Vec::new(), Vec::new());
    let (mut add_asked, mut resolve_asked) = (0, 0);
    for round in 0..rounds {
        let a = work.join(format!("add-{round}"));
        copy_versions(&pristine, &a);
        let before = asked.load(Ordering::SeqCst);
        add.push(comfix(
            &a,
            &store,
            &registry,
            &["add", "node", "v1", &new_node],
        ));
        add_asked = asked.load(Ordering::SeqCst) - before;

        let b = work.join(format!("resolve-{round}"));
        std::fs::create_dir_all(b.join("versions")).unwrap();
        std::fs::write(
            b.join("versions/v1.json"),
            spec(&core, NODES + 1).to_string(),
        )
        .unwrap();
        let before = asked.load(Ordering::SeqCst);
        resolve.push(comfix(&b, &store, &registry, &["resolve", "v1"]));
        resolve_asked = asked.load(Ordering::SeqCst) - before;
    }
    let (add, resolve) = (median(add), median(resolve));
    println!(
        "edit/add_node_into_20          {:.3}s  {add_asked} registry request(s)",
        add.as_secs_f64()
    );
    println!(
        "edit/resolve_edited_spec       {:.3}s  {resolve_asked} registry request(s)",
        resolve.as_secs_f64()
    );
    println!(
        "edit/add_vs_resolve            {:.2}× the time  (zips downloaded in all: {})",
        add.as_secs_f64() / resolve.as_secs_f64(),
        downloads.load(Ordering::SeqCst)
    );
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(work).status();
}

/// `from/versions` (spec and lock) copied to `to/versions`.
fn copy_versions(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("versions")).unwrap();
    for name in ["v1.json", "v1.lock.json"] {
        std::fs::copy(
            from.join("versions").join(name),
            to.join("versions").join(name),
        )
        .unwrap();
    }
}
