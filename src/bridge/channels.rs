//! Typed channels between scripts and Rust systems: a game declares a channel for a Rust type
//! under a name; Rust gets crossbeam ends (usable from any thread) and scripts get the `Channel`
//! `Channel.named(name)`, whose values arrive as tables and leave as the Rust type. Both
//! directions are bounded: a full channel makes a script's `send` wait (backpressure), and a
//! Rust `try_send` to scripts fails (or `send` blocks) until scripts receive.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender};
use mlua::{Lua, LuaSerdeExt, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::from_lua;
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
    if let Err(e) = declare(runtime.lua(), name, capacity, scripts_rx, scripts_tx, closed.clone()) {
        panic!("{}", crate::Error::Registration { name: name.to_string(), source: e });
    }
    app.insert_resource(LuaChannel {
        name: name.to_string(),
        capacity,
        to_scripts,
        from_scripts,
        closed,
        _type: PhantomData,
    });
}

/// Builds the `ext` functions of the external channel `name` and declares it to scripts.
fn declare<T: Serialize + DeserializeOwned + Send + 'static>(
    lua: &Lua,
    name: &str,
    capacity: usize,
    rx: Receiver<T>,
    tx: Sender<T>,
    closed: Arc<AtomicBool>,
) -> mlua::Result<()> {
    let ext = lua.create_table()?;
    let t = tx.clone();
    ext.set("can_send", lua.create_function(move |_, ()| Ok(!t.is_full()))?)?;
    let r = rx.clone();
    ext.set("can_receive", lua.create_function(move |_, ()| Ok(!r.is_empty()))?)?;
    let r = rx.clone();
    ext.set(
        "receive",
        lua.create_function(move |lua, ()| match r.try_recv() {
            Ok(value) => lua.to_value(&value),
            Err(_) => Ok(Value::Nil),
        })?,
    )?;
    let r = rx.clone();
    ext.set("len", lua.create_function(move |_, ()| Ok(r.len()))?)?;
    ext.set("cap", lua.create_function(move |_, ()| Ok(capacity))?)?;
    let c = closed.clone();
    ext.set(
        "close",
        lua.create_function(move |_, ()| {
            c.store(true, Ordering::Relaxed);
            Ok(())
        })?,
    )?;
    ext.set("is_closed", lua.create_function(move |_, ()| Ok(closed.load(Ordering::Relaxed)))?)?;
    // `send` converts at the call: an error comes back as a message the Lua side raises.
    let raw_send = lua.create_function(move |_, value: Value| {
        Ok(match from_lua::<T>(value) {
            Ok(v) => tx.try_send(v).err().map(|_| String::from("the channel is full")),
            Err(e) => Some(e),
        })
    })?;
    let declare = rust_channels_lua(lua).declare.clone();
    declare.call::<()>((name, ext, raw_send))
}
