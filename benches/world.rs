//! World access benchmark: every frame, each of 10,000 entities has its `Transform` read with
//! `entity:get("Transform")` and written back with `entity:set`, beside the same update done by a
//! plain Rust system, in the same run.
//!
//! Run with `cargo bench --bench world`. Criterion prints its own estimates first; the summary at
//! the end comes from interleaved rounds (each variant's frame timed back to back in every round,
//! so a noisy, shared machine slows them alike): medians over the rounds, and each ratio the median
//! of the per-round ratios. Three variants:
//!
//! - `rust`: a system with `Query<&mut Transform>` adds 1 to `translation.x` (the floor);
//! - `one_script`: one script holds the 10,000 entity values and updates each in a loop (the cost of
//!   the world API alone);
//! - `per_entity`: 10,000 scripted entities, each updating its own `Transform` and waiting a frame
//!   (the world API plus one resume per entity).
//!
//! Without `--bench` (e.g. `cargo test --benches`) criterion runs every benchmark once and the own
//! measurements take fewer rounds, so the binary doubles as a quick smoke test.

mod common;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::{
    ONE_SCRIPT, Part, Plan, add_script, criterion_group_config, fmt_time, interleave, median, median_by,
    new_app, update,
};
use criterion::Criterion;

/// Entities updated per frame.
const N: usize = 10_000;

/// The update every variant makes: one step east.
fn step(t: &mut Transform) {
    t.translation.x += 1.0;
}

/// `N` entities with a `Transform` and a `Name` the scripts find them by.
fn spawn_movers(app: &mut App, scripted: Option<&Handle<LuaScript>>) {
    for _ in 0..N {
        let mut e = app.world_mut().spawn((Name::new("mover"), Transform::default()));
        if let Some(script) = scripted {
            e.insert(LuaScripts::new(script.clone()));
        }
    }
}

/// The floor: a plain Rust system does the update.
fn rust_app() -> App {
    let mut app = new_app();
    app.add_systems(Update, |mut q: Query<&mut Transform>| q.iter_mut().for_each(|mut t| step(&mut t)));
    spawn_movers(&mut app, None);
    app
}

/// One script updates every entity in a loop.
fn one_script_app() -> App {
    let mut app = new_app();
    spawn_movers(&mut app, None);
    let handle = add_script(&mut app, "bench/one_script.lua", ONE_SCRIPT);
    app.world_mut().spawn(LuaScripts::new(handle));
    app
}

/// Every entity runs a script that updates its own `Transform`.
fn per_entity_app() -> App {
    let mut app = new_app();
    let source = r#"
        while true do
            local t = entity:get("Transform")
            entity:set("Transform", { translation = { x = t.translation.x + 1 } })
            task.wait()
        end
    "#;
    let handle = add_script(&mut app, "bench/per_entity.lua", source);
    spawn_movers(&mut app, Some(&handle));
    app
}

/// Warms an app up and checks that one frame moves every entity by exactly one step.
fn checked(mut app: App, name: &str) -> App {
    update(&mut app, 5);
    let xs = |app: &mut App| {
        let mut q = app.world_mut().query_filtered::<&Transform, With<Name>>();
        q.iter(app.world()).map(|t| t.translation.x).collect::<Vec<f32>>()
    };
    let before = xs(&mut app);
    app.update();
    let after = xs(&mut app);
    assert_eq!(after.len(), N, "{name}: every mover exists");
    assert!(
        before.iter().zip(&after).all(|(b, a)| *a == b + 1.0),
        "{name}: one frame moves every entity one step"
    );
    assert_eq!(app.world().resource::<common::ErrorCount>().0, 0, "{name}: no script error");
    app
}

fn main() {
    let plan = Plan::from_args();
    let mut c = Criterion::default().without_plots().configure_from_args();
    let mut rust = checked(rust_app(), "rust");
    let mut one = checked(one_script_app(), "one_script");
    let mut each = checked(per_entity_app(), "per_entity");
    {
        let mut group = c.benchmark_group("world_transform_10k");
        criterion_group_config(&mut group, &plan);
        group.bench_function("rust", |b| b.iter(|| rust.update()));
        group.bench_function("one_script", |b| b.iter(|| one.update()));
        group.bench_function("per_entity", |b| b.iter(|| each.update()));
        group.finish();
    }
    c.final_summary();

    let samples = interleave(
        &plan,
        vec![Part::new(|| rust.update()), Part::new(|| one.update()), Part::new(|| each.update())],
    );
    let (r, o, e) = (&samples[0], &samples[1], &samples[2]);
    println!();
    println!(
        "get + set of Transform on {N} entities per frame ({} interleaved rounds, medians):",
        plan.rounds
    );
    println!("| variant | frame | per entity | ratio to the Rust system |");
    println!("| --- | --- | --- | --- |");
    let row = |name: &str, xs: &[f64]| {
        let m = median(xs);
        let ratio = median_by(xs, r, |x, y| x / y);
        println!("| {name} | {} | {} | {ratio:.0}x |", fmt_time(m), fmt_time(m / N as f64));
    };
    row("Rust system (`Query<&mut Transform>`)", r);
    row("one script, loop over 10,000 entity values", o);
    row("10,000 scripted entities, each its own", e);
}
