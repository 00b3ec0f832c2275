//! The torch backend: a machine's choice (CPU, a CUDA version, ROCm, XPU), never the shared lock's.
//!
//! The shared lock holds one wheel set, resolved from the default index. A machine that asks for
//! a backend gets an *overlay*: the lock's requirements resolved again with the backend's index
//! first (the PyTorch index for that backend, or a mirror), every package outside torch's family
//! held to the lock's version, torch's family to the lock's release (`2.5.1` accepts `2.5.1+cpu`).
//! The overlay is an input-addressed store path (`<digest>-torch-<backend>`, a JSON file naming
//! its wheels, which it references), keyed by the lock's Python section, the backend, its index,
//! the platform and uv: resolved once per machine kind, then found in the store (offline too).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::uv::{Interpreter, Uv};
use super::{requirements, Compile, PinnedWheel, PythonError};
use crate::lock::{LockedPython, LockedWheel};
use crate::store::Add;

/// Where each backend's wheels come from unless configured: `{backend}` is replaced.
pub const DEFAULT_INDEX: &str = "https://download.pytorch.org/whl/{backend}";

/// Bumped when the way an overlay is resolved changes.
const RECIPE_VERSION: &str = "comfix-torch-overlay-v1";

/// A torch backend, by the PyTorch index's name for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    /// `cu121`: CUDA 12.1.
    Cuda {
        major: u32,
        minor: u32,
    },
    /// `rocm6.2`.
    Rocm(String),
    Xpu,
}

impl Backend {
    /// `cpu`, `cuXYZ` (`cu121`, `cu128`, `cu130`), `rocmX.Y` (`rocm6.2`) or `xpu`.
    pub fn parse(name: &str) -> Result<Backend, PythonError> {
        let unknown = || PythonError::UnknownBackend {
            name: name.to_string(),
        };
        match name {
            "cpu" => return Ok(Backend::Cpu),
            "xpu" => return Ok(Backend::Xpu),
            _ => {}
        }
        if let Some(digits) = name.strip_prefix("cu") {
            if !(2..=4).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unknown());
            }
            let (major, minor) = digits.split_at(digits.len() - 1);
            return Ok(Backend::Cuda {
                major: major.parse().map_err(|_| unknown())?,
                minor: minor.parse().map_err(|_| unknown())?,
            });
        }
        if let Some(version) = name.strip_prefix("rocm") {
            let parts: Vec<&str> = version.split('.').collect();
            if parts.len() == 2
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Ok(Backend::Rocm(version.to_string()));
            }
        }
        Err(unknown())
    }

    /// The index's name for it (`cu121`).
    pub fn tag(&self) -> String {
        match self {
            Backend::Cpu => "cpu".into(),
            Backend::Cuda { major, minor } => format!("cu{major}{minor}"),
            Backend::Rocm(version) => format!("rocm{version}"),
            Backend::Xpu => "xpu".into(),
        }
    }
}

/// What the machine has: an NVIDIA driver (its version), a ROCm install (its version).
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub nvidia_driver: Option<String>,
    pub rocm: Option<String>,
}

impl Machine {
    /// Read from `/proc/driver/nvidia/version` and `/opt/rocm/.info/version`.
    pub fn detect() -> Machine {
        let nvidia = std::fs::read_to_string("/proc/driver/nvidia/version").ok();
        let rocm = std::fs::read_to_string("/opt/rocm/.info/version").ok();
        Machine {
            nvidia_driver: nvidia.as_deref().and_then(nvidia_driver_version),
            rocm: rocm.as_deref().and_then(rocm_version),
        }
    }

    /// `auto`: the newest CUDA the driver runs, else ROCm's version, else the CPU.
    pub fn backend(&self) -> Backend {
        if let Some((major, minor)) = self.nvidia_driver.as_deref().and_then(max_cuda) {
            return Backend::Cuda { major, minor };
        }
        if let Some(rocm) = &self.rocm {
            return Backend::Rocm(rocm.clone());
        }
        Backend::Cpu
    }

    /// Refuse a CUDA backend newer than the driver runs (a missing driver is not refused: a CI
    /// machine may build a CUDA venv for a GPU machine).
    pub fn check(&self, backend: &Backend) -> Result<(), PythonError> {
        let (Backend::Cuda { major, minor }, Some(driver)) = (backend, &self.nvidia_driver) else {
            return Ok(());
        };
        let runs = max_cuda(driver);
        if runs.is_none_or(|most| (*major, *minor) > most) {
            return Err(PythonError::DriverTooOld {
                backend: backend.tag(),
                driver: driver.clone(),
                most: runs.map(|(a, b)| Backend::Cuda { major: a, minor: b }.tag()),
            });
        }
        Ok(())
    }
}

/// `550.54.14` from the driver's `NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14 …`.
pub fn nvidia_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|w| w.contains('.') && w.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .map(str::to_string)
}

/// `6.2` from ROCm's `6.2.0-66`.
pub fn rocm_version(text: &str) -> Option<String> {
    let mut parts = text.trim().split(['.', '-']);
    let major = parts.next().filter(|p| p.parse::<u32>().is_ok())?;
    let minor = parts.next().filter(|p| p.parse::<u32>().is_ok())?;
    Some(format!("{major}.{minor}"))
}

/// The newest CUDA of the PyTorch index that a Linux driver of this version runs (NVIDIA's
/// minimum driver per CUDA toolkit).
pub fn max_cuda(driver: &str) -> Option<(u32, u32)> {
    const TABLE: [(u32, (u32, u32)); 7] = [
        (580, (13, 0)),
        (570, (12, 8)),
        (560, (12, 6)),
        (550, (12, 4)),
        (525, (12, 1)),
        (520, (11, 8)),
        (450, (11, 0)),
    ];
    let major: u32 = driver.split('.').next()?.parse().ok()?;
    TABLE
        .iter()
        .find(|(min, _)| major >= *min)
        .map(|(_, cuda)| *cuda)
}

/// Torch's family: what the backend decides (torch, its companions and the GPU libraries).
pub fn in_family(name: &str) -> bool {
    let name = requirements::normalize(name);
    matches!(
        name.as_str(),
        "torch"
            | "torchvision"
            | "torchaudio"
            | "triton"
            | "pytorch-triton"
            | "pytorch-triton-rocm"
            | "pytorch-triton-xpu"
    ) || name.starts_with("nvidia-")
}

/// The stored overlay: what a backend changes in a lock's wheel set, on one kind of machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub backend: String,
    pub index: String,
    pub platform: String,
    /// The whole wheel set for this backend (packages outside torch's family as the lock has them).
    pub wheels: Vec<LockedWheel>,
}

/// The overlay's input-addressed store path name.
pub fn overlay_name(
    python: &LockedPython,
    backend: &Backend,
    index: &str,
    platform: &str,
    uv: &Uv,
) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut field = |value: &[u8]| {
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value);
    };
    field(RECIPE_VERSION.as_bytes());
    field(
        serde_json::to_string(&python.requirements)
            .unwrap_or_default()
            .as_bytes(),
    );
    field(python.version.as_bytes());
    for wheel in &python.wheels {
        field(wheel.name.as_bytes());
        field(wheel.version.as_bytes());
        field(wheel.sha256.as_bytes());
    }
    field(backend.tag().as_bytes());
    field(index.as_bytes());
    field(platform.as_bytes());
    field(uv.version.as_bytes());
    format!(
        "{}-torch-{}",
        &hasher.finalize().to_hex()[..32],
        backend.tag()
    )
}

/// This machine's kind, as an overlay is keyed: OS, architecture and the interpreter's version.
pub fn platform(interpreter: &Interpreter) -> String {
    format!(
        "{}-{}-py{}",
        std::env::consts::OS,
        std::env::consts::ARCH,
        interpreter.version
    )
}

/// The index of `backend` from a template (`{backend}` replaced).
pub fn index_for(template: &str, backend: &Backend) -> String {
    template.replace("{backend}", &backend.tag())
}

/// Resolve the lock's requirements for `backend`: its index first, every package outside torch's
/// family held to the lock's version, the family to the lock's releases.
pub fn compile(
    uv: &Uv,
    scratch: &Path,
    python: &LockedPython,
    interpreter: &Interpreter,
    backend: &Backend,
    index: &str,
    offline: bool,
) -> Result<Vec<PinnedWheel>, PythonError> {
    let constraints = scratch.join("constraints.txt");
    let mut text = String::new();
    for wheel in &python.wheels {
        let release = match in_family(&wheel.name) {
            // The family's GPU libraries follow the backend; torch keeps its release.
            true if wheel.name.starts_with("nvidia-") => continue,
            true => wheel.version.split('+').next().unwrap_or(&wheel.version),
            false => wheel.version.as_str(),
        };
        text.push_str(&format!("{}=={release}\n", wheel.name));
    }
    std::fs::write(&constraints, text).map_err(PythonError::io(&constraints))?;
    let groups: Vec<&super::Group> = python.requirements.iter().collect();
    let compile = Compile {
        uv,
        scratch,
        version: &python.version,
        interpreter: Some(interpreter),
        wheels_dir: None,
        offline,
        universal: false,
    };
    let pylock = compile
        .pylock_with(&groups, Some((&constraints, index)))
        .map_err(|e| match e {
            PythonError::Uv { stderr, .. } => PythonError::BackendUnresolvable {
                backend: backend.tag(),
                index: index.to_string(),
                uv: stderr,
            },
            other => other,
        })?;
    let wheels = super::select_wheels(&pylock, Some(interpreter))?;
    let Some(torch) = wheels.iter().find(|w| w.name == "torch") else {
        return Err(PythonError::BackendUnresolvable {
            backend: backend.tag(),
            index: index.to_string(),
            uv: "the lock has no `torch`: a torch backend changes nothing".into(),
        });
    };
    // uv passes over an index that does not answer (or lacks the project) to the default one:
    // torch from anywhere but the backend's index is not the backend's torch.
    let origin = |u: &str| url::Url::parse(u).ok().map(|u| u.origin());
    if origin(&torch.url).is_none() || origin(&torch.url) != origin(index) {
        return Err(PythonError::BackendUnresolvable {
            backend: backend.tag(),
            index: index.to_string(),
            uv: format!(
                "the index does not serve `torch` {} (uv found only `{}`)",
                torch.version.split('+').next().unwrap_or(&torch.version),
                torch.url
            ),
        });
    }
    Ok(wheels)
}

/// The overlay of `python` for `backend` on this machine: found in the store, else resolved from
/// `index`, its wheels fetched (at most as many at once as `jobs` allows), and stored (not
/// `online`: only found). Returns its store path name and whether it was resolved now.
#[allow(clippy::too_many_arguments)]
pub async fn overlay(
    store: &crate::store::Store,
    client: &crate::fetch::http::Client,
    reporter: &dyn crate::reporter::Reporter,
    python: &LockedPython,
    backend: &Backend,
    index: &str,
    online: bool,
    jobs: &tokio::sync::Semaphore,
) -> Result<(String, bool), PythonError> {
    let offline = !online;
    let (name, found, uv, interpreter) =
        tokio::task::block_in_place(|| find(store, python, backend, index, online))?;
    if found.is_some() {
        return Ok((name, false));
    }
    let platform = platform(&interpreter);
    if offline {
        return Err(PythonError::NoOverlay {
            backend: backend.tag(),
        });
    }
    tracing::info!("resolving torch backend `{}` from `{index}`", backend.tag());
    let pinned = tokio::task::block_in_place(|| {
        let scratch = store.scratch()?;
        compile(
            &uv,
            scratch.path(),
            python,
            &interpreter,
            backend,
            index,
            false,
        )
    })?;
    let source = super::WheelSource {
        wheels_dir: None,
        from_lock: false,
    };
    let fetches = pinned
        .iter()
        .map(|w| super::fetch_wheel(store, client, reporter, &source, w, jobs));
    let paths = futures_util::future::try_join_all(fetches).await?;
    let wheels: Vec<LockedWheel> = pinned
        .iter()
        .zip(paths)
        .map(|(w, store_path)| LockedWheel {
            name: w.name.clone(),
            version: w.version.clone(),
            filename: w.filename.clone(),
            url: (!w.url.is_empty()).then(|| w.url.clone()),
            sha256: w.sha256.clone(),
            store_path,
        })
        .collect();
    let overlay = Overlay {
        backend: backend.tag(),
        index: index.to_string(),
        platform,
        wheels,
    };
    let references: Vec<String> = overlay
        .wheels
        .iter()
        .map(|w| w.store_path.clone())
        .collect();
    let text = serde_json::to_string_pretty(&overlay).expect("an overlay serializes") + "\n";
    tokio::task::block_in_place(|| {
        store.build_input_addressed(&name, "overlay.json", &references, |staging| {
            let file = staging.join("overlay.json");
            std::fs::write(&file, &text).map_err(PythonError::io(&file))
        })
    })?;
    Ok((name, true))
}

/// The overlay of `python` for `backend` that this store holds for this machine (its name either
/// way, protected from the collector), found without resolving anything.
pub fn stored(
    store: &crate::store::Store,
    python: &LockedPython,
    backend: &Backend,
    index: &str,
) -> Result<(String, Option<Overlay>), PythonError> {
    let (name, found, _, _) = find(store, python, backend, index, false)?;
    Ok((name, found))
}

#[allow(clippy::type_complexity)]
fn find(
    store: &crate::store::Store,
    python: &LockedPython,
    backend: &Backend,
    index: &str,
    may_install: bool,
) -> Result<(String, Option<Overlay>, Uv, Interpreter), PythonError> {
    let uv = super::find_uv(store)?;
    let interpreter = super::managed::interpreter(store, &uv, &python.version, may_install)?;
    let name = overlay_name(python, backend, index, &platform(&interpreter), &uv);
    let found = match store.valid(&name)? {
        Some(_) => read_overlay(store, &name)?,
        None => None,
    };
    Ok((name, found, uv, interpreter))
}

/// The stored overlay `name`, when the store has it.
fn read_overlay(store: &crate::store::Store, name: &str) -> Result<Option<Overlay>, PythonError> {
    if store.query(name)?.is_none() {
        return Ok(None);
    }
    let path = store.path_of(name);
    let text = std::fs::read_to_string(&path).map_err(PythonError::io(&path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| PythonError::BadPylock {
            message: format!("the stored torch overlay `{name}` is not readable: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_unknown_ones_are_refused() {
        assert_eq!(Backend::parse("cpu").unwrap(), Backend::Cpu);
        assert_eq!(
            Backend::parse("cu121").unwrap(),
            Backend::Cuda {
                major: 12,
                minor: 1
            }
        );
        assert_eq!(Backend::parse("cu130").unwrap().tag(), "cu130");
        assert_eq!(Backend::parse("cu92").unwrap().tag(), "cu92");
        assert_eq!(Backend::parse("rocm6.2").unwrap().tag(), "rocm6.2");
        for bad in [
            "cuda", "cu", "cu12a", "rocm6", "rocm", "gpu", "CPU", "rocm6.x",
        ] {
            let err = Backend::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn the_machine_picks_the_newest_cuda_its_driver_runs() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(nvidia_driver_version(text).as_deref(), Some("550.54.14"));
        let machine = Machine {
            nvidia_driver: Some("550.54.14".into()),
            rocm: None,
        };
        assert_eq!(machine.backend().tag(), "cu124");
        assert!(machine.check(&Backend::parse("cu121").unwrap()).is_ok());
        let err = machine
            .check(&Backend::parse("cu128").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cu128") && err.contains("550.54.14"), "{err}");
        assert_eq!(rocm_version("6.2.0-66\n").as_deref(), Some("6.2"));
        let amd = Machine {
            nvidia_driver: None,
            rocm: Some("6.2".into()),
        };
        assert_eq!(amd.backend().tag(), "rocm6.2");
        assert_eq!(Machine::default().backend(), Backend::Cpu);
        // No driver: a CUDA venv may be built for another machine.
        assert!(Machine::default()
            .check(&Backend::parse("cu128").unwrap())
            .is_ok());
    }

    #[test]
    fn torch_s_family_is_what_the_backend_decides() {
        for name in [
            "torch",
            "TorchVision",
            "torchaudio",
            "nvidia-cudnn-cu12",
            "triton",
        ] {
            assert!(in_family(name), "{name}");
        }
        for name in ["numpy", "torchsde", "pillow"] {
            assert!(!in_family(name), "{name}");
        }
    }
}
