//! Inter-process locks of the store, all `flock(2)` locks the kernel releases when a process dies.
//!
//! - `gc.lock`: held *shared* by every process while it writes into the store (from the first
//!   temporary file to registration), *exclusive* by the garbage collector while it decides what
//!   to delete. Writers therefore never see GC delete what they are producing.
//! - `locks/<path-name>.lock`: held exclusive while one process builds that store path, so two
//!   processes never build the same path at once; the second waits, then finds it valid.
//! - `temproots/<pid>`: a process's temporary roots, one store path name a line; the process holds
//!   an exclusive lock on the file for as long as it lives, so a GC can tell live files from stale.
//!
//! Lock files may be removed while held ([`LockGuard::remove`]: the collector does it to stale
//! download, build and mirror locks). Every taker therefore checks, once it holds the lock, that
//! the file it locked is still the one at the path, and starts again when it is not — so two
//! processes never both hold "the" lock of a path, one on a removed file and one on a new one.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

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

    /// Remove the lock file while holding it, then release it. A process waiting on the removed
    /// file finds it gone once it gets it, and locks a new one (see the module docs).
    pub fn remove(self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Whether the locked `file` is still the file at `path` (it was not removed or replaced while
/// this process waited for it).
fn still_there(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
    match opened {
        // A store this process cannot write (read-only mount, no permission): flock(2) works on
        // a read-only descriptor of the existing file.
        Err(e)
            if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem
                || e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            OpenOptions::new().read(true).open(path).map_err(|_| e)
        }
        other => other,
    }
}

/// Take a shared lock on `path`, waiting for it.
pub fn shared(path: &Path) -> std::io::Result<LockGuard> {
    wait_for(path, File::lock_shared)
}

/// Lock `path` with `lock`, waiting for it; again when the file was replaced meanwhile (a
/// collector removed a stale lock file and another process made a new one).
fn wait_for(path: &Path, lock: fn(&File) -> std::io::Result<()>) -> std::io::Result<LockGuard> {
    loop {
        let file = open_lock_file(path)?;
        lock(&file)?;
        if still_there(&file, path)? {
            return Ok(LockGuard {
                file,
                path: path.to_path_buf(),
            });
        }
    }
}

/// Try to lock the existing lock file `path` exclusively, without waiting and without creating
/// it (for lock files in directories comfix does not own, such as a home's). `None` when it is
/// missing or held.
pub fn try_exclusive_existing(path: &Path) -> std::io::Result<Option<LockGuard>> {
    // Read-only is enough for flock(2), and works on a read-only store.
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(match try_lock(file, path)? {
        Locked::Held(guard) => Some(guard),
        Locked::Busy | Locked::Removed => None,
    })
}

/// Whether another process holds the lock file `path` (missing: no). Looks only: creates
/// nothing and keeps no lock.
pub fn held_elsewhere(path: &Path) -> std::io::Result<bool> {
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

/// Take an exclusive lock on `path`, waiting for it.
pub fn exclusive(path: &Path) -> std::io::Result<LockGuard> {
    wait_for(path, File::lock)
}

/// Try an exclusive lock on `path` without waiting; `None` if someone holds it.
pub fn try_exclusive(path: &Path) -> std::io::Result<Option<LockGuard>> {
    loop {
        match try_lock(open_lock_file(path)?, path)? {
            Locked::Held(guard) => return Ok(Some(guard)),
            Locked::Busy => return Ok(None),
            Locked::Removed => continue,
        }
    }
}

enum Locked {
    Held(LockGuard),
    Busy,
    /// Got, but the file had been removed meanwhile.
    Removed,
}

fn try_lock(file: File, path: &Path) -> std::io::Result<Locked> {
    match file.try_lock() {
        Ok(()) if still_there(&file, path)? => Ok(Locked::Held(LockGuard {
            file,
            path: path.to_path_buf(),
        })),
        Ok(()) => Ok(Locked::Removed),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Locked::Busy),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

/// This process's temporary roots file, created on first use and shared by every `Store` of the
/// same root in the process: a second open of the file would wait on the first's `flock` forever
/// (locks belong to the open file, not the process), and its truncation would drop the first's
/// roots.
#[derive(Debug)]
pub struct TempRoots {
    dir: PathBuf,
    file: Mutex<Option<Arc<Mutex<OpenRoots>>>>,
}

/// An open temporary roots file and the names written to it: a name is written once (a
/// realize protects each of a version's paths when resolving, planning and assembling).
#[derive(Debug)]
struct OpenRoots {
    file: File,
    written: HashSet<String>,
}

/// The temporary roots files this process has open, by path.
fn open_temp_roots() -> &'static Mutex<HashMap<PathBuf, Arc<Mutex<OpenRoots>>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<OpenRoots>>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

impl TempRoots {
    pub fn new(dir: PathBuf) -> Self {
        TempRoots {
            dir,
            file: Mutex::new(None),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(std::process::id().to_string())
    }

    /// Record `name` as in use by this process until it exits.
    pub fn add(&self, name: &str) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let path = self.path();
            let mut open = open_temp_roots().lock().unwrap_or_else(|e| e.into_inner());
            let shared = match open.get(&path) {
                Some(shared) => shared.clone(),
                None => {
                    let file = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .truncate(false)
                        .open(&path)?;
                    // A stale file of a dead process with our pid is ours to reuse.
                    file.lock()?;
                    file.set_len(0)?;
                    let shared = Arc::new(Mutex::new(OpenRoots {
                        file,
                        written: HashSet::new(),
                    }));
                    open.insert(path, shared.clone());
                    shared
                }
            };
            *guard = Some(shared);
        }
        let shared = guard.as_ref().expect("opened above");
        let mut open = shared.lock().unwrap_or_else(|e| e.into_inner());
        if open.written.contains(name) {
            return Ok(());
        }
        writeln!(open.file, "{name}")?;
        open.file.flush()?;
        open.written.insert(name.to_string());
        Ok(())
    }

    /// Whether `name` is already recorded (by any `Store` of this root in the process).
    pub fn has(&self, name: &str) -> bool {
        let guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().is_some_and(|shared| {
            shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .written
                .contains(name)
        })
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(shared) = guard.take() else {
            return;
        };
        let path = self.path();
        let mut open = open_temp_roots().lock().unwrap_or_else(|e| e.into_inner());
        // The last handle of the process (the map holds the other reference) removes the file.
        if Arc::strong_count(&shared) == 2 {
            open.remove(&path);
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// Two stores of one root in one process share the process's temporary roots file: neither
    /// waits on the other's lock (it did: an export that opened a session deadlocked), neither
    /// truncates the other's roots, and the file goes with the last of them.
    #[test]
    fn two_handles_in_one_process_share_the_temp_roots_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = TempRoots::new(dir.path().to_path_buf());
        first.add("a-first").unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let second = TempRoots::new(path);
            let added = second.add("b-second");
            sender.send((second, added)).unwrap();
        });
        let (second, added) = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second handle waited on the first's lock");
        added.unwrap();
        let file = dir.path().join(std::process::id().to_string());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, "a-first\nb-second\n");
        drop(first);
        assert!(
            file.exists(),
            "the second handle's roots went with the first"
        );
        drop(second);
        assert!(!file.exists());
    }

    /// A lock file removed by its holder while others wait for it is never held twice: the
    /// waiter that gets the removed file starts again on the new one. Looped, with the removal
    /// and the waiters racing differently each time.
    #[test]
    fn a_removed_lock_file_is_never_held_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("x.lock"));
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for round in 0..200 {
            let start = Arc::new(Barrier::new(4));
            let workers: Vec<_> = (0..4)
                .map(|i| {
                    let (path, inside, start) = (path.clone(), inside.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        if (i + round) % 3 == 0 {
                            std::thread::yield_now();
                        }
                        let guard = exclusive(&path).unwrap();
                        let before = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(before, 0, "two holders at once (round {round})");
                        std::thread::yield_now();
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        if i % 2 == 0 {
                            guard.remove().unwrap();
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
        }
    }
}
