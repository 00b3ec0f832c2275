//! The real ComfyUI (opt-in): what a user first meets, measured against doing it by hand with uv,
//! each figure beside its baseline in the same run.
//!
//! - **first realize**: `realize --frozen --wheels-dir` of the real version (the core's
//!   `requirements.txt`: torch and the NVIDIA wheels, ~3.1 GB) into a fresh store — the wheels
//!   copied into the store, the venv built with bytecode, the core checked out, the home
//!   assembled — against `uv venv` + `uv pip install --compile-bytecode --no-index --find-links`
//!   of the same wheels, each with a fresh uv cache, interleaved.
//! - **venv build with bytecode**: the same realize into a store that holds the wheels already
//!   (an untimed `resolve` put them there), against the same uv runs.
//! - **warm start**: `python main.py --cpu --quick-test-for-ci` (imports everything, loads the
//!   nodes, exits) from a comfix home — whose venv is read-only and carries its bytecode — against
//!   the same core in a hand-made uv venv with bytecode, interleaved, after one untimed start of
//!   each. Run as root without `PYTHONDONTWRITEBYTECODE`, as containers do; the store must still
//!   verify afterwards.
//!
//! Needs the fixture core (`../shared/fixtures/comfyui-a125cd84.tar.gz`) and the wheels:
//! `pip download -d DIR -r ComfyUI/requirements.txt requests --only-binary=:all:` (the spec adds
//! `requests`, which the core imports without listing it), then
//! `COMFIX_REAL_WHEELS=DIR cargo bench --bench real_comfyui` (uv on PATH; runs `COMFIX_BENCH_RUNS`
//! starts of each, default 5, and `COMFIX_BENCH_ROUNDS` cold realizes of each, default 2).
//! Without `COMFIX_REAL_WHEELS` it says so and does nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{git, sync, timed, work_dir};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn clean(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("PYTHONDONTWRITEBYTECODE")
        .env_remove("PYTHONPYCACHEPREFIX")
        .env_remove("VIRTUAL_ENV")
}

fn main() {
    let Some(wheels) = std::env::var_os("COMFIX_REAL_WHEELS").map(PathBuf::from) else {
        println!(
            "real_comfyui: skipped (set COMFIX_REAL_WHEELS to a directory of the core's wheels)"
        );
        return;
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/comfyui-a125cd84.tar.gz");
    let runs = common::env_usize("COMFIX_BENCH_RUNS", 5);
    // Cold realizes of each side (`COMFIX_BENCH_ROUNDS`), interleaved, the first side alternating.
    let rounds = common::env_usize("COMFIX_BENCH_ROUNDS", 2);
    let dir = work_dir();
    let work = dir.path();
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(work)
        .status()
        .unwrap();
    assert!(status.success());
    let core = work.join("ComfyUI");
    git(&core, &["init", "-q", "-b", "master"]);
    git(&core, &["add", "-A"]);
    git(&core, &["commit", "-q", "-m", "ComfyUI a125cd84"]);
    let python = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::create_dir_all(work.join("versions")).unwrap();
    std::fs::write(
        work.join("versions/real.json"),
        serde_json::json!({
            "schema_version": 2,
            "version_id": "real",
            "comfy": {"repo": format!("file://{}", core.display()), "ref": "master"},
            // The core imports `requests` without listing it (a user adds it, as here).
            "python": {"version": python.trim(), "requirements": ["requests"]}
        })
        .to_string(),
    )
    .unwrap();
    let comfix = |store: &Path, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfix"));
        clean(&mut cmd)
            .current_dir(work)
            .arg("--store")
            .arg(store)
            .args(args);
        cmd
    };
    let wheels_arg = wheels.to_str().unwrap();
    // The lock once (uv's resolution is not what is measured here).
    let out = comfix(
        &work.join("store-lock"),
        &["resolve", "real", "--wheels-dir", wheels_arg],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Venv builds, interleaved: comfix's realize of the locked version (a fresh store: the wheels
    // are taken from the directory, the venv built with bytecode, the core checked out) vs uv.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..rounds {
        let store = work.join(format!("store-{i}"));
        let home = work.join(format!("home-{i}"));
        let venv = work.join(format!("uv-venv-{i}"));
        let cache = work.join(format!("uv-cache-{i}"));
        let comfix_run = || {
            timed(&mut comfix(
                &store,
                &[
                    "realize",
                    "real",
                    "--frozen",
                    "--wheels-dir",
                    wheels_arg,
                    "--target",
                    home.to_str().unwrap(),
                ],
            ))
        };
        let uv_run = || {
            sync();
            let started = std::time::Instant::now();
            for args in [
                vec![
                    "venv",
                    "--quiet",
                    "--python",
                    python.trim(),
                    venv.to_str().unwrap(),
                ],
                vec![
                    "pip",
                    "install",
                    "--quiet",
                    "--compile-bytecode",
                    "--no-index",
                    "--find-links",
                    wheels_arg,
                    "--python",
                    &format!("{}/bin/python", venv.display()),
                    "-r",
                    core.join("requirements.txt").to_str().unwrap(),
                    "requests",
                ],
            ] {
                let out = clean(&mut Command::new("uv"))
                    .env("UV_CACHE_DIR", &cache)
                    .args(&args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "uv {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            started.elapsed()
        };
        // Alternating which goes first, so that neither always meets the other's page cache.
        if i % 2 == 0 {
            ours.push(comfix_run());
            theirs.push(uv_run());
        } else {
            theirs.push(uv_run());
            ours.push(comfix_run());
        }
        // Round 0's home and venv are started below; the others only take the disk.
        if i > 0 {
            for dir in [&store, &home, &venv, &cache] {
                common::remove_tree(dir);
            }
        }
    }
    let (ours_m, theirs_m) = (median(ours.clone()), median(theirs.clone()));
    let best = |xs: &[Duration]| xs.iter().min().copied().unwrap_or_default();
    println!(
        "first realize (venv with bytecode + core): comfix {:.1?} vs uv venv + pip install --compile-bytecode {:.1?}: {:.2}x median, {:.2}x best  (runs: {ours:.1?} vs {theirs:.1?})",
        ours_m,
        theirs_m,
        ours_m.as_secs_f64() / theirs_m.as_secs_f64(),
        best(&ours).as_secs_f64() / best(&theirs).as_secs_f64()
    );

    // The venv build alone, from wheels on disk on both sides: comfix's store already holds the
    // wheels (an untimed `resolve` put them there), so `realize` builds the venv with bytecode,
    // registers it, and assembles the home; against the same uv runs as above.
    let mut built = Vec::new();
    for i in 0..rounds {
        let store = work.join(format!("store-w{i}"));
        let out = comfix(&store, &["resolve", "real", "--wheels-dir", wheels_arg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let home = work.join(format!("home-w{i}"));
        built.push(timed(&mut comfix(
            &store,
            &[
                "realize",
                "real",
                "--frozen",
                "--target",
                home.to_str().unwrap(),
            ],
        )));
        common::remove_tree(&store);
        common::remove_tree(&home);
    }
    let built_m = median(built.clone());
    println!(
        "venv build from wheels on disk (+ core, home): comfix {:.1?} vs uv venv + pip install --compile-bytecode {:.1?}: {:.2}x  (runs: {built:.1?} vs {theirs:.1?})",
        built_m,
        theirs_m,
        built_m.as_secs_f64() / theirs_m.as_secs_f64()
    );

    // Warm starts, interleaved.
    let home_core = work.join("home-0/ComfyUI");
    let home_python = work.join("home-0/.venv/bin/python");
    let uv_python = work.join("uv-venv-0/bin/python");
    let start = |python: &Path, core: &Path| {
        let mut cmd = Command::new(python);
        clean(&mut cmd)
            .current_dir(core)
            .args(["main.py", "--cpu", "--quick-test-for-ci"]);
        cmd
    };
    timed(&mut start(&home_python, &home_core));
    timed(&mut start(&uv_python, &core));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(timed(&mut start(&home_python, &home_core)));
        theirs.push(timed(&mut start(&uv_python, &core)));
    }
    let (ours_m, theirs_m) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "warm start (main.py --cpu --quick-test-for-ci): comfix home {:.2?} vs uv venv with bytecode {:.2?}: {:.2}x  (runs: {ours:.2?} vs {theirs:.2?})",
        ours_m,
        theirs_m,
        ours_m.as_secs_f64() / theirs_m.as_secs_f64()
    );
    let out = comfix(
        &work.join("store-0"),
        &["store", "verify", "--check-contents"],
    )
    .output()
    .unwrap();
    println!(
        "store verify --check-contents after the starts: {}",
        if out.status.success() {
            "clean".to_string()
        } else {
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    );
}
