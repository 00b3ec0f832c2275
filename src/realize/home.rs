//! A home's layout: `ComfyUI`, `models`, `.venv` and `data/` at the top, generations under
//! `.comfix/generations/<N>` with `current` pointing at one, the home's lock, and the checks that
//! keep homes and stores apart and refuse entries planted in a home.

use std::fs;
use std::path::{Path, PathBuf};

use super::link::{self, Placed};
use super::{io, Generation, RealizeError};

/// The default home: `/runpod-volume/comfy-<id>` when `/runpod-volume` exists, else
/// `$HOME/comfy-<id>`, else `./comfy-<id>`.
pub fn default_target(version_id: &str, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    let name = format!("comfy-{version_id}");
    if Path::new("/runpod-volume").is_dir() {
        return Path::new("/runpod-volume").join(name);
    }
    match env("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(name),
        None => PathBuf::from(".").join(name),
    }
}

/// Register again the GC roots of every generation of the home at `target` that the store does
/// not know under this path: the home was moved or copied here (its old roots name the old
/// place). Returns the generations registered again. A read-only store records nothing.
pub fn reroot(store: &crate::store::Store, target: &Path) -> Result<Vec<u32>, RealizeError> {
    let home = Home::new(target)?;
    if store.is_read_only() || home.current().is_none() {
        return Ok(Vec::new());
    }
    let known: std::collections::HashSet<String> =
        store.roots()?.into_iter().map(|r| r.name).collect();
    let mut again = Vec::new();
    for n in home.list() {
        let name = home.root_name(n);
        if known.contains(&name) {
            continue;
        }
        let Ok(generation) = home.read_generation(n) else {
            continue;
        };
        // Protected, then checked (a collector may be deleting it right now; a root added to a
        // path it is deleting would fail its transaction).
        if !matches!(store.valid(&generation.manifest), Ok(Some(_))) {
            tracing::warn!(
                "generation {n} of `{}` uses `{}`, which this store does not hold: it cannot be protected",
                home.root.display(),
                generation.manifest
            );
            continue;
        }
        store.add_root(&name, &generation.manifest, "home")?;
        again.push(n);
    }
    if !again.is_empty() {
        tracing::info!(
            "`{}` was moved or copied here: registered its {} generation(s) as GC roots again",
            home.root.display(),
            again.len()
        );
    }
    Ok(again)
}

/// Where a command without `--target` finds its home: `$COMFY_HOME`, else the current directory
/// when it is a home, else the one home this store knows (the homes of its live roots). None
/// found: an error that says where it looked.
pub fn locate(
    store: Option<&crate::store::Store>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, RealizeError> {
    if let Some(home) = env("COMFY_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if Home::new(&cwd)?.current().is_some() {
        return Ok(cwd);
    }
    let mut homes: Vec<PathBuf> = Vec::new();
    if let Some(store) = store {
        for root in store.all_roots()? {
            if let Some(home) = crate::store::home_of_root(&root.name) {
                if root.live && !homes.contains(&home) {
                    homes.push(home);
                }
            }
        }
    }
    match homes.len() {
        1 => Ok(homes.remove(0)),
        _ => Err(RealizeError::NoHome { cwd, homes }),
    }
}

/// The paths of a home.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn new(root: &Path) -> Result<Home, RealizeError> {
        let root = std::path::absolute(root).map_err(io(root))?;
        Ok(Home { root })
    }
    pub(super) fn meta(&self) -> PathBuf {
        self.root.join(".comfix")
    }

    /// Refuse a home whose own entries were planted: `.comfix` and what comfix keeps in it must
    /// be real directories and files (a symlink would make realize write where it points),
    /// `current` a link to a generation, and the top links comfix's own.
    pub(super) fn check_safe(&self) -> Result<(), RealizeError> {
        let unsafe_entry = |path: PathBuf, what: &str| RealizeError::Unsafe {
            path,
            what: what.into(),
        };
        let kind = |path: &Path| fs::symlink_metadata(path).ok().map(|m| m.file_type());
        if let Ok(meta) = fs::symlink_metadata(&self.root) {
            if meta.file_type().is_symlink() {
                // The target itself may be a link (to a bigger disk); its entries may not.
            } else if !meta.is_dir() {
                return Err(unsafe_entry(self.root.clone(), "not a directory"));
            }
        }
        for dir in [self.meta(), self.generations(), self.meta().join("saved")] {
            match kind(&dir) {
                Some(t) if t.is_symlink() => return Err(unsafe_entry(dir, "a symlink")),
                Some(t) if !t.is_dir() => return Err(unsafe_entry(dir, "not a directory")),
                _ => {}
            }
        }
        let lock = self.meta().join("lock");
        if kind(&lock).is_some_and(|t| !t.is_file()) {
            return Err(unsafe_entry(lock, "not a regular file"));
        }
        match kind(&self.current_link()) {
            Some(t) if !t.is_symlink() => {
                return Err(unsafe_entry(self.current_link(), "not a symlink"))
            }
            Some(_) => {
                let target =
                    fs::read_link(self.current_link()).map_err(io(&self.current_link()))?;
                let ok = target
                    .strip_prefix("generations")
                    .ok()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                if !ok {
                    return Err(unsafe_entry(
                        self.current_link(),
                        &format!("a link to `{}`, not to a generation", target.display()),
                    ));
                }
            }
            None => {}
        }
        for entry in fs::read_dir(self.generations())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name.strip_suffix(".tmp").unwrap_or(&name);
            if number.parse::<u32>().is_err() {
                return Err(unsafe_entry(entry.path(), "not a generation"));
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => {}
                Ok(t) if t.is_symlink() => return Err(unsafe_entry(entry.path(), "a symlink")),
                _ => return Err(unsafe_entry(entry.path(), "not a directory")),
            }
        }
        for (name, target) in [
            ("ComfyUI", ".comfix/current/ComfyUI"),
            ("models", ".comfix/current/models"),
            (".venv", ".comfix/current/.venv"),
        ] {
            let at = self.root.join(name);
            if let Ok(existing) = fs::read_link(&at) {
                if existing != Path::new(target) {
                    return Err(unsafe_entry(
                        at,
                        &format!("a symlink to `{}`, not comfix's", existing.display()),
                    ));
                }
            }
        }
        Ok(())
    }
    /// Remove what an interrupted realization left (`generations/*.tmp`) and create the next
    /// generation's directory: its number and `generations/<N>.tmp`.
    pub(super) fn start_generation(&self) -> Result<(u32, PathBuf), RealizeError> {
        for entry in fs::read_dir(self.generations())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                link::remove_tree(&entry.path()).map_err(io(&entry.path()))?;
            }
        }
        let number = self.list().last().copied().unwrap_or(0) + 1;
        let building = self.generations().join(format!("{number}.tmp"));
        fs::create_dir_all(&building).map_err(io(&building))?;
        Ok((number, building))
    }

    pub(super) fn generations(&self) -> PathBuf {
        self.meta().join("generations")
    }
    pub fn generation_dir(&self, n: u32) -> PathBuf {
        self.generations().join(n.to_string())
    }
    pub(super) fn current_link(&self) -> PathBuf {
        self.meta().join("current")
    }

    /// The generation `current` points to.
    pub fn current(&self) -> Option<u32> {
        let target = fs::read_link(self.current_link()).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// Every complete generation, ascending.
    pub fn list(&self) -> Vec<u32> {
        let mut out: Vec<u32> = fs::read_dir(self.generations())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort_unstable();
        out
    }

    pub fn read_generation(&self, n: u32) -> Result<Generation, RealizeError> {
        let path = self.generation_dir(n).join("generation.json");
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| RealizeError::Io {
            path,
            source: std::io::Error::other(e),
        })
    }

    /// What generation `n` placed: `files.bin`, or `files.json` in homes from before it.
    pub(super) fn read_files(&self, n: u32) -> Vec<Placed> {
        let dir = self.generation_dir(n);
        match fs::read(dir.join("files.bin")) {
            Ok(bytes) => super::records::decode(&bytes),
            Err(_) => fs::read(dir.join("files.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
        }
        .unwrap_or_default()
    }

    pub(super) fn lock(&self) -> Result<crate::store::flock::LockGuard, RealizeError> {
        fs::create_dir_all(self.generations()).map_err(io(&self.generations()))?;
        let path = self.meta().join("lock");
        crate::store::flock::exclusive(&path).map_err(io(&path))
    }

    /// The name of the GC root of generation `n`.
    pub fn root_name(&self, n: u32) -> String {
        format!("home:{}#{n}", self.root.display())
    }

    /// Point `current` at generation `n` in one rename.
    pub(super) fn switch(&self, n: u32) -> Result<(), RealizeError> {
        let tmp = self.meta().join("current.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("generations/{n}"), &tmp).map_err(io(&tmp))?;
        fs::rename(&tmp, self.current_link()).map_err(io(&self.current_link()))?;
        sync_dir(&self.meta());
        Ok(())
    }

    /// Make sure `<home>/ComfyUI` (and `<home>/models` for a home-local models directory) point
    /// into `current`; refuse to replace anything comfix did not make.
    pub(super) fn ensure_top_links(
        &self,
        local_models: bool,
        venv: bool,
    ) -> Result<(), RealizeError> {
        let mut wanted = vec![("ComfyUI", ".comfix/current/ComfyUI")];
        if local_models {
            wanted.push(("models", ".comfix/current/models"));
        }
        let venv_link = self.root.join(".venv");
        if venv {
            wanted.push((".venv", ".comfix/current/.venv"));
        } else if fs::read_link(&venv_link).is_ok_and(|t| t == Path::new(".comfix/current/.venv")) {
            // This generation has no venv; ours would dangle.
            fs::remove_file(&venv_link).map_err(io(&venv_link))?;
        }
        for (name, target) in wanted {
            let at = self.root.join(name);
            match fs::read_link(&at) {
                Ok(existing) if existing == Path::new(target) => continue,
                Ok(_) => fs::remove_file(&at).map_err(io(&at))?,
                Err(_) if fs::symlink_metadata(&at).is_ok() => {
                    return Err(RealizeError::Foreign { path: at })
                }
                Err(_) => {}
            }
            std::os::unix::fs::symlink(target, &at).map_err(io(&at))?;
        }
        Ok(())
    }
}

pub(super) fn sync_dir(dir: &Path) {
    if let Ok(file) = fs::File::open(dir) {
        let _ = rustix::fs::syncfs(&file);
    }
}

/// The directory a disabled node goes to, as ComfyUI-Manager names it.
pub fn disabled_dir_name(node: &crate::lock::LockedNode) -> String {
    match &node.registry {
        Some(r) => format!("{}@{}", r.id.to_lowercase(), r.version.replace('.', "_")),
        None => format!("{}@nightly", node.name.to_lowercase()),
    }
}

/// `path` made absolute and free of symlinks and `..` as far as it exists; the rest appended.
pub(super) fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuse a home or models directory inside the store, and a store inside either: the
/// collector would delete a home it took for garbage, or a home's owner the store.
pub fn check_apart(
    store: &Path,
    target: &Path,
    models_dir: Option<&Path>,
) -> Result<(), RealizeError> {
    let store = resolved(store);
    let places = [
        ("the home", Some(target)),
        ("the models directory", models_dir),
    ];
    for (what, path) in places {
        let Some(path) = path else { continue };
        let path = resolved(path);
        if path.starts_with(&store) {
            return Err(RealizeError::InsideStore { what, path, store });
        }
        if store.starts_with(&path) {
            return Err(RealizeError::StoreInside { what, path, store });
        }
    }
    // Nor inside another home: a home's generations are its own (and the store or a second home
    // inside one would be carried, copied or collected with it).
    let target = resolved(target);
    let inside_home = |path: &Path| {
        path.ancestors()
            .skip(1)
            .find(|a| a.join(".comfix/generations").is_dir())
            .map(Path::to_path_buf)
    };
    if let Some(home) = inside_home(&target) {
        return Err(RealizeError::InsideHome {
            what: "the home",
            path: target,
            home,
        });
    }
    if let Some(home) = inside_home(&store).or_else(|| {
        store
            .join(".comfix/generations")
            .is_dir()
            .then(|| store.clone())
    }) {
        return Err(RealizeError::InsideHome {
            what: "the store",
            path: store,
            home,
        });
    }
    Ok(())
}

/// A generation being built, removed on drop unless it was finished.
pub(super) struct Unfinished(pub(super) Option<PathBuf>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(err) = link::remove_tree(&dir) {
                tracing::warn!(
                    "cannot remove the unfinished generation `{}`: {err}",
                    dir.display()
                );
            }
        }
    }
}
