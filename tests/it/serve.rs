//! `comfix serve`: a version's ComfyUI (the stand-in) kept warm, running jobs from a stand-in of
//! RunPod's job API (written from RunPod's SDK) and from the local endpoint, with input and output
//! as worker-comfyui's.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::runpod::JobApi;
use crate::support::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// LoadImage → Sleep (progress) → SaveImage.
fn image_workflow(input: &str) -> Value {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": input}},
        "2": {"class_type": "Sleep", "inputs": {"images": ["1", 0], "seconds": 0.3}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "job"}}
    })
}

fn png_of(output: &Value) -> Vec<u8> {
    let images = output["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{output}");
    assert_eq!(images[0]["type"], "base64");
    let png = base64::engine::general_purpose::STANDARD
        .decode(images[0]["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    png
}

/// Jobs from RunPod's job API: base64 images in and out (with progress on the way), a missing
/// node failed before anything is submitted, input that is not JSON, an input image over the
/// limit, ComfyUI dying mid-job (the job fails with the log's tail, ComfyUI comes back), and a
/// job after it that passes. Every request carries the API key; the worker pings.
#[test]
fn runpod_jobs_run_on_a_warm_comfyui_and_fail_with_reasons() {
    let rig = Rig::new();
    let picture = b"\x89PNG\r\n\x1a\nnot really a picture".to_vec();
    let other = b"\x89PNG\r\n\x1a\nanother picture".to_vec();
    let crash = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1, "color": 1}},
        "2": {"class_type": "Crash", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
    });
    let missing = json!({
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    });
    let jobs = vec![
        json!({"id": "j1", "input": {"workflow": image_workflow("in.png"), "images": [{"name": "in.png", "image": format!("data:image/png;base64,{}", b64(&picture))}]}}),
        json!({"id": "j2", "input": {"workflow": missing}}),
        json!({"id": "j3", "input": {"workflow": "{not json"}}),
        json!({"id": "j4", "input": {"workflow": image_workflow("big.png"), "images": [{"name": "big.png", "image": b64(&vec![0u8; 64 << 10])}]}}),
        json!({"id": "j5", "input": {"workflow": crash}}),
        json!({"id": "j6", "input": {"workflow": image_workflow("two.png"), "images": [{"name": "two.png", "image": b64(&other)}]}}),
    ];
    let api = JobApi::start(jobs);
    let mut cmd = rig.cmd();
    cmd.args([
        "serve",
        "--runpod",
        "--max-jobs",
        "6",
        "--max-image-size",
        "32K",
        "--target",
    ])
    .arg(&rig.home);
    api.env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    rig.assert_no_comfyui_left();

    let first = api.result("j1").expect("j1's result");
    let png = png_of(&first["output"]);
    assert_eq!(
        fs::read(rig.home.join("data/input/in.png")).unwrap(),
        picture
    );
    assert!(
        !api.progress("j1").is_empty(),
        "the Sleep node's progress was sent"
    );

    let error = |job: &str| {
        api.result(job).unwrap()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(error("j2").contains("NoSuchNode"), "{}", error("j2"));
    assert!(error("j3").contains("not JSON"), "{}", error("j3"));
    assert!(error("j4").contains("larger than"), "{}", error("j4"));
    let died = error("j5");
    assert!(
        died.contains("ComfyUI died") && died.contains("Crash: the process dies now"),
        "{died}"
    );
    assert!(
        api.result("j5").unwrap().get("stopPod").is_none(),
        "ComfyUI came back: no new worker"
    );

    // After the crash, the restarted ComfyUI runs the next job; other bytes, another picture.
    let last = api.result("j6").expect("j6's result");
    assert_ne!(png_of(&last["output"]), png);

    let seen = api.seen();
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some("rp-key")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.path.starts_with("/ping/worker-1?")),
        "pinged"
    );
    assert!(
        seen.iter().any(|s| s.path.contains("job_in_progress=0")),
        "asks for jobs as the SDK does"
    );
}

/// Output images go to the bucket `BUCKET_ENDPOINT_URL` names (moto), returned as presigned URLs
/// that serve the very bytes ComfyUI wrote.
#[test]
fn outputs_go_to_the_bucket_when_one_is_set() {
    let rig = Rig::new();
    let moto = crate::support::s3::Moto::start();
    moto.create_bucket("outputs");
    let jobs = vec![json!({"id": "s1", "input": {"workflow": crate::support::rig::workflow_ok()}})];
    let api = JobApi::start(jobs);
    let mut cmd = rig.cmd();
    cmd.args(["serve", "--runpod", "--max-jobs", "1", "--target"])
        .arg(&rig.home)
        .env(
            "BUCKET_ENDPOINT_URL",
            format!("{}/outputs", moto.endpoint()),
        )
        .env("BUCKET_ACCESS_KEY_ID", "testing")
        .env("BUCKET_SECRET_ACCESS_KEY", "testing");
    api.env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let result = api.result("s1").unwrap();
    let images = result["output"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{result}");
    assert_eq!(images[0]["type"], "s3_url");
    let url = images[0]["data"].as_str().unwrap();
    let name = images[0]["filename"].as_str().unwrap();
    assert!(url.contains(&format!("/outputs/s1/{name}")), "{url}");
    let got = std::process::Command::new("curl")
        .args(["-sf", url])
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(
        got.stdout,
        fs::read(rig.home.join("data/output").join(name)).unwrap()
    );
}

/// Without --runpod, the same worker answers RunPod's local test API: `POST /runsync`.
#[test]
fn the_local_endpoint_runs_jobs_as_runpod_s_local_api() {
    let rig = Rig::new();
    let mut child = rig
        .cmd()
        .args(["serve", "--port", "0", "--target"])
        .arg(&rig.home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let at = line
        .trim()
        .strip_prefix("http://")
        .expect("the endpoint's URL")
        .to_string();
    let post = |body: &Value| -> Value {
        let mut stream = std::net::TcpStream::connect(&at).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let text = body.to_string();
        write!(
            stream,
            "POST /runsync HTTP/1.1\r\nHost: {at}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let body = reply.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap()
    };
    let started = Instant::now();
    let ok = post(&json!({"input": {"workflow": crate::support::rig::workflow_ok()}}));
    assert_eq!(ok["status"], "COMPLETED", "{ok}");
    png_of(&ok["output"]);
    let failed = post(&json!({"input": {}}));
    assert_eq!(failed["status"], "FAILED");
    assert!(
        failed["error"].as_str().unwrap().contains("no `workflow`"),
        "{failed}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    rig.assert_no_comfyui_left();
}

/// A job API that cannot be reached yet is asked again (said on stderr) until it answers; a
/// ComfyUI that does not start again after dying fails its job asking RunPod for a new worker
/// (`stopPod`), and the worker stops taking jobs.
#[test]
fn an_unreachable_job_api_is_waited_for_and_a_broken_worker_asks_to_be_replaced() {
    let rig = Rig::new();
    let port = comfix::run::server::free_port().unwrap();
    // The API's address, with nothing listening there yet.
    let env_of = JobApi::start(Vec::new());
    let mut cmd = rig.cmd();
    cmd.args(["serve", "--runpod", "--max-jobs", "1", "--target"])
        .arg(&rig.home);
    env_of.env(&mut cmd);
    let api_url = format!("http://127.0.0.1:{port}");
    cmd.env(
        "RUNPOD_WEBHOOK_GET_JOB",
        format!("{api_url}/job-take/$ID?gpu=none"),
    )
    .env(
        "RUNPOD_WEBHOOK_POST_OUTPUT",
        format!("{api_url}/job-done/$RUNPOD_POD_ID/$ID?isStream=false"),
    )
    .env(
        "RUNPOD_WEBHOOK_PING",
        format!("{api_url}/ping/$RUNPOD_POD_ID"),
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        err.read_to_string(&mut text).unwrap();
        text
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker waits for the job API"
    );
    let api = JobApi::start_on(
        port,
        vec![json!({"id": "late", "input": {"workflow": crate::support::rig::workflow_ok()}})],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not finish its job"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr_text = reader.join().unwrap();
    assert!(status.success(), "{stderr_text}");
    assert!(
        stderr_text.contains("the job API is unreachable"),
        "{stderr_text}"
    );
    png_of(&api.result("late").unwrap()["output"]);

    // A crash that leaves ComfyUI unable to start again.
    let fatal = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1, "color": 1}},
        "2": {"class_type": "Crash", "inputs": {"images": ["1", 0], "fatal": true}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
    });
    let api = JobApi::start(vec![
        json!({"id": "fatal", "input": {"workflow": fatal}}),
        json!({"id": "after", "input": {"workflow": crate::support::rig::workflow_ok()}}),
    ]);
    let mut cmd = rig.cmd();
    cmd.args(["serve", "--runpod", "--max-jobs", "2", "--target"])
        .arg(&rig.home);
    api.env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "a worker that cannot recover stops");
    let result = api.result("fatal").unwrap();
    assert_eq!(result["stopPod"], true, "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("ComfyUI died"),
        "{result}"
    );
    assert!(
        api.result("after").is_none(),
        "no job taken after asking to be replaced"
    );
    assert!(
        stderr(&out).contains("asked to be replaced"),
        "{}",
        stderr(&out)
    );
    let _ = fs::remove_file(rig.home.join("data/output/.broken"));
    rig.assert_no_comfyui_left();
}
