//! A store shared by a group of Unix users, as store-layout.md documents making one (`chgrp`,
//! `chmod 2775`): root and a second, unprivileged user (`comfix-peer`, in group `comfix-share`)
//! each realize, run and test versions, collect garbage and verify — and nothing either runs
//! writes into the store. Needs root (to act as the second user); the users are created when
//! missing (`.ci/run` creates them too).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::support::git::{Entry, TestRepo};
use crate::support::*;

const PEER: &str = "comfix-peer";
const GROUP: &str = "comfix-share";

/// The peer's uid and gid, the user and group created when missing; `None` when not root.
fn peer() -> Option<(u32, u32)> {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("skipping: acting as a second Unix user needs root (CI runs as root)");
        return None;
    }
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if Command::new("getent")
        .args(["group", GROUP])
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        Command::new("groupadd").args(["--system", GROUP]).ok();
    }
    if id(&["-u", PEER]).is_none() {
        Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                GROUP,
                PEER,
            ])
            .ok();
    }
    Some((id(&["-u", PEER])?, id(&["-g", PEER])?))
}

struct Shared {
    env: TestEnv,
    store: PathBuf,
    /// Python (the machine's, reachable by every user), uv and comfix, for both users.
    bin: PathBuf,
    wheels: PathBuf,
    peer_home: PathBuf,
    uid: u32,
    gid: u32,
}

impl Shared {
    fn new(uid: u32, gid: u32) -> Shared {
        let env = TestEnv::new();
        // The second user walks the test's directory (a temporary directory is 0700).
        fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = env.path("bin");
        fs::create_dir_all(&bin).unwrap();
        // A Python every user can run: root's may live under /root (pyenv).
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("a system python3");
        let python = fs::canonicalize(python).unwrap();
        let minor = String::from_utf8(
            Command::new(&python)
                .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        std::os::unix::fs::symlink(&python, bin.join("python3")).unwrap();
        std::os::unix::fs::symlink(&python, bin.join(format!("python{}", minor.trim()))).unwrap();
        // Copies: the repository's directory may not be open to other users.
        fs::copy(uv_binary(), bin.join("uv")).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_comfix"), bin.join("comfix")).unwrap();

        // The version: the stand-in core, a node, a model, a workflow, a Python set.
        let repos = env.path("repos");
        let mut core = TestRepo::new(&repos.join("ComfyUI.git"));
        core.commit("main", &[("main.py", Entry::File(STANDIN))]);
        let mut node = TestRepo::new(&repos.join("invert.git"));
        node.commit("main", &[("__init__.py", Entry::File(INVERT_NODE))]);
        let models = env.path("models");
        fs::create_dir_all(&models).unwrap();
        fs::write(models.join("tiny.safetensors"), b"model bytes".repeat(100)).unwrap();
        let wheels = env.path("wheelhouse");
        crate::support::wheels::write_dir(&wheels, &crate::python::packages());
        fs::create_dir_all(env.work.join("versions/workflows")).unwrap();
        fs::write(
            env.work.join("versions/workflows/ok.json"),
            workflow_ok().to_string(),
        )
        .unwrap();
        for (id, requirements) in [("v1", json!(["gamma"])), ("v2", json!(["gamma", "delta"]))] {
            let spec = json!({
                "schema_version": 2,
                "version_id": id,
                "comfy": {"repo": core.url(), "ref": "main"},
                "custom_nodes": [{"repo": node.url(), "name": "invert", "ref": "main"}],
                "models": [{"source": format!("file://{}/tiny.safetensors", models.display()), "target_subdir": "checkpoints"}],
                "workflows": ["workflows/ok.json"],
                "python": {"version": minor.trim(), "requirements": requirements}
            });
            fs::write(
                env.work.join(format!("versions/{id}.json")),
                spec.to_string(),
            )
            .unwrap();
        }
        // Locks are written by both users beside the specs.
        let chown = |p: &Path| {
            Command::new("chown")
                .args(["-R", &format!("root:{GROUP}")])
                .arg(p)
                .ok();
        };
        chown(&env.work.join("versions"));
        Command::new("chmod")
            .args(["-R", "g+w"])
            .arg(env.work.join("versions"))
            .status()
            .unwrap();

        // The documented way to make a shared store.
        let store = env.path("shared-store");
        fs::create_dir_all(&store).unwrap();
        chown(&store);
        fs::set_permissions(&store, fs::Permissions::from_mode(0o2775)).unwrap();

        let peer_home = env.path("peer");
        fs::create_dir_all(&peer_home).unwrap();
        std::os::unix::fs::chown(&peer_home, Some(uid), Some(gid)).unwrap();
        Shared {
            env,
            store,
            bin,
            wheels,
            peer_home,
            uid,
            gid,
        }
    }

    fn path(&self) -> OsString {
        std::env::join_paths([self.bin.clone(), "/usr/bin".into(), "/bin".into()]).unwrap()
    }

    /// comfix as root, on the shared store.
    fn root(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.bin.join("comfix"));
        users_world(&mut cmd)
            .env("PATH", self.path())
            .env("HOME", self.env.dir.path())
            .env("TMPDIR", self.env.path("tmp-root"))
            .current_dir(&self.env.work)
            .arg("--store")
            .arg(&self.store)
            .args(args);
        fs::create_dir_all(self.env.path("tmp-root")).unwrap();
        cmd.output().unwrap()
    }

    /// comfix as the second user, on the shared store.
    fn peer(&self, args: &[&str]) -> Output {
        self.peer_on(&self.store, args)
    }

    /// comfix as the second user, on `store`.
    fn peer_on(&self, store: &Path, args: &[&str]) -> Output {
        let mut cmd = self.as_peer(&self.bin.join("comfix"));
        cmd.env("PATH", self.path())
            .env("TMPDIR", &self.peer_home)
            .current_dir(&self.env.work)
            .arg("--store")
            .arg(store)
            .args(args);
        cmd.output().unwrap()
    }

    /// A program as the second user.
    fn peer_runs(&self, program: &Path, args: &[&str]) -> Output {
        self.as_peer(program).args(args).output().unwrap()
    }

    /// `program` to be run as the second user (`setpriv`), in a user's empty environment.
    fn as_peer(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        users_world(&mut cmd)
            .env("HOME", &self.peer_home)
            .args([
                "--reuid",
                &self.uid.to_string(),
                "--regid",
                &self.gid.to_string(),
                "--init-groups",
                "--",
            ])
            .arg(program);
        cmd
    }
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn tree_hash(store: &Path, name: &str) -> String {
    let meta: Value = serde_json::from_str(
        &fs::read_to_string(store.join("meta").join(format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    meta["tree_hash"].as_str().unwrap().to_string()
}

#[test]
fn two_users_realize_run_collect_and_verify_one_shared_store() {
    let Some((uid, gid)) = peer() else { return };
    let s = Shared::new(uid, gid);
    let wheels = s.wheels.to_str().unwrap().to_string();
    let root_home = s.env.path("home-root");
    ok(
        s.root(&[
            "realize",
            "v1",
            "--wheels-dir",
            &wheels,
            "--target",
            root_home.to_str().unwrap(),
        ]),
        "root realizes v1",
    );
    // What root made is the group's: the db, VERSION, and the directories it created.
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode(&s.store.join("db/db.sqlite")) & 0o060,
        0o060,
        "the db is the group's"
    );
    assert_eq!(mode(&s.store.join("VERSION")) & 0o040, 0o040);
    assert_eq!(mode(&s.store.join("paths")) & 0o2070, 0o2070);

    // The team's lead resolves v2 (the lock is what a team commits); the second user realizes
    // it (building its venv themselves), runs its Python and tests its workflow with the
    // stand-in ComfyUI.
    ok(
        s.root(&["resolve", "v2", "--wheels-dir", &wheels]),
        "root resolves v2",
    );
    let peer_home = s.peer_home.join("home");
    let target = peer_home.to_str().unwrap();
    ok(
        s.peer(&["realize", "v2", "--wheels-dir", &wheels, "--target", target]),
        "peer realizes v2",
    );
    let venv = fs::canonicalize(peer_home.join(".venv")).unwrap();
    assert!(venv.starts_with(&s.store));
    ok(
        s.peer_runs(
            &peer_home.join(".venv/bin/python"),
            &["-c", "import gamma, delta"],
        ),
        "peer imports every package",
    );
    ok(s.peer(&["test", "--target", target]), "peer tests v2");
    // Root runs the peer's venv too, without PYTHONDONTWRITEBYTECODE.
    let mut python = Command::new(peer_home.join(".venv/bin/python"));
    ok(
        users_world(&mut python)
            .args(["-c", "import gamma, delta"])
            .output()
            .unwrap(),
        "root imports the peer's venv",
    );

    // Root's home goes; the peer collects what only it used (root's files: set aside for root).
    fs::remove_dir_all(&root_home).unwrap();
    let collected = ok(
        s.peer(&["--json", "gc", "--home-grace", "0s"]),
        "peer collects",
    );
    let report: Value = json_of(&collected);
    assert!(
        !report["report"]["deleted_paths"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{report}"
    );
    says(&collected, "belongs to another user: set aside");
    ok(
        s.peer(&["store", "verify", "--check-contents"]),
        "peer verifies",
    );
    ok(s.root(&["gc", "--home-grace", "0s"]), "root collects");
    let left: Vec<String> = fs::read_dir(s.store.join("paths"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".trash-"))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "root's collection removed what was set aside for it"
    );
    ok(
        s.root(&["store", "verify", "--check-contents"]),
        "root verifies",
    );
    // The peer's home still works after both collections.
    ok(s.peer(&["test", "--target", target]), "peer tests v2 again");

    // The peer repairs a damaged file of the venv it built: the damaged tree is moved aside
    // first, which a store path's read-only directory forbids anyone but root until it is made
    // writable.
    let damaged = walkdir::WalkDir::new(&venv)
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "py"))
        .expect("a module in the venv")
        .into_path();
    overwrite(&damaged, b"damaged = True\n");
    ok(
        s.peer(&["store", "verify", "--repair"]),
        "peer repairs its venv",
    );
    ok(
        s.peer(&["store", "verify", "--check-contents"]),
        "the store is whole again",
    );
    ok(
        s.peer(&["test", "--target", target]),
        "peer tests v2 after the repair",
    );

    // The venv the peer built is the one a private store builds, byte for byte.
    let private = s.env.path("private-store");
    let mut cmd = Command::new(s.bin.join("comfix"));
    ok(
        users_world(&mut cmd)
            .env("PATH", s.path())
            .env("HOME", s.env.dir.path())
            .current_dir(&s.env.work)
            .arg("--store")
            .arg(&private)
            .args(["realize", "v2", "--wheels-dir", &wheels, "--target"])
            .arg(s.env.path("home-private"))
            .output()
            .unwrap(),
        "root realizes v2 on a private store",
    );
    let name = venv.file_name().unwrap().to_str().unwrap();
    assert_eq!(tree_hash(&s.store, name), tree_hash(&private, name));

    // Root's private store is read-only for the second user: it still realizes the version it
    // holds, Python included (uv's cache goes to the user's own cache directory), and runs it.
    let read_only_home = s.peer_home.join("from-read-only");
    ok(
        s.peer_on(
            &private,
            &[
                "realize",
                "v2",
                "--offline",
                "--frozen",
                "--target",
                read_only_home.to_str().unwrap(),
            ],
        ),
        "peer realizes v2 from a read-only store",
    );
    ok(
        s.peer_runs(
            &read_only_home.join(".venv/bin/python"),
            &["-c", "import gamma, delta"],
        ),
        "the read-only store's venv runs",
    );
    // A store the user cannot even read: said so, not "no store" or a missing Python.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let out = s.peer_on(&private, &["store", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "permission denied");
    assert!(
        stderr(&out).contains(&private.display().to_string()),
        "{}",
        stderr(&out)
    );
}
