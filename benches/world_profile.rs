//! The world benchmark's one-script variant (`benches/world.rs`) as a plain program to run under
//! a profiler, since wall-clock times on a shared machine move too much to compare small changes:
//!
//! ```text
//! cargo bench --bench world_profile --no-run
//! valgrind --tool=callgrind target/release/deps/world_profile-<hash>
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep bevy_lua_coroutines::world
//! ```
//!
//! It spawns `N` entities (environment variable `N`, default 1,000), runs `FRAMES` frames
//! (default 3) after three warm-up frames, and prints the time per entity. `VARIANT` picks what
//! the script does to each entity: `vec` (default) `set("Transform.translation",
//! get("Transform.translation") + Vec3.new(1, 0, 0))`, `x` the same through
//! `"Transform.translation.x"`, `query` the `vec` update in a `world.query("Transform", "Name")`
//! loop, `whole` `get("Transform")` and `set("Transform", { translation =
//! { x = ... } })`, `move`, `move_x` and `move_whole` the world bench's per-entity rows (`N`
//! entities, each running its own script that does the `vec` or `x` update, or the whole-component
//! one (`get("Transform")`, change it, `set("Transform", t)`), and waits a frame; like `wait`, the
//! difference between two `FRAMES` counts over `N` times the extra frames is the cost of one
//! entity-frame), `wait` the scheduler bench's headline instead (`N` tasks that each
//! `task.wait()` every frame, no entities) and `raw` its floor (mlua's `Thread::resume` over `N`
//! threads kept in a Lua table, `FRAMES` rounds), `spawn` the scheduler bench's spawn + despawn
//! row (`FRAMES` cycles of spawning `N` scripted entities, a frame, despawning them, a frame). For those two, the difference between the
//! instruction counts of two runs with different `FRAMES`, over `N` times the extra frames, is the
//! cost of one resumed task. `LINES=1` (Lua 5.4 and LuaJIT; with `BUDGET=none`) prints the Lua VM
//! instructions per source line over the frames after the warm-up, for `wait`, `spawn` and the
//! per-entity rows. Inclusive counts of
//! `world::get` and `world::set` divided by their call counts give the cost of one call; the
//! whole step (`LuaRuntime::run`) divided by `N` times all frames gives the cost per entity.

mod common;

use std::time::Instant;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::{ONE_SCRIPT, add_script, new_app, wait_every_frame_source};

fn main() {
    let var =
        |name: &str, default: usize| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, frames) = (var("N", 1_000), var("FRAMES", 3));
    let variant = std::env::var("VARIANT").unwrap_or_else(|_| "vec".into());
    if variant == "raw" {
        return raw_resumes(n, frames);
    }
    // `BUDGET=none`: no instruction budget, to see what the budget's hook costs a long resume.
    let mut app = if std::env::var("BUDGET").is_ok_and(|b| b == "none") {
        common::new_app_with(common::unbudgeted())
    } else {
        new_app()
    };
    // `LINES=1`: Lua VM instructions per source line over the frames after the warm-up.
    #[cfg(not(feature = "luau"))]
    let lines = std::env::var("LINES").is_ok();
    #[cfg(not(feature = "luau"))]
    if lines {
        common::lines::install(app.world().resource::<LuaRuntime>().lua());
    }
    if variant == "wait" {
        let handle = add_script(&mut app, "bench/wait_every_frame.lua", &wait_every_frame_source(n));
        app.world_mut().spawn(LuaScripts::new(handle));
        for _ in 0..3 {
            app.update();
        }
        #[cfg(not(feature = "luau"))]
        common::lines::counting(lines);
        for _ in 0..frames {
            app.update();
        }
        #[cfg(not(feature = "luau"))]
        common::lines::report();
        assert_eq!(app.world().resource::<common::ErrorCount>().0, 0, "no script error");
        println!("{n} tasks, {frames} frames, variant wait");
        return;
    }
    if variant == "spawn" {
        // `FRAMES` cycles of: spawn `N` scripted entities (`task.wait(1)`), update, despawn them,
        // update (the scheduler bench's spawn + despawn row).
        let handle = add_script(&mut app, "bench/spawn.lua", "task.wait(1)");
        for _ in 0..3 {
            app.update();
        }
        #[cfg(not(feature = "luau"))]
        common::lines::counting(lines);
        for _ in 0..frames {
            let spawned: Vec<Entity> =
                (0..n).map(|_| app.world_mut().spawn(LuaScripts::new(handle.clone())).id()).collect();
            app.update();
            for e in spawned {
                app.world_mut().despawn(e);
            }
            app.update();
        }
        #[cfg(not(feature = "luau"))]
        common::lines::report();
        assert_eq!(app.world().resource::<common::ErrorCount>().0, 0, "no script error");
        println!("{n} entities spawned and despawned, {frames} times, variant spawn");
        return;
    }
    if let Some(body) = match variant.as_str() {
        "move" => Some(
            r#"entity:set("Transform.translation", entity:get("Transform.translation") + Vec3.new(1, 0, 0))"#,
        ),
        "move_x" => {
            Some(r#"entity:set("Transform.translation.x", entity:get("Transform.translation.x") + 1)"#)
        }
        "move_whole" => Some(
            r#"local t = entity:get("Transform"); t.translation = t.translation + Vec3.new(1, 0, 0); entity:set("Transform", t)"#,
        ),
        _ => None,
    } {
        // The world bench's per-entity rows: every entity runs its own script that moves it and
        // waits a frame.
        let source = format!("while true do\n{body}\ntask.wait()\nend");
        let handle = add_script(&mut app, "bench/move.lua", &source);
        for _ in 0..n {
            app.world_mut().spawn((
                Name::new("mover"),
                Transform::default(),
                LuaScripts::new(handle.clone()),
            ));
        }
        for _ in 0..3 {
            app.update();
        }
        #[cfg(not(feature = "luau"))]
        common::lines::counting(lines);
        for _ in 0..frames {
            app.update();
        }
        #[cfg(not(feature = "luau"))]
        common::lines::report();
        assert_eq!(app.world().resource::<common::ErrorCount>().0, 0, "no script error");
        let moved = app.world_mut().query::<&Transform>().iter(app.world()).all(|t| t.translation.x >= 1.0);
        assert!(moved, "every entity moved");
        println!("{n} scripted entities, {frames} frames, variant {variant}");
        return;
    }
    for _ in 0..n {
        app.world_mut().spawn((Name::new("mover"), Transform::default()));
    }
    let script = match variant.as_str() {
        "whole" => ONE_SCRIPT.to_string(),
        "query" => r#"
            while true do
                for e in world.query("Transform", "Name") do
                    e:set("Transform.translation", e:get("Transform.translation") + Vec3.new(1, 0, 0))
                end
                task.wait()
            end"#
            .to_string(),
        "x" => loop_over_movers(r#"e:set("Transform.translation.x", e:get("Transform.translation.x") + 1)"#),
        _ => loop_over_movers(
            r#"e:set("Transform.translation", e:get("Transform.translation") + Vec3.new(1, 0, 0))"#,
        ),
    };
    let handle = add_script(&mut app, "bench/one_script.lua", &script);
    app.world_mut().spawn(LuaScripts::new(handle));
    for _ in 0..3 {
        app.update();
    }
    let start = Instant::now();
    for _ in 0..frames {
        app.update();
    }
    let per_entity = start.elapsed() / (frames * n).max(1) as u32;
    assert_eq!(app.world().resource::<common::ErrorCount>().0, 0, "no script error");
    println!("{n} entities, {frames} frames, variant {variant}: {per_entity:?} per entity (get + set)");
}

/// The floor of `wait`: `n` threads that yield in a loop, kept in a Lua table, each resumed by
/// mlua once per round.
fn raw_resumes(n: usize, rounds: usize) {
    use bevy_lua_coroutines::mlua::{Function, Lua, Table, Thread};
    let lua = Lua::new();
    let f: Function = lua.load("return function() while true do coroutine.yield() end end").eval().unwrap();
    let threads: Table = lua.create_table().unwrap();
    for i in 1..=n {
        threads.raw_set(i, lua.create_thread(f.clone()).unwrap()).unwrap();
    }
    for _ in 0..3 + rounds {
        for i in 1..=n {
            let t: Thread = threads.raw_get(i).unwrap();
            t.resume::<()>(()).unwrap();
        }
    }
    println!("{n} threads, {rounds} rounds, variant raw");
}

/// A script that does `body` to every entity named `mover` (as `e`) once a frame.
fn loop_over_movers(body: &str) -> String {
    format!(
        "local movers = world.findAll(\"mover\")\n\
         while true do\n\
             for i = 1, #movers do local e = movers[i]; {body} end\n\
             task.wait()\n\
         end"
    )
}
