//! What several benches share: generated data and flushing the page cache's dirty pages.

#![allow(dead_code)]

use std::process::Command;

/// `len` bytes that do not compress (xorshift), different per `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Flush dirty pages before a timed step; with `COMFIX_BENCH_COLD=1` (root only) also drop the
/// page cache, so that the step reads from the disk as on a machine that just booted.
pub fn sync() {
    let _ = Command::new("sync").status();
    if std::env::var_os("COMFIX_BENCH_COLD").is_some_and(|v| v == "1") {
        std::fs::write("/proc/sys/vm/drop_caches", "3")
            .expect("COMFIX_BENCH_COLD=1 drops the page cache, which needs root");
    }
}

/// Remove what a bench round wrote (store paths and venvs are read-only), so that real-size runs
/// fit on the disk.
pub fn remove_tree(dir: &std::path::Path) {
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(dir).status();
    let _ = std::fs::remove_dir_all(dir);
}

/// The number in `$name`, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh directory for a bench's data under `$COMFIX_BENCH_DIR` (default: the temp dir).
pub fn work_dir() -> tempfile::TempDir {
    let base = std::env::var_os("COMFIX_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).unwrap()
}

/// An HTTP request's head, read byte by byte up to the blank line; `None` when the peer closed.
pub fn read_head(stream: &mut impl std::io::Read) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Run `git` in `dir` with a fixed identity; panics when it fails.
pub fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

static COLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, drop the page cache before each [`timed_cold`] timing; false when it cannot be
/// dropped (not root), and then nothing changes.
pub fn go_cold() -> bool {
    let can = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    COLD.store(can, std::sync::atomic::Ordering::Relaxed);
    can
}

/// [`timed`], with the page cache dropped first once [`go_cold`] said so: a step that reads
/// models of hundreds of GB, which are never in the cache.
pub fn timed_cold(cmd: &mut Command) -> std::time::Duration {
    if COLD.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
    timed(cmd)
}

/// How long `cmd` takes, dirty pages flushed first; panics when it fails.
pub fn timed(cmd: &mut Command) -> std::time::Duration {
    sync();
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}
