//! ComfyUI's HTTP and websocket API, as `server.py` serves it: `/system_stats`, `/object_info`,
//! `POST /prompt`, `/ws`, `/history/<id>`, `/view`, `POST /interrupt`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::workflow::ObjectInfo;
use super::RunError;

/// A ComfyUI server at `base` (`http://127.0.0.1:8188`).
#[derive(Clone)]
pub struct Comfy {
    http: reqwest::Client,
    pub base: String,
}

/// A node's error, as ComfyUI reports it (validation or execution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeError {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_type: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl std::fmt::Display for NodeError {
    /// `node 5 (KSampler): message: details`, as reports show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let class = self.class_type.as_deref().unwrap_or("?");
        write!(f, "node {} ({class}): {}", self.node, self.message)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// A file a node produced: `/view?filename&subfolder&type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputFile {
    pub node: String,
    pub filename: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subfolder: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// How a submitted prompt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Success,
    /// `execution_error`: the failing node with its message.
    Error(NodeError),
    Interrupted,
    /// The deadline passed (the server was asked to interrupt).
    TimedOut,
}

/// Progress of a running prompt: `(node, value, max)`, or the node that started executing.
pub enum Event<'a> {
    Executing(&'a str),
    Progress(&'a str, u64, u64),
}

/// What `POST /prompt` said.
pub enum Submitted {
    Queued(String),
    /// Rejected before running: the error, and each node's errors.
    Rejected(String, Vec<NodeError>),
}

impl Comfy {
    pub fn new(base: &str) -> Comfy {
        let http = reqwest::Client::builder()
            // A loopback server: never through the machine's proxy.
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client builds");
        Comfy {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    fn api(&self, what: &str, err: impl std::fmt::Display) -> RunError {
        RunError::Api {
            url: format!("{}{what}", self.base),
            message: err.to_string(),
        }
    }

    async fn get_json(&self, what: &str) -> Result<Value, RunError> {
        let response = self
            .http
            .get(format!("{}{what}", self.base))
            .send()
            .await
            .map_err(|e| self.api(what, e))?;
        if !response.status().is_success() {
            return Err(self.api(what, response.status()));
        }
        response.json().await.map_err(|e| self.api(what, e))
    }

    /// Whether the server answers `/system_stats`.
    pub async fn answers(&self) -> bool {
        self.probe().await.is_ok()
    }

    /// Whether the server answers; if not, why not (the connection's error, or its status).
    pub async fn probe(&self) -> Result<(), String> {
        let request = self
            .http
            .get(format!("{}/system_stats", self.base))
            .timeout(Duration::from_secs(2));
        match request.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("it answered {}", r.status())),
            Err(e) => {
                // reqwest's own message is "error sending request"; the cause is at the bottom.
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                Err(cause.to_string())
            }
        }
    }

    pub async fn object_info(&self) -> Result<ObjectInfo, RunError> {
        match self.get_json("/object_info").await? {
            Value::Object(map) => Ok(map),
            _ => Err(self.api("/object_info", "not a JSON object")),
        }
    }

    /// Queue `prompt` for the websocket client `client_id`.
    pub async fn submit(&self, prompt: &Value, client_id: &str) -> Result<Submitted, RunError> {
        let body = json!({"prompt": prompt, "client_id": client_id});
        let response = self
            .http
            .post(format!("{}/prompt", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.api("/prompt", e))?;
        let status = response.status();
        let answer: Value = response.json().await.map_err(|e| self.api("/prompt", e))?;
        if status.is_success() {
            if let Some(id) = answer.get("prompt_id").and_then(Value::as_str) {
                return Ok(Submitted::Queued(id.to_string()));
            }
            return Err(self.api("/prompt", format!("no prompt_id in {answer}")));
        }
        let error = &answer["error"];
        let message = match (
            error.get("message").and_then(Value::as_str),
            error.get("details").and_then(Value::as_str),
        ) {
            (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
            (Some(m), _) => m.to_string(),
            _ => error.to_string(),
        };
        let mut nodes = Vec::new();
        for (node, entry) in answer
            .get("node_errors")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let class_type = entry
                .get("class_type")
                .and_then(Value::as_str)
                .map(String::from);
            for e in entry
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                nodes.push(NodeError {
                    node: node.clone(),
                    class_type: class_type.clone(),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    details: e
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
        }
        Ok(Submitted::Rejected(message, nodes))
    }

    /// The websocket, connected before submitting so no message is missed.
    pub async fn connect(&self, client_id: &str) -> Option<Socket> {
        let url = format!(
            "{}/ws?clientId={client_id}",
            self.base.replacen("http", "ws", 1)
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.ok()?;
        // ComfyUI registers a client only after its handshake went out, and greets it with a
        // `status` message once it has: events of a prompt submitted before then are lost.
        let greeted = async {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let event: Value = serde_json::from_str(&text).unwrap_or_default();
                    if event["type"] == "status" {
                        return true;
                    }
                }
            }
            false
        };
        match tokio::time::timeout(Duration::from_secs(5), greeted).await {
            Ok(true) => Some(socket),
            _ => None, // a server that does not greet: follow by its history
        }
    }

    /// Follow prompt `id` until it ends or `deadline` passes: on the websocket when there is one
    /// (`executing`, `progress`, `execution_error`, `execution_interrupted`,
    /// `execution_success`), else — or when it drops — by polling `/history/<id>`.
    pub async fn follow(
        &self,
        id: &str,
        socket: Option<Socket>,
        deadline: Instant,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Ended, RunError> {
        if let Some(mut socket) = socket {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                // A quiet socket is checked against the history now and then: an event the
                // server could not deliver must not leave us waiting for the deadline.
                let message = match tokio::time::timeout(left.min(QUIET), socket.next()).await {
                    Err(_) if left <= QUIET => return self.timed_out().await,
                    Err(_) => match self.ended(id).await? {
                        Some(ended) => return Ok(ended),
                        None => continue,
                    },
                    Ok(Some(Ok(message))) => message,
                    Ok(_) => break, // the socket went: ask the history
                };
                let Message::Text(text) = message else {
                    continue; // binary previews
                };
                let Ok(event) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let data = &event["data"];
                if data
                    .get("prompt_id")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p != id)
                {
                    continue;
                }
                match event["type"].as_str().unwrap_or("") {
                    "executing" => match data["node"].as_str() {
                        Some(node) => on_event(Event::Executing(node)),
                        // `executing` of no node: the prompt is done; the history says how.
                        None if data["prompt_id"].as_str() == Some(id) => break,
                        None => {}
                    },
                    "progress" => on_event(Event::Progress(
                        data["node"].as_str().unwrap_or(""),
                        data["value"].as_u64().unwrap_or(0),
                        data["max"].as_u64().unwrap_or(0),
                    )),
                    "execution_success" => return Ok(Ended::Success),
                    "execution_error" => return Ok(Ended::Error(execution_error(data))),
                    "execution_interrupted" => return Ok(Ended::Interrupted),
                    _ => {}
                }
            }
        }
        loop {
            if let Some(ended) = self.ended(id).await? {
                return Ok(ended);
            }
            if Instant::now() >= deadline {
                return self.timed_out().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn timed_out(&self) -> Result<Ended, RunError> {
        let _ = self
            .http
            .post(format!("{}/interrupt", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        Ok(Ended::TimedOut)
    }

    /// How prompt `id` ended by its history entry, `None` while it runs.
    async fn ended(&self, id: &str) -> Result<Option<Ended>, RunError> {
        let history = self.get_json(&format!("/history/{id}")).await?;
        let Some(entry) = history.get(id) else {
            return Ok(None);
        };
        let status = &entry["status"];
        let messages = status["messages"].as_array().cloned().unwrap_or_default();
        let find = |kind: &str| {
            messages
                .iter()
                .find(|m| m.get(0).and_then(Value::as_str) == Some(kind))
                .map(|m| m[1].clone())
        };
        if let Some(data) = find("execution_error") {
            return Ok(Some(Ended::Error(execution_error(&data))));
        }
        if find("execution_interrupted").is_some() {
            return Ok(Some(Ended::Interrupted));
        }
        match status["status_str"].as_str() {
            Some("success") => Ok(Some(Ended::Success)),
            Some(_) => Ok(Some(Ended::Error(NodeError {
                node: String::new(),
                class_type: None,
                message: "the prompt failed without an error message".into(),
                details: String::new(),
            }))),
            // Old servers: an entry without status is a finished prompt.
            None => Ok(Some(Ended::Success)),
        }
    }

    /// The files prompt `id` produced, from its history, in node order.
    pub async fn outputs(&self, id: &str) -> Result<Vec<OutputFile>, RunError> {
        // ComfyUI says a prompt ended (on its socket) just before it records the prompt's
        // history: a prompt missing from it is asked for again for a few seconds.
        let started = Instant::now();
        let history = loop {
            let history = self.get_json(&format!("/history/{id}")).await?;
            if history.get(id).is_some() || started.elapsed() > Duration::from_secs(5) {
                break history;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut out = Vec::new();
        let outputs = history[id]["outputs"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut nodes: Vec<(&String, &Value)> = outputs.iter().collect();
        nodes.sort_by_key(|(node, _)| (node.parse::<u64>().unwrap_or(u64::MAX), node.to_string()));
        for (node, ui) in nodes {
            for (_, files) in ui.as_object().into_iter().flatten() {
                for file in files.as_array().into_iter().flatten() {
                    let (Some(filename), Some(kind)) = (
                        file.get("filename").and_then(Value::as_str),
                        file.get("type").and_then(Value::as_str),
                    ) else {
                        continue; // text and other values, not files
                    };
                    out.push(OutputFile {
                        node: node.clone(),
                        filename: filename.to_string(),
                        subfolder: file["subfolder"].as_str().unwrap_or("").to_string(),
                        kind: kind.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The bytes of an output file.
    pub async fn view(&self, file: &OutputFile) -> Result<Vec<u8>, RunError> {
        let what = "/view";
        let response = self
            .http
            .get(format!("{}{what}", self.base))
            .query(&[
                ("filename", file.filename.as_str()),
                ("subfolder", file.subfolder.as_str()),
                ("type", file.kind.as_str()),
            ])
            .send()
            .await
            .map_err(|e| self.api(what, e))?;
        if !response.status().is_success() {
            return Err(self.api(
                what,
                format!("{} for `{}`", response.status(), file.filename),
            ));
        }
        Ok(response
            .bytes()
            .await
            .map_err(|e| self.api(what, e))?
            .to_vec())
    }
}

/// How long the websocket may stay silent before the history is asked.
const QUIET: Duration = Duration::from_secs(2);

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn execution_error(data: &Value) -> NodeError {
    let text = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let kind = text("exception_type");
    let message = text("exception_message");
    NodeError {
        node: match &data["node_id"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        },
        class_type: data
            .get("node_type")
            .and_then(Value::as_str)
            .map(String::from),
        message: if kind.is_empty() {
            message.trim().to_string()
        } else {
            format!("{kind}: {}", message.trim())
        },
        details: String::new(),
    }
}
