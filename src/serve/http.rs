//! The worker on a local HTTP endpoint, speaking RunPod's local test API (what the SDK's
//! `--rp_serve_api` serves), so a client can be tried against a machine before a RunPod endpoint:
//! `POST /runsync` with `{"input": …}` answers `{"id", "status": "COMPLETED", "output"}` or
//! `{"id", "status": "FAILED", "error"}`; `GET /health` answers `{"version", "jobs"}`. Jobs run
//! one at a time, in the order they came.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{JobResult, Worker};

/// The most a request may carry (input images are base64 in it).
const MAX_BODY: usize = 256 << 20;

struct State {
    worker: tokio::sync::Mutex<Worker>,
    version: String,
    jobs: AtomicU64,
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = (request.method().clone(), request.uri().path().to_string());
    match (&route.0, route.1.as_str()) {
        (&Method::GET, "/health") => Ok(reply(
            StatusCode::OK,
            &json!({ "version": state.version, "jobs": state.jobs.load(Ordering::Relaxed) }),
        )),
        (&Method::POST, "/runsync") => {
            let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return Ok(reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &json!({ "error": format!("the request could not be read: {e}") }),
                    ))
                }
            };
            let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "the request is not JSON" }),
                ));
            };
            let Some(input) = request.get("input") else {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "the request has no `input`" }),
                ));
            };
            let n = state.jobs.fetch_add(1, Ordering::Relaxed) + 1;
            let id = request["id"]
                .as_str()
                .map_or_else(|| format!("local-{n}"), str::to_string);
            let result = state
                .worker
                .lock()
                .await
                .run_job(&id, input, &crate::reporter::NoReporter)
                .await;
            let body = match result {
                JobResult::Output(output) => {
                    json!({ "id": id, "status": "COMPLETED", "output": output })
                }
                JobResult::Failed { error, .. } => {
                    json!({ "id": id, "status": "FAILED", "error": error })
                }
            };
            Ok(reply(StatusCode::OK, &body))
        }
        _ => Ok(reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": "POST /runsync or GET /health" }),
        )),
    }
}

/// Serve `worker` on `listener` until the process is stopped.
pub async fn serve(worker: Worker, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let state = Arc::new(State {
        version: worker.version_id().to_string(),
        worker: tokio::sync::Mutex::new(worker),
        jobs: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("a connection ended: {e}");
            }
        });
    }
}
