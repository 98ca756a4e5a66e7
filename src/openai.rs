//! [`OpenAiLlm`]: a [`LlmService`] over an OpenAI-compatible chat-completions server (the
//! protocol OpenAI, Ollama, llama.cpp's server, vLLM and LM Studio speak), streamed as server-sent
//! events so scripts get tokens as the model makes them. Behind the `openai` cargo feature.
//!
//! Requests run on a small Tokio runtime of their own (one thread, started with the service) with
//! `reqwest` over rustls, never on the main thread. A generation is a Tokio task that reads the
//! event stream and hands tokens to the script's stream; dropping the generation (the script
//! cancelled its promise, stopped from `onChunk`, timed out, or its entity was despawned) aborts
//! the task, which drops the response and closes the connection at once, even while the server is
//! silent. Failures reject the script's promise with a message that says what went wrong:
//! `could not connect`, `answered HTTP 401 ...`, `timed out`, `closed the connection before the
//! answer ended`, `sent a malformed event`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::llm::{LlmFuture, LlmRequest, LlmService};
use crate::stream::StreamSender;

/// Where and how [`OpenAiLlm`] reaches its server.
///
/// ```
/// use std::time::Duration;
/// use bevy_lua_coroutines::OpenAiConfig;
///
/// let config = OpenAiConfig {
///     idle_timeout: Duration::from_secs(30),
///     ..OpenAiConfig::new("http://127.0.0.1:11434/v1", "llama3.2")
/// };
/// assert_eq!(config.model, "llama3.2");
/// ```
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// The API's base URL, up to and including the version: `https://api.openai.com/v1`,
    /// `http://127.0.0.1:11434/v1` (Ollama), `http://127.0.0.1:8080/v1` (llama.cpp). Requests go
    /// to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model name the server knows (`gpt-4o-mini`, `llama3.2`, ...).
    pub model: String,
    /// Sent as `Authorization: Bearer ...` when set (local servers usually need none).
    pub api_key: Option<String>,
    /// The longest wait to open the connection (default 10 s).
    pub connect_timeout: Duration,
    /// The longest silence: for the response to start, then between two reads of the stream
    /// (default 60 s; a model that is loading can be slow to its first token).
    pub idle_timeout: Duration,
    /// The longest a whole generation may take, if bounded (default 5 minutes).
    pub timeout: Option<Duration>,
}

impl OpenAiConfig {
    /// A configuration for `model` at `base_url`, with no API key and the default timeouts.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            timeout: Some(Duration::from_secs(300)),
        }
    }

    /// The configuration the environment asks for: `None` when `LLM_BASE_URL` is unset or empty;
    /// otherwise the base URL with `LLM_MODEL` (required then: an error says so) and, if set,
    /// `LLM_API_KEY`.
    pub fn from_env() -> crate::Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over `var` (which reads one variable).
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> crate::Result<Option<Self>> {
        let var = |name| var(name).filter(|v: &String| !v.trim().is_empty());
        let Some(base_url) = var("LLM_BASE_URL") else { return Ok(None) };
        let Some(model) = var("LLM_MODEL") else {
            return Err(crate::Error::Llm(
                "LLM_BASE_URL is set but LLM_MODEL is not: name the model to use (e.g. LLM_MODEL=llama3.2)"
                    .into(),
            ));
        };
        Ok(Some(Self { api_key: var("LLM_API_KEY"), ..Self::new(base_url, model) }))
    }
}

/// Stops the service's runtime thread when the last clone of the service is dropped.
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A language-model service over an OpenAI-compatible chat-completions API, streamed.
///
/// Each generation sends `system` (if the script gave one), the script's `messages`, then the
/// prompt as the newest user message, with `temperature` and `max_tokens` when the script set
/// them, and streams the answer's text deltas into the script's stream.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_lua_coroutines::prelude::*;
/// use bevy_lua_coroutines::{OpenAiConfig, OpenAiLlm};
///
/// let config = OpenAiConfig::new("http://127.0.0.1:11434/v1", "llama3.2");
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
///     .add_llm_service(OpenAiLlm::new(config).expect("an HTTP client"), LlmConfig::default());
/// ```
pub struct OpenAiLlm {
    config: Arc<OpenAiConfig>,
    client: reqwest::Client,
    runtime: Arc<RuntimeThread>,
}

impl OpenAiLlm {
    /// A service for `config`; starts its runtime thread. Fails if the HTTP client cannot be set
    /// up or the thread cannot start.
    pub fn new(config: OpenAiConfig) -> crate::Result<Self> {
        let setup = |e: &dyn std::fmt::Display| crate::Error::Llm(e.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| setup(&e))?;
        let handle = runtime.handle().clone();
        let client = {
            let _inside = runtime.enter();
            reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .build()
                .map_err(|e| setup(&e))?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("llm-openai".into())
            .spawn(move || {
                // Runs every generation's task until the service is dropped (`stop` closes).
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| setup(&e))?;
        Ok(Self {
            config: Arc::new(config),
            client,
            runtime: Arc::new(RuntimeThread { handle, _stop: stop }),
        })
    }

    /// The service's configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }
}

/// Aborts a generation's task when the generation is dropped (closing its connection).
struct AbortOnDrop(JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LlmService for OpenAiLlm {
    fn generate<'a>(&'a self, request: LlmRequest, tokens: &'a mut StreamSender) -> LlmFuture<'a> {
        Box::pin(async move {
            let (tx, mut rx) = mpsc::channel(16);
            let chat = chat(self.client.clone(), self.config.clone(), request, tx);
            let mut task = AbortOnDrop(self.runtime.handle.spawn(chat));
            while let Some(token) = rx.recv().await {
                if tokens.send(token).await.is_err() {
                    return Ok(()); // the script stopped listening: `task` aborts on drop
                }
            }
            match (&mut task.0).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => Err("the language-model client panicked".into()),
                Err(_) => Err("the language-model request was cancelled".into()),
            }
        })
    }
}

/// The JSON body of a streamed chat-completions request.
fn chat_body(model: &str, request: &LlmRequest) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 2);
    if let Some(system) = &request.system {
        messages.push(json!({ "role": "system", "content": system }));
    }
    for m in &request.messages {
        messages.push(json!({ "role": m.role, "content": m.content }));
    }
    messages.push(json!({ "role": "user", "content": request.prompt }));
    let mut body = json!({ "model": model, "messages": messages, "stream": true });
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = request.max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

/// `what` within `limit`, or the idle-timeout message.
async fn idle<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| format!("the language-model service timed out: {what} for {} s", limit.as_secs_f64()))
}

/// Says what went wrong with a request, with the causes (reqwest's own message is terse).
fn request_error(url: &str, e: reqwest::Error) -> String {
    let mut causes = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push_str(": ");
        causes.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_connect() {
        format!("could not connect to the language-model service at {url}{causes}")
    } else if e.is_timeout() {
        format!("the language-model service timed out{causes}")
    } else if e.is_body() || e.is_decode() {
        format!("the language-model service closed the connection before the answer ended{causes}")
    } else {
        format!("the request to the language-model service at {url} failed{causes}")
    }
}

/// The readable part of an error body: OpenAI's `{"error": {"message": ...}}` (or `{"error":
/// "..."}`), else the body itself, shortened.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error.and_then(|e| e.get("message").and_then(Value::as_str).or(e.as_str()));
    let text = message.unwrap_or(body).trim();
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
}

/// What one server-sent event meant.
enum Event {
    /// Text for the script.
    Token(String),
    /// Nothing for the script (a role announcement, an empty delta, a usage report).
    Nothing,
    /// The answer is complete (`[DONE]`, or a `finish_reason`).
    Done,
}

/// Reads one event's data: a chunk of the answer, `[DONE]`, or a malformed event.
fn parse_event(data: &str) -> Result<Event, String> {
    if data.trim() == "[DONE]" {
        return Ok(Event::Done);
    }
    let malformed = |why: &str| {
        let excerpt: String = data.chars().take(120).collect();
        format!("the language-model service sent a malformed event ({why}): {excerpt}")
    };
    let value: Value = serde_json::from_str(data).map_err(|e| malformed(&e.to_string()))?;
    if let Some(error) = value.get("error") {
        return Err(format!("the language-model service failed: {}", error_message(&error_body(error))));
    }
    let Some(choices) = value.get("choices").and_then(Value::as_array) else {
        return Err(malformed("no `choices`"));
    };
    let Some(choice) = choices.first() else { return Ok(Event::Nothing) };
    let text = choice.pointer("/delta/content").and_then(Value::as_str);
    match text {
        Some(t) if !t.is_empty() => Ok(Event::Token(t.to_string())),
        _ if choice.get("finish_reason").is_some_and(|r| !r.is_null()) => Ok(Event::Done),
        _ => Ok(Event::Nothing),
    }
}

/// An `error` value wrapped back into a body [`error_message`] reads.
fn error_body(error: &Value) -> String {
    json!({ "error": error }).to_string()
}

/// Splits a byte stream into server-sent events' data (the `data:` lines of each event, joined by
/// newlines); other fields and comments are skipped.
#[derive(Default)]
struct EventReader {
    pending: Vec<u8>,
    data: Option<String>,
}

impl EventReader {
    /// Feeds `bytes`; returns the data of every event they complete.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(n) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.pending[start..start + n];
            start += n + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                events.extend(self.data.take());
                continue;
            }
            let Some(value) = line.strip_prefix(b"data:") else { continue };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let value = std::str::from_utf8(value)
                .map_err(|_| "the language-model service sent a malformed event (not UTF-8)".to_string())?;
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        self.pending.drain(..start);
        Ok(events)
    }
}

/// One generation: posts the request and sends the answer's tokens to `tx` until the answer
/// ends. Runs as a task on the service's runtime; aborting it closes the connection.
async fn chat(
    client: reqwest::Client,
    config: Arc<OpenAiConfig>,
    request: LlmRequest,
    tx: mpsc::Sender<String>,
) -> Result<(), String> {
    let work = async {
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        let body = chat_body(&config.model, &request).to_string();
        let mut post = client
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        if let Some(key) = &config.api_key {
            post = post.bearer_auth(key);
        }
        let limit = config.idle_timeout;
        let mut response =
            idle(limit, "no response", post.send()).await?.map_err(|e| request_error(&url, e))?;
        let status = response.status();
        if !status.is_success() {
            let text = idle(limit, "no error body", response.text()).await?.unwrap_or_default();
            return Err(format!(
                "the language-model service answered HTTP {status}: {}",
                error_message(&text)
            ));
        }
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if json {
            // A server that ignored `stream: true` answers in one piece.
            let text =
                idle(limit, "no answer", response.text()).await?.map_err(|e| request_error(&url, e))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| format!("the language-model service sent a malformed answer ({e})"))?;
            let content = value.pointer("/choices/0/message/content").and_then(Value::as_str);
            let content = content.ok_or("the language-model service sent an answer with no message")?;
            let _ = tx.send(content.to_string()).await;
            return Ok(());
        }
        let mut events = EventReader::default();
        loop {
            let chunk =
                idle(limit, "no token", response.chunk()).await?.map_err(|e| request_error(&url, e))?;
            let Some(bytes) = chunk else {
                return Err("the language-model service closed the connection before the answer ended".into());
            };
            for data in events.push(&bytes)? {
                match parse_event(&data)? {
                    Event::Token(token) => {
                        if tx.send(token).await.is_err() {
                            return Ok(()); // the generation was dropped
                        }
                    }
                    Event::Nothing => {}
                    Event::Done => return Ok(()),
                }
            }
        }
    };
    match config.timeout {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(format!(
                "the language-model service timed out: no complete answer in {} s",
                limit.as_secs_f64()
            ))
        }),
        None => work.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_picks_the_server() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        assert!(OpenAiConfig::from_vars(vars(&[])).unwrap().is_none(), "no base URL: no service");
        assert!(OpenAiConfig::from_vars(vars(&[("LLM_BASE_URL", " ")])).unwrap().is_none(), "blank");
        let err = OpenAiConfig::from_vars(vars(&[("LLM_BASE_URL", "http://h/v1")])).unwrap_err().to_string();
        assert!(err.contains("LLM_MODEL"), "{err}");
        static ALL: [(&str, &str); 3] = [
            ("LLM_BASE_URL", "http://127.0.0.1:11434/v1"),
            ("LLM_MODEL", "llama3.2"),
            ("LLM_API_KEY", "sk-1"),
        ];
        let config = OpenAiConfig::from_vars(vars(&ALL)).unwrap().unwrap();
        assert_eq!(
            (config.base_url.as_str(), config.model.as_str(), config.api_key.as_deref()),
            ("http://127.0.0.1:11434/v1", "llama3.2", Some("sk-1"))
        );
        let no_key = OpenAiConfig::from_vars(vars(&ALL[..2])).unwrap().unwrap();
        assert_eq!(no_key.api_key, None);
    }

    #[test]
    fn events_split_across_reads_and_lines_join() {
        let mut r = EventReader::default();
        assert!(r.push(b"data: {\"a\"").unwrap().is_empty(), "no event before the blank line");
        assert_eq!(r.push(b":1}\r\n\r\n: keep-alive\n\n").unwrap(), vec!["{\"a\":1}".to_string()]);
        assert_eq!(r.push(b"event: x\ndata: one\ndata:two\n\n").unwrap(), vec!["one\ntwo".to_string()]);
    }

    #[test]
    fn events_read_as_tokens_done_or_malformed() {
        let token = r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        assert!(matches!(parse_event(token), Ok(Event::Token(t)) if t == "Hi"));
        let role = r#"{"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert!(matches!(parse_event(role), Ok(Event::Nothing)));
        let stop = r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#;
        assert!(matches!(parse_event(stop), Ok(Event::Done)));
        assert!(matches!(parse_event("[DONE]"), Ok(Event::Done)));
        let bad = parse_event("{nope").err().unwrap();
        assert!(bad.contains("malformed event"), "{bad}");
        let error = parse_event(r#"{"error":{"message":"overloaded"}}"#).err().unwrap();
        assert!(error.ends_with("overloaded"), "{error}");
    }
}
