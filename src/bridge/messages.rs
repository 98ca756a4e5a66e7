//! Bevy messages to and from scripts, and the Lua module (`lua/rust_channels.lua`) they share with
//! typed channels. A message type forwarded to scripts reaches every script that
//! subscribed (`Messages.subscribe("PlayerHit")` returns a channel), each message once, in order. A
//! message type scripts may write (`Messages.write("EnemyDied", { ... })`) converts through serde at
//! the call, so a value that does not fit raises in that script with the field path, and is
//! written as a Bevy message at the end of the step.

use std::sync::{Arc, Mutex};

use bevy::prelude::*;
use mlua::{Function, Lua, LuaSerdeExt, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::from_lua;
use crate::runtime::{Base, LuaRuntime};
use crate::sets::{LuaCoroutinesSystems, StepRun};

/// Lua functions of `lua/rust_channels.lua` the Rust side calls.
pub(crate) struct RustChannelsLua {
    /// `declare(name, rs, per, flatten) -> flush`: makes the typed channel `name` known to scripts.
    pub declare: Function,
    /// `deliver(name, value)`: hands a forwarded message to every subscriber.
    pub deliver: Function,
    /// `receive_queue(drain) -> can_receive, receive, queued, clear`: the receive queue of a
    /// channel Rust fills in batches (typed channels and streams).
    pub receive_queue: Function,
    /// `forwarded(name)`: lets scripts subscribe to `name`.
    pub forwarded: Function,
    /// `writable(name, writer)`: lets scripts write `name` through `writer(value)`.
    pub writable: Function,
}

/// Loads `lua/rust_channels.lua` on top of the channel module's `Channel`; returns the module
/// (`named` for `Channel.named`, and the `Messages` table scripts see).
pub(crate) fn install(lua: &Lua, base: &Base) -> mlua::Result<()> {
    let module: mlua::Table = lua
        .load(include_str!("../lua/rust_channels.lua"))
        .set_name("=bevy_lua_coroutines/rust_channels.lua")
        .call((base.channel().clone(), base.bad().clone(), mlua::LuaSerdeExt::array_metatable(lua)))?;
    lua.set_app_data(RustChannelsLua {
        declare: module.get("declare")?,
        deliver: module.get("deliver")?,
        receive_queue: module.get("receive_queue")?,
        forwarded: module.get("forwarded")?,
        writable: module.get("writable")?,
    });
    base.builtin_field("Channel", "named", module.get::<Value>("named")?)?;
    base.builtin("Messages", module.get::<Value>("Messages")?)
}

/// The Lua functions of the channel and message bridge.
pub(crate) fn rust_channels_lua(lua: &Lua) -> mlua::AppDataRef<'_, RustChannelsLua> {
    lua.app_data_ref::<RustChannelsLua>().expect("the channel bridge is installed with the VM")
}

/// Messages scripts wrote during the step, waiting to be written as Bevy messages.
#[derive(Resource)]
struct ScriptWritten<M: Message>(Arc<Mutex<Vec<M>>>);

/// Forwards every `M` to the scripts that subscribed to `name`.
pub(crate) fn forward_message_to_scripts<M: Message + Serialize>(app: &mut App, name: &str) {
    let rt = crate::runtime::require_plugin(app, name);
    let forwarded = rust_channels_lua(rt.lua()).forwarded.clone();
    if let Err(e) = forwarded.call::<()>(name) {
        panic!("{}", crate::Error::Registration { name: name.to_string(), source: e });
    }
    let schedule = rt.schedule();
    let name = name.to_string();
    app.add_systems(
        schedule,
        (move |mut reader: MessageReader<M>, runtime: Res<LuaRuntime>| {
            let lua = runtime.lua();
            let deliver = rust_channels_lua(lua).deliver.clone();
            for message in reader.read() {
                let delivered = lua.to_value(message).and_then(|v| deliver.call::<()>((name.as_str(), v)));
                if let Err(e) = delivered {
                    error!("bevy_lua_coroutines: could not forward a {name} message to scripts: {e}");
                }
            }
        })
        .in_set(LuaCoroutinesSystems::Sync),
    );
}

/// Lets scripts write `M` under `name`.
pub(crate) fn add_script_message<M: Message + DeserializeOwned>(app: &mut App, name: &str) {
    let rt = crate::runtime::require_plugin(app, name);
    let lua = rt.lua();
    let written: Arc<Mutex<Vec<M>>> = Arc::default();
    let buffer = written.clone();
    let writer = lua.create_function(move |lua, value: Value| {
        Ok(match from_lua::<M>(lua, value) {
            Ok(message) => {
                buffer.lock().map_err(|_| mlua::Error::runtime("message buffer poisoned"))?.push(message);
                None
            }
            Err(e) => Some(e),
        })
    });
    let registered = writer.and_then(|w| rust_channels_lua(lua).writable.call::<()>((name, w)));
    if let Err(e) = registered {
        panic!("{}", crate::Error::Registration { name: name.to_string(), source: e });
    }
    let schedule = rt.schedule();
    app.insert_resource(ScriptWritten(written)).add_systems(
        schedule,
        (|written: Res<ScriptWritten<M>>, mut writer: MessageWriter<M>| {
            let drained: Vec<M> = written.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
            writer.write_batch(drained);
        })
        .in_set(LuaCoroutinesSystems::Step)
        .after(StepRun),
    );
}
