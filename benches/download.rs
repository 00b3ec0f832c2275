//! Download benchmark: fetching one generated file (default 1 GiB, `COMFIX_BENCH_DOWNLOAD_MIB`)
//! from a loopback HTTPS server whose certificate a CA made in the run signs (comfix trusts it
//! through `SSL_CERT_FILE`, curl through `--cacert`) into the store — streamed, BLAKE3-hashed while
//! written, synced and registered — next to `curl --cacert -o` of the same URL (plain, and
//! followed by `sync`) in the same run.
//!
//! Run: `cargo bench --bench download`. Data goes under `COMFIX_BENCH_DIR` (default: temp dir).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

#[path = "../tests/it/support/tls.rs"]
mod tls;

mod common;

use comfix::fetch::http::{Client, Download, Got};
use comfix::fetch::FetchConfig;
use comfix::reporter::NoReporter;
use comfix::spec::ExpandedEnv;
use comfix::store::Add;
use comfix::store::{AddOptions, Store};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// Serve `body` over HTTPS for every GET on a loopback port; returns the URL.
fn serve(body: Arc<Vec<u8>>, config: Arc<rustls::ServerConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let body = body.clone();
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut stream = rustls::StreamOwned::new(conn, stream);
                if common::read_head(&mut stream).is_none() {
                    return;
                }
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(header.as_bytes());
                let _ = stream.write_all(&body);
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    format!("https://localhost:{port}/model.safetensors")
}

fn settle() {
    let _ = Command::new("sync").status();
}

fn download(c: &mut Criterion) {
    let mib: u64 = std::env::var("COMFIX_BENCH_DOWNLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let base = std::env::var_os("COMFIX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(base).unwrap();
    let mut body = vec![0u8; (mib << 20) as usize];
    blake3::Hasher::new()
        .update(b"download bench")
        .finalize_xof()
        .fill(&mut body);
    let ca = tls::TestCa::new();
    let ca_file = ca.write_pem(&work.path().join("ca.pem"));
    let url = serve(Arc::new(body), ca.server.clone());

    let mut group = c.benchmark_group("download");
    group.throughput(Throughput::Bytes(mib << 20));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(20));

    if Command::new("curl").arg("--version").output().is_ok() {
        for (label, sync) in [("curl", false), ("curl_and_sync", true)] {
            group.bench_function(label, |b| {
                b.iter_batched(
                    || {
                        settle();
                        tempfile::tempdir_in(work.path()).unwrap()
                    },
                    |dir| {
                        let out = dir.path().join("model.safetensors");
                        let status = Command::new("curl")
                            .arg("--cacert")
                            .arg(&ca_file)
                            .args(["-sS", "-o"])
                            .arg(&out)
                            .arg(&url)
                            .status()
                            .unwrap();
                        assert!(status.success());
                        if sync {
                            Command::new("sync").arg("-f").arg(&out).status().unwrap();
                        }
                        dir
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    } else {
        eprintln!("curl not found: `apt-get install curl` for the baseline");
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The client reads the machine's roots (and `SSL_CERT_FILE`) when it is built.
    std::env::set_var("SSL_CERT_FILE", &ca_file);
    let env = |_: &str| None;
    let config = FetchConfig::from_env(env, &ExpandedEnv::default(), false, 1).unwrap();
    let client = Client::new(Arc::new(config));
    let parsed = url::Url::parse(&url).unwrap();
    group.bench_function("comfix_download_into_store", |b| {
        b.iter_batched(
            || {
                settle();
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let store = Store::open(&dir.path().join("store")).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                let d = Download {
                    what: "bench model".into(),
                    url: parsed.clone(),
                    auth: None,
                    size: Some(mib << 20),
                    sha256: None,
                    blake3: None,
                    file_name: "model.safetensors".into(),
                    store_name: None,
                };
                let Got::Fetched(fetched) = runtime
                    .block_on(client.download(&store, &NoReporter, &d))
                    .unwrap()
                else {
                    panic!("a fresh store has no earlier download");
                };
                let digest = fetched.blake3;
                store
                    .add_staged(
                        fetched.staging,
                        "model.safetensors",
                        &AddOptions::default(),
                        Some(digest),
                    )
                    .unwrap();
                make_writable(dir.path());
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn make_writable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o755));
        }
    }
}

criterion_group!(benches, download);
criterion_main!(benches);
