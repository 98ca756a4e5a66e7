//! # bevy_lua_coroutines
//!
//! Lua scripts on Bevy entities, where every script runs as coroutines that one system steps once
//! per frame. A script waits with `task.wait(2)` for two seconds of *game* time (pause and time
//! scale respected) without blocking anything.
//!
//! ## Quick start
//!
//! Add [`LuaCoroutinesPlugin`] and attach a script to an entity with [`LuaScripts`]:
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_lua_coroutines::prelude::*;
//!
//! fn setup(mut commands: Commands, assets: Res<AssetServer>) {
//!     commands.spawn((Transform::default(), LuaScripts::new(assets.load("scripts/guard.lua"))));
//! }
//!
//! App::new()
//!     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
//!     .add_systems(Startup, setup)
//!     .run();
//! ```
//!
//! and write `assets/scripts/guard.lua` as straight-line code that waits:
//!
//! ```lua
//! while true do
//!   local t = entity:get("Transform")
//!   entity:set("Transform", { translation = { x = t.translation.x + 1 } })
//!   task.wait(0.5)                      -- half a second of game time; nothing blocks
//! end
//! ```
//!
//! Failures never panic the app: they arrive as [`ScriptError`] messages. The sections below take
//! one capability each; the README has the full Lua reference, and `assets/types/` has editor
//! annotations for it (see [Editor support](#editor-support)).
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `lua54` | yes | Lua 5.4, vendored (built from source; no system Lua) |
//! | `luajit` | | LuaJIT, vendored, instead of Lua 5.4 (`--no-default-features --features luajit`) |
//! | `luau` | | Luau instead of Lua 5.4 (`--no-default-features --features luau`) |
//! | `openai` | | `OpenAiLlm`, `OpenAiConfig`: a streamed OpenAI-compatible chat-completions client (reqwest + rustls) |
//! | `window` | | Bevy's `2d` and `ui` rendering, for the windowed example `arena` only |
//!
//! The library itself builds on Bevy's lean set (`std`, `bevy_asset`, `bevy_log`,
//! `multi_threaded`): no window, no renderer, no system packages.
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
//! The plugin's fields configure it ([`LuaCoroutinesPlugin::schedule`],
//! [`LuaCoroutinesPlugin::instruction_budget`], [`LuaCoroutinesPlugin::memory_limit`],
//! [`LuaCoroutinesPlugin::stdlib`], [`LuaCoroutinesPlugin::hot_reload`]); its systems run in the
//! sets of [`LuaCoroutinesSystems`]. [`LuaRuntime`] is the VM as a resource: task counts,
//! [`SchedulerStats`], memory, and [`LuaRuntime::lua`] for direct access.
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
//! ## Rust functions, async functions and promises
//!
//! [`LuaAppExt`] registers Rust functions under a global or `module.name`: plain ones
//! ([`LuaAppExt::add_lua_function`]), async ones whose future runs on Bevy's task pools and whose
//! result settles the promise the script got ([`LuaAppExt::add_lua_async_function`]), and ones that
//! hand a [`PromiseHandle`] to a system that settles it later, from any thread
//! ([`LuaAppExt::add_lua_promise_function`]). Arguments and results convert through serde.
//!
//! ```no_run
//! # use bevy::prelude::*;
//! # use bevy_lua_coroutines::prelude::*;
//! App::new()
//!     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
//!     .add_lua_async_function("fetchScore", |player: String| async move {
//!         Ok::<_, String>(player.len() as u32 * 100) // off the main thread
//!     });
//! ```
//!
//! ```lua
//! local score = await(fetchScore("ada"))   -- the task waits; the frame goes on
//! ```
//!
//! ## Typed channels and Bevy messages
//!
//! [`LuaAppExt::add_lua_channel`] connects a Rust type to scripts as
//! `Channel.named(name)`: systems send through the [`LuaChannel`] resource's crossbeam sender and
//! scripts receive tables (and back). [`LuaAppExt::forward_message_to_scripts`] forwards Bevy messages to scripts
//! (`Messages.subscribe(name)` returns a channel) and lets scripts write messages systems read
//! (`Messages.write(name, table)`).
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
//! seed's name): `llm.generateAsync(prompt, opts)` returns a promise of the answer,
//! `llm.streamGenerate(prompt, onChunk, opts)` delivers it token by token; `opts.system` and `opts.messages` carry a system prompt and the conversation so far
//! (an [`LlmRequest`] of [`LlmMessage`]s). A game implements [`LlmService`] for its model client or
//! picks one: [`LocalLlm`] is a deterministic offline model for tests and examples, and
//! `OpenAiLlm` (feature `openai`) streams from any OpenAI-compatible server (OpenAI, Ollama,
//! llama.cpp, vLLM, LM Studio), configured by `OpenAiConfig` or from `LLM_BASE_URL`,
//! `LLM_MODEL` and `LLM_API_KEY`. Generations run on an [`AsyncExecutor`] (N workers, a bounded
//! queue, configured by [`LlmConfig`]); cancellation, timeouts and despawns drop the work in Rust
//! (for `OpenAiLlm`, they close the connection).
//!
//! ```lua
//! local history = {}
//! local answer = await(llm.generateAsync("Is the pass open?",
//!   { system = "You are a gruff innkeeper.", messages = history, maxTokens = 60 }))
//! ```
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
//! `get` and `set` also take a path into a component (`"Transform.translation.x"`,
//! `"Inventory.slots[2].count"`), compiled once and cached. `Vec2`, `Vec3`, `Vec4` and `Quat` are
//! value classes with operators and methods; every vector the world gives is one, and `set` takes
//! them or plain tables. `world.query(name, ..., { without = {...} })` iterates the entities that
//! have every named component (`world.count` counts them), `entity:parent()`,
//! `entity:children()` and `world.spawn{ parent = e }` read and build the hierarchy, and
//! `world.getResource(path)` / `world.setResource(path, value)` reach reflected resources.
//!
//! ```lua
//! local t = entity:get("Transform")
//! entity:set("Transform", { translation = { x = t.translation.x + 1 } })
//! ```
//!
//! [`LuaEntity`] is the entity value scripts see (`entity.id`, `tostring(entity)`).
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
//! No script keeps a frame from ending: a task that spent its budget is dead for good (no `pcall`,
//! coroutine, C callback, `__tostring` or `__close` keeps it running), pattern matching counts
//! against the budget, finalizers (`__gc`) are refused, one task resumes at most
//! [`LuaCoroutinesPlugin::max_resumes_per_task`] times per step (the rest is carried to the next
//! frame), and [`LuaCoroutinesPlugin::step_time_budget`] optionally bounds a step's wall time.
//! Quotas per instance ([`LuaCoroutinesPlugin::max_tasks_per_instance`],
//! [`LuaCoroutinesPlugin::memory_per_instance`]) keep one instance from starving the others.
//!
//! [`Error`] (and [`Result`]) is the error of the crate's Rust API; [`ScriptPrint`] carries each
//! line a script prints.
//!
//! ## Seeing what scripts do
//!
//! [`LuaRuntime::task_list`] lists every live task: its entity and script, what it waits on
//! ([`TaskWait`]), where it last yielded and, while tracking is on
//! ([`LuaRuntime::set_tracking`]), its resumes, frames since it ran and time spent; scripts get
//! `task.list()` and `task.info(thread)` for their own instance. [`LuaRuntime::script_costs`]
//! lists scripts costliest first, [`LuaDiagnosticsPlugin`] feeds Bevy's diagnostics, and each
//! tracked resume runs in a `tracing` span named `lua script`. None of it costs the step anything
//! until something inspects.
//!
//! ```lua
//! for _, t in ipairs(task.list()) do print(t.waitsOn, t.where, t.func) end
//! ```
//!
//! ## Editor support
//!
//! `assets/types/*.lua` are LuaLS / EmmyLua annotation files (`---@meta`) for the whole script API,
//! and `assets/.luarc.json` points an editor at them: open the `assets` folder in VS Code with the
//! Lua extension (LuaLS) or EmmyLua and scripts get completion, signatures and type checks. A
//! test keeps the annotations equal to what a real VM defines, and CI type-checks every script
//! under `assets/` with `emmylua_check`.
//!
//! ## Lua flavours
//!
//! Cargo features `lua54` (default), `luajit` and `luau` pick the VM; choose one
//! (`--no-default-features --features luajit`, adding `llm` to keep the language-model service).
//! See [Feature flags](#feature-flags).

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
mod diagnostics;
mod error;
#[cfg(test)]
mod external_channel_tests;
mod fastpath;
mod heap;
mod hook;
mod inspect;
mod instance;
mod lists;
#[cfg(feature = "llm")]
mod llm;
mod modules;
#[cfg(feature = "openai")]
mod openai;
mod pattern;
mod plugin;
mod reload;
mod runtime;
mod scheduler;
mod sets;
mod step;
mod step_memory;
mod stream;
mod time;
mod timer;
mod world;

pub use app::LuaAppExt;
pub use asset::{LuaScript, LuaScriptLoader};
pub use bridge::channels::LuaChannel;
pub use bridge::{AsyncScriptFunction, PromiseHandle, PromiseScriptFunction, ScriptFunction};
pub use components::{LuaEntity, LuaScripts};
pub use diagnostics::LuaDiagnosticsPlugin;
pub use error::{Error, Result, ScriptError, ScriptErrorKind, ScriptPrint};
pub use inspect::{ScriptCost, TaskInfo, TaskWait, fmt_duration, format_task_list};
#[cfg(feature = "llm")]
pub use llm::{AsyncExecutor, LlmConfig, LlmFuture, LlmMessage, LlmRequest, LlmRole, LlmService, LocalLlm};
pub use mlua;
#[cfg(feature = "openai")]
pub use openai::{OpenAiConfig, OpenAiLlm};
pub use plugin::{LuaCoroutinesPlugin, LuaCoroutinesSystems};
pub use runtime::{LuaRuntime, StdlibAccess};
pub use scheduler::SchedulerStats;
pub use stream::{FILE_BUFFER, FILE_CHUNK, StreamScriptFunction, StreamSender};

/// The types most apps need.
pub mod prelude {
    #[cfg(feature = "llm")]
    pub use crate::{LlmConfig, LocalLlm};
    pub use crate::{
        LuaAppExt, LuaChannel, LuaCoroutinesPlugin, LuaCoroutinesSystems, LuaDiagnosticsPlugin, LuaRuntime,
        LuaScript, LuaScripts, PromiseHandle, ScriptError, ScriptErrorKind, ScriptPrint, StdlibAccess,
        StreamSender,
    };
}
