//! Venv benchmark: building a venv from wheels already in the store, against uv installing the
//! same wheels into a fresh venv with a warm cache, in the same run.
//!
//! - `comfix_build_venv`: [`comfix::python::build_venv`] into a fresh store that holds the wheels
//!   (empty venv + uv pip install from the stored wheels + dedup into objects + register); uv's
//!   cache is warm for the baseline's wheel paths, not for this store's.
//! - `comfix_build_venv_same_store`: the same in one store whose uv cache is warm for its wheels,
//!   each iteration's set one tiny package larger (a new venv path each time).
//! - `uv_venv_and_install`: `uv venv --relocatable` + `uv pip install --offline --link-mode
//!   hardlink --no-index --find-links <wheels> --require-hashes --no-deps`, warm cache.
//! - `uv_venv_and_install_compiled`: the same with `--compile-bytecode` — the fair baseline since
//!   comfix's venvs carry bytecode for every module (so nothing run from them writes into the store).
//! - `uv_install_only`: the same install into a venv created in the (untimed) setup.
//! - `comfix_venv_already_stored`: `build_venv` when the store has the venv: no rebuild.
//!
//! The set: 30 generated pure-Python packages of 40 modules each (1,200 files, ~4 MiB) plus
//! metadata. Run: `cargo bench --bench venv` (needs uv; data under `COMFIX_BENCH_DIR`).

#[path = "../tests/it/support/http.rs"]
mod http;
#[path = "../tests/it/support/wheels.rs"]
mod wheels;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use comfix::lock::{LockedPython, LockedWheel};
use comfix::python::{self, Group, Interpreter, Uv};
use comfix::reporter::NoReporter;
use comfix::store::Add;
use comfix::store::{AddOptions, Store};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use wheels::Wheel;

const PACKAGES: usize = 30;
const MODULES: usize = 40;

fn package(i: usize) -> Wheel {
    let name = format!("benchpkg{i:02}");
    let mut wheel = Wheel::new(&name, "1.0", &format!("NAME = {name:?}\n"));
    for m in 0..MODULES {
        let size = 1000 + (i * 131 + m * 7919) % 6000;
        let mut data = vec![0u8; size];
        blake3::Hasher::new()
            .update(format!("{name}/{m}").as_bytes())
            .finalize_xof()
            .fill(&mut data);
        let text: String = data
            .iter()
            .map(|b| (b'a' + b % 26) as char)
            .collect::<String>();
        wheel = wheel.file(
            &format!("{name}/mod{m:02}.py"),
            format!("DATA = {text:?}\n").as_bytes(),
        );
    }
    if i > 0 {
        wheel = wheel.requires(&format!("benchpkg{:02}", i - 1));
    }
    wheel
}

struct Fixture {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    wheels_dir: PathBuf,
    requirements: PathBuf,
    uv: Uv,
    interpreter: Interpreter,
    wheels: Vec<Wheel>,
}

fn fixture() -> Fixture {
    let base = std::env::var_os("COMFIX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("comfix-bench-venv-")
        .tempdir_in(base)
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let wheels: Vec<Wheel> = (0..PACKAGES).map(package).collect();
    let wheels_dir = dir.join("wheels");
    wheels::write_dir(&wheels_dir, &wheels);
    let mut pins = String::new();
    for wheel in &wheels {
        let bytes = fs::read(wheels_dir.join(wheel.filename())).unwrap();
        pins.push_str(&format!(
            "{}=={} --hash=sha256:{}\n",
            wheel.name,
            wheel.version,
            wheels::sha256_hex(&bytes)
        ));
    }
    let requirements = dir.join("requirements.txt");
    fs::write(&requirements, pins).unwrap();
    // One uv cache for both sides, on the same filesystem as the stores and venvs.
    let cache = dir.join("uv-cache");
    let probe = Store::open(&dir.join("probe-store")).unwrap();
    let mut uv = python::find_uv(&probe).expect("uv is needed for this benchmark");
    uv.cache = cache;
    let interpreter = uv.interpreter(None).unwrap();
    let fixture = Fixture {
        dir,
        _tmp: tmp,
        wheels_dir,
        requirements,
        uv,
        interpreter,
        wheels,
    };
    // Warm the cache.
    let warm = fixture.dir.join("warm-venv");
    uv_venv(&fixture, &warm);
    uv_install(&fixture, &warm);
    fixture
}

fn uv_venv(f: &Fixture, venv: &Path) {
    run(f
        .uv
        .command([
            "venv",
            "--quiet",
            "--relocatable",
            "--no-project",
            "--python",
        ])
        .arg(&f.interpreter.path)
        .arg(venv));
}

fn uv_install(f: &Fixture, venv: &Path) {
    uv_install_with(f, venv, &[]);
}

fn uv_install_with(f: &Fixture, venv: &Path, extra: &[&str]) {
    run(f
        .uv
        .command(["pip", "install", "--quiet"])
        .args(extra)
        .arg("--python")
        .arg(venv.join("bin/python"))
        .args(["--offline", "--link-mode", "hardlink", "--no-index"])
        .args(["--require-hashes", "--no-deps", "--find-links"])
        .arg(&f.wheels_dir)
        .arg("--requirement")
        .arg(&f.requirements));
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Add `wheel` (a file in `dir`) to `store`; its lock entry.
fn add_wheel(store: &Store, dir: &Path, wheel: &Wheel) -> LockedWheel {
    let file = dir.join(wheel.filename());
    let added = store
        .add_path(
            &file,
            &AddOptions {
                name: Some(wheel.filename()),
                references: vec![],
            },
            &NoReporter,
        )
        .unwrap();
    LockedWheel {
        name: wheel.name.clone(),
        version: wheel.version.clone(),
        filename: wheel.filename(),
        url: None,
        sha256: wheels::sha256_hex(&fs::read(&file).unwrap()),
        store_path: added.record.name,
    }
}

/// A fresh store holding the wheels, and the lock's Python section naming them.
fn store_with_wheels(f: &Fixture, at: &Path) -> (Store, LockedPython) {
    let store = Store::open(at).unwrap();
    let locked = f
        .wheels
        .iter()
        .map(|w| add_wheel(&store, &f.wheels_dir, w))
        .collect();
    let python = LockedPython {
        version: f.interpreter.minor_version(),
        requirements: vec![Group {
            origin: "spec".into(),
            requirements: f.wheels.iter().map(|w| w.name.clone()).collect(),
        }],
        wheels: locked,
        universal: None,
    };
    (store, python)
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("venv");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let mut n = 0u32;

    group.bench_function("comfix_build_venv", |b| {
        b.iter_batched(
            || {
                n += 1;
                let (store, python) = store_with_wheels(&f, &f.dir.join(format!("store-{n}")));
                sync();
                (store, python)
            },
            |(store, python)| {
                let built = python::build_venv(&store, &f.uv, &f.interpreter, &python).unwrap();
                assert!(built.built);
                store
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("uv_venv_and_install", |b| {
        b.iter_batched(
            || {
                n += 1;
                sync();
                f.dir.join(format!("venv-{n}"))
            },
            |venv| {
                uv_venv(&f, &venv);
                uv_install(&f, &venv);
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("uv_venv_and_install_compiled", |b| {
        b.iter_batched(
            || {
                n += 1;
                sync();
                f.dir.join(format!("venv-{n}"))
            },
            |venv| {
                uv_venv(&f, &venv);
                uv_install_with(&f, &venv, &["--compile-bytecode"]);
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("uv_install_only", |b| {
        b.iter_batched(
            || {
                n += 1;
                let venv = f.dir.join(format!("venv-{n}"));
                uv_venv(&f, &venv);
                sync();
                venv
            },
            |venv| uv_install(&f, &venv),
            BatchSize::PerIteration,
        )
    });
    // The same store each time, the uv cache warm for its wheels. Each iteration adds one tiny
    // package of its own to the set (so it builds a new venv path, the case of a version that
    // differs by a package); every other file is already an object after the first iteration.
    let (store, python) = store_with_wheels(&f, &f.dir.join("store-stored"));
    python::build_venv(&store, &f.uv, &f.interpreter, &python).unwrap();
    group.bench_function("comfix_build_venv_same_store", |b| {
        b.iter_batched(
            || {
                n += 1;
                let salt = Wheel::new(&format!("benchsalt{n}"), "1.0", "S = 1\n");
                let dir = f.dir.join(format!("salt-{n}"));
                wheels::write_dir(&dir, std::slice::from_ref(&salt));
                let mut python = python.clone();
                python.wheels.push(add_wheel(&store, &dir, &salt));
                sync();
                python
            },
            |python| {
                let built = python::build_venv(&store, &f.uv, &f.interpreter, &python).unwrap();
                assert!(built.built);
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("comfix_venv_already_stored", |b| {
        b.iter(|| {
            let built = python::build_venv(&store, &f.uv, &f.interpreter, &python).unwrap();
            assert!(!built.built);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
