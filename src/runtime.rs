//! The Lua VM: its creation, protection (instruction budget, memory limit, safe standard
//! libraries, the read-only base) and the Rust half of the task API.

use std::sync::Arc;

use bevy::prelude::*;
use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Thread, Value};

use crate::error::ScriptErrorKind;
use crate::scheduler::{self, Budget, Refs, Scheduler, kind, sched};

/// Which standard libraries scripts get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LuaStdlib {
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
    pub stdlib: LuaStdlib,
    pub instruction_budget: Option<u64>,
    pub memory_limit: Option<usize>,
    pub print_to_stdout: bool,
}

/// The Lua VM and what the plugin keeps beside it. One per app.
#[derive(Resource)]
pub struct LuaRuntime {
    lua: Lua,
    pub(crate) budget: Arc<Budget>,
    /// `new_env(entity) -> env`, from `lua/sandbox.lua`.
    pub(crate) new_env: Function,
    /// The `clock` table `time.*` reads.
    clock: Table,
    /// Script instances per entity.
    pub(crate) instances: crate::instance::Instances,
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

    /// Script instances still waiting for their asset to load.
    pub fn pending_instances(&self) -> usize {
        self.instances.pending_len()
    }

    /// Counters for diagnostics.
    pub fn stats(&self) -> scheduler::SchedulerStats {
        sched(&self.lua).stats
    }

    /// Bytes of memory the VM uses.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    pub(crate) fn new(config: &VmConfig) -> mlua::Result<Self> {
        // SAFETY: `debug` is opened only so `debug.traceback` can be kept; in safe mode the rest of
        // `debug` is removed before any script runs (see `lua/sandbox.lua`).
        #[allow(unsafe_code)]
        let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL_SAFE | StdLib::DEBUG, LuaOptions::default()) };
        lua.set_app_data(Scheduler::default());
        let budget = Arc::new(Budget::default());
        install_budget(&lua, &budget, config.instruction_budget)?;

        let globals = lua.globals();
        let debug: Option<Table> = globals.get("debug")?;
        let traceback: Function = match debug {
            Some(d) => d.get("traceback")?,
            None => lua.create_function(|_, ()| Ok(String::new()))?,
        };
        let threads = lua.create_table()?;
        let args = lua.create_table()?;
        let clock = lua.create_table()?;

        let core = lua.create_table()?;
        core.set("REQ", Value::LightUserData(scheduler::req()))?;
        core.set("WAIT_TIME", kind::WAIT_TIME)?;
        core.set("WAIT_FRAMES", kind::WAIT_FRAMES)?;
        core.set("WAIT_REAL", kind::WAIT_REAL)?;
        core.set("DEFER", kind::DEFER)?;
        core.set("DELAY", kind::DELAY)?;
        core.set("clock", &clock)?;
        core.set("traceback", traceback.clone())?;

        core.set(
            "register",
            lua.create_function(|lua, (thread, kind, arg): (Thread, i64, Value)| {
                let Some(task) = scheduler::adopt(lua, &thread)? else {
                    return Err(mlua::Error::runtime("task API called outside of a script"));
                };
                sched(lua).register_wait(task, kind, &arg).map_err(mlua::Error::runtime)
            })?,
        )?;
        core.set(
            "schedule",
            lua.create_function(|lua, (thread, how, seconds, args): (Thread, i64, f64, MultiValue)| {
                let Some(task) = scheduler::adopt(lua, &thread)? else {
                    return Ok(Some(String::from("task API called outside of a script")));
                };
                scheduler::store_args(lua, task, args)?;
                Ok(sched(lua).schedule(task, how, seconds).err())
            })?,
        )?;
        core.set(
            "forget",
            lua.create_function(|lua, thread: Thread| {
                let found = sched(lua).find(thread.to_pointer() as usize);
                if let Some(task) = found {
                    scheduler::drop_task(lua, task);
                }
                Ok(())
            })?,
        )?;
        core.set(
            "report",
            lua.create_function(|lua, (message, traceback): (String, String)| {
                let mut s = sched(lua);
                let instance = s.current_instance();
                let (_, traceback) = crate::error::split_text(&format!("\n{traceback}"));
                s.report(instance, ScriptErrorKind::Runtime, message, traceback);
                Ok(())
            })?,
        )?;

        let api: Table =
            lua.load(include_str!("lua/task.lua")).set_name("=bevy_lua_coroutines/task.lua").call(core)?;
        let close: Function = api.get("close")?;
        lua.set_app_data(Refs { threads, args, envs: lua.create_table()?, close, traceback });

        let opts = lua.create_table()?;
        opts.set("all", config.stdlib == LuaStdlib::All)?;
        let to_stdout = config.print_to_stdout;
        let emit = lua.create_function(move |lua, line: String| {
            if to_stdout {
                println!("{line}");
            }
            let mut s = sched(lua);
            if let Some(instance) = s.current_instance() {
                s.prints.push((instance, line));
            }
            Ok(())
        })?;
        let sandbox: Table = lua
            .load(include_str!("lua/sandbox.lua"))
            .set_name("=bevy_lua_coroutines/sandbox.lua")
            .call((api, opts, emit))?;
        let base: Table = sandbox.get("base")?;
        let new_env: Function = sandbox.get("new_env")?;
        lua.set_globals(base)?;
        if let Some(limit) = config.memory_limit {
            lua.set_memory_limit(limit)?;
        }
        Ok(Self { lua, budget, new_env, clock, instances: Default::default() })
    }

    /// Publishes the clocks to `time.*` and wakes what fell due.
    pub(crate) fn begin_frame(
        &self,
        game: std::time::Duration,
        delta: std::time::Duration,
        real: std::time::Duration,
    ) {
        let clock = {
            let mut s = sched(&self.lua);
            s.clock.advance(game, delta, real);
            s.wake_due();
            s.clock
        };
        let _ = self.clock.raw_set("elapsed", crate::time::nanos_to_seconds(clock.game_ns));
        let _ = self.clock.raw_set("delta", crate::time::nanos_to_seconds(clock.delta_ns));
        let _ = self.clock.raw_set("real", crate::time::nanos_to_seconds(clock.real_ns));
        let _ = self.clock.raw_set("frame", clock.frame);
        let _ = self.clock.raw_set("nanos", clock.game_ns as f64);
    }

    /// Rebuilds the VM's task and environment tables when most of their entries are gone.
    pub(crate) fn compact_tables(&self) -> mlua::Result<()> {
        let (tasks, instances) = sched(&self.lua).take_compaction();
        if !(tasks || instances) {
            return Ok(());
        }
        let copy = |t: &Table| -> mlua::Result<Table> {
            let fresh = self.lua.create_table()?;
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                fresh.raw_set(k, v)?;
            }
            Ok(fresh)
        };
        let mut refs = self.lua.app_data_mut::<Refs>().expect("the task tables are installed with the VM");
        if tasks {
            refs.threads = copy(&refs.threads)?;
            refs.args = copy(&refs.args)?;
        }
        if instances {
            refs.envs = copy(&refs.envs)?;
        }
        Ok(())
    }

    /// Resumes everything that is ready.
    pub(crate) fn run(&self) {
        scheduler::run(&self.lua, &self.budget);
    }
}

/// Installs the hook that enforces the instruction budget of one resume.
fn install_budget(lua: &Lua, budget: &Arc<Budget>, instructions: Option<u64>) -> mlua::Result<()> {
    let Some(instructions) = instructions.filter(|&n| n > 0) else {
        return Ok(());
    };
    // The hook runs every `every` instructions and the budget allows `calls` of it: 1/16 of the
    // budget's precision, at a cost of one Rust call per `every` instructions.
    let every = (instructions / 16).clamp(1, u64::from(u32::MAX)) as u32;
    budget.set_limit(instructions.div_ceil(u64::from(every)));
    #[cfg(not(feature = "luau"))]
    {
        let b = budget.clone();
        lua.set_global_hook(mlua::HookTriggers::new().every_nth_instruction(every), move |lua, debug| {
            b.on_hook(lua, || {
                let src = debug.source();
                let line = debug.current_line().map_or_else(|| "?".into(), |l| l.to_string());
                format!("{}:{line}", src.short_src.as_deref().unwrap_or("?"))
            })
        })?;
    }
    #[cfg(feature = "luau")]
    {
        let b = budget.clone();
        budget.set_limit(instructions.div_ceil(8).max(1));
        lua.set_interrupt(move |lua| {
            b.on_hook(lua, || {
                lua.inspect_stack(1, |d| {
                    let src = d.source();
                    let line = d.current_line().map_or_else(|| "?".into(), |l| l.to_string());
                    format!("{}:{line}", src.short_src.as_deref().unwrap_or("?"))
                })
                .unwrap_or_else(|| "?".into())
            })
        });
        let _ = every;
    }
    Ok(())
}
