//! Test helpers: a private environment per test that runs the real binary.

#![allow(dead_code)]

pub mod git;
pub mod git_http;
pub mod http;
pub mod rig;
pub mod runpod;
pub mod s3;
pub mod tls;
pub mod wheels;
pub mod world;

pub use rig::*;
pub use world::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test's own store, working directory and environment.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub work: PathBuf,
    started: std::time::Instant,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("comfix-test-")
            .tempdir()
            .expect("create a temporary directory");
        let store = dir.path().join("store");
        let work = dir.path().join("work");
        fs::create_dir_all(&work).unwrap();
        TestEnv {
            dir,
            store,
            work,
            started: std::time::Instant::now(),
        }
    }

    /// A `comfix` command with `--store` set, run in the work directory, with a clean environment.
    pub fn cmd(&self) -> Command {
        let mut cmd = self.cmd_without_store();
        cmd.arg("--store").arg(&self.store);
        cmd
    }

    /// Like [`TestEnv::cmd`], for a test that chooses its own `--store`.
    pub fn cmd_without_store(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfix"));
        cmd.current_dir(&self.work);
        users_world(&mut cmd);
        cmd.env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.dir.path().join("xdg"))
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg-cache"));
        cmd
    }

    /// Run comfix with `args`; returns the output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run comfix")
    }

    /// Run comfix and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "comfix {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Run comfix with `--json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
    }

    /// `store add PATH`, returning the printed store path.
    pub fn add(&self, path: &Path) -> PathBuf {
        PathBuf::from(self.ok(&["store", "add", path.to_str().unwrap()]).trim())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Every object file in the store.
    pub fn objects(&self) -> Vec<PathBuf> {
        walkdir::WalkDir::new(self.store.join("objects"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect()
    }

    /// Bytes used by distinct inodes under the store's `objects/` and `paths/` (what `du` counts).
    /// Bytes on disk of the store (its database left out) and of `homes`, as GNU `du -B1`
    /// counts them (allocated blocks, each inode once across all of them).
    pub fn disk_bytes(&self, homes: &[&Path]) -> u64 {
        let out = Command::new("du")
            .args(["-s", "-c", "-B1"])
            .arg(format!("--exclude={}", self.store.join("db").display()))
            .arg(&self.store)
            .args(homes.iter().filter(|h| h.exists()))
            .output()
            .expect("du runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let total = text.lines().last().expect("du prints a total");
        total
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number")
    }

    pub fn content_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        for top in ["objects", "paths"] {
            for entry in walkdir::WalkDir::new(self.store.join(top))
                .into_iter()
                .flatten()
            {
                if entry.file_type().is_file() {
                    let meta = entry.metadata().unwrap();
                    if seen.insert((meta.dev(), meta.ino())) {
                        total += meta.len();
                    }
                }
            }
        }
        total
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        record_duration(self.started.elapsed());
        // Store directories are read-only; make them writable so the temp dir can be removed.
        for entry in walkdir::WalkDir::new(self.dir.path()).into_iter().flatten() {
            if entry.file_type().is_dir() {
                let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
            }
        }
    }
}

/// A command's exit 0, or the test fails showing both streams; the output, for what the test
/// checks next.
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "the command failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    out
}

/// A command's failure whose stderr says `needle`, or the test fails showing what it said; the
/// stderr, for what the test checks next.
pub fn fails_with(out: &Output, needle: &str) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a failure saying {needle:?}, got exit 0\nstdout: {}\nstderr: {err}",
        stdout(out)
    );
    assert!(
        err.contains(needle),
        "expected the error to say {needle:?}\nstderr: {err}"
    );
    err
}

/// The stderr of a command that said `needle` (whatever its exit code).
pub fn says(out: &Output, needle: &str) -> String {
    let err = stderr(out);
    assert!(
        err.contains(needle),
        "expected {needle:?} in stderr:\n{err}"
    );
    err
}

/// A JSON file, parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A command's stdout, parsed as the one JSON document `--json` prints.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

/// The derivation of kind `kind` in the report of a `realize --json`.
pub fn derivation_of(out: &Output, kind: &str) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    report["derivations"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["kind"] == kind))
        .unwrap_or_else(|| panic!("no `{kind}` derivation in {report}"))
        .clone()
}

/// Wait for every spawned command; each must exit 0.
pub fn all_ok(children: Vec<std::process::Child>) {
    for child in children {
        ok(child.wait_with_output().expect("wait for a command"));
    }
}

/// [`ok`] and [`fails_with`] for a command not yet run.
pub trait Expect {
    fn ok(&mut self) -> Output;
    fn fails_with(&mut self, needle: &str) -> String;
}

impl Expect for Command {
    fn ok(&mut self) -> Output {
        ok(self.output().expect("run comfix"))
    }

    fn fails_with(&mut self, needle: &str) -> String {
        fails_with(&self.output().expect("run comfix"), needle)
    }
}

/// Appends `<seconds>\t<test>` to `$COMFIX_TEST_TIMES` (set by `scripts/test.sh`, which prints
/// the slowest tests after the run): libtest names each test's thread after the test, and a
/// test's `TestEnv` lives from its first line to its last. One short `O_APPEND` write per line,
/// so tests running side by side do not mix their lines.
fn record_duration(elapsed: std::time::Duration) {
    use std::io::Write;
    let (Some(file), Some(name)) = (
        std::env::var_os("COMFIX_TEST_TIMES"),
        std::thread::current().name().map(str::to_string),
    ) else {
        return;
    };
    let line = format!("{:.2}\t{name}\n", elapsed.as_secs_f64());
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// A port on 127.0.0.1 where nothing listens, for as long as it is held: a socket bound to it
/// but never listening, so connections are refused and no other test's server can take the
/// port (a port freed again would be: that raced in CI).
pub struct ClosedPort {
    fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            );
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            libc::getsockname(
                fd.as_raw_fd(),
                &mut addr as *mut _ as *mut libc::sockaddr,
                &mut len,
            );
            ClosedPort {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }

    pub fn url(&self) -> String {
        let _ = &self.fd;
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A TCP server on 127.0.0.1 that accepts every connection and never answers: what a hung
/// endpoint looks like to a client (the connection succeeds, no byte ever comes back).
pub struct BlackHole {
    pub port: u16,
    held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
            }
        });
        BlackHole { port, held }
    }

    /// How many connections it has taken.
    pub fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

/// The environment a user's fresh shell has, not the developer's: nothing but an allow-list
/// (`PATH`, `TMPDIR`, the locale) reaches the program, so no `PYTHONDONTWRITEBYTECODE`,
/// `COMFY_HOME`, `MODELS_DIR`, `HF_*`, `AWS_*`, `UV_*` or `COMFIX_*` of the shell changes what a
/// test sees. A test sets what it needs on top.
pub fn users_world(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for name in ["PATH", "TMPDIR", "LANG", "LC_ALL"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd
}

/// A Python with PyYAML for the tests' own checks: `$COMFIX_TEST_PYTHON` (set by
/// `scripts/test.sh`), else `python3`.
pub fn tool_python() -> Command {
    Command::new(std::env::var_os("COMFIX_TEST_PYTHON").unwrap_or_else(|| "python3".into()))
}

/// The uv binary the tests use: `$COMFIX_UV`, else `uv` on PATH, with its links resolved (the
/// file itself, not a shim: `scripts/test-tools.sh` links the binary of uv's wheel).
pub fn uv_binary() -> PathBuf {
    if let Some(uv) = std::env::var_os("COMFIX_UV") {
        return fs::canonicalize(uv).expect("COMFIX_UV exists");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("uv"))
        .find(|p| p.is_file())
        .map(|p| fs::canonicalize(p).unwrap())
        .expect("uv on PATH: run the tests with scripts/test.sh, which installs it")
}

/// `cmd` run without a network: in a network namespace of its own (`unshare -n`, root only)
/// with nothing but loopback, which is brought up so a ComfyUI can listen on it. Not as root:
/// `cmd` as it is, said so (the test still runs, with the machine's network).
pub fn without_network(cmd: &Command) -> Command {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!(
            "not root: no network namespace (`unshare -n` needs root); the command runs on the machine's network"
        );
        let mut same = Command::new(cmd.get_program());
        same.args(cmd.get_args());
        same.env_clear();
        for (key, value) in cmd.get_envs() {
            if let Some(value) = value {
                same.env(key, value);
            }
        }
        if let Some(dir) = cmd.get_current_dir() {
            same.current_dir(dir);
        }
        return same;
    }
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("`ip` (iproute2; .ci/run installs it)");
    let unshare = ["/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("`unshare` (util-linux)");
    // By its path: the command's own PATH (set below) may not have it.
    let mut outer = Command::new(unshare);
    users_world(&mut outer);
    outer
        .args(["-n", "/bin/sh", "-c"])
        .arg(format!("{ip} link set lo up && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => outer.env(key, value),
            None => outer.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        outer.current_dir(dir);
    }
    outer
}

/// A directory holding links to the machine's Python (as `python3` and `python3.X`) and nothing
/// else: a PATH for a machine without uv.
pub fn path_with_python_only(dir: &Path) -> PathBuf {
    let found = tool_python_of("python3")
        .args([
            "-c",
            "import sys; print(sys.executable, '%d.%d' % sys.version_info[:2])",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&found.stdout).to_string();
    let (python, minor) = text.trim().rsplit_once(' ').unwrap();
    fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::symlink(python, dir.join("python3")).unwrap();
    std::os::unix::fs::symlink(python, dir.join(format!("python{minor}"))).unwrap();
    dir.to_path_buf()
}

fn tool_python_of(name: &str) -> Command {
    let mut cmd = Command::new(name);
    users_world(&mut cmd);
    cmd
}

/// Write `files` (relative path, contents) under `root`, creating directories.
pub fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (rel, contents) in files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
    }
}

pub fn set_executable(path: &Path, executable: bool) {
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).unwrap().ino()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file's contents as a 0444 file may need to be rewritten: make it writable first.
pub fn overwrite(path: &Path, contents: &[u8]) {
    let mut perms = fs::metadata(path).unwrap().permissions();
    let mode = perms.mode();
    perms.set_mode(mode | 0o200);
    fs::set_permissions(path, perms).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Wait until `path` exists, failing if `child` exits first or a minute passes.
pub fn wait_for(path: &Path, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the process exited ({status}) before {}", path.display());
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
