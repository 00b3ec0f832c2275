//! `comfix test` of a trivial workflow (an empty image saved) on the stand-in ComfyUI
//! (`tests/standin/main.py`) realized as a home's core, next to doing the same by hand in the
//! same run: start the server with `python3 main.py`, poll `/system_stats` with curl until it
//! answers, `curl -X POST /prompt`, poll `/history/<id>` with curl until it is there, stop it.
//! The figure is comfix's overhead: median(comfix) − median(by hand), over `COMFIX_BENCH_RUNS`
//! (default 10) runs each.
//!
//! Run: `cargo bench --bench workflow` (needs `git`, `python3` and `curl`).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COMFIX: &str = env!("CARGO_BIN_EXE_comfix");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn by_hand(core: &Path, workflow: &str) -> Duration {
    let started = Instant::now();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new("python3")
        .args([
            "main.py",
            "--listen",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .current_dir(core)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let curl = |args: &[&str]| Command::new("curl").arg("-sf").args(args).output().unwrap();
    while !curl(&[&format!("{base}/system_stats")]).status.success() {}
    let body = format!("{{\"prompt\": {workflow}}}");
    let answer = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!("{base}/prompt"),
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    let id = answer["prompt_id"].as_str().unwrap().to_string();
    loop {
        let history = curl(&[&format!("{base}/history/{id}")]);
        if String::from_utf8_lossy(&history.stdout).contains("\"status\"") {
            break;
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    started.elapsed()
}

fn main() {
    let runs = common::env_usize("COMFIX_BENCH_RUNS", 10);
    let dir = common::work_dir();
    let root = dir.path();
    let repo = root.join("core");
    fs::create_dir_all(&repo).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin/main.py"),
        repo.join("main.py"),
    )
    .unwrap();
    run(Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["init", "-q", "-b", "main"]));
    run(Command::new("git").arg("-C").arg(&repo).args(["add", "-A"]));
    run(Command::new("git").arg("-C").arg(&repo).args([
        "-c",
        "user.name=b",
        "-c",
        "user.email=b@b",
        "commit",
        "-qm",
        "standin",
    ]));
    let work = root.join("work");
    fs::create_dir_all(work.join("versions")).unwrap();
    let spec = serde_json::json!({"schema_version": 2, "version_id": "bench", "comfy": {"repo": format!("file://{}", repo.display()), "ref": "main"}});
    fs::write(work.join("versions/bench.json"), spec.to_string()).unwrap();
    let workflow = serde_json::json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}
    })
    .to_string();
    let file = work.join("trivial.json");
    fs::write(&file, &workflow).unwrap();
    let store = root.join("store");
    let home = root.join("home");
    let comfix = || {
        let mut cmd = Command::new(COMFIX);
        cmd.current_dir(&work)
            .arg("--store")
            .arg(&store)
            .arg("-q")
            .env("TMPDIR", root);
        cmd
    };
    run(comfix().args(["realize", "bench", "--target"]).arg(&home));
    let core = home.join("ComfyUI");

    let mut ours = Vec::new();
    let mut hand = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        run(comfix()
            .args(["test", "--target"])
            .arg(&home)
            .arg("--workflow")
            .arg(&file));
        ours.push(started.elapsed());
        hand.push(by_hand(&core, &workflow));
    }
    let (ours, hand) = (median(ours), median(hand));
    println!(
        "workflow/test: comfix test {:.3} s, by hand (python3 + curl) {:.3} s, overhead {:+.3} s (median of {runs})",
        ours.as_secs_f64(),
        hand.as_secs_f64(),
        ours.as_secs_f64() - hand.as_secs_f64()
    );
}
