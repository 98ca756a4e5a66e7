//! The Lua VM: its creation, protection (instruction budget, memory limit, safe standard
//! libraries, the read-only base) and the Rust half of the task API.
//!
//! This is the VM core: it loads the task API, promises and channels, and names no feature built
//! on them. The extensions (the bridge, the world, messages and typed channels, modules, streams)
//! come as an [`Extensions`] list the plugin fills; each installer builds its Lua API into the
//! [`Base`] (built-in names, classes, definitions made once the base is sealed) and hooks its
//! per-step and instance-cancel work into the scheduler through it.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bevy::prelude::*;
use mlua::{Function, Lua, LuaOptions, StdLib, Table, Thread, Value};

use crate::error::ScriptErrorKind;
use crate::scheduler::{self, Budget, InstanceId, LIBRARY_SOURCE, Refs, Scheduler, StepHooks, kind, sched};

/// Which standard libraries scripts get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdlibAccess {
    /// `string`, `table`, `math`, `utf8`, `coroutine`, a time-only `os` and `debug.traceback`;
    /// no `io`, `package`, `dofile`, `loadfile`, binary chunks, `os.execute` or the rest of `debug`.
    #[default]
    Safe,
    /// Everything the Lua flavour has, `io`, `os`, `debug` and `package` included.
    All,
}

/// What the VM is created with.
#[derive(Clone, Debug)]
pub(crate) struct VmConfig {
    pub stdlib: StdlibAccess,
    pub instruction_budget: Option<u64>,
    /// Count every instruction of every resume (the hook always on) instead of only those of a
    /// resume that ran past [`WATCH_SLICE`].
    pub exact_instruction_count: bool,
    pub memory_limit: Option<usize>,
    pub print_to_stdout: bool,
    /// Seeds the generator `Channel.select` picks among ready cases with.
    pub select_seed: u64,
    /// Resumes of one task in one step before further wakes are carried to the next step.
    pub max_resumes_per_task: u32,
    /// Wall time after which the step carries what is still due to the next step.
    pub step_time_budget: Option<std::time::Duration>,
    /// Live tasks one instance may have.
    pub max_tasks_per_instance: Option<usize>,
    /// Bytes one instance may grow the VM by (counted around its resumes).
    pub memory_per_instance: Option<usize>,
}

/// Lua functions of `lua/channel.lua` the Rust side calls.
pub(crate) struct ChannelLua {
    /// `poll()`: retries every operation parked on an external (Rust-backed) channel, in the order
    /// they parked, waking those that can proceed. Called once at the start of every step.
    pub poll: Function,
    /// `Channel._external(ext, name)`: makes a Rust-backed channel (hidden from scripts).
    pub external: Function,
}

/// Installs one extension in a new VM: its Lua API (through the [`Base`]) and its part in the
/// step (through [`Base::before_step`] and [`Base::on_cancel_instance`]).
pub(crate) type Installer = Box<dyn Fn(&Lua, &Base) -> mlua::Result<()> + Send + Sync>;

/// The extensions a new VM is made with, in order: the plugin fills it (the bridge, the world,
/// messages and typed channels, modules, streams), so the VM core names none of them.
#[derive(Default)]
pub(crate) struct Extensions(Vec<Installer>);

impl Extensions {
    /// Adds an extension, installed after those added before it.
    pub(crate) fn add(&mut self, install: impl Fn(&Lua, &Base) -> mlua::Result<()> + Send + Sync + 'static) {
        self.0.push(Box::new(install));
    }
}

/// What an extension installs itself on, while the VM is made: the core's Lua modules to build
/// on, and the shared base to add to, before it is sealed.
pub(crate) struct Base<'a> {
    lua: &'a Lua,
    promise: Table,
    channel: Table,
    is_channel: Function,
    bad: Function,
    /// Built-in names the extensions add (`require`, `Stream`, `Messages`).
    builtins: Table,
    /// Fields the extensions add to the core's built-in tables, by table (`Channel.named`).
    fields: Table,
    /// Classes (`Vec3`): built in as they are, since `getmetatable(v) == Vec3` names them.
    classes: Table,
    /// Names defined once the base is made, as a game's own registrations are.
    later: std::cell::RefCell<Vec<(String, Value)>>,
}

impl Base<'_> {
    /// The exports of `lua/promise.lua` (`Promise`, `async`, `await`, `callable`, ...).
    pub(crate) fn promise(&self) -> &Table {
        &self.promise
    }

    /// `Channel`, the channel module's table scripts see.
    pub(crate) fn channel(&self) -> &Table {
        &self.channel
    }

    /// `is_channel(x)` from `lua/channel.lua`: whether `x` is a channel it made.
    pub(crate) fn is_channel(&self) -> &Function {
        &self.is_channel
    }

    /// `bad(n, fname, message, level)` from `lua/task.lua`: raises a `bad argument` error.
    pub(crate) fn bad(&self) -> &Function {
        &self.bad
    }

    /// Adds the built-in global `name` (scripts cannot replace it, nor a game define it).
    pub(crate) fn builtin(&self, name: &str, value: impl mlua::IntoLua) -> mlua::Result<()> {
        self.builtins.raw_set(name, value)
    }

    /// Adds `name` to the core's built-in table `table` (`Channel`).
    pub(crate) fn builtin_field(
        &self,
        table: &str,
        name: &str,
        value: impl mlua::IntoLua,
    ) -> mlua::Result<()> {
        let fields = match self.fields.raw_get::<Option<Table>>(table)? {
            Some(fields) => fields,
            None => {
                let fields = self.lua.create_table()?;
                self.fields.raw_set(table, &fields)?;
                fields
            }
        };
        fields.raw_set(name, value)
    }

    /// Adds the built-in class `name`: a table with no raw fields and a hidden metatable, which
    /// the base holds as it is (not as a read-only copy), so it stays equal to itself.
    pub(crate) fn builtin_class(&self, name: &str, class: Table) -> mlua::Result<()> {
        self.classes.raw_set(name, class)
    }

    /// Defines `path` (`"name"` or `"module.name"`) once the base is made, as
    /// [`LuaRuntime::define`] does for a game's registrations (so a game may add to its module).
    pub(crate) fn define(&self, path: &str, value: impl mlua::IntoLua) -> mlua::Result<()> {
        let value = mlua::IntoLua::into_lua(value, self.lua)?;
        self.later.borrow_mut().push((path.to_string(), value));
        Ok(())
    }

    /// Runs `hook` at the start of every step, before timers are queued (`what` names it in the
    /// log when it fails).
    pub(crate) fn before_step(&self, what: &'static str, hook: scheduler::StepHook) {
        if let Some(mut hooks) = self.lua.app_data_mut::<StepHooks>() {
            hooks.before_step.push((what, hook));
        }
    }

    /// Runs `hook` whenever every task of an instance is cancelled.
    pub(crate) fn on_cancel_instance(&self, hook: fn(&Lua, InstanceId)) {
        if let Some(mut hooks) = self.lua.app_data_mut::<StepHooks>() {
            hooks.cancel_instance.push(hook);
        }
    }
}

/// `new_env(nil)` from `lua/sandbox.lua`, in the VM's app data: a fresh environment over the
/// shared base with no `entity` or `state` (a module's).
pub(crate) struct EnvFactory(pub Function);

/// A fresh environment over the shared base, with no `entity` or `state`; `None` until the
/// sandbox is made.
pub(crate) fn new_env(lua: &Lua) -> Option<Function> {
    lua.app_data_ref::<EnvFactory>().map(|f| f.0.clone())
}

/// The runtime, for a registration of `name`; panics when `LuaCoroutinesPlugin` was not added
/// first (registration is set-up code, as Bevy's own `add_systems` panics on a bad schedule).
pub(crate) fn require_plugin<'a>(app: &'a App, name: &str) -> &'a LuaRuntime {
    match app.world().get_resource::<LuaRuntime>() {
        Some(runtime) => runtime,
        None => panic!("add LuaCoroutinesPlugin before giving scripts {name:?}"),
    }
}

/// Script instances not started yet, kept up to date by the instance layer and the plugin's
/// observer for [`LuaRuntime::pending_instances`].
#[derive(Default)]
pub(crate) struct PendingInstances {
    /// Instances attached but waiting for their asset to load.
    pub waiting: std::sync::atomic::AtomicUsize,
    /// Entities given `LuaScripts` since the last sync (their instances are made there).
    pub queued: std::sync::atomic::AtomicUsize,
}

/// The Lua VM and what the plugin keeps beside it. One per app.
#[derive(Resource)]
pub struct LuaRuntime {
    lua: Lua,
    /// `new_env(entity, state) -> env`, from `lua/sandbox.lua`.
    pub(crate) new_env: Function,
    /// `on_reload(env) -> function`, from `lua/sandbox.lua`: the task that calls `onReload()`.
    pub(crate) on_reload: Function,
    /// `define(path, value)`, from `lua/sandbox.lua`: adds a name to the shared base.
    define: Function,
    /// The scheduler state shared with Lua (clocks, current task).
    state: Table,
    /// Script instances not started yet, counted by the instance layer.
    pending: Arc<PendingInstances>,
    /// Lua 5.1's `setfenv` (LuaJIT, Luau), which binds a compiled chunk to an instance.
    pub(crate) setfenv: Option<Function>,
    /// The schedule the step runs in.
    schedule: bevy::ecs::intern::Interned<dyn bevy::ecs::schedule::ScheduleLabel>,
    /// Set once `print` found stdout closed; it writes there no more.
    stdout_closed: Arc<AtomicBool>,
}

impl Drop for LuaRuntime {
    /// Hands the VM back to mlua's allocator (see `heap`) and, under Luau, takes the budget's
    /// interrupt away (see `hook`), so the VM outlives the runtime safely.
    fn drop(&mut self) {
        crate::heap::uninstall(&self.lua);
        #[cfg(feature = "luau")]
        crate::hook::remove_interrupt(&self.lua);
    }
}

impl LuaRuntime {
    /// The VM, for registering functions and values scripts can use.
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Tasks the scheduler holds (ready or waiting). Zero means every script has finished.
    pub fn live_tasks(&self) -> usize {
        sched(&self.lua).live_tasks()
    }

    /// Whether `print` found stdout closed (its reader went away, as in `run game.lua | head`)
    /// and stopped writing there. Scripts go on as before, and every line is still sent as a
    /// [`ScriptPrint`](crate::ScriptPrint) message.
    pub fn stdout_closed(&self) -> bool {
        self.stdout_closed.load(Ordering::Relaxed)
    }

    /// Script instances still waiting to start: attached but waiting for their asset to load,
    /// or on an entity given scripts since the last sync (`world.spawn{ script = ... }` in this
    /// frame's step), whose instances the next frame's sync makes.
    pub fn pending_instances(&self) -> usize {
        let pending = &self.pending;
        pending.waiting.load(Ordering::Relaxed) + pending.queued.load(Ordering::Relaxed)
    }

    /// The counts [`pending_instances`](Self::pending_instances) adds up, which the layers above
    /// keep (the VM core makes no instances).
    pub(crate) fn pending(&self) -> &Arc<PendingInstances> {
        &self.pending
    }

    /// Defines `path` (`"name"` or `"module.name"`) in the base every script reads through.
    pub(crate) fn define(&self, path: &str, value: impl mlua::IntoLua) -> mlua::Result<()> {
        self.define.call::<()>((path, value))
    }

    /// The schedule the step runs in (systems the crate adds for registrations run there too).
    pub(crate) fn schedule(&self) -> bevy::ecs::intern::Interned<dyn bevy::ecs::schedule::ScheduleLabel> {
        self.schedule
    }

    /// Counters for diagnostics.
    pub fn stats(&self) -> scheduler::SchedulerStats {
        scheduler::SchedulerStats { resumed: scheduler::current_task(&self.lua).1 }
    }

    /// Bytes of memory the VM uses.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// Sets the VM's memory limit in bytes (0: none; the plugin's
    /// [`memory_limit`](crate::LuaCoroutinesPlugin::memory_limit) sets the first one) and returns
    /// the limit it replaces. Use this rather than `lua().set_memory_limit`: on Lua 5.4 the VM
    /// allocates through the crate's allocator, whose limit mlua cannot reach (it returns
    /// `MemoryControlNotAvailable` there).
    pub fn set_memory_limit(&self, limit: usize) -> crate::Result<usize> {
        Ok(crate::heap::set_memory_limit(&self.lua, limit)?)
    }

    /// Makes the VM: its core (sandbox, budget, task API, promises, channels), then each of
    /// `extensions` in the order they were added, then the shared base scripts read through.
    pub(crate) fn new(
        config: &VmConfig,
        schedule: bevy::ecs::intern::Interned<dyn bevy::ecs::schedule::ScheduleLabel>,
        extensions: &Extensions,
    ) -> crate::Result<Self> {
        // SAFETY: `debug` is opened only so `debug.traceback` can be kept; in safe mode the rest of
        // `debug` is removed before any script runs (see `lua/sandbox.lua`).
        #[allow(unsafe_code)]
        let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL_SAFE | StdLib::DEBUG, LuaOptions::default()) };
        let mut scheduler = Scheduler::default();
        scheduler.task_quota = config.max_tasks_per_instance;
        lua.set_app_data(scheduler);
        let budget = Arc::new(Budget::default());
        let watch = install_budget(&lua, &budget, config.instruction_budget, config.exact_instruction_count)?;

        let globals = lua.globals();
        let setfenv: Option<Function> = globals.get("setfenv")?;
        let debug: Option<Table> = globals.get("debug")?;
        let traceback: Function = match &debug {
            Some(d) => d.get("traceback")?,
            None => lua.create_function(|_, ()| Ok(String::new()))?,
        };
        let state = lua.create_table()?;
        state.raw_set("frame", 0)?;
        state.raw_set("nanos", 0.0)?;
        // Written without allocating when a budget runs out (`hook::set_spent_flag`): both
        // fields exist from the start.
        state.raw_set("spent", false)?;
        state.raw_set("spent_task", 0)?;

        let core = lua.create_table()?;
        core.set("REQ", Value::LightUserData(scheduler::req()))?;
        core.set("ARGS", Value::LightUserData(scheduler::args_marker()))?;
        core.set("WAIT_TIME", kind::WAIT_TIME)?;
        core.set("WAIT_FRAMES", kind::WAIT_FRAMES)?;
        core.set("WAIT_REAL", kind::WAIT_REAL)?;
        core.set("PARK", kind::PARK)?;
        core.set(
            "fast",
            crate::fastpath::functions(
                &lua,
                scheduler::req().0,
                kind::WAIT_TIME,
                kind::WAIT_FRAMES,
                kind::PARK,
                scheduler::args_marker().0,
                watch.as_ref(),
            )?,
        )?;
        core.set("GAME", kind::GAME)?;
        core.set("REAL", kind::REAL)?;
        core.set("state", &state)?;
        lua.set_named_registry_value(crate::hook::STATE_KEY.to_str().expect("an ASCII name"), &state)?;
        core.set("traceback", traceback.clone())?;
        core.set("debug", globals.get::<Value>("debug")?)?;
        if cfg!(not(any(feature = "luajit", feature = "luau")))
            && config.instruction_budget.is_some_and(|n| n > 0)
        {
            // Threads mlua makes carry the budget hook (in the default mode, once the watchdog arms
            // them); the main thread does not (see `install_budget`).
            core.set("thread", lua.create_function(|lua, f: Function| script_thread(lua, f))?)?;
        }
        #[cfg(not(any(feature = "luajit", feature = "luau")))]
        {
            if let Some(watch) = &watch {
                core.set("resume", crate::hook::resume_function(&lua, watch)?)?;
            }
            if config.instruction_budget.is_some_and(|n| n > 0) {
                core.set("close", crate::hook::close_function(&lua, watch.as_ref())?)?;
            }
        }
        core.set(
            "instance",
            lua.create_function(|lua, ()| Ok(scheduler::current_instance(lua).map(|id| id.0)))?,
        )?;
        core.set(
            "env_of",
            lua.create_function(|lua, id: i64| scheduler::refs(lua).envs.raw_get::<Value>(id))?,
        )?;
        core.set("MAX_RESUMES", config.max_resumes_per_task.max(1))?;
        core.set("MEMORY_QUOTA", config.memory_per_instance.map(|bytes| bytes as f64 / 1024.0))?;
        core.set(
            "over_quota",
            lua.create_function(|lua, (instance, kib, quota): (u64, f64, f64)| {
                scheduler::over_memory_quota(lua, InstanceId(instance), kib, quota);
                Ok(())
            })?,
        )?;
        core.set("TIMED", config.step_time_budget.is_some())?;
        let time_budget = config.step_time_budget.unwrap_or_default();
        core.set(
            "over_time",
            lua.create_function(move |lua, ()| {
                Ok(sched(lua).step_started.is_some_and(|t| t.elapsed() >= time_budget))
            })?,
        )?;
        core.set(
            "adopt",
            lua.create_function(|lua, (_co, current): (Thread, i64)| {
                Ok(match scheduler::adopt(lua, current)? {
                    Ok((key, instance)) => (Value::Integer(key), Value::Integer(instance as i64)),
                    Err(message) => (Value::Nil, Value::String(lua.create_string(message)?)),
                })
            })?,
        )?;
        core.set(
            "timer",
            lua.create_function(|lua, (key, reg, clock, seconds, stored): (i64, f64, i64, f64, bool)| {
                sched(lua).add_timer(key, reg, clock, seconds, stored);
                Ok(())
            })?,
        )?;
        core.set(
            "release",
            lua.create_function(|lua, key: i64| {
                scheduler::release(lua, key);
                Ok(())
            })?,
        )?;
        core.set(
            "spent",
            lua.create_function(|lua, (key, owner, co): (i64, Option<u64>, Option<Thread>)| {
                scheduler::spent(lua, key, owner.map(InstanceId), co.as_ref());
                Ok(())
            })?,
        )?;
        core.set(
            "fail",
            lua.create_function(
                |lua, (key, message, traceback): (i64, mlua::LuaString, mlua::LuaString)| {
                    scheduler::fail(lua, key, message.to_string_lossy(), traceback.to_string_lossy());
                    Ok(())
                },
            )?,
        )?;
        core.set(
            "closes_due",
            lua.create_function(|lua, ()| {
                sched(lua).closes_due = true;
                Ok(())
            })?,
        )?;
        core.set("CLOSING", scheduler::CLOSING)?;
        // `live(id)`: whether instance `id` is still tracked (not let go).
        core.set(
            "live",
            lua.create_function(|lua, id: u64| Ok(sched(lua).instance(InstanceId(id)).is_some()))?,
        )?;

        core.set(
            "close_failed",
            lua.create_function(|lua, (id, message, traceback): (u64, mlua::LuaString, mlua::LuaString)| {
                scheduler::close_failed(
                    lua,
                    InstanceId(id),
                    &message.to_string_lossy(),
                    &traceback.to_string_lossy(),
                );
                Ok(())
            })?,
        )?;
        core.set(
            "report",
            lua.create_function(|lua, (message, traceback): (mlua::LuaString, mlua::LuaString)| {
                let instance = scheduler::current_instance(lua);
                let traceback = crate::error::traceback_part(&traceback.to_string_lossy());
                sched(lua).report(instance, ScriptErrorKind::Runtime, message.to_string_lossy(), traceback);
                Ok(())
            })?,
        )?;

        let api: Table =
            lua.load(include_str!("lua/task.lua")).set_name("=bevy_lua_coroutines/task.lua").call(core)?;
        let step: Table = api.get("step")?;
        let promise = load_promises(&lua, &api, &step, &traceback)?;
        let tick: Function = promise.get("tick")?;
        let channel = load_channels(&lua, &api, config.select_seed)?;
        let external: Function = channel.get::<Table>("Channel")?.get("_external")?;
        lua.set_app_data(ChannelLua { poll: channel.get("poll")?, external });
        // What the task inspector (src/inspect.rs) builds on, kept for it to pick up.
        let inspect_deps = lua.create_table()?;
        for name in ["state", "key_of", "track", "set_inspector"] {
            inspect_deps.set(name, step.get::<Function>(name)?)?;
        }
        inspect_deps.set("describe_channel", channel.get::<Function>("describe")?)?;
        inspect_deps.set("wait_until", api.get::<Table>("task")?.get::<Function>("waitUntil")?)?;
        if let Some(debug) = &debug {
            inspect_deps.set("getinfo", debug.get::<Value>("getinfo")?)?;
            inspect_deps.set("info", debug.get::<Value>("info")?)?;
        }
        lua.set_named_registry_value(scheduler::INSPECT_DEPS, inspect_deps)?;
        lua.set_app_data(StepHooks::default());
        let base = Base {
            lua: &lua,
            promise: promise.clone(),
            channel: channel.get("Channel")?,
            is_channel: channel.get("is_channel")?,
            bad: api.get("bad")?,
            builtins: lua.create_table()?,
            fields: lua.create_table()?,
            classes: lua.create_table()?,
            later: Default::default(),
        };
        for install in &extensions.0 {
            install(&lua, &base)?;
        }
        api.set("promise", promise)?;
        api.set("channel", channel)?;
        api.set("builtins", &base.builtins)?;
        api.set("fields", &base.fields)?;
        api.set("classes", &base.classes)?;
        let shared: Table = step.get("shared")?;
        crate::fastpath::keep_shared(&lua, &shared)?;
        lua.set_app_data(Refs {
            thread_of: step.get("thread_of")?,
            shared,
            envs: lua.create_table()?,
            run: step.get("run")?,
            wake: step.get("wake")?,
            start: step.get("start")?,
            detach: step.get("detach")?,
            kill: step.get("kill")?,
            close_ended: step.get("close_ended")?,
            ending_mark: step.get("ending_mark")?,
            claim_ending: step.get("claim_ending")?,
            compact: step.get("compact")?,
            close: step.get("close")?,
            traceback,
            state: state.clone(),
            tick,
        });
        lua.set_app_data(budget.clone());

        let opts = lua.create_table()?;
        opts.set("all", config.stdlib == StdlibAccess::All)?;
        let to_stdout = config.print_to_stdout;
        let stdout_closed = Arc::new(AtomicBool::new(false));
        let closed = stdout_closed.clone();
        // Lines are text: bytes that are not UTF-8 print as U+FFFD.
        let emit = lua.create_function(move |lua, line: mlua::LuaString| {
            let line = line.to_string_lossy();
            if to_stdout && !closed.load(Ordering::Relaxed) {
                print_line(&line, &closed);
            }
            if let Some(instance) = scheduler::current_instance(lua) {
                sched(lua).prints.push((instance, line));
            }
            Ok(())
        })?;
        // Scripts get pattern functions whose work counts against the budget.
        let b = budget.clone();
        let work = move |lua: &Lua, steps| b.work(lua, steps);
        crate::pattern::install(&lua, work, &globals.get::<Table>("string")?, &base.bad)?;
        let sandbox: Table = lua
            .load(include_str!("lua/sandbox.lua"))
            .set_name("=bevy_lua_coroutines/sandbox.lua")
            .call((api, opts, emit))?;
        let shared: Table = sandbox.get("base")?;
        let new_env: Function = sandbox.get("new_env")?;
        let define: Function = sandbox.get("define")?;
        let on_reload: Function = sandbox.get("on_reload")?;
        lua.set_app_data(EnvFactory(new_env.clone()));
        step.get::<Function>("share")?.call::<()>(&shared)?;
        lua.set_globals(shared)?;
        for (path, value) in base.later.take() {
            define.call::<()>((path, value))?;
        }
        crate::heap::install(&lua, config.memory_limit)?;
        Ok(Self {
            lua,
            new_env,
            on_reload,
            define,
            state,
            pending: Default::default(),
            setfenv,
            schedule,
            stdout_closed,
        })
    }

    /// Publishes this frame's clocks to the Lua side (`time.*`, frame waits).
    pub(crate) fn begin_frame(
        &self,
        game: std::time::Duration,
        delta: std::time::Duration,
        real: std::time::Duration,
    ) -> mlua::Result<()> {
        let clock = {
            let mut s = sched(&self.lua);
            s.clock.advance(game, delta, real);
            s.step_started = Some(std::time::Instant::now());
            s.clock
        };
        let state = &self.state;
        state.raw_set("elapsed", crate::time::nanos_to_seconds(clock.game_ns))?;
        state.raw_set("delta", crate::time::nanos_to_seconds(clock.delta_ns))?;
        state.raw_set("real", crate::time::nanos_to_seconds(clock.real_ns))?;
        state.raw_set("frame", clock.frame)?;
        state.raw_set("nanos", clock.game_ns as f64)
    }

    /// Rebuilds the VM's task and environment tables when most of their entries are gone.
    pub(crate) fn compact_tables(&self) -> mlua::Result<()> {
        let (tasks, instances) = sched(&self.lua).take_compaction();
        if tasks {
            scheduler::refs(&self.lua).compact.call::<()>(())?;
        }
        if instances {
            let fresh = self.lua.create_table()?;
            let mut refs =
                self.lua.app_data_mut::<Refs>().expect("the task tables are installed with the VM");
            for pair in refs.envs.pairs::<Value, Value>() {
                let (k, v) = pair?;
                fresh.raw_set(k, v)?;
            }
            refs.envs = fresh;
        }
        Ok(())
    }
}

/// Writes one printed line to stdout. A closed stdout (a broken pipe: the reader went away) sets
/// `closed`, and nothing is written there again; the line, like any that another error loses,
/// is dropped quietly, so a script never fails because a terminal went away.
fn print_line(line: &str, closed: &AtomicBool) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        closed.store(true, Ordering::Relaxed);
    }
}

/// Loads `lua/promise.lua` on top of the task API (`api`, `step` from `lua/task.lua`) and returns
/// its exports: `Promise`, `async`, `await`, `asyncTry` and `tick`.
fn load_promises(lua: &Lua, api: &Table, step: &Table, traceback: &Function) -> mlua::Result<Table> {
    let time: Table = api.get("time")?;
    let deps = lua.create_table()?;
    deps.set("task", api.get::<Table>("task")?)?;
    deps.set("park", api.get::<Function>("park")?)?;
    deps.set("wake", api.get::<Function>("wake")?)?;
    deps.set("waiting", api.get::<Function>("waiting")?)?;
    deps.set("spawn_job", api.get::<Function>("spawn_job")?)?;
    deps.set("wake_ctx", api.get::<Table>("wake_ctx")?)?;
    deps.set("settle_resolved", api.get::<Function>("settle_resolved")?)?;
    deps.set("bad", api.get::<Function>("bad")?)?;
    deps.set("slots", step.get::<Table>("shared")?)?;
    deps.set("guard", step.get::<Function>("guard")?)?;
    deps.set("run_each", step.get::<Function>("run_each")?)?;
    deps.set("frame", time.get::<Function>("frame")?)?;
    deps.set("traceback", traceback.clone())?;
    deps.set("error_text", api.get::<Function>("error_text")?)?;
    // `owner() -> id | nil`: the instance the running code belongs to (promises remember it).
    deps.set("owner", api.get::<Function>("running_instance")?)?;
    deps.set("on_owner_changed", api.get::<Function>("on_owner_changed")?)?;
    deps.set("cancel_executor", api.get::<Function>("cancel_executor")?)?;
    deps.set("hold", api.get::<Function>("hold")?)?;
    // `report(message, traceback, owner)`: an unhandled rejection of a promise `owner` made.
    deps.set(
        "report",
        lua.create_function(
            |lua, (message, traceback, owner): (mlua::LuaString, mlua::LuaString, Option<u64>)| {
                let traceback = crate::error::traceback_part(&traceback.to_string_lossy());
                let message = message.to_string_lossy();
                sched(lua).report(
                    owner.map(InstanceId),
                    ScriptErrorKind::UnhandledRejection,
                    message,
                    traceback,
                );
                Ok(())
            },
        )?,
    )?;
    // `spawn_as(owner, f) -> bool`: queues `f` as a new task of instance `owner` (it runs in the
    // next step, under the instruction budget); false if that instance is gone (forgotten, or its
    // entity despawned by a script in this step).
    deps.set(
        "spawn_as",
        lua.create_function(|lua, (owner, f): (Option<u64>, Function)| {
            let live = |id| sched(lua).instance(id).is_some_and(|r| !r.despawned);
            let Some(id) = owner.map(InstanceId).filter(|&id| live(id)) else {
                return Ok(false);
            };
            let thread = script_thread(lua, f)?;
            let start = scheduler::refs(lua).start.clone();
            let _host = scheduler::host(lua, Some(id));
            // The host is named here: an error value's `__tostring` running as no instance
            // (which a promise it settles brings here) does not keep the task from starting.
            let _named = scheduler::NobodyPaused::new(lua);
            start.call::<()>(thread).map(|()| true)
        })?,
    )?;
    lua.load(include_str!("lua/promise.lua")).set_name("=bevy_lua_coroutines/promise.lua").call(deps)
}

/// Loads `lua/channel.lua` on top of the task API (`api` from `lua/task.lua`) and returns its
/// exports: `Channel` (the table scripts see) and `poll`.
fn load_channels(lua: &Lua, api: &Table, select_seed: u64) -> mlua::Result<Table> {
    let deps = lua.create_table()?;
    deps.set("task", api.get::<Table>("task")?)?;
    deps.set("park", api.get::<Function>("park")?)?;
    deps.set("wake", api.get::<Function>("wake")?)?;
    deps.set("waiting", api.get::<Function>("waiting")?)?;
    deps.set("bad", api.get::<Function>("bad")?)?;
    deps.set("seed", select_seed_state(select_seed))?;
    lua.load(include_str!("lua/channel.lua")).set_name("=bevy_lua_coroutines/channel.lua").call(deps)
}

/// The select seed mixed (splitmix64) down to 53 bits, so that every Lua flavour reads it exactly
/// as a double and nearby seeds start the generator far apart.
fn select_seed_state(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64
}

/// How long one resume of the step runs hook-free, in the default mode, before the watchdog arms
/// the count hook on it (it then has its whole instruction budget still to run).
#[cfg(not(any(feature = "luajit", feature = "luau")))]
pub(crate) const WATCH_SLICE: std::time::Duration = std::time::Duration::from_millis(5);

/// A thread mlua makes for script code: in the default mode it carries no hook until the
/// watchdog arms it (mlua gives every thread it makes the global hook).
pub(crate) fn script_thread(lua: &Lua, f: Function) -> mlua::Result<Thread> {
    let thread = lua.create_thread(f)?;
    if let Some(budget) = lua.app_data_ref::<Arc<Budget>>() {
        budget.unhook(&thread);
    }
    Ok(thread)
}

/// Installs the hook that enforces the instruction budget of one resume. Exact mode (and LuaJIT,
/// Luau): every instruction of every resume is counted. Default mode (Lua 5.4): threads carry no
/// hook; the returned watch, whose watchdog arms the hook on a resume that ran past
/// [`WATCH_SLICE`], is what the step resumes through (`core.resume`).
fn install_budget(
    lua: &Lua,
    budget: &Arc<Budget>,
    instructions: Option<u64>,
    exact: bool,
) -> mlua::Result<Option<Arc<crate::hook::Watch>>> {
    let Some(instructions) = instructions.filter(|&n| n > 0) else {
        return Ok(None);
    };
    #[cfg(feature = "luajit")]
    let _ = exact;
    // The hook runs every `every` instructions and the budget allows `calls` of it: 1/16 of the
    // budget's precision, at a cost of one Rust call per `every` instructions.
    budget.set_main(lua.current_thread().to_pointer());
    #[cfg(not(any(feature = "luajit", feature = "luau")))]
    crate::hook::install_raiser(lua, budget.raiser(), scheduler::LIBRARY_SOURCE)?;
    let every = (instructions / 16).clamp(1, i32::MAX as u64);
    budget.set_limit(instructions.div_ceil(every), every as i32, every);
    // Exact mode: every thread mlua makes, and every coroutine a task makes, carries the hook.
    // Under Lua 5.4 the main thread, where the step's own loop runs, does not (any hook slows
    // every instruction of the thread it is on); script code the step calls there (an error's
    // `__tostring`, a cancelled task's `__close`) runs on a thread of its own that does
    // (`protected` in `lua/task.lua`). Under LuaJIT a hook is global: it stays.
    // LuaJIT runs no hook inside compiled code, so a compiled loop would never be stopped: with a
    // budget, the JIT is off.
    #[cfg(feature = "luajit")]
    if let Some(jit) = lua.globals().get::<Option<Table>>("jit")? {
        jit.get::<Function>("off")?.call::<()>(())?;
    }
    #[allow(unused_mut)]
    let mut watch = None;
    #[cfg(not(feature = "luau"))]
    {
        let b = budget.clone();
        lua.set_global_hook(
            mlua::HookTriggers::new().every_nth_instruction(every as u32),
            move |lua, debug| {
                let src = debug.source();
                let short = src.short_src.as_deref().unwrap_or("?");
                b.on_hook(
                    lua,
                    || scheduler::file_line(short, debug.current_line().map(|l| l as i32)),
                    || short.starts_with(LIBRARY_SOURCE),
                )
            },
        )?;
        // Default mode: no thread has the hook (mlua's global hook function, kept for arming)
        // until the watchdog arms the one running a resume that ran long.
        #[cfg(not(feature = "luajit"))]
        if !exact && let Some(hook) = crate::hook::hook_of(lua.current_thread().to_pointer()) {
            let w = crate::hook::Watch::new(lua.current_thread().to_pointer(), hook, every as i32);
            w.start(WATCH_SLICE);
            budget.set_watch(w.clone());
            watch = Some(w);
        }
        #[cfg(not(feature = "luajit"))]
        lua.remove_hook();
    }
    #[cfg(feature = "luau")]
    {
        let b = budget.clone();
        // Luau calls the interrupt at calls and loop back-edges, not every n instructions.
        budget.set_limit(instructions.div_ceil(8).max(1), 1, 8);
        // A check once every 64 interrupts, and at least 16 times within the budget, as the count
        // hook elsewhere; at every interrupt when counting exactly.
        let batch = if exact { 1 } else { (instructions / 8 / 16).clamp(1, 64) };
        crate::hook::set_interrupt(lua, batch, budget.stopping(), move |lua, l, weight| {
            // The innermost Lua function (the interrupt itself is no frame of its own).
            let short =
                || (0..4).find_map(|level| crate::hook::frame_at(l, level).filter(|(src, _)| src != "[C]"));
            // The innermost script function, past the crate's own code.
            let script =
                || scheduler::script_frame(0, |level| crate::hook::frame_at(l, level as std::ffi::c_int));
            b.on_thread_hook(
                lua,
                l as *const std::ffi::c_void,
                weight,
                || short().map_or_else(|| "?".into(), |(src, line)| scheduler::file_line(&src, line)),
                || short().is_some_and(|(src, _)| src.starts_with(LIBRARY_SOURCE)),
                script,
            )
        })?;
    }
    Ok(watch)
}
