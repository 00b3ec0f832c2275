//! Spec errors: every class names the file, the field's JSON path and what is wrong.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::support::*;

fn minimal() -> Value {
    json!({
        "schema_version": 2,
        "version_id": "v1",
        "comfy": { "repo": "https://github.com/comfyanonymous/ComfyUI", "ref": "master" },
        "custom_nodes": [
            { "repo": "https://github.com/city96/ComfyUI-GGUF", "name": "gguf" },
            { "repo": "https://github.com/kijai/ComfyUI-KJNodes" },
            { "cnr": "comfyui-impact-pack", "version": "8.8.1" }
        ],
        "models": [
            { "source": "hf://org/repo/unet/model.safetensors", "target_subdir": "unet" }
        ]
    })
}

/// Write `spec` to `versions/v1.json` and run `spec check v1`; returns (exit code, stderr).
fn check(env: &TestEnv, spec: &str) -> (Option<i32>, String) {
    let dir = env.work.join("versions");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("v1.json"), spec).unwrap();
    let out = env.run(&["spec", "check", "v1"]);
    (out.status.code(), stderr(&out))
}

fn check_value(env: &TestEnv, edit: impl FnOnce(&mut Value)) -> (Option<i32>, String) {
    let mut spec = minimal();
    edit(&mut spec);
    check(env, &serde_json::to_string_pretty(&spec).unwrap())
}

#[track_caller]
fn assert_error(result: (Option<i32>, String), expected: &[&str]) {
    let (code, err) = result;
    assert_eq!(code, Some(1), "a spec error is a user error: {err}");
    assert!(err.contains("versions/v1.json"), "names the file: {err}");
    for part in expected {
        assert!(err.contains(part), "expected {part:?} in:\n{err}");
    }
}

#[test]
fn valid_spec_passes_and_is_summarized() {
    let env = TestEnv::new();
    let (code, err) = check_value(&env, |_| {});
    assert_eq!(code, Some(0), "{err}");
    let out = env.ok(&["spec", "check", "v1"]);
    assert!(
        out.contains("node gguf: https://github.com/city96/ComfyUI-GGUF"),
        "{out}"
    );
    assert!(
        out.contains("node ComfyUI-KJNodes"),
        "the name defaults to the repo: {out}"
    );
    assert!(
        out.contains("node comfyui-impact-pack: registry comfyui-impact-pack 8.8.1"),
        "{out}"
    );
    assert!(out.contains("model unet/model.safetensors"), "{out}");
}

#[test]
fn wrong_types_and_missing_fields_name_the_json_path() {
    let env = TestEnv::new();
    assert_error(
        check_value(&env, |s| s["custom_nodes"][2]["version"] = json!(3)),
        &[
            "custom_nodes[2].version",
            "invalid type: integer `3`, expected a string",
        ],
    );
    assert_error(
        check_value(&env, |s| {
            s["comfy"].as_object_mut().unwrap().remove("repo");
        }),
        &["comfy: missing field `repo`"],
    );
    assert_error(
        check_value(&env, |s| s["schema_version"] = json!(1)),
        &["schema_version: unsupported schema version 1, expected 2"],
    );
}

#[test]
fn urls_sources_and_hashes_are_checked() {
    let env = TestEnv::new();
    assert_error(
        check_value(&env, |s| s["custom_nodes"][1]["repo"] = json!("not a url")),
        &["custom_nodes[1].repo: expected a URL, got `not a url`"],
    );
    assert_error(
        check_value(&env, |s| {
            s["models"][0]["source"] = json!("ftp://host/file")
        }),
        &["models[0].source: unsupported scheme `ftp`"],
    );
    assert_error(
        check_value(&env, |s| {
            s["models"][0]["source"] = json!("hf://only-owner")
        }),
        &["models[0].source: expected `hf://<owner>/<repo>/<path>[@<revision>]`"],
    );
    // A civitai.com URL must name a version: it used to pass validation and fail at resolve.
    assert_error(
        check_value(&env, |s| {
            s["models"][0]["source"] = json!("https://civitai.com/models/4201")
        }),
        &["models[0].source: a civitai.com URL must name a model version"],
    );
    assert_error(
        check_value(&env, |s| {
            s["models"][0]["source"] = json!("https://civitai.com/models/1?modelVersionId=x")
        }),
        &["models[0].source: a civitai.com URL must name a model version"],
    );
    assert_error(
        check_value(&env, |s| s["models"][0]["sha256"] = json!("abc")),
        &["models[0].sha256: expected a SHA-256 digest as 64 hexadecimal digits"],
    );
    assert_error(
        check_value(&env, |s| s["comfy"]["commit"] = json!("xyz")),
        &["comfy.commit: expected a hexadecimal commit id"],
    );
    assert_error(
        check_value(&env, |s| {
            s["custom_nodes"][0]["cnr"] = json!("gguf");
        }),
        &["custom_nodes[0]: has both `repo` and `cnr`", "hint:"],
    );
}

#[test]
fn unknown_fields_are_rejected_with_a_hint() {
    let env = TestEnv::new();
    assert_error(
        check_value(&env, |s| s["custom_nodes"][0]["comit"] = json!("abc1234")),
        &[
            "custom_nodes[0].comit: unknown field",
            "hint:",
            "did you mean `commit`?",
        ],
    );
    assert_error(
        check_value(&env, |s| s["modles"] = json!([])),
        &["modles: unknown field", "did you mean `models`?"],
    );
}

/// Unknown fields anywhere are all reported in one run, with the other problems.
#[test]
fn every_unknown_field_is_reported_at_once() {
    let env = TestEnv::new();
    let (code, err) = check_value(&env, |s| {
        s["modles"] = json!([]);
        s["comfy"]["reff"] = json!("x");
        s["custom_nodes"][0]["comit"] = json!("abc1234");
        s["custom_nodes"][2]["verison"] = json!("1");
        s["models"][0]["target_subdir"] = json!("../x");
    });
    assert_eq!(code, Some(1), "{err}");
    for part in [
        "modles: unknown field",
        "comfy.reff: unknown field",
        "custom_nodes[0].comit: unknown field",
        "custom_nodes[2].verison: unknown field",
        "models[0].target_subdir",
    ] {
        assert!(err.contains(part), "expected {part:?} in:\n{err}");
    }
}

/// Names that look like others (bidi controls, zero-width characters) or that collide with
/// ComfyUI-Manager's `.disabled` folder are refused.
#[test]
fn deceptive_and_reserved_node_names_are_refused() {
    let env = TestEnv::new();
    assert_error(
        check_value(&env, |s| {
            s["custom_nodes"][0]["name"] = json!("gguf\u{202E}fdp.exe")
        }),
        &["custom_nodes[0].name", "U+202E"],
    );
    assert_error(
        check_value(&env, |s| {
            s["custom_nodes"][0]["name"] = json!("gg\u{200B}uf")
        }),
        &["custom_nodes[0].name", "U+200B"],
    );
    assert_error(
        check_value(&env, |s| s["custom_nodes"][0]["name"] = json!(".disabled")),
        &["custom_nodes[0].name", "`.disabled`", "\"enabled\": false"],
    );
}

#[test]
fn path_like_fields_reject_escapes() {
    let env = TestEnv::new();
    let cases: [(&str, Value, &str); 7] = [
        ("version_id", json!(".."), "version_id: `..` is not allowed"),
        (
            "node name",
            json!("../../etc"),
            "custom_nodes[0].name: `../../etc` must be a single name",
        ),
        (
            "node name abs",
            json!("/abs"),
            "custom_nodes[0].name: `/abs` must be a single name",
        ),
        (
            "target_subdir",
            json!("unet/../../x"),
            "models[0].target_subdir: `unet/../../x` must be a folder under the models directory, without `..`",
        ),
        (
            "filename",
            json!("a\u{7}b"),
            "models[0].filename: `a\\u{7}b` contains a control character",
        ),
        (
            "filename dots",
            json!(".."),
            "models[0].filename: `..` is not allowed",
        ),
        (
            "backslash",
            json!("a\\b"),
            "models[0].target_subdir: `a\\\\b` must be a single name",
        ),
    ];
    for (what, value, expected) in cases {
        let result = check_value(&env, |s| match what {
            "version_id" => s["version_id"] = value,
            "node name" | "node name abs" => s["custom_nodes"][0]["name"] = value,
            "target_subdir" | "backslash" => s["models"][0]["target_subdir"] = value,
            _ => s["models"][0]["filename"] = value,
        });
        assert_error(result, &[expected]);
    }
    // A derived name is checked too: a model source with nothing after the last slash.
    assert_error(
        check_value(&env, |s| {
            s["models"][0]["source"] = json!("https://host/dir/")
        }),
        &[
            "models[0]: cannot derive a file name from the source",
            "set `filename`",
        ],
    );
}

#[test]
fn duplicates_and_all_problems_are_reported_together() {
    let env = TestEnv::new();
    let result = check_value(&env, |s| {
        s["custom_nodes"][1]["name"] = json!("gguf");
        s["models"][0]["blake3"] = json!("zz");
        s["env"] = json!({ "HF_TOKEN": "${HF TOKEN}" });
    });
    assert_error(
        result,
        &[
            "custom_nodes[1].name: duplicate node name `gguf` (also used by custom_nodes[0])",
            "models[0].blake3: expected a BLAKE3 digest",
            "env.HF_TOKEN: `${HF TOKEN}` is not a valid variable reference",
        ],
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let env = TestEnv::new();
    assert_error(
        check(
            &env,
            "{\n  \"schema_version\": 2,\n  \"version_id\": \"v1\",\n}\n",
        ),
        &["Invalid JSON", "line 4, column 1"],
    );
}

#[test]
fn lookup_by_id_and_by_file() {
    let env = TestEnv::new();
    // Not found: both locations named.
    let out = env.run(&["spec", "check", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("versions/nope.json") && err.contains("specs/nope.json"),
        "{err}"
    );
    assert!(err.contains("hint:"));
    // An id that is not a path component is refused before any lookup.
    let out = env.run(&["spec", "check", "../x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Invalid version id `../x`"));

    // specs/<id>.json is found when versions/<id>.json is missing; versions/ wins when both exist.
    let mut spec = minimal();
    spec["version_id"] = json!("from-specs");
    fs::create_dir_all(env.work.join("specs")).unwrap();
    fs::write(env.work.join("specs/v1.json"), spec.to_string()).unwrap();
    assert!(env.ok(&["spec", "check", "v1"]).starts_with("from-specs:"));
    spec["version_id"] = json!("from-versions");
    fs::create_dir_all(env.work.join("versions")).unwrap();
    fs::write(env.work.join("versions/v1.json"), spec.to_string()).unwrap();
    assert!(env
        .ok(&["spec", "check", "v1"])
        .starts_with("from-versions:"));

    let file = env.path("elsewhere.json");
    fs::write(&file, minimal().to_string()).unwrap();
    let json = env.json(&["spec", "check", "--spec", file.to_str().unwrap()]);
    assert_eq!(json["spec"]["version_id"], "v1");
}

#[test]
fn env_values_never_reach_output() {
    let env = TestEnv::new();
    let mut spec = minimal();
    spec["env"] = json!({ "HF_TOKEN": "${COMFIX_TEST_SECRET}" });
    fs::create_dir_all(env.work.join("versions")).unwrap();
    fs::write(env.work.join("versions/v1.json"), spec.to_string()).unwrap();
    for args in [
        &["spec", "check", "v1"][..],
        &["--json", "spec", "check", "v1"][..],
    ] {
        let out = env
            .cmd()
            .args(args)
            .env("COMFIX_TEST_SECRET", "hunter2-secret")
            .ok();
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains("hunter2-secret"), "{all}");
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_samples_are_valid() {
    let env = TestEnv::new();
    let mut count = 0;
    for entry in fs::read_dir(repo_root().join("specs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".json")
            && !name.ends_with(".schema.json")
            && !name.ends_with(".lock.json")
        {
            env.ok(&["spec", "check", "--spec", path.to_str().unwrap()]);
            count += 1;
        }
    }
    assert!(count >= 3, "one sample per seed example and a full one");
}

/// The JSON Schema lists exactly the fields the parser accepts, object by object.
#[test]
fn schema_matches_the_parser() {
    let schema: Value = read_json(&repo_root().join("specs/spec.schema.json"));
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    let sample: Value = read_json(&repo_root().join("specs/sample.json"));
    let env = TestEnv::new();
    // sample.json names a workflow, which must exist beside the spec.
    let workflows = env.work.join("versions/workflows");
    fs::create_dir_all(&workflows).unwrap();
    fs::copy(
        repo_root().join("specs/workflows/minimal.json"),
        workflows.join("minimal.json"),
    )
    .unwrap();
    // The parser accepts every field the schema lists (sample.json plus the rest)...
    let mut everything = sample.clone();
    everything["comfy"]["commit"] = json!("0123456789abcdef0123456789abcdef01234567");
    everything["models"][0]["blake3"] =
        json!("a3b1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90");
    let (code, err) = check(&env, &everything.to_string());
    assert_eq!(code, Some(0), "{err}");
    // ...and rejects a field the schema does not list, at every level.
    let objects: [(&str, &Value); 6] = [
        ("", &schema),
        ("comfy", &schema["properties"]["comfy"]),
        (
            "custom_nodes",
            &schema["properties"]["custom_nodes"]["items"],
        ),
        ("models", &schema["properties"]["models"]["items"]),
        ("options", &schema["properties"]["options"]),
        ("python", &schema["properties"]["python"]),
    ];
    for (at, object) in objects {
        let listed = keys(object);
        for field in &listed {
            // Each listed field is one the parser knows: an unknown-field hint lists it.
            let mut spec = everything.clone();
            let target = match at {
                "" => &mut spec,
                "custom_nodes" | "models" => &mut spec[at][0],
                _ => &mut spec[at],
            };
            target["zz_unknown"] = json!(1);
            let (code, err) = check(&env, &spec.to_string());
            assert_eq!(code, Some(1));
            assert!(
                err.contains(&format!("`{field}`")),
                "schema field `{field}` of `{at}` unknown to the parser: {err}"
            );
        }
    }
}

/// Every problem of a spec in one run: unknown fields at three depths, a value of the wrong type
/// (and an unknown field beside it in the same entry), and an absolute `target_subdir` — which
/// is only found once the wrongly typed value no longer stops parsing.
#[test]
fn every_problem_of_a_spec_is_named_in_one_run() {
    let env = TestEnv::new();
    let result = check_value(&env, |spec| {
        spec["colour"] = json!("blue");
        spec["custom_nodes"][0]["branch"] = json!("main");
        spec["models"][0]["required"] = json!("yes");
        spec["models"][0]["checksum"] = json!("x");
        spec["models"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "source": "hf://org/repo/b.safetensors", "target_subdir": "/etc" }));
        spec["python"] = json!({ "version": "3.11", "extras": ["x"] });
    });
    assert_error(
        result,
        &[
            "colour: unknown field",
            "custom_nodes[0].branch: unknown field",
            "models[0].required: invalid type: string \"yes\", expected a boolean",
            "models[0].checksum: unknown field",
            "models[1].target_subdir: `/etc` must be a folder",
            "python.extras: unknown field",
        ],
    );
}
