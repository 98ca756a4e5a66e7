//! # bevy_lua_coroutines
//!
//! Lua scripts on Bevy entities, where every script runs as coroutines that one system steps once
//! per frame. A script waits with `task.wait(2)` for two seconds of *game* time (pause and time
//! scale respected) without blocking anything.
//!
//! ## Scripts and instances
//!
//! A `.lua` file is a [`LuaScript`] asset. Attach scripts to an entity with [`LuaScripts`]: each
//! becomes an *instance* with its own globals (reads fall through to a shared, read-only base), a
//! persistent `state` table and an `entity` value. The script's top-level chunk runs as the
//! instance's first task on the frame the asset is ready, and may yield.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_lua_coroutines::prelude::*;
//!
//! fn setup(mut commands: Commands, assets: Res<AssetServer>) {
//!     commands.spawn(LuaScripts::new(assets.load("scripts/guard.lua")));
//! }
//!
//! App::new()
//!     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
//!     .add_systems(Startup, setup)
//!     .run();
//! ```
//!
//! ## Tasks and time
//!
//! `task.spawn/defer/delay/wait/waitFrames/waitUntil/waitRealtime/cancel`, `sleep`, `spawn` and
//! `time.*` follow Roblox's `task` library. Waits measure the step's schedule's `Time` (virtual
//! time in `Update`), in integer nanoseconds. A sleeping task sits in a timer queue and costs nothing
//! per frame. Frame-based waits (`task.wait()`, `task.waitFrames`) count frames, paused or not;
//! time-based waits need game time to pass, so pausing `Time<Virtual>` holds them.
//!
//! Order is deterministic: frame waits resume in the order they were made, then timers by
//! deadline, then by the order they were made; work woken during the step runs in the same step.
//! With [`LuaCoroutinesPlugin::wait_for_script_loads`] on, the sync waits for scripts still
//! loading, so a script starts on the same frame run after run however long the disk takes.
//!
//! ## Promises and async/await
//!
//! `Promise` follows roblox-lua-promise v4 (constructors, combinators, cancellation, `Promise.Error`,
//! unhandled-rejection reports as [`ScriptError`]s of kind [`ScriptErrorKind::UnhandledRejection`]),
//! with `async(f)`, `await(promise)` and `asyncTry(try, catch, finally)` on top. Awaiting parks the
//! task; settling wakes it in the same step. Timers run on game time.
//!
//! ```lua
//! local ok, value = pcall(await, Promise.delay(0.5):andThenReturn("done"):timeout(1))
//! ```
//!
//! ## Channels
//!
//! `Channel` has Go's semantics: `Channel.new(capacity?)` (unbuffered by default, `math.huge`
//! unbounded), `send`, `receive`, `trySend`, `tryReceive`, `close`, `len`, `cap`, `isClosed`,
//! `iter`, `Channel.select(cases)` and `Channel.after(seconds)`. A blocked operation parks the task;
//! its partner wakes it in the same step. `select` picks among ready cases with a private
//! generator seeded by [`LuaCoroutinesPlugin::select_seed`], so a run replays exactly.
//!
//! ```lua
//! local i, v = Channel.select({ { results, "receive" }, { Channel.after(0.5), "receive" } })
//! ```
//!
//! ## Modules and hot reload
//!
//! `require("ai.util")` loads `scripts/ai/util.lua` (or `ai/util.lua`) from the assets folder,
//! through the search path [`LuaCoroutinesPlugin::module_path`]. A module runs once per VM in
//! an environment of its own, its top level cannot yield, and a cycle of requires is an error
//! naming it.
//!
//! With [`LuaCoroutinesPlugin::hot_reload`] (on in debug builds), a `notify` watcher on the
//! assets folder reloads a script when its file changes, and every script that required a
//! changed module, directly or through other modules. A reload cancels the instance's tasks, keeps
//! its `state`, runs the new top-level chunk, then calls `onReload()` if the new code defines it.
//! A version that does not load (a syntax error, a module it requires by name that is missing or
//! broken) is reported once as a [`ScriptError`] of kind [`ScriptErrorKind::Load`], and the last
//! good version keeps running. A deleted script stops until its file comes back. Changing a
//! [`LuaScript`] asset in code reloads the same way.
//!
//! ## Streams
//!
//! `Stream.from(channel | table | iterator)` makes a pull-based stream with `read`, `readLine`,
//! `iter`, `close`, lazy `map`/`filter`/`take`, and `forEach`/`reduce`/`collect` returning
//! promises. Rust hands scripts streams with [`LuaAppExt::add_lua_stream_function`]: the
//! producer pushes chunks through a [`StreamSender`] whose bounded buffer holds it back, and whose
//! `send` fails once the script stops reading. `readFileStream(path)` reads a file under the assets
//! folder in chunks, off the main thread.
//!
//! ```lua
//! for chunk in readFileStream("text/road.txt"):map(string.upper):iter() do print(chunk) end
//! ```
//!
//! ## Language-model service
//!
//! With the `llm` feature (on by default), [`LuaAppExt::add_llm_service`] gives scripts the `llm` module (also named `llmBridge`, the
//! seed's name): `llm.generateAsync(prompt, opts)`
//! returns a promise of the answer, `llm.streamGenerate(prompt, onChunk, opts)` delivers it token
//! by token. A game implements [`LlmService`] for its model client; [`LocalLlm`] is a deterministic
//! offline model for tests and examples. Generations run on an [`AsyncExecutor`] (N workers, a
//! bounded queue); cancellation, timeouts and despawns drop the work in Rust.
//!
//! ## The world
//!
//! `entity:get(name)`, `entity:set(name, table)`, `entity:has(name)` and `entity:despawn()` act on
//! any entity value; `world.spawn{ script = "path.lua", Transform = {...} }`, `world.find(name)`,
//! `world.findAll(name)` and `world.entity(id)` make and find them. Components are named by their
//! reflected type name (`"Transform"`) or full path and converted by walking their reflection, so
//! any type registered with `#[reflect(Component)]` works with no per-type glue, and vectors keep
//! named fields. `set` patches the fields it is given (on a copy, stored only if every field fits)
//! or inserts the type's reflected `Default` patched. A spawned entity's scripts start in the next
//! frame's sync. An entity value whose entity is gone raises `entity 12v3 no longer exists`, even
//! once its index is reused; the world is reachable only while the step runs scripts.
//!
//! ```lua
//! local t = entity:get("Transform")
//! entity:set("Transform", { translation = { x = t.translation.x + 1 } })
//! ```
//!
//! ## Protection and errors
//!
//! Each resume runs under an instruction budget, the VM under a memory limit, and scripts get safe
//! standard libraries unless [`LuaCoroutinesPlugin::stdlib`] grants more. No instance can change
//! what another runs: the shared base and every table in it are read-only views, whichever way a
//! script reaches them (`pairs`, `rawset`, `_G = nil`, `load`). Every file a script names
//! (`require`, `world.spawn`, `readFileStream`, hot reload) stays in the assets folder and is a
//! regular file, or the call raises `bad argument`. A failing task stops alone; the failure is
//! logged with `file:line` and traceback and written as a [`ScriptError`]. The README's
//! "Protection" section is the threat model.
//!
//! ## Lua flavours
//!
//! Cargo features `lua54` (default), `luajit` and `luau` pick the VM; choose one
//! (`--no-default-features --features luajit`, adding `llm` to keep the language-model service).

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(clippy::all)]

#[cfg(any(
    all(feature = "lua54", feature = "luajit"),
    all(feature = "lua54", feature = "luau"),
    all(feature = "luajit", feature = "luau")
))]
compile_error!("choose one Lua flavour: `lua54`, `luajit` or `luau` (use --no-default-features)");

mod app;
mod asset;
mod bridge;
mod components;
mod error;
#[cfg(test)]
mod external_channel_tests;
mod instance;
#[cfg(feature = "llm")]
mod llm;
mod modules;
mod plugin;
mod reload;
mod runtime;
mod scheduler;
mod sets;
mod stream;
mod time;
mod timer;
mod world;

pub use app::LuaAppExt;
pub use asset::{LuaScript, LuaScriptLoader};
pub use bridge::channels::LuaChannel;
pub use bridge::{AsyncScriptFunction, PromiseHandle, PromiseScriptFunction, ScriptFunction};
pub use error::{Error, Result, ScriptError, ScriptErrorKind, ScriptPrint};
pub use instance::{LuaEntity, LuaScripts};
#[cfg(feature = "llm")]
pub use llm::{AsyncExecutor, LlmConfig, LlmFuture, LlmRequest, LlmService, LocalLlm};
pub use mlua;
pub use plugin::{LuaCoroutinesPlugin, LuaCoroutinesSystems};
pub use runtime::{LuaRuntime, StdlibAccess};
pub use scheduler::SchedulerStats;
pub use stream::{FILE_BUFFER, FILE_CHUNK, StreamScriptFunction, StreamSender};

/// The types most apps need.
pub mod prelude {
    #[cfg(feature = "llm")]
    pub use crate::{LlmConfig, LocalLlm};
    pub use crate::{
        LuaAppExt, LuaChannel, LuaCoroutinesPlugin, LuaCoroutinesSystems, LuaRuntime, LuaScript, LuaScripts,
        PromiseHandle, ScriptError, ScriptErrorKind, ScriptPrint, StdlibAccess, StreamSender,
    };
}
