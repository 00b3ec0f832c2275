//! The command-line interface: a thin layer over the library.
//!
//! stdout carries data only (with `--json`, one JSON document); logs and progress go to stderr,
//! and progress bars appear only on a terminal. Exit codes: 0 ok, 1 user error (bad spec,
//! missing input, hash mismatch, failed verification), 2 internal or I/O error.

mod adopt;
mod cache;
mod channel;
mod closure;
mod diff;
mod edit;
mod gc;
mod image;
mod models;
mod progress;
mod realize;
mod resolve;
mod run;
mod shell;
mod spec;
mod store;
mod trust;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::hint::Hint;

/// A Nix-style content-addressed store and builder for ComfyUI environments.
#[derive(Debug, Parser)]
#[command(
    name = "comfix",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("COMFIX_COMMIT"), ")"),
    about,
    max_term_width = 100
)]
pub struct Cli {
    /// Store directory [default: $COMFIX_STORE, else /runpod-volume/comfix-store when
    /// /runpod-volume exists, else $XDG_DATA_HOME/comfix/store]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print one JSON document on stdout instead of human-readable output
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr, with how long each step took (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less output on stderr: warnings and errors only (repeat for errors only)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Never show progress bars
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pin a spec into `<id>.lock.json` beside it and fetch what it pins into the store
    #[command(
        after_help = "Examples:\n  comfix resolve wan22\n  comfix resolve wan22 --update gguf\n  comfix resolve --spec versions/wan22.json --offline"
    )]
    Resolve(resolve::ResolveArgs),
    /// Realize a version as a new generation of a COMFY_HOME (resolving it first if needed)
    #[command(
        after_help = "Examples:\n  comfix realize wan22 --target ~/comfy-wan22\n  comfix realize wan22 --dry-run\n  comfix realize wan22 --check --target ~/comfy-wan22   # CI: exit 1 if behind or drifted\n  MODELS_DIR=/data/models comfix realize wan22 --link-mode copy"
    )]
    Realize(realize::RealizeArgs),
    /// Switch a home back to its previous generation
    #[command(after_help = "Examples:\n  comfix rollback --target ~/comfy-wan22")]
    Rollback(realize::HomeArgs),
    /// Show a home's generation, version and drift from what was realized
    #[command(
        after_help = "Examples:\n  comfix status --target ~/comfy-wan22\n  comfix status --check-contents --json"
    )]
    Status(realize::StatusArgs),
    /// List a home's generations with their versions and dates
    #[command(after_help = "Examples:\n  comfix history --target ~/comfy-wan22")]
    History(realize::HomeArgs),
    /// Show what differs between two versions' closures: core, nodes, models, with sizes
    #[command(
        after_help = "Examples:\n  comfix diff wan22 wan22-next\n  comfix diff versions/a.json versions/b.json\n  comfix diff --target ~/comfy-wan22 wan22-next"
    )]
    Diff(diff::DiffArgs),
    /// Delete store paths no root keeps alive, then unused objects, staging leftovers, partial
    /// downloads and git mirrors
    #[command(
        after_help = "Examples:\n  comfix gc --dry-run\n  comfix gc --delete-older-than 30d\n  comfix gc --max-freed 50G"
    )]
    Gc(gc::GcArgs),
    /// List the GC roots (home generations, pins, running processes) and what they keep alive
    #[command(after_help = "Examples:\n  comfix roots\n  comfix --json roots")]
    Roots,
    /// Inspect and maintain the store
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  comfix store ls\n  comfix store verify --check-contents --repair\n  comfix store du"
    )]
    Store(store::StoreCommand),
    /// Write a version's closure (store paths with their metadata, spec, lock) as one archive
    #[command(
        after_help = "Examples:\n  comfix export wan22 -o wan22.tar.zst\n  comfix export wan22 -o - --models required | ssh gpu-box comfix import -"
    )]
    Export(closure::ExportArgs),
    /// Verify and register the store paths of an archive `comfix export` wrote; print its versions
    #[command(
        after_help = "Examples:\n  comfix import wan22.tar.zst && comfix realize wan22 --offline\n  comfix import - < wan22.tar.zst"
    )]
    Import(closure::ClosureImportArgs),
    /// Container images of a version, from the store (OCI image layout)
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  comfix image build wan22 -o images/wan22\n  skopeo copy oci:images/wan22 docker://registry.example.com/comfy/wan22:latest"
    )]
    Image(image::ImageCommand),
    /// Maintain a binary cache (its owner's commands)
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  comfix cache prune s3://team-cache/comfix --keep-versions wan22 --dry-run"
    )]
    Cache(cache::CacheCommand),
    /// Channels: a signed pointer in a cache to a version, which machines follow
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  comfix channel publish s3://team-cache/comfix prod wan22 --sign-key ci.secret"
    )]
    Channel(channel::ChannelCommand),
    /// Realize the version a cache's channel points at into a home; with --test, keep the new
    /// generation only when its workflows pass (else go back, exit 1). Run it on a timer or at a
    /// worker's start
    #[command(
        after_help = "Examples:\n  comfix follow s3://team-cache/comfix prod --target /workspace/comfy --test -- --cpu\n  comfix follow https://cache.example.com/comfix staging --trusted-key \"$(cat ci.public)\""
    )]
    Follow(channel::FollowArgs),
    /// Signing keys for caches and exported closures
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  comfix key generate --name team-cache-1")]
    Key(trust::KeyCommand),
    /// Start ComfyUI from a home (realizing the version first when needed); its exit code is ours
    #[command(
        after_help = "Examples:\n  comfix run wan22\n  comfix run --target ~/comfy-wan22 --listen 0.0.0.0 --port 8188 -- --cpu"
    )]
    Run(run::RunArgs),
    /// Run a version's workflows headless in ComfyUI and check their outputs (CI: exit 1 when one
    /// fails, 2 when ComfyUI does not start)
    #[command(
        after_help = "Examples:\n  comfix test wan22\n  comfix test wan22 --workflow workflows/minimal.json --output base64\n  comfix test --target ~/comfy-wan22 --output out/ --junit report.xml -- --cpu"
    )]
    Test(run::TestArgs),
    /// Serve a version's workflows as jobs: ComfyUI from the home, kept warm; jobs from RunPod's
    /// serverless API (--runpod) or a local endpoint, in and out as worker-comfyui's
    #[command(
        after_help = "Examples:\n  comfix serve wan22 --runpod\n  comfix serve --target /workspace/comfy --port 8000 -- --cpu\n  curl -s localhost:8000/runsync -d '{\"input\": {\"workflow\": {…}}}'"
    )]
    Serve(run::ServeArgs),
    /// Check that a home has every node class and model file workflows need, without running them
    #[command(
        after_help = "Examples:\n  comfix check-workflow wan22 workflows/minimal.json\n  comfix check-workflow --target ~/comfy-wan22 a.json b.json"
    )]
    CheckWorkflow(run::CheckWorkflowArgs),
    /// Write the spec (and lock) of an existing ComfyUI install: core, custom nodes as
    /// ComfyUI-Manager identifies them, model files, Python distributions. The install is not
    /// changed (but with --link-models)
    #[command(
        after_help = "Examples:\n  comfix snapshot --comfy-path ~/ComfyUI --name my-version\n  comfix snapshot --comfy-path \"$COMFY_HOME\" --name wan22 --models-spec models/wan22.yml --link-models"
    )]
    Snapshot(adopt::SnapshotArgs),
    /// Check every model of a lock in a models directory by digest: missing, wrong, extra files;
    /// exit 1 if one is missing or wrong
    #[command(
        after_help = "Examples:\n  comfix verify-models --lock versions/wan22.lock.json --models-dir ~/comfy-wan22/models\n  comfix verify-models --lock versions/wan22.lock.json --models-dir /data/models --fix"
    )]
    VerifyModels(adopt::VerifyModelsArgs),
    /// The models index: model folders this machine has, taken from (verified) instead of
    /// downloaded
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  comfix models index ~/ComfyUI/models\n  comfix models ls"
    )]
    Models(models::ModelsCommand),
    /// Check version specs
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  comfix spec check wan22\n  comfix spec check --spec versions/wan22.json --json"
    )]
    Spec(spec::SpecCommand),
    /// Print a shell's completion script (bash's also completes version ids from `versions/`)
    #[command(
        after_help = "Examples:\n  comfix completions bash > ~/.local/share/bash-completion/completions/comfix\n  comfix completions zsh > ~/.zfunc/_comfix\n  comfix completions fish > ~/.config/fish/completions/comfix.fish"
    )]
    Completions(shell::CompletionsArgs),
    /// Print the manual page, or write one per command into a directory
    #[command(
        after_help = "Examples:\n  comfix man | man -l -\n  comfix man --dir ~/.local/share/man/man1"
    )]
    Man(shell::ManArgs),
    /// Start a new version: `versions/<ID>.json` with the core (resolved on first realize)
    #[command(
        after_help = "Examples:\n  comfix init wan22\n  comfix init mine --core https://github.com/comfyanonymous/ComfyUI --ref v0.3.40"
    )]
    Init(edit::InitArgs),
    /// Add to a version; what is added is resolved (with the rest of the lock kept) before the
    /// spec and lock are written together
    #[command(
        after_help = "Examples:\n  comfix add python wan22 einops 'opencv-python-headless>=4.8'\n  comfix add wan22 --from-workflow wan22_t2v.json --dry-run"
    )]
    Add(edit::AddArgs),
    /// Remove nodes, models or Python requirements from a version (spec and lock together)
    #[command(after_help = "Examples:\n  comfix remove wan22 ComfyUI-GGUF einops")]
    Remove(edit::RemoveArgs),
    /// What a version holds, with its pins and sizes
    #[command(after_help = "Examples:\n  comfix list wan22\n  comfix --json list wan22")]
    List(edit::ListArgs),
    /// Pin entries of a version again (`resolve --update`)
    #[command(after_help = "Examples:\n  comfix update wan22\n  comfix update wan22 ComfyUI-GGUF")]
    Update(edit::UpdateArgs),
}

/// How a command ended when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command ran but found problems (e.g. `store verify`): exit 1.
    Failure,
    /// Exit with this code (`run` passes ComfyUI's on).
    Exit(i32),
}

/// Settings every command needs.
pub struct Context {
    pub json: bool,
    pub store_dir: PathBuf,
    pub progress: bool,
}

impl Context {
    /// Print `value` as the command's one JSON document.
    pub fn print_json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        println!("{text}");
        Ok(())
    }

    pub fn open_store(&self) -> anyhow::Result<crate::store::Store> {
        Ok(crate::store::Store::open(&self.store_dir)?)
    }

    /// The store for a command that only reads it (or collects in it): a mistyped `--store` is
    /// an error, not a new empty store.
    pub fn open_existing_store(&self) -> anyhow::Result<crate::store::Store> {
        match crate::store::Store::open_existing(&self.store_dir)? {
            Some(store) => Ok(store),
            None => Err(crate::store::StoreError::Missing {
                root: self.store_dir.clone(),
            }
            .into()),
        }
    }

    pub fn reporter(&self) -> Box<dyn crate::reporter::Reporter> {
        if self.progress {
            Box::new(progress::BarReporter::new())
        } else {
            Box::new(crate::reporter::NoReporter)
        }
    }
}

/// Parse the arguments, run the command, and return the process exit code.
pub fn main() -> i32 {
    // Output piped into `head` ends quietly when the reader goes, like other Unix tools, instead
    // of a panic on the broken pipe.
    // SAFETY: restoring the default disposition of one signal, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err, std::env::args().any(|a| a == "--json")),
    };
    init_logging(cli.verbose, cli.quiet);
    let context = Context {
        json: cli.json,
        store_dir: cli
            .store
            .clone()
            .unwrap_or_else(|| crate::store::default_dir(|k| std::env::var(k).ok())),
        progress: !cli.no_progress && cli.quiet == 0 && std::io::stderr().is_terminal(),
    };
    let _ = crate::spec::STORE_DIR.set(context.store_dir.clone());
    let result = match cli.command {
        Command::Resolve(args) => resolve::run(args, &context),
        Command::Realize(args) => realize::realize(args, &context),
        Command::Rollback(args) => realize::rollback(args, &context),
        Command::Status(args) => realize::status(args, &context),
        Command::History(args) => realize::history(args, &context),
        Command::Diff(args) => diff::run(args, &context),
        Command::Gc(args) => gc::gc(args, &context),
        Command::Roots => gc::roots(&context),
        Command::Store(command) => store::run(command, &context),
        Command::Spec(command) => spec::run(command, &context),
        Command::Models(command) => models::run(command, &context),
        Command::Export(args) => closure::export(args, &context),
        Command::Import(args) => closure::import(args, &context),
        Command::Key(command) => trust::key(command, &context),
        Command::Cache(command) => cache::run(command, &context),
        Command::Channel(command) => channel::run(command, &context),
        Command::Image(command) => image::run(command, &context),
        Command::Follow(args) => channel::follow(args, &context),
        Command::Snapshot(args) => adopt::snapshot(args, &context),
        Command::VerifyModels(args) => adopt::verify_models(args, &context),
        Command::Run(args) => run::run(args, &context),
        Command::Test(args) => run::test(args, &context),
        Command::Serve(args) => run::serve(args, &context),
        Command::CheckWorkflow(args) => run::check_workflow(args, &context),
        Command::Init(args) => edit::init(args, &context),
        Command::Add(args) => edit::add(args, &context),
        Command::Remove(args) => edit::remove(args, &context),
        Command::List(args) => edit::list(args, &context),
        Command::Update(args) => edit::update(args, &context),
        Command::Completions(args) => shell::completions(args),
        Command::Man(args) => shell::man(args, &context),
    };
    match result {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::Failure) => 1,
        Ok(Outcome::Exit(code)) => code,
        Err(err) => report_error(&err, context.json),
    }
}

fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (_, 1) => "warn",
        (_, q) if q >= 2 => "error",
        (0, _) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COMFIX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("comfix={level}")));
    let ansi = colours_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
        std::env::var_os("CLICOLOR_FORCE"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = if verbose > 0 {
        // Each step's span (a derivation, a download, an import, a gc phase) says how long it
        // took when it closes; times need the timer on.
        builder
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .try_init()
    } else {
        builder.without_time().try_init()
    };
}

/// Colours on a terminal or with `CLICOLOR_FORCE`, never with `NO_COLOR` set to anything but the
/// empty string (no-color.org); `with_ansi` would otherwise override the subscriber's own check.
fn colours_wanted(
    terminal: bool,
    no_color: Option<std::ffi::OsString>,
    force: Option<std::ffi::OsString>,
) -> bool {
    let set = |v: &Option<std::ffi::OsString>| v.as_ref().is_some_and(|v| !v.is_empty());
    if set(&no_color) {
        return false;
    }
    // `CLICOLOR_FORCE` (bixense.com/clicolors): colours even into a pipe, unless it is `0`.
    terminal || (set(&force) && force.as_deref() != Some(std::ffi::OsStr::new("0")))
}

/// Find the library error in `err`'s chain that knows its hint and whether it is the user's.
/// Input the user gave that cannot be used (a file that is not what it should be), said as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserInput(pub String);

fn classify(err: &anyhow::Error) -> (bool, Option<String>) {
    for cause in err.chain() {
        // Every library error type knows its hint and whether it is the user's.
        macro_rules! hinted {
            ($($t:ty),*) => {
                $(if let Some(e) = cause.downcast_ref::<$t>() {
                    return (e.is_user_error(), e.hint());
                })*
            };
        }
        hinted!(
            crate::spec::SpecError,
            crate::store::StoreError,
            crate::fetch::FetchError,
            crate::lock::LockError,
            crate::realize::RealizeError,
            crate::python::PythonError,
            crate::sign::SignError,
            crate::closure::ClosureError,
            crate::derive::BuildError,
            crate::resolve::ResolveError,
            crate::session::SessionError,
            crate::run::RunError,
            crate::image::ImageError
        );
        if cause.downcast_ref::<UserInput>().is_some()
            || cause
                .downcast_ref::<crate::run::needs::NeedsError>()
                .is_some()
        {
            return (true, None);
        }
        if cause.downcast_ref::<diff::DiffUsage>().is_some() {
            return (true, Some("see `comfix diff --help`".into()));
        }
        if cause.downcast_ref::<diff::NoLock>().is_some() {
            return (
                true,
                Some(
                    "run `comfix resolve <ID>` (or `comfix resolve --spec FILE`) for it first"
                        .into(),
                ),
            );
        }
    }
    (false, None)
}

/// A command line clap could not take (or `--help`, `--version`): printed as clap prints it and,
/// for an error under `--json`, also as one JSON document on stdout shaped like every other error
/// (`error`, `causes`, `hint`, `exit`). Exit 1 for an error, 0 for help and version.
fn usage_error(err: &clap::Error, json: bool) -> i32 {
    let _ = err.print();
    if !err.use_stderr() {
        return 0;
    }
    if json {
        let text = err.render().to_string();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default();
        let error = first.strip_prefix("error: ").unwrap_or(first);
        let rest: Vec<&str> = lines.collect();
        let document = serde_json::json!({
            "error": error,
            "causes": [],
            "hint": (!rest.is_empty()).then(|| rest.join("\n")),
            "exit": 1,
        });
        println!("{document}");
    }
    1
}

/// Print `err` (with `--json`, also as one JSON document on stdout: `error`, `causes`, `hint`,
/// `exit`) and return the exit code: 1 for the user's errors, 2 for ours.
fn report_error(err: &anyhow::Error, json: bool) -> i32 {
    let (user, hint) = classify(err);
    let code = if user { 1 } else { 2 };
    let mut message = format!("error: {err}");
    let mut causes = Vec::new();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!("\n  caused by: {text}"));
            causes.push(text);
        }
    }
    eprintln!("{message}");
    if let Some(hint) = &hint {
        eprintln!("hint: {hint}");
    }
    if json {
        let document = serde_json::json!({
            "error": err.to_string(),
            "causes": causes,
            "hint": hint,
            "exit": code,
        });
        println!("{document}");
    }
    code
}

/// `1536` → `1.5 KiB`.
pub use crate::units::format_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every library error type is classified (the user's or ours, with its hint): named in
    /// `classify`, or only ever carried inside a classified one (listed here with its carrier,
    /// which must name it), or turned into another error where it is met (listed with where).
    #[test]
    fn every_error_type_is_classified() {
        const CARRIED: &[(&str, &str)] = &[
            ("RegisterError", "store/mod.rs"),
            ("WalkError", "store/mod.rs"),
            ("WorkflowError", "run/mod.rs"),
            ("BeneathError", "fetch/registry.rs"),
        ];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let this = std::fs::read_to_string(src.join("cli/mod.rs")).unwrap();
        let classify = &this[this.find("fn classify").unwrap()..];
        let classify = &classify[..classify.find("\n}\n").unwrap()];
        let mut unclassified = Vec::new();
        for entry in walkdir::WalkDir::new(&src).into_iter().flatten() {
            if entry.path().extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            for (at, _) in text.match_indices("thiserror::Error") {
                let after = &text[at..];
                let Some(decl) = after
                    .find("pub enum ")
                    .or_else(|| after.find("pub struct "))
                else {
                    continue;
                };
                let name: String = after[decl..]
                    .split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if classify.contains(&format!("{name},"))
                    || classify.contains(&format!("{name}\n"))
                    || classify.contains(&format!("{name}>"))
                {
                    continue;
                }
                match CARRIED.iter().find(|(t, _)| *t == name) {
                    Some((_, carrier)) => {
                        let carrier = std::fs::read_to_string(src.join(carrier)).unwrap();
                        assert!(carrier.contains(&name), "{name} is not in its carrier");
                    }
                    None => unclassified.push(format!("{name} ({})", entry.path().display())),
                }
            }
        }
        unclassified.sort();
        unclassified.dedup();
        assert!(unclassified.is_empty(), "unclassified: {unclassified:?}");
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_help_ends_with_examples() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.starts_with("Examples:\n  comfix") {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "comfix", &mut missing);
        assert!(missing.is_empty(), "no examples: {missing:?}");
    }

    #[test]
    fn no_color_turns_colours_off_and_clicolor_force_on() {
        assert!(colours_wanted(true, None, None));
        assert!(colours_wanted(true, Some("".into()), None));
        assert!(!colours_wanted(true, Some("1".into()), None));
        assert!(!colours_wanted(false, None, None));
        assert!(colours_wanted(false, None, Some("1".into())));
        assert!(!colours_wanted(false, None, Some("0".into())));
        assert!(!colours_wanted(false, None, Some("".into())));
        assert!(!colours_wanted(true, Some("1".into()), Some("1".into())));
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(format_bytes(10), "10 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
    }
}
