//! `comfix test`: for each workflow, check what it needs, submit it, follow it, collect its
//! outputs — on one or more ComfyUI servers started from the home, always stopped at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{Comfy, Ended, Event, NodeError, OutputFile, Submitted};
use super::server::{self, Server};
use super::workflow::{self, Missing, ObjectInfo, Workflow, WorkflowError};
use super::{RunError, RunHome};
use crate::reporter::Reporter;

pub struct TestOptions {
    /// How long one workflow may run.
    pub timeout: Duration,
    /// How long ComfyUI may take to answer after starting.
    pub start_timeout: Duration,
    /// ComfyUI servers run side by side, each taking its share of the workflows.
    pub jobs: usize,
    /// More arguments for `main.py`.
    pub args: Vec<String>,
    /// Where the servers' logs go.
    pub log_dir: PathBuf,
    /// Fetch the bytes of every output (for `--output`).
    pub fetch_outputs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    /// ComfyUI rejected it or a node failed.
    Failed,
    /// Nodes or models it needs are not in the home: not submitted.
    Missing,
    /// Not a usable workflow (not JSON, bad links, a cycle): not submitted.
    Invalid,
    TimedOut,
    Interrupted,
    /// ComfyUI did not start.
    NotRun,
}

/// A file a workflow produced, with its bytes when asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    #[serde(flatten)]
    pub file: OutputFile,
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// How one workflow went.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowReport {
    pub workflow: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Missing::is_empty")]
    pub missing: Missing,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<NodeError>,
    pub outputs: Vec<Output>,
    pub seconds: f64,
}

impl WorkflowReport {
    fn new(workflow: &str, status: Status) -> WorkflowReport {
        WorkflowReport {
            workflow: workflow.to_string(),
            status,
            prompt_id: None,
            message: None,
            missing: Missing::default(),
            errors: Vec::new(),
            outputs: Vec::new(),
            seconds: 0.0,
        }
    }

    fn with_message(mut self, message: impl Into<String>) -> WorkflowReport {
        self.message = Some(message.into());
        self
    }
}

/// Every workflow's report, and why ComfyUI did not start when it did not.
pub struct Suite {
    pub reports: Vec<WorkflowReport>,
    pub not_started: Option<RunError>,
}

/// A workflow to test: its name and its file's text (`Err` when it could not be read).
pub struct Input {
    pub name: String,
    pub text: Result<String, String>,
}

/// Test `inputs` on servers started from `home`. Workflows that cannot be used are reported
/// without starting anything; ComfyUI starts only when some workflow can be submitted.
pub async fn run(
    home: &RunHome,
    inputs: Vec<Input>,
    options: &TestOptions,
    reporter: &dyn Reporter,
) -> Suite {
    let mut reports: BTreeMap<usize, WorkflowReport> = BTreeMap::new();
    let mut usable = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match input.text {
            Err(e) => {
                reports.insert(
                    i,
                    WorkflowReport::new(&input.name, Status::Invalid)
                        .with_message(format!("cannot be read: {e}")),
                );
            }
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Err(e) => {
                    let err = WorkflowError::NotJson(e.to_string());
                    reports.insert(
                        i,
                        WorkflowReport::new(&input.name, Status::Invalid)
                            .with_message(err.to_string()),
                    );
                }
                Ok(_) => usable.push((i, input.name, text)),
            },
        }
    }
    let mut not_started = None;
    if !usable.is_empty() {
        let jobs = options.jobs.clamp(1, usable.len());
        let mut shares: Vec<Vec<(usize, String, String)>> = vec![Vec::new(); jobs];
        for (n, item) in usable.into_iter().enumerate() {
            shares[n % jobs].push(item);
        }
        let runs = shares
            .into_iter()
            .enumerate()
            .map(|(job, share)| run_share(home, job, share, options, reporter));
        // Polled together on this thread: each server is started from it, so each dies with it.
        for result in futures_util::future::join_all(runs).await {
            let (share_reports, failed_start) = result;
            reports.extend(share_reports);
            if not_started.is_none() {
                not_started = failed_start;
            }
        }
    }
    Suite {
        reports: reports.into_values().collect(),
        not_started,
    }
}

/// One server's share of the workflows, in order.
/// Every workflow of a share, not run because of `err`.
fn not_run(share: Vec<(usize, String, String)>, err: &RunError) -> Vec<(usize, WorkflowReport)> {
    let message = err.to_string();
    share
        .into_iter()
        .map(|(i, name, _)| {
            (
                i,
                WorkflowReport::new(&name, Status::NotRun).with_message(message.clone()),
            )
        })
        .collect()
}

async fn run_share(
    home: &RunHome,
    job: usize,
    share: Vec<(usize, String, String)>,
    options: &TestOptions,
    reporter: &dyn Reporter,
) -> (Vec<(usize, WorkflowReport)>, Option<RunError>) {
    let mut server = match start(home, job, options).await {
        Ok(server) => server,
        Err(err) => return (not_run(share, &err), Some(err)),
    };
    let info = match server.comfy.object_info().await {
        Ok(info) => info,
        Err(err) => {
            server.stop();
            return (not_run(share, &err), Some(err));
        }
    };
    home.keep_object_info(&info);
    let mut out = Vec::new();
    for (i, name, text) in share {
        let report = test_one(
            &server.comfy,
            home,
            &name,
            &text,
            &info,
            options,
            reporter,
            i as u64,
        )
        .await;
        out.push((i, report));
    }
    server.stop();
    (out, None)
}

/// Start ComfyUI from `home` for server `job` (its log under `options.log_dir`) and wait until it
/// answers.
pub async fn start(home: &RunHome, job: usize, options: &TestOptions) -> Result<Server, RunError> {
    let port = server::free_port()?;
    let log = options
        .log_dir
        .join(format!("comfyui-{}-{job}.log", std::process::id()));
    let mut server = Server::start(
        &home.python(),
        &home.core(),
        &server::Options {
            listen: "127.0.0.1".into(),
            port,
            args: options.args.clone(),
            output: server::Output::Log(log),
        },
    )?;
    tracing::debug!(
        "ComfyUI (pid {}) starting at {}",
        server.pid(),
        server.comfy.base
    );
    if let Err(err) = server.wait_ready(options.start_timeout).await {
        server.stop();
        return Err(err);
    }
    Ok(server)
}

/// Check one workflow's needs, then submit and follow it.
#[allow(clippy::too_many_arguments)]
async fn test_one(
    comfy: &Comfy,
    home: &RunHome,
    name: &str,
    text: &str,
    info: &ObjectInfo,
    options: &TestOptions,
    reporter: &dyn Reporter,
    item: u64,
) -> WorkflowReport {
    let started = Instant::now();
    let mut report = match prepare(name, text, info, home) {
        Ok(workflow) => execute(comfy, &workflow, options, reporter, item).await,
        Err(report) => *report,
    };
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Parse (converting the UI format), check the graph and what it needs from the home.
pub fn prepare(
    name: &str,
    text: &str,
    info: &ObjectInfo,
    home: &RunHome,
) -> Result<Workflow, Box<WorkflowReport>> {
    let invalid = |e: WorkflowError| {
        Box::new(WorkflowReport::new(name, Status::Invalid).with_message(e.to_string()))
    };
    let workflow = workflow::parse(name, text, Some(info)).map_err(invalid)?;
    let missing = workflow::missing(&workflow, info, home);
    if !missing.is_empty() {
        let mut report = WorkflowReport::new(name, Status::Missing).with_message(format!(
            "needs what the home lacks:\n{}",
            missing
                .lines()
                .iter()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
        report.missing = missing;
        return Err(Box::new(report));
    }
    workflow::check_graph(&workflow, info).map_err(invalid)?;
    Ok(workflow)
}

/// Submit `workflow` and follow it to its end: its report, with its outputs (and their bytes when
/// `options.fetch_outputs`).
pub async fn execute(
    comfy: &Comfy,
    workflow: &Workflow,
    options: &TestOptions,
    reporter: &dyn Reporter,
    item: u64,
) -> WorkflowReport {
    let name = &workflow.name;
    let client_id = client_id();
    let socket = comfy.connect(&client_id).await;
    if socket.is_none() {
        tracing::debug!("no websocket at {}: following by /history", comfy.base);
    }
    let prompt = serde_json::Value::Object(workflow.prompt.clone());
    let id = match comfy.submit(&prompt, &client_id).await {
        Err(e) => return WorkflowReport::new(name, Status::Failed).with_message(e.to_string()),
        Ok(Submitted::Rejected(message, errors)) => {
            let mut report = WorkflowReport::new(name, Status::Failed)
                .with_message(format!("ComfyUI refused it: {message}"));
            report.errors = errors;
            return report;
        }
        Ok(Submitted::Queued(id)) => id,
    };
    reporter.item_start(item, name, None);
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut on_event = |event: Event| match event {
        Event::Executing(node) => tracing::debug!("{name}: node {node}"),
        Event::Progress(node, value, max) => {
            let before = last.insert(node.to_string(), value).unwrap_or(0);
            if value < before {
                last.insert(node.to_string(), value);
            }
            reporter.item_length(item, max);
            reporter.item_advance(item, value.saturating_sub(before));
        }
    };
    let deadline = Instant::now() + options.timeout;
    let ended = comfy.follow(&id, socket, deadline, &mut on_event).await;
    reporter.item_finish(item);
    let mut report = WorkflowReport::new(name, Status::Passed);
    report.prompt_id = Some(id.clone());
    match ended {
        Err(e) => {
            return WorkflowReport {
                status: Status::Failed,
                message: Some(e.to_string()),
                ..report
            }
        }
        Ok(Ended::Success) => {}
        Ok(Ended::Error(error)) => {
            report.status = Status::Failed;
            report.message = Some(format!(
                "node {} ({}) failed: {}",
                error.node,
                error.class_type.as_deref().unwrap_or("?"),
                error.message
            ));
            report.errors.push(error);
            return report;
        }
        Ok(Ended::Interrupted) => {
            return WorkflowReport {
                status: Status::Interrupted,
                message: Some("ComfyUI interrupted it".into()),
                ..report
            }
        }
        Ok(Ended::TimedOut) => {
            return WorkflowReport {
                status: Status::TimedOut,
                message: Some(format!(
                    "it did not finish within {}",
                    humantime::format_duration(options.timeout)
                )),
                ..report
            }
        }
    }
    match comfy.outputs(&id).await {
        Err(e) => WorkflowReport {
            status: Status::Failed,
            message: Some(e.to_string()),
            ..report
        },
        Ok(files) => {
            for file in files {
                let bytes = if options.fetch_outputs {
                    match comfy.view(&file).await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            return WorkflowReport {
                                status: Status::Failed,
                                message: Some(e.to_string()),
                                ..report
                            }
                        }
                    }
                } else {
                    Vec::new()
                };
                report.outputs.push(Output { file, bytes });
            }
            report
        }
    }
}

/// A client id for the websocket, unique enough for one server.
fn client_id() -> String {
    let seed = format!(
        "{}-{:?}-{:?}",
        std::process::id(),
        std::time::SystemTime::now(),
        std::thread::current().id()
    );
    blake3::hash(seed.as_bytes()).to_hex()[..32].to_string()
}

/// The report of a workflow file that could not be read.
pub fn unreadable(name: &str, error: &std::io::Error) -> WorkflowReport {
    WorkflowReport::new(name, Status::Invalid).with_message(format!("cannot be read: {error}"))
}

/// What `check-workflow` finds in one workflow, without submitting it.
pub fn check(home: &RunHome, name: &str, text: &str, info: &ObjectInfo) -> WorkflowReport {
    match prepare(name, text, info, home) {
        Ok(_) => WorkflowReport::new(name, Status::Passed),
        Err(report) => *report,
    }
}
