//! Streams from Rust: the producer side of the `Stream`s scripts read (`lua/stream.lua` owns the
//! script side). A Rust producer pushes chunks through a [`StreamSender`] into a bounded buffer;
//! scripts see that buffer as a stream over an external channel, which the step's channel `poll`
//! retries once per frame, so a waiting reader parks like any channel receiver. A full buffer makes
//! [`StreamSender::send`] wait (backpressure); the script closing the stream, finishing it early
//! (`take`), or its entity being despawned makes `send` fail, so the producer stops. The work behind
//! a stream is held by the bridge under the calling instance, as an async function's future is.
//!
//! Also `readFileStream(path)`: a file under the assets folder, read in chunks on the
//! `IoTaskPool`.

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::poll_fn;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bevy::prelude::*;
use bevy::tasks::IoTaskPool;
use mlua::{Function, Lua, Table, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bridge::channels::drain_into;
use crate::bridge::leaves::Values;
use crate::bridge::{self, Outgoing, arg, message, script_function};
use crate::error::{Error, Result};
use crate::runtime::{Base, ChannelLua};

/// Bytes `readFileStream` reads per chunk.
pub const FILE_CHUNK: usize = 64 * 1024;

/// Chunks `readFileStream` buffers ahead of the script.
pub const FILE_BUFFER: usize = 4;

/// The error a script reads when the producer panicked (its sender was dropped while unwinding).
const PANICKED: &str = "the stream's producer panicked";

/// The error other readers get when the stream was cancelled without a script closing it (the
/// entity whose script made it was despawned).
const CANCELLED: &str = "stream cancelled";

/// Most chunks one refill of a script's queue takes (one call stores them all in the queue).
const MAX_REFILL: usize = 4000;

/// Byte chunks up to this size are built into Lua strings with the other flat values of a refill
/// (copied once more, into the batch); longer ones are made one by one.
const FLAT_BYTES: usize = 4096;

/// The most bytes a stream keeps for building the strings of its next refill.
const SCRATCH_BYTES: usize = 64 * 1024;

/// A chunk as the producer sent it; it becomes a Lua value on the VM's thread, when the script's
/// queue is refilled.
enum Chunk {
    /// Raw bytes, read as a Lua string.
    Bytes(Vec<u8>),
    /// A `Serialize` value, read as mlua's `to_value` makes it.
    Value(Box<dyn Outgoing + Send>),
}

impl Outgoing for Chunk {
    fn flatten(&self, lua: &Lua, out: &mut Values) -> bool {
        match self {
            Chunk::Bytes(b) if b.len() <= FLAT_BYTES => {
                out.push_str(b);
                true
            }
            Chunk::Bytes(_) => false,
            Chunk::Value(v) => v.flatten(lua, out),
        }
    }

    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value> {
        match self {
            Chunk::Bytes(b) => lua.create_string(b).map(Value::String),
            Chunk::Value(v) => v.to_lua(lua),
        }
    }
}

#[derive(Default)]
struct State {
    buf: VecDeque<Chunk>,
    /// Chunks handed to the script's queue at its last refill, counted as unread until the next
    /// refill (which comes once they all were read): they still take room in the buffer.
    lent: usize,
    /// The producer finished (or dropped its sender).
    finished: bool,
    /// The producer failed with this message.
    error: Option<String>,
    /// The consumer stopped: nothing more is taken.
    cancelled: bool,
    /// The producer waiting for room.
    waker: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The consumer stopped: drops what is buffered and wakes the producer so its `send` fails.
    fn cancel(&self) {
        let (waker, dropped) = {
            let mut s = self.lock();
            s.cancelled = true;
            (s.waker.take(), std::mem::take(&mut s.buf))
        };
        drop(dropped);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Cancels the stream when the bridge drops the work behind it.
struct CancelOnDrop(Arc<Shared>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The producer end of a stream a script reads (`Send`: use it from a system or from a future on
/// a task pool). Chunks convert to Lua through serde on the VM's thread when the script reads them.
///
/// [`finish`](Self::finish) ends the stream (the script's `read` returns `nil`),
/// [`fail`](Self::fail) ends it with an error (`read` returns `nil, err`, pending promises reject);
/// dropping the sender finishes the stream.
pub struct StreamSender {
    shared: Arc<Shared>,
}

impl StreamSender {
    /// Sends `value`, waiting while the buffer is full. Fails with [`Error::StreamClosed`] once
    /// the script stopped reading: the producer should stop then.
    pub async fn send<T: Serialize + Send + 'static>(&mut self, value: T) -> Result<()> {
        self.push(Chunk::Value(Box::new(value))).await
    }

    /// Sends raw bytes, which scripts read as a Lua string (not necessarily UTF-8).
    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.push(Chunk::Bytes(bytes)).await
    }

    /// Sends `value` if the buffer has room now.
    pub fn try_send<T: Serialize + Send + 'static>(&mut self, value: T) -> Result<()> {
        let mut s = self.shared.lock();
        if s.cancelled {
            return Err(Error::StreamClosed);
        }
        if s.buf.len() + s.lent >= self.shared.capacity {
            return Err(Error::StreamFull);
        }
        s.buf.push_back(Chunk::Value(Box::new(value)));
        Ok(())
    }

    async fn push(&mut self, chunk: Chunk) -> Result<()> {
        let mut chunk = Some(chunk);
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            if s.cancelled {
                return Poll::Ready(Err(Error::StreamClosed));
            }
            if s.buf.len() + s.lent >= self.shared.capacity {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            s.buf.extend(chunk.take());
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Whether the script stopped reading.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().cancelled
    }

    /// How many chunks the buffer holds before `send` waits.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Chunks buffered now, not yet read by the script.
    pub fn len(&self) -> usize {
        let s = self.shared.lock();
        s.buf.len() + s.lent
    }

    /// Whether every chunk sent so far has been read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the stream: the script reads what is buffered, then `nil`.
    pub fn finish(self) {}

    /// Ends the stream with `error`: the script reads what is buffered, then `nil, error`.
    pub fn fail(self, error: impl Display) {
        self.shared.lock().error = Some(error.to_string());
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.finished = true;
        // Dropped while the producer unwinds: a panic is a failure, not a clean end.
        if std::thread::panicking() && s.error.is_none() {
            s.error = Some(PANICKED.into());
        }
    }
}

impl std::fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender").field("capacity", &self.shared.capacity).finish()
    }
}

/// Lua functions of `lua/stream.lua` the Rust side calls.
struct StreamLua {
    /// `rust(channel, err, close, ext) -> Stream`.
    rust: Function,
    /// `batched(ext, receive_queue) -> ext`: the receiving half of a stream's external channel, over
    /// `drain`.
    batched: Function,
    /// What the module was loaded with: `Promise`, `bad`, `callable`, `owner`, `is_channel`.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))]
    deps: Table,
}

/// Loads `lua/stream.lua` on top of the promise module's `Promise`; returns its exports
/// (`Stream`, the table scripts see).
pub(crate) fn install(lua: &Lua, base: &Base) -> mlua::Result<()> {
    let (promise, bad) = (base.promise(), base.bad());
    let deps = lua.create_table()?;
    deps.set("Promise", promise.get::<Table>("Promise")?)?;
    deps.set("callable", promise.get::<Function>("callable")?)?;
    deps.set("owner", promise.get::<Function>("owner")?)?;
    deps.set("is_channel", base.is_channel().clone())?;
    deps.set("bad", bad.clone())?;
    let module: Table =
        lua.load(include_str!("lua/stream.lua")).set_name("=bevy_lua_coroutines/stream.lua").call(&deps)?;
    lua.set_app_data(StreamLua { rust: module.get("rust")?, batched: module.get("batched")?, deps });
    base.builtin("Stream", module.get::<Table>("Stream")?)
}

/// A fresh table with what `lua/stream.lua` was loaded with (`Promise`, `bad`, `callable`, ...), for
/// modules built on streams (the language-model module).
#[cfg(feature = "llm")]
pub(crate) fn module_deps(lua: &Lua) -> mlua::Result<Table> {
    let deps = lua.create_table()?;
    let ours = lua.app_data_ref::<StreamLua>().expect("the stream module is installed").deps.clone();
    for pair in ours.pairs::<Value, Value>() {
        let (k, v) = pair?;
        deps.set(k, v)?;
    }
    Ok(deps)
}

/// Makes a stream for the running script with a buffer of `capacity` chunks (at least 1) and
/// hands its sender to `start`, which returns whatever runs the producer (a task, say) or `None`,
/// or the message to raise instead.
/// That work is held by the bridge under the calling instance and dropped when the script closes
/// the stream or reads its end, or when the instance goes away.
pub(crate) fn script_stream(
    lua: &Lua,
    capacity: usize,
    start: impl FnOnce(StreamSender) -> Result<Option<Box<dyn Send>>, String>,
) -> Result<Value, String> {
    let shared = Arc::new(Shared { state: Mutex::new(State::default()), capacity: capacity.max(1) });
    let work = start(StreamSender { shared: shared.clone() })?;
    make_stream(lua, shared, work).map_err(message)
}

/// The Lua stream over `shared`, with `work` held by the bridge until the stream closes.
fn make_stream(lua: &Lua, shared: Arc<Shared>, work: Option<Box<dyn Send>>) -> mlua::Result<Value> {
    let id = bridge::hold_work(lua, Box::new((CancelOnDrop(shared.clone()), work)));

    let ext = lua.create_table()?;
    ext.set("can_send", lua.create_function(|_, ()| Ok(false))?)?;
    ext.set(
        "send",
        lua.create_function(|_, _: Value| -> mlua::Result<()> {
            Err(mlua::Error::runtime("scripts cannot send to a Rust stream"))
        })?,
    )?;
    let s = shared.clone();
    // The script's side of the stream holds this: a stream garbage-collected without being closed
    // releases its producer at the next step (its `send` fails).
    let reader = bridge::release_on_drop(lua, id);
    // Kept for reuse between refills (each a few large buffers that would otherwise be made and
    // freed every refill): the chunks taken, and `drain_into`'s scratch space. Taken out while a
    // refill runs, so no lock is held while Lua allocates (a finalizer that reads this stream
    // then refills with fresh buffers).
    let scratch: Mutex<(VecDeque<Chunk>, Vec<Chunk>, Values)> = Mutex::default();
    ext.set(
        "drain",
        lua.create_function(move |lua, q: Table| {
            let _ = &reader;
            let mut kept = std::mem::take(&mut *scratch.lock().unwrap_or_else(|e| e.into_inner()));
            let (taken, run, values) = &mut kept;
            let waker = {
                let mut st = s.lock();
                let n = st.buf.len().min(MAX_REFILL);
                taken.extend(st.buf.drain(..n));
                st.lent = n;
                // Wake a producer waiting for room once half the buffer is free, not per chunk:
                // it refills in bursts, with one wake-up per half buffer.
                if st.buf.len() + n <= s.capacity / 2 { st.waker.take() } else { None }
            };
            if let Some(w) = waker {
                w.wake();
            }
            let stored = drain_into(lua, || None, &q, taken, run, values);
            // What was not stored (after a chunk that did not convert, or out of memory) goes back,
            // in order, for the next refill.
            if !taken.is_empty() {
                let mut st = s.lock();
                st.lent -= taken.len();
                for c in taken.drain(..).rev() {
                    st.buf.push_front(c);
                }
            }
            // The bytes of a refill of long chunks are not kept.
            values.bytes.shrink_to(SCRATCH_BYTES);
            *scratch.lock().unwrap_or_else(|e| e.into_inner()) = kept;
            stored
        })?,
    )?;
    let s = shared.clone();
    ext.set("len", lua.create_function(move |_, ()| Ok(s.lock().buf.len()))?)?;
    let cap = shared.capacity;
    ext.set("cap", lua.create_function(move |_, ()| Ok(cap))?)?;
    let close = lua.create_function(move |lua, ()| {
        bridge::cancel(lua, id);
        Ok(())
    })?;
    ext.set("close", close.clone())?;
    let s = shared.clone();
    // Whether it reads as closed once the script's queue is empty, and whether it was cancelled.
    ext.set(
        "is_closed",
        lua.create_function(move |_, ()| {
            let st = s.lock();
            Ok((st.cancelled || st.buf.is_empty() && (st.finished || st.error.is_some()), st.cancelled))
        })?,
    )?;
    // Asked once the channel reads as closed: a stream its script closed has ended before that, so
    // a cancelled one without an error here was cancelled from outside (a despawn).
    let err = lua.create_function(move |_, ()| {
        let st = shared.lock();
        Ok(st.error.clone().or_else(|| st.cancelled.then(|| CANCELLED.to_string())))
    })?;

    let (batched, rust) = {
        let m = lua.app_data_ref::<StreamLua>().expect("the stream module is installed");
        (m.batched.clone(), m.rust.clone())
    };
    let receive_queue = crate::bridge::messages::rust_channels_lua(lua).receive_queue.clone();
    let ext: Table = batched.call((ext, receive_queue))?;
    let external =
        lua.app_data_ref::<ChannelLua>().expect("the channel module is installed").external.clone();
    let channel: Value = external.call((&ext, "stream"))?;
    rust.call((channel, err, close, ext))
}

/// A Rust function that hands scripts a stream: `Fn(A1, ..., An, StreamSender) -> Result<(), E>`,
/// for up to three arguments. In Lua the call returns a `Stream`; an `Err` raises instead (and
/// the sender, dropped, is never read). The function starts the producer (spawns a future that
/// owns the sender, or hands the sender to a system) and returns at once.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hand scripts a stream",
    label = "expected `Fn(A1, ..., An, StreamSender) -> Result<(), E>` (at most 3 arguments before the sender)",
    note = "arguments must be `DeserializeOwned`, the error `Display`"
)]
pub trait StreamScriptFunction<Marker>: Send + Sync + 'static {
    /// Builds the Lua function, named `name` in error messages, whose streams buffer `capacity`
    /// chunks.
    fn into_lua_function(self, lua: &Lua, name: String, capacity: usize) -> mlua::Result<Function>;
}

macro_rules! impl_lua_stream_functions {
    ($($a:ident : $n:literal),*) => {
        impl<F, E, $($a,)*> StreamScriptFunction<fn($($a,)*) -> E> for F
        where
            F: Fn($($a,)* StreamSender) -> Result<(), E> + Send + Sync + 'static,
            E: Display,
            $($a: DeserializeOwned,)*
        {
            #[allow(non_snake_case, unused_variables, unused_mut)]
            fn into_lua_function(self, lua: &Lua, name: String, capacity: usize) -> mlua::Result<Function> {
                script_function(lua, move |lua, args| {
                    let mut args = args.into_iter();
                    $(let $a: $a = arg(lua, &mut args, $n, &name)?;)*
                    script_stream(lua, capacity, |tx| {
                        self($($a,)* tx).map(|()| None).map_err(|e| e.to_string())
                    })
                })
            }
        }
    };
}

impl_lua_stream_functions!();
impl_lua_stream_functions!(A1: 1);
impl_lua_stream_functions!(A1: 1, A2: 2);
impl_lua_stream_functions!(A1: 1, A2: 2, A3: 3);

/// Defines `f` under `name`; each stream it makes buffers `capacity` chunks (at least 1).
pub(crate) fn add_stream_function<M>(
    app: &mut App,
    name: &str,
    capacity: usize,
    f: impl StreamScriptFunction<M>,
) {
    bridge::define(app, name, |lua, short| f.into_lua_function(lua, short, capacity));
}

/// Reads `file` into `tx` in chunks of [`FILE_CHUNK`] bytes (blocking reads: run it on the
/// `IoTaskPool`).
async fn read_file(file: PathBuf, shown: String, mut tx: StreamSender) {
    let mut f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) => return tx.fail(format!("cannot open {shown:?}: {e}")),
    };
    let mut buf = vec![0u8; FILE_CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return tx.finish(),
            Ok(n) => {
                if tx.send_bytes(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return tx.fail(format!("cannot read {shown:?}: {e}")),
        }
    }
}

/// Defines `readFileStream(path) -> Stream` for scripts: files under the app's asset folder (the
/// `AssetPlugin`'s `file_path`, resolved as Bevy resolves it: against `BEVY_ASSET_ROOT`, else
/// `CARGO_MANIFEST_DIR`, else the executable's folder). Chunks are strings of up to
/// [`FILE_CHUNK`] bytes, read on the `IoTaskPool`, [`FILE_BUFFER`] chunks ahead at most.
pub(crate) fn add_read_file_stream(app: &mut App) {
    let root = crate::asset::assets_folder(app);
    add_stream_function(app, "readFileStream", FILE_BUFFER, move |path: String, tx: StreamSender| {
        // A missing file is the stream's error (`read` returns `nil, "cannot open ..."`); anything
        // else the rule refuses, before the file is opened, is the call's.
        let file = match crate::asset::script_file(&root, &path) {
            Ok(file) => file,
            Err(crate::asset::FileRefusal::Missing) => root.join(&path),
            Err(e) => return Err(crate::error::bad_argument(1, "readFileStream", e)),
        };
        IoTaskPool::get().spawn(read_file(file, path, tx)).detach();
        Ok::<_, String>(())
    });
}
