//! Universal locks: one resolution for every platform (`uv pip compile --universal`), from which
//! each machine chooses its wheels — the packages whose markers hold there, and for each the wheel
//! whose tags its interpreter ranks best. The choice is made in memory on every machine; the lock
//! file holds only the universal set, so it is the same on all of them.

use super::uv::Interpreter;
use super::{PinnedWheel, PythonError};
use crate::lock::{LockedPython, LockedWheel, UniversalPackage};
use crate::store::Store;

/// This machine's wheels of `packages`: markers evaluated and tags ranked by `interpreter`.
pub fn select(
    packages: &[UniversalPackage],
    interpreter: Option<&Interpreter>,
) -> Result<Vec<PinnedWheel>, PythonError> {
    let markers: Vec<&str> = packages
        .iter()
        .map(|p| p.marker.as_deref().unwrap_or(""))
        .collect();
    let (tags, holds, platform) = machine(interpreter, &markers)?;
    choose(packages, &tags, &holds, &platform)
}

/// The choice itself: for each package whose marker holds, its best-ranked wheel. A package
/// needed here with no wheel for these tags means the lock does not cover this machine.
pub fn choose(
    packages: &[UniversalPackage],
    tags: &[String],
    holds: &[bool],
    platform: &str,
) -> Result<Vec<PinnedWheel>, PythonError> {
    let mut out = Vec::new();
    for (package, needed) in packages.iter().zip(holds) {
        if !needed {
            continue;
        }
        let best = package
            .wheels
            .iter()
            .filter_map(|w| Some((super::best_rank(&w.filename, tags)?, w)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, w)| w)
            .ok_or_else(|| PythonError::NotCovered {
                name: package.name.clone(),
                version: package.version.clone(),
                platform: platform.to_string(),
            })?;
        out.push(PinnedWheel {
            name: package.name.clone(),
            version: package.version.clone(),
            filename: best.filename.clone(),
            url: best.url.clone().unwrap_or_default(),
            sha256: best.sha256.clone(),
            size: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The interpreter's tags (best first), whether each marker holds, and its platform's name.
fn machine(
    interpreter: Option<&Interpreter>,
    markers: &[&str],
) -> Result<(Vec<String>, Vec<bool>, String), PythonError> {
    const SCRIPT: &str = "import json, sys, platform\ntry:\n    from packaging import tags, markers\nexcept ImportError:\n    from pip._vendor.packaging import tags, markers\nms = json.loads(sys.argv[1])\nprint(json.dumps({'tags': [str(t) for t in tags.sys_tags()], 'holds': [markers.Marker(m).evaluate() if m else True for m in ms], 'platform': '%s %s, Python %s' % (platform.system(), platform.machine(), platform.python_version())}))\n";
    #[derive(serde::Deserialize)]
    struct Answer {
        tags: Vec<String>,
        holds: Vec<bool>,
        platform: String,
    }
    let python = interpreter
        .map(|i| i.path.clone())
        .unwrap_or_else(|| std::path::PathBuf::from("python3"));
    let list = serde_json::to_string(markers).expect("strings serialize");
    let text = super::uv::stdout_of(&python, &["-c", SCRIPT, &list], "-c <evaluate markers>")?;
    let answer: Answer = serde_json::from_str(text.trim()).map_err(|e| PythonError::BadPylock {
        message: format!("the interpreter's markers and tags: {e}"),
    })?;
    Ok((answer.tags, answer.holds, answer.platform))
}

/// A universal lock's Python set for this machine from the store alone (`--check`, `--dry-run`):
/// its wheels chosen, each with its store path where the store holds it (else empty).
pub fn fill_from_store(
    store: &Store,
    python: &mut LockedPython,
    interpreter: Option<&Interpreter>,
) -> Result<(), PythonError> {
    let Some(packages) = &python.universal else {
        return Ok(());
    };
    if !python.wheels.is_empty() {
        return Ok(());
    }
    let chosen = select(packages, interpreter)?;
    let mut wheels = Vec::new();
    for wheel in chosen {
        let store_path = super::wheels::stored_wheel(store, &wheel)?.unwrap_or_default();
        wheels.push(LockedWheel {
            name: wheel.name,
            version: wheel.version,
            filename: wheel.filename,
            url: (!wheel.url.is_empty()).then_some(wheel.url),
            sha256: wheel.sha256,
            store_path,
        });
    }
    python.wheels = wheels;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::UniversalWheel;

    fn wheel(filename: &str) -> UniversalWheel {
        UniversalWheel {
            filename: filename.into(),
            url: Some(format!("http://x/{filename}")),
            sha256: filename.len().to_string(),
        }
    }

    #[test]
    fn each_platform_chooses_its_own_wheels_and_marked_packages() {
        let packages = vec![
            UniversalPackage {
                name: "plat".into(),
                version: "1.0".into(),
                marker: None,
                wheels: vec![
                    wheel("plat-1.0-py3-none-manylinux_2_17_x86_64.whl"),
                    wheel("plat-1.0-py3-none-manylinux_2_17_aarch64.whl"),
                ],
            },
            UniversalPackage {
                name: "armonly".into(),
                version: "1.0".into(),
                marker: Some("platform_machine == 'aarch64'".into()),
                wheels: vec![wheel("armonly-1.0-py3-none-any.whl")],
            },
        ];
        let x86: Vec<String> = ["py3-none-manylinux_2_17_x86_64", "py3-none-any"]
            .map(String::from)
            .to_vec();
        let arm: Vec<String> = ["py3-none-manylinux_2_17_aarch64", "py3-none-any"]
            .map(String::from)
            .to_vec();
        let on_x86 = choose(&packages, &x86, &[true, false], "Linux x86_64").unwrap();
        assert_eq!(on_x86.len(), 1);
        assert!(on_x86[0].filename.ends_with("x86_64.whl"));
        let on_arm = choose(&packages, &arm, &[true, true], "Linux aarch64").unwrap();
        let names: Vec<&str> = on_arm.iter().map(|w| w.filename.as_str()).collect();
        assert_eq!(
            names,
            [
                "armonly-1.0-py3-none-any.whl",
                "plat-1.0-py3-none-manylinux_2_17_aarch64.whl"
            ]
        );
        // A platform the lock has no wheel for is named, with the package.
        let mac: Vec<String> = ["py3-none-macosx_11_0_arm64"].map(String::from).to_vec();
        let err = choose(&packages, &mac, &[true, false], "Darwin arm64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plat") && err.contains("Darwin arm64"),
            "{err}"
        );
    }
}
