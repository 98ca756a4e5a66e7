//! [`LuaAppExt`], the one extension trait on `App` through which a game gives scripts what it
//! has: Rust functions (plain, async, promise-returning), streams, typed channels, Bevy messages
//! both ways and, with the `llm` feature, the language-model service. Each method hands its work
//! to the module named for the capability; this file only collects them in one place, the way
//! Bevy's `App` collects `add_systems` and `add_plugins`.

use bevy::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bridge::{AsyncScriptFunction, PromiseScriptFunction, ScriptFunction};
use crate::stream::StreamScriptFunction;

/// Gives scripts Rust functions, streams, typed channels and messages. Add
/// `LuaCoroutinesPlugin` first: every method panics without it, as Bevy's own registration
/// calls panic on set-up mistakes.
///
/// Names are global (`"queryDatabase"`) or in a module table (`"db.query"`, read-only for
/// scripts). Registering a name again replaces what it named, so these calls are idempotent;
/// built-in names (`print`, `task`, ...) cannot be replaced.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_lua_coroutines::prelude::*;
///
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
///     .add_lua_function("add", |a: f64, b: f64| Ok::<_, String>(a + b))
///     .add_lua_async_function("db.query", |sql: String| async move { Ok::<_, String>(vec![sql]) });
/// ```
pub trait LuaAppExt {
    /// A plain function: `Fn(A1, ..., An) -> Result<R, E>` (see [`ScriptFunction`]).
    fn add_lua_function<M>(&mut self, name: &str, f: impl ScriptFunction<M>) -> &mut Self;

    /// An async function whose call returns a `Promise` (see [`AsyncScriptFunction`]).
    fn add_lua_async_function<M>(&mut self, name: &str, f: impl AsyncScriptFunction<M>) -> &mut Self;

    /// A function whose call returns a `Promise` that Rust settles later through the
    /// [`PromiseHandle`](crate::PromiseHandle) it is given (see [`PromiseScriptFunction`]).
    fn add_lua_promise_function<M>(&mut self, name: &str, f: impl PromiseScriptFunction<M>) -> &mut Self;

    /// A function that hands scripts a stream (see [`StreamScriptFunction`]); each stream it makes
    /// buffers `capacity` chunks (at least 1) ahead of the script.
    ///
    /// ```no_run
    /// use bevy::prelude::*;
    /// use bevy::tasks::AsyncComputeTaskPool;
    /// use bevy_lua_coroutines::prelude::*;
    ///
    /// App::new()
    ///     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
    ///     .add_lua_stream_function("countTo", 8, |n: u32, mut tx: StreamSender| {
    ///         AsyncComputeTaskPool::get()
    ///             .spawn(async move {
    ///                 for i in 1..=n {
    ///                     if tx.send(i).await.is_err() {
    ///                         return; // the script stopped reading
    ///                     }
    ///                 }
    ///             })
    ///             .detach();
    ///         Ok::<_, String>(())
    ///     });
    /// ```
    fn add_lua_stream_function<M>(
        &mut self,
        name: &str,
        capacity: usize,
        f: impl StreamScriptFunction<M>,
    ) -> &mut Self;

    /// Declares the typed channel `name` for `T` with `capacity` values in each direction (at
    /// least 1), and inserts the [`LuaChannel<T>`](crate::LuaChannel) resource holding its Rust
    /// ends; scripts open it with `Channel.named(name)`. A value a script sends that does not fit
    /// `T` raises in that script (`cannot send to channel 'damage': at amount: invalid type ...`)
    /// and nothing else is lost.
    fn add_lua_channel<T>(&mut self, name: &str, capacity: usize) -> &mut Self
    where
        T: Serialize + DeserializeOwned + Send + 'static;

    /// Forwards every `M` that systems write to the scripts that subscribed to `name` with
    /// `Messages.subscribe(name)`: each subscriber receives each message once, in order, as a
    /// table (shared between subscribers: treat it as read-only). Messages written before the
    /// plugin's step in a frame arrive in that step; later ones in the next.
    fn forward_message_to_scripts<M: Message + Serialize>(&mut self, name: &str) -> &mut Self;

    /// Lets scripts write `M` with `Messages.write(name, value)`. The value converts at the call
    /// (a value that does not fit raises in the script, naming the field). The messages are
    /// written right after the plugin's step, in the order scripts wrote them: systems that run
    /// after [`LuaCoroutinesSystems::Step`](crate::LuaCoroutinesSystems::Step) in the same
    /// schedule read them in the same frame, others in the next.
    fn add_script_message<M: Message + DeserializeOwned>(&mut self, name: &str) -> &mut Self;

    /// Makes `service` the one the `llm` module (also named `llmBridge`) uses, run as `config`
    /// says, and inserts its [`AsyncExecutor`](crate::AsyncExecutor) as a resource (for
    /// diagnostics). Registering again replaces it.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use bevy::prelude::*;
    /// use bevy_lua_coroutines::prelude::*;
    ///
    /// App::new()
    ///     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
    ///     .add_llm_service(LocalLlm::new(Duration::from_millis(20)), LlmConfig::default());
    /// ```
    #[cfg(feature = "llm")]
    fn add_llm_service(&mut self, service: impl crate::LlmService, config: crate::LlmConfig) -> &mut Self;
}

impl LuaAppExt for App {
    fn add_lua_function<M>(&mut self, name: &str, f: impl ScriptFunction<M>) -> &mut Self {
        crate::bridge::define(self, name, |lua, short| f.into_lua_function(lua, short));
        self
    }

    fn add_lua_async_function<M>(&mut self, name: &str, f: impl AsyncScriptFunction<M>) -> &mut Self {
        crate::bridge::define(self, name, |lua, short| f.into_lua_function(lua, short));
        self
    }

    fn add_lua_promise_function<M>(&mut self, name: &str, f: impl PromiseScriptFunction<M>) -> &mut Self {
        crate::bridge::define(self, name, |lua, short| f.into_lua_function(lua, short));
        self
    }

    fn add_lua_stream_function<M>(
        &mut self,
        name: &str,
        capacity: usize,
        f: impl StreamScriptFunction<M>,
    ) -> &mut Self {
        crate::stream::add_stream_function(self, name, capacity, f);
        self
    }

    fn add_lua_channel<T>(&mut self, name: &str, capacity: usize) -> &mut Self
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        crate::bridge::channels::add_lua_channel::<T>(self, name, capacity);
        self
    }

    fn forward_message_to_scripts<M: Message + Serialize>(&mut self, name: &str) -> &mut Self {
        crate::bridge::messages::forward_message_to_scripts::<M>(self, name);
        self
    }

    fn add_script_message<M: Message + DeserializeOwned>(&mut self, name: &str) -> &mut Self {
        crate::bridge::messages::add_script_message::<M>(self, name);
        self
    }

    #[cfg(feature = "llm")]
    fn add_llm_service(&mut self, service: impl crate::LlmService, config: crate::LlmConfig) -> &mut Self {
        crate::llm::add_llm_service(self, service, config);
        self
    }
}
