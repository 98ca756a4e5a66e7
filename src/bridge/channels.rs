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
use mlua::{Function, Lua, LuaSerdeExt, MultiValue, Table, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::flat::{self, Tok};
use super::from_lua;
use super::leaves::{self, Leaves};
use super::messages::rust_channels_lua;

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

/// Shapes of values Rust sent, each with the Lua function that builds a batch of their tables.
#[derive(Default)]
struct Constructors {
    known: Vec<(Vec<Tok>, Function, usize)>,
}

/// Shapes kept per channel (a type whose values vary more than this goes through serde).
const MAX_SHAPES: usize = 8;

impl Constructors {
    /// The constructor for `toks`, made on first sight.
    fn get(&mut self, lua: &Lua, toks: &[Tok]) -> Option<(Function, usize)> {
        if let Some((_, f, batch)) = self.known.iter().find(|(t, _, _)| t == toks) {
            return Some((f.clone(), *batch));
        }
        if self.known.len() >= MAX_SHAPES {
            return None;
        }
        let (f, batch) = flat::constructor(lua, toks)?;
        self.known.push((toks.to_vec(), f.clone(), batch));
        Some((f, batch))
    }
}

/// The receiving side's Rust state of a typed channel: the shapes seen and the values taken from
/// the crossbeam receiver that a failed refill could not hand over (delivered first next time).
struct Receiving<T> {
    shapes: Constructors,
    held: VecDeque<T>,
}

/// Puts `run` (values taken but not delivered) and then `value` back at the front of `held`, in order.
fn hold_back<T>(held: &mut VecDeque<T>, run: &mut Vec<T>, value: Option<T>) {
    if let Some(v) = value {
        held.push_front(v);
    }
    for v in run.drain(..).rev() {
        held.push_front(v);
    }
}

/// Moves every value waiting (those held back first, then `rx`'s) into the Lua table `q` at
/// `1...` and returns how many: runs of values of one flat shape through that shape's constructor
/// (one call per batch), anything else through mlua's `to_value`.
///
/// Nothing taken is lost. When a constructor call fails (out of memory, say), its values and the
/// rest go back to the held values: the values stored before it are returned, or, with none, the
/// error is raised and the next refill tries them again. A value that does not convert on its own
/// (its `Serialize` fails) is held back the same way until it is the first of a refill; then its
/// error is raised in its place, and only that value is dropped.
fn drain_into<T: Serialize>(
    lua: &Lua,
    rx: &Receiver<T>,
    q: &Table,
    state: &Mutex<Receiving<T>>,
) -> mlua::Result<usize> {
    let mut state = state.lock().map_err(|_| mlua::Error::runtime("channel state poisoned"))?;
    let Receiving { shapes, held } = &mut *state;
    // `n` values are stored; `run` holds the values whose leaves are in `args[3..]`, of the shape
    // `current`, to be stored at `q[n + 1]...` by its constructor.
    let mut n = 0usize;
    let mut current: Option<(Vec<Tok>, Function, usize)> = None;
    let mut run: Vec<T> = Vec::new();
    let mut toks = Vec::new();
    let mut strings = flat::Strings::default();
    let mut args: Vec<Value> = vec![Value::Table(q.clone()), Value::Nil, Value::Nil];
    // Stores the run through its constructor; on failure the run stays in `run`.
    let construct = |current: &Option<(Vec<Tok>, Function, usize)>,
                     args: &mut Vec<Value>,
                     run: &mut Vec<T>,
                     n: &mut usize|
     -> mlua::Result<()> {
        let Some((_, f, _)) = current else { return Ok(()) };
        if run.is_empty() {
            return Ok(());
        }
        args[1] = Value::Integer(*n as _);
        args[2] = Value::Integer(run.len() as _);
        let r = f.call::<()>(MultiValue::from_vec(std::mem::take(args)));
        args.extend([Value::Table(q.clone()), Value::Nil, Value::Nil]);
        if r.is_ok() {
            *n += run.len();
            run.clear();
        }
        r
    };
    // Gives back what was stored, or raises `e` when nothing was (everything taken stays held).
    let fail = |n: usize, e: mlua::Error| if n > 0 { Ok(n) } else { Err(e) };
    while let Some(value) = held.pop_front().or_else(|| rx.try_recv().ok()) {
        toks.clear();
        let mark = args.len();
        let flat = flat::serialize(lua, &value, &mut toks, &mut args, &mut strings).is_ok();
        if flat && current.as_ref().is_some_and(|(t, _, _)| *t == toks) {
            run.push(value);
        } else {
            // A new shape (or none): finish the run so far, then start one or convert alone.
            let leaves: Vec<Value> = args.drain(mark..).collect();
            if let Err(e) = construct(&current, &mut args, &mut run, &mut n) {
                hold_back(held, &mut run, Some(value));
                return fail(n, e);
            }
            args.truncate(3);
            current = None;
            match flat.then(|| shapes.get(lua, &toks)).flatten() {
                Some((f, batch)) => {
                    current = Some((toks.clone(), f, batch));
                    args.extend(leaves);
                    run.push(value);
                }
                None => {
                    drop(leaves);
                    match lua.to_value(&value) {
                        Ok(v) => {
                            if let Err(e) = q.raw_set(n + 1, v) {
                                hold_back(held, &mut run, Some(value));
                                return fail(n, e);
                            }
                            n += 1;
                        }
                        // Raised in its place: at the front of a refill, or by the next one.
                        Err(e) if n == 0 => return Err(e),
                        Err(_) => {
                            hold_back(held, &mut run, Some(value));
                            return Ok(n);
                        }
                    }
                }
            }
        }
        if current.as_ref().is_some_and(|(_, _, batch)| run.len() == *batch) {
            if let Err(e) = construct(&current, &mut args, &mut run, &mut n) {
                hold_back(held, &mut run, None);
                return fail(n, e);
            }
            args.truncate(3);
        }
    }
    if let Err(e) = construct(&current, &mut args, &mut run, &mut n) {
        hold_back(held, &mut run, None);
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
    let state = Arc::new(Mutex::new(Receiving { shapes: Constructors::default(), held: VecDeque::new() }));
    let st = state.clone();
    rs.set("drain", lua.create_function(move |lua, q: Table| drain_into(lua, &r, &q, &st))?)?;
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
        lua.create_function(move |_, value: Value| {
            Ok(match from_lua::<T>(value) {
                Ok(v) => t.try_send(v).err().map(|_| String::from("the channel is full")),
                Err(e) => Some(e),
            })
        })?,
    )?;
    // Script -> Rust, the values the check accepted: `flush(buf, n)` reads the leaves of whole
    // values at `buf[1..n]`, in order. Returns how many more values the Rust end can take.
    let shape = flat::trace::<T>();
    let per = shape.as_ref().map_or(0, flat::Shape::leaves);
    let channel = name.to_string();
    let scratch = Mutex::new(Leaves::default());
    rs.set(
        "flush",
        lua.create_function(move |lua, (buf, n): (Table, usize)| {
            let mut scratch = scratch.lock().map_err(|_| mlua::Error::runtime("channel buffer poisoned"))?;
            leaves::read(lua, &buf, n, &mut scratch)?;
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
    let flatten = match &shape {
        Some(s) => Some(flat::flattener(lua, s, flat::denies_unknown_fields::<T>())?),
        None => None,
    };
    let declare = rust_channels_lua(lua).declare.clone();
    declare.call((name, rs, per, flatten))
}
