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
    let mut comfix_times = Vec::new();
    let mut git_times = Vec::new();
    let (mut local_times, mut git_local_times) = (Vec::new(), Vec::new());
    let mut mirror_bytes = 0;
    for round in 0..5 {
        sync();
        let store_dir = work.join(format!("store-{round}"));
        let store = comfix::store::Store::open(&store_dir).unwrap();
        let started = Instant::now();
        let commit =
            comfix::fetch::git::resolve(&store, &url, None, Some(pinned.as_str()), true).unwrap();
        comfix::fetch::git::checkout(&store, &url, &commit, "big", false).unwrap();
        comfix_times.push(started.elapsed());
        assert_eq!(commit, pinned);
        mirror_bytes = du(&comfix::fetch::git::mirror_path(&store, &url));

        sync();
        let clone = work.join(format!("clone-{round}"));
        std::fs::create_dir(&clone).unwrap();
        let started = Instant::now();
        git(&clone, &["init", "-q"]);
        git(&clone, &["fetch", "-q", "--depth", "1", &url, &pinned]);
        git(&clone, &["checkout", "-q", "FETCH_HEAD"]);
        git_times.push(started.elapsed());

        // The same from a repository on this machine (`file://`, as a Manager snapshot's
        // repositories are often given).
        sync();
        let store = comfix::store::Store::open(&work.join(format!("store-local-{round}"))).unwrap();
        let started = Instant::now();
        let commit =
            comfix::fetch::git::resolve(&store, &local, None, Some(pinned.as_str()), true).unwrap();
        comfix::fetch::git::checkout(&store, &local, &commit, "big", false).unwrap();
        local_times.push(started.elapsed());
        sync();
        let clone = work.join(format!("clone-local-{round}"));
        std::fs::create_dir(&clone).unwrap();
        let started = Instant::now();
        git(&clone, &["init", "-q"]);
        git(&clone, &["fetch", "-q", "--depth", "1", &local, &pinned]);
        git(&clone, &["checkout", "-q", "FETCH_HEAD"]);
        git_local_times.push(started.elapsed());
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
