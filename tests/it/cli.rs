//! The CLI contract: exit codes, stdout for data only, `--json` documents, the default store.

use std::fs;

use crate::support::*;

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let env = TestEnv::new();
    let out = env.run(&["store", "frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let out = env.run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for word in ["store", "spec", "--store", "--json", "--no-progress"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn stdout_is_data_and_json_is_one_document() {
    let env = TestEnv::new();
    let file = env.path("f.txt");
    fs::write(&file, b"data").unwrap();
    let out = env.run(&["-v", "store", "add", file.to_str().unwrap()]);
    assert!(out.status.success());
    // Exactly the store path on stdout, even with verbose logs on stderr.
    let printed = stdout(&out);
    assert_eq!(printed.lines().count(), 1);
    assert!(printed.starts_with(
        env.store
            .canonicalize()
            .unwrap()
            .join("paths")
            .to_str()
            .unwrap()
    ));
    let listed = env.json(&["store", "ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["path"], printed.trim());
    assert_eq!(listed[0]["size"], 4);
}

#[test]
fn default_store_location_follows_the_environment() {
    let env = TestEnv::new();
    let file = env.path("f.txt");
    fs::write(&file, b"data").unwrap();
    let run = |vars: &[(&str, &std::path::Path)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_comfix"));
        cmd.current_dir(&env.work)
            .env_remove("COMFIX_STORE")
            .env("HOME", env.dir.path())
            .env_remove("XDG_DATA_HOME");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd
            .args(["store", "add", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    if std::path::Path::new("/runpod-volume").exists() {
        eprintln!("skipping default-location checks: /runpod-volume exists on this machine");
        return;
    }
    let explicit = env.path("explicit");
    assert!(run(&[("COMFIX_STORE", &explicit)]).starts_with(explicit.to_str().unwrap()));
    let xdg = env.path("xdg");
    assert!(run(&[("XDG_DATA_HOME", &xdg)]).starts_with(xdg.join("comfix/store").to_str().unwrap()));
    assert!(run(&[]).starts_with(
        env.dir
            .path()
            .join(".local/share/comfix/store")
            .to_str()
            .unwrap()
    ));
}

#[test]
fn foreign_directories_and_future_layouts_are_refused() {
    let env = TestEnv::new();
    let foreign = env.path("not-a-store");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("precious.txt"), b"keep me").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_comfix"))
        .arg("--store")
        .arg(&foreign)
        .args(["store", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not empty and is not a comfix store"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_dir(&foreign).unwrap().count(),
        1,
        "nothing written into it"
    );

    // A read command does not create a store where there is none.
    let out = env.run(&["store", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no comfix store"), "{}", stderr(&out));
    assert!(!env.store.exists(), "nothing created");
    let file = env.path("f.txt");
    fs::write(&file, b"f").unwrap();
    env.add(&file);
    fs::write(env.store.join("VERSION"), "99\n").unwrap();
    let out = env.run(&["store", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("layout version `99`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn many_processes_can_create_one_store_at_once() {
    let env = TestEnv::new();
    let file = env.path("f.txt");
    fs::write(&file, b"f").unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            env.cmd()
                .args(["store", "add", file.to_str().unwrap()])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
