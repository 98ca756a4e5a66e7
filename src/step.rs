//! One frame of scripts, in the order it happens. The clocks advance; completions come in
//! (channel operations parked on Rust-backed channels retry, each extension's per-step work runs,
//! such as Rust async results settling their promises, and the timers that fell due wake their
//! tasks); everything ready resumes (`step.run` in `lua/task.lua`, whose common case, a task that
//! waits for the next frame again, is the raw loop in `fastpath`); then what came out goes out:
//! the tasks that a script of another instance ended (it despawned their entity, cancelled their
//! promise) close, as their own instance; instances whose closes were carried past the frame that
//! let them go are let go again once none is left; promise rejections nobody handled are
//! reported, and the frame's errors and prints are handed to the plugin, which writes them as
//! messages. The plugin's step system calls [`frame`] while the world is reachable from scripts.

use std::time::Duration;

use bevy::prelude::*;
use mlua::Lua;

use crate::error::{ScriptError, ScriptPrint};
use crate::runtime::{ChannelLua, LuaRuntime};
use crate::scheduler::{refs, sched, step_hook};

/// What one frame of scripts produced, for the plugin to write as messages.
pub(crate) struct Output {
    /// Script failures, in the order they happened.
    pub errors: Vec<ScriptError>,
    /// Lines scripts printed, each with its entity and script.
    pub prints: Vec<ScriptPrint>,
}

/// Runs one frame of scripts. `game` and `real` are the elapsed game and real time, `delta` the
/// game time since the last frame. A failure of the step itself (one no task caught: the VM out of
/// memory while queueing, say) is logged; nothing ready is lost, the next frame goes on from it.
pub(crate) fn frame(runtime: &LuaRuntime, game: Duration, delta: Duration, real: Duration) -> Output {
    let lua = runtime.lua();
    if let Err(e) = resume_all(runtime, game, delta, real) {
        error!("bevy_lua_coroutines: the step failed: {e}");
    }
    // Out: the tasks that scripts of other instances ended close, each as its own instance.
    crate::scheduler::close_ended(lua);
    // Instances whose closes were carried past the frame that forgot them are forgotten again
    // once none is left, before the promise tick, which lets go of what those closes made.
    forget_carried(lua);
    crate::fastpath::restore_memory_limit(lua);
    crate::heap::trim(lua);
    // Out: unhandled rejections are reported once per frame, after every resume.
    report_rejections(lua);
    output(lua)
}

/// In and resume: the clocks, then every completion that came in, then every task ready.
fn resume_all(runtime: &LuaRuntime, game: Duration, delta: Duration, real: Duration) -> mlua::Result<()> {
    let lua = runtime.lua();
    runtime.begin_frame(game, delta, real)?;
    // Completions in. Sends and receives parked on Rust-backed channels retry first.
    let poll = lua.app_data_ref::<ChannelLua>().map(|c| c.poll.clone());
    if let Some(Err(e)) = poll.map(|poll| poll.call::<()>(())) {
        error!("bevy_lua_coroutines: retrying parked channel operations raised {e}");
    }
    // Then each extension's per-step work (Rust work that finished settles its promises), so what
    // it wakes runs in this step.
    let mut i = 0;
    while let Some((what, hook)) = step_hook(lua, |h| h.before_step.get(i)) {
        if let Err(e) = hook(lua) {
            error!("bevy_lua_coroutines: {what} raised {e}");
        }
        i += 1;
    }
    // Then the timers that fell due.
    let due = sched(lua).due_timers();
    let (wake, run) = {
        let r = refs(lua);
        (r.wake.clone(), r.run.clone())
    };
    for (key, reg, value) in due {
        wake.call::<()>((key, reg, value))?;
    }
    // Resume everything ready. The Lua step goes on where it stopped if it is called again after
    // an error that escaped a task, so nothing ready is lost.
    let mut result = run.call::<()>(());
    for _ in 0..64 {
        let Err(e) = &result else { break };
        error!("bevy_lua_coroutines: the step raised {e}; going on");
        result = run.call::<()>(());
    }
    if result.is_err() {
        // The step gave up inside a resume: no task runs now, whatever the shared table says.
        let _ = refs(lua).clear_current();
    }
    result
}

/// Forgets again, once the step's closes leave none, the instances whose closes were carried past
/// the frame that forgot them: such a close runs as its instance after the promise module and the
/// module system forgot it, and what it made then for that instance (a promise worker pool, spare
/// await slots, an `onUnhandledRejection` callback, a `require`d module's entry, Rust work in
/// flight) would stay for good. They go to the promise tick that follows (`Scheduler::gone`).
/// Nothing is done when no close was carried past a frame.
fn forget_carried(lua: &Lua) {
    let ids = sched(lua).take_carried();
    for id in ids {
        crate::modules::forget_instance(lua, id);
        crate::scheduler::drop_instance_work(lua, id);
    }
}

/// The promise module's once-a-frame bookkeeping: rejections nobody handled are reported, and
/// the promises of instances gone this frame are forgotten.
fn report_rejections(lua: &Lua) {
    let gone: Vec<u64> = std::mem::take(&mut sched(lua).gone).into_iter().map(|id| id.0).collect();
    let tick = refs(lua).tick.clone();
    if let Err(e) = tick.call::<()>((!gone.is_empty()).then_some(gone)) {
        error!("bevy_lua_coroutines: the promise tick raised {e}");
    }
}

/// The frame's errors and prints, each print named by its entity and script.
fn output(lua: &Lua) -> Output {
    let mut s = sched(lua);
    let errors = std::mem::take(&mut s.errors);
    let prints = std::mem::take(&mut s.prints)
        .into_iter()
        .map(|(instance, line)| {
            let (entity, script) =
                s.name_of(instance).map_or((Entity::PLACEHOLDER, String::new()), |(e, p)| (e, p.to_string()));
            ScriptPrint { entity, script, line }
        })
        .collect();
    s.let_go_departed();
    Output { errors, prints }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use std::sync::atomic::Ordering;

    use super::*;
    use crate::runtime::{Extensions, StdlibAccess, VmConfig};
    use bevy::ecs::schedule::ScheduleLabel;

    fn config() -> VmConfig {
        VmConfig {
            stdlib: StdlibAccess::Safe,
            instruction_budget: Some(1_000_000),
            memory_limit: None,
            print_to_stdout: false,
            select_seed: 1,
            max_resumes_per_task: 100,
            step_time_budget: None,
            max_tasks_per_instance: None,
            memory_per_instance: None,
            exact_instruction_count: false,
        }
    }

    #[test]
    fn the_core_alone_knows_no_extension() {
        let runtime = LuaRuntime::new(&config(), Update.intern(), &Extensions::default()).unwrap();
        let seen: (bool, bool, bool, bool, bool) = runtime
            .lua()
            .load("return task ~= nil, Channel.new ~= nil, require == nil, Stream == nil, Vec3 == nil")
            .eval()
            .unwrap();
        assert_eq!(seen, (true, true, true, true, true));
        step(&runtime);
    }

    /// One frame of the core alone, at time zero.
    fn step(runtime: &LuaRuntime) {
        let out = frame(runtime, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }

    static STEPS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn an_extension_builds_in_names_and_runs_before_every_step() {
        let mut extensions = Extensions::default();
        extensions.add(|lua, base| {
            base.builtin("answer", 42)?;
            base.builtin_field("Channel", "extra", true)?;
            base.define("ext.hello", lua.create_function(|_, ()| Ok("hi"))?)?;
            base.before_step("counting steps", |_| {
                STEPS.fetch_add(1, Ordering::Relaxed);
                Ok(())
            });
            Ok(())
        });
        let runtime = LuaRuntime::new(&config(), Update.intern(), &extensions).unwrap();
        let seen: (i64, bool, String) =
            runtime.lua().load("return answer, Channel.extra, ext.hello()").eval().unwrap();
        assert_eq!(seen, (42, true, "hi".to_string()));
        // Built in: a game cannot replace it; `ext` is a module a game may add to.
        assert!(runtime.define("answer", 1).is_err());
        runtime.define("ext.more", 1).unwrap();
        step(&runtime);
        step(&runtime);
        assert_eq!(STEPS.load(Ordering::Relaxed), 2);
    }

    /// 5,000 tasks woken in one step, then asleep: the ready queue keeps its room through 63 quiet
    /// steps (a burst may come again) and gives it back at the 64th.
    #[test]
    fn a_burst_s_ready_queue_lets_its_room_go_after_sixty_four_quiet_steps() {
        use bevy::time::TimeUpdateStrategy;
        let mut app = App::new();
        app.add_plugins((MinimalPlugins, AssetPlugin::default()))
            .add_plugins(crate::LuaCoroutinesPlugin {
                print_to_stdout: false,
                hot_reload: false,
                ..default()
            })
            .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_millis(16)));
        let script = crate::LuaScript::new(
            "scripts/burst.lua",
            "local resolve
             local p = Promise.new(function(r) resolve = r end)
             for i = 1, 5000 do task.spawn(function() await(p) task.wait(1000) end) end
             task.spawn(function() task.wait() resolve(1) end)",
        );
        let handle = app.world_mut().resource_mut::<Assets<crate::LuaScript>>().add(script);
        app.world_mut().spawn(crate::LuaScripts::new(handle));
        let room = |app: &App| crate::fastpath::ready_room(app.world().resource::<LuaRuntime>().lua());
        let run = |app: &mut App, n: usize| (0..n).for_each(|_| app.update());
        run(&mut app, 4);
        let burst = room(&app);
        assert!(burst >= 5000, "the burst's room: {burst}");
        run(&mut app, 60);
        assert_eq!(room(&app), burst, "kept while quiet");
        run(&mut app, 10);
        assert_eq!(room(&app), 0, "given back");
    }

    static CLOSED: AtomicUsize = AtomicUsize::new(0);

    /// A `__close` that runs frames after its instance was forgotten (two looping closes before it
    /// spent the budgets of the frame that ended it and of the frame that forgot it) and
    /// `require`s a module leaves no entry in the module graph once the closes are over: the
    /// instance is forgotten again then.
    #[test]
    #[cfg_attr(not(feature = "lua54"), ignore = "to-be-closed variables are Lua 5.4 syntax")]
    fn a_require_in_a_close_carried_past_its_instance_s_end_is_forgotten() {
        use bevy::time::TimeUpdateStrategy;
        let dir = tempfile::tempdir().unwrap();
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).unwrap();
        std::fs::write(scripts.join("shared.lua"), "return {}").unwrap();
        std::fs::write(
            scripts.join("looper.lua"),
            "local g <close> = setmetatable({}, { __close = function() while true do end end }) task.wait(1000)",
        )
        .unwrap();
        std::fs::write(
            scripts.join("victim.lua"),
            "local g <close> = setmetatable({}, { __close = function()
               require('shared')
               print('victim closed')
             end })
             task.wait(1000)",
        )
        .unwrap();
        let mut app = App::new();
        app.add_plugins((
            MinimalPlugins,
            AssetPlugin { file_path: dir.path().to_str().unwrap().into(), ..default() },
        ))
        .add_plugins(crate::LuaCoroutinesPlugin {
            print_to_stdout: false,
            hot_reload: false,
            wait_for_script_loads: true,
            instruction_budget: Some(1_000_000),
            exact_instruction_count: true,
            ..default()
        })
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_millis(16)))
        .add_systems(Last, |mut prints: MessageReader<ScriptPrint>| {
            let n = prints.read().filter(|p| p.line == "victim closed").count();
            CLOSED.fetch_add(n, Ordering::Relaxed);
        });
        let script = crate::LuaScript::new(
            "scripts/despawner.lua",
            "local l1 = world.spawn{ script = 'scripts/looper.lua' }
             local l2 = world.spawn{ script = 'scripts/looper.lua' }
             local vs = {}
             for i = 1, 10 do vs[i] = world.spawn{ script = 'scripts/victim.lua' } end
             task.wait() task.wait()
             l1:despawn()
             l2:despawn()
             for i = 1, 10 do vs[i]:despawn() end
             task.wait(1000)",
        );
        let handle = app.world_mut().resource_mut::<Assets<crate::LuaScript>>().add(script);
        app.world_mut().spawn(crate::LuaScripts::new(handle));
        for _ in 0..12 {
            app.update();
        }
        assert_eq!(CLOSED.load(Ordering::Relaxed), 10, "every victim closed");
        let lua = app.world().resource::<LuaRuntime>().lua();
        assert_eq!(crate::modules::instances_with_deps(lua), 0, "entries of forgotten instances");
    }
}
