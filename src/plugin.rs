//! The plugin: its configuration, the system sets, and the systems that sync instances and step
//! every script once per frame. It makes the VM with the crate's extensions, in order (the
//! bridge, the world, messages and typed channels, modules, streams), so it is the one place that
//! knows them all.

use bevy::ecs::intern::Interned;
use bevy::ecs::schedule::ScheduleLabel;
use bevy::prelude::*;

use crate::asset::{LuaScript, LuaScriptLoader};
use crate::components::{ChangedScripts, LuaScripts, SyncQueue};
use crate::error::{ScriptError, ScriptPrint};
use crate::instance::{Instances, Scripts};
use crate::runtime::{Extensions, LuaRuntime, StdlibAccess, VmConfig};
pub use crate::sets::LuaCoroutinesSystems;
use crate::sets::StepRun;

/// Lua scripts on entities, run as coroutines one system steps once per frame.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_lua_coroutines::prelude::*;
///
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default()))
///     .add_plugins(LuaCoroutinesPlugin::default())
///     .run();
/// ```
pub struct LuaCoroutinesPlugin {
    /// The schedule the step runs in (default `Update`). Game time is that schedule's `Time`:
    /// virtual time in `Update`, fixed time in `FixedUpdate`.
    pub schedule: Interned<dyn ScheduleLabel>,
    /// Lua instructions one resume may run before the task is stopped with `script exceeded its
    /// instruction budget` (default 10,000,000; `None` for no limit). Checked every 1/16 of
    /// the budget. Under LuaJIT a budget turns the JIT off (compiled code runs no hooks).
    pub instruction_budget: Option<u64>,
    /// Whether the budget counts every instruction of every resume (default false). Off (the
    /// default, under Lua 5.4), scripts run with no hook at all, at full speed: a watchdog thread
    /// looks every 5 ms, and only a resume that has run that long has the count hook armed on it,
    /// after which it may run `instruction_budget` more instructions. Where a runaway is stopped
    /// then depends on the machine's speed. On, every resume counts from its first instruction
    /// (the hook slows scripts by 10-60 %) and a task is stopped at the same instruction run
    /// after run: for replays and tests that need the exact stop point. LuaJIT and Luau always
    /// count exactly.
    pub exact_instruction_count: bool,
    /// The VM's memory limit in bytes (default 512 MiB; `None` for no limit). An allocation past it
    /// fails the Lua call that made it with a memory error. Change it at run time with
    /// [`LuaRuntime::set_memory_limit`](crate::LuaRuntime::set_memory_limit).
    pub memory_limit: Option<usize>,
    /// The standard libraries scripts get (default [`StdlibAccess::Safe`]).
    pub stdlib: StdlibAccess,
    /// Whether `print` also writes its line to stdout (default true). Every printed line is
    /// written as a [`ScriptPrint`] message either way. A closed stdout (a broken pipe) ends the
    /// writing quietly; see [`LuaRuntime::stdout_closed`].
    pub print_to_stdout: bool,
    /// Seeds the private generator `Channel.select` uses to pick among several ready cases
    /// (default `0x5EED`). The same seed replays the same choices run after run; scripts cannot
    /// reseed it (`math.randomseed` is a different generator).
    pub select_seed: u64,
    /// Whether the sync waits for scripts that are still loading (default false). On, a script
    /// always starts on the frame the docs name (one attached before a frame's sync starts in
    /// that frame; one `world.spawn` attaches starts in the next frame's sync), so a run with a
    /// fixed time step replays exactly however long the disk takes. The price: a frame that
    /// attaches a script whose file is not read yet waits for the disk (or the asset source),
    /// and a load that never finishes stops the game. Off, a script starts on the first frame
    /// after its asset loaded, which depends on the disk and the machine's load. Turn it on for
    /// tests, replays and the runner; games that stream scripts in while playing leave it off
    /// (or load scripts up front). It needs Bevy's I/O threads, so not on the web, where loads
    /// only progress between frames.
    pub wait_for_script_loads: bool,
    /// Whether a watcher reloads scripts and modules when their files change (default: on in
    /// debug builds, off in release builds). It watches the `AssetPlugin`'s folder on disk; see
    /// the crate docs' "Modules and hot reload" section for what a reload does.
    pub hot_reload: bool,
    /// How long a changed file must stay untouched before it is reloaded (default 50 ms), so a
    /// save that writes several times, or a burst of saves, reloads once with the last content.
    pub hot_reload_debounce: std::time::Duration,
    /// Where `require("a.b")` looks, in order: templates relative to the assets folder, `?`
    /// standing for the name with dots turned into slashes (default `["scripts/?.lua", "?.lua"]`).
    pub module_path: Vec<String>,
    /// How many times one task may resume in one step (default 10,000). Work that wakes other
    /// work in the same step (a channel ping-pong, an `await` or `task.defer` loop) would
    /// otherwise keep the frame from ending; the tasks of one instance together resume at most
    /// ten times this many. A wake past the cap is carried to the next step, in order, so replays
    /// stay identical. Frame waits (`task.wait()`) are not counted.
    pub max_resumes_per_task: u32,
    /// Wall time one step may take before what is still due is carried to the next frame
    /// (default `None`: every due task resumes every frame). At least one task resumes per step,
    /// and a resume is never cut short by it (the instruction budget does that). Trades
    /// determinism for smooth frames: how much runs per frame then depends on the machine.
    pub step_time_budget: Option<std::time::Duration>,
    /// Live tasks one script instance may have at once (default 10,000; `None` for no limit).
    /// Past it, the `task.spawn`/`defer`/`delay` (or wait) that would make one more raises
    /// `too many live tasks`, so one instance cannot fill the VM with sleeping tasks.
    pub max_tasks_per_instance: Option<usize>,
    /// Memory one script instance may hold, in bytes (default `None`: only the VM's
    /// `memory_limit`). Counted as the growth of the VM's memory during the instance's own
    /// resumes, corrected against the real total after a full collection whenever an instance
    /// looks over its share. An instance past it has all its tasks cancelled and is reported
    /// ([`ScriptErrorKind::Quota`](crate::ScriptErrorKind::Quota)); the others go on. Costs two
    /// memory readings per resume while on.
    pub memory_per_instance: Option<usize>,
}

impl Default for LuaCoroutinesPlugin {
    fn default() -> Self {
        Self {
            schedule: Update.intern(),
            instruction_budget: Some(10_000_000),
            exact_instruction_count: false,
            memory_limit: Some(512 * 1024 * 1024),
            stdlib: StdlibAccess::Safe,
            print_to_stdout: true,
            select_seed: 0x5EED,
            wait_for_script_loads: false,
            hot_reload: cfg!(debug_assertions),
            hot_reload_debounce: std::time::Duration::from_millis(50),
            module_path: crate::modules::DEFAULT_MODULE_PATH.iter().map(|p| p.to_string()).collect(),
            max_resumes_per_task: 10_000,
            step_time_budget: None,
            max_tasks_per_instance: Some(10_000),
            memory_per_instance: None,
        }
    }
}

impl LuaCoroutinesPlugin {
    /// Steps scripts in `schedule` instead of `Update`.
    pub fn in_schedule(mut self, schedule: impl ScheduleLabel) -> Self {
        self.schedule = schedule.intern();
        self
    }
}

impl Plugin for LuaCoroutinesPlugin {
    fn build(&self, app: &mut App) {
        let config = VmConfig {
            stdlib: self.stdlib,
            instruction_budget: self.instruction_budget,
            exact_instruction_count: self.exact_instruction_count,
            memory_limit: self.memory_limit,
            print_to_stdout: self.print_to_stdout,
            select_seed: self.select_seed,
            max_resumes_per_task: self.max_resumes_per_task,
            step_time_budget: self.step_time_budget,
            max_tasks_per_instance: self.max_tasks_per_instance,
            memory_per_instance: self.memory_per_instance,
        };
        let wait_for_loads = self.wait_for_script_loads;
        // The extensions, each installing its Lua API and its part in the step.
        let mut extensions = Extensions::default();
        extensions.add(crate::bridge::install);
        extensions.add(crate::world::install);
        extensions.add(crate::bridge::messages::install);
        let module_path = self.module_path.clone();
        extensions.add(move |lua, base| crate::modules::install(lua, base, &module_path));
        extensions.add(crate::stream::install);
        let runtime = match LuaRuntime::new(&config, self.schedule, &extensions) {
            Ok(r) => r,
            Err(e) => panic!("bevy_lua_coroutines could not create its Lua VM: {e}"),
        };
        if let Err(e) = crate::inspect::install(&runtime) {
            panic!("bevy_lua_coroutines could not install its task inspector: {e}");
        }
        let pending = runtime.pending().clone();
        // Components scripts most often name; any other reflected component works once registered.
        app.register_type::<Transform>().register_type::<Name>();
        app.init_asset::<LuaScript>()
            .init_asset_loader::<LuaScriptLoader>()
            .add_message::<ScriptError>()
            .add_message::<ScriptPrint>()
            .init_resource::<SyncQueue>()
            .init_resource::<ChangedScripts>()
            .insert_resource(runtime)
            .init_resource::<Instances>()
            .add_observer(move |on: On<Insert, LuaScripts>, mut queue: ResMut<SyncQueue>| {
                queue.0.push(on.entity);
                pending.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .add_observer(|on: On<Remove, LuaScripts>, mut queue: ResMut<SyncQueue>| queue.0.push(on.entity))
            .configure_sets(self.schedule, (LuaCoroutinesSystems::Sync, LuaCoroutinesSystems::Step).chain())
            .add_systems(
                self.schedule,
                (
                    crate::reload::apply_file_changes
                        .in_set(LuaCoroutinesSystems::Sync)
                        .before(note_changed_scripts),
                    note_changed_scripts.in_set(LuaCoroutinesSystems::Sync),
                    (move |world: &mut World| sync_instances(world, wait_for_loads))
                        .in_set(LuaCoroutinesSystems::Sync)
                        .after(note_changed_scripts),
                    step_system.in_set(LuaCoroutinesSystems::Step).in_set(StepRun),
                ),
            );
        crate::stream::add_read_file_stream(app);
        // `AssetPlugin` comes first (the asset types need it), so its folder is known here.
        start_watching(app, self.hot_reload, self.hot_reload_debounce);
    }
}

/// Points `require` at the assets folder on disk and, with hot reload on, starts the watcher.
fn start_watching(app: &mut App, hot_reload: bool, debounce: std::time::Duration) {
    let root = crate::asset::assets_folder(app);
    crate::asset::set_folder(app.world().resource::<LuaRuntime>().lua(), root.clone());
    if !hot_reload {
        return;
    }
    match crate::reload::watch(&root, debounce) {
        Ok(watcher) => {
            app.insert_resource(watcher);
        }
        Err(e) => warn!("bevy_lua_coroutines: hot reload is off: could not watch {}: {e}", root.display()),
    }
}

fn note_changed_scripts(
    mut events: MessageReader<AssetEvent<LuaScript>>,
    mut changed: ResMut<ChangedScripts>,
) {
    for event in events.read() {
        match *event {
            AssetEvent::Modified { id } => changed.modified.push(id),
            AssetEvent::Removed { id } => changed.removed.push(id),
            _ => {}
        }
    }
}

/// Applies queued `LuaScripts` changes and starts instances whose script is loaded (with
/// `wait_for_loads`, every new instance: the sync waits for scripts still loading).
fn sync_instances(world: &mut World, wait_for_loads: bool) {
    let queue = std::mem::take(&mut world.resource_mut::<SyncQueue>().0);
    let changed = std::mem::take(&mut *world.resource_mut::<ChangedScripts>());
    world.resource_scope(|world, runtime: Mut<LuaRuntime>| {
        runtime.pending().queued.store(0, std::sync::atomic::Ordering::Relaxed);
        world.resource_scope(|world, mut instances: Mut<Instances>| {
            let mut live = Scripts::new(&runtime, &mut instances);
            for id in changed.removed {
                live.forget_compiled(id);
            }
            let scripts = world.resource::<Assets<LuaScript>>();
            let mut seen = bevy::platform::collections::HashSet::<AssetId<LuaScript>>::default();
            for id in changed.modified {
                if seen.insert(id) {
                    live.script_changed(id, scripts);
                }
            }
            let mut seen = bevy::platform::collections::HashSet::<Entity>::default();
            for entity in queue {
                if seen.insert(entity) {
                    live.sync_entity(world, entity);
                }
            }
            if wait_for_loads {
                live.wait_for_loads(world);
            }
            let scripts = world.resource::<Assets<LuaScript>>();
            let server = world.resource::<AssetServer>();
            live.start_pending(scripts, server);
        });
        if let Err(e) = runtime.compact_tables() {
            error!("bevy_lua_coroutines: could not compact the task tables: {e}");
        }
    });
}

/// Runs one frame of scripts ([`crate::step::frame`]) with the rest of the world reachable from
/// them, and writes their errors and prints as messages.
fn step_system(world: &mut World) {
    let (game, delta) = {
        let time = world.resource::<Time>();
        (time.elapsed(), time.delta())
    };
    let real = world.get_resource::<Time<Real>>().map_or(game, |t| t.elapsed());
    // The runtime is taken out of the world for the step, so scripts can reach the rest of it.
    let out = world.resource_scope(|world, runtime: Mut<LuaRuntime>| {
        crate::world::access::scoped(runtime.lua(), world, || crate::step::frame(&runtime, game, delta, real))
    });
    world.write_message_batch(out.errors);
    world.write_message_batch(out.prints);
}
