//! A headless scripted scene: two guards patrol (one script on two entities), moving their
//! `Transform` and firing bullets that scripts spawn and that despawn themselves; a spawner sends
//! waves of short-lived enemies, and a light blinks, each a Lua script running as coroutines.
//!
//! ```sh
//! cargo run --example demo
//! ```
//!
//! The scripts are in `assets/scripts/demo/`. The app has no window: it steps a fixed 1/60 s per
//! frame as fast as the CPU allows, prints the same lines on every run, and exits with code 0 once
//! every script has finished (about 10 s of game time), or with code 1 if a script failed.
//!
//! `cargo run --example demo -- --inspect` also prints the task list to stderr two seconds into
//! the scene: what every task waits on, where, and what it has cost so far.

use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::asset::LoadState;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_lua_coroutines::prelude::*;

/// One frame: 1/60 s in whole nanoseconds, so game time is the same on every run.
const DT: Duration = Duration::from_nanos(16_666_667);

/// The scene ends by itself after about 600 frames; this bound stops it if a script hangs.
const MAX_FRAMES: u32 = 60 * 30;

/// The scene's scripts, loaded at startup.
#[derive(Resource)]
struct SceneScripts {
    guard: Handle<LuaScript>,
    /// Spawned by the guards' scripts (`world.spawn`); loaded up front so each bullet's script
    /// starts on the frame after its spawn, the same on every run.
    bullet: Handle<LuaScript>,
    spawner: Handle<LuaScript>,
    light: Handle<LuaScript>,
}

/// Present once every script has loaded and the scripted entities exist.
#[derive(Resource)]
struct SceneStarted;

/// Script errors reported so far; any makes the exit code 1.
#[derive(Resource, Default)]
struct ScriptErrors(usize);

fn main() -> AppExit {
    App::new()
        .add_plugins((
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::ZERO)),
            AssetPlugin::default(),
            LuaCoroutinesPlugin::default(),
        ))
        .insert_resource(TimeUpdateStrategy::ManualDuration(DT))
        .init_resource::<ScriptErrors>()
        // Loading from disk takes a number of frames that depends on the machine. Holding the
        // script step (and with it the frame counter scripts see) and game time until everything
        // has loaded makes the output the same on every run.
        .configure_sets(Update, LuaCoroutinesSystems::Step.run_if(resource_exists::<SceneStarted>))
        .add_systems(Startup, load_scene)
        .add_systems(PreUpdate, start_scene.run_if(not(resource_exists::<SceneStarted>)))
        .add_systems(Last, (report_errors, end_scene.run_if(resource_exists::<SceneStarted>)).chain())
        .run()
}

/// Starts loading the scripts and pauses game time until they are in.
fn load_scene(mut commands: Commands, assets: Res<AssetServer>, mut time: ResMut<Time<Virtual>>) {
    commands.insert_resource(SceneScripts {
        guard: assets.load("scripts/demo/guard.lua"),
        bullet: assets.load("scripts/demo/bullet.lua"),
        spawner: assets.load("scripts/demo/spawner.lua"),
        light: assets.load("scripts/demo/light.lua"),
    });
    time.pause();
}

/// Once every script has loaded, spawns the scripted entities and lets game time run.
fn start_scene(
    mut commands: Commands,
    scripts: Res<SceneScripts>,
    assets: Res<AssetServer>,
    mut time: ResMut<Time<Virtual>>,
    mut exit: MessageWriter<AppExit>,
) {
    let handles = [&scripts.guard, &scripts.bullet, &scripts.spawner, &scripts.light];
    for handle in handles {
        match assets.load_state(handle) {
            LoadState::Loaded => {}
            LoadState::Failed(err) => {
                eprintln!("could not load a script: {err}");
                exit.write(AppExit::error());
                return;
            }
            _ => return,
        }
    }
    println!("demo: two guards, a spawner and a light; one frame is 1/60 s of game time");
    // Both guards run the same script, each as its own instance with its own globals and `state`;
    // each picks its route by its `Name` and starts where its `Transform` says.
    commands.spawn((
        LuaScripts::new(scripts.guard.clone()),
        Name::new("north guard"),
        Transform::from_xyz(0.0, 0.0, 0.0),
    ));
    commands.spawn((
        LuaScripts::new(scripts.guard.clone()),
        Name::new("south guard"),
        Transform::from_xyz(0.0, -2.0, 0.0),
    ));
    commands.spawn(LuaScripts::new(scripts.spawner.clone()));
    commands.spawn(LuaScripts::new(scripts.light.clone()));
    commands.insert_resource(SceneStarted);
    time.unpause();
}

/// Prints script errors (the app has no log output) and counts them.
fn report_errors(mut errors: MessageReader<ScriptError>, mut count: ResMut<ScriptErrors>) {
    for error in errors.read() {
        count.0 += 1;
        eprintln!("script error in {} ({}): {}", error.script, error.entity, error.message);
        if !error.traceback.is_empty() {
            eprintln!("{}", error.traceback);
        }
    }
}

/// Ends the app once every task of every script has finished, or after `MAX_FRAMES`.
fn end_scene(
    runtime: Res<LuaRuntime>,
    time: Res<Time<Virtual>>,
    errors: Res<ScriptErrors>,
    mut frames: Local<u32>,
    mut exit: MessageWriter<AppExit>,
) {
    *frames += 1;
    if *frames == 1 && std::env::args().any(|a| a == "--inspect") {
        runtime.set_tracking(true);
    }
    if *frames == 120 && runtime.tracking() {
        eprint!("task list at frame 120:\n{}", bevy_lua_coroutines::format_task_list(&runtime.task_list()));
    }
    let live = runtime.live_tasks();
    if live == 0 {
        let seconds = time.elapsed().as_secs_f64();
        println!("scene over: every script finished by frame {} ({seconds:.2}s of game time)", *frames);
        if errors.0 == 0 {
            exit.write(AppExit::Success);
        } else {
            eprintln!("{} script error(s)", errors.0);
            exit.write(AppExit::error());
        }
    } else if *frames >= MAX_FRAMES {
        eprintln!("scene still running after {MAX_FRAMES} frames ({live} tasks waiting); stopping");
        exit.write(AppExit::error());
    }
}
