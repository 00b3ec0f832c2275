//! Resolving a pinned commit of a repository with a long history (10,000 commits,
//! `COMFIX_BENCH_GIT_COMMITS`) over git's smart HTTP on 127.0.0.1 (`git http-backend`, as GitHub
//! serves it), into an empty (opened) store, then writing its tree as a store path — against git's own
//! `git fetch --depth 1 <url> <commit>` + `git checkout`, in the same run. Best of 5 each,
//! interleaved; and the same from a `file://` URL. The pinned commit is the tip's grandparent, so a fetch of the branch alone would
//! not be enough.
//!
//! Run: `cargo bench --bench git_fetch`. Data under `COMFIX_BENCH_DIR`.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
#[path = "../tests/it/support/git_http.rs"]
mod git_http;
use common::{env_usize, git, sync, work_dir};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let commits = env_usize("COMFIX_BENCH_GIT_COMMITS", 10_000);
    let work = work_dir();
    let work = work.path();
    let served = work.join("served");
    let ids = git_http::long_history(&served, "big.git", commits);
    let pinned = ids[ids.len() - 3].clone();
    let server = git_http::GitHttpServer::start(&served, true);
    let url = server.url("big.git");

    let local = format!("file://{}", served.join("big.git").display());
    // comfix: resolve the pin into an empty (opened) store and check it out; the mirror's size.
    let ours = |url: &str, store_dir: std::path::PathBuf| {
        let store = comfix::store::Store::open(&store_dir).unwrap();
        sync();
        let started = Instant::now();
        let commit =
            comfix::fetch::git::resolve(&store, url, None, Some(pinned.as_str()), true).unwrap();
        comfix::fetch::git::checkout(&store, url, &commit, "big", false).unwrap();
        let took = started.elapsed();
        assert_eq!(commit, pinned);
        (took, du(&comfix::fetch::git::mirror_path(&store, url)))
    };
    // git: the same commit alone into a new repository, checked out.
    let theirs = |url: &str, clone: std::path::PathBuf| {
        std::fs::create_dir(&clone).unwrap();
        sync();
        let started = Instant::now();
        git(&clone, &["init", "-q"]);
        git(&clone, &["fetch", "-q", "--depth", "1", url, &pinned]);
        git(&clone, &["checkout", "-q", "FETCH_HEAD"]);
        started.elapsed()
    };
    let mut comfix_times = Vec::new();
    let mut git_times = Vec::new();
    let (mut local_times, mut git_local_times) = (Vec::new(), Vec::new());
    let mut mirror_bytes = 0;
    for round in 0..5 {
        let (took, bytes) = ours(&url, work.join(format!("store-{round}")));
        comfix_times.push(took);
        mirror_bytes = bytes;
        git_times.push(theirs(&url, work.join(format!("clone-{round}"))));
        // The same from a repository on this machine (`file://`, as a Manager snapshot's
        // repositories are often given).
        local_times.push(ours(&local, work.join(format!("store-local-{round}"))).0);
        git_local_times.push(theirs(&local, work.join(format!("clone-local-{round}"))));
    }
    let best = |times: &[Duration]| times.iter().min().copied().unwrap();
    let (ours, theirs) = (best(&comfix_times), best(&git_times));
    let git_version = Command::new("git").arg("--version").output().unwrap();
    println!("git_fetch/commits               {commits}");
    println!(
        "git_fetch/comfix_resolve+checkout  {:.3}s  (mirror {:.1} MB)",
        ours.as_secs_f64(),
        mirror_bytes as f64 / 1e6
    );
    println!(
        "git_fetch/git_fetch_depth1+checkout  {:.3}s  ({})",
        theirs.as_secs_f64(),
        String::from_utf8_lossy(&git_version.stdout).trim()
    );
    println!(
        "git_fetch/ratio                 {:.2}× git",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    let (ours, theirs) = (best(&local_times), best(&git_local_times));
    println!(
        "git_fetch/file_comfix          {:.3}s\ngit_fetch/file_git_depth1      {:.3}s  ({:.2}× git)",
        ours.as_secs_f64(),
        theirs.as_secs_f64(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}

fn du(path: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
