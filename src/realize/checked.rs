//! The no-op's shortcut: the stamps (mtime, inode) of a generation's directories as they were
//! when a full drift check last found every managed file in place, in `.comfix/checked.json`.
//!
//! While every directory keeps its stamp, no entry was added to, removed from, renamed in or
//! replaced in it since that check — which is how git, package managers, ComfyUI-Manager and
//! most editors write — so a `realize` of the same realization is a no-op without a look at the
//! 20,000 files of a big core. An edit that rewrites a file where it stands leaves its directory
//! alone: `status` and `realize --check` look at every file, and forget these stamps when they
//! find drift, so the next `realize` looks at every file too and heals it.

use std::fs;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::carry::DirStamp;
use super::link::Stamp;
use super::Home;

/// A directory stamp is trusted only when its mtime is this much older than the check that
/// recorded it: a change in the same clock tick as the check would leave the same mtime (git's
/// "racily clean" entries).
const RACY_NS: i128 = 1_000_000_000;

const FILE: &str = "checked.json";

#[derive(Debug, Serialize, Deserialize)]
struct Checked {
    generation: u32,
    /// When the stamps were taken (before the files were looked at), in ns since the epoch.
    taken_ns: i128,
    dirs: Vec<DirStamp>,
}

/// The stamps of generation `n`'s directories (the ones `dirs.json` lists) as they are now,
/// taken before a full check looks at the files; `None` when the generation has no `dirs.json`.
/// A directory gone is left out: its managed files show as missing in the check (and then
/// nothing is recorded), and it cannot come back without changing its parent's stamp.
pub(super) fn take(home: &Home, n: u32) -> Option<(i128, Vec<DirStamp>)> {
    let dir = home.generation_dir(n);
    let listed: Vec<DirStamp> =
        serde_json::from_slice(&fs::read(dir.join("dirs.json")).ok()?).ok()?;
    let fd = open_dir(&dir).ok()?;
    let taken_ns = now_ns();
    let dirs: Vec<DirStamp> = listed
        .into_par_iter()
        .filter_map(|d| {
            let now = Stamp::at(&fd, d.path.as_str())?;
            Some(DirStamp {
                path: d.path,
                mtime_ns: now.mtime_ns,
                ino: now.ino,
            })
        })
        .collect();
    Some((taken_ns, dirs))
}

/// Record `dirs` (from [`take`]) as generation `n`'s after a full check found nothing drifted.
/// Best effort: without the file the next no-op looks at every file.
pub(super) fn record(home: &Home, n: u32, (taken_ns, dirs): (i128, Vec<DirStamp>)) {
    let checked = Checked {
        generation: n,
        taken_ns,
        dirs,
    };
    let path = home.meta().join(FILE);
    let tmp = home.meta().join(format!("{FILE}.tmp"));
    let text = serde_json::to_vec(&checked).expect("serializable");
    if fs::write(&tmp, text)
        .and_then(|_| fs::rename(&tmp, &path))
        .is_err()
    {
        let _ = fs::remove_file(&tmp);
    }
}

/// Forget the recorded stamps (a check found drift: the next realize must look at every file).
pub(super) fn forget(home: &Home) {
    let _ = fs::remove_file(home.meta().join(FILE));
}

/// Whether every directory of generation `n` still has the stamp a clean full check recorded.
pub(super) fn untouched(home: &Home, n: u32) -> bool {
    let Some(checked) = fs::read(home.meta().join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Checked>(&b).ok())
    else {
        return false;
    };
    if checked.generation != n || checked.dirs.is_empty() {
        return false;
    }
    // Relative to the generation's directory: a short path walk for each of thousands.
    let Ok(dir) = open_dir(&home.generation_dir(n)) else {
        return false;
    };
    checked.dirs.par_iter().all(|d| {
        d.mtime_ns < checked.taken_ns - RACY_NS
            && Stamp::at(&dir, d.path.as_str())
                .is_some_and(|now| now.mtime_ns == d.mtime_ns && now.ino == d.ino)
    })
}

/// A directory opened to look up names in it (`O_PATH`: no read permission needed).
pub(super) fn open_dir(path: &std::path::Path) -> rustix::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn home_with_generation(root: &Path) -> Home {
        let home = Home::new(root).expect("home");
        let gen = home.generation_dir(1);
        fs::create_dir_all(gen.join("ComfyUI/comfy")).expect("dirs");
        let dirs = super::super::carry::dir_stamps(&gen);
        fs::write(
            gen.join("dirs.json"),
            serde_json::to_vec(&dirs).expect("json"),
        )
        .expect("dirs.json");
        home
    }

    fn backdate(path: &Path, secs: u64) {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        fs::File::open(path)
            .and_then(|f| f.set_modified(when))
            .expect("set mtime");
    }

    #[test]
    fn a_changed_or_recent_directory_is_not_trusted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let home = home_with_generation(tmp.path());
        let comfy = home.generation_dir(1).join("ComfyUI");
        // Just written: racily clean, so not trusted even though nothing changed since.
        record(&home, 1, take(&home, 1).expect("stamps"));
        assert!(!untouched(&home, 1));
        backdate(&comfy, 10);
        backdate(&comfy.join("comfy"), 10);
        record(&home, 1, take(&home, 1).expect("stamps"));
        assert!(untouched(&home, 1));
        assert!(!untouched(&home, 2), "another generation's stamps");
        // A file added (or removed, renamed, replaced) changes the directory's mtime.
        fs::write(comfy.join("comfy/new.py"), b"x").expect("write");
        assert!(!untouched(&home, 1));
        backdate(&comfy.join("comfy"), 10);
        record(&home, 1, take(&home, 1).expect("stamps"));
        assert!(untouched(&home, 1));
        forget(&home);
        assert!(!untouched(&home, 1));
        // An empty directory gone (no managed file in it to miss): left out of the record, and
        // its parent's changed stamp is what the next no-op sees.
        fs::remove_file(comfy.join("comfy/new.py")).expect("rm");
        fs::remove_dir(comfy.join("comfy")).expect("rmdir");
        assert!(!untouched(&home, 1));
        backdate(&comfy, 10);
        let (_, dirs) = take(&home, 1).expect("stamps");
        assert_eq!(dirs.len(), 1, "only ComfyUI/ is left");
        record(&home, 1, take(&home, 1).expect("stamps"));
        assert!(untouched(&home, 1));
    }
}
