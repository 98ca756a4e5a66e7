//! Hot reload: the latency from saving a script to the first output of its new code, through the
//! real file watcher, and the step time of the frame that reloads one script running on 1,000
//! entities.
//!
//! ```text
//! cargo bench --bench reload
//! RELOAD_N=5000 cargo bench --bench reload   # only the reload frame, with 5,000 instances
//! ```
//!
//! Not a criterion benchmark: a reload latency is a wall-clock span that includes the watcher's
//! debounce and the operating system's file events, so it is sampled as it happens, 20 edits per
//! configuration, and reported as a median and a maximum. Frames are paced at 60 per second of
//! wall time, as in a game, so the latency includes waiting for the next frame.

mod common;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::{add_script, fmt_time, median, new_app_in, new_app_with, plugin, script_errors, verdict};

const EDITS: usize = 20;
const FRAME: Duration = Duration::from_nanos(16_666_667);

#[derive(Resource, Default)]
struct Seen(Vec<String>);

/// Median and maximum latency (ns) from a file write to the new code's first printed line.
fn latency(debounce: Duration) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("scripts/live.lua");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let source = |i: usize| format!("print('edit {i}')\nwhile true do task.wait(1) end\n");
    std::fs::write(&file, source(0)).unwrap();
    let mut app = new_app_in(
        dir.path().to_str().unwrap(),
        LuaCoroutinesPlugin { hot_reload: true, hot_reload_debounce: debounce, ..plugin() },
    );
    app.init_resource::<Seen>().add_systems(
        Last,
        |mut prints: MessageReader<ScriptPrint>, mut seen: ResMut<Seen>| {
            seen.0.extend(prints.read().map(|p| p.line.clone()));
        },
    );
    let handle = app.world().resource::<AssetServer>().load("scripts/live.lua");
    app.world_mut().spawn(LuaScripts::new(handle));
    let mut next = Instant::now();
    // Sleep to the next frame's start, then update, so a line is seen as soon as it is printed.
    let mut frame = |app: &mut App| {
        next += FRAME;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        app.update();
    };
    let wait_for = |app: &mut App, line: &str, frame: &mut dyn FnMut(&mut App)| {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !app.world().resource::<Seen>().0.iter().any(|l| l == line) {
            assert!(Instant::now() < give_up, "never saw {line:?}");
            frame(app);
        }
    };
    wait_for(&mut app, "edit 0", &mut frame);
    let mut samples = Vec::with_capacity(EDITS);
    for i in 1..=EDITS {
        // Between edits, a few quiet frames, so no edit lands inside the previous one's debounce.
        for _ in 0..10 {
            frame(&mut app);
        }
        let written = Instant::now();
        std::fs::write(&file, source(i)).unwrap();
        wait_for(&mut app, &format!("edit {i}"), &mut frame);
        samples.push(written.elapsed().as_nanos() as f64);
    }
    assert_eq!(script_errors(&app), 0, "the edits ran cleanly");
    let max = samples.iter().copied().fold(0.0, f64::max);
    (median(&samples), max)
}

/// Median time (ns) of an ordinary frame and of the frame that reloads one script running on
/// `entities` entities (each instance waiting on a timer), both whole `app.update()`s.
fn reload_frame(entities: usize) -> (f64, f64) {
    let mut app = new_app_with(plugin());
    let source = |i: usize| format!("state.version = {i}\nwhile true do task.wait(1000) end\n");
    let handle = add_script(&mut app, "scripts/crowd.lua", &source(0));
    for _ in 0..entities {
        app.world_mut().spawn(LuaScripts::new(handle.clone()));
    }
    common::update(&mut app, 5);
    let mut ordinary = Vec::new();
    let mut reloads = Vec::new();
    for i in 1..=EDITS {
        for _ in 0..5 {
            let t = Instant::now();
            app.update();
            ordinary.push(t.elapsed().as_nanos() as f64);
        }
        app.world_mut().resource_mut::<Assets<LuaScript>>().get_mut(&handle).unwrap().source =
            source(i).into();
        // The asset's `Modified` event reaches the plugin in a later frame: the reload frame is
        // the one that resumes the new chunks (nothing else resumes: every task waits 1,000 s).
        let reload = (0..5).find_map(|_| {
            let before = common::resumed(&app);
            let t = Instant::now();
            app.update();
            let ns = t.elapsed().as_nanos() as f64;
            (common::resumed(&app) > before).then_some(ns)
        });
        reloads.push(reload.expect("the reload happened within 5 frames"));
    }
    assert_eq!(script_errors(&app), 0, "the reloads ran cleanly");
    assert_eq!(app.world().resource::<LuaRuntime>().live_tasks(), entities, "one task per instance");
    (median(&ordinary), median(&reloads))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe every bench binary.
    }
    println!("Hot reload ({EDITS} edits each, frames paced at 60 per second)");
    println!("| Measurement | Median | Max | Target |");
    println!("|---|---|---|---|");
    for ms in [50, 10].into_iter().filter(|_| std::env::var("RELOAD_N").is_err()) {
        let (med, max) = latency(Duration::from_millis(ms));
        println!(
            "| write → first output of the new code, debounce {ms} ms | {} | {} | < 150 ms median: {} |",
            fmt_time(med),
            fmt_time(max),
            verdict(med < 150e6)
        );
    }
    let n: usize = std::env::var("RELOAD_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let (ordinary, reload) = reload_frame(n);
    println!("| frame with {n} instances waiting (ordinary) | {} | | |", fmt_time(ordinary));
    println!(
        "| frame that reloads the script of those {n} instances | {} ({:.0}x ordinary) | | none |",
        fmt_time(reload),
        reload / ordinary
    );
}
