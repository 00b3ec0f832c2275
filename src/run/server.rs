//! The ComfyUI process of a home: started with the home's interpreter in its own process group
//! (so it and every child it starts are stopped together), and stopped for certain.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::Comfy;
use super::RunError;

/// How long a stopped ComfyUI gets to exit after SIGINT before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Where ComfyUI's output goes.
pub enum Output {
    /// comfix's stderr (for `comfix run`).
    Inherit,
    /// A log file (for tests: its tail explains a failed start).
    Log(PathBuf),
}

pub struct Options {
    /// The address ComfyUI listens on (`--listen`).
    pub listen: String,
    pub port: u16,
    /// More arguments for `main.py`.
    pub args: Vec<String>,
    pub output: Output,
}

/// A running ComfyUI. Dropping it kills its process group.
pub struct Server {
    child: Child,
    pub comfy: Comfy,
    pub log: Option<PathBuf>,
    exited: Option<ExitStatus>,
}

/// A port ComfyUI may listen on: 127.0.0.1's next free one.
pub fn free_port() -> Result<u16, RunError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| RunError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source: e,
    })?;
    Ok(listener.local_addr().map(|a| a.port()).unwrap_or(0))
}

/// Refuse a port something else already listens on (ComfyUI would fail after loading).
pub fn check_port(listen: &str, port: u16) -> Result<(), RunError> {
    match std::net::TcpListener::bind((listen, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(RunError::PortInUse {
            listen: listen.to_string(),
            port,
        }),
        Err(_) => Ok(()), // e.g. an address of another machine: let ComfyUI say
    }
}

/// The address to reach a server listening on `listen`.
fn reach(listen: &str) -> &str {
    match listen {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "[::1]",
        other => other.split(',').next().unwrap_or(other),
    }
}

impl Server {
    /// Start `python main.py --listen … --port …` in the home's `ComfyUI/`.
    pub fn start(python: &Path, core: &Path, options: &Options) -> Result<Server, RunError> {
        let main = core.join("main.py");
        if !main.is_file() {
            return Err(RunError::NoCore(core.to_path_buf()));
        }
        let mut command = Command::new(python);
        command
            .arg("main.py")
            .args([
                "--listen",
                &options.listen,
                "--port",
                &options.port.to_string(),
            ])
            .args(&options.args)
            .current_dir(core)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .process_group(0);
        // Signals comfix was started ignoring (a script's `cmd &`, `nohup`) would be ignored by
        // ComfyUI too — `exec` keeps ignored signals — and the ones comfix forwards would never
        // stop it: it starts with the default dispositions.
        // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        let log = match &options.output {
            Output::Inherit => {
                // stdout carries comfix's data only (the URL): ComfyUI's output goes to stderr.
                use std::os::fd::AsFd;
                if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
                    command.stdout(Stdio::from(err));
                }
                None
            }
            Output::Log(path) => {
                let file = fs::File::create(path).map_err(|e| RunError::Io {
                    path: path.clone(),
                    source: e,
                })?;
                let err = file.try_clone().map_err(|e| RunError::Io {
                    path: path.clone(),
                    source: e,
                })?;
                command.stdout(file).stderr(err);
                Some(path.clone())
            }
        };
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| RunError::Spawn {
            python: python.to_path_buf(),
            source: e,
        })?;
        let host = reach(&options.listen);
        Ok(Server {
            child,
            comfy: Comfy::new(&format!("http://{host}:{}", options.port)),
            log,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether ComfyUI has exited (and how).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Wait until the server answers, it exits, or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), RunError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(status) = self.exited() {
                return Err(self.not_started(format!("it exited ({})", describe(status))));
            }
            let cause = match self.comfy.probe().await {
                Ok(()) => return Ok(()),
                Err(cause) => cause,
            };
            if Instant::now() >= deadline {
                return Err(self.not_started(format!(
                    "it did not answer {} within {} (last try: {cause})",
                    self.comfy.base,
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn not_started(&self, reason: String) -> RunError {
        RunError::NotStarted {
            reason,
            log: self.log.clone(),
            tail: self.log_tail(20),
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(text) = self.log.as_ref().and_then(|l| fs::read(l).ok()) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Send `signal` to ComfyUI's process group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our child's process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), signal);
        }
    }

    /// Wait for ComfyUI to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop ComfyUI and everything it started: SIGINT (ComfyUI's Ctrl-C), SIGKILL after a grace
    /// period; returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        if self.exited().is_none() {
            self.signal(libc::SIGINT);
            let deadline = Instant::now() + GRACE;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Children it left behind go too.
        self.signal(libc::SIGKILL);
        match self.exited {
            Some(status) => status,
            None => {
                let status = self.child.wait().expect("waiting for our own child");
                self.exited = Some(status);
                status
            }
        }
    }
}

impl Drop for Server {
    /// Not stopped yet (an error, a dropped run on Ctrl-C): kill the group now. A stopped
    /// server's group is gone; its id is not signalled again.
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Exit status in words: `exit code 3`, `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The shell's exit code for a status: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// On Linux, ComfyUI gets SIGKILL when comfix dies (even by SIGKILL), so no server outlives
/// the command that started it.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
        let parent = std::process::id() as i32;
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

use std::os::unix::process::CommandExt as _;
