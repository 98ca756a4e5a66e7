//! The language-model service scripts await and stream (the `llm` module), and the executor it
//! runs on. A game plugs in a model client by implementing [`LlmService`]; the crate ships
//! [`LocalLlm`], a deterministic offline model (answers from a small built-in text, with a delay
//! per token) for tests, examples and development. [`LuaAppExt::add_llm_service`](crate::LuaAppExt::add_llm_service) registers one.
//!
//! Every generation is a Rust stream of tokens (see [`StreamSender`]) produced by a future on an
//! [`AsyncExecutor`]: at most `workers` generations run at once, at most `queue` more wait, and a
//! call made while the queue is full returns its promise at once, which waits for a place (first
//! come, first served; `timeout` and cancelling apply) while the frame goes on. The
//! Lua half (`lua/llm.lua`) turns the stream into the promise scripts get. Cancelling that promise,
//! returning `false` from `onChunk`, a `timeout`, or despawning the script's entity drops the
//! generation's future, which is how a service observes cancellation (and its `send` fails).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use bevy::prelude::*;
use bevy::tasks::futures_lite::FutureExt;
use bevy::tasks::{AsyncComputeTaskPool, Task};
use mlua::{Lua, Value};
use serde::Deserialize;

use crate::bridge::{self, from_lua};
use crate::stream::{StreamSender, script_stream};

/// What a script asked the model for.
///
/// A chat service sends, in order: the `system` prompt (if any), the `messages` of the
/// conversation so far, then `prompt` as the newest user message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LlmRequest {
    /// The prompt (the newest user message).
    pub prompt: String,
    /// `opts.temperature`, if the script gave one.
    pub temperature: Option<f32>,
    /// `opts.maxTokens`, if the script gave one.
    pub max_tokens: Option<u32>,
    /// `opts.system`: the system prompt, if the script gave one.
    pub system: Option<String>,
    /// `opts.messages`: the conversation before `prompt`, oldest first (empty if none).
    pub messages: Vec<LlmMessage>,
}

/// One message of a conversation (`{ role = "user", content = "..." }` in Lua).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LlmMessage {
    /// Who said it.
    pub role: LlmRole,
    /// What was said.
    pub content: String,
}

/// Who said an [`LlmMessage`]: `"user"`, `"assistant"` or `"system"` in Lua.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmRole {
    /// Instructions for the model (like `opts.system`).
    System,
    /// The player (or the game speaking for them).
    User,
    /// The model's earlier answers.
    Assistant,
}

/// The future a service returns: `Ok` once every token is sent, `Err(message)` if generation
/// failed (the script's promise rejects with the message).
pub type LlmFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A language-model service scripts can use through the `llm` module.
///
/// `generate` sends the answer's tokens into `tokens` as they are produced and resolves when it is
/// done. It runs on Bevy's `AsyncComputeTaskPool`: await the client's network futures (or move
/// blocking work to a thread of your own) instead of blocking. `tokens.send` waits while the
/// script is behind (backpressure) and fails once the script no longer wants the answer: stop
/// then. The future may also simply be dropped (cancellation, timeout, despawn), so release
/// resources in `Drop` (an HTTP request future does).
///
/// ```
/// use bevy_lua_coroutines::{LlmFuture, LlmRequest, LlmService, StreamSender};
///
/// /// Answers every prompt by shouting it back, word by word.
/// struct Echo;
///
/// impl LlmService for Echo {
///     fn generate<'a>(&'a self, request: LlmRequest, tokens: &'a mut StreamSender) -> LlmFuture<'a> {
///         Box::pin(async move {
///             for word in request.prompt.split_whitespace() {
///                 if tokens.send(format!("{} ", word.to_uppercase())).await.is_err() {
///                     break; // the script stopped listening
///                 }
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait LlmService: Send + Sync + 'static {
    /// Generates the answer to `request`, sending each token to `tokens`.
    fn generate<'a>(&'a self, request: LlmRequest, tokens: &'a mut StreamSender) -> LlmFuture<'a>;
}

/// How the `llm` module runs generations.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// Generations that run at once (default 4).
    pub workers: usize,
    /// Generations that may wait for a worker (default 64); past that, a script's promise waits
    /// for a place (`usize::MAX`: no bound).
    pub queue: usize,
    /// Tokens buffered ahead of a script that reads slowly (default 16).
    pub buffer: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self { workers: 4, queue: 64, buffer: 16 }
    }
}

#[derive(Default)]
struct ExecState {
    running: usize,
    admitted: usize,
    /// The number the next admitted future gets.
    next: u64,
    /// The admitted futures still waiting for a worker, in the order they were admitted: only the
    /// first may take a free worker.
    order: VecDeque<u64>,
    waiting: Vec<Waker>,
}

impl ExecState {
    /// Takes the wakers of the futures waiting for a worker (each looks again; the first in
    /// `order` takes a free one).
    fn take_waiting(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.waiting)
    }
}

/// Wakes `wakers` (outside the lock).
fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

struct ExecInner {
    workers: usize,
    queue: usize,
    state: Mutex<ExecState>,
}

impl ExecInner {
    fn lock(&self) -> MutexGuard<'_, ExecState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Futures admitted at most (running and waiting); `usize::MAX` for an unbounded queue.
    fn capacity(&self) -> usize {
        self.workers.saturating_add(self.queue)
    }
}

/// Runs futures on Bevy's `AsyncComputeTaskPool`, at most `workers` at once, with at most `queue`
/// more waiting for a worker, which they get in the order they were submitted.
/// [`try_submit`](Self::try_submit) returns at once: the task, or the future back when the queue is
/// full. Dropping a task cancels its future, waiting or running.
#[derive(Resource, Clone)]
pub struct AsyncExecutor {
    inner: Arc<ExecInner>,
}

/// Gives back a place in the executor (running or waiting) when a task ends or is dropped; a
/// future dropped while waiting for a worker leaves the line (the next one may go).
struct Admission(Arc<ExecInner>, u64);

impl Drop for Admission {
    fn drop(&mut self) {
        let waiting = {
            let mut s = self.0.lock();
            s.admitted -= 1;
            let before = s.order.len();
            s.order.retain(|&n| n != self.1);
            if s.order.len() < before { s.take_waiting() } else { Vec::new() }
        };
        wake_all(waiting);
    }
}

/// A worker held by a running future.
struct Worker(Arc<ExecInner>);

impl Drop for Worker {
    fn drop(&mut self) {
        let waiting = {
            let mut s = self.0.lock();
            s.running -= 1;
            s.take_waiting()
        };
        // Every waiting future looks again (the first in line takes the worker).
        wake_all(waiting);
    }
}

impl AsyncExecutor {
    /// An executor of `workers` (at least 1) with a queue of `queue`.
    pub fn new(workers: usize, queue: usize) -> Self {
        let inner = ExecInner { workers: workers.max(1), queue, state: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    /// Starts `future` (or queues it for a worker); gives it back if the queue is full.
    pub fn try_submit<F>(&self, future: F) -> Result<Task<F::Output>, F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let number = {
            let mut s = self.inner.lock();
            if s.admitted >= self.inner.capacity() {
                return Err(future);
            }
            s.admitted += 1;
            let number = s.next;
            s.next += 1;
            s.order.push_back(number);
            number
        };
        let admission = Admission(self.inner.clone(), number);
        Ok(AsyncComputeTaskPool::get().spawn(async move {
            let admission = admission;
            let inner = admission.0.clone();
            let number = admission.1;
            let _worker = poll_fn(|cx| {
                let mut s = inner.lock();
                if s.running < inner.workers && s.order.front() == Some(&number) {
                    s.running += 1;
                    s.order.pop_front();
                    // Another worker may be free for the next in line.
                    let next = if s.running < inner.workers { s.take_waiting() } else { Vec::new() };
                    drop(s);
                    wake_all(next);
                    Poll::Ready(Worker(inner.clone()))
                } else {
                    s.waiting.push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            future.await
        }))
    }

    /// Whether [`try_submit`](Self::try_submit) would give the future back now.
    pub fn is_full(&self) -> bool {
        self.inner.lock().admitted >= self.inner.capacity()
    }

    /// Futures running now.
    pub fn running(&self) -> usize {
        self.inner.lock().running
    }

    /// Futures submitted and not finished (running or waiting).
    pub fn submitted(&self) -> usize {
        self.inner.lock().admitted
    }

    /// How many futures run at once.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// How many futures may wait for a worker.
    pub fn queue(&self) -> usize {
        self.inner.queue
    }
}

/// The options table scripts pass (`timeout` is applied on the Lua side).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LlmOptions {
    temperature: Option<f32>,
    #[serde(rename = "maxTokens")]
    max_tokens: Option<u32>,
    #[allow(dead_code)]
    timeout: Option<f64>,
    system: Option<String>,
    messages: Option<Vec<LlmMessage>>,
}

/// Runs one generation: the service's future, then the end of the stream it fed. A panic in the
/// service fails the stream with the panic's message (the script's promise rejects).
async fn generate(service: Arc<dyn LlmService>, request: LlmRequest, mut tokens: StreamSender) {
    let result = std::panic::AssertUnwindSafe(service.generate(request, &mut tokens)).catch_unwind().await;
    match result {
        Ok(Ok(())) => tokens.finish(),
        Ok(Err(e)) => tokens.fail(e),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tokens.fail(format!("the language-model service panicked: {message}"));
        }
    }
}

/// Makes `service` the one the `llm` module uses, and inserts its [`AsyncExecutor`].
pub(crate) fn add_llm_service(app: &mut App, service: impl LlmService, config: LlmConfig) {
    let executor = AsyncExecutor::new(config.workers, config.queue);
    let runtime = crate::runtime::require_plugin(app, "llm");
    let module = install(runtime.lua(), Arc::new(service), executor.clone(), config.buffer.max(1));
    let module = match module {
        Ok(m) => m,
        Err(e) => panic!("{}", crate::Error::Registration { name: "llm".into(), source: e }),
    };
    for name in ["generateAsync", "streamGenerate"] {
        bridge::define(app, &format!("llm.{name}"), |_, _| module.get(name));
    }
    // The seed's name for the module, as `sleep` and `spawn` are for `task.wait` and `task.spawn`.
    let runtime = app.world().resource::<crate::LuaRuntime>();
    let alias = runtime.lua().globals().get::<Value>("llm").and_then(|llm| runtime.define("llmBridge", llm));
    if let Err(e) = alias {
        panic!("{}", crate::Error::Registration { name: "llmBridge".into(), source: e });
    }
    app.insert_resource(executor);
}

/// Loads `lua/llm.lua` with the Rust `open` for `service`; returns its exports.
fn install(
    lua: &Lua,
    service: Arc<dyn LlmService>,
    executor: AsyncExecutor,
    buffer: usize,
) -> mlua::Result<mlua::Table> {
    // `open(prompt, opts, name, opts_index, try_now) -> Stream | false | nil, message`: checks the
    // arguments, then false if `try_now` is false or the queue is full.
    let open = lua.create_function(
        move |lua, (prompt, opts, name, index, try_now): (mlua::LuaString, Value, String, usize, bool)| {
            let Ok(prompt) = prompt.to_str().map(|p| p.to_string()) else {
                return Ok((Value::Nil, Some(crate::error::bad_argument(1, &name, "prompt is not UTF-8"))));
            };
            let options = match from_lua::<Option<LlmOptions>>(lua, opts) {
                Ok(o) => o.unwrap_or_default(),
                Err(e) => return Ok((Value::Nil, Some(crate::error::bad_argument(index, &name, e)))),
            };
            if !try_now || executor.is_full() {
                return Ok((Value::Boolean(false), None));
            }
            let request = LlmRequest {
                prompt,
                temperature: options.temperature,
                max_tokens: options.max_tokens,
                system: options.system,
                messages: options.messages.unwrap_or_default(),
            };
            let service = service.clone();
            let stream = script_stream(lua, buffer, |tokens| {
                executor
                    .try_submit(generate(service, request, tokens))
                    .map(|task| Some(Box::new(task) as Box<dyn Send>))
                    .map_err(|_| String::from("the language-model service's queue is full"))
            });
            Ok(match stream {
                Ok(s) => (s, None),
                Err(message) => (Value::Nil, Some(message)),
            })
        },
    )?;
    let deps = crate::stream::module_deps(lua)?;
    deps.set("open", open)?;
    deps.set("wait", lua.globals().get::<mlua::Table>("task")?.get::<mlua::Function>("wait")?)?;
    deps.set("frame", lua.globals().get::<mlua::Table>("time")?.get::<mlua::Function>("frame")?)?;
    lua.load(include_str!("lua/llm.lua")).set_name("=bevy_lua_coroutines/llm.lua").call(deps)
}

/// The text [`LocalLlm`] answers from.
const LOCAL_TEXT: &str = "The old road runs north past the mill and the river ford, where the \
ferryman keeps a lantern lit for travellers who arrive after dark. Merchants say the mountain pass \
is open again since the snow melted, though wolves still hunt along the ridge at night. The \
blacksmith needs iron from the eastern mine, and the innkeeper pays well for news from the \
capital. Keep your sword sharp, your purse closed and your word honest, and the valley will \
treat you kindly. Rain is coming before the harvest festival, so the farmers work late in the \
fields while the children gather apples in the orchard by the chapel.";

/// A deterministic, offline language model: answers from a small built-in text, starting at a
/// place chosen by the prompt (and temperature, system prompt and conversation), one word per token, after `token_delay` each.
/// The same request always gets the same answer, so it runs anywhere: in tests, examples and CI.
/// An empty prompt fails with `empty prompt`.
#[derive(Clone, Debug)]
pub struct LocalLlm {
    /// The wait before each token (zero: as fast as the script reads).
    pub token_delay: Duration,
    /// Tokens per answer when the script gives no `maxTokens` (default 24).
    pub default_max_tokens: u32,
}

impl LocalLlm {
    /// A local model that waits `token_delay` before each token.
    pub fn new(token_delay: Duration) -> Self {
        Self { token_delay, default_max_tokens: 24 }
    }

    /// The answer's tokens for `request`, in order, made one at a time as they are taken (a huge
    /// `maxTokens` costs nothing up front).
    pub fn tokens(&self, request: &LlmRequest) -> impl Iterator<Item = String> + use<> {
        let words: Vec<&str> = LOCAL_TEXT.split_whitespace().collect();
        // FNV-1a over the prompt and the temperature's hundredths, then the system prompt and the
        // conversation if there are any (so a conversation moves the answer along).
        let temperature = (request.temperature.unwrap_or(0.0) * 100.0).round() as i64;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let context = request.system.iter().map(|s| (0xfe, s.as_str()));
        let context = context.chain(request.messages.iter().map(|m| (m.role as u8, m.content.as_str())));
        let context = context.flat_map(|(tag, text)| std::iter::once(tag).chain(text.bytes()));
        for b in request.prompt.bytes().chain(temperature.to_le_bytes()).chain(context) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let start = (h % words.len() as u64) as usize;
        let n = request.max_tokens.unwrap_or(self.default_max_tokens) as usize;
        (0..n).map(move |i| {
            let word = words[(start + i) % words.len()];
            if i == 0 { word.to_string() } else { format!(" {word}") }
        })
    }
}

impl LlmService for LocalLlm {
    fn generate<'a>(&'a self, request: LlmRequest, tokens: &'a mut StreamSender) -> LlmFuture<'a> {
        Box::pin(async move {
            if request.prompt.trim().is_empty() {
                return Err("empty prompt".into());
            }
            for token in self.tokens(&request) {
                if !self.token_delay.is_zero() {
                    async_io::Timer::after(self.token_delay).await;
                }
                if tokens.send(token).await.is_err() {
                    break; // the script stopped listening
                }
            }
            Ok(())
        })
    }
}
