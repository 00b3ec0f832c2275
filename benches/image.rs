//! Image benchmark: `image build` of a version (a core of 2,000 source files, two nodes, three
//! models of `COMFIX_BENCH_IMAGE_MODEL_MIB` MiB, 256 by default) from a warm store into an empty
//! OCI layout, next to `tar -c | zstd -3 -T0` and `tar -c | gzip -1` of the same store paths, same
//! run, best of three alternating after a warm-up; then the rebuild after a one-node change into the
//! same layout (the figure to compare with the first build); and, where Debian's `docker-registry`
//! is installed, what pushing the second version sends next to the size of its new layers.
//!
//! Run: `cargo bench --bench image`. Data under `COMFIX_BENCH_DIR`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use comfix::closure::{Models, Version};
use comfix::image::{self, BuildOptions};
use comfix::lock::{Lock, LockedGit, LockedModel, LOCK_VERSION};
use comfix::reporter::NoReporter;
use comfix::store::{Add, AddOptions, Store};

mod common;
use common::{env_usize, pseudo_random, remove_tree, sync, work_dir};

fn shell(script: &str) -> Duration {
    sync();
    let started = Instant::now();
    let status = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script}");
    started.elapsed()
}

/// A tree of `files` Python files under `dir`, `seed` making it differ.
fn tree(dir: &Path, files: usize, seed: usize) {
    for i in 0..files {
        let sub = dir.join(format!("m/d{:02}", i % 40));
        fs::create_dir_all(&sub).unwrap();
        let mut f = fs::File::create(sub.join(format!("m{i}.py"))).unwrap();
        for line in 0..40 {
            writeln!(
                f,
                "def f_{i}_{line}(x):\n    return x * {line} + {i} + {seed}"
            )
            .unwrap();
        }
    }
}

fn git(path: &str) -> LockedGit {
    LockedGit {
        repo: "https://example.invalid/x.git".into(),
        git_ref: None,
        commit: "0".repeat(40),
        store_path: path.into(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let model_mib = env_usize("COMFIX_BENCH_IMAGE_MODEL_MIB", 256);
    let work = work_dir();
    let store = Store::open(&work.path().join("store")).unwrap();
    let add = |dir: &Path, name: &str| {
        let options = AddOptions {
            name: Some(name.into()),
            references: Vec::new(),
        };
        store
            .add_path(dir, &options, &NoReporter)
            .unwrap()
            .record
            .name
    };
    let src = work.path().join("src");
    tree(&src.join("core"), 2000, 0);
    tree(&src.join("node-a"), 200, 1);
    tree(&src.join("node-b"), 200, 2);
    tree(&src.join("node-b2"), 200, 3);
    let core = add(&src.join("core"), "ComfyUI");
    let node_a = add(&src.join("node-a"), "node-a");
    let node_b = add(&src.join("node-b"), "node-b");
    let node_b2 = add(&src.join("node-b2"), "node-b");
    let mut models = Vec::new();
    for m in 0..3 {
        let bytes = pseudo_random(model_mib << 20, m + 1);
        let name = format!("model{m}.safetensors");
        let added = store.add_bytes(&name, &bytes, &[]).unwrap();
        models.push(LockedModel {
            source: format!("https://example.invalid/{name}"),
            name: None,
            target_subdir: Some("checkpoints".into()),
            filename: name.clone(),
            required: true,
            url: format!("https://example.invalid/{name}"),
            revision: None,
            size: bytes.len() as u64,
            sha256: None,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            store_path: added.record.name,
        });
    }
    let lock_with = |id: &str, b: &str| -> Lock {
        let node = |name: &str, path: &str| comfix::lock::LockedNode {
            name: name.into(),
            enabled: true,
            git: Some(git(path)),
            registry: None,
            local: None,
        };
        Lock {
            lock_version: LOCK_VERSION,
            version_id: id.into(),
            comfy: git(&core),
            custom_nodes: vec![node("node-a", &node_a), node("node-b", b)],
            models: models.clone(),
            python: None,
            workflows: Vec::new(),
        }
    };
    let (v1, v2) = (lock_with("v1", &node_b), lock_with("v2", &node_b2));
    let spec = b"{}".to_vec();
    let version = |lock: &'static Lock| Version {
        spec: &spec,
        lock,
        venv: None,
        extra: Vec::new(),
    };
    let (v1, v2): (&'static Lock, &'static Lock) =
        (Box::leak(Box::new(v1)), Box::leak(Box::new(v2)));
    let options = BuildOptions {
        models: Models::All,
        base: None,
        comfix: std::env::current_exe().unwrap(),
        models_from: Vec::new(),
        trusted_keys: Vec::new(),
    };
    let layers_cache = store.root().join("cache/image-layers");
    let build = |lock: &'static Lock, out: &Path, fresh: bool| -> Duration {
        if fresh {
            remove_tree(out);
            remove_tree(&layers_cache);
        }
        sync();
        let started = Instant::now();
        image::build(&store, &version(lock), &options, out).unwrap();
        started.elapsed()
    };
    let names: Vec<String> = v1.store_paths().iter().map(|s| s.to_string()).collect();
    let bytes: u64 = names
        .iter()
        .map(|n| store.query(n).unwrap().unwrap().size)
        .sum::<u64>()
        + fs::metadata(&options.comfix).unwrap().len();
    let paths = store.root().join("paths");
    let baseline = work.path().join("baseline");
    let tar_to = |filter: &str| {
        format!(
            "tar -cf - -C {} {} | {filter} > {}",
            paths.display(),
            names.join(" "),
            baseline.display()
        )
    };
    let (zstd, gzip) = (tar_to("zstd -3 -T0 -q"), tar_to("gzip -1"));
    let layout = work.path().join("layout");
    build(v1, &layout, true);
    shell(&zstd);
    let (mut ours, mut with_zstd, mut with_gzip) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        ours = ours.min(build(v1, &layout, true));
        with_zstd = with_zstd.min(shell(&zstd));
        with_gzip = with_gzip.min(shell(&gzip));
    }
    let mib = bytes as f64 / (1 << 20) as f64;
    println!("image/content_mib            {mib:.0}");
    println!(
        "image/build                  {:.3}s  {:.0} MiB/s",
        ours.as_secs_f64(),
        mib / ours.as_secs_f64()
    );
    println!(
        "image/tar_zstd               {:.3}s  (build takes {:.2}× the time)",
        with_zstd.as_secs_f64(),
        ours.as_secs_f64() / with_zstd.as_secs_f64()
    );
    println!(
        "image/tar_gzip               {:.3}s  (build takes {:.2}× the time)",
        with_gzip.as_secs_f64(),
        ours.as_secs_f64() / with_gzip.as_secs_f64()
    );
    // The one-node change: v1 built (layers remembered), then v2 into the same layout.
    let mut rebuild = Duration::MAX;
    for _ in 0..3 {
        build(v1, &layout, true);
        rebuild = rebuild.min(build(v2, &layout, false));
    }
    println!(
        "image/rebuild_one_node       {:.3}s  ({:.1}% of the first build)",
        rebuild.as_secs_f64(),
        100.0 * rebuild.as_secs_f64() / ours.as_secs_f64()
    );
    push(&layout, work.path());
    let _ = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(work.path())
        .status();
}

/// Push v1 then v2 to a loopback registry: what the second push sends, next to its new layers.
fn push(layout: &Path, work: &Path) {
    if Command::new("sh")
        .args(["-c", "command -v docker-registry"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        println!("image/push                   skipped: no docker-registry");
        return;
    }
    let port = comfix::run::server::free_port().unwrap();
    let dir = work.join("registry");
    fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    fs::write(dir.join("config.yml"), config).unwrap();
    let mut registry = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = |_: &str| None;
    let mut sent = Vec::new();
    for id in ["v1", "v2"] {
        let reference =
            image::push::Reference::parse(&format!("127.0.0.1:{port}/bench/img:{id}")).unwrap();
        let started = Instant::now();
        let report = runtime
            .block_on(image::push::push(layout, id, &reference, &env))
            .unwrap();
        sent.push((started.elapsed(), report));
    }
    let _ = registry.kill();
    let _ = registry.wait();
    let (first_time, first) = &sent[0];
    let (second_time, second) = &sent[1];
    println!(
        "image/push_first             {:.3}s  {} blobs, {} bytes",
        first_time.as_secs_f64(),
        first.uploaded.len(),
        first.uploaded_bytes
    );
    println!(
        "image/push_second            {:.3}s  {} blobs, {} bytes sent ({} there already): the new node's layer, the top layer, the config",
        second_time.as_secs_f64(),
        second.uploaded.len(),
        second.uploaded_bytes,
        second.present
    );
}
