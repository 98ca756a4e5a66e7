//! Scripts awaiting Rust async functions: a simulated database queried in sequence, in
//! parallel with `Promise.all`, a failing query caught with `pcall`, and an `andThen` chain.
//!
//! ```sh
//! cargo run --example async_queries
//! ```
//!
//! The futures run on Bevy's `AsyncComputeTaskPool`, off the main thread; the frame never waits
//! for them. The example prints a line per answer and exits once the script has finished.

use std::time::{Duration, Instant};

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use serde::{Deserialize, Serialize};

/// A row the simulated database returns; scripts see it as a table `{ id = 1, name = "..." }`.
#[derive(Serialize, Deserialize)]
struct Row {
    id: u32,
    name: String,
}

/// A player profile for the chain.
#[derive(Serialize, Deserialize)]
struct Profile {
    name: String,
    level: u32,
}

/// Simulated latency: a real client would await its network future here instead.
async fn latency(ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        bevy::tasks::futures_lite::future::yield_now().await;
    }
}

fn main() -> AppExit {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / 60.0))),
        AssetPlugin::default(),
        LuaCoroutinesPlugin::default(),
    ))
    .add_lua_async_function("queryDatabase", |sql: String| async move {
        latency(40).await;
        if !sql.starts_with("SELECT") {
            return Err(format!("syntax error near {:?}", sql.split(' ').next().unwrap_or("")));
        }
        let table = sql.rsplit(' ').next().unwrap_or("?").to_string();
        Ok((1..=3).map(|id| Row { id, name: format!("{table}-{id}") }).collect::<Vec<_>>())
    })
    .add_lua_async_function("fetchData", |key: String| async move {
        latency(20).await;
        match key.as_str() {
            "profile" => Ok(Profile { name: "Ada".into(), level: 7 }),
            other => Err(format!("no data under {other:?}")),
        }
    })
    .add_systems(Startup, |mut commands: Commands, assets: Res<AssetServer>| {
        commands.spawn(LuaScripts::new(assets.load("scripts/async/queries.lua")));
    })
    .add_systems(Last, finish);
    app.run()
}

/// Exits once the script has finished (or failed), and after 10 s at the latest.
fn finish(
    runtime: Res<LuaRuntime>,
    mut errors: MessageReader<ScriptError>,
    mut frames: Local<u32>,
    mut exit: MessageWriter<AppExit>,
) {
    *frames += 1;
    for e in errors.read() {
        eprintln!("script error: {}\n{}", e.message, e.traceback);
        exit.write(AppExit::error());
    }
    if *frames > 5 && runtime.live_tasks() == 0 && runtime.pending_instances() == 0 {
        exit.write(AppExit::Success);
    } else if *frames > 600 {
        eprintln!("the script did not finish in 600 frames");
        exit.write(AppExit::error());
    }
}
