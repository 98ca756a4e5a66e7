//! Typed channels between scripts and Rust systems: a game declares a channel for a Rust type
//! under a name; Rust gets crossbeam ends (usable from any thread) and scripts get the `Channel`
//! `Channel.named(name)`, whose values arrive as tables and leave as the Rust type. Both
//! directions are bounded: a full channel makes a script's `send` wait (backpressure), and a
//! Rust `try_send` to scripts fails (or `send` blocks) until scripts receive.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender};
use mlua::{Function, Lua, Table, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Outgoing;
use super::flat;
use super::from_lua;
use super::leaves::{self, Leaves, Values};
use super::messages::rust_channels_lua;

/// Lua 5.4 checks what scripts send with a C function (`super::gather`); the other flavours with
/// the Lua check `flat::flattener` makes, and have no `Gather`.
#[cfg(feature = "lua54")]
use super::gather;
#[cfg(not(feature = "lua54"))]
mod gather {
    use super::{Function, Leaves, Lua, Table, flat};

    /// Never made: there is no C check on this flavour.
    pub(super) enum Gather {}

    impl Gather {
        pub(super) fn take(&self, _: &mut Leaves) -> mlua::Result<()> {
            match *self {}
        }
    }

    /// Never made either.
    pub(super) struct Gathered {
        pub flatten: Function,
        pub put: Function,
        pub gather: std::sync::Arc<Gather>,
    }

    /// No C check: scripts' values go through the Lua check.
    pub(super) fn function(_: &Lua, _: &flat::Shape, _: bool, _: &Table) -> mlua::Result<Option<Gathered>> {
        Ok(None)
    }
}

/// The Rust ends of the typed channel declared for `T` (a resource, one per type).
#[derive(Resource)]
pub struct LuaChannel<T: Send + 'static> {
    name: String,
    capacity: usize,
    to_scripts: Sender<T>,
    from_scripts: Receiver<T>,
    closed: Arc<AtomicBool>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Send + 'static> LuaChannel<T> {
    /// Sends values to scripts (they `receive` them). Bounded by the channel's capacity:
    /// `try_send` fails when scripts fall behind, `send` blocks (from another thread).
    pub fn sender(&self) -> Sender<T> {
        self.to_scripts.clone()
    }

    /// Receives what scripts `send`.
    pub fn receiver(&self) -> Receiver<T> {
        self.from_scripts.clone()
    }

    /// The name scripts use (`Channel.named(name)`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many values each direction holds before it makes the sender wait.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a script closed the channel.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Declares the channel `name` for `T` to scripts and inserts its [`LuaChannel<T>`].
pub(crate) fn add_lua_channel<T>(app: &mut App, name: &str, capacity: usize)
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let runtime = crate::runtime::require_plugin(app, name);
    let capacity = capacity.max(1);
    let (to_scripts, scripts_rx) = crossbeam_channel::bounded::<T>(capacity);
    let (scripts_tx, from_scripts) = crossbeam_channel::bounded::<T>(capacity);
    let closed = Arc::new(AtomicBool::new(false));
    let schedule = runtime.schedule();
    let flush = match declare(runtime.lua(), name, capacity, scripts_rx, scripts_tx, closed.clone()) {
        Ok(flush) => flush,
        Err(e) => panic!("{}", crate::Error::Registration { name: name.to_string(), source: e }),
    };
    if !app.world().contains_resource::<ChannelFlushes>() {
        app.init_resource::<ChannelFlushes>().add_systems(
            schedule,
            flush_script_sends.in_set(crate::sets::LuaCoroutinesSystems::Step).after(crate::sets::StepRun),
        );
    }
    app.world_mut().resource_mut::<ChannelFlushes>().0.push(flush);
    app.insert_resource(LuaChannel {
        name: name.to_string(),
        capacity,
        to_scripts,
        from_scripts,
        closed,
        _type: PhantomData,
    });
}

/// The step flushes the values scripts sent into the Rust end of each typed channel (the Lua
/// `flush` of each, in declaration order) right after it runs.
#[derive(Resource, Default)]
struct ChannelFlushes(Vec<Function>);

/// Runs after the step: hands Rust what scripts sent during it.
fn flush_script_sends(flushes: Res<ChannelFlushes>) {
    for flush in &flushes.0 {
        if let Err(e) = flush.call::<()>(()) {
            error!("bevy_lua_coroutines: could not flush a typed channel: {e}");
        }
    }
}

/// The receiving side's Rust state of a typed channel: the values taken from the crossbeam
/// receiver that a failed refill could not hand over (delivered first next time), and, kept for
/// reuse, the values of the batch being flattened and their flat form.
struct Receiving<T> {
    held: VecDeque<T>,
    run: Vec<T>,
    values: Values,
}

/// Most values one protected call builds (bounds the flat form kept between refills).
const WRITE_BATCH: usize = 1024;

/// Puts `run` (values taken but not delivered) and then `value` back at the front of `held`, in order.
fn hold_back<T>(held: &mut VecDeque<T>, run: &mut Vec<T>, value: Option<T>) {
    if let Some(v) = value {
        held.push_front(v);
    }
    for v in run.drain(..).rev() {
        held.push_front(v);
    }
}

/// Moves every value waiting (those in `held` first, then what `next` gives) into the Lua table
/// `q` at `1...` and returns how many: runs of flat values built by raw C API writes in one
/// protected call per [`WRITE_BATCH`], anything else through [`Outgoing::to_lua`]. `run` and
/// `values` are scratch space, kept by the caller for reuse.
///
/// Nothing taken is lost. When building fails (out of memory, say), the values not stored and the
/// rest go back to `held`: the values stored before are returned, or, with none, the error is
/// raised and the next refill tries them again. A value that does not convert on its own (its
/// `Serialize` fails) is held back the same way until it is the first of a refill; then its error
/// is raised in its place, and only that value is dropped.
pub(crate) fn drain_into<T: Outgoing>(
    lua: &Lua,
    mut next: impl FnMut() -> Option<T>,
    q: &Table,
    held: &mut VecDeque<T>,
    run: &mut Vec<T>,
    values: &mut Values,
) -> mlua::Result<usize> {
    // `n` values are stored; `run` holds the values flattened in `values`, to be stored at
    // `q[n + 1]...`.
    let mut n = 0usize;
    run.clear();
    values.clear();
    // Stores the run; on failure the values not stored stay in `run`.
    let write = |run: &mut Vec<T>, values: &mut Values, n: &mut usize| -> mlua::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let (stored, r) = leaves::write(lua, q, *n, values);
        *n += stored;
        run.drain(..stored);
        values.clear();
        r
    };
    // Gives back what was stored, or raises `e` when nothing was (everything taken stays held).
    let fail = |n: usize, e: mlua::Error| if n > 0 { Ok(n) } else { Err(e) };
    while let Some(value) = held.pop_front().or_else(&mut next) {
        if value.flatten(lua, values) {
            run.push(value);
            if run.len() == WRITE_BATCH
                && let Err(e) = write(run, values, &mut n)
            {
                hold_back(held, run, None);
                return fail(n, e);
            }
            continue;
        }
        // Not flat: store the run so far, then convert this one alone.
        if let Err(e) = write(run, values, &mut n) {
            hold_back(held, run, Some(value));
            return fail(n, e);
        }
        match value.to_lua(lua) {
            Ok(v) => {
                if let Err(e) = q.raw_set(n + 1, v) {
                    hold_back(held, run, Some(value));
                    return fail(n, e);
                }
                n += 1;
            }
            // Raised in its place: at the front of a refill, or by the next one.
            Err(e) if n == 0 => return Err(e),
            Err(_) => {
                hold_back(held, run, Some(value));
                return Ok(n);
            }
        }
    }
    if let Err(e) = write(run, values, &mut n) {
        hold_back(held, run, None);
        return fail(n, e);
    }
    Ok(n)
}

/// Builds the Rust functions of the external channel `name` and declares it to scripts; returns the
/// Lua function that hands Rust what scripts sent.
fn declare<T: Serialize + DeserializeOwned + Send + 'static>(
    lua: &Lua,
    name: &str,
    capacity: usize,
    rx: Receiver<T>,
    tx: Sender<T>,
    closed: Arc<AtomicBool>,
) -> mlua::Result<Function> {
    let rs = lua.create_table()?;
    let r = rx.clone();
    let state =
        Arc::new(Mutex::new(Receiving { held: VecDeque::new(), run: Vec::new(), values: Values::default() }));
    let st = state.clone();
    rs.set(
        "drain",
        lua.create_function(move |lua, q: Table| {
            let mut state = st.lock().map_err(|_| mlua::Error::runtime("channel state poisoned"))?;
            let Receiving { held, run, values } = &mut *state;
            drain_into(lua, || r.try_recv().ok(), &q, held, run, values)
        })?,
    )?;
    rs.set(
        "len",
        lua.create_function(move |_, ()| Ok(rx.len() + state.lock().map_or(0, |s| s.held.len())))?,
    )?;
    rs.set("cap", lua.create_function(move |_, ()| Ok(capacity))?)?;
    rs.set(
        "close",
        lua.create_function(move |_, ()| {
            closed.store(true, Ordering::Relaxed);
            Ok(())
        })?,
    )?;
    // Script -> Rust, a value the Lua check could not prove: converts at the call, and an error
    // comes back as a message the Lua side raises.
    let t = tx.clone();
    rs.set(
        "send",
        lua.create_function(move |lua, value: Value| {
            Ok(match from_lua::<T>(lua, value) {
                Ok(v) => t.try_send(v).err().map(|_| String::from("the channel is full")),
                Err(e) => Some(e),
            })
        })?,
    )?;
    // Script -> Rust, the values the check accepted: `flush(buf, n)` reads the leaves of whole
    // values at `buf[1..n]` (or, with Lua 5.4's C check, the leaves it gathered), in order.
    // Returns how many more values the Rust end can take.
    let shape = flat::trace::<T>();
    let per = shape.as_ref().map_or(0, flat::Shape::leaves);
    let count_keys = shape.is_some() && flat::denies_unknown_fields::<T>();
    // The send side's counts (`lua/rust_channels.lua` names the slots), shared with a C `put`.
    let acct = lua.create_table_with_capacity(3, 0)?;
    rs.set("acct", &acct)?;
    let gathered = match &shape {
        Some(s) => gather::function(lua, s, count_keys, &acct)?,
        None => None,
    };
    let gather = gathered.as_ref().map(|g| g.gather.clone());
    let channel = name.to_string();
    let scratch = Mutex::new(Leaves::default());
    rs.set(
        "flush",
        lua.create_function(move |lua, (buf, n): (Table, usize)| {
            let mut scratch = scratch.lock().map_err(|_| mlua::Error::runtime("channel buffer poisoned"))?;
            match &gather {
                Some(gather) => gather.take(&mut scratch)?,
                None => leaves::read(lua, &buf, n, &mut scratch)?,
            }
            for one in scratch.leaves.chunks(per.max(1)) {
                match flat::from_leaves::<T>(one, &scratch.bytes) {
                    Ok(v) => {
                        if tx.try_send(v).is_err() {
                            error!("bevy_lua_coroutines: channel '{channel}' overflowed; a value was lost");
                        }
                    }
                    Err(_) => {
                        error!("bevy_lua_coroutines: a value sent to channel '{channel}' did not convert")
                    }
                }
            }
            Ok(capacity.saturating_sub(tx.len()))
        })?,
    )?;
    let flatten = match (gathered, &shape) {
        (Some(g), _) => {
            rs.set("put", g.put)?;
            Some(g.flatten)
        }
        (None, Some(s)) => Some(flat::flattener(lua, s, count_keys)?),
        (None, None) => None,
    };
    let declare = rust_channels_lua(lua).declare.clone();
    declare.call((name, rs, per, flatten))
}
