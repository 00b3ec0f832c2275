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

/// Under `--json`, a command line that cannot be parsed is one JSON document on stdout too,
/// shaped like every other error (`error`, `causes`, `hint`, `exit`), exit 1; clap's own text
/// stays on stderr.
#[test]
fn usage_errors_under_json_are_one_document() {
    let env = TestEnv::new();
    for args in [
        &["--json", "store", "frobnicate"][..],
        &["--json", "realize", "--link-mode", "teleport"][..],
        &["realize", "--json", "--no-such-flag"][..],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let doc: serde_json::Value = json_of(&out);
        assert_eq!(doc["exit"], 1, "{doc}");
        let error = doc["error"].as_str().unwrap();
        assert!(!error.is_empty() && !error.starts_with("error:"), "{doc}");
        assert!(doc["causes"].as_array().unwrap().is_empty(), "{doc}");
        assert!(stderr(&out).contains("error:"), "{}", stderr(&out));
    }
    let out = env.run(&["--json", "store", "frobnicate"]);
    assert!(stdout(&out).contains("frobnicate"), "{}", stdout(&out));
    // Help is not an error: no document.
    let out = env.run(&["--json", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_err());
}

/// Bash's completion script parses and completes version ids from `versions/` after a command
/// that takes one (not after `store`, whose next word is a subcommand); the man pages are
/// generated, one per command; `--version` names the commit.
#[test]
fn completions_man_pages_and_version() {
    let env = TestEnv::new();
    let script = env.path("comfix.bash");
    let out = ok(env.run(&["completions", "bash"]));
    fs::write(&script, &out.stdout).unwrap();
    let parsed = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", stderr(&parsed));
    let dir = env.path("work");
    fs::create_dir_all(dir.join("versions")).unwrap();
    for file in ["wan22.json", "wan22.lock.json", "flux.json"] {
        fs::write(dir.join("versions").join(file), b"{}").unwrap();
    }
    let complete = |words: &str| -> String {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); \
             COMPREPLY=(); _comfix_with_ids comfix \"${{COMP_WORDS[COMP_CWORD]}}\" \
             \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[*]}}\"",
            script.display()
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(program)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    assert_eq!(complete("comfix realize ''"), "flux wan22");
    assert_eq!(complete("comfix realize w"), "wan22");
    assert_eq!(complete("comfix spec check f"), "flux");
    assert!(complete("comfix realize --dry").contains("--dry-run"));
    let store = complete("comfix store ''");
    assert!(
        store.contains("why-depends") && !store.contains("wan22"),
        "{store}"
    );
    let init = complete("comfix init ''");
    assert!(
        !init.contains("wan22"),
        "a new id, not an existing one: {init}"
    );
    let add = complete("comfix add ''");
    assert!(add.contains("node") && add.contains("wan22"), "{add}");
    for shell in ["zsh", "fish", "powershell"] {
        let out = ok(env.run(&["completions", shell]));
        assert!(stdout(&out).contains("realize"), "{shell}");
    }
    // zsh and fish complete version ids too: the functions, and the ids they give where the shell
    // is installed (CI installs both).
    let zsh = stdout(&ok(env.run(&["completions", "zsh"])));
    assert!(
        zsh.contains("_comfix_version_ids() {")
            && zsh.contains("`specs/<ID>.json`:_comfix_version_ids'"),
        "zsh"
    );
    let fish = stdout(&ok(env.run(&["completions", "fish"])));
    assert!(
        fish.contains("__fish_comfix_using_subcommand spec; and __fish_seen_subcommand_from check\" -f -a \"(__comfix_version_ids)\""),
        "fish"
    );
    fs::write(dir.join("_comfix"), &zsh).unwrap();
    fs::write(dir.join("comfix.fish"), &fish).unwrap();
    let shell_says = |shell: &str, program: &str| -> Option<String> {
        let out = std::process::Command::new(shell)
            .args(["-c", program])
            .current_dir(&dir)
            .output();
        match out {
            Ok(out) => {
                assert!(out.status.success(), "{shell}: {}", stderr(&out));
                Some(
                    stdout(&out)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            }
            Err(_) => {
                eprintln!(
                    "{shell} is not installed: its completion script is checked as text only"
                );
                None
            }
        }
    };
    if let Some(ids) = shell_says(
        "zsh",
        "compdef() { : }; source ./_comfix; _describe() { print -l -- ${(P)4} }; _comfix_version_ids",
    ) {
        assert_eq!(ids, "flux wan22");
    }
    if let Some(ids) = shell_says(
        "fish",
        "source comfix.fish; complete -C 'comfix spec check '; complete -C 'comfix realize w'",
    ) {
        assert_eq!(ids, "flux version id wan22 version id wan22 version id");
    }

    let page = stdout(&ok(env.run(&["man"])));
    assert!(page.contains(".TH comfix 1"), "{page}");
    let pages = env.path("man1");
    ok(env.run(&["man", "--dir", pages.to_str().unwrap()]));
    for name in ["comfix.1", "comfix-realize.1", "comfix-store-add.1"] {
        let text = fs::read_to_string(pages.join(name)).unwrap();
        assert!(text.contains(".SH SYNOPSIS"), "{name}");
    }

    let version = stdout(&ok(env.run(&["--version"])));
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let commit = match String::from_utf8_lossy(&commit.stdout).trim() {
        "" => "unknown".to_string(), // built outside a git checkout
        commit => commit.to_string(),
    };
    assert!(
        version.starts_with("comfix ") && version.contains(&format!("({commit})")),
        "{version} vs {commit}"
    );
}

/// `NO_COLOR` keeps every escape sequence out, `CLICOLOR_FORCE` puts colours into a pipe.
#[test]
fn no_color_and_clicolor_force_are_honoured() {
    let env = TestEnv::new();
    let file = env.path("f.txt");
    fs::write(&file, b"data").unwrap();
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = env.cmd();
        cmd.args(["-v", "store", "add", file.to_str().unwrap()]);
        cmd.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    assert!(!run(&[]).contains('\x1b'), "a pipe gets no colours");
    assert!(run(&[("CLICOLOR_FORCE", "1")]).contains('\x1b'));
    let both = run(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]);
    assert!(!both.contains('\x1b'), "{both}");
}

#[test]
fn stdout_is_data_and_json_is_one_document() {
    let env = TestEnv::new();
    let file = env.path("f.txt");
    fs::write(&file, b"data").unwrap();
    let out = ok(env.run(&["-v", "store", "add", file.to_str().unwrap()]));
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
        let out = cmd.args(["store", "add", file.to_str().unwrap()]).ok();
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
    says(&out, "is not empty and is not a comfix store");
    assert_eq!(
        fs::read_dir(&foreign).unwrap().count(),
        1,
        "nothing written into it"
    );

    // A read command does not create a store where there is none.
    let out = env.run(&["store", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "no comfix store");
    assert!(!env.store.exists(), "nothing created");
    let file = env.path("f.txt");
    fs::write(&file, b"f").unwrap();
    env.add(&file);
    fs::write(env.store.join("VERSION"), "99\n").unwrap();
    let out = env.run(&["store", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "layout version `99`");
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
    all_ok(children);
}

/// A reader that goes away (`comfix store ls | head -1`) ends comfix quietly: no panic, no
/// message, as other Unix tools end.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let env = TestEnv::new();
    for i in 0..300 {
        let file = env.path(&format!("f{i}.txt"));
        fs::write(&file, format!("data {i}")).unwrap();
        env.ok(&["store", "add", file.to_str().unwrap()]);
    }
    for _ in 0..5 {
        let mut child = env
            .cmd()
            .args(["store", "ls"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first line
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{err}"
        );
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "ended by SIGPIPE or cleanly: {:?} {err}",
            out.status
        );
    }
}

/// Every user-input error exits 1: a spec that is not UTF-8, a directory as the spec, a missing
/// spec; with `--json` the error is one JSON document on stdout.
#[test]
fn user_input_errors_exit_1_and_json_errors_parse() {
    let env = TestEnv::new();
    let bad = env.path("bad.json");
    fs::write(&bad, b"{\"schema_version\": \"\xff\"}").unwrap();
    let dir = env.path("specdir");
    fs::create_dir_all(&dir).unwrap();
    let missing = env.path("missing.json");
    for (spec, expected) in [
        (&bad, "UTF-8"),
        (&dir, "not its directory"),
        (&missing, "Failed to read spec"),
    ] {
        let out = env.run(&["spec", "check", "--spec", spec.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        says(&out, expected);

        let out = env.run(&["--json", "spec", "check", "--spec", spec.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
        assert_eq!(doc["exit"], 1);
        assert!(doc["error"].as_str().unwrap().contains("spec"), "{doc}");
    }
    // Any other error is one JSON document too, with its exit code.
    let out = env
        .cmd_without_store()
        .args(["--json", "--store", "/proc/version", "store", "ls"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let doc: serde_json::Value = json_of(&out);
    assert_eq!(doc["exit"].as_i64(), out.status.code().map(i64::from));
}
