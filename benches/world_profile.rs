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
//! { x = ... } })`. Inclusive counts of
//! `world::get` and `world::set` divided by their call counts give the cost of one call; the
//! whole step (`LuaRuntime::run`) divided by `N` times all frames gives the cost per entity.

mod common;

use std::time::Instant;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::{ONE_SCRIPT, add_script, new_app};

fn main() {
    let var =
        |name: &str, default: usize| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, frames) = (var("N", 1_000), var("FRAMES", 3));
    let mut app = new_app();
    for _ in 0..n {
        app.world_mut().spawn((Name::new("mover"), Transform::default()));
    }
    let variant = std::env::var("VARIANT").unwrap_or_else(|_| "vec".into());
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
