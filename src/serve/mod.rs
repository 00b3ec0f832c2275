//! A worker that runs jobs on a home's ComfyUI, kept warm: `comfix serve`. A job is what
//! worker-comfyui takes (`{"workflow", "images": [{"name", "image"}]}`) and it answers as
//! worker-comfyui does (`{"images": [{"filename", "type": "base64" | "s3_url", "data"}]}`), so
//! its clients do not change. Before submitting, the workflow is checked against the home (missing
//! nodes and models are the job's error, nothing submitted); a ComfyUI that dies is started again
//! and the job fails with its log's tail; a ComfyUI that cannot be started again asks for a new
//! worker (`refresh_worker`). The jobs come from RunPod's job API ([`runpod`]) or from a local
//! HTTP endpoint that speaks RunPod's local test API ([`http`]).

pub mod http;
pub mod runpod;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::reporter::Reporter;
use crate::run::server::Server;
use crate::run::test::{self, Status, TestOptions};
use crate::run::workflow::ObjectInfo;
use crate::run::{RunError, RunHome};

/// What a worker needs besides the home.
pub struct WorkerOptions {
    /// More arguments for ComfyUI's `main.py`.
    pub args: Vec<String>,
    pub start_timeout: Duration,
    /// How long one job may run.
    pub job_timeout: Duration,
    /// The most one input image may hold, decoded.
    pub max_image_bytes: usize,
    /// Where ComfyUI's log goes.
    pub log_dir: PathBuf,
    /// Where output images go when not returned inline (`BUCKET_ENDPOINT_URL`).
    pub bucket: Option<Bucket>,
}

/// How a job ended: the output to return, or the error and whether the worker should be
/// replaced (RunPod's `refresh_worker`).
#[derive(Debug, Clone, PartialEq)]
pub enum JobResult {
    Output(Value),
    Failed { error: String, refresh: bool },
}

impl JobResult {
    fn failed(error: impl Into<String>) -> JobResult {
        JobResult::Failed {
            error: error.into(),
            refresh: false,
        }
    }

    /// As RunPod's SDK sends it: `{"output": …}`, or `{"error": …}` (`"stopPod": true` when the
    /// worker should be replaced).
    pub fn to_runpod(&self) -> Value {
        match self {
            JobResult::Output(output) => json!({ "output": output }),
            JobResult::Failed { error, refresh } => {
                let mut out = json!({ "error": error });
                if *refresh {
                    out["stopPod"] = json!(true);
                }
                out
            }
        }
    }
}

/// A job's input, checked.
struct JobInput {
    workflow: Value,
    images: Vec<(String, Vec<u8>)>,
}

/// Read a job's input as worker-comfyui does: a JSON object (or a string holding one) with a
/// `workflow` object and optional `images`, each `{"name", "image"}` (base64, with or without a
/// `data:…;base64,` prefix).
fn job_input(input: &Value, max_image_bytes: usize) -> Result<JobInput, String> {
    let parsed;
    let input = match input {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("the job's input is not JSON: {e}"))?;
            &parsed
        }
        other => other,
    };
    let workflow = match input.get("workflow") {
        None | Some(Value::Null) => return Err("the job's input has no `workflow`".into()),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .map_err(|e| format!("the job's `workflow` is not JSON: {e}"))?,
        Some(other) => other.clone(),
    };
    if !workflow.is_object() {
        return Err(
            "the job's `workflow` is not a JSON object (a workflow in ComfyUI's API format)".into(),
        );
    }
    let mut images = Vec::new();
    match input.get("images") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, item) in list.iter().enumerate() {
                let (Some(name), Some(data)) = (item["name"].as_str(), item["image"].as_str())
                else {
                    return Err(format!(
                        "`images[{i}]` must be an object with `name` and `image` (base64)"
                    ));
                };
                let name = crate::fetch::http::safe_file_name(name)
                    .filter(|n| n == name)
                    .ok_or_else(|| format!("`images[{i}]`: `{name}` is not a plain file name"))?;
                let encoded = data.split_once(";base64,").map_or(data, |(_, b)| b);
                // A cheap bound before decoding: 4 base64 characters are 3 bytes.
                if encoded.len() / 4 * 3 > max_image_bytes + 3 {
                    return Err(format!(
                        "image `{name}` is larger than {} (the most one input image may be; \
                         send large inputs by URL or put them on the network volume)",
                        crate::units::format_bytes(max_image_bytes as u64)
                    ));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| format!("image `{name}` is not base64: {e}"))?;
                images.push((name, bytes));
            }
        }
        Some(_) => return Err("`images` must be a list of `{\"name\", \"image\"}`".into()),
    }
    Ok(JobInput { workflow, images })
}

/// A job's progress, as the workflow's nodes report it: sent on by the job source.
pub struct Progress<F: Fn(Value) + Send + Sync> {
    pub send: F,
    state: std::sync::Mutex<(u64, u64)>,
}

impl<F: Fn(Value) + Send + Sync> Progress<F> {
    pub fn new(send: F) -> Progress<F> {
        Progress {
            send,
            state: std::sync::Mutex::new((0, 0)),
        }
    }
}

/// `comfix test`'s runner reports a node's steps as its length (on every event) and what each
/// event added: the running value is kept across events, and starts again when another node's
/// steps begin (another length, or a count past the length).
impl<F: Fn(Value) + Send + Sync> Reporter for Progress<F> {
    fn item_length(&self, _id: u64, total: u64) {
        if let Ok(mut state) = self.state.lock() {
            if state.1 != total {
                *state = (0, total);
            }
        }
    }

    fn item_advance(&self, _id: u64, delta: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.0 = match state.0 + delta {
            past if state.1 > 0 && past > state.1 => delta,
            value => value,
        };
        let (value, max) = *state;
        drop(state);
        (self.send)(json!({ "value": value, "max": max }));
    }
}

/// A home's ComfyUI, started once and kept warm, and the jobs it runs.
pub struct Worker {
    home: RunHome,
    options: WorkerOptions,
    server: Option<Server>,
    info: ObjectInfo,
    /// How a job's workflow runs, as `comfix test` runs one (its timeout, ComfyUI's arguments,
    /// where ComfyUI's log goes: its tail explains a crash).
    options_for_test: TestOptions,
}

impl Worker {
    /// Start ComfyUI from `home` and wait until it answers.
    pub async fn start(home: RunHome, options: WorkerOptions) -> Result<Worker, RunError> {
        let options_for_test = TestOptions {
            timeout: options.job_timeout,
            start_timeout: options.start_timeout,
            jobs: 1,
            args: options.args.clone(),
            log_dir: options.log_dir.clone(),
            fetch_outputs: true,
        };
        let mut server = test::start(&home, 0, &options_for_test).await?;
        let info = match server.comfy.object_info().await {
            Ok(info) => info,
            Err(e) => {
                server.stop();
                return Err(e);
            }
        };
        tracing::info!(
            "ComfyUI is up at {} (pid {})",
            server.comfy.base,
            server.pid()
        );
        Ok(Worker {
            home,
            options,
            server: Some(server),
            info,
            options_for_test,
        })
    }

    /// The version the home holds.
    pub fn version_id(&self) -> &str {
        &self.home.version_id
    }

    /// ComfyUI again, after it died. `Err`: it does not come back.
    async fn restart(&mut self) -> Result<(), RunError> {
        if let Some(mut old) = self.server.take() {
            old.stop();
        }
        let mut server = test::start(&self.home, 0, &self.options_for_test).await?;
        match server.comfy.object_info().await {
            Ok(info) => self.info = info,
            Err(e) => {
                server.stop();
                return Err(e);
            }
        }
        tracing::info!("ComfyUI started again (pid {})", server.pid());
        self.server = Some(server);
        Ok(())
    }

    /// Whether ComfyUI died; its exit and log tail when it did.
    fn died(&mut self) -> Option<String> {
        let server = self.server.as_mut()?;
        let status = server.exited()?;
        Some(format!(
            "ComfyUI died ({}); the end of its log:\n{}",
            crate::run::server::describe(status),
            server.log_tail(20)
        ))
    }

    /// After a failed job: whether ComfyUI died under it. A server that stopped answering is
    /// given a few seconds to be seen exiting (its connections drop before the process is gone).
    async fn died_during_job(&mut self) -> Option<String> {
        if let Some(why) = self.died() {
            return Some(why);
        }
        let comfy = self.server.as_ref()?.comfy.clone();
        if comfy.probe().await.is_ok() {
            return None; // alive: the workflow failed on its own
        }
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(why) = self.died() {
                return Some(why);
            }
        }
        None
    }

    /// Run one job to its end.
    pub async fn run_job(&mut self, id: &str, input: &Value, reporter: &dyn Reporter) -> JobResult {
        let job = match job_input(input, self.options.max_image_bytes) {
            Ok(job) => job,
            Err(e) => return JobResult::failed(e),
        };
        // A ComfyUI that died between jobs is started again before this one.
        if let Some(why) = self.died() {
            tracing::warn!("{why}");
            if let Err(e) = self.restart().await {
                return JobResult::Failed {
                    error: format!("ComfyUI does not start again: {e}"),
                    refresh: true,
                };
            }
        }
        let input_dir = self.home.core().join("input");
        for (name, bytes) in &job.images {
            let written = std::fs::create_dir_all(&input_dir)
                .and_then(|()| crate::files::write_atomic(&input_dir.join(name), bytes));
            if let Err(e) = written {
                return JobResult::failed(format!("cannot write input image `{name}`: {e}"));
            }
        }
        let name = format!("job {id}");
        let text = job.workflow.to_string();
        let workflow = match test::prepare(&name, &text, &self.info, &self.home) {
            Ok(workflow) => workflow,
            Err(report) => {
                return JobResult::failed(
                    report.message.unwrap_or_else(|| "invalid workflow".into()),
                )
            }
        };
        let Some(server) = self.server.as_ref() else {
            return JobResult::Failed {
                error: "ComfyUI is not running".into(),
                refresh: true,
            };
        };
        let comfy = server.comfy.clone();
        let report = test::execute(&comfy, &workflow, &self.options_for_test, reporter, 0).await;
        if report.status != Status::Passed {
            // Died under the job: the job fails with why; ComfyUI comes back for the next one.
            if let Some(why) = self.died_during_job().await {
                let refresh = match self.restart().await {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::error!("ComfyUI does not start again: {e}");
                        true
                    }
                };
                return JobResult::Failed {
                    error: why,
                    refresh,
                };
            }
            let mut error = report
                .message
                .unwrap_or_else(|| format!("{:?}", report.status));
            for node in &report.errors {
                error.push_str(&format!("\n  {node}"));
            }
            return JobResult::failed(error);
        }
        let mut images = Vec::new();
        for output in &report.outputs {
            let entry = match &self.options.bucket {
                Some(bucket) => match bucket.put(id, &output.file.filename, &output.bytes).await {
                    Ok(url) => {
                        json!({ "filename": output.file.filename, "type": "s3_url", "data": url })
                    }
                    Err(e) => {
                        return JobResult::failed(format!(
                            "cannot upload `{}` to the bucket: {e}",
                            output.file.filename
                        ))
                    }
                },
                None => json!({
                    "filename": output.file.filename,
                    "type": "base64",
                    "data": base64::engine::general_purpose::STANDARD.encode(&output.bytes),
                }),
            };
            images.push(entry);
        }
        JobResult::Output(json!({ "images": images }))
    }

    /// Stop ComfyUI.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bucket for output images, as RunPod's SDK reads it: `BUCKET_ENDPOINT_URL` (the bucket as
/// the host's first label, `https://BUCKET.s3.REGION.amazonaws.com`, or as the path's first
/// segment, `http://HOST:PORT/BUCKET`), `BUCKET_ACCESS_KEY_ID`, `BUCKET_SECRET_ACCESS_KEY`.
/// An image goes to `<job id>/<file name>`; the job returns a presigned URL (7 days).
pub struct Bucket {
    store: object_store::aws::AmazonS3,
    shown: String,
}

impl Bucket {
    /// The bucket the environment names, if any.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Option<Bucket>, String> {
        let Some(endpoint) = env("BUCKET_ENDPOINT_URL").filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let url = url::Url::parse(&endpoint)
            .map_err(|e| format!("BUCKET_ENDPOINT_URL `{endpoint}` is not a URL: {e}"))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let first_segment = url
            .path_segments()
            .and_then(|mut s| s.next().map(str::to_string))
            .filter(|s| !s.is_empty());
        let (bucket, base) = match first_segment {
            Some(bucket) => {
                let mut base = url.clone();
                base.set_path("");
                (bucket, base.as_str().trim_end_matches('/').to_string())
            }
            None => {
                let (bucket, rest) = host
                    .split_once('.')
                    .ok_or_else(|| format!("BUCKET_ENDPOINT_URL `{endpoint}` names no bucket"))?;
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                (
                    bucket.to_string(),
                    format!("{}://{rest}{port}", url.scheme()),
                )
            }
        };
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(env("BUCKET_REGION").unwrap_or_else(|| "us-east-1".into()))
            .with_endpoint(&base)
            // Client options first: they replace all of them, `allow_http` included.
            .with_retry(crate::cache::s3::retry())
            .with_client_options(crate::cache::s3::client_options())
            .with_allow_http(base.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
        if let (Some(id), Some(secret)) =
            (env("BUCKET_ACCESS_KEY_ID"), env("BUCKET_SECRET_ACCESS_KEY"))
        {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| format!("the bucket of BUCKET_ENDPOINT_URL: {e}"))?;
        Ok(Some(Bucket {
            store,
            shown: format!("{base}/{bucket}"),
        }))
    }

    /// Put `bytes` at `<job>/<name>`; a presigned URL to get it.
    async fn put(&self, job: &str, name: &str, bytes: &[u8]) -> Result<String, String> {
        use object_store::signer::Signer as _;
        use object_store::ObjectStore as _;
        let path = object_store::path::Path::from(format!("{job}/{name}"));
        self.store
            .put(&path, bytes.to_vec().into())
            .await
            .map_err(|e| format!("{}: {e}", self.shown))?;
        let url = self
            .store
            .signed_url(
                reqwest::Method::GET,
                &path,
                Duration::from_secs(7 * 24 * 3600),
            )
            .await
            .map_err(|e| format!("{}: {e}", self.shown))?;
        Ok(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_inputs_are_read_as_worker_comfyui_reads_them() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG");
        let input = json!({
            "workflow": {"1": {"class_type": "X", "inputs": {}}},
            "images": [{"name": "in.png", "image": format!("data:image/png;base64,{png}")}],
        });
        let job = job_input(&input, 1 << 20).unwrap();
        assert_eq!(job.images, [("in.png".to_string(), b"\x89PNG".to_vec())]);
        // The input as a JSON string, the workflow as one too.
        let text = json!({ "workflow": "{\"1\": {}}" }).to_string();
        assert!(job_input(&Value::String(text), 1 << 20).is_ok());

        let refused = |input: Value| job_input(&input, 16).err().unwrap();
        assert!(refused(json!({})).contains("no `workflow`"));
        assert!(refused(json!({ "workflow": "{not json" })).contains("not JSON"));
        assert!(refused(json!({ "workflow": [1] })).contains("not a JSON object"));
        let big = base64::engine::general_purpose::STANDARD.encode([0u8; 64]);
        let too_big =
            refused(json!({ "workflow": {}, "images": [{"name": "a.png", "image": big}] }));
        assert!(too_big.contains("larger than"), "{too_big}");
        let escape =
            refused(json!({ "workflow": {}, "images": [{"name": "../a.png", "image": png}] }));
        assert!(escape.contains("not a plain file name"), "{escape}");
        assert!(
            refused(json!({ "workflow": {}, "images": [{"name": "a.png"}] }))
                .contains("`images[0]`")
        );
        assert!(
            refused(json!({ "workflow": {}, "images": [{"name": "a.png", "image": "!!"}] }))
                .contains("not base64")
        );
    }

    /// As `comfix test`'s runner reports a node of 3 steps, then another of 3: the values sent
    /// count each node's steps (they were each event's delta, 1, 1, 1, before).
    #[test]
    fn progress_counts_a_node_s_steps() {
        let sent = std::sync::Mutex::new(Vec::new());
        let progress =
            Progress::new(|v: Value| sent.lock().unwrap().push(v["value"].as_u64().unwrap()));
        for _node in 0..2 {
            for _step in 0..3 {
                progress.item_length(0, 3);
                progress.item_advance(0, 1);
            }
        }
        assert_eq!(*sent.lock().unwrap(), [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn results_are_sent_as_runpod_s_sdk_sends_them() {
        let out = JobResult::Output(json!({"images": []})).to_runpod();
        assert_eq!(out, json!({"output": {"images": []}}));
        let failed = JobResult::Failed {
            error: "x".into(),
            refresh: true,
        }
        .to_runpod();
        assert_eq!(failed, json!({"error": "x", "stopPod": true}));
    }
}
