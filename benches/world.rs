//! World access benchmark: every frame, each of 10,000 entities moves one step east, done by a
//! plain Rust system, by scripts through each shape of the world API, and beside the raw floor of
//! a bare mlua resume, all in the same run.
//!
//! Run with `cargo bench --bench world`. Criterion prints its own estimates first; the summary at
//! the end comes from interleaved rounds (each variant's frame timed back to back in every round,
//! so a noisy, shared machine slows them alike): medians over the rounds, and each ratio the median
//! of the per-round ratios. Variants (default plugin settings: instruction budget and memory limit
//! on):
//!
//! - `rust`: a system with `Query<&mut Transform>` adds 1 to `translation.x` (the floor);
//! - `bare_resume`: 10,000 bare coroutines resumed from Rust (mlua `Thread::resume`, the floor of
//!   one resume per entity);
//! - `wait_only`: 10,000 scripted entities that only count and `task.wait()` (the crate's cost of
//!   one resume per entity, without the world);
//! - `move_vec`: each scripted entity does `entity:set("Transform.translation",
//!   entity:get("Transform.translation") + Vec3.new(1, 0, 0))` and waits;
//! - `move_x`: the same through the path `"Transform.translation.x"`;
//! - `query_loop`: one script loops `for e in world.query("Transform", "Mover")` doing `move_vec`'s
//!   update on each;
//! - `whole`: each scripted entity gets the whole `Transform`, adds 1 and sets it back;
//! - `vec_math` / `plain_math`: one script computes `a + b * 2` 10,000 times a frame with `Vec3`
//!   values, and the same on plain Lua tables `{ x = .., y = .., z = .. }`.
//!
//! After the table: Lua memory over 1,000 frames of `vec_math` and `move_vec`, and the resident
//! memory each scripted `move_vec` entity adds.
//!
//! Without `--bench` (e.g. `cargo test --benches`) criterion runs every benchmark once and the own
//! measurements take fewer rounds, so the binary doubles as a quick smoke test.

mod common;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::{
    Part, Plan, RawCoroutines, add_script, criterion_group_config, fmt_time, interleave, median, median_by,
    new_app, update,
};
use criterion::Criterion;

/// Entities updated per frame.
const N: usize = 10_000;

/// Marks the entities the query variant moves.
#[derive(Component, Reflect, Default)]
#[reflect(Component, Default)]
struct Mover;

/// `N` entities with a `Transform`, a `Name` and a `Mover`, each running `script` if given.
fn spawn_movers(app: &mut App, scripted: Option<&Handle<LuaScript>>) {
    app.register_type::<Mover>();
    for _ in 0..N {
        let mut e = app.world_mut().spawn((Name::new("mover"), Transform::default(), Mover));
        if let Some(script) = scripted {
            e.insert(LuaScripts::new(script.clone()));
        }
    }
}

/// The floor: a plain Rust system does the update.
fn rust_app() -> App {
    let mut app = new_app();
    app.add_systems(Update, |mut q: Query<&mut Transform>| {
        q.iter_mut().for_each(|mut t| t.translation.x += 1.0)
    });
    spawn_movers(&mut app, None);
    app
}

/// Every mover runs `source` (a loop that moves it and waits a frame).
fn per_entity_app(name: &str, source: &str) -> App {
    let mut app = new_app();
    let handle = add_script(&mut app, &format!("bench/{name}.lua"), source);
    spawn_movers(&mut app, Some(&handle));
    app
}

/// One script runs `source`; the movers have no script.
fn one_script_app(name: &str, source: &str) -> App {
    let mut app = new_app();
    spawn_movers(&mut app, None);
    let handle = add_script(&mut app, &format!("bench/{name}.lua"), source);
    app.world_mut().spawn(LuaScripts::new(handle));
    app
}

const MOVE_VEC: &str = r#"
    while true do
        entity:set("Transform.translation", entity:get("Transform.translation") + Vec3.new(1, 0, 0))
        task.wait()
    end
"#;

const MOVE_X: &str = r#"
    while true do
        entity:set("Transform.translation.x", entity:get("Transform.translation.x") + 1)
        task.wait()
    end
"#;

const WHOLE: &str = r#"
    while true do
        local t = entity:get("Transform")
        t.translation = t.translation + Vec3.new(1, 0, 0)
        entity:set("Transform", t)
        task.wait()
    end
"#;

const WAIT_ONLY: &str = r#"
    state.n = 0
    while true do
        state.n = state.n + 1
        task.wait()
    end
"#;

const QUERY_LOOP: &str = r#"
    while true do
        for e in world.query("Transform", "Mover") do
            e:set("Transform.translation", e:get("Transform.translation") + Vec3.new(1, 0, 0))
        end
        task.wait()
    end
"#;

/// `a + b * 2`, `N` times a frame, on `Vec3` values (the result kept, so nothing is optimised
/// away and the collector sees one live vector).
const VEC_MATH: &str = r#"
    local a, b = Vec3.new(1, 2, 3), Vec3.new(0.5, 0.25, 0.125)
    while true do
        local c
        for _ = 1, 10000 do c = a + b * 2 end
        state.c = c
        task.wait()
    end
"#;

/// [`VEC_MATH`] on plain tables: the same result, one table per `a + b * 2`.
const PLAIN_MATH: &str = r#"
    local a, b = { x = 1, y = 2, z = 3 }, { x = 0.5, y = 0.25, z = 0.125 }
    while true do
        local c
        for _ = 1, 10000 do c = { x = a.x + b.x * 2, y = a.y + b.y * 2, z = a.z + b.z * 2 } end
        state.c = c
        task.wait()
    end
"#;

/// Warms an app up and checks that one frame moves every mover by exactly one step (`moves`), or
/// at least that no script failed.
fn checked(mut app: App, name: &str, moves: bool) -> App {
    update(&mut app, 5);
    let xs = |app: &mut App| {
        let mut q = app.world_mut().query_filtered::<&Transform, With<Mover>>();
        q.iter(app.world()).map(|t| t.translation.x).collect::<Vec<f32>>()
    };
    let before = xs(&mut app);
    app.update();
    let after = xs(&mut app);
    assert_eq!(after.len(), N, "{name}: every mover exists");
    if moves {
        assert!(
            before.iter().zip(&after).all(|(b, a)| *a == b + 1.0),
            "{name}: one frame moves every entity one step"
        );
    }
    assert_eq!(app.world().resource::<common::ErrorCount>().0, 0, "{name}: no script error");
    app
}

/// The process's resident memory in bytes (Linux; 0 elsewhere).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn lua_memory(app: &App) -> usize {
    app.world().resource::<LuaRuntime>().used_memory()
}

/// Lua memory after 0, 250, 500, 750 and 1,000 more frames.
fn memory_over_frames(app: &mut App) -> Vec<usize> {
    let mut out = vec![lua_memory(app)];
    for _ in 0..4 {
        update(app, 250);
        out.push(lua_memory(app));
    }
    out
}

fn main() {
    let plan = Plan::from_args();
    let mut c = Criterion::default().without_plots().configure_from_args();

    // Resident memory first, while the process holds nothing else: what an app of movers without
    // scripts adds, then what a second app of the same movers, each running the move script, adds
    // (its entities included), per entity.
    let base = rss();
    let plain = checked(rust_app(), "rust (memory)", true);
    let with_entities = rss();
    let scripted = checked(per_entity_app("move_vec_rss", MOVE_VEC), "move_vec (memory)", true);
    let with_scripts = rss();
    let per_entity_rss = with_scripts.saturating_sub(with_entities) as f64 / N as f64;
    let entities_rss = with_entities.saturating_sub(base) as f64 / N as f64;
    drop((plain, scripted));

    let mut rust = checked(rust_app(), "rust", true);
    let raw = RawCoroutines::new(N);
    let mut wait_only = checked(per_entity_app("wait_only", WAIT_ONLY), "wait_only", false);
    let mut move_vec = checked(per_entity_app("move_vec", MOVE_VEC), "move_vec", true);
    let mut move_x = checked(per_entity_app("move_x", MOVE_X), "move_x", true);
    let mut query = checked(one_script_app("query_loop", QUERY_LOOP), "query_loop", true);
    let mut whole = checked(per_entity_app("whole", WHOLE), "whole", true);
    let mut vec_math = checked(one_script_app("vec_math", VEC_MATH), "vec_math", false);
    let mut plain_math = checked(one_script_app("plain_math", PLAIN_MATH), "plain_math", false);
    {
        let mut group = c.benchmark_group("world_10k");
        criterion_group_config(&mut group, &plan);
        group.bench_function("rust", |b| b.iter(|| rust.update()));
        group.bench_function("bare_resume", |b| b.iter(|| raw.pass()));
        group.bench_function("wait_only", |b| b.iter(|| wait_only.update()));
        group.bench_function("move_vec", |b| b.iter(|| move_vec.update()));
        group.bench_function("move_x", |b| b.iter(|| move_x.update()));
        group.bench_function("query_loop", |b| b.iter(|| query.update()));
        group.bench_function("whole", |b| b.iter(|| whole.update()));
        group.bench_function("vec_math", |b| b.iter(|| vec_math.update()));
        group.bench_function("plain_math", |b| b.iter(|| plain_math.update()));
        group.finish();
    }
    c.final_summary();

    let samples = interleave(
        &plan,
        vec![
            Part::new(|| rust.update()),
            Part::new(|| raw.pass()),
            Part::new(|| wait_only.update()),
            Part::new(|| move_vec.update()),
            Part::new(|| move_x.update()),
            Part::new(|| query.update()),
            Part::new(|| whole.update()),
            Part::new(|| vec_math.update()),
            Part::new(|| plain_math.update()),
        ],
    );
    let [r, bare, wait, mv, mx, q, w, vm, pm] = &samples[..] else { unreachable!("nine parts") };
    println!();
    println!("{N} entities moving one step a frame ({} interleaved rounds, medians):", plan.rounds);
    println!("| variant | frame | per entity | ratio to a bare resume | ratio to the Rust system | target |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let row = |name: &str, xs: &[f64], target: &str| {
        let m = median(xs);
        let to_bare = median_by(xs, bare, |x, y| x / y);
        let to_rust = median_by(xs, r, |x, y| x / y);
        println!(
            "| {name} | {} | {} | {to_bare:.1}x | {to_rust:.0}x | {target} |",
            fmt_time(m),
            fmt_time(m / N as f64)
        );
    };
    row("Rust system (`Query<&mut Transform>`)", r, "");
    row("bare mlua resume (`Thread::resume` loop)", bare, "");
    row("scripted entities that only `task.wait()`", wait, "");
    row("`set(\"Transform.translation\", get(...) + Vec3.new(1, 0, 0))`", mv, "≤ 1.0 µs, ≤ 5x a bare resume");
    row("`set(\"Transform.translation.x\", get(...) + 1)`", mx, "≤ 0.8 µs");
    row("one script, `for e in world.query(\"Transform\", \"Mover\")`", q, "≤ 0.5 µs");
    row("whole component: `get(\"Transform\")`, modify, `set`", w, "≤ 3 µs");
    println!();
    println!(
        "`a + b * 2`, 10,000 times a frame: Vec3 {} per op, plain tables {} per op, ratio {:.2}x (target ≤ 3x)",
        fmt_time(median(vm) / N as f64),
        fmt_time(median(pm) / N as f64),
        median_by(vm, pm, |x, y| x / y)
    );
    let kb = |b: usize| format!("{:.1} KB", b as f64 / 1024.0);
    let shown = |xs: Vec<usize>| xs.into_iter().map(kb).collect::<Vec<_>>().join(" → ");
    println!("Lua memory every 250 frames over 1,000 frames:");
    println!("  vec_math (10,000 Vec3 ops a frame): {}", shown(memory_over_frames(&mut vec_math)));
    println!("  move_vec (10,000 scripted movers):  {}", shown(memory_over_frames(&mut move_vec)));
    println!(
        "Resident memory per entity: {:.2} KB for a mover without a script, {:.2} KB for a mover \
         running the move_vec script, its entity included (target ≤ 3 KB)",
        entities_rss / 1024.0,
        per_entity_rss / 1024.0
    );
}
