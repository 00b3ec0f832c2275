//! Torch backend benchmark: realizing a second machine-local backend (`--torch-backend cu121`)
//! for a version whose shared venv (and a first backend, `cpu`) is in the store, against
//! `uv pip install` of the same torch stubs into a copy of the shared venv, in the same run.
//!
//! The shared set: 30 generated pure-Python packages of 40 modules each plus `torch` and
//! `torchvision` stubs (torch: 400 modules, ~4 MiB) from a loopback "PyPI"; the backends'
//! indexes (`/cpu/simple/`, `/cu121/simple/`) serve `+cpu` and `+cu121` stubs of the same size and
//! an `nvidia-cublas-cu12` stub. comfix resolves the overlay (uv), fetches the backend's wheels,
//! builds the overlay's venv (every other package's files shared) and assembles a new home; the
//! baseline only installs the three packages into a copied venv (`cp -a`, untimed; the other
//! packages are installed there already), with a fresh uv cache (the backend's packages are new
//! to comfix's store's cache too).
//!
//! Run: `cargo bench --bench torch` (needs uv; data under `COMFIX_BENCH_DIR`).

#[path = "../tests/it/support/http.rs"]
mod http;
#[path = "../tests/it/support/wheels.rs"]
mod wheels;

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{git, timed, work_dir};
use wheels::Wheel;

fn filler(name: &str, version: &str, modules: usize) -> Wheel {
    let mut wheel = Wheel::new(name, version, &format!("__version__ = {version:?}\n"));
    for m in 0..modules {
        let mut data = vec![0u8; 6000];
        blake3::Hasher::new()
            .update(format!("{name}/{version}/{m}").as_bytes())
            .finalize_xof()
            .fill(&mut data);
        let text: String = data.iter().map(|b| (b'a' + b % 26) as char).collect();
        wheel = wheel.file(
            &format!("{name}/mod{m:03}.py"),
            format!("DATA = {text:?}\n").as_bytes(),
        );
    }
    wheel
}

fn torch(version: &str) -> Wheel {
    filler("torch", version, 400)
}

fn vision(version: &str) -> Wheel {
    filler("torchvision", version, 40).requires("torch==2.5.1")
}

fn uv() -> String {
    std::env::var("COMFIX_UV").unwrap_or_else(|_| "uv".into())
}

fn copy(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if Command::new(uv()).arg("--version").output().is_err() {
        eprintln!("uv not found: `python3 -m pip install uv`");
        return;
    }
    let work = work_dir();
    let work = work.path();
    let core = work.join("core");
    std::fs::create_dir_all(&core).unwrap();
    let mut requirements = String::from("torch\ntorchvision\n");
    for i in 0..30 {
        requirements.push_str(&format!("benchpkg{i:02}\n"));
    }
    std::fs::write(core.join("main.py"), "print('comfy')\n").unwrap();
    std::fs::write(core.join("requirements.txt"), requirements).unwrap();
    git(&core, &["init", "-q", "-b", "main"]);
    git(&core, &["add", "."]);
    git(&core, &["commit", "-q", "-m", "core"]);

    let pypi = http::TestServer::start();
    let mut served: Vec<Wheel> = (0..30)
        .map(|i| filler(&format!("benchpkg{i:02}"), "1.0", 40))
        .collect();
    served.extend([torch("2.5.1"), vision("0.20.1")]);
    let pypi_url = wheels::serve_index(&pypi, &served);
    let backends = http::TestServer::start();
    wheels::serve_index_under(
        &backends,
        "/cpu",
        &[torch("2.5.1+cpu"), vision("0.20.1+cpu")],
    );
    let cu121 = wheels::serve_index_under(
        &backends,
        "/cu121",
        &[
            torch("2.5.1+cu121").requires("nvidia-cublas-cu12==12.1.3.1"),
            vision("0.20.1+cu121"),
            filler("nvidia_cublas_cu12", "12.1.3.1", 100),
        ],
    );
    let template = backends.url("/{backend}/simple/");

    let python = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let versions = work.join("versions");
    std::fs::create_dir_all(&versions).unwrap();
    let spec = serde_json::json!({
        "schema_version": 2,
        "version_id": "v1",
        "comfy": { "repo": core.display().to_string(), "ref": "main" },
        "python": { "version": python.trim() }
    });
    std::fs::write(versions.join("v1.json"), spec.to_string()).unwrap();
    let comfix = |store: &Path, home: &Path, backend: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfix"));
        cmd.current_dir(work)
            .arg("--store")
            .arg(store)
            .args(["-q", "realize", "v1", "--target"])
            .arg(home)
            .env("UV_DEFAULT_INDEX", &pypi_url)
            .env("COMFIX_TORCH_INDEX", &template)
            .env("HOME", work);
        if let Some(b) = backend {
            cmd.args(["--torch-backend", b]);
        }
        cmd
    };
    let prepared = work.join("store");
    timed(&mut comfix(&prepared, &work.join("home-shared"), None));
    timed(&mut comfix(&prepared, &work.join("home-cpu"), Some("cpu")));
    let shared_venv = std::fs::canonicalize(work.join("home-shared/.venv")).unwrap();
    let warm = work.join("warm-venv");
    copy(&shared_venv, &warm);
    let _ = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&warm)
        .status();

    let mut ours = Duration::MAX;
    let mut theirs = Duration::MAX;
    for round in 0..3 {
        let store = work.join(format!("store-{round}"));
        copy(&prepared, &store);
        ours = ours.min(timed(&mut comfix(
            &store,
            &work.join(format!("home-cu-{round}")),
            Some("cu121"),
        )));
        let venv = work.join(format!("venv-{round}"));
        copy(&warm, &venv);
        // A fresh uv cache: the backend's packages are new to it, as to comfix's store.
        let cache = work.join(format!("uv-cache-{round}"));
        theirs = theirs.min(timed(
            Command::new(uv())
                .args(["pip", "install", "--quiet", "--python"])
                .arg(venv.join("bin/python"))
                .args(["--index", &cu121, "--default-index", &pypi_url])
                .args(["torch==2.5.1+cu121", "torchvision==0.20.1+cu121"])
                .env("UV_CACHE_DIR", &cache),
        ));
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&store)
            .status();
        let _ = std::fs::remove_dir_all(&store);
    }
    println!(
        "torch/second_backend_comfix_realize   {:.3}s",
        ours.as_secs_f64()
    );
    println!(
        "torch/uv_pip_install_into_a_copy       {:.3}s",
        theirs.as_secs_f64()
    );
    println!(
        "torch/ratio                            {:.2}× uv's time",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(work).status();
}
