//! The no-op `realize` answered before a session: `.comfix/request.json` records the key of the
//! exact request (the caller's: spec and lock bytes, arguments, environment, the machine's
//! witnesses — see `cli::realize`) whose realize last found the home up to date, with what that
//! realize answered.
//!
//! The same request again, while the current generation is the one recorded, its directories
//! untouched since a full check ([`super::checked`]), its mounts in place and what it links into
//! the store still there, gets the same answer without opening the store, resolving or planning:
//! nothing a session would learn could have changed. Anything else — another request, a new
//! generation, a changed directory, a check that found drift — goes the whole way, which
//! records the request again when it finds the home up to date.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{checked, status, Home, UsedMode};

const FILE: &str = "request.json";

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    key: String,
    generation: u32,
    /// The home's own `models/` (no `--models-dir`): the top links to keep.
    local_models: bool,
    /// What that realize answered (its JSON document).
    answer: serde_json::Value,
}

/// What a realize of request `key` answered, when the home at `target` is still that answer:
/// the current generation recorded with the key, untouched, its mounts in place and resolving.
/// `None`: go the whole way.
pub fn answer(target: &Path, key: &str) -> Option<serde_json::Value> {
    let home = Home::new(target).ok()?;
    let request: Request = serde_json::from_slice(&fs::read(home.meta().join(FILE)).ok()?).ok()?;
    if request.key != key {
        return None;
    }
    home.check_safe().ok()?;
    // A realize at work on this home finishes first; then it is looked at as it is.
    let _lock = home.lock().ok()?;
    let n = home.current()?;
    if n != request.generation || !checked::untouched(&home, n) {
        return None;
    }
    let generation = home.read_generation(n).ok()?;
    if !status::mounts_drift(&home, n, &generation, false).is_empty() {
        return None;
    }
    // What the home links into the store is still there (a store path deleted by hand, a store
    // put back from a backup): a session would fetch or build it again.
    let dir = home.generation_dir(n);
    let venv = generation.mounts.iter().any(|m| m.kind == "venv");
    let resolves = generation
        .mounts
        .iter()
        .filter(|m| m.mode == UsedMode::Symlink && m.in_place.is_none())
        .all(|m| {
            let at = dir.join(&m.at);
            // The venv's interpreter too: a venv outlives the Python it was made with only in name.
            let at = match m.kind.as_str() {
                "venv" => at.join("bin/python"),
                _ => at,
            };
            fs::metadata(at).is_ok()
        });
    if !resolves {
        return None;
    }
    home.ensure_top_links(request.local_models, venv).ok()?;
    Some(request.answer)
}

/// Record that request `key` found the home at `target` up to date at generation `n`, answering
/// `answer`. Best effort: without the record the next realize goes the whole way.
pub fn remember(target: &Path, key: &str, n: u32, local_models: bool, answer: serde_json::Value) {
    let Ok(home) = Home::new(target) else {
        return;
    };
    let request = Request {
        key: key.to_string(),
        generation: n,
        local_models,
        answer,
    };
    let path = home.meta().join(FILE);
    let tmp = home.meta().join(format!("{FILE}.tmp"));
    let Ok(text) = serde_json::to_vec(&request) else {
        return;
    };
    if fs::write(&tmp, text)
        .and_then(|_| fs::rename(&tmp, &path))
        .is_err()
    {
        let _ = fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A home whose generation 1 holds a core directory and a venv linked to `venv_target`,
    /// checked clean (its directories aged past the racy second).
    fn checked_home(root: &Path, venv_target: &Path) -> Home {
        let home = Home::new(root).expect("home");
        let gen = home.generation_dir(1);
        fs::create_dir_all(gen.join("ComfyUI")).expect("dirs");
        std::os::unix::fs::symlink(venv_target, gen.join(".venv")).expect("venv link");
        let generation = serde_json::json!({
            "generation": 1, "version_id": "v", "key": "k", "created_at": 0,
            "models_dir": root.join("models"), "skip_models": false, "link_mode": "auto",
            "manifest": "m",
            "mounts": [{"at": ".venv", "store_path": "venv-x", "kind": "venv", "mode": "symlink"}],
        });
        fs::write(gen.join("generation.json"), generation.to_string()).expect("generation");
        let dirs = super::super::carry::dir_stamps(&gen);
        fs::write(
            gen.join("dirs.json"),
            serde_json::to_vec(&dirs).expect("json"),
        )
        .expect("dirs");
        let ten_s_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        for dir in [gen.clone(), gen.join("ComfyUI")] {
            fs::File::open(&dir)
                .and_then(|f| f.set_modified(ten_s_ago))
                .expect("age");
        }
        std::os::unix::fs::symlink("generations/1", home.meta().join("current")).expect("current");
        checked::record(&home, 1, checked::take(&home, 1).expect("stamps"));
        home
    }

    #[test]
    fn only_the_same_request_on_the_same_untouched_generation_is_answered() {
        let tmp = tempfile::tempdir().expect("tmp");
        let venv = tmp.path().join("store/venv-x");
        fs::create_dir_all(venv.join("bin")).expect("venv");
        fs::write(venv.join("bin/python"), b"").expect("python");
        let root = tmp.path().join("home");
        let home = checked_home(&root, &venv);
        let said = serde_json::json!({"up_to_date": true, "generation": 1});
        assert_eq!(answer(&root, "k1"), None, "nothing recorded");

        remember(&root, "k1", 1, true, said.clone());
        assert_eq!(answer(&root, "k1"), Some(said.clone()));
        assert!(root.join("ComfyUI").is_symlink(), "the top links are kept");
        assert_eq!(answer(&root, "k2"), None, "another request");

        // The venv's interpreter gone: the venv is no longer what the home needs.
        fs::remove_file(venv.join("bin/python")).expect("rm");
        assert_eq!(answer(&root, "k1"), None);
        fs::write(venv.join("bin/python"), b"").expect("python");
        assert_eq!(answer(&root, "k1"), Some(said.clone()));

        // A directory changed, or a check that forgot the stamps: the whole way.
        checked::forget(&home);
        assert_eq!(answer(&root, "k1"), None);
        checked::record(&home, 1, checked::take(&home, 1).expect("stamps"));
        assert_eq!(answer(&root, "k1"), Some(said.clone()));

        // Another generation current.
        remember(&root, "k1", 2, true, said);
        assert_eq!(answer(&root, "k1"), None);
    }
}
