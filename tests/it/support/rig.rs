//! The ComfyUI stand-in (`tests/standin/main.py`: ComfyUI's HTTP and websocket API, a few
//! nodes) and a `Rig` that realizes a version around it and drives `comfix test`/`run`: one
//! version `v1` (stand-in core, one git node, one checkpoint, one workflow), its home, and a
//! `TMPDIR` of its own where the servers' logs land.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::git::{Entry, TestRepo};
use super::http::{Route, TestServer};
use super::*;

pub const STANDIN: &[u8] = include_bytes!("../../standin/main.py");

pub const INVERT_NODE: &[u8] = b"class InvertImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {'required': {'images': ('IMAGE',)}}
    RETURN_TYPES = ('IMAGE',)
    FUNCTION = 'invert'
    CATEGORY = 'image'
    def invert(self, images):
        for image in images:
            image.rgb = bytes(255 - b for b in image.rgb)
        return (images,)

NODE_CLASS_MAPPINGS = {'InvertImage': InvertImage}
";

pub struct Rig {
    pub env: TestEnv,
    _server: TestServer,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

pub fn workflow_ok() -> Value {
    json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "ModelNoise", "inputs": {"model": ["1", 0], "seed": 7}},
        "3": {"class_type": "InvertImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "ok"}}
    })
}

pub fn empty_then(class: &str, inputs: Value) -> Value {
    let mut inputs = inputs;
    inputs["images"] = json!(["1", 0]);
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1, "color": 255}},
        "2": {"class_type": class, "inputs": inputs},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
    })
}

impl Rig {
    /// A version `v1` (stand-in core, one git node, one checkpoint, one workflow), realized.
    pub fn new() -> Rig {
        Rig::with_core(STANDIN)
    }

    pub fn with_core(main_py: &[u8]) -> Rig {
        Rig::build(main_py, false)
    }

    /// With `python` the version has a Python section (`gamma`, from a wheels directory), so the
    /// home runs ComfyUI from a venv in the store.
    pub fn build(main_py: &[u8], python: bool) -> Rig {
        let env = TestEnv::new();
        let repos = env.path("repos");
        let mut core = TestRepo::new(&repos.join("ComfyUI.git"));
        core.commit("main", &[("main.py", Entry::File(main_py))]);
        let mut node = TestRepo::new(&repos.join("invert.git"));
        node.commit("main", &[("__init__.py", Entry::File(INVERT_NODE))]);
        let server = TestServer::start();
        server.route("/tiny.safetensors", Route::file(b"model bytes".repeat(100)));
        let dir = env.work.join("versions");
        fs::create_dir_all(env.work.join("versions/workflows")).unwrap();
        fs::write(
            env.work.join("versions/workflows/ok.json"),
            workflow_ok().to_string(),
        )
        .unwrap();
        let mut spec = json!({
            "schema_version": 2,
            "version_id": "v1",
            "comfy": {"repo": core.url(), "ref": "main"},
            "custom_nodes": [{"repo": node.url(), "name": "invert", "ref": "main"}],
            "models": [{"source": server.url("/tiny.safetensors"), "target_subdir": "checkpoints", "filename": "tiny.safetensors"}],
            "workflows": ["workflows/ok.json"]
        });
        let wheels = env.path("wheelhouse");
        if python {
            crate::support::wheels::write_dir(&wheels, &crate::python::packages());
            spec["python"] = json!({
                "version": crate::python::python_version(),
                "requirements": ["gamma"]
            });
        }
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("v1.json"), spec.to_string()).unwrap();
        let home = env.path("home");
        let tmp = env.path("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let rig = Rig {
            env,
            _server: server,
            home,
            tmp,
        };
        let mut realize = rig.cmd();
        realize.args(["realize", "v1", "--target"]).arg(&rig.home);
        if python {
            realize.arg("--wheels-dir").arg(&wheels);
        }
        let out = realize.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        rig
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = self.env.cmd();
        cmd.env("TMPDIR", &self.tmp);
        cmd
    }

    pub fn write(&self, name: &str, workflow: &Value) -> PathBuf {
        let path = self.env.work.join(name);
        fs::write(&path, workflow.to_string()).unwrap();
        path
    }

    pub fn test(&self, args: &[&str]) -> Output {
        let out = self
            .cmd()
            .arg("test")
            .arg("--target")
            .arg(&self.home)
            .args(args)
            .output()
            .unwrap();
        self.assert_no_comfyui_left();
        out
    }

    /// `comfix check-workflow --target <home> <files…>`, whatever its exit code.
    pub fn check_workflow(&self, files: &[&str]) -> Output {
        self.cmd()
            .args(["check-workflow", "--target"])
            .arg(&self.home)
            .args(files)
            .output()
            .unwrap()
    }

    /// Every process whose working directory is in the home (ComfyUI runs in `ComfyUI/`).
    pub fn comfyui_processes(&self) -> Vec<u32> {
        let home = fs::canonicalize(&self.home).unwrap();
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let zombie = fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            if let Ok(cwd) = fs::read_link(entry.path().join("cwd")) {
                if cwd.starts_with(&home) && !zombie {
                    out.push(pid);
                }
            }
        }
        out
    }

    pub fn assert_no_comfyui_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.comfyui_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            self.comfyui_processes(),
            Vec::<u32>::new(),
            "ComfyUI processes left running"
        );
    }

    /// `comfix test` of a workflow that sleeps a minute, spawned; returns once ComfyUI has taken
    /// the prompt (its log says `got prompt`).
    pub fn spawn_slow_test(&self) -> std::process::Child {
        let file = self.write("slow.json", &empty_then("Sleep", json!({"seconds": 60.0})));
        let child = self
            .cmd()
            .args(["test", "--target"])
            .arg(&self.home)
            .args(["--workflow", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.logs().contains("got prompt") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// The servers' logs (`TMPDIR` is the rig's).
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for e in fs::read_dir(&self.tmp).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("comfyui-") {
                text.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        text
    }
}

pub fn lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
