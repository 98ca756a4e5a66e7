//! The bridge between Rust and scripts: Rust functions and async functions registered under Lua
//! names, promises that Rust settles later from any thread, and Bevy messages both ways
//! ([`messages`]). Values cross through serde: into Rust by [`from_lua`], out to scripts as
//! [`Outgoing`] values, which a batch builds by raw C API writes when they are flat (numbers,
//! strings, booleans, plain structs of them; see `flat` and `leaves`) and through mlua's
//! `to_value` otherwise, giving the same Lua values either way.
//!
//! An async function's future runs on Bevy's `AsyncComputeTaskPool`, off the main thread. Its
//! result travels back on a crossbeam channel, and the step drains the channel at its start (a
//! hook [`install`] registers with the scheduler), on the thread that owns the VM, settling the
//! promises the scripts hold: the results of a batch are built into one table and settled by one
//! call into Lua. Cancelling that promise, or despawning the instance that made the call (another
//! hook), drops the future. A Rust `struct` with `Serialize`/`Deserialize` is a Lua table.

use std::fmt::Display;
use std::future::Future;

use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use bevy::tasks::AsyncComputeTaskPool;
use crossbeam_channel::{Receiver, Sender};
use mlua::{Function, IntoLua, Lua, LuaSerdeExt, MultiValue, Table, Value};

pub mod channels;
mod flat;
#[cfg(feature = "lua54")]
mod gather;
pub(crate) mod leaves;
pub mod messages;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runtime::Base;
use crate::scheduler::{InstanceId, current_instance, host};
use leaves::Values;

/// A value Rust hands scripts, made into Lua values on the VM's thread: as flat leaves when it
/// can be (see `flat`; `leaves::write` builds a batch of them in one protected call), else as one
/// mlua value. Every `Serialize` type is one; a stream's chunks are too. Results of Rust work,
/// typed channels' values and stream chunks all cross this way.
pub(crate) trait Outgoing {
    /// Appends the value to `out` and returns true, or leaves `out` as it was and returns false.
    fn flatten(&self, lua: &Lua, out: &mut Values) -> bool;
    /// The value as mlua's `to_value` makes it.
    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value>;
}

impl<T: Serialize> Outgoing for T {
    fn flatten(&self, lua: &Lua, out: &mut Values) -> bool {
        flat::serialize(lua, self, out).is_ok()
    }

    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value> {
        lua.to_value(self)
    }
}

/// A finished piece of Rust work: the id of its promise and how it settles (the value it resolves
/// with, or the message it rejects with).
struct Completion {
    id: u64,
    outcome: Result<Box<dyn Outgoing + Send>, String>,
}

struct Pending {
    /// What runs the work (an async function's future, a stream's producer): held only so that
    /// dropping it cancels the work.
    _work: Option<Box<dyn Send>>,
    /// The instance whose script made the call.
    instance: Option<InstanceId>,
}

/// The bridge's state, in the VM's app data.
pub(crate) struct Bridge {
    tx: Sender<Completion>,
    rx: Receiver<Completion>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

impl Default for Bridge {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self { tx, rx, pending: HashMap::default(), next_id: 0 }
    }
}

fn bridge(lua: &Lua) -> mlua::AppDataRefMut<'_, Bridge> {
    lua.app_data_mut::<Bridge>().expect("the bridge is installed with the VM")
}

/// A promise a script holds that Rust settles later, from any thread. Dropping it without
/// settling rejects the promise (`the promise's Rust handle was dropped without settling it`),
/// so a script never waits forever on work that was abandoned.
pub struct PromiseHandle {
    id: u64,
    tx: Sender<Completion>,
    settled: bool,
}

impl PromiseHandle {
    /// Resolves the promise with `value` (converted to Lua through serde).
    pub fn resolve<T: Serialize + Send + 'static>(mut self, value: T) {
        self.settled = true;
        let _ = self.tx.send(Completion { id: self.id, outcome: Ok(Box::new(value)) });
    }

    /// Rejects the promise with `error`'s message.
    pub fn reject(mut self, error: impl Display) {
        self.settled = true;
        let _ = self.tx.send(Completion { id: self.id, outcome: Err(error.to_string()) });
    }
}

impl Drop for PromiseHandle {
    fn drop(&mut self) {
        if !self.settled {
            let message = String::from("the promise's Rust handle was dropped without settling it");
            let _ = self.tx.send(Completion { id: self.id, outcome: Err(message) });
        }
    }
}

impl std::fmt::Debug for PromiseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromiseHandle").field("id", &self.id).finish()
    }
}

/// Lua functions of the promise module the bridge calls.
pub(crate) struct BridgeLua {
    /// `settle_many(q, n)`: settles the promises of the triples `id, ok, value` at `q[1..n]`, in
    /// order, clearing them.
    pub settle_many: Function,
    /// The table `drain` hands `settle_many` (kept for reuse).
    pub queue: Table,
    /// `forget(id)`: drops a promise without settling it (its instance is gone).
    pub forget: Function,
    /// `wrap(raw) -> function`: raises the errors `raw` returns as `false, message`.
    pub wrap: Function,
    /// `wrap_pending(raw) -> function`: the same for a `raw` that returns `true, id`; the call
    /// makes a pending promise before `raw` runs and returns it, filed under `id`.
    pub wrap_pending: Function,
}

/// Makes a script-facing function of `call`, which returns its value or the message to raise.
pub(crate) fn script_function(
    lua: &Lua,
    call: impl Fn(&Lua, MultiValue) -> Result<Value, String> + Send + Sync + 'static,
) -> mlua::Result<Function> {
    let wrap = lua.app_data_ref::<BridgeLua>().expect("the bridge is installed").wrap.clone();
    wrapped(lua, &wrap, call)
}

/// Makes a script-facing function of `call`, which holds the work behind a new promise and
/// returns its id (or the message to raise); the script gets the pending promise.
fn promise_function(
    lua: &Lua,
    call: impl Fn(&Lua, MultiValue) -> Result<u64, String> + Send + Sync + 'static,
) -> mlua::Result<Function> {
    let wrap = lua.app_data_ref::<BridgeLua>().expect("the bridge is installed").wrap_pending.clone();
    wrapped(lua, &wrap, call)
}

/// `wrapper(raw)`, where `raw` calls `call` and returns `true, value` or `false, message`.
fn wrapped<V: IntoLua>(
    lua: &Lua,
    wrapper: &Function,
    call: impl Fn(&Lua, MultiValue) -> Result<V, String> + Send + Sync + 'static,
) -> mlua::Result<Function> {
    let raw = lua.create_function(move |lua, args: MultiValue| {
        Ok(match call(lua, args) {
            Ok(value) => (true, value.into_lua(lua)?),
            Err(message) => (false, Value::String(lua.create_string(message)?)),
        })
    })?;
    wrapper.call(raw)
}

/// Installs the bridge in a new VM, on top of the promise module's exports: each step starts by
/// settling the Rust work that finished, and an instance's cancellation drops the work it started.
pub(crate) fn install(lua: &Lua, base: &Base) -> mlua::Result<()> {
    let promise = base.promise();
    lua.set_app_data(Bridge::default());
    let cancel = lua.create_function(|lua, id: u64| {
        cancel(lua, id);
        Ok(())
    })?;
    let module: mlua::Table = lua
        .load(include_str!("../lua/bridge.lua"))
        .set_name("=bevy_lua_coroutines/bridge.lua")
        .call((promise.get::<Function>("deferred")?, promise.get::<Function>("settle_batch")?, cancel))?;
    lua.set_app_data(BridgeLua {
        settle_many: module.get("settle_many")?,
        queue: lua.create_table()?,
        forget: module.get("forget")?,
        wrap: module.get("wrap")?,
        wrap_pending: module.get("wrap_pending")?,
    });
    base.before_step("settling Rust results", drain);
    base.on_cancel_instance(cancel_instance);
    Ok(())
}

/// Reserves the id a new promise is settled by.
fn next_id(lua: &Lua) -> u64 {
    let mut b = bridge(lua);
    b.next_id += 1;
    b.next_id
}

/// Holds `work` for the running script under `id` until [`cancel`] (or the end of the script's
/// instance) drops it.
fn hold(lua: &Lua, id: u64, work: Option<Box<dyn Send>>) {
    let instance = current_instance(lua);
    bridge(lua).pending.insert(id, Pending { _work: work, instance });
}

/// Holds `work` (a stream's producer) for the running script; returns the id that [`cancel`]
/// drops it by. Despawning the script's entity drops it too.
pub(crate) fn hold_work(lua: &Lua, work: Box<dyn Send>) -> u64 {
    let id = next_id(lua);
    hold(lua, id, Some(work));
    id
}

/// Drops the work held under an id at the start of the next step when it is dropped itself, from
/// any thread or while the collector runs (where the VM cannot be called): it goes through the
/// completion channel like a result, and finds no promise to settle.
pub(crate) struct ReleaseOnDrop {
    id: u64,
    tx: Sender<Completion>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let _ = self.tx.send(Completion { id: self.id, outcome: Err(String::new()) });
    }
}

/// A guard that drops the work held under `id` (see [`hold_work`]) once the guard is dropped.
pub(crate) fn release_on_drop(lua: &Lua, id: u64) -> ReleaseOnDrop {
    ReleaseOnDrop { id, tx: bridge(lua).tx.clone() }
}

/// Runs `future` on the `AsyncComputeTaskPool`, held for the running script, and returns the id
/// of the promise its result settles (made by `wrap_pending`): `Ok` resolves it (converted on the
/// VM's thread), `Err` rejects it with the message.
fn spawn_promise<R, E>(lua: &Lua, future: impl Future<Output = Result<R, E>> + Send + 'static) -> u64
where
    R: Serialize + Send + 'static,
    E: Display + Send + 'static,
{
    let tx = bridge(lua).tx.clone();
    let id = next_id(lua);
    let task = AsyncComputeTaskPool::get().spawn(async move {
        let outcome =
            future.await.map(|r| Box::new(r) as Box<dyn Outgoing + Send>).map_err(|e| e.to_string());
        let _ = tx.send(Completion { id, outcome });
    });
    hold(lua, id, Some(Box::new(task)));
    id
}

/// Drops the work behind promise `id` (the script cancelled it).
pub(crate) fn cancel(lua: &Lua, id: u64) {
    let removed = bridge(lua).pending.remove(&id);
    drop(removed);
}

/// Drops the work every call of `instance` still has in flight (its entity is going away).
pub(crate) fn cancel_instance(lua: &Lua, instance: InstanceId) {
    let removed: Vec<(u64, Pending)> = {
        let mut b = bridge(lua);
        let ids: Vec<u64> =
            b.pending.iter().filter(|(_, p)| p.instance == Some(instance)).map(|(&id, _)| id).collect();
        ids.into_iter().filter_map(|id| b.pending.remove(&id).map(|p| (id, p))).collect()
    };
    let forget = lua.app_data_ref::<BridgeLua>().map(|b| b.forget.clone());
    for (id, pending) in removed {
        drop(pending);
        if let Some(forget) = &forget {
            let _ = forget.call::<()>(id);
        }
    }
}

/// Most promises one call into Lua settles.
const SETTLE_BATCH: usize = 1000;

/// The results of finished Rust work on their way into `settle_many`'s table: `id, ok, value`
/// triples, the run of flat ones in `values` (built at `q[n + 1]...` when the run is flushed).
#[derive(Default)]
struct Settlements {
    values: Values,
    /// Slots of the table filled so far.
    n: usize,
    /// Completions in this batch.
    count: usize,
}

impl Settlements {
    /// Adds the settlement of promise `id`: resolved with the value, or rejected with the message
    /// (also when the value does not convert).
    fn add(
        &mut self,
        lua: &Lua,
        q: &Table,
        id: u64,
        outcome: Result<Box<dyn Outgoing + Send>, String>,
    ) -> mlua::Result<()> {
        self.count += 1;
        let id = id as mlua::Integer;
        let value = match outcome {
            Err(message) => {
                self.values.push_int(id);
                self.values.push_bool(false);
                self.values.push_str(message.as_bytes());
                return Ok(());
            }
            Ok(value) => value,
        };
        let mark = self.values.mark();
        self.values.push_int(id);
        self.values.push_bool(true);
        if value.flatten(lua, &mut self.values) {
            return Ok(());
        }
        // Not flat: the run so far is built, then this one through mlua.
        self.values.truncate(mark);
        self.flush(lua, q)?;
        let (ok, v) = match value.to_lua(lua) {
            Ok(v) => (true, v),
            Err(e) => {
                (false, Value::String(lua.create_string(format!("could not convert the result: {e}"))?))
            }
        };
        q.raw_set(self.n + 1, id)?;
        q.raw_set(self.n + 2, ok)?;
        q.raw_set(self.n + 3, v)?;
        self.n += 3;
        Ok(())
    }

    /// Builds the run of flat values into `q`.
    fn flush(&mut self, lua: &Lua, q: &Table) -> mlua::Result<()> {
        if self.values.ops.is_empty() {
            return Ok(());
        }
        let (stored, r) = leaves::write(lua, q, self.n, &self.values);
        self.n += stored;
        self.values.clear();
        r
    }
}

/// Settles the promises whose Rust work finished since the last step: runs of completions made by
/// the same instance settle in one call into Lua, their values built into one table (flat values
/// by raw C API writes, one protected call per run).
pub(crate) fn drain(lua: &Lua) -> mlua::Result<()> {
    let Some((settle, q)) = lua.app_data_ref::<BridgeLua>().map(|b| (b.settle_many.clone(), b.queue.clone()))
    else {
        return Ok(());
    };
    let mut batch = Settlements::default();
    let mut run_instance = None;
    loop {
        let completion = {
            let b = bridge(lua);
            b.rx.try_recv()
        };
        let Ok(Completion { id, outcome }) = completion else { break };
        let Some(pending) = bridge(lua).pending.remove(&id) else {
            continue; // cancelled meanwhile
        };
        if batch.count > 0 && (pending.instance != run_instance || batch.count >= SETTLE_BATCH) {
            settle_run(lua, &settle, &q, run_instance, &mut batch)?;
        }
        run_instance = pending.instance;
        batch.add(lua, &q, id, outcome)?;
    }
    if batch.count > 0 {
        settle_run(lua, &settle, &q, run_instance, &mut batch)?;
    }
    Ok(())
}

/// Settles the completions in `batch`, all made by `instance`: handlers the settlement starts
/// become tasks of that instance.
fn settle_run(
    lua: &Lua,
    settle: &Function,
    q: &Table,
    instance: Option<InstanceId>,
    batch: &mut Settlements,
) -> mlua::Result<()> {
    let built = batch.flush(lua, q);
    let n = std::mem::take(&mut batch.n);
    batch.count = 0;
    built?;
    let _host = host(lua, instance);
    settle.call::<()>((q, n))
}

/// Converts a Lua value to `T`, naming the field that did not fit (`at health.max: invalid type:
/// string "x", expected f32`).
pub(crate) fn from_lua<T: DeserializeOwned>(lua: &Lua, value: Value) -> Result<T, String> {
    crate::lists::check_tree(&value, &mut |steps| crate::scheduler::charge_work(lua, steps))?;
    let deserializer = mlua::serde::Deserializer::new(value);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = match e.into_inner() {
            mlua::Error::DeserializeError(message) => message,
            other => other.to_string(),
        };
        if path == "." { inner } else { format!("at {path}: {inner}") }
    })
}

/// Reads argument `index` (1-based) of `name` through serde.
pub(crate) fn arg<T: DeserializeOwned>(
    lua: &Lua,
    args: &mut impl Iterator<Item = Value>,
    index: usize,
    name: &str,
) -> Result<T, String> {
    from_lua(lua, args.next().unwrap_or(Value::Nil)).map_err(|e| crate::error::bad_argument(index, name, e))
}

/// An mlua error as the message a script sees.
pub(crate) fn message(e: mlua::Error) -> String {
    crate::error::split_traceback(&e).0
}

/// A Rust function scripts can call: `Fn(A1, ..., An) -> Result<R, E>` for up to four arguments,
/// each `DeserializeOwned`, with `R: Serialize` and `E: Display`. An `Err` raises a Lua error
/// with its message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be called from scripts",
    label = "expected `Fn(A1, ..., An) -> Result<R, E>` (at most 4 arguments)",
    note = "arguments must be `DeserializeOwned`, the result `Serialize`, the error `Display`"
)]
pub trait ScriptFunction<Marker>: Send + Sync + 'static {
    /// Builds the Lua function, named `name` in error messages.
    fn into_lua_function(self, lua: &Lua, name: String) -> mlua::Result<Function>;
}

/// An async Rust function scripts can call: `Fn(A1, ..., An) -> impl Future<Output = Result<R, E>>`,
/// for up to four arguments. In Lua the call returns a `Promise`; the future runs on Bevy's
/// `AsyncComputeTaskPool`; `Ok` resolves the promise, `Err` rejects it with its message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be called from scripts as an async function",
    label = "expected `Fn(A1, ..., An) -> impl Future<Output = Result<R, E>> + Send` (at most 4 arguments)",
    note = "arguments must be `DeserializeOwned`, the result `Serialize + Send`, the error `Display + Send`"
)]
pub trait AsyncScriptFunction<Marker>: Send + Sync + 'static {
    /// Builds the Lua function, named `name` in error messages.
    fn into_lua_function(self, lua: &Lua, name: String) -> mlua::Result<Function>;
}

/// A Rust function that hands its promise to Rust code to settle later:
/// `Fn(A1, ..., An, PromiseHandle)`, for up to three arguments. In Lua the call returns the promise.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hand scripts a promise",
    label = "expected `Fn(A1, ..., An, PromiseHandle)` (at most 3 arguments before the handle)",
    note = "arguments must be `DeserializeOwned`"
)]
pub trait PromiseScriptFunction<Marker>: Send + Sync + 'static {
    /// Builds the Lua function, named `name` in error messages.
    fn into_lua_function(self, lua: &Lua, name: String) -> mlua::Result<Function>;
}

macro_rules! impl_lua_functions {
    ($($a:ident : $n:literal),*) => {
        impl<F, R, E, $($a,)*> ScriptFunction<fn($($a,)*) -> (R, E)> for F
        where
            F: Fn($($a),*) -> Result<R, E> + Send + Sync + 'static,
            R: Serialize,
            E: Display,
            $($a: DeserializeOwned,)*
        {
            #[allow(non_snake_case, unused_variables, unused_mut)]
            fn into_lua_function(self, lua: &Lua, name: String) -> mlua::Result<Function> {
                script_function(lua, move |lua, args| {
                    let mut args = args.into_iter();
                    $(let $a: $a = arg(lua, &mut args, $n, &name)?;)*
                    let result = self($($a),*).map_err(|e| e.to_string())?;
                    lua.to_value(&result).map_err(message)
                })
            }
        }

        impl<F, Fut, R, E, $($a,)*> AsyncScriptFunction<fn($($a,)*) -> (Fut, R, E)> for F
        where
            F: Fn($($a),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<R, E>> + Send + 'static,
            R: Serialize + Send + 'static,
            E: Display + Send + 'static,
            $($a: DeserializeOwned,)*
        {
            #[allow(non_snake_case, unused_variables, unused_mut)]
            fn into_lua_function(self, lua: &Lua, name: String) -> mlua::Result<Function> {
                promise_function(lua, move |lua, args| {
                    let mut args = args.into_iter();
                    $(let $a: $a = arg(lua, &mut args, $n, &name)?;)*
                    Ok(spawn_promise(lua, self($($a),*)))
                })
            }
        }
    };
}

macro_rules! impl_lua_promise_functions {
    ($($a:ident : $n:literal),*) => {
        impl<F, $($a,)*> PromiseScriptFunction<fn($($a,)*)> for F
        where
            F: Fn($($a,)* PromiseHandle) + Send + Sync + 'static,
            $($a: DeserializeOwned,)*
        {
            #[allow(non_snake_case, unused_variables, unused_mut)]
            fn into_lua_function(self, lua: &Lua, name: String) -> mlua::Result<Function> {
                promise_function(lua, move |lua, args| {
                    let mut args = args.into_iter();
                    $(let $a: $a = arg(lua, &mut args, $n, &name)?;)*
                    let id = next_id(lua);
                    hold(lua, id, None);
                    let tx = bridge(lua).tx.clone();
                    self($($a,)* PromiseHandle { id, tx, settled: false });
                    Ok(id)
                })
            }
        }
    };
}

impl_lua_functions!();
impl_lua_functions!(A1: 1);
impl_lua_functions!(A1: 1, A2: 2);
impl_lua_functions!(A1: 1, A2: 2, A3: 3);
impl_lua_functions!(A1: 1, A2: 2, A3: 3, A4: 4);
impl_lua_promise_functions!();
impl_lua_promise_functions!(A1: 1);
impl_lua_promise_functions!(A1: 1, A2: 2);
impl_lua_promise_functions!(A1: 1, A2: 2, A3: 3);

/// The name a function has in error messages: the last part of its path.
fn short_name(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).to_string()
}

/// Defines the function `make` builds under `path` in the base every script reads through.
/// Panics (like Bevy's own registration calls) when the plugin is missing or the name is taken
/// by a built-in.
pub(crate) fn define(app: &mut App, path: &str, make: impl FnOnce(&Lua, String) -> mlua::Result<Function>) {
    let runtime = crate::runtime::require_plugin(app, path);
    let defined = make(runtime.lua(), short_name(path)).and_then(|f| runtime.define(path, f));
    if let Err(e) = defined {
        panic!("{}", crate::Error::Registration { name: path.to_string(), source: e });
    }
}
