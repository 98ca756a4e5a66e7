//! Channels between Rust and scripts: a wave spawner system sends spawn orders over a typed
//! channel to a director script, which fans commands out to enemy tasks over Lua channels; the
//! enemies report their deaths back to Rust as Bevy messages.
//!
//! ```sh
//! cargo run --example channels
//! ```
//!
//! Headless and deterministic (a fixed 1/60 s per frame); exits once every enemy has died.

use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_lua_coroutines::prelude::*;
use serde::{Deserialize, Serialize};

/// What the spawner orders; the director sees `{ wave = 1, kind = "goblins", count = 3 }`.
#[derive(Serialize, Deserialize)]
struct SpawnOrder {
    wave: u32,
    kind: String,
    count: u32,
}

/// Written by enemy scripts (`Messages.write("EnemyDied", { wave = 1, id = 2 })`).
#[derive(Message, Serialize, Deserialize)]
struct EnemyDied {
    wave: u32,
    id: u32,
}

const WAVES: [(&str, u32); 3] = [("goblins", 2), ("orcs", 3), ("trolls", 1)];

/// Waves sent so far, and deaths seen.
#[derive(Resource, Default)]
struct Tally {
    waves_sent: usize,
    died: u32,
}

fn main() -> AppExit {
    App::new()
        .add_plugins((
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::ZERO)),
            AssetPlugin::default(),
            LuaCoroutinesPlugin::default(),
        ))
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_nanos(16_666_667)))
        .add_lua_channel::<SpawnOrder>("orders", 4)
        .add_message::<EnemyDied>()
        .add_script_message::<EnemyDied>("EnemyDied")
        .init_resource::<Tally>()
        .add_systems(Startup, |mut commands: Commands, assets: Res<AssetServer>| {
            commands.spawn(LuaScripts::new(assets.load("scripts/channels/director.lua")));
        })
        .add_systems(Update, spawn_waves.before(LuaCoroutinesSystems::Sync))
        .add_systems(Update, (count_deaths, report_errors).after(LuaCoroutinesSystems::Step))
        .run()
}

/// Every two seconds of game time, orders the next wave.
fn spawn_waves(time: Res<Time>, orders: Res<LuaChannel<SpawnOrder>>, mut tally: ResMut<Tally>) {
    let due = (time.elapsed().as_secs_f64() / 2.0) as usize;
    while tally.waves_sent < WAVES.len() && tally.waves_sent < due {
        let (kind, count) = WAVES[tally.waves_sent];
        let wave = tally.waves_sent as u32 + 1;
        if orders.sender().try_send(SpawnOrder { wave, kind: kind.into(), count }).is_err() {
            return; // the director is behind: try again next frame
        }
        println!("[rust] spawner orders wave {wave}: {count} {kind}");
        tally.waves_sent += 1;
    }
}

/// Reads the deaths scripts wrote this frame; exits once every ordered enemy has died.
fn count_deaths(
    mut deaths: MessageReader<EnemyDied>,
    mut tally: ResMut<Tally>,
    mut exit: MessageWriter<AppExit>,
) {
    for death in deaths.read() {
        tally.died += 1;
        println!("[rust] enemy {}.{} died ({} so far)", death.wave, death.id, tally.died);
    }
    let total: u32 = WAVES.iter().map(|w| w.1).sum();
    if tally.died == total {
        println!("[rust] all {total} enemies are gone");
        exit.write(AppExit::Success);
    }
}

fn report_errors(
    mut errors: MessageReader<ScriptError>,
    mut exit: MessageWriter<AppExit>,
    mut frames: Local<u32>,
) {
    for e in errors.read() {
        eprintln!("script error: {}\n{}", e.message, e.traceback);
        exit.write(AppExit::error());
    }
    *frames += 1;
    if *frames > 60 * 20 {
        eprintln!("the scene did not end in 20 s of game time");
        exit.write(AppExit::error());
    }
}
