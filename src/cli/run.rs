//! `comfix run`, `test`, `check-workflow`: ComfyUI started from a home, workflows run in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use clap::Args;

use super::realize::{realize_home, RealizeArgs};
use super::spec::SpecArg;
use super::{Context, Outcome};
use crate::realize::LinkMode;
use crate::run::server::{self, Server};
use crate::run::test::{self, Input, Status, TestOptions, WorkflowReport};
use crate::run::{junit, RunError, RunHome};

/// Which home: a version (realized there first when the home is not at it) or `--target`.
#[derive(Debug, Clone, Args)]
pub struct VersionHome {
    /// Path of the spec file (instead of a version id)
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// The home [default for a version: as `realize`; without one: $COMFY_HOME, else the current
    /// directory when it is a home, else the one home the store knows]
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    /// Put model links in this directory (shared between homes) when realizing
    #[arg(long, value_name = "DIR", env = "MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Realize from what the store already holds only
    #[arg(long)]
    pub offline: bool,
    /// Fail instead of writing or changing the lock when realizing
    #[arg(long)]
    pub frozen: bool,
    /// Link models an indexed folder holds where they lie when realizing (as `realize`)
    #[arg(long)]
    pub models_in_place: bool,
    #[command(flatten)]
    pub substitute: super::trust::SubstituteArgs,
    #[command(flatten)]
    pub torch: super::realize::TorchArgs,
}

impl VersionHome {
    /// The home's root, after realizing the version into it when one is named.
    fn prepare(&self, id: Option<String>, context: &Context) -> anyhow::Result<PathBuf> {
        if id.is_none() && self.spec.is_none() {
            let store = crate::store::Store::open_existing(&context.store_dir)?;
            return super::realize::HomeArgs {
                target: self.target.clone(),
            }
            .target(store.as_ref());
        }
        let args = RealizeArgs {
            spec: SpecArg {
                id,
                spec: self.spec.clone(),
            },
            target: self.target.clone(),
            models_dir: self.models_dir.clone(),
            dry_run: false,
            skip_models: false,
            link_mode: LinkMode::Auto,
            frozen: self.frozen,
            session: super::resolve::SessionArgs {
                models_in_place: self.models_in_place,
                offline: self.offline,
                jobs: 4,
                wheels_dir: None,
                substitute: self.substitute.clone(),
            },
            check: false,
            torch: self.torch.clone(),
        };
        let report = realize_home(&args, context)?;
        if !report.up_to_date {
            tracing::info!(
                "realized `{}` as generation {} of `{}`",
                report.version_id,
                report.generation,
                report.target.display()
            );
        }
        Ok(report.target)
    }

    fn open(
        &self,
        id: Option<String>,
        context: &Context,
    ) -> anyhow::Result<(RunHome, Option<crate::store::Store>)> {
        let root = self.prepare(id, context)?;
        let store = crate::store::Store::open_existing(&context.store_dir)?;
        Ok((RunHome::open(&root, store.as_ref())?, store))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Version id, looked up in `versions/<ID>.json`, then `specs/<ID>.json`
    #[arg(value_name = "ID", conflicts_with = "spec")]
    pub id: Option<String>,
    #[command(flatten)]
    pub home: VersionHome,
    /// The address ComfyUI listens on
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: String,
    /// The port ComfyUI listens on
    #[arg(long, default_value_t = 8188)]
    pub port: u16,
    /// How long ComfyUI may take to start answering (then it is stopped, exit 2)
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Arguments for ComfyUI's `main.py`, after `--`
    #[arg(last = true, value_name = "COMFYUI_ARGS")]
    pub args: Vec<String>,
}

/// Whether ComfyUI runs on the CPU: a machine without a GPU driver needs `--cpu` (a CUDA torch
/// fails at start without one).
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Do not add `--cpu` on a machine where no GPU driver is found
    #[arg(long)]
    pub no_auto_cpu: bool,
}

impl DeviceArgs {
    /// ComfyUI's arguments: `args`, with `--cpu` added when this machine has no GPU driver
    /// (NVIDIA's or ROCm's, as `--torch-backend auto` detects them), unless the arguments already
    /// choose a device or `--no-auto-cpu` is given.
    pub fn comfy_args(&self, args: &[String]) -> Vec<String> {
        let machine = crate::python::torch::Machine::detect();
        let mut args = args.to_vec();
        if !self.no_auto_cpu && needs_cpu(&machine, &args) {
            tracing::info!("no GPU driver on this machine: starting ComfyUI with `--cpu` (`--no-auto-cpu` to leave it out)");
            args.push("--cpu".into());
        }
        args
    }
}

/// Whether `--cpu` must be added for `machine`: it has no GPU driver, and `args` choose no device.
fn needs_cpu(machine: &crate::python::torch::Machine, args: &[String]) -> bool {
    const DEVICE_FLAGS: [&str; 5] = [
        "--cpu",
        "--directml",
        "--cuda-device",
        "--oneapi-device-selector",
        "--gpu-only",
    ];
    cfg!(target_os = "linux")
        && machine.nvidia_driver.is_none()
        && machine.rocm.is_none()
        && !args.iter().any(|a| {
            DEVICE_FLAGS
                .iter()
                .any(|f| a == f || a.starts_with(&format!("{f}=")))
        })
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Version id, looked up in `versions/<ID>.json`, then `specs/<ID>.json`
    #[arg(value_name = "ID", conflicts_with = "spec")]
    pub id: Option<String>,
    #[command(flatten)]
    pub home: VersionHome,
    /// A workflow file (API or UI format; repeatable) [default: the spec's `workflows`]
    #[arg(long, value_name = "FILE")]
    pub workflow: Vec<PathBuf>,
    /// Write outputs to DIR/<workflow>/, or `base64`: one JSON document per workflow on stdout
    #[arg(long, value_name = "base64|DIR")]
    pub output: Option<String>,
    /// How long one workflow may run
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How long ComfyUI may take to start answering
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    /// ComfyUI servers side by side, each running its share of the workflows
    #[arg(long, short = 'j', value_name = "N", default_value_t = 1)]
    pub jobs: usize,
    /// Write a JUnit XML report here
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Arguments for ComfyUI's `main.py`, after `--`
    #[arg(last = true, value_name = "COMFYUI_ARGS")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckWorkflowArgs {
    /// `[ID] W.json…`: the version id (unless `--target` or `--spec` names the home), then the
    /// workflow files
    #[arg(value_name = "ID|WORKFLOW", required = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub home: VersionHome,
    /// Start ComfyUI to ask it even when this generation's `/object_info` is known
    #[arg(long)]
    pub fresh: bool,
    /// How long ComfyUI may take to start answering
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Arguments for ComfyUI's `main.py`, after `--`
    #[arg(last = true, value_name = "COMFYUI_ARGS")]
    pub comfy_args: Vec<String>,
}

/// `comfix run`: ComfyUI in the foreground; signals forwarded; its exit code is ours.
pub fn run(args: RunArgs, context: &Context) -> anyhow::Result<Outcome> {
    let (home, _store) = args.home.open(args.id.clone(), context)?;
    server::check_port(&args.listen, args.port)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut server = Server::start(
            &home.python(),
            &home.core(),
            &server::Options {
                listen: args.listen.clone(),
                port: args.port,
                args: args.device.comfy_args(&args.args),
                output: server::Output::Inherit,
            },
        )?;
        tracing::info!("starting ComfyUI of `{}` at {}", home.version_id, server.comfy.base);
        let started = tokio::time::Instant::now();
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut ready = false;
        let mut checked = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = interrupt.recv() => server.signal(libc::SIGINT),
                _ = terminate.recv() => server.signal(libc::SIGTERM),
                _ = hangup.recv() => server.signal(libc::SIGHUP),
                status = server.wait() => {
                    // Whatever it left behind goes with it.
                    server.signal(libc::SIGKILL);
                    return Ok(Outcome::Exit(server::exit_code(status)));
                }
                _ = tokio::time::sleep(Duration::from_millis(25)), if !ready => {
                    if checked.elapsed() < Duration::from_millis(25) {
                        continue;
                    }
                    if let Err(cause) = server.comfy.probe().await {
                        if started.elapsed() >= args.start_timeout {
                            server.stop();
                            anyhow::bail!(RunError::NotStarted {
                                reason: format!(
                                    "it did not answer {} within {} (last try: {cause})",
                                    server.comfy.base,
                                    humantime::format_duration(args.start_timeout)
                                ),
                                log: None,
                                tail: String::new(),
                            });
                        }
                    } else {
                        ready = true;
                        if context.json {
                            context.print_json(&serde_json::json!({"url": server.comfy.base, "pid": server.pid(), "home": home.root}))?;
                        } else {
                            println!("{}", server.comfy.base);
                        }
                        tracing::info!("ComfyUI of `{}` is ready at {}", home.version_id, server.comfy.base);
                    }
                    checked = tokio::time::Instant::now();
                }
            }
        }
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The workflows to use: `--workflow` files, else the version's.
fn inputs(
    files: &[PathBuf],
    home: &RunHome,
    store: Option<&crate::store::Store>,
) -> Result<Vec<Input>, RunError> {
    let named: Vec<(String, PathBuf)> = if files.is_empty() {
        let from_lock = store.map(|s| home.workflows(s)).unwrap_or_default();
        if from_lock.is_empty() {
            return Err(RunError::NoWorkflows(home.version_id.clone()));
        }
        from_lock
    } else {
        files
            .iter()
            .map(|f| (f.display().to_string(), f.clone()))
            .collect()
    };
    Ok(named
        .into_iter()
        .map(|(name, file)| Input {
            name,
            text: crate::files::read_regular_text(&file, crate::files::WORKFLOW_LIMIT)
                .map_err(|e| e.to_string()),
        })
        .collect())
}

/// `comfix test`: exit 0 when every workflow passed, 1 when one failed, 2 when ComfyUI could
/// not start, 130 on Ctrl-C (ComfyUI stopped in every case).
pub fn test(args: TestArgs, context: &Context) -> anyhow::Result<Outcome> {
    let (home, store) = args.home.open(args.id.clone(), context)?;
    let inputs = inputs(&args.workflow, &home, store.as_ref())?;
    let base64_out = args.output.as_deref() == Some("base64");
    let log_dir = std::env::temp_dir();
    let options = TestOptions {
        timeout: args.timeout,
        start_timeout: args.start_timeout,
        jobs: args.jobs.max(1),
        args: args.device.comfy_args(&args.args),
        log_dir,
        fetch_outputs: args.output.is_some(),
    };
    let reporter = context.reporter();
    let runtime = runtime()?;
    let suite = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            suite = test::run(&home, inputs, &options, reporter.as_ref()) => anyhow::Ok(Some(suite)),
            // Dropping the run drops its servers, which kills them.
            _ = interrupt.recv() => Ok(None),
            _ = terminate.recv() => Ok(None),
        }
    })?;
    let Some(suite) = suite else {
        eprintln!("interrupted: ComfyUI stopped");
        return Ok(Outcome::Exit(130));
    };
    if let Some(dir) = args.output.as_deref().filter(|_| !base64_out) {
        write_outputs(Path::new(dir), &suite.reports)?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit::report(&home.version_id, &suite.reports)).map_err(|e| {
            RunError::Io {
                path: path.clone(),
                source: e,
            }
        })?;
    }
    if base64_out {
        for r in &suite.reports {
            println!("{}", base64_document(r));
        }
    } else if context.json {
        context.print_json(&serde_json::json!({
            "version_id": home.version_id,
            "home": home.root,
            "generation": home.generation,
            "workflows": suite.reports,
        }))?;
    }
    for r in &suite.reports {
        let line = match r.status {
            Status::Passed => format!(
                "ok      {} ({:.2} s, {} output(s))",
                r.workflow,
                r.seconds,
                r.outputs.len()
            ),
            other => format!(
                "{:<7} {}: {}",
                serde_json::to_value(other)?.as_str().unwrap_or("failed"),
                r.workflow,
                r.message.as_deref().unwrap_or("")
            ),
        };
        eprintln!("{line}");
        for e in &r.errors {
            eprintln!("  {e}");
        }
    }
    if let Some(err) = &suite.not_started {
        eprintln!("error: {err}");
        return Ok(Outcome::Exit(2));
    }
    Ok(
        if suite.reports.iter().all(|r| r.status == Status::Passed) {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    )
}

/// `{"workflow", "status", "outputs": [{"node", "filename", "base64"}]}`, as the seed's handler.
fn base64_document(r: &WorkflowReport) -> serde_json::Value {
    let engine = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "workflow": r.workflow,
        "status": r.status,
        "prompt_id": r.prompt_id,
        "message": r.message,
        "errors": r.errors,
        "missing": r.missing,
        "outputs": r.outputs.iter().map(|o| serde_json::json!({
            "node": o.file.node,
            "filename": o.file.filename,
            "subfolder": o.file.subfolder,
            "type": o.file.kind,
            "base64": engine.encode(&o.bytes),
        })).collect::<Vec<_>>(),
    })
}

/// Outputs as files: `DIR/<workflow file stem>/<subfolder>/<filename>`.
fn write_outputs(dir: &Path, reports: &[WorkflowReport]) -> anyhow::Result<()> {
    let mut used = std::collections::BTreeSet::new();
    for r in reports {
        let stem = Path::new(&r.workflow)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workflow".into());
        let mut name = stem.clone();
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        for o in &r.outputs {
            // Names come from the server: keep them inside DIR.
            let safe = |s: &str| {
                Path::new(s)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            };
            if !safe(&o.file.filename) || !(o.file.subfolder.is_empty() || safe(&o.file.subfolder))
            {
                tracing::warn!(
                    "skipping output `{}`: not a plain file name",
                    o.file.filename
                );
                continue;
            }
            let at = dir
                .join(&name)
                .join(&o.file.subfolder)
                .join(&o.file.filename);
            std::fs::create_dir_all(at.parent().expect("has a parent"))?;
            std::fs::write(&at, &o.bytes)?;
            tracing::info!("wrote `{}`", at.display());
        }
    }
    Ok(())
}

/// `comfix check-workflow`: what each workflow needs that the home lacks, without running it.
/// `/object_info` comes from this generation's last start when known, else a short start.
pub fn check_workflow(args: CheckWorkflowArgs, context: &Context) -> anyhow::Result<Outcome> {
    let mut positional = args.args.clone();
    let id = if args.home.target.is_none() && args.home.spec.is_none() {
        Some(positional.remove(0))
    } else {
        None
    };
    if positional.is_empty() {
        anyhow::bail!(RunError::NoWorkflows("(none given)".into()));
    }
    let (home, _store) = args.home.open(id, context)?;
    let info = match home.cached_object_info().filter(|_| !args.fresh) {
        Some(info) => info,
        None => {
            let runtime = runtime()?;
            runtime.block_on(async {
                let log =
                    std::env::temp_dir().join(format!("comfyui-check-{}.log", std::process::id()));
                let mut server = Server::start(
                    &home.python(),
                    &home.core(),
                    &server::Options {
                        listen: "127.0.0.1".into(),
                        port: server::free_port()?,
                        args: args.device.comfy_args(&args.comfy_args),
                        output: server::Output::Log(log),
                    },
                )?;
                let result = match server.wait_ready(args.start_timeout).await {
                    Ok(()) => server.comfy.object_info().await,
                    Err(e) => Err(e),
                };
                server.stop();
                anyhow::Ok(result?)
            })?
        }
    };
    home.keep_object_info(&info);
    let reports: Vec<WorkflowReport> = positional
        .iter()
        .map(|file| {
            match crate::files::read_regular_text(file.as_ref(), crate::files::WORKFLOW_LIMIT) {
                Ok(text) => test::check(&home, file, &text, &info),
                Err(e) => test::unreadable(file, &e),
            }
        })
        .collect();
    if context.json {
        context.print_json(&reports)?;
    }
    for r in &reports {
        match r.status {
            Status::Passed => eprintln!("ok      {}", r.workflow),
            _ => eprintln!("{}: {}", r.workflow, r.message.as_deref().unwrap_or("")),
        }
    }
    Ok(if reports.iter().all(|r| r.status == Status::Passed) {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Version id, looked up in `versions/<ID>.json`, then `specs/<ID>.json`
    #[arg(value_name = "ID", conflicts_with = "spec")]
    pub id: Option<String>,
    #[command(flatten)]
    pub home: VersionHome,
    /// Take jobs from RunPod's serverless job API (`RUNPOD_WEBHOOK_GET_JOB`,
    /// `RUNPOD_WEBHOOK_POST_OUTPUT`, `RUNPOD_WEBHOOK_PING`, `RUNPOD_POD_ID`, `RUNPOD_AI_API_KEY`)
    #[arg(long, conflicts_with = "port")]
    pub runpod: bool,
    /// Without --runpod: serve RunPod's local test API (`POST /runsync`) on this port
    #[arg(long, value_name = "N", default_value_t = 8000)]
    pub port: u16,
    /// The address the local endpoint listens on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub listen: String,
    /// With --runpod: stop after N jobs (a worker that takes one job and is replaced)
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<usize>,
    /// How long one job may run
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How long ComfyUI may take to start answering
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    /// The most one input image may hold (decoded)
    #[arg(long, value_name = "SIZE", default_value = "25M", value_parser = super::gc::parse_size)]
    pub max_image_size: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Arguments for ComfyUI's `main.py`, after `--`
    #[arg(last = true, value_name = "COMFYUI_ARGS")]
    pub args: Vec<String>,
}

/// `comfix serve`: ComfyUI from the home, kept warm, running jobs from RunPod or a local endpoint.
pub fn serve(args: ServeArgs, context: &Context) -> anyhow::Result<Outcome> {
    use crate::serve::{runpod, Bucket, Worker, WorkerOptions};
    let env = |k: &str| std::env::var(k).ok();
    let endpoints = match args.runpod {
        true => Some(runpod::Endpoints::from_env(&env).map_err(super::UserInput)?),
        false => None,
    };
    let bucket = Bucket::from_env(&env).map_err(super::UserInput)?;
    let (home, _store) = args.home.open(args.id.clone(), context)?;
    let options = WorkerOptions {
        args: args.device.comfy_args(&args.args),
        start_timeout: args.start_timeout,
        job_timeout: args.timeout,
        max_image_bytes: usize::try_from(args.max_image_size).unwrap_or(usize::MAX),
        log_dir: std::env::temp_dir(),
        bucket,
    };
    let runtime = runtime()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut worker = Worker::start(home, options).await?;
        let served = async move {
            match &endpoints {
                Some(endpoints) => runpod::serve(&mut worker, endpoints, args.max_jobs)
                    .await
                    .map_err(anyhow::Error::msg),
                None => {
                    let listener =
                        tokio::net::TcpListener::bind((args.listen.as_str(), args.port)).await?;
                    let at = listener.local_addr()?;
                    // stdout carries the endpoint's URL only, as `run` prints ComfyUI's.
                    println!("http://{at}");
                    tracing::info!("POST http://{at}/runsync {{\"input\": {{\"workflow\": …}}}}");
                    crate::serve::http::serve(worker, listener).await?;
                    Ok(())
                }
            }
        };
        tokio::select! {
            result = served => result.map(|()| Outcome::Success),
            _ = interrupt.recv() => Ok(Outcome::Exit(130)),
            _ = terminate.recv() => Ok(Outcome::Exit(143)),
        }
    })
}
