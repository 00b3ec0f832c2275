//! `comfix export` / `comfix import`: a version's closure moved to another store as one file.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::http::TestServer;
use crate::support::*;

fn realize_json(w: &World, store: &Path, home: &Path, args: &[&str]) -> Value {
    let out = w
        .cmd(store)
        .arg("--json")
        .args(["realize", "v1", "--target"])
        .arg(home)
        .args(args)
        .ok();
    json_of(&out)
}

/// Import taking unsigned paths (digests are checked either way).
fn import(w: &World, store: &Path, archive: &Path) -> std::process::Output {
    w.cmd(store)
        .args(["import", "--no-check-sigs"])
        .arg(archive)
        .output()
        .unwrap()
}

fn export(w: &World, archive: &Path) {
    w.cmd(&w.env.store)
        .args(["export", "v1", "-o"])
        .arg(archive)
        .ok();
}

fn world_with_home() -> (World, PathBuf, PathBuf) {
    let w = World::new();
    w.write_spec(&w.default_spec());
    let home = w.env.path("home-a");
    realize_json(&w, &w.env.store, &home, &[]);
    let archive = w.env.path("v1.tar.zst");
    export(&w, &archive);
    (w, home, archive)
}

/// Machine A exports a version with git nodes, a registry node and models; machine B, with every
/// endpoint gone, imports it and realizes `--offline` a home whose manifest is A's.
#[test]
fn an_exported_closure_realizes_offline_on_another_store() {
    let (mut w, home_a, archive) = world_with_home();
    for server in [&mut w.hub, &mut w.cdn, &mut w.civitai, &mut w.registry] {
        drop(std::mem::replace(server, TestServer::start()));
    }
    // The git repositories are gone too.
    fs::rename(w.env.path("repos"), w.env.path("repos-gone")).unwrap();
    let store_b = w.env.path("store-b");
    let out = ok(import(&w, &store_b, &archive));
    assert_eq!(stdout(&out).trim(), "v1");
    // Importing again writes nothing new.
    let again = w
        .cmd(&store_b)
        .args(["--json", "import", "--no-check-sigs"])
        .arg(&archive)
        .ok();
    let report: Value = json_of(&again);
    assert_eq!(report["imported"].as_array().unwrap().len(), 0);
    assert!(report["present"].as_u64().unwrap() > 5);

    let home_b = w.env.path("home-b");
    let realized = realize_json(&w, &store_b, &home_b, &["--offline"]);
    for d in realized["derivations"].as_array().unwrap() {
        if d["kind"] != "assemble-home" {
            assert_eq!(d["outcome"], "valid", "{d}");
        }
    }
    assert_eq!(
        status_manifest(&w, &store_b, &home_b),
        status_manifest(&w, &w.env.store, &home_a)
    );
    assert_eq!(
        fs::read(home_b.join("models/unet/unet.safetensors")).unwrap(),
        w.model
    );
    assert_store_whole(&w, &store_b);
    // The imported version is pinned: a collection keeps it.
    w.cmd(&store_b).arg("gc").ok();
    w.cmd(&store_b).args(["store", "verify"]).ok();
}

/// An archive is a plain zstd-compressed tar: GNU tar unpacks it (a one-file path is the file
/// `paths/<name>`, not `paths/<name>/`, which tar skips), and what it unpacks is the store's.
#[test]
fn an_archive_unpacks_with_standard_tar() {
    let (w, _home, archive) = world_with_home();
    let tar = decompress(&archive);
    let out = w.env.path("unpacked");
    fs::create_dir_all(&out).unwrap();
    let mut child = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &tar).unwrap();
    drop(child.stdin.take());
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(
        stderr(&done).is_empty(),
        "tar complained: {}",
        stderr(&done)
    );
    let model = w.lock()["models"][0]["store_path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fs::read(out.join("paths").join(&model)).unwrap(), w.model);
    let manifest = read_json(&out.join("comfix-closure.json"));
    for path in manifest["paths"].as_array().unwrap() {
        let name = path["name"].as_str().unwrap();
        assert!(out.join("paths").join(name).exists(), "{name} not unpacked");
    }
}

/// A byte of a model changed inside the archive: the import names both tree hashes, and the
/// model is not registered (what came before it is, whole).
#[test]
fn a_tampered_archive_registers_nothing_that_does_not_verify() {
    let (w, _home, archive) = world_with_home();
    let mut tar = decompress(&archive);
    let at = tar
        .windows(64)
        .position(|win| win == &w.model[..64])
        .expect("the model is in the archive");
    tar[at + 1000] ^= 0xff;
    let tampered = w.env.path("tampered.tar.zst");
    compress(&tar, &tampered);
    let store = w.env.path("store-c");
    let out = import(&w, &store, &tampered);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("tree hash"), "{err}");
    assert!(err.contains("but its metadata says"), "{err}");
    let lock: Value = serde_json::from_str(&w.lock_text()).unwrap();
    let model = lock["models"][0]["store_path"].as_str().unwrap();
    assert!(!registered(&w, &store).contains(&model.to_string()));
    assert_store_whole(&w, &store);
}

/// Cut anywhere, an archive imports what is whole before the cut and says it is damaged.
#[test]
fn a_truncated_archive_is_an_error_and_leaves_only_whole_paths() {
    let (w, _home, archive) = world_with_home();
    let bytes = fs::read(&archive).unwrap();
    for cut in [bytes.len() / 5, bytes.len() / 2, bytes.len() - 100] {
        let truncated = w.env.path(&format!("cut-{cut}.tar.zst"));
        fs::write(&truncated, &bytes[..cut]).unwrap();
        let store = w.env.path(&format!("store-cut-{cut}"));
        let out = import(&w, &store, &truncated);
        assert_eq!(out.status.code(), Some(1), "cut at {cut}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("damaged") || stderr(&out).contains("not a comfix closure"),
            "{}",
            stderr(&out)
        );
        assert_store_whole(&w, &store);
    }
}

#[test]
fn a_foreign_file_is_refused() {
    let w = World::new();
    let file = w.env.path("photo.tar.zst");
    fs::write(&file, b"not an archive at all").unwrap();
    let out = import(&w, &w.env.store, &file);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "not a comfix closure");
    // A zstd tar that is not a closure.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "README", &b"hi"[..])
        .unwrap();
    let plain = w.env.path("plain.tar.zst");
    compress(&builder.into_inner().unwrap(), &plain);
    let out = import(&w, &w.env.store, &plain);
    assert_eq!(out.status.code(), Some(1));
    says(&out, "its first entry is not `comfix-closure.json`");
}

/// A tar entry with exactly `name` as its path, whatever it holds (`..` included).
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut header = tar::Header::new_old();
    let bytes = name.as_bytes();
    header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

/// A crafted entry: its name, type, bytes and link target.
type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);
type Entries<'a> = [Entry<'a>];

fn crafted(w: &World, name: &str, paths: &[&str], entries: &Entries) -> PathBuf {
    let manifest = json!({
        "format": 1,
        "versions": [],
        "paths": paths.iter().map(|p| path_meta(p, 0)).collect::<Vec<_>>(),
    });
    crafted_with(w, name, &manifest, entries)
}

fn path_meta(name: &str, size: u64) -> Value {
    json!({
        "name": name, "kind": "tree", "tree_hash": "0".repeat(64), "size": size, "file_count": 1,
        "references": [], "naming": "content", "registered_at": 0
    })
}

/// An archive of `manifest` and `entries`, exactly as given.
fn crafted_with(w: &World, name: &str, manifest: &Value, entries: &Entries) -> PathBuf {
    let mut builder = tar::Builder::new(Vec::new());
    let text = serde_json::to_vec(manifest).unwrap();
    raw_entry(
        &mut builder,
        "comfix-closure.json",
        tar::EntryType::Regular,
        &text,
        None,
    );
    for (entry, kind, data, link) in entries {
        raw_entry(&mut builder, entry, *kind, data, *link);
    }
    let file = w.env.path(name);
    compress(&builder.into_inner().unwrap(), &file);
    file
}

/// Entries that would land outside their path (`..`, absolute, through a symlink) and entries out
/// of the manifest's order are refused; nothing is written outside the store.
#[test]
fn unsafe_and_reordered_archives_are_refused() {
    use tar::EntryType::{Directory, Regular, Symlink};
    let w = World::new();
    let a = format!("{}-a", "a".repeat(32));
    let b = format!("{}-b", "b".repeat(32));
    let outside = w.env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let escape = format!("paths/{a}/../../../../outside/evil");
    let through = format!("paths/{a}/link/evil");
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "parent",
            crafted(
                &w,
                "parent.tar.zst",
                &[&a],
                &[(&escape, Regular, b"x", None)],
            ),
            "without `..`",
        ),
        (
            "absolute",
            crafted(
                &w,
                "absolute.tar.zst",
                &[&a],
                &[("/tmp/comfix-evil", Regular, b"x", None)],
            ),
            "Unsafe entry",
        ),
        (
            "through a symlink",
            crafted(
                &w,
                "symlink.tar.zst",
                &[&a],
                &[
                    (&format!("paths/{a}"), Directory, b"", None),
                    (
                        &format!("paths/{a}/link"),
                        Symlink,
                        b"",
                        Some(outside.to_str().unwrap()),
                    ),
                    (&through, Regular, b"x", None),
                ],
            ),
            "through a symlink",
        ),
        (
            "reordered",
            crafted(
                &w,
                "order.tar.zst",
                &[&a, &b],
                &[(&format!("paths/{b}"), Regular, b"x", None)],
            ),
            "out of the manifest's order",
        ),
        (
            "unknown path",
            crafted(
                &w,
                "unknown.tar.zst",
                &[&a],
                &[("paths/zzz", Regular, b"x", None)],
            ),
            "not in the archive's manifest",
        ),
    ];
    for (what, file, expected) in cases {
        let store = w.env.path(&format!("store-{}", what.replace(' ', "-")));
        let out = import(&w, &store, &file);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{what}: {}", stderr(&out));
        assert!(registered(&w, &store).is_empty(), "{what}");
        assert!(!outside.join("evil").exists(), "{what} wrote outside");
        assert!(
            !Path::new("/tmp/comfix-evil").exists(),
            "{what} wrote outside"
        );
    }
}

/// `comfix export v -o - | comfix import -`, as over ssh.
#[test]
fn export_to_stdout_pipes_into_import_from_stdin() {
    let w = World::new();
    w.write_spec(&w.default_spec());
    realize_json(&w, &w.env.store, &w.env.path("home"), &[]);
    let mut exporter = w
        .cmd(&w.env.store)
        .args(["export", "v1", "--models", "none", "-o", "-"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let store_b = w.env.path("store-b");
    let out = w
        .cmd(&store_b)
        .args(["import", "-", "--no-check-sigs", "--versions-dir"])
        .arg(w.env.path("imported"))
        .stdin(exporter.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(exporter.wait().unwrap().success());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "v1");
    // The spec and lock came along; without models, none is in the store.
    let lock: Value = read_json(&w.env.path("imported/v1.lock.json"));
    assert_eq!(
        fs::read_to_string(w.env.path("imported/v1.lock.json")).unwrap(),
        w.lock_text()
    );
    let names = registered(&w, &store_b);
    assert!(names.contains(&lock["comfy"]["store_path"].as_str().unwrap().to_string()));
    for model in lock["models"].as_array().unwrap() {
        assert!(!names.contains(&model["store_path"].as_str().unwrap().to_string()));
    }
}

/// The world's version realized and exported without models, signed by `team-1`: the archive
/// and the public key to trust.
fn signed_export(w: &World) -> (PathBuf, String) {
    w.write_spec(&w.default_spec());
    realize_json(w, &w.env.store, &w.env.path("home"), &[]);
    let (secret, public) = key(w, "team-1");
    let signed = w.env.path("signed.tar.zst");
    w.cmd(&w.env.store)
        .args(["export", "v1", "--models", "none", "--sign-key"])
        .arg(&secret)
        .arg("-o")
        .arg(&signed)
        .ok();
    (signed, public)
}

/// An archive is imported only when a trusted key signed its paths, unless `--no-check-sigs`.
#[test]
fn imports_require_a_trusted_signature() {
    let w = World::new();
    let (signed, public) = signed_export(&w);
    let (_, other_public) = key(&w, "team-2");
    let unsigned = w.env.path("unsigned.tar.zst");
    w.cmd(&w.env.store)
        .args(["export", "v1", "--models", "none", "-o"])
        .arg(&unsigned)
        .ok();
    let try_import = |archive: &Path, store: &str, args: &[&str]| {
        w.cmd(&w.env.path(store))
            .arg("import")
            .arg(archive)
            .args(args)
            .output()
            .unwrap()
    };
    let out = try_import(&unsigned, "s1", &["--trusted-key", &public]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "not signed by a trusted key (it has no signature)");
    says(&out, "--no-check-sigs");
    assert!(registered(&w, &w.env.path("s1")).is_empty());
    let out = try_import(&signed, "s2", &["--trusted-key", &other_public]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    says(&out, "signed by `team-1`");
    let out = try_import(&signed, "s3", &[]);
    assert_eq!(out.status.code(), Some(1), "no key is trusted by default");
    ok(try_import(&signed, "s4", &["--trusted-key", &public]));
    ok(try_import(&unsigned, "s5", &["--no-check-sigs"]));
    // The key can come from the config file too.
    let config = w.env.path("config.toml");
    fs::write(&config, format!("trusted-keys = [\"{public}\"]\n")).unwrap();
    w.cmd(&w.env.path("s6"))
        .env("COMFIX_CONFIG", &config)
        .arg("import")
        .arg(&signed)
        .ok();
}

/// A closure that does not fit on the store's filesystem is refused before anything is written.
#[test]
fn an_import_that_cannot_fit_fails_before_writing() {
    let (w, _home, archive) = world_with_home();
    let small = w.env.path("small");
    let Some(_mounted) = crate::store_reads::small_filesystem(&small, 2) else {
        return;
    };
    let store = small.join("store");
    let out = import(&w, &store, &archive);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the closure's paths needs"), "{err}");
    assert!(err.contains("free at least"), "{err}");
    assert!(registered(&w, &store).is_empty());
    let staged = fs::read_dir(store.join("tmp")).map_or(0, |d| d.count());
    assert_eq!(staged, 0, "nothing staged");
}

/// Files the user owns follow their umask (a lock, an export: 0644 under umask 022, not a
/// temporary file's 0600); a secret key stays 0600, written by default into comfix's config
/// directory, and the command says where.
#[test]
fn user_files_follow_the_umask_and_secrets_stay_private() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let w = World::new();
    w.write_spec(&w.default_spec());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let with_umask = |mut cmd: std::process::Command| {
        // SAFETY: umask(2) in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let mut realize = w.cmd(&w.env.store);
    realize
        .args(["realize", "v1", "--target"])
        .arg(w.env.path("home"));
    ok(with_umask(realize));
    let lock = w.env.work.join("versions/v1.lock.json");
    assert_eq!(mode(&lock), 0o644, "{}", lock.display());
    assert_eq!(mode(&w.env.store.join("VERSION")), 0o644);
    let archive = w.env.path("v1.tar.zst");
    let mut export = w.cmd(&w.env.store);
    export.args(["export", "v1", "-o"]).arg(&archive);
    ok(with_umask(export));
    assert_eq!(mode(&archive), 0o644);

    let mut generate = w.cmd(&w.env.store);
    generate.args(["key", "generate", "--name", "team"]);
    let out = ok(with_umask(generate));
    let keys = w.env.path("config/comfix/keys");
    assert_eq!(mode(&keys.join("team.secret")), 0o600);
    assert_eq!(mode(&keys.join("team.public")), 0o644);
    assert!(
        stderr(&out).contains(&keys.join("team.secret").display().to_string()),
        "{}",
        stderr(&out)
    );
}

/// A path changed since it was registered (here: `__pycache__/` written into the core's checkout,
/// as a root process could) is not shipped: `export` and `store copy --to` fail naming it and the
/// repair, and leave no archive or cache entry behind; once repaired, both work.
#[test]
fn export_and_copy_refuse_a_path_that_no_longer_verifies() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    w.write_spec(&w.default_spec());
    w.cmd(&w.env.store)
        .args(["realize", "v1", "--target"])
        .arg(w.env.path("home"))
        .ok();
    let lock: serde_json::Value = read_json(&w.env.work.join("versions/v1.lock.json"));
    let core = w
        .env
        .store
        .join("paths")
        .join(lock["comfy"]["store_path"].as_str().unwrap());
    fs::set_permissions(&core, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(core.join("__pycache__")).unwrap();
    fs::write(core.join("__pycache__/main.cpython-311.pyc"), b"bytecode").unwrap();
    fs::set_permissions(&core, fs::Permissions::from_mode(0o555)).unwrap();

    let archive = w.env.path("v1.tar.zst");
    let out = w
        .cmd(&w.env.store)
        .args(["export", "v1", "-o"])
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "`{}` does not match its registration",
            core.display()
        )),
        "{err}"
    );
    assert!(err.contains("store verify --repair"), "{err}");
    assert!(!archive.exists(), "no archive is left");
    let cache = w.env.path("cache");
    let out = w
        .cmd(&w.env.store)
        .args(["store", "copy", "--to"])
        .arg(&cache)
        .arg("v1")
        .output()
        .unwrap();
    fails_with(&out, "does not match its registration");

    w.cmd(&w.env.store)
        .args(["store", "verify", "--check-contents", "--repair"])
        .ok();
    w.cmd(&w.env.store)
        .args(["export", "v1", "-o"])
        .arg(&archive)
        .ok();
}

/// `archive` with `entry`'s bytes replaced by `edit` of them, the rest as it was.
fn rewrite(archive: &Path, out: &Path, entry: &str, edit: impl Fn(&[u8]) -> Vec<u8>) {
    let tar = decompress(archive);
    let mut reader = tar::Archive::new(&tar[..]);
    let mut builder = tar::Builder::new(Vec::new());
    let mut found = false;
    for e in reader.entries().unwrap() {
        let mut e = e.unwrap();
        let mut header = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if e.path().unwrap() == Path::new(entry) {
            data = edit(&data);
            header.set_size(data.len() as u64);
            header.set_cksum();
            found = true;
        }
        builder.append(&header, &data[..]).unwrap();
    }
    assert!(found, "no `{entry}` in the archive");
    compress(&builder.into_inner().unwrap(), out);
}

/// A signed archive whose spec (a node pointed at another repository) or lock was edited in
/// transit is refused with a trusted key: nothing registered, `versions/` untouched. Unedited,
/// it imports.
#[test]
fn a_spec_or_lock_edited_after_signing_is_refused() {
    let w = World::new();
    let (signed, public) = signed_export(&w);
    let other = w.node_b.url();
    let node_a = w.node_a.url();
    let edited_spec = w.env.path("edited-spec.tar.zst");
    rewrite(&signed, &edited_spec, "versions/v1.json", |text| {
        String::from_utf8_lossy(text)
            .replace(&node_a, &other)
            .into_bytes()
    });
    let edited_lock = w.env.path("edited-lock.tar.zst");
    rewrite(&signed, &edited_lock, "versions/v1.lock.json", |text| {
        String::from_utf8_lossy(text)
            .replace(&node_a, &other)
            .into_bytes()
    });
    for (what, archive) in [("spec", &edited_spec), ("lock", &edited_lock)] {
        let store = w.env.path(&format!("store-{what}"));
        let versions = w.env.path(&format!("versions-{what}"));
        let out = w
            .cmd(&store)
            .args(["import", "--trusted-key", &public, "--versions-dir"])
            .arg(&versions)
            .arg(archive)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        fails_with(
            &out,
            "The spec and lock of `v1` are not signed by a trusted key",
        );
        assert!(
            registered(&w, &store).is_empty(),
            "{what}: paths registered"
        );
        assert!(!versions.exists(), "{what}: versions written");
    }
    // Waiving signatures does not waive the lock matching its spec.
    let out = w
        .cmd(&w.env.path("store-waived"))
        .args(["import", "--no-check-sigs", "--versions-dir"])
        .arg(w.env.path("versions-waived"))
        .arg(&edited_spec)
        .output()
        .unwrap();
    fails_with(&out, "does not pin what");
    assert!(!w.env.path("versions-waived").exists());
    let versions = w.env.path("versions-ok");
    w.cmd(&w.env.path("store-ok"))
        .args(["import", "--trusted-key", &public, "--versions-dir"])
        .arg(&versions)
        .arg(&signed)
        .ok();
    assert!(versions.join("v1.json").is_file());
}

/// An archive is held to its manifest: no more bytes per path than it declares (a few KB of
/// zeros claiming 16 bytes fill nothing), specs and locks bounded in all (never whole in
/// memory beyond that), declared sizes that overflow, names too long for a store path, version
/// ids that are not ids and entries the manifest does not name — each refused naming the real
/// cause, before anything is registered.
#[test]
fn imports_are_bounded_by_their_manifest() {
    use tar::EntryType::Regular;
    let w = World::new();
    let a = format!("{}-a.bin", "a".repeat(32));
    let zeros = vec![0u8; 8 << 20];
    let spec = |id: &str| json!({ "version_id": id, "spec": format!("versions/{id}.json"), "lock": format!("versions/{id}.lock.json") });
    let ids: Vec<String> = (0..24).map(|i| format!("v{i}")).collect();
    let spec_names: Vec<String> = ids.iter().map(|id| format!("versions/{id}.json")).collect();
    let many_texts: Vec<Entry> = spec_names
        .iter()
        .map(|n| (n.as_str(), Regular, &zeros[..], None))
        .collect();
    let long = format!("{}-{}", "c".repeat(32), "x".repeat(300));
    let at_a = format!("paths/{a}");
    let cases: Vec<(&str, Value, Vec<Entry>, &str)> = vec![
        (
            "larger than declared",
            json!({ "format": 1, "versions": [], "paths": [path_meta(&a, 16)] }),
            vec![(at_a.as_str(), Regular, &zeros[..], None)],
            "is larger than its manifest says",
        ),
        (
            "specs and locks without end",
            json!({ "format": 1, "versions": ids.iter().map(|id| spec(id)).collect::<Vec<_>>(), "paths": [] }),
            many_texts,
            "its specs and locks are larger than",
        ),
        (
            "sizes that overflow",
            json!({ "format": 1, "versions": [], "paths": [
                path_meta(&a, u64::MAX / 2 + 1),
                path_meta(&format!("{}-b.bin", "b".repeat(32)), u64::MAX / 2 + 1)
            ] }),
            vec![],
            "add up to more than 2^64 bytes",
        ),
        (
            "a long name",
            json!({ "format": 1, "versions": [], "paths": [path_meta(&long, 1)] }),
            vec![],
            "its store path name is longer than 200 bytes",
        ),
        (
            "a version id that leaves",
            json!({ "format": 1, "versions": [spec("../evil")], "paths": [path_meta(&a, 1)] }),
            vec![(at_a.as_str(), Regular, b"x", None)],
            "version id `../evil` must not start with `.`",
        ),
        (
            "an entry no one named",
            json!({ "format": 1, "versions": [], "paths": [path_meta(&a, 1)] }),
            vec![("versions/x.json", Regular, b"{}", None)],
            "the manifest names no such spec or lock",
        ),
    ];
    for (what, manifest, entries, expected) in cases {
        let file = crafted_with(
            &w,
            &format!("{}.tar.zst", what.replace(' ', "-")),
            &manifest,
            &entries,
        );
        let store = w.env.path(&format!("store-{}", what.replace(' ', "-")));
        let versions = w.env.path(&format!("versions-{}", what.replace(' ', "-")));
        let out = w
            .cmd(&store)
            .args(["import", "--no-check-sigs", "--versions-dir"])
            .arg(&versions)
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        says(&out, expected);
        assert!(!stderr(&out).contains("No space left"), "{what}");
        assert!(registered(&w, &store).is_empty(), "{what}");
        assert!(!versions.exists(), "{what}: versions written");
        // Nothing staged is left behind.
        let staged: u64 = walkdir::WalkDir::new(&store)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file() && !e.path().starts_with(store.join("db")))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(staged < 1 << 20, "{what}: {staged} bytes left in the store");
    }
}
