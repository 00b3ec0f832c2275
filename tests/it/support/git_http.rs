//! Git's smart HTTP protocol on 127.0.0.1, as GitHub serves it: each request is handed to git's
//! own `git http-backend` (CGI) over the bare repositories under one directory. Shared by the
//! tests and `benches/git_fetch.rs`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct GitRequest {
    pub method: String,
    /// Path and query, as requested.
    pub target: String,
    /// Bytes of the response body.
    pub sent: u64,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<GitRequest>>,
    bytes_sent: AtomicU64,
    stop: AtomicBool,
}

pub struct GitHttpServer {
    root: PathBuf,
    port: u16,
    shared: Arc<Shared>,
}

impl GitHttpServer {
    /// Serve the repositories under `root` (`http://127.0.0.1:<port>/<name>` is `root/<name>`).
    /// `allow_fetch_by_id`: whether a client may ask for a commit no ref points at, by its id
    /// (`uploadpack.allowReachableSHA1InWant`, as GitHub allows).
    pub fn start(root: &Path, allow_fetch_by_id: bool) -> GitHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let (root_for_thread, state) = (root.to_path_buf(), shared.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if state.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, state) = (root_for_thread.clone(), state.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, allow_fetch_by_id, &state);
                });
            }
        });
        GitHttpServer {
            root: root.to_path_buf(),
            port,
            shared,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn requests(&self) -> Vec<GitRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Bytes of response bodies sent so far (the packs, mostly).
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, root: &Path, by_id: bool, state: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (mut length, mut chunked, mut content_type, mut encoding) = (0usize, false, None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        let Some((name, value)) = header.trim_end().split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-type" => content_type = Some(value),
            "content-encoding" => encoding = Some(value),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    };
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let mut cgi = Command::new("git");
    cgi.arg("-c")
        .arg(format!("uploadpack.allowReachableSHA1InWant={by_id}"))
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("CONTENT_TYPE", content_type.unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(encoding) = encoding {
        cgi.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let (mut status, mut headers) = ("200 OK".to_string(), String::new());
    loop {
        let mut header = String::new();
        if out.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
        match header.trim_end().split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_string()
            }
            _ => headers.push_str(&format!("{}\r\n", header.trim_end())),
        }
    }
    // Buffered to give a length: libgit2 does not read a body that only the close ends.
    let mut response = Vec::new();
    out.read_to_end(&mut response)?;
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.len()
    )?;
    stream.write_all(&response)?;
    stream.flush()?;
    let sent = response.len() as u64;
    let _ = writer.join();
    let _ = child.wait();
    state.bytes_sent.fetch_add(sent, Ordering::SeqCst);
    state.requests.lock().unwrap().push(GitRequest {
        method,
        target,
        sent,
    });
    Ok(())
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
        if size == 0 {
            return Ok(body);
        }
    }
}

/// A bare repository `root/<name>` with `commits` commits on `main`, each changing one of a few
/// hundred files (made by `git fast-import`, seconds for 10,000 commits); returns every commit's
/// id, oldest first.
pub fn long_history(root: &Path, name: &str, commits: usize) -> Vec<String> {
    let repo = root.join(name);
    let run = |args: &[&str], input: Option<&[u8]>| {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(&repo)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("run git");
        if let Some(input) = input {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    std::fs::create_dir_all(&repo).unwrap();
    run(&["init", "--bare", "-q", "-b", "main"], None);
    let mut stream = Vec::new();
    for i in 0..commits {
        let text = format!("line {i}\n{}", "x".repeat(200 + i % 800));
        writeln!(stream, "commit refs/heads/main\nmark :{}", i + 1).unwrap();
        writeln!(
            stream,
            "committer bench <bench@example.invalid> {} +0000",
            1_700_000_000 + i
        )
        .unwrap();
        let message = format!("commit {i}");
        writeln!(stream, "data {}\n{message}", message.len()).unwrap();
        if i > 0 {
            writeln!(stream, "from :{i}").unwrap();
        }
        writeln!(
            stream,
            "M 100644 inline src/file{}.py\ndata {}\n{text}",
            i % 300,
            text.len()
        )
        .unwrap();
    }
    run(&["fast-import", "--quiet"], Some(&stream));
    run(&["repack", "-adq"], None);
    let ids = run(&["rev-list", "--reverse", "main"], None);
    ids.lines().map(str::to_string).collect()
}
