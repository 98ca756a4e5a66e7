//! Hot reload: a lamp script and the palette module it requires, reloaded when you save them.
//!
//! ```text
//! cargo run --example hot_reload [-- --seconds N]
//! ```
//!
//! While it runs, edit `assets/scripts/hot_reload/lamp.lua` (its `every` or its message) or
//! `assets/scripts/hot_reload/palette.lua` (its colors) and save: the lamp reloads, keeps its
//! blink count, and says so. Save a syntax error and the error is printed while the last good
//! version keeps blinking. Runs for 120 seconds unless `--seconds` says otherwise.

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut seconds = 120.0;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse::<f64>().ok())) {
            ("--seconds", Some(s)) if s >= 0.0 => seconds = s,
            _ => {
                eprintln!("usage: hot_reload [--seconds N]");
                std::process::exit(2);
            }
        }
    }

    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        // On in debug builds by default; asked for here so a release build reloads too.
        LuaCoroutinesPlugin { hot_reload: true, ..default() },
    ))
    .add_systems(Startup, |mut commands: Commands, server: Res<AssetServer>| {
        commands.spawn((Name::new("lamp"), LuaScripts::new(server.load("scripts/hot_reload/lamp.lua"))));
    })
    .add_systems(Last, |mut errors: MessageReader<ScriptError>| {
        for e in errors.read() {
            eprintln!("script error: {}", e.message);
        }
    });
    println!("Edit assets/scripts/hot_reload/lamp.lua or palette.lua and save; Ctrl+C to stop.");

    // Ten frames a second of wall time, for `seconds`.
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut next = Instant::now();
    while Instant::now() < end {
        app.update();
        next += Duration::from_millis(100);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
