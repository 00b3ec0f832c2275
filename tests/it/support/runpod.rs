//! A stand-in for RunPod's serverless job API, written from its Python SDK (`rp_job.py`,
//! `rp_http.py`, `rp_progress.py`, `rp_ping.py`): `GET /job-take/<worker>?…&job_in_progress=N`
//! hands out the queued jobs (`{"id", "input"}`, else `204`), `POST /job-done/<worker>/<job>`
//! takes progress (`{"status": "IN_PROGRESS", …}`) and results (`{"output"}`/`{"error"}`), `GET
//! /ping/<worker>` counts heartbeats. It records every request with its `Authorization`.

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Value>,
    seen: Vec<Seen>,
}

pub struct JobApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl JobApi {
    pub fn start(jobs: Vec<Value>) -> JobApi {
        JobApi::start_on(0, jobs)
    }

    /// On `port` (0: any free one).
    pub fn start_on(port: u16, jobs: Vec<Value>) -> JobApi {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            jobs: jobs.into(),
            seen: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        JobApi { port, state }
    }

    /// The environment a RunPod worker gets.
    pub fn env(&self, cmd: &mut std::process::Command) {
        let base = format!("http://127.0.0.1:{}", self.port);
        cmd.env(
            "RUNPOD_WEBHOOK_GET_JOB",
            format!("{base}/job-take/$ID?gpu=none"),
        )
        .env(
            "RUNPOD_WEBHOOK_POST_OUTPUT",
            format!("{base}/job-done/$RUNPOD_POD_ID/$ID?isStream=false"),
        )
        .env("RUNPOD_WEBHOOK_PING", format!("{base}/ping/$RUNPOD_POD_ID"))
        .env("RUNPOD_PING_INTERVAL", "100")
        .env("RUNPOD_POD_ID", "worker-1")
        .env("RUNPOD_AI_API_KEY", "rp-key")
        .env("COMFIX_RUNPOD_POLL_MS", "50");
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The final result posted for `job` (not a progress update).
    pub fn result(&self, job: &str) -> Option<Value> {
        self.seen()
            .into_iter()
            .filter(|s| {
                s.method == "POST" && s.path.starts_with(&format!("/job-done/worker-1/{job}?"))
            })
            .filter_map(|s| s.body)
            .rfind(|b| b.get("status").is_none())
    }

    pub fn progress(&self, job: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(&format!("/job-done/worker-1/{job}?")))
            .filter_map(|s| s.body)
            .filter(|b| b["status"] == "IN_PROGRESS")
            .collect()
    }
}

fn serve(stream: std::net::TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some(request) = super::http::read_request(&mut reader) {
        let (method, path, body) = (request.method.clone(), request.path.clone(), &request.body);
        let authorization = request.header("authorization").map(str::to_string);
        let body_json = serde_json::from_slice::<Value>(body).ok();
        let (status, reply) = {
            let mut state = state.lock().unwrap();
            state.seen.push(Seen {
                method: method.clone(),
                path: path.clone(),
                authorization,
                body: body_json,
            });
            if method == "GET" && path.starts_with("/job-take/worker-1?") {
                match state.jobs.pop_front() {
                    Some(job) => ("200 OK", job.to_string()),
                    None => ("204 No Content", String::new()),
                }
            } else {
                ("200 OK", "{}".to_string())
            }
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if out
            .write_all(head.as_bytes())
            .and_then(|()| out.write_all(reply.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}
