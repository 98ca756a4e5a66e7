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
use crate::runtime::LuaRuntime;
use crate::sets::{LuaCoroutinesSystems, StepRun};

/// Lua functions of `lua/rust_channels.lua` the Rust side calls.
pub(crate) struct RustChannelsLua {
    /// `declare(name, rs, per, flatten) -> flush`: makes the typed channel `name` known to scripts.
    pub declare: Function,
    /// `deliver(name, value)`: hands a forwarded message to every subscriber.
    pub deliver: Function,
    /// `forwarded(name)`: lets scripts subscribe to `name`.
    pub forwarded: Function,
    /// `writable(name, writer)`: lets scripts write `name` through `writer(value)`.
    pub writable: Function,
}

/// Loads `lua/rust_channels.lua` on top of the channel module's `Channel`; returns the module
/// (`named` for `Channel.named`, and the `Messages` table scripts see).
pub(crate) fn install(lua: &Lua, channel: &mlua::Table, bad: &Function) -> mlua::Result<mlua::Table> {
    let module: mlua::Table = lua
        .load(include_str!("../lua/rust_channels.lua"))
        .set_name("=bevy_lua_coroutines/rust_channels.lua")
        .call((channel.clone(), bad.clone()))?;
    lua.set_app_data(RustChannelsLua {
        declare: module.get("declare")?,
        deliver: module.get("deliver")?,
        forwarded: module.get("forwarded")?,
        writable: module.get("writable")?,
    });
    Ok(module)
}

/// The Lua functions of the channel and message bridge.
pub(crate) fn rust_channels_lua(lua: &Lua) -> mlua::AppDataRef<'_, RustChannelsLua> {
    lua.app_data_ref::<RustChannelsLua>().expect("the channel bridge is installed with the VM")
}

/// Messages scripts wrote during the step, waiting to be written as Bevy messages.
#[derive(Resource)]
struct ScriptWritten<M: Message>(Arc<Mutex<Vec<M>>>);

/// Connects Bevy messages and scripts. Add `LuaCoroutinesPlugin` first. Each call is idempotent
/// for a given name and type.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_lua_coroutines::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// /// Systems write it; scripts read it with `Messages.subscribe("PlayerHit")`.
/// #[derive(Message, Serialize)]
/// struct PlayerHit {
///     damage: u32,
/// }
///
/// /// Scripts write it with `Messages.write("EnemyDied", { id = 3 })`; systems read it.
/// #[derive(Message, Deserialize)]
/// struct EnemyDied {
///     id: u32,
/// }
///
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
///     .add_message::<PlayerHit>()
///     .forward_message_to_scripts::<PlayerHit>("PlayerHit")
///     .add_message::<EnemyDied>()
///     .add_script_message::<EnemyDied>("EnemyDied");
/// ```
pub trait LuaMessagesAppExt {
    /// Forwards every `M` that systems write to the scripts that subscribed to `name` with
    /// `Messages.subscribe(name)`: each subscriber receives each message once, in order, as a
    /// table (shared between subscribers: treat it as read-only). Messages written before the
    /// plugin's step in a frame arrive in that step; later ones in the next.
    fn forward_message_to_scripts<M: Message + Serialize>(&mut self, name: &str) -> &mut Self;

    /// Lets scripts write `M` with `Messages.write(name, value)`. The value converts at the call (a
    /// value that does not fit raises in the script, naming the field). The messages are written
    /// right after the plugin's step, in the order scripts wrote them: systems that run after
    /// [`LuaCoroutinesSystems::Step`] in the same schedule read them in the same frame, others in
    /// the next.
    fn add_script_message<M: Message + DeserializeOwned>(&mut self, name: &str) -> &mut Self;
}

impl LuaMessagesAppExt for App {
    fn forward_message_to_scripts<M: Message + Serialize>(&mut self, name: &str) -> &mut Self {
        let Some(rt) = self.world().get_resource::<LuaRuntime>() else {
            panic!("add LuaCoroutinesPlugin before forwarding the message {name:?} to scripts");
        };
        let forwarded = rust_channels_lua(rt.lua()).forwarded.clone();
        if let Err(e) = forwarded.call::<()>(name) {
            panic!("could not forward the message {name:?} to scripts: {e}");
        }
        let schedule = rt.schedule();
        let name = name.to_string();
        self.add_systems(
            schedule,
            (move |mut reader: MessageReader<M>, runtime: Res<LuaRuntime>| {
                let lua = runtime.lua();
                let deliver = rust_channels_lua(lua).deliver.clone();
                for message in reader.read() {
                    let delivered =
                        lua.to_value(message).and_then(|v| deliver.call::<()>((name.as_str(), v)));
                    if let Err(e) = delivered {
                        error!("bevy_lua_coroutines: could not forward a {name} message to scripts: {e}");
                    }
                }
            })
            .in_set(LuaCoroutinesSystems::Sync),
        );
        self
    }

    fn add_script_message<M: Message + DeserializeOwned>(&mut self, name: &str) -> &mut Self {
        let Some(rt) = self.world().get_resource::<LuaRuntime>() else {
            panic!("add LuaCoroutinesPlugin before letting scripts write the message {name:?}");
        };
        let lua = rt.lua();
        let written: Arc<Mutex<Vec<M>>> = Arc::default();
        let buffer = written.clone();
        let writer = lua.create_function(move |_, value: Value| {
            Ok(match from_lua::<M>(value) {
                Ok(message) => {
                    buffer.lock().map_err(|_| mlua::Error::runtime("message buffer poisoned"))?.push(message);
                    None
                }
                Err(e) => Some(e),
            })
        });
        let registered = writer.and_then(|w| rust_channels_lua(lua).writable.call::<()>((name, w)));
        if let Err(e) = registered {
            panic!("could not let scripts write the message {name:?}: {e}");
        }
        let schedule = rt.schedule();
        self.insert_resource(ScriptWritten(written)).add_systems(
            schedule,
            (|written: Res<ScriptWritten<M>>, mut writer: MessageWriter<M>| {
                let drained: Vec<M> =
                    written.0.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
                writer.write_batch(drained);
            })
            .in_set(LuaCoroutinesSystems::Step)
            .after(StepRun),
        );
        self
    }
}
