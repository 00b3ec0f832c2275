//! Git sources: a bare mirror per repository URL inside the store (`<store>/git/`), refs resolved
//! to commits there, and checkouts written from git objects (no `.git`, no filters) into
//! content-addressed store paths. Submodules are checked out at the commits the superproject pins.

use std::path::{Path, PathBuf};

use git2::{FetchOptions, ObjectType, Oid, Repository};

use super::FetchError;
use crate::store::Add;
use crate::store::{flock, AddOptions, Added, Store};

/// The mirror directory of `url`: `<store>/git/<key>-<name>.git`.
pub fn mirror_path(store: &Store, url: &str) -> PathBuf {
    trust_shared_mirrors(store);
    store.mirror_dir(&mirror_name(url))
}

/// `<key>-<name>.git`, the mirror's directory name.
pub fn mirror_name(url: &str) -> String {
    let key = &blake3::hash(url.as_bytes()).to_hex()[..16];
    let name = crate::store::sanitize_name(crate::spec::repo_basename(url));
    format!("{key}-{name}.git")
}

/// Keep the mirror of `url` from the garbage collector for the life of this process.
pub fn protect_mirror(store: &Store, url: &str) -> Result<(), FetchError> {
    Ok(store.protect(&[&Store::mirror_root(&mirror_name(url))])?)
}

fn git_err(url: &str) -> impl Fn(git2::Error) -> FetchError + '_ {
    move |e| FetchError::Git {
        url: url.to_string(),
        source: super::GitCause(e),
    }
}

/// A failed connection to or fetch from `url`: a repository that is not there (a path that does
/// not exist, a server's 404, or the credentials a host like GitHub asks for a repository it does
/// not show) is the user's input; anything else is the network's.
fn remote_err(url: &str) -> impl Fn(git2::Error) -> FetchError + '_ {
    move |e| {
        let message = e.message();
        let missing = e.code() == git2::ErrorCode::NotFound
            || e.code() == git2::ErrorCode::Auth
            || message.contains("no credentials for this remote")
            || message.contains("status code: 404")
            || message.contains("failed to resolve path")
            || message.contains("does not appear to be a git repository")
            || message.contains("could not find repository")
            // A path on this machine that is gone: libgit2 calls it an unsupported protocol.
            || gone_local(url);
        if missing {
            FetchError::GitRepoNotFound {
                url: url.to_string(),
                source: super::GitCause(e),
            }
        } else {
            git_err(url)(e)
        }
    }
}

/// Whether `url` names a path on this machine (`/…`, `file://…`) that does not exist.
fn gone_local(url: &str) -> bool {
    let path = url.strip_prefix("file://").unwrap_or(url);
    path.starts_with('/') && std::fs::symlink_metadata(path).is_err()
}

/// In a store a group shares, its git mirrors belong to whichever member made them: libgit2's
/// check that a repository is owned by the current user (git's `safe.directory`) would refuse
/// every other member. The group is trusted with the store as a whole, so the check is off for
/// this process (it is process-wide in libgit2).
fn trust_shared_mirrors(store: &Store) {
    static DONE: std::sync::Once = std::sync::Once::new();
    if store.is_shared() {
        DONE.call_once(|| {
            // SAFETY: set once, before this process opens repositories from several threads.
            if let Err(e) = unsafe { git2::opts::set_verify_owner_validation(false) } {
                tracing::warn!("cannot trust the shared store's git mirrors: {e}");
            }
        });
    }
}

/// Open the mirror of `url`, creating it if needed.
fn open_mirror(store: &Store, url: &str) -> Result<Repository, FetchError> {
    let path = mirror_path(store, url);
    match Repository::open_bare(&path) {
        Ok(repo) => Ok(repo),
        Err(_) => {
            std::fs::create_dir_all(path.parent().expect("mirrors live under git/"))
                .map_err(FetchError::io(&path))?;
            Repository::init_bare(&path).map_err(git_err(url))
        }
    }
}

/// What to fetch from a remote: only that, and the objects it needs.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// The remote's default branch (`HEAD`), kept as `refs/comfix/HEAD`.
    Head,
    /// A branch, a tag or a full ref name, kept under the same name.
    Ref(&'a str),
    /// One commit by its full id (servers such as GitHub allow that), kept as
    /// `refs/comfix/pins/<id>`.
    Commit(&'a str),
}

fn fetch_options<'a>() -> FetchOptions<'a> {
    let mut proxy = git2::ProxyOptions::new();
    proxy.auto(); // `http.proxy`, then `HTTPS_PROXY`/`HTTP_PROXY` like git
    let mut options = FetchOptions::new();
    options
        .download_tags(git2::AutotagOption::None)
        .proxy_options(proxy)
        .remote_callbacks(credentials());
    options
}

/// Credentials for a private repository, asked once each (libgit2 asks again after a refusal):
/// git's credential helper (the user's git config), then a token from `GIT_TOKEN`,
/// `GITHUB_TOKEN` or `GH_TOKEN`. Specs and locks never carry them.
fn credentials<'a>() -> git2::RemoteCallbacks<'a> {
    let mut callbacks = git2::RemoteCallbacks::new();
    let mut tried = 0;
    callbacks.credentials(move |url, username, allowed| {
        tried += 1;
        if tried > 2 || !allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            return Err(git2::Error::from_str("no credentials for this remote"));
        }
        if tried == 1 {
            if let Ok(cred) = git2::Config::open_default()
                .and_then(|config| git2::Cred::credential_helper(&config, url, username))
            {
                return Ok(cred);
            }
        }
        let token = ["GIT_TOKEN", "GITHUB_TOKEN", "GH_TOKEN"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        match token {
            Some(token) => {
                git2::Cred::userpass_plaintext(username.unwrap_or("x-access-token"), &token)
            }
            None => Err(git2::Error::from_str("no credentials for this remote")),
        }
    });
    callbacks
}

/// The trees and blobs of `commit`'s tree, each once (submodule links point into other
/// repositories and are left out).
fn tree_objects(src: &Repository, commit: Oid) -> Result<Vec<Oid>, git2::Error> {
    let tree = src.find_commit(commit)?.tree()?;
    let mut ids = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![tree.id()];
    while let Some(tree_id) = stack.pop() {
        if !seen.insert(tree_id) {
            continue;
        }
        ids.push(tree_id);
        for entry in src.find_tree(tree_id)?.iter() {
            match entry.kind() {
                Some(ObjectType::Tree) => stack.push(entry.id()),
                Some(ObjectType::Blob) if seen.insert(entry.id()) => ids.push(entry.id()),
                _ => {}
            }
        }
    }
    Ok(ids)
}

/// [`copy_commit`] into a fresh repository at `dst_dir` as one pack and its index, both written
/// here: the objects read and zlib-compressed (fast level, no deltas) by several threads, each
/// with its own handles, in batches (memory holds one batch). The mirror's object ids are the
/// index's (the mirror was checked when fetched), so nothing is inflated or hashed again. A
/// working tree's `.git` for a core of thousands of files is two files, not one per object; git
/// sees the pack only once its index is renamed into place, last.
pub fn copy_commit_packed(src_dir: &Path, dst_dir: &Path, commit: Oid) -> Result<(), git2::Error> {
    let src = Repository::open_bare(src_dir)?;
    let mut ids = tree_objects(&src, commit)?;
    ids.push(commit);
    write_pack(src_dir, &Repository::open(dst_dir)?, &ids)
}

/// Copy `commit` and everything its tree needs (not its parents, not submodules) that `dst` lacks
/// from the repository `src` into one new pack of `dst`: a depth-1 copy. The objects appear
/// together, when the pack's index is renamed into place.
pub fn copy_commit(src: &Repository, dst: &Repository, commit: Oid) -> Result<(), git2::Error> {
    let have = dst.odb()?;
    let mut ids = tree_objects(src, commit)?;
    ids.push(commit);
    ids.retain(|id| !have.exists(*id));
    if ids.is_empty() {
        return Ok(());
    }
    // The common directory holds the objects (a linked worktree's git directory does not).
    write_pack(src.commondir(), dst, &ids)
}

/// The objects `ids` of the repository whose (common) git directory is `src_dir`, as one pack
/// (and its index) in `dst`.
fn write_pack(src_dir: &Path, dst: &Repository, ids: &[Oid]) -> Result<(), git2::Error> {
    use rayon::prelude::*;
    use sha1::Digest as _;
    use std::io::Write as _;
    let io = |e: std::io::Error| git2::Error::from_str(&e.to_string());
    let pack_dir = dst.path().join("objects/pack");
    std::fs::create_dir_all(&pack_dir).map_err(io)?;
    let mut pack = tempfile::Builder::new()
        .prefix("tmp_pack_")
        .tempfile_in(&pack_dir)
        .map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, pack.as_file_mut());
    let mut sum = sha1::Sha1::new();
    let count = u32::try_from(ids.len()).map_err(|_| git2::Error::from_str("too many objects"))?;
    let mut head = b"PACK".to_vec();
    head.extend_from_slice(&2u32.to_be_bytes());
    head.extend_from_slice(&count.to_be_bytes());
    sum.update(&head);
    out.write_all(&head).map_err(io)?;
    // (object id, CRC-32 of its entry, offset of its entry)
    let mut index: Vec<(Oid, u32, u64)> = Vec::with_capacity(ids.len());
    let mut offset = head.len() as u64;
    for batch in ids.chunks(4096) {
        let entries: Vec<Vec<(Oid, Vec<u8>)>> = batch
            .par_chunks(128)
            .map(|chunk| -> Result<Vec<(Oid, Vec<u8>)>, git2::Error> {
                // Bare: no owner check, so a home is written from a store another user owns.
                let repo = Repository::open_bare(src_dir)?;
                let from = repo.odb()?;
                chunk
                    .iter()
                    .map(|id| {
                        let object = from.read(*id)?;
                        Ok((*id, pack_entry(object.kind(), object.data()).map_err(io)?))
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        for (id, entry) in entries.iter().flatten() {
            let mut crc = flate2::Crc::new();
            crc.update(entry);
            index.push((*id, crc.sum(), offset));
            offset += entry.len() as u64;
            sum.update(entry);
            out.write_all(entry).map_err(io)?;
        }
    }
    let checksum: [u8; 20] = sum.finalize().into();
    out.write_all(&checksum).map_err(io)?;
    out.flush().map_err(io)?;
    drop(out);
    let name = format!("pack-{}", crate::files::hex(&checksum));
    let idx = pack_index(index, &checksum);
    let mut idx_file = tempfile::Builder::new()
        .prefix("tmp_idx_")
        .tempfile_in(&pack_dir)
        .map_err(io)?;
    idx_file.write_all(&idx).map_err(io)?;
    // Read-only, as git leaves its packs.
    use std::os::unix::fs::PermissionsExt as _;
    for file in [pack.as_file(), idx_file.as_file()] {
        file.set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(io)?;
    }
    pack.persist(pack_dir.join(format!("{name}.pack")))
        .map_err(|e| io(e.error))?;
    idx_file
        .persist(pack_dir.join(format!("{name}.idx")))
        .map_err(|e| io(e.error))?;
    Ok(())
}

/// A version-2 pack index: a fan-out table by first byte, the ids in order, their entries'
/// CRC-32s and offsets (those past 2 GiB in a table of their own), the pack's checksum, and the
/// index's own.
fn pack_index(mut objects: Vec<(Oid, u32, u64)>, pack_checksum: &[u8; 20]) -> Vec<u8> {
    use sha1::Digest as _;
    objects.sort_by_key(|o| o.0);
    let mut idx = Vec::with_capacity(8 + 1024 + objects.len() * 28 + 40);
    idx.extend_from_slice(&[0xff, b't', b'O', b'c']);
    idx.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for (id, _, _) in &objects {
        fanout[id.as_bytes()[0] as usize] += 1;
    }
    let mut total = 0u32;
    for count in fanout {
        total += count;
        idx.extend_from_slice(&total.to_be_bytes());
    }
    for (id, _, _) in &objects {
        idx.extend_from_slice(id.as_bytes());
    }
    for (_, crc, _) in &objects {
        idx.extend_from_slice(&crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for (_, _, offset) in &objects {
        match u32::try_from(*offset) {
            Ok(small) if small < 0x8000_0000 => idx.extend_from_slice(&small.to_be_bytes()),
            _ => {
                let at = 0x8000_0000u32 | large.len() as u32;
                idx.extend_from_slice(&at.to_be_bytes());
                large.push(*offset);
            }
        }
    }
    for offset in large {
        idx.extend_from_slice(&offset.to_be_bytes());
    }
    idx.extend_from_slice(pack_checksum);
    let own: [u8; 20] = sha1::Sha1::digest(&idx).into();
    idx.extend_from_slice(&own);
    idx
}

/// One undeltified object of a pack: its type and size (the size in 4 bits, then 7 per byte),
/// then its bytes as a zlib stream.
fn pack_entry(kind: ObjectType, data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let code: u8 = match kind {
        ObjectType::Commit => 1,
        ObjectType::Tree => 2,
        ObjectType::Blob => 3,
        ObjectType::Tag => 4,
        other => {
            return Err(std::io::Error::other(format!(
                "a {other} object cannot be packed"
            )))
        }
    };
    let mut head = Vec::with_capacity(data.len() / 2 + 16);
    let mut size = data.len();
    let mut byte = (code << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        head.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    head.push(byte);
    let mut zlib = flate2::write::ZlibEncoder::new(head, flate2::Compression::fast());
    zlib.write_all(data)?;
    zlib.finish()
}

/// The local repository directory of `url`, if it names one (`/srv/x.git`, `file:///srv/x.git`).
fn local_repo(url: &str) -> Option<PathBuf> {
    let path = match url.strip_prefix("file://") {
        Some(rest) => PathBuf::from(rest),
        None if url.starts_with('/') => PathBuf::from(url),
        None => return None,
    };
    path.is_dir().then_some(path)
}

/// [`fetch`] from a repository on this machine: libgit2's local transport would copy every ref's
/// objects, so the wanted commit is copied with what its tree needs instead.
fn fetch_local(
    repo: &Repository,
    source: &Path,
    url: &str,
    want: Want<'_>,
) -> Result<(), FetchError> {
    let src = Repository::open(source).map_err(git_err(url))?;
    let (commit, refname) = match want {
        Want::Head => {
            let head = src.head().map_err(git_err(url))?;
            let commit = head.peel_to_commit().map_err(git_err(url))?;
            (commit.id(), "refs/comfix/HEAD".to_string())
        }
        Want::Ref(name) => {
            let full = [
                format!("refs/heads/{name}"),
                format!("refs/tags/{name}"),
                name.to_string(),
            ]
            .into_iter()
            .find(|r| src.find_reference(r).is_ok())
            .ok_or_else(|| FetchError::GitRefNotFound {
                url: url.to_string(),
                reference: name.to_string(),
            })?;
            let commit = src
                .find_reference(&full)
                .and_then(|r| r.peel_to_commit())
                .map_err(git_err(url))?;
            (commit.id(), full)
        }
        Want::Commit(hex) => {
            let oid = Oid::from_str(hex).map_err(git_err(url))?;
            // As a git server does by default: only commits some ref reaches are served.
            if !reachable(&src, oid).map_err(git_err(url))? {
                return Err(FetchError::GitCommitNotFound {
                    url: url.to_string(),
                    commit: hex.to_string(),
                });
            }
            (oid, format!("refs/comfix/pins/{hex}"))
        }
    };
    copy_in(repo, &src, url, commit, &refname)
}

/// Whether some ref of `repo` reaches `commit`. Pins are usually recent, so the commits nearest
/// the tips are looked at first (a pin a few commits behind a tip is found at once, without
/// loading the history); only past those is each tip asked whether it descends from `commit`,
/// which walks the whole history.
fn reachable(repo: &Repository, commit: Oid) -> Result<bool, git2::Error> {
    const NEAR: usize = 1_000;
    let tips: Vec<Oid> = repo
        .references()?
        .flatten()
        .filter_map(|r| r.peel_to_commit().ok().map(|c| c.id()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut queue: std::collections::VecDeque<Oid> = tips.iter().copied().collect();
    while let Some(id) = queue.pop_front() {
        if id == commit {
            return Ok(true);
        }
        if seen.len() >= NEAR {
            break;
        }
        if seen.insert(id) {
            // A shallow source ends where its parents are missing.
            if let Ok(found) = repo.find_commit(id) {
                queue.extend(found.parent_ids());
            }
        }
    }
    Ok(tips
        .iter()
        .any(|&tip| repo.graph_descendant_of(tip, commit).unwrap_or(false)))
}

/// Copy `commit` (depth 1) from `src` into the mirror `repo` of `url`, as `refname`.
fn copy_in(
    repo: &Repository,
    src: &Repository,
    url: &str,
    commit: Oid,
    refname: &str,
) -> Result<(), FetchError> {
    copy_commit(src, repo, commit).map_err(git_err(url))?;
    // A depth-1 copy: the parents are not here. Recorded before the ref points at it.
    let shallow = repo.path().join("shallow");
    let mut known = std::fs::read_to_string(&shallow).unwrap_or_default();
    if !known.lines().any(|l| l == commit.to_string()) {
        known.push_str(&format!("{commit}\n"));
        // By rename: a process killed here must not leave git a torn `shallow` to parse.
        let temp = shallow.with_extension(format!("{}", std::process::id()));
        std::fs::write(&temp, known).map_err(FetchError::io(&temp))?;
        std::fs::rename(&temp, &shallow).map_err(FetchError::io(&shallow))?;
    }
    repo.reference(refname, commit, true, "comfix fetch")
        .map_err(git_err(url))?;
    Ok(())
}

/// Put `commit` of the working tree's repository at `source` into the mirror of `url` (its
/// origin), as a fetch of that commit from `url` would: `snapshot` records an install's git
/// checkouts so they resolve and realize without asking the origin.
pub fn seed_mirror(
    store: &Store,
    url: &str,
    source: &Path,
    commit: &str,
) -> Result<(), FetchError> {
    let (_lock, repo) = locked_mirror(store, url)?;
    let src = Repository::open(source).map_err(git_err(url))?;
    let oid = Oid::from_str(commit).map_err(git_err(url))?;
    copy_in(&repo, &src, url, oid, &format!("refs/comfix/pins/{commit}"))
}

/// The mirror of `url` (created if needed) under its update lock `git/<key>-<name>.lock`.
fn locked_mirror(store: &Store, url: &str) -> Result<(flock::LockGuard, Repository), FetchError> {
    let path = mirror_path(store, url);
    let lock_path = path.with_extension("lock");
    std::fs::create_dir_all(path.parent().expect("mirrors live under git/"))
        .map_err(FetchError::io(&path))?;
    let guard = flock::exclusive(&lock_path).map_err(FetchError::io(&lock_path))?;
    remove_stale_git_locks(&path);
    Ok((guard, open_mirror(store, url)?))
}

/// Remove the `*.lock` files a killed git operation left in the mirror at `path` (libgit2 leaves
/// `config.lock`, `packed-refs.lock`, `refs/…/X.lock` behind on SIGKILL, and then refuses every
/// later update). Only called under the mirror's update lock, so no live process owns them.
fn remove_stale_git_locks(path: &Path) {
    for entry in walkdir::WalkDir::new(path)
        .max_depth(6)
        .into_iter()
        .filter_entry(|e| e.file_name() != "objects")
        .flatten()
    {
        if entry.file_type().is_file() && entry.file_name().to_string_lossy().ends_with(".lock") {
            tracing::debug!(
                "removing `{}`, left by a killed git update",
                entry.path().display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How much of a wanted commit's history a fetch brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Depth {
    /// The commit and its tree only (`git fetch --depth 1`): what a pin or a checkout needs.
    Tip,
    /// Its whole history, deepening a shallow mirror: to find an older commit a ref reaches.
    Whole,
}

impl Depth {
    /// libgit2's depth: 1, or `GIT_FETCH_DEPTH_UNSHALLOW` (deepens what an earlier fetch cut).
    fn libgit2(self) -> i32 {
        match self {
            Depth::Tip => 1,
            Depth::Whole => i32::MAX,
        }
    }
}

/// Fetch exactly `want` from `url` into its mirror (force-updating a moved ref), to `depth`.
/// Damage or size elsewhere in the remote does not matter: only the wanted ref's objects are
/// transferred.
pub fn fetch(store: &Store, url: &str, want: Want<'_>) -> Result<Repository, FetchError> {
    fetch_to(store, url, want, Depth::Tip)
}

fn fetch_to(
    store: &Store,
    url: &str,
    want: Want<'_>,
    depth: Depth,
) -> Result<Repository, FetchError> {
    let (_lock, repo) = locked_mirror(store, url)?;
    if let Some(source) = local_repo(url) {
        fetch_local(&repo, &source, url, want)?;
        return Ok(repo);
    }
    {
        let mut remote = repo.remote_anonymous(url).map_err(git_err(url))?;
        let refspec = match want {
            Want::Head => "+HEAD:refs/comfix/HEAD".to_string(),
            Want::Commit(commit) => format!("+{commit}:refs/comfix/pins/{commit}"),
            Want::Ref(name) => {
                let full = remote_ref(&mut remote, url, name)?;
                format!("+{full}:{full}")
            }
        };
        tracing::debug!("fetching `{refspec}` from `{url}` ({depth:?})");
        let mut options = fetch_options();
        options.depth(depth.libgit2());
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(remote_err(url))?;
    }
    Ok(repo)
}

/// The remote's full name for `name`: `refs/heads/<name>`, `refs/tags/<name>`, or `name` itself.
fn remote_ref(remote: &mut git2::Remote<'_>, url: &str, name: &str) -> Result<String, FetchError> {
    let mut proxy = git2::ProxyOptions::new();
    proxy.auto();
    remote
        .connect_auth(git2::Direction::Fetch, None, Some(proxy))
        .map_err(remote_err(url))?;
    let names: Vec<String> = remote
        .list()
        .map_err(git_err(url))?
        .iter()
        .map(|h| h.name().to_string())
        .collect();
    let _ = remote.disconnect();
    [
        format!("refs/heads/{name}"),
        format!("refs/tags/{name}"),
        name.to_string(),
    ]
    .into_iter()
    .find(|candidate| names.contains(candidate))
    .ok_or_else(|| FetchError::GitRefNotFound {
        url: url.to_string(),
        reference: name.to_string(),
    })
}

/// Make the mirror of `url` hold `commit`, fetching as little as the server allows: the commit
/// alone by its id (depth 1; GitHub and servers with `uploadpack.allowReachableSHA1InWant`
/// allow it), else `git_ref` (or the default branch) at depth 1 when the commit is its tip, else
/// that ref's whole history, and only as a last resort every branch and tag.
pub fn fetch_commit(
    store: &Store,
    url: &str,
    commit: &str,
    git_ref: Option<&str>,
) -> Result<(), FetchError> {
    let full = commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if full {
        match fetch(store, url, Want::Commit(commit)) {
            Ok(_) if has_commit(store, url, commit) => return Ok(()),
            Ok(_) => {}
            Err(err) => tracing::debug!("fetching commit `{commit}` by id failed: {err}"),
        }
    }
    let via = git_ref.map_or(Want::Head, Want::Ref);
    // A repository on this machine is copied from at depth 1 whatever the depth: once is enough.
    let depths: &[Depth] = match local_repo(url) {
        Some(_) => &[Depth::Tip],
        None => &[Depth::Tip, Depth::Whole],
    };
    for &depth in depths {
        if fetch_to(store, url, via, depth).is_ok() && (!full || has_commit(store, url, commit)) {
            return Ok(());
        }
    }
    tracing::info!(
        "`{url}`: commit `{commit}` is not on the wanted ref; fetching every branch and tag"
    );
    update_mirror(store, url).map(|_| ())
}

/// Fetch every branch and tag of `url` into its mirror, force-updating moved refs, and the
/// remote's HEAD as `refs/comfix/HEAD`: the fallback for a commit no ref names directly.
pub fn update_mirror(store: &Store, url: &str) -> Result<Repository, FetchError> {
    let (_lock, repo) = locked_mirror(store, url)?;
    {
        let mut remote = repo.remote_anonymous(url).map_err(git_err(url))?;
        let mut options = fetch_options();
        options.download_tags(git2::AutotagOption::All);
        if local_repo(url).is_none() {
            // Deepens what depth-1 fetches cut (libgit2's local transport has no depth).
            options.depth(Depth::Whole.libgit2());
        }
        remote
            .fetch(
                &[
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                    "+HEAD:refs/comfix/HEAD",
                ],
                Some(&mut options),
                None,
            )
            .map_err(remote_err(url))?;
    }
    Ok(repo)
}

/// Resolve `commit` (wins when given, checked to exist) or `git_ref` (branch, tag, or the remote's
/// default branch when `None`) to a full commit id in the mirror of `url`. With `fetch`, what is
/// wanted is fetched first (a commit only when the mirror lacks it); without, only what the
/// mirror already holds is used.
pub fn resolve(
    store: &Store,
    url: &str,
    git_ref: Option<&str>,
    commit: Option<&str>,
    fetch: bool,
) -> Result<String, FetchError> {
    let repo = match (fetch, commit) {
        (true, Some(commit)) => {
            let present = Repository::open_bare(mirror_path(store, url))
                .ok()
                .is_some_and(|r| {
                    r.revparse_single(commit)
                        .and_then(|o| o.peel_to_commit())
                        .is_ok()
                });
            if !present {
                fetch_commit(store, url, commit, git_ref)?;
            }
            Repository::open_bare(mirror_path(store, url)).map_err(git_err(url))?
        }
        (true, None) => self::fetch(store, url, git_ref.map_or(Want::Head, Want::Ref))?,
        (false, _) => {
            Repository::open_bare(mirror_path(store, url)).map_err(|_| FetchError::Offline {
                missing: vec![format!("git mirror of `{url}`")],
            })?
        }
    };
    if let Some(commit) = commit {
        return repo
            .revparse_single(commit)
            .and_then(|o| o.peel_to_commit())
            .map(|c| c.id().to_string())
            .map_err(|_| FetchError::GitCommitNotFound {
                url: url.to_string(),
                commit: commit.to_string(),
            });
    }
    let candidates: Vec<String> = match git_ref {
        None => vec!["refs/comfix/HEAD".into()],
        Some(r) => vec![
            format!("refs/heads/{r}"),
            format!("refs/tags/{r}"),
            r.to_string(),
        ],
    };
    for candidate in &candidates {
        if let Ok(object) = repo.revparse_single(candidate) {
            if let Ok(commit) = object.peel_to_commit() {
                return Ok(commit.id().to_string());
            }
        }
    }
    Err(FetchError::GitRefNotFound {
        url: url.to_string(),
        reference: git_ref.unwrap_or("HEAD").to_string(),
    })
}

/// Whether the mirror of `url` holds `commit`.
pub fn has_commit(store: &Store, url: &str, commit: &str) -> bool {
    Repository::open_bare(mirror_path(store, url))
        .ok()
        .and_then(|repo| {
            let oid = Oid::from_str(commit).ok()?;
            repo.find_commit(oid).ok().map(|_| ())
        })
        .is_some()
}

/// Write the tree of `commit` (from the mirror of `url`, with submodules) into a store path named
/// `name`. With `fetch`, submodule mirrors are updated when they lack their pinned commit.
pub fn checkout(
    store: &Store,
    url: &str,
    commit: &str,
    name: &str,
    fetch: bool,
) -> Result<Added, FetchError> {
    let staging = store.staging()?;
    let root = staging.path().join("tree");
    std::fs::create_dir(&root).map_err(FetchError::io(&root))?;
    write_commit(store, url, commit, &root, fetch)?;
    let options = AddOptions {
        name: Some(name.to_string()),
        references: Vec::new(),
    };
    Ok(store.add_staged(staging, "tree", &options, None)?)
}

fn write_commit(
    store: &Store,
    url: &str,
    commit: &str,
    dest: &Path,
    fetch: bool,
) -> Result<(), FetchError> {
    let repo = Repository::open_bare(mirror_path(store, url)).map_err(git_err(url))?;
    let oid = Oid::from_str(commit).map_err(git_err(url))?;
    let commit_obj = repo
        .find_commit(oid)
        .map_err(|_| FetchError::GitCommitNotFound {
            url: url.to_string(),
            commit: commit.to_string(),
        })?;
    let tree = commit_obj.tree().map_err(git_err(url))?;
    let submodules = read_gitmodules(&repo, &tree, url)?;
    write_tree(
        store,
        &repo,
        url,
        &tree,
        dest,
        Path::new(""),
        &submodules,
        fetch,
    )
}

/// `path → url` of the submodules declared in the tree's `.gitmodules`.
fn read_gitmodules(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    url: &str,
) -> Result<Vec<(String, String)>, FetchError> {
    let Some(entry) = tree.get_name(".gitmodules") else {
        return Ok(Vec::new());
    };
    let blob = repo
        .find_blob(entry.id())
        .map_err(git_err(url))?
        .content()
        .to_vec();
    let tmp = tempfile::NamedTempFile::new().map_err(FetchError::io(".gitmodules"))?;
    std::fs::write(tmp.path(), &blob).map_err(FetchError::io(tmp.path()))?;
    let config = git2::Config::open(tmp.path()).map_err(git_err(url))?;
    let mut paths = std::collections::BTreeMap::new();
    let mut urls = std::collections::BTreeMap::new();
    let mut entries = config
        .entries(Some("submodule\\..*"))
        .map_err(git_err(url))?;
    while let Some(entry) = entries.next() {
        let entry = entry.map_err(git_err(url))?;
        // A key without a value (a bare `key` line) is no path or URL: skipped (`value` would panic).
        if !entry.has_value() {
            continue;
        }
        let (Ok(key), Ok(value)) = (entry.name(), entry.value()) else {
            continue;
        };
        let rest = key.trim_start_matches("submodule.");
        if let Some(name) = rest.strip_suffix(".path") {
            paths.insert(name.to_string(), value.to_string());
        } else if let Some(name) = rest.strip_suffix(".url") {
            urls.insert(name.to_string(), value.to_string());
        }
    }
    Ok(paths
        .into_iter()
        .filter_map(|(name, path)| {
            urls.get(&name)
                .map(|u| (path, resolve_submodule_url(url, u)))
        })
        .collect())
}

/// A submodule URL relative to its superproject's (`../sub.git`) made absolute, as git does.
pub fn resolve_submodule_url(parent: &str, sub: &str) -> String {
    if !(sub.starts_with("./") || sub.starts_with("../")) {
        return sub.to_string();
    }
    let mut base = parent.trim_end_matches('/').to_string();
    let mut rest = sub;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            if let Some(cut) = base.rfind(['/', ':']) {
                base.truncate(cut);
            }
            rest = r;
        } else {
            break;
        }
    }
    format!("{base}/{rest}")
}

#[allow(clippy::too_many_arguments)]
fn write_tree(
    store: &Store,
    repo: &Repository,
    url: &str,
    tree: &git2::Tree<'_>,
    dest: &Path,
    prefix: &Path,
    submodules: &[(String, String)],
    fetch: bool,
) -> Result<(), FetchError> {
    use std::os::unix::fs::PermissionsExt;
    for entry in tree.iter() {
        let Ok(name) = entry.name() else {
            continue;
        };
        if name == ".git" || name.contains('/') || name == ".." || name == "." {
            continue; // never valid in a git tree; refuse to write it
        }
        let path = dest.join(name);
        let rel = prefix.join(name);
        let mode = entry.filemode();
        match entry.kind() {
            Some(ObjectType::Tree) => {
                std::fs::create_dir(&path).map_err(FetchError::io(&path))?;
                let sub = repo.find_tree(entry.id()).map_err(git_err(url))?;
                write_tree(store, repo, url, &sub, &path, &rel, submodules, fetch)?;
            }
            Some(ObjectType::Blob) => {
                let blob = repo.find_blob(entry.id()).map_err(git_err(url))?;
                if mode == 0o120000 {
                    let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                        blob.content(),
                    );
                    std::os::unix::fs::symlink(target, &path).map_err(FetchError::io(&path))?;
                } else {
                    // create_new: never follow or replace what an earlier (duplicate) entry made.
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let perm = if mode == 0o100755 { 0o755 } else { 0o644 };
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(perm)
                        .open(&path)
                        .and_then(|mut f| f.write_all(blob.content()))
                        .map_err(FetchError::io(&path))?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm))
                        .map_err(FetchError::io(&path))?;
                }
            }
            Some(ObjectType::Commit) => {
                // A submodule: its commit id is pinned here, its URL in .gitmodules.
                let rel_str = rel.to_string_lossy().into_owned();
                let Some((_, sub_url)) = submodules.iter().find(|(p, _)| *p == rel_str) else {
                    return Err(FetchError::GitSubmoduleUndeclared {
                        url: url.to_string(),
                        path: rel_str,
                    });
                };
                let commit = entry.id().to_string();
                if !has_commit(store, sub_url, &commit) {
                    if !fetch {
                        return Err(FetchError::Offline {
                            missing: vec![format!("commit `{commit}` of submodule `{sub_url}`")],
                        });
                    }
                    fetch_commit(store, sub_url, &commit, None)?;
                }
                std::fs::create_dir(&path).map_err(FetchError::io(&path))?;
                write_commit(store, sub_url, &commit, &path, fetch)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::resolve_submodule_url;

    #[test]
    fn relative_submodule_urls() {
        assert_eq!(
            resolve_submodule_url("https://h/org/super.git", "../lib.git"),
            "https://h/org/lib.git"
        );
        assert_eq!(
            resolve_submodule_url("/srv/git/super", "../lib"),
            "/srv/git/lib"
        );
        assert_eq!(
            resolve_submodule_url("git@h:org/super.git", "../lib.git"),
            "git@h:org/lib.git"
        );
        assert_eq!(resolve_submodule_url("/a/b", "https://x/y"), "https://x/y");
    }
}
