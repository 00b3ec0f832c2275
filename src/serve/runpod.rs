//! RunPod's serverless job protocol, as its Python SDK (`runpod.serverless`) speaks it: take a job
//! with `GET $RUNPOD_WEBHOOK_GET_JOB` (`$ID` → the worker's id, `RUNPOD_POD_ID`, and
//! `job_in_progress=0|1`; `204`: none yet), report progress and the result by `POST
//! $RUNPOD_WEBHOOK_POST_OUTPUT` (`$ID` → the job's id, `$RUNPOD_POD_ID` → the worker's;
//! `{"status": "IN_PROGRESS", "output": …}`, then `{"output": …}` or `{"error": …}`, with
//! `"stopPod": true` to be replaced), and ping `$RUNPOD_WEBHOOK_PING` every
//! `RUNPOD_PING_INTERVAL` ms. Every request carries `RUNPOD_AI_API_KEY` as its `Authorization`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{JobResult, Progress, Worker};

/// Where the job API is, from the environment RunPod gives a worker.
#[derive(Debug, Clone)]
pub struct Endpoints {
    get_job: String,
    post_output: String,
    ping: Option<String>,
    worker_id: String,
    api_key: Option<String>,
    ping_interval: Duration,
    /// How long to wait after an answer with no job (the SDK: 1 s).
    poll: Duration,
}

impl Endpoints {
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Endpoints, String> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let get_job = var("RUNPOD_WEBHOOK_GET_JOB").ok_or(
            "RUNPOD_WEBHOOK_GET_JOB is not set: `serve --runpod` runs inside a RunPod serverless \
             worker (for a local endpoint, `comfix serve --port N`)",
        )?;
        let post_output = var("RUNPOD_WEBHOOK_POST_OUTPUT").ok_or(
            "RUNPOD_WEBHOOK_POST_OUTPUT is not set (RunPod sets it beside RUNPOD_WEBHOOK_GET_JOB)",
        )?;
        let worker_id = var("RUNPOD_POD_ID").unwrap_or_else(|| "local".into());
        let millis = |name: &str, default: u64| {
            var(name)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::from_millis(default), Duration::from_millis)
        };
        Ok(Endpoints {
            get_job: get_job.replace("$ID", &worker_id),
            post_output: post_output.replace("$RUNPOD_POD_ID", &worker_id),
            ping: var("RUNPOD_WEBHOOK_PING").map(|p| p.replace("$RUNPOD_POD_ID", &worker_id)),
            worker_id,
            api_key: var("RUNPOD_AI_API_KEY"),
            ping_interval: millis("RUNPOD_PING_INTERVAL", 10_000),
            poll: millis("COMFIX_RUNPOD_POLL_MS", 1_000),
        })
    }

    fn job_url(&self, in_progress: bool) -> String {
        let sep = if self.get_job.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}job_in_progress={}",
            self.get_job,
            u8::from(in_progress)
        )
    }

    fn output_url(&self, job: &str) -> String {
        self.post_output.replace("$ID", job)
    }

    fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        let request = http.request(method, url);
        match &self.api_key {
            Some(key) => request.header(reqwest::header::AUTHORIZATION, key),
            None => request,
        }
    }
}

/// Post `body` to `url` as the SDK does (JSON text, 3 tries).
async fn post(
    endpoints: &Endpoints,
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(), String> {
    let text = serde_json::to_string(body).expect("json");
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        let sent = endpoints
            .request(http, reqwest::Method::POST, url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(text.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("it answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Take jobs and run them until `max_jobs` are done (`None`: for ever) or a job asks for a new
/// worker. A job API that cannot be reached is asked again, with the reason logged.
pub async fn serve(
    worker: &mut Worker,
    endpoints: &Endpoints,
    max_jobs: Option<usize>,
) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .user_agent(concat!("comfix/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
    let current: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let pinger = endpoints.ping.clone().map(|url| {
        let (endpoints, http, current) = (endpoints.clone(), http.clone(), current.clone());
        tokio::spawn(async move {
            loop {
                let job = current
                    .lock()
                    .ok()
                    .and_then(|c| c.clone())
                    .unwrap_or_default();
                let request = endpoints
                    .request(&http, reqwest::Method::GET, &url)
                    .query(&[
                        ("job_id", job.as_str()),
                        (
                            "runpod_version",
                            concat!("comfix-", env!("CARGO_PKG_VERSION")),
                        ),
                    ]);
                if let Err(e) = request.send().await {
                    tracing::debug!("ping: {e}");
                }
                tokio::time::sleep(endpoints.ping_interval).await;
            }
        })
    });
    tracing::info!(
        "worker `{}` taking jobs for `{}`",
        endpoints.worker_id,
        worker.version_id()
    );
    let mut done = 0;
    let mut unreachable_since: Option<Instant> = None;
    let mut backoff = endpoints.poll;
    let result = loop {
        if max_jobs.is_some_and(|max| done >= max) {
            break Ok(());
        }
        let answer = endpoints
            .request(&http, reqwest::Method::GET, &endpoints.job_url(false))
            .send()
            .await;
        let job: Value = match answer {
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                tracing::warn!(
                    "the job API is unreachable ({}s): {e}; asking again in {backoff:?}",
                    since.elapsed().as_secs()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            Ok(r) if r.status() == reqwest::StatusCode::OK => {
                unreachable_since = None;
                backoff = endpoints.poll;
                match r.json().await {
                    Ok(job) => job,
                    Err(e) => {
                        tracing::error!("the job API's answer is not JSON: {e}");
                        continue;
                    }
                }
            }
            Ok(r) => {
                unreachable_since = None;
                if r.status() != reqwest::StatusCode::NO_CONTENT
                    && r.status() != reqwest::StatusCode::BAD_REQUEST
                {
                    tracing::warn!("the job API answered {}", r.status());
                }
                tokio::time::sleep(endpoints.poll).await;
                continue;
            }
        };
        let (Some(id), Some(input)) = (job["id"].as_str(), job.get("input")) else {
            tracing::error!("a job without `id` or `input`: {job}");
            continue;
        };
        let id = id.to_string();
        tracing::info!("job `{id}` started");
        if let Ok(mut c) = current.lock() {
            *c = Some(id.clone());
        }
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let progress_url = endpoints.output_url(&id);
        let forward = {
            let (endpoints, http) = (endpoints.clone(), http.clone());
            tokio::spawn(async move {
                while let Some(progress) = receiver.recv().await {
                    let body = json!({ "status": "IN_PROGRESS", "output": progress });
                    if let Err(e) = post(&endpoints, &http, &progress_url, &body).await {
                        tracing::debug!("progress not sent: {e}");
                    }
                }
            })
        };
        let reporter = Progress::new(move |v| {
            let _ = sender.send(v);
        });
        let result = worker.run_job(&id, input, &reporter).await;
        drop(reporter);
        let _ = forward.await;
        if let JobResult::Failed { error, .. } = &result {
            tracing::warn!("job `{id}` failed: {error}");
        }
        if let Err(e) = post(
            endpoints,
            &http,
            &endpoints.output_url(&id),
            &result.to_runpod(),
        )
        .await
        {
            tracing::error!("job `{id}`: its result could not be sent: {e}");
        }
        if let Ok(mut c) = current.lock() {
            *c = None;
        }
        done += 1;
        if matches!(result, JobResult::Failed { refresh: true, .. }) {
            break Err(
                "the worker asked to be replaced (ComfyUI does not start again)".to_string(),
            );
        }
    };
    if let Some(pinger) = pinger {
        pinger.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_made_as_runpod_s_sdk_makes_them() {
        let env = |k: &str| {
            Some(
                match k {
                    "RUNPOD_WEBHOOK_GET_JOB" => "http://api/v2/get/$ID?gpu=A40",
                    "RUNPOD_WEBHOOK_POST_OUTPUT" => {
                        "http://api/v2/done/$ID?worker=$RUNPOD_POD_ID&isStream=false"
                    }
                    "RUNPOD_POD_ID" => "w1",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let e = Endpoints::from_env(&env).unwrap();
        assert_eq!(
            e.job_url(false),
            "http://api/v2/get/w1?gpu=A40&job_in_progress=0"
        );
        assert_eq!(
            e.output_url("j9"),
            "http://api/v2/done/j9?worker=w1&isStream=false"
        );
        assert!(Endpoints::from_env(&|_: &str| None)
            .unwrap_err()
            .contains("RUNPOD_WEBHOOK_GET_JOB"));
    }
}
