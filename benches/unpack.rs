//! Unpacking a registry zip of 20,000 entries (200 directories of 100 small files, and a few
//! links inside the package) with comfix's containment primitive (`fetch::registry::unpack`:
//! every create beneath the destination, one component at a time, no symlink followed, links
//! resolved through the tree) against a plain unpack of the same archive (`create_dir_all` +
//! `File::create` per entry, the zip crate's reader, no checks) — the way the unpack was before —
//! in the same run, interleaved and turn about. Run: `cargo bench --bench unpack`
//! (`COMFIX_BENCH_RUNS`, default 5; data under `COMFIX_BENCH_DIR`).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn archive(path: &Path) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("pyproject.toml", options).unwrap();
    zip.write_all(b"[project]\nname = \"big\"\nversion = \"1.0.0\"\n")
        .unwrap();
    for d in 0..200 {
        zip.add_directory(format!("pkg/d{d:03}/"), options).unwrap();
        for f in 0..100 {
            zip.start_file(format!("pkg/d{d:03}/m{f:03}.py"), options)
                .unwrap();
            zip.write_all(format!("X = {d} * {f}\n").repeat(8).as_bytes())
                .unwrap();
        }
        if d % 20 == 0 {
            zip.add_symlink(format!("pkg/d{d:03}/alias.py"), "m000.py", options)
                .unwrap();
        }
    }
    zip.finish().unwrap();
}

/// The plain unpack: what a zip reader and the standard library do, without containment.
fn plain(zip: &Path, dest: &Path) {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(zip).unwrap()).unwrap();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let path = dest.join(entry.name().unwrap().as_ref());
        if entry.is_dir() {
            std::fs::create_dir_all(&path).unwrap();
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if entry.unix_mode().unwrap_or(0) & 0o170000 == 0o120000 {
            let mut target = String::new();
            entry.read_to_string(&mut target).unwrap();
            std::os::unix::fs::symlink(target, &path).unwrap();
            continue;
        }
        let mut out = std::fs::File::create(&path).unwrap();
        std::io::copy(&mut entry, &mut out).unwrap();
    }
}

fn main() {
    let runs = common::env_usize("COMFIX_BENCH_RUNS", 5);
    let dir = common::work_dir();
    let zip = dir.path().join("big.zip");
    archive(&zip);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs + 1 {
        let a = dir.path().join(format!("ours-{i}"));
        let b = dir.path().join(format!("plain-{i}"));
        let contained = || {
            common::sync();
            let start = Instant::now();
            comfix::fetch::registry::unpack(&zip, &a, "http://127.0.0.1/big.zip").unwrap();
            start.elapsed()
        };
        let uncontained = || {
            common::sync();
            let start = Instant::now();
            plain(&zip, &b);
            start.elapsed()
        };
        // Turn about, so neither pays for the other's writeback more often.
        let (took, plain_took) = if i % 2 == 0 {
            let took = contained();
            (took, uncontained())
        } else {
            let plain_took = uncontained();
            (contained(), plain_took)
        };
        if i > 0 {
            // The first of each is a warm-up.
            ours.push(took);
            theirs.push(plain_took);
        }
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
        common::sync();
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (o, t) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "unpack of a 20,000-entry registry zip: contained {o:.2?} vs plain {t:.2?}: {:.2}x  (runs: {ours:.2?} vs {theirs:.2?})",
        o.as_secs_f64() / t.as_secs_f64()
    );
}
