//! Wheels the tests generate (pure-Python packages with modules, data files, console scripts and
//! dependencies, in the wheel format installers read), and a PEP 503 "simple" index serving them
//! from a [`TestServer`].

#![allow(dead_code)]

use std::io::Write;

use base64::Engine as _;
use sha2::Digest as _;

use super::http::{Route, TestServer};

/// A pure-Python package.
#[derive(Debug, Clone)]
pub struct Wheel {
    pub name: String,
    pub version: String,
    /// Paths inside the wheel (`pkg/__init__.py`, `pkg-1.0.data/data/share/x`) and contents.
    pub files: Vec<(String, Vec<u8>)>,
    pub requires: Vec<String>,
    /// Console scripts: name → `module:function`.
    pub scripts: Vec<(String, String)>,
    /// The wheel's tag (`py3-none-any`, or a platform's).
    pub tag: String,
}

impl Wheel {
    /// A package `name` with one module `name/__init__.py` holding `source`.
    pub fn new(name: &str, version: &str, source: &str) -> Wheel {
        Wheel {
            name: name.into(),
            version: version.into(),
            files: vec![(format!("{name}/__init__.py"), source.as_bytes().to_vec())],
            requires: Vec::new(),
            scripts: Vec::new(),
            tag: "py3-none-any".into(),
        }
    }

    /// Built for one platform only (`manylinux_2_17_x86_64`).
    pub fn platform(mut self, platform: &str) -> Wheel {
        self.tag = format!("py3-none-{platform}");
        self
    }

    pub fn requires(mut self, requirement: &str) -> Wheel {
        self.requires.push(requirement.into());
        self
    }

    pub fn script(mut self, name: &str, target: &str) -> Wheel {
        self.scripts.push((name.into(), target.into()));
        self
    }

    pub fn file(mut self, path: &str, contents: &[u8]) -> Wheel {
        self.files.push((path.into(), contents.to_vec()));
        self
    }

    /// A file installed under the venv's `share/<name>/` (the wheel's `.data/data/` scheme).
    pub fn data(self, name: &str, contents: &[u8]) -> Wheel {
        let path = format!(
            "{}-{}.data/data/share/{}/{name}",
            self.name, self.version, self.name
        );
        self.file(&path, contents)
    }

    pub fn filename(&self) -> String {
        format!("{}-{}-{}.whl", self.name, self.version, self.tag)
    }

    /// The wheel's bytes (deterministic: fixed timestamps, fixed order).
    pub fn build(&self) -> Vec<u8> {
        let dist_info = format!("{}-{}.dist-info", self.name, self.version);
        let mut files = self.files.clone();
        let mut metadata = format!(
            "Metadata-Version: 2.1\nName: {}\nVersion: {}\n",
            self.name, self.version
        );
        for requirement in &self.requires {
            metadata.push_str(&format!("Requires-Dist: {requirement}\n"));
        }
        files.push((format!("{dist_info}/METADATA"), metadata.into_bytes()));
        files.push((
            format!("{dist_info}/WHEEL"),
            format!(
                "Wheel-Version: 1.0\nGenerator: comfix-tests\nRoot-Is-Purelib: true\nTag: {}\n",
                self.tag
            )
            .into_bytes(),
        ));
        if !self.scripts.is_empty() {
            let mut text = String::from("[console_scripts]\n");
            for (name, target) in &self.scripts {
                text.push_str(&format!("{name} = {target}\n"));
            }
            files.push((format!("{dist_info}/entry_points.txt"), text.into_bytes()));
        }
        let mut record = String::new();
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut buf);
            let options = zip::write::SimpleFileOptions::default()
                .unix_permissions(0o644)
                .last_modified_time(zip::DateTime::default());
            for (path, contents) in &files {
                zip.start_file(path.as_str(), options).unwrap();
                zip.write_all(contents).unwrap();
                let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(sha2::Sha256::digest(contents));
                record.push_str(&format!("{path},sha256={digest},{}\n", contents.len()));
            }
            record.push_str(&format!("{dist_info}/RECORD,,\n"));
            zip.start_file(format!("{dist_info}/RECORD"), options)
                .unwrap();
            zip.write_all(record.as_bytes()).unwrap();
            zip.finish().unwrap();
        }
        buf.into_inner()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serve `wheels` as a PEP 503 index at `<server>/simple/` (links carry `#sha256=`), the files
/// at `<server>/files/<filename>`. Returns the index URL.
pub fn serve_index(server: &TestServer, wheels: &[Wheel]) -> String {
    serve_index_under(server, "", wheels)
}

/// `serve_index` under a path prefix (`/cpu`: the index at `<server>/cpu/simple/`), so one server
/// holds several indexes, as the PyTorch index holds one per backend.
pub fn serve_index_under(server: &TestServer, prefix: &str, wheels: &[Wheel]) -> String {
    serve_index_with(server, prefix, wheels, None)
}

/// `serve_index` whose pages and files all require this `Authorization` header (a private index).
pub fn serve_private_index(server: &TestServer, wheels: &[Wheel], authorization: &str) -> String {
    serve_index_with(server, "", wheels, Some(authorization))
}

fn serve_index_with(
    server: &TestServer,
    prefix: &str,
    wheels: &[Wheel],
    authorization: Option<&str>,
) -> String {
    let guarded = |route: Route| Route {
        require_auth: authorization.map(str::to_string),
        ..route
    };
    let mut by_project: std::collections::BTreeMap<String, Vec<(String, Vec<u8>)>> =
        Default::default();
    for wheel in wheels {
        let bytes = wheel.build();
        server.route(
            &format!("{prefix}/files/{}", wheel.filename().replace('+', "%2B")),
            guarded(Route::file(bytes.clone())),
        );
        by_project
            .entry(wheel.name.replace('_', "-").to_lowercase())
            .or_default()
            .push((wheel.filename(), bytes));
    }
    let mut root = String::from("<!DOCTYPE html><html><body>\n");
    for (project, files) in &by_project {
        root.push_str(&format!(
            "<a href=\"{prefix}/simple/{project}/\">{project}</a>\n"
        ));
        let mut page = String::from("<!DOCTYPE html><html><body>\n");
        for (filename, bytes) in files {
            page.push_str(&format!(
                "<a href=\"{prefix}/files/{}#sha256={}\">{filename}</a>\n",
                filename.replace('+', "%2B"),
                sha256_hex(bytes)
            ));
        }
        page.push_str("</body></html>\n");
        server.route(
            &format!("{prefix}/simple/{project}/"),
            guarded(Route::file(page.into_bytes()).header("Content-Type", "text/html")),
        );
    }
    root.push_str("</body></html>\n");
    server.route(
        &format!("{prefix}/simple/"),
        guarded(Route::file(root.into_bytes()).header("Content-Type", "text/html")),
    );
    server.url(&format!("{prefix}/simple/"))
}

/// Write the wheels into `dir` (a `--wheels-dir`).
pub fn write_dir(dir: &std::path::Path, wheels: &[Wheel]) {
    std::fs::create_dir_all(dir).unwrap();
    for wheel in wheels {
        std::fs::write(dir.join(wheel.filename()), wheel.build()).unwrap();
    }
}
