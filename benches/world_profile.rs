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
//! (default 3) after three warm-up frames, and prints the time per entity. Inclusive counts of
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
    let handle = add_script(&mut app, "bench/one_script.lua", ONE_SCRIPT);
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
    println!("{n} entities, {frames} frames: {per_entity:?} per entity (get + set)");
}
