//! A loopback HTTP/1.1 server for tests that behaves like the outside services comfix talks to:
//! routes with headers, redirects, `Range` requests, required `Authorization`, and faults on
//! demand (a connection dropped after N bytes, or a transfer that stalls until released). It
//! records every request and counts body bytes served. Shut down on drop.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Route {
    pub status: u16,
    pub body: Arc<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    /// Answer 302 to this location.
    pub redirect: Option<String>,
    /// Require exactly this `Authorization` header, else 401.
    pub require_auth: Option<String>,
    /// Close the connection after this many body bytes, once.
    pub drop_after: Option<u64>,
    /// While the server's stall flag is set, stop after this many body bytes and hang.
    pub stall_after: Option<u64>,
}

impl Route {
    pub fn file(body: Vec<u8>) -> Route {
        Route {
            status: 200,
            body: Arc::new(body),
            ..Route::default()
        }
    }

    pub fn json(value: serde_json::Value) -> Route {
        Route {
            status: 200,
            body: Arc::new(value.to_string().into_bytes()),
            headers: vec![("Content-Type".into(), "application/json".into())],
            ..Route::default()
        }
    }

    pub fn redirect(to: &str) -> Route {
        Route {
            status: 302,
            redirect: Some(to.to_string()),
            ..Route::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    routes: Mutex<HashMap<String, Route>>,
    log: Mutex<Vec<Request>>,
    served: Mutex<HashMap<String, u64>>,
    dropped: Mutex<std::collections::HashSet<String>>,
    stop: AtomicBool,
    stall: AtomicBool,
    stalls_reached: AtomicU64,
}

pub struct TestServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    scheme: &'static str,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(None)
    }

    /// The same server speaking HTTPS with `tls` (see `support::tls`).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> TestServer {
        TestServer::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner::default());
        let accept = inner.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let inner = accept.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Ok(tcp) = stream.try_clone() else { return };
                    match tls {
                        None => {
                            let _ = handle(stream, &tcp, &inner);
                        }
                        Some(config) => {
                            let Ok(conn) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            let mut tls = rustls::StreamOwned::new(conn, stream);
                            let _ = handle(&mut tls, &tcp, &inner);
                            tls.conn.send_close_notify();
                            let _ = tls.flush();
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            inner,
            scheme,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.addr.port())
    }

    /// The same server under another host name (`localhost`), for cross-host redirects.
    pub fn other_host_url(&self, path: &str) -> String {
        format!("{}://localhost:{}{path}", self.scheme, self.addr.port())
    }

    pub fn route(&self, path: &str, route: Route) {
        self.inner
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), route);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.log.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Body bytes served for `path`, over all requests.
    pub fn bytes_served(&self, path: &str) -> u64 {
        *self.inner.served.lock().unwrap().get(path).unwrap_or(&0)
    }

    pub fn set_stall(&self, on: bool) {
        self.inner.stall.store(on, Ordering::SeqCst);
    }

    pub fn stalls_reached(&self) -> u64 {
        self.inner.stalls_reached.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.stall.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(mut stream: impl Read + Write, tcp: &TcpStream, inner: &Inner) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let full_path = first.next().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    inner.log.lock().unwrap().push(Request {
        method: method.clone(),
        path: full_path.clone(),
        headers: headers.clone(),
    });
    let route = {
        let routes = inner.routes.lock().unwrap();
        routes
            .get(&full_path)
            .or_else(|| routes.get(full_path.split('?').next().unwrap_or_default()))
            .cloned()
    };
    let Some(route) = route else {
        return respond(&mut stream, 404, &[], b"not found", true);
    };
    if let Some(required) = &route.require_auth {
        if headers.get("authorization") != Some(required) {
            return respond(&mut stream, 401, &[], b"unauthorized", true);
        }
    }
    let mut extra: Vec<(String, String)> = route.headers.clone();
    if let Some(to) = &route.redirect {
        extra.push(("Location".into(), to.clone()));
        return respond(&mut stream, route.status, &extra, b"", method != "HEAD");
    }
    let total = route.body.len() as u64;
    let mut start = 0;
    let mut status = route.status;
    if let Some(range) = headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
        let from: u64 = range.trim_end_matches('-').parse().unwrap_or(0);
        if from >= total {
            return respond(
                &mut stream,
                416,
                &[("Content-Range".into(), format!("bytes */{total}"))],
                b"",
                true,
            );
        }
        start = from;
        status = 206;
        extra.push((
            "Content-Range".into(),
            format!("bytes {from}-{}/{total}", total - 1),
        ));
    }
    extra.push(("Accept-Ranges".into(), "bytes".into()));
    let body = &route.body[start as usize..];
    write_head(&mut stream, status, &extra, body.len() as u64)?;
    if method == "HEAD" {
        return Ok(());
    }
    let limit = match (route.drop_after, route.stall_after) {
        (Some(n), _) if inner.dropped.lock().unwrap().insert(full_path.clone()) => Some((n, false)),
        (_, Some(n)) if inner.stall.load(Ordering::SeqCst) => Some((n, true)),
        _ => None,
    };
    let mut sent = 0u64;
    for chunk in body.chunks(64 * 1024) {
        let chunk = match limit {
            Some((n, _)) if start + sent + chunk.len() as u64 > n => {
                let keep = n.saturating_sub(start + sent) as usize;
                &chunk[..keep.min(chunk.len())]
            }
            _ => chunk,
        };
        stream.write_all(chunk)?;
        sent += chunk.len() as u64;
        *inner
            .served
            .lock()
            .unwrap()
            .entry(full_path.clone())
            .or_default() += chunk.len() as u64;
        if let Some((n, stall)) = limit {
            if start + sent >= n {
                stream.flush()?;
                if stall {
                    inner.stalls_reached.fetch_add(1, Ordering::SeqCst);
                    while inner.stall.load(Ordering::SeqCst) && !inner.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                let _ = tcp.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
        }
    }
    Ok(())
}

fn write_head(
    stream: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    len: u64,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

fn respond(
    stream: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    write_head(stream, status, headers, body.len() as u64)?;
    if with_body {
        stream.write_all(body)?;
    }
    Ok(())
}

/// One HTTP/1.1 request as the hand-written test servers read it: the request line, the header
/// lines as sent, and the body (`Content-Length` bytes).
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The next request on a kept-alive connection; `None` when the client closed it.
pub fn read_request(reader: &mut impl BufRead) -> Option<RawRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut request = RawRequest {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let length = request
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    request.body = vec![0; length];
    reader.read_exact(&mut request.body).ok()?;
    Some(request)
}
