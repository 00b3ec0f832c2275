//! Deterministic git repositories for tests: fixed author, committer and dates, trees built
//! entry by entry (files, executables, symlinks, submodule links).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature, Time};

pub enum Entry<'a> {
    File(&'a [u8]),
    Exec(&'a [u8]),
    Link(&'a str),
    /// A submodule pinned at this commit.
    Gitlink(Oid),
}

pub struct TestRepo {
    pub path: PathBuf,
    pub repo: Repository,
    clock: i64,
}

impl TestRepo {
    /// A bare repository at `path`, used as a remote.
    pub fn new(path: &Path) -> TestRepo {
        let repo = Repository::init_bare(path).expect("init a bare repository");
        TestRepo {
            path: path.to_path_buf(),
            repo,
            clock: 1_700_000_000,
        }
    }

    pub fn url(&self) -> String {
        self.path.display().to_string()
    }

    /// The commit `branch` points at, as hex.
    pub fn head(&self, branch: &str) -> String {
        self.repo
            .find_reference(&format!("refs/heads/{branch}"))
            .and_then(|r| r.peel_to_commit())
            .map(|c| c.id().to_string())
            .unwrap()
    }

    fn signature(&mut self) -> Signature<'static> {
        self.clock += 60;
        Signature::new(
            "comfix test",
            "test@comfix.invalid",
            &Time::new(self.clock, 0),
        )
        .unwrap()
    }

    fn build_tree(&self, entries: &[(&str, Entry<'_>)]) -> Oid {
        // Group by first path component, recursively.
        let mut here: BTreeMap<String, Vec<(String, &Entry<'_>)>> = BTreeMap::new();
        let mut leaves = Vec::new();
        for (path, entry) in entries {
            match path.split_once('/') {
                Some((dir, rest)) => here
                    .entry(dir.to_string())
                    .or_default()
                    .push((rest.to_string(), entry)),
                None => leaves.push((path.to_string(), entry)),
            }
        }
        let mut builder = self.repo.treebuilder(None).unwrap();
        for (name, entry) in leaves {
            let (oid, mode) = match entry {
                Entry::File(bytes) => (self.repo.blob(bytes).unwrap(), 0o100644),
                Entry::Exec(bytes) => (self.repo.blob(bytes).unwrap(), 0o100755),
                Entry::Link(target) => (self.repo.blob(target.as_bytes()).unwrap(), 0o120000),
                Entry::Gitlink(oid) => (*oid, 0o160000),
            };
            builder.insert(&name, oid, mode).unwrap();
        }
        for (dir, children) in here {
            let owned: Vec<(&str, Entry<'_>)> = children
                .iter()
                .map(|(p, e)| (p.as_str(), clone_entry(e)))
                .collect();
            let oid = self.build_tree(&owned);
            builder.insert(&dir, oid, 0o040000).unwrap();
        }
        builder.write().unwrap()
    }

    /// Commit a tree holding exactly `entries` on `branch`, parented on the branch's tip.
    pub fn commit(&mut self, branch: &str, entries: &[(&str, Entry<'_>)]) -> Oid {
        let refname = format!("refs/heads/{branch}");
        let parent = self
            .repo
            .find_reference(&refname)
            .ok()
            .and_then(|r| r.peel_to_commit().ok())
            .map(|c| c.id());
        self.commit_with_parent(&refname, entries, parent)
    }

    /// Commit with an explicit parent (or none) and force `refname` to it: a force-push.
    pub fn commit_with_parent(
        &mut self,
        refname: &str,
        entries: &[(&str, Entry<'_>)],
        parent: Option<Oid>,
    ) -> Oid {
        let sig = self.signature();
        let tree = self.repo.find_tree(self.build_tree(entries)).unwrap();
        let parents: Vec<git2::Commit<'_>> = parent
            .into_iter()
            .map(|p| self.repo.find_commit(p).unwrap())
            .collect();
        let parent_refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let oid = self
            .repo
            .commit(None, &sig, &sig, "test commit", &tree, &parent_refs)
            .unwrap();
        self.repo.reference(refname, oid, true, "test").unwrap();
        if self.repo.head().is_err() || refname == "refs/heads/main" {
            self.repo.set_head("refs/heads/main").unwrap();
        }
        oid
    }

    pub fn tag(&self, name: &str, target: Oid) {
        self.repo
            .reference(&format!("refs/tags/{name}"), target, true, "tag")
            .unwrap();
    }
}

fn clone_entry<'a>(entry: &Entry<'a>) -> Entry<'a> {
    match entry {
        Entry::File(b) => Entry::File(b),
        Entry::Exec(b) => Entry::Exec(b),
        Entry::Link(t) => Entry::Link(t),
        Entry::Gitlink(o) => Entry::Gitlink(*o),
    }
}
