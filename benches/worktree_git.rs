//! The objects of a home's `.git` (a depth-1 copy of the locked commit from the store's mirror),
//! for a core of 20,000 files (`COMFIX_BENCH_GIT_FILES`), three ways in the same run:
//!
//! - `packed`: [`comfix::fetch::git::copy_commit_packed`], what realize does: one pack, objects
//!   compressed on several threads, indexed by libgit2;
//! - `loose`: the same objects written one file each by several threads (what realize did before);
//! - `git clone --depth 1 --no-checkout file://<mirror>`: git's own shallow clone, the baseline.
//!
//! Run: `cargo bench --bench worktree_git`. Data under `COMFIX_BENCH_DIR`; best of 5.

use std::path::Path;
use std::time::{Duration, Instant};

use git2::{ObjectType, Oid, Repository};
use rayon::prelude::*;

mod common;
use common::{env_usize, git, sync, work_dir};

fn write_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("pkg{:02}/sub{:02}", i % 40, i % 13));
        std::fs::create_dir_all(&dir).unwrap();
        let size = 300 + (i * 7919) % 6000;
        let text: String = (0..size)
            .map(|j| (b'a' + ((i * 31 + j * 7) % 26) as u8) as char)
            .collect();
        std::fs::write(dir.join(format!("f{i}.py")), text).unwrap();
    }
}

/// Every tree and blob of `commit`'s tree.
fn objects(repo: &Repository, commit: Oid) -> Vec<Oid> {
    let mut ids = Vec::new();
    let mut stack = vec![repo.find_commit(commit).unwrap().tree_id()];
    while let Some(tree) = stack.pop() {
        ids.push(tree);
        for entry in repo.find_tree(tree).unwrap().iter() {
            match entry.kind() {
                Some(ObjectType::Tree) => stack.push(entry.id()),
                Some(ObjectType::Blob) => ids.push(entry.id()),
                _ => {}
            }
        }
    }
    ids
}

fn loose(mirror: &Path, dst: &Path, commit: Oid) {
    Repository::init(dst).unwrap();
    let ids = objects(&Repository::open_bare(mirror).unwrap(), commit);
    ids.par_chunks(128).for_each(|chunk| {
        let (src, to) = (
            Repository::open_bare(mirror).unwrap(),
            Repository::open(dst).unwrap(),
        );
        let (from, to) = (src.odb().unwrap(), to.odb().unwrap());
        for id in chunk {
            let object = from.read(*id).unwrap();
            to.write(object.kind(), object.data()).unwrap();
        }
    });
    let src = Repository::open_bare(mirror).unwrap();
    let odb = src.odb().unwrap();
    let object = odb.read(commit).unwrap();
    let to = Repository::open(dst).unwrap();
    to.odb()
        .unwrap()
        .write(object.kind(), object.data())
        .unwrap();
}

fn best(runs: usize, mut once: impl FnMut(usize) -> Duration) -> Duration {
    (0..runs).map(&mut once).min().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let files = env_usize("COMFIX_BENCH_GIT_FILES", 20_000);
    let work = work_dir();
    let work = work.path();
    let core = work.join("ComfyUI");
    write_tree(&core, files);
    git(&core, &["init", "-q", "-b", "main"]);
    git(&core, &["add", "."]);
    git(&core, &["commit", "-q", "-m", "core"]);
    let mirror = work.join("mirror.git");
    git(work, &["clone", "-q", "--bare", "ComfyUI", "mirror.git"]);
    let commit = Repository::open_bare(&mirror)
        .unwrap()
        .head()
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id();

    let timed = |f: &mut dyn FnMut()| {
        sync();
        let started = Instant::now();
        f();
        started.elapsed()
    };
    let packed = best(5, |i| {
        let dst = work.join(format!("packed-{i}"));
        timed(&mut || {
            Repository::init(&dst).unwrap();
            comfix::fetch::git::copy_commit_packed(&mirror, &dst, commit).unwrap();
        })
    });
    let loose = best(5, |i| {
        let dst = work.join(format!("loose-{i}"));
        timed(&mut || loose(&mirror, &dst, commit))
    });
    let url = format!("file://{}", mirror.display());
    let clone = best(5, |i| {
        let dst = format!("clone-{i}");
        timed(&mut || {
            git(
                work,
                &["clone", "-q", "--depth", "1", "--no-checkout", &url, &dst],
            )
        })
    });
    // The packed copy is whole: git itself checks every object, the pack and its index.
    std::fs::write(work.join("packed-0/.git/shallow"), format!("{commit}\n")).unwrap();
    git(
        &work.join("packed-0"),
        &["fsck", "--strict", "--no-dangling", &commit.to_string()],
    );
    println!("worktree_git/files             {files}");
    println!(
        "worktree_git/packed            {:.3}s",
        packed.as_secs_f64()
    );
    println!(
        "worktree_git/loose             {:.3}s  ({:.2}× packed)",
        loose.as_secs_f64(),
        loose.as_secs_f64() / packed.as_secs_f64()
    );
    println!(
        "worktree_git/git_clone_depth1  {:.3}s  (packed is {:.2}× its time)",
        clone.as_secs_f64(),
        packed.as_secs_f64() / clone.as_secs_f64()
    );
}
