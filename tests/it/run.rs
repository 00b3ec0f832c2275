//! `comfix run`, `test`, `check-workflow` against a stand-in ComfyUI (`tests/standin/main.py`,
//! speaking ComfyUI's HTTP and websocket protocol) realized as a version's core.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

#[test]
fn a_version_s_workflow_passes_with_outputs_as_base64_files_and_junit() {
    let rig = Rig::new();
    let out = ok(rig.test(&["--output", "base64"]));
    let docs = lines(&out);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["workflow"], "workflows/ok.json");
    assert_eq!(docs[0]["status"], "passed");
    let outputs = docs[0]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0]["node"], "4");
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(outputs[0]["base64"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // The very file ComfyUI wrote in the home's output folder.
    let name = outputs[0]["filename"].as_str().unwrap();
    assert_eq!(
        fs::read(rig.home.join("data/output").join(name)).unwrap(),
        png
    );

    // The same workflow saved by the editor (UI format) converts, and outputs go to a directory.
    let ui = json!({
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "widgets_values": ["tiny.safetensors"], "inputs": []},
            {"id": 2, "type": "ModelNoise", "mode": 0, "widgets_values": [7, "fixed"], "inputs": [{"name": "model", "link": 1}]},
            {"id": 3, "type": "InvertImage", "mode": 0, "inputs": [{"name": "images", "link": 2}]},
            {"id": 4, "type": "SaveImage", "mode": 0, "widgets_values": ["ui"], "inputs": [{"name": "images", "link": 3}]},
            {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["a note"]}
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"]]
    });
    let ui_file = rig.write("ui.json", &ui);
    let dir = rig.env.path("outputs");
    let junit = rig.env.path("report.xml");
    ok(rig.test(&[
        "--workflow",
        ui_file.to_str().unwrap(),
        "--output",
        dir.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]));
    let written: Vec<PathBuf> = fs::read_dir(dir.join("ui"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    // Same model, same seed: the same picture as the API-format run.
    assert_eq!(fs::read(&written[0]).unwrap(), png);
    let xml = fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"1\" failures=\"0\" errors=\"0\""),
        "{xml}"
    );
}

/// A server that registers a websocket client late, or never delivers a prompt's events, must
/// not leave `comfix test` waiting for its deadline (CI once hung 10 minutes on the first).
#[test]
fn lost_websocket_events_do_not_hang_a_run() {
    let rig = Rig::new();
    for mode in ["late", "mute"] {
        let started = Instant::now();
        let out = rig
            .cmd()
            .env("STANDIN_WS", mode)
            .args(["test", "--timeout", "60s", "--json", "--target"])
            .arg(&rig.home)
            .output()
            .unwrap();
        rig.assert_no_comfyui_left();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let report: Value = json_of(&out);
        assert_eq!(
            report["workflows"][0]["status"], "passed",
            "{mode}: {report}"
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "{mode}: took {took:?}");
    }
}

#[test]
fn missing_nodes_and_models_are_named_before_anything_is_submitted() {
    let rig = Rig::new();
    let mut workflow = workflow_ok();
    workflow["1"]["inputs"]["ckpt_name"] = json!("absent.safetensors");
    workflow["5"] = json!({"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "x.gguf"}});
    let file = rig.write("needs.json", &workflow);
    let out = rig.test(&["--json", "--workflow", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = json_of(&out);
    let w = &report["workflows"][0];
    assert_eq!(w["status"], "missing");
    assert_eq!(w["missing"]["nodes"][0]["class_type"], "UnetLoaderGGUF");
    assert_eq!(w["missing"]["models"][0]["file"], "absent.safetensors");
    assert_eq!(w["missing"]["models"][0]["input"], "ckpt_name");
    assert!(
        w["missing"]["models"][0]["hint"]
            .as_str()
            .unwrap()
            .contains("add it to the spec"),
        "{w}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("UnetLoaderGGUF") && err.contains("absent.safetensors"),
        "{err}"
    );
    assert!(
        rig.logs().contains("Starting server"),
        "ComfyUI was started"
    );
    assert!(
        !rig.logs().contains("got prompt"),
        "the workflow was submitted:\n{}",
        rig.logs()
    );
}

#[test]
fn a_node_error_is_reported_verbatim_and_fails_the_run() {
    let rig = Rig::new();
    let file = rig.write(
        "fail.json",
        &empty_then("RaiseError", json!({"message": "the sampler exploded"})),
    );
    let ok = rig.env.work.join("versions/workflows/ok.json");
    let junit = rig.env.path("junit.xml");
    let out = rig.test(&[
        "--json",
        "--workflow",
        file.to_str().unwrap(),
        "--workflow",
        ok.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = json_of(&out);
    let failed = &report["workflows"][0];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["errors"][0]["node"], "2");
    assert_eq!(failed["errors"][0]["class_type"], "RaiseError");
    assert_eq!(
        failed["errors"][0]["message"],
        "RuntimeError: the sampler exploded"
    );
    // One failure does not stop the others.
    assert_eq!(report["workflows"][1]["status"], "passed");
    let xml = fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"1\"") && xml.contains("the sampler exploded"),
        "{xml}"
    );

    // Rejected at validation (a value not in the list): ComfyUI's node errors, verbatim.
    let mut bad = empty_then("RaiseError", json!({}));
    bad["1"]["inputs"].as_object_mut().unwrap().remove("width");
    let file = rig.write("invalid.json", &bad);
    let out = rig.test(&["--json", "--workflow", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = json_of(&out);
    let w = &report["workflows"][0];
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(w["errors"][0]["message"], "Required input is missing");
    assert_eq!(w["errors"][0]["details"], "width");
}

#[test]
fn broken_workflows_are_refused_without_starting_or_submitting() {
    let rig = Rig::new();
    let not_json = rig.env.work.join("broken.json");
    fs::write(&not_json, "{\"1\": ").unwrap();
    let out = rig.test(&["--workflow", not_json.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "is not JSON");
    assert!(
        rig.logs().is_empty(),
        "ComfyUI started for a file that is not JSON"
    );
    // Not a file at all: refused at once, never read into memory without end.
    for device in ["/dev/zero", "/dev/urandom"] {
        let out = rig.test(&["--workflow", device]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        says(&out, "not a regular file");
    }
    fails_with(&rig.check_workflow(&["/dev/zero"]), "not a regular file");

    let mut cycle = empty_then("InvertImage", json!({}));
    cycle["1"] = json!({"class_type": "InvertImage", "inputs": {"images": ["2", 0]}});
    let file = rig.write("cycle.json", &cycle);
    let mut dangling = workflow_ok();
    dangling["4"]["inputs"]["images"] = json!(["9", 0]);
    let dangling = rig.write("dangling.json", &dangling);
    let out = rig.test(&[
        "--workflow",
        file.to_str().unwrap(),
        "--workflow",
        dangling.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("has a cycle: "), "{err}");
    assert!(
        err.contains("node 4 input `images` links to node 9"),
        "{err}"
    );
    assert!(!rig.logs().contains("got prompt"));
}

#[test]
fn a_core_that_crashes_at_startup_exits_2_with_its_log() {
    let rig = Rig::with_core(b"import sys\nprint('Traceback: ModuleNotFoundError: No module named torch', flush=True)\nsys.exit(3)\n");
    let out = rig.test(&[
        "--workflow",
        rig.env
            .work
            .join("versions/workflows/ok.json")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ComfyUI did not start: it exited (exit code 3)"),
        "{err}"
    );
    assert!(err.contains("No module named torch"), "{err}");
}

#[test]
fn a_workflow_that_never_finishes_times_out_and_comfyui_is_stopped() {
    let rig = Rig::new();
    let file = rig.write("slow.json", &empty_then("Sleep", json!({"seconds": 60.0})));
    let started = Instant::now();
    let out = rig.test(&[
        "--json",
        "--timeout",
        "1s",
        "--workflow",
        file.to_str().unwrap(),
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = json_of(&out);
    assert_eq!(report["workflows"][0]["status"], "timed_out");
}

#[test]
fn ctrl_c_stops_comfyui_and_exits_130() {
    let rig = Rig::new();
    for _ in 0..3 {
        let mut child = rig.spawn_slow_test();
        assert!(!rig.comfyui_processes().is_empty());
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130));
        rig.assert_no_comfyui_left();
        for e in fs::read_dir(&rig.tmp).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
    }
}

#[test]
fn comfix_killed_by_sigkill_leaves_no_comfyui_behind() {
    let rig = Rig::new();
    let mut child = rig.spawn_slow_test();
    child.kill().unwrap();
    child.wait().unwrap();
    rig.assert_no_comfyui_left();
}

#[test]
fn check_workflow_names_what_is_missing_from_the_kept_object_info() {
    let rig = Rig::new();
    let mut workflow = workflow_ok();
    workflow["1"]["inputs"]["ckpt_name"] = json!("absent.safetensors");
    let file = rig.write("needs.json", &workflow);
    let ok = rig.env.work.join("versions/workflows/ok.json");
    // First: a short start to learn the nodes.
    let out = rig
        .cmd()
        .args(["--json", "check-workflow", "--target"])
        .arg(&rig.home)
        .arg(&file)
        .arg(&ok)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let reports: Value = json_of(&out);
    assert_eq!(reports[0]["status"], "missing");
    assert_eq!(reports[1]["status"], "passed");
    assert!(rig.logs().contains("Starting server"));
    rig.assert_no_comfyui_left();
    for e in fs::read_dir(&rig.tmp).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }
    // Again: from the generation's kept /object_info, nothing started.
    let out = rig
        .cmd()
        .args(["check-workflow", "--target"])
        .arg(&rig.home)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    says(&out, "absent.safetensors");
    assert!(rig.logs().is_empty(), "started ComfyUI again");
    let out = rig.check_workflow(&["nowhere.json"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "nowhere.json: cannot be read");
    // A model put into the home's model folders since is found.
    fs::write(
        rig.home.join("models/checkpoints/absent.safetensors"),
        b"now here",
    )
    .unwrap();
    rig.cmd()
        .args(["check-workflow", "--target"])
        .arg(&rig.home)
        .arg(&file)
        .ok();
}

/// The imported-closure story on a machine with no network and no uv: a version with a Python
/// section and workflows is exported, imported (its workflow files written beside its spec),
/// realized `--offline` (with the uv the closure carries) and tested `--offline` — and running
/// ComfyUI from the store's venv (as root, without `PYTHONDONTWRITEBYTECODE`) leaves the store
/// as it verifies.
#[test]
fn an_imported_version_with_python_and_workflows_is_tested_offline_without_uv() {
    let rig = Rig::build(STANDIN, true);
    let archive = rig.env.path("v1.tar.zst");
    rig.cmd().args(["export", "v1", "-o"]).arg(&archive).ok();

    let store_b = rig.env.path("store-b");
    let work_b = rig.env.path("work-b");
    fs::create_dir_all(&work_b).unwrap();
    let bare = path_with_python_only(&rig.env.path("bin-without-uv"));
    let comfix_b = |args: &[&str]| -> Output {
        let mut cmd = rig.env.cmd_without_store();
        cmd.arg("--store")
            .arg(&store_b)
            .args(args)
            .current_dir(&work_b)
            .env("PATH", &bare)
            .env("TMPDIR", &rig.tmp);
        without_network(&cmd).output().unwrap()
    };
    ok(comfix_b(&[
        "import",
        "--no-check-sigs",
        archive.to_str().unwrap(),
    ]));
    assert_eq!(
        fs::read(work_b.join("versions/workflows/ok.json")).unwrap(),
        fs::read(rig.env.work.join("versions/workflows/ok.json")).unwrap(),
        "the workflow is written beside the imported spec"
    );
    let home_b = rig.env.path("home-b");
    ok(comfix_b(&[
        "realize",
        "v1",
        "--offline",
        "--target",
        home_b.to_str().unwrap(),
    ]));
    assert!(fs::canonicalize(home_b.join(".venv"))
        .unwrap()
        .starts_with(&store_b));
    let out = ok(comfix_b(&[
        "test",
        "v1",
        "--offline",
        "--target",
        home_b.to_str().unwrap(),
    ]));
    says(&out, "ok      workflows/ok.json");
    ok(comfix_b(&["store", "verify", "--check-contents"]));

    // An archive whose workflow collides with a file beside the target spec: the file is kept,
    // the import says so, and nothing in the store changes.
    let work_c = rig.env.path("work-c");
    fs::create_dir_all(work_c.join("versions/workflows")).unwrap();
    fs::write(work_c.join("versions/workflows/ok.json"), b"{\"mine\": 1}").unwrap();
    let paths_before = fs::read_dir(store_b.join("paths")).unwrap().count();
    let mut cmd = rig.env.cmd_without_store();
    cmd.arg("--store")
        .arg(&store_b)
        .args(["import", "--no-check-sigs"])
        .arg(&archive)
        .current_dir(&work_c)
        .env("PATH", &bare);
    let out = cmd.ok();
    says(&out, "which differs from the workflow");
    assert_eq!(
        fs::read(work_c.join("versions/workflows/ok.json")).unwrap(),
        b"{\"mine\": 1}"
    );
    assert_eq!(
        fs::read_dir(store_b.join("paths")).unwrap().count(),
        paths_before
    );
}

/// Whether this machine has a GPU driver comfix detects (it then adds no `--cpu`).
fn has_gpu_driver() -> bool {
    Path::new("/proc/driver/nvidia/version").exists()
        || Path::new("/opt/rocm/.info/version").exists()
}

/// `check-workflow` passes ComfyUI's arguments after `--`, adds `--cpu` on a machine without a
/// GPU driver unless told not to, and a server that never answers is reported with its URL and
/// the cause within `--start-timeout`.
#[test]
fn check_workflow_takes_comfyui_args_and_adds_cpu_without_a_gpu() {
    let rig = Rig::new();
    let ok = rig.env.work.join("versions/workflows/ok.json");
    let outputs = rig.env.path("outputs");
    let out = rig
        .cmd()
        .args(["check-workflow", "--fresh", "--target"])
        .arg(&rig.home)
        .arg(&ok)
        .arg("--")
        .arg("--output-directory")
        .arg(&outputs)
        .ok();
    let logs = rig.logs();
    let argv = logs
        .lines()
        .find_map(|l| l.strip_prefix("argv: "))
        .unwrap_or_else(|| panic!("no argv in the log:\n{logs}"));
    assert!(
        argv.contains(&format!("--output-directory {}", outputs.display())),
        "{argv}"
    );
    assert_eq!(
        argv.split(' ').any(|a| a == "--cpu"),
        !has_gpu_driver(),
        "{argv}"
    );
    if !has_gpu_driver() {
        says(&out, "no GPU driver on this machine");
    }
    for e in fs::read_dir(&rig.tmp).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }
    rig.cmd()
        .args(["check-workflow", "--fresh", "--no-auto-cpu", "--target"])
        .arg(&rig.home)
        .arg(&ok)
        .ok();
    let logs = rig.logs();
    assert!(logs.contains("argv: --listen"), "{logs}");
    assert!(!logs.contains("--cpu"), "{logs}");
    rig.assert_no_comfyui_left();
}

/// A ComfyUI that runs but is never reached (here: it listens elsewhere than comfix asks) is
/// reported within `--start-timeout`, with the URL and the cause, and stopped.
#[test]
fn a_server_that_cannot_be_reached_is_named_with_its_cause() {
    let rig = Rig::new();
    let port = comfix::run::server::free_port().unwrap();
    let other = comfix::run::server::free_port().unwrap();
    let start = std::time::Instant::now();
    let out = rig
        .cmd()
        .args(["run", "--start-timeout", "3s", "--target"])
        .arg(&rig.home)
        .args([
            "--port",
            &port.to_string(),
            "--",
            "--port",
            &other.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(start.elapsed() < std::time::Duration::from_secs(60));
    let err = stderr(&out);
    assert!(err.contains(&format!("http://127.0.0.1:{port}")), "{err}");
    assert!(err.contains("within 3s"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    rig.assert_no_comfyui_left();
}

/// One HTTP GET on loopback: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn run_serves_until_signalled_and_passes_on_comfyui_s_exit_code() {
    let rig = Rig::new();
    for (signal, code) in [(libc::SIGINT, 0), (libc::SIGTERM, 128 + libc::SIGTERM)] {
        let port = comfix::run::server::free_port().unwrap();
        let mut child = rig
            .cmd()
            .args(["run", "--target"])
            .arg(&rig.home)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), format!("http://127.0.0.1:{port}"));
        let (status, body) = http_get(port, "/object_info");
        assert!(status.contains("200"), "{status}");
        assert!(
            body.contains("InvertImage"),
            "the home's custom node is loaded"
        );
        // On a machine without a GPU driver ComfyUI is started with `--cpu`.
        let (_, stats) = http_get(port, "/system_stats");
        let stats: Value = serde_json::from_str(&stats).unwrap();
        let argv: Vec<&str> = stats["system"]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(argv.contains(&"--cpu"), !has_gpu_driver(), "{argv:?}");
        unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(child.wait().unwrap().code(), Some(code));
        rig.assert_no_comfyui_left();
    }
    // A port already taken: said before ComfyUI starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = rig
        .cmd()
        .args(["run", "--target"])
        .arg(&rig.home)
        .args(["--port", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("port {port} on 127.0.0.1 is in use")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn test_of_a_version_id_realizes_it_first() {
    let rig = Rig::new();
    let fresh = rig.env.path("fresh-home");
    let out = rig
        .cmd()
        .args(["test", "v1", "--target"])
        .arg(&fresh)
        .args(["--output", "base64"])
        .ok();
    assert_eq!(lines(&out)[0]["status"], "passed");
    assert!(fresh.join(".comfix/current").exists());
}

/// The real ComfyUI of `../shared/fixtures` under `comfix run`. Opt-in: its requirements (torch
/// and more, about 3 GB from PyPI) must be importable by `COMFIX_REAL_COMFYUI_PYTHON`'s
/// interpreter (of a venv: `<venv>/bin/python`), which the test links in as the home's venv.
#[test]
fn the_real_comfyui_starts_under_comfix_run() {
    let Ok(python) = std::env::var("COMFIX_REAL_COMFYUI_PYTHON") else {
        eprintln!(
            "skipped: set COMFIX_REAL_COMFYUI_PYTHON to a python with ComfyUI's requirements"
        );
        return;
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/comfyui-a125cd84.tar.gz");
    let env = TestEnv::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    assert!(Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let core = src.join("ComfyUI");
    for args in [
        &["init", "-q", "-b", "master"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "core",
        ],
    ] {
        assert!(Command::new("git")
            .arg("-C")
            .arg(&core)
            .args(args)
            .status()
            .unwrap()
            .success());
    }
    let spec = json!({"schema_version": 2, "version_id": "real", "comfy": {"repo": format!("file://{}", core.display()), "ref": "master"}});
    fs::create_dir_all(env.work.join("versions")).unwrap();
    fs::write(env.work.join("versions/real.json"), spec.to_string()).unwrap();
    let home = env.path("home");
    env.cmd()
        .args(["realize", "real", "--target"])
        .arg(&home)
        .ok();
    // That venv stands in for the home's (a venv is found by its `pyvenv.cfg`, so link the
    // directory, not the interpreter).
    let venv = Path::new(&python)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let _ = fs::remove_file(home.join(".venv")); // the home's own link, dangling without a venv
    std::os::unix::fs::symlink(&venv, home.join(".venv")).unwrap();
    let port = comfix::run::server::free_port().unwrap();
    let mut child = env
        .cmd()
        .args(["run", "--target"])
        .arg(&home)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), format!("http://127.0.0.1:{port}"));
    let (status, body) = http_get(port, "/object_info");
    assert!(
        status.contains("200") && body.contains("SaveImage"),
        "{status}"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let code = child.wait().unwrap().code();
    eprintln!("real ComfyUI exited with {code:?}");
    // check-workflow and test on a machine without a GPU, with no ComfyUI argument: comfix adds
    // `--cpu` itself. A workflow that runs on the CPU without any model file.
    let workflow = env.path("empty-image.json");
    fs::write(
        &workflow,
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "comfix"}}
        })
        .to_string(),
    )
    .unwrap();
    env.cmd()
        .args(["check-workflow", "--fresh", "--target"])
        .arg(&home)
        .arg(&workflow)
        .ok();
    let out = env
        .cmd()
        .args(["test", "--target"])
        .arg(&home)
        .arg("--workflow")
        .arg(&workflow)
        .ok();
    says(&out, "ok ");
}

#[test]
fn jobs_run_workflows_on_servers_side_by_side() {
    let rig = Rig::new();
    let ok = rig.env.work.join("versions/workflows/ok.json");
    let other = rig.write("other.json", &empty_then("InvertImage", json!({})));
    let failing = rig.write(
        "fail.json",
        &empty_then("RaiseError", json!({"message": "third"})),
    );
    let out = rig.test(&[
        "--json",
        "--jobs",
        "2",
        "--workflow",
        ok.to_str().unwrap(),
        "--workflow",
        other.to_str().unwrap(),
        "--workflow",
        failing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = json_of(&out);
    let statuses: Vec<&str> = report["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["status"].as_str().unwrap())
        .collect();
    // Reported in the order given, whichever server ran them.
    assert_eq!(statuses, ["passed", "passed", "failed"]);
    let logs = fs::read_dir(&rig.tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("comfyui-"))
        .count();
    assert_eq!(logs, 2, "two servers");
}

/// Started from a script's `comfix run &` (SIGINT ignored, as a non-interactive shell's
/// background jobs have it, and `exec` keeps), comfix still stops ComfyUI on SIGINT: ComfyUI
/// starts with the default dispositions. (CI once hung here, ComfyUI ignoring what comfix
/// forwarded.)
#[test]
fn run_started_ignoring_sigint_still_stops_comfyui_on_it() {
    use std::os::unix::process::CommandExt;
    let rig = Rig::new();
    let port = comfix::run::server::free_port().unwrap();
    let mut cmd = rig.cmd();
    cmd.args(["run", "--target"])
        .arg(&rig.home)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: signal(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), format!("http://127.0.0.1:{port}"));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("comfix run did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    rig.assert_no_comfyui_left();
}
