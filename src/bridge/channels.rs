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
use crate::runtime::LuaRuntime;

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

/// Declares typed channels. Add `LuaCoroutinesPlugin` first.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_lua_coroutines::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Damage {
///     target: u64,
///     amount: f32,
/// }
///
/// fn hurt(damage: Res<LuaChannel<Damage>>) {
///     // Arrives in Lua as `{ target = 7, amount = 12.5 }` on `Channel.named("damage")`.
///     let _ = damage.sender().try_send(Damage { target: 7, amount: 12.5 });
/// }
///
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
///     .add_lua_channel::<Damage>("damage", 16)
///     .add_systems(Update, hurt);
/// ```
pub trait LuaChannelAppExt {
    /// Declares the channel `name` for `T` with `capacity` values in each direction (at least 1),
    /// and inserts the [`LuaChannel<T>`] resource holding its Rust ends. A value a script sends
    /// that does not fit `T` raises in that script (`cannot send to channel 'damage': at amount:
    /// invalid type ...`) and nothing else is lost.
    fn add_lua_channel<T>(&mut self, name: &str, capacity: usize) -> &mut Self
    where
        T: Serialize + DeserializeOwned + Send + 'static;
}

impl LuaChannelAppExt for App {
    fn add_lua_channel<T>(&mut self, name: &str, capacity: usize) -> &mut Self
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let Some(runtime) = self.world().get_resource::<LuaRuntime>() else {
            panic!("add LuaCoroutinesPlugin before declaring the channel {name:?}");
        };
        let capacity = capacity.max(1);
        let (to_scripts, scripts_rx) = crossbeam_channel::bounded::<T>(capacity);
        let (scripts_tx, from_scripts) = crossbeam_channel::bounded::<T>(capacity);
        let closed = Arc::new(AtomicBool::new(false));
        if let Err(e) = declare(runtime.lua(), name, capacity, scripts_rx, scripts_tx, closed.clone()) {
            panic!("could not declare the channel {name:?}: {e}");
        }
        self.insert_resource(LuaChannel {
            name: name.to_string(),
            capacity,
            to_scripts,
            from_scripts,
            closed,
            _type: PhantomData,
        })
    }
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
