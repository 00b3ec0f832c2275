//! What ComfyUI-Manager needs to recognize what comfix realized: git nodes are real working trees
//! at the locked commit with `origin` set to the spec's repository; registry nodes carry `.tracking`
//! and `pyproject.toml` (both come from the store path, see `fetch::registry`).

use std::path::Path;

use git2::{Oid, Repository};

use super::RealizeError;
use crate::fetch::git::mirror_path;
use crate::store::Store;

fn git_err(dir: &Path) -> impl Fn(git2::Error) -> RealizeError + '_ {
    move |e| RealizeError::Git {
        path: dir.to_path_buf(),
        message: e.message().to_string(),
    }
}

/// Turn the checkout at `dir` into a git working tree at `commit`: a shallow repository holding
/// that commit's objects (copied from the store's mirror), `origin` = `repo_url`, `HEAD` on the
/// branch `git_ref` names (or detached), and an index matching the tree, so `git status` is clean.
pub fn make_worktree(
    store: &Store,
    dir: &Path,
    repo_url: &str,
    commit: &str,
    git_ref: Option<&str>,
) -> Result<(), RealizeError> {
    let path = mirror_path(store, repo_url);
    if !path.is_dir() {
        return Err(RealizeError::NoMirror {
            repo: repo_url.to_string(),
        });
    }
    let mirror = Repository::open_bare(&path).map_err(|e| RealizeError::Git {
        path: dir.to_path_buf(),
        message: format!(
            "the store's mirror of `{repo_url}` cannot be read to create `.git` ({})",
            e.message()
        ),
    })?;
    let repo = Repository::init(dir).map_err(git_err(dir))?;
    repo.remote("origin", repo_url).map_err(git_err(dir))?;
    let oid = Oid::from_str(commit).map_err(git_err(dir))?;
    crate::fetch::git::copy_commit_packed(&path, dir, oid).map_err(git_err(dir))?;
    // The parents are not here: tell git so (a shallow clone of depth 1).
    let shallow = dir.join(".git/shallow");
    std::fs::write(&shallow, format!("{commit}\n")).map_err(|source| RealizeError::Io {
        path: shallow,
        source,
    })?;
    let branch = git_ref.filter(|r| mirror.find_reference(&format!("refs/heads/{r}")).is_ok());
    match branch {
        Some(branch) => {
            let refname = format!("refs/heads/{branch}");
            repo.reference(&refname, oid, true, "comfix realize")
                .map_err(git_err(dir))?;
            repo.set_head(&refname).map_err(git_err(dir))?;
            let mut config = repo.config().map_err(git_err(dir))?;
            config
                .set_str(&format!("branch.{branch}.remote"), "origin")
                .map_err(git_err(dir))?;
            config
                .set_str(&format!("branch.{branch}.merge"), &refname)
                .map_err(git_err(dir))?;
        }
        None => repo.set_head_detached(oid).map_err(git_err(dir))?,
    }
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(git_err(dir))?;
    let mut index = repo.index().map_err(git_err(dir))?;
    index.read_tree(&tree).map_err(git_err(dir))?;
    index.write().map_err(git_err(dir))?;
    Ok(())
}
