//! Inter-process locks of the store, all `flock(2)` locks the kernel releases when a process dies.
//!
//! - `gc.lock`: held *shared* by every process while it writes into the store (from the first
//!   temporary file to registration), *exclusive* by the garbage collector while it decides what
//!   to delete. Writers therefore never see GC delete what they are producing.
//! - `locks/<path-name>.lock`: held exclusive while one process builds that store path, so two
//!   processes never build the same path at once; the second waits, then finds it valid.
//! - `temproots/<pid>`: a process's temporary roots, one store path name a line; the process holds
//!   an exclusive lock on the file for as long as it lives, so a GC can tell live files from stale.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Take a shared lock on `path`, waiting for it.
pub fn shared(path: &Path) -> std::io::Result<LockGuard> {
    let file = open_lock_file(path)?;
    file.lock_shared()?;
    Ok(LockGuard {
        file,
        path: path.to_path_buf(),
    })
}

/// Try to lock the existing lock file `path` exclusively, without waiting and without creating
/// it (for lock files in directories comfix does not own, such as a home's). `None` when it is
/// missing or held.
pub fn try_exclusive_existing(path: &Path) -> std::io::Result<Option<LockGuard>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    try_lock(file, path)
}

/// Take an exclusive lock on `path`, waiting for it.
pub fn exclusive(path: &Path) -> std::io::Result<LockGuard> {
    let file = open_lock_file(path)?;
    file.lock()?;
    Ok(LockGuard {
        file,
        path: path.to_path_buf(),
    })
}

/// Try an exclusive lock on `path` without waiting; `None` if someone holds it.
pub fn try_exclusive(path: &Path) -> std::io::Result<Option<LockGuard>> {
    try_lock(open_lock_file(path)?, path)
}

fn try_lock(file: File, path: &Path) -> std::io::Result<Option<LockGuard>> {
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard {
            file,
            path: path.to_path_buf(),
        })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

/// This process's temporary roots file, created on first use.
#[derive(Debug)]
pub struct TempRoots {
    dir: PathBuf,
    file: Mutex<Option<File>>,
}

impl TempRoots {
    pub fn new(dir: PathBuf) -> Self {
        TempRoots {
            dir,
            file: Mutex::new(None),
        }
    }

    /// Record `name` as in use by this process until it exits.
    pub fn add(&self, name: &str) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let path = self.dir.join(std::process::id().to_string());
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .truncate(false)
                .open(&path)?;
            // A stale file of a dead process with our pid is ours to reuse.
            file.lock()?;
            file.set_len(0)?;
            *guard = Some(file);
        }
        let file = guard.as_mut().expect("opened above");
        writeln!(file, "{name}")?;
        file.flush()
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        let guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() {
            let _ = std::fs::remove_file(self.dir.join(std::process::id().to_string()));
        }
    }
}
