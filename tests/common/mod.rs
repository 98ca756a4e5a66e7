//! Shared set-up for the integration tests: an app with a fixed time step, scripts from strings,
//! and collectors for what scripts print and the errors they raise.
#![allow(dead_code)]

use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_lua_coroutines::prelude::*;

/// The tests run under LuaJIT (the `luajit` feature).
pub const LUAJIT: bool = cfg!(feature = "luajit");

/// The tests run under Luau (the `luau` feature).
pub const LUAU: bool = cfg!(feature = "luau");

/// Only Lua 5.4 has to-be-closed variables (`local x <close> = ...`).
pub const TO_BE_CLOSED: bool = !LUAJIT && !LUAU;

/// The value this flavour's expectation takes: Lua 5.4's, LuaJIT's or Luau's.
pub fn per_flavour<T>(lua54: T, luajit: T, luau: T) -> T {
    if LUAJIT {
        luajit
    } else if LUAU {
        luau
    } else {
        lua54
    }
}

/// How `print` shows the float `v`: Lua 5.4 keeps the float's `.0` (`5.0`), LuaJIT and Luau,
/// which have no integer subtype, print a whole number without it (`5`).
pub fn float(v: f64) -> String {
    if LUAJIT || LUAU { format!("{v}") } else { format!("{v:?}") }
}

/// `src` for this flavour: where there are no to-be-closed variables (LuaJIT, Luau), each line
/// declaring one is left blank, so the rest still loads and keeps its line numbers.
pub fn closable(src: &str) -> String {
    if TO_BE_CLOSED {
        return src.to_string();
    }
    src.split('\n')
        .map(|line| if line.contains("<close>") { "" } else { line })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `lines` without those a `__close` prints (they contain `closed`) where there are no
/// to-be-closed variables.
pub fn closed_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    lines.into_iter().filter(|l| TO_BE_CLOSED || !l.contains("closed")).map(str::to_string).collect()
}

/// The fixed step every test uses: 1/60 s... as whole nanoseconds (16,666,667 ns).
pub const DT: Duration = Duration::from_nanos(16_666_667);

/// Everything scripts printed, in order.
#[derive(Resource, Default)]
pub struct Printed(pub Vec<String>);

/// Every script error, in order.
#[derive(Resource, Default)]
pub struct Errors(pub Vec<ScriptError>);

fn collect(
    mut prints: MessageReader<ScriptPrint>,
    mut errors: MessageReader<ScriptError>,
    mut printed: ResMut<Printed>,
    mut errs: ResMut<Errors>,
) {
    printed.0.extend(prints.read().map(|p| p.line.clone()));
    errs.0.extend(errors.read().cloned());
}

/// An app with the plugin (hot reload off, script loads awaited so every run starts scripts on
/// the same frames), a fixed `DT` per update, and the collectors.
pub fn create_app() -> App {
    create_app_with(test_plugin())
}

/// The plugin configuration of [`create_app`].
pub fn test_plugin() -> LuaCoroutinesPlugin {
    LuaCoroutinesPlugin {
        print_to_stdout: false,
        hot_reload: false,
        wait_for_script_loads: true,
        ..default()
    }
}

/// [`create_app`] with a custom plugin configuration.
pub fn create_app_with(plugin: LuaCoroutinesPlugin) -> App {
    create_app_in("assets", plugin)
}

/// [`create_app_with`] whose assets folder is `folder`.
pub fn create_app_in(folder: &str, plugin: LuaCoroutinesPlugin) -> App {
    set_up(App::new(), folder, plugin)
}

/// Adds to `app` what [`create_app_in`] adds (for an app that registered asset sources first,
/// which must come before `AssetPlugin`).
pub fn set_up(mut app: App, folder: &str, plugin: LuaCoroutinesPlugin) -> App {
    app.add_plugins((MinimalPlugins, AssetPlugin { file_path: folder.into(), ..default() }))
        .add_plugins(plugin)
        .insert_resource(TimeUpdateStrategy::ManualDuration(DT))
        .init_resource::<Printed>()
        .init_resource::<Errors>()
        .add_systems(Last, collect);
    app
}

/// Adds a script asset named `path` with `source`.
pub fn script(app: &mut App, path: &str, source: &str) -> Handle<LuaScript> {
    app.world_mut().resource_mut::<Assets<LuaScript>>().add(LuaScript::new(path, source))
}

/// Gives the script asset `handle` new source, as a saved file would (its instances reload).
pub fn replace_source(app: &mut App, handle: &Handle<LuaScript>, source: &str) {
    let mut scripts = app.world_mut().resource_mut::<Assets<LuaScript>>();
    let mut script = scripts.get_mut(handle).expect("the script asset exists");
    script.source = source.into();
}

/// Spawns an entity running `source` (named `path`).
pub fn spawn_script(app: &mut App, path: &str, source: &str) -> Entity {
    let handle = script(app, path, source);
    app.world_mut().spawn(LuaScripts::new(handle)).id()
}

/// Runs `frames` updates.
pub fn run(app: &mut App, frames: usize) {
    for _ in 0..frames {
        app.update();
    }
}

/// Updates until `done` holds, at most `max` frames; returns the frames run.
pub fn run_until(app: &mut App, max: usize, mut done: impl FnMut(&mut App) -> bool) -> usize {
    for frame in 1..=max {
        app.update();
        if done(app) {
            return frame;
        }
    }
    panic!("condition not reached within {max} frames");
}

/// What scripts printed so far.
pub fn printed(app: &App) -> Vec<String> {
    app.world().resource::<Printed>().0.clone()
}

/// Errors so far.
pub fn errors(app: &App) -> Vec<ScriptError> {
    app.world().resource::<Errors>().0.clone()
}

/// Takes what scripts printed so far.
pub fn take_printed(app: &mut App) -> Vec<String> {
    std::mem::take(&mut app.world_mut().resource_mut::<Printed>().0)
}

/// Bytes the VM holds after two full collections.
pub fn collected_memory(app: &App) -> usize {
    let runtime = app.world().resource::<LuaRuntime>();
    runtime.lua().gc_collect().unwrap();
    runtime.lua().gc_collect().unwrap();
    runtime.used_memory()
}

/// Live tasks in the scheduler.
pub fn live_tasks(app: &App) -> usize {
    app.world().resource::<LuaRuntime>().live_tasks()
}

/// Runs `src` as one script (`scripts/test.lua`) for `frames` frames, checks it raised nothing,
/// and returns what it printed.
pub fn output(src: &str, frames: usize) -> Vec<String> {
    let mut app = create_app();
    spawn_script(&mut app, "scripts/test.lua", src);
    run(&mut app, frames);
    let errs = errors(&app);
    assert!(errs.is_empty(), "unexpected script errors: {errs:#?}");
    printed(&app)
}

/// Runs frames until the scripts printed `lines` lines (bounded: the pool threads answer fast).
pub fn run_until_printed(app: &mut App, lines: usize) {
    for _ in 0..2000 {
        app.update();
        if printed(app).len() >= lines || !errors(app).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("scripts printed {:?}, errors {:?}", printed(app), errors(app));
}

/// Spawns `n` entities whose script sleeps, runs two frames, and despawns them all: afterwards the
/// step rebuilds its task tables to let them shrink (a mass despawn, as a level change makes).
pub fn come_and_go(app: &mut App, n: usize) {
    let sleeper = script(app, "scripts/sleeper.lua", "task.wait(1000)");
    let many: Vec<Entity> =
        (0..n).map(|_| app.world_mut().spawn(LuaScripts::new(sleeper.clone())).id()).collect();
    run(app, 2);
    for e in many {
        app.world_mut().despawn(e);
    }
}
