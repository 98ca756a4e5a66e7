//! What the instruction budget costs a script that behaves: a compute-bound task (arithmetic and
//! table work, about a millisecond per frame, then `task.wait()`) timed with the budget off, with
//! the default budget (no hook until a resume runs past the watchdog's slice) and with
//! `exact_instruction_count` (the count hook on every instruction of every resume, the behaviour
//! before the watchdog), interleaved in the same process: each round times one frame of each app
//! back to back, so a noisy, shared machine slows all three alike. Figures are medians over the
//! rounds; ratios are medians of the per-round ratios to the budget-off frame.
//!
//! Run with `cargo bench --bench budget` (21 rounds); without `--bench` (`cargo test --benches`)
//! it takes 3 rounds, as a smoke test.

mod common;

use bevy_lua_coroutines::prelude::*;
use common::{
    Part, Plan, fmt_time, interleave, median, median_by, new_app_with, plugin, script_errors, spawn_script,
    update,
};

/// About 20 VM instructions per iteration: roughly 400,000 per frame, far under the default
/// budget of 10,000,000 and (about a millisecond) under the watchdog's 5 ms slice.
const COMPUTE: &str = r#"
    local t = {}
    for i = 1, 64 do t[i] = i end
    while true do
        local s = 0
        for i = 1, 20000 do
            local v = (i * 7 + s) % 1009
            t[(i % 64) + 1] = v
            s = s + t[(v % 64) + 1] // 2 - i // 3
        end
        task.wait()
    end
"#;

fn app(budget: Option<u64>, exact: bool) -> bevy::prelude::App {
    let mut app = new_app_with(LuaCoroutinesPlugin {
        instruction_budget: budget,
        exact_instruction_count: exact,
        ..plugin()
    });
    spawn_script(&mut app, "scripts/compute.lua", COMPUTE);
    update(&mut app, 5);
    app
}

fn main() {
    let plan = Plan::from_args();
    if !plan.wants("compute") {
        return;
    }
    let mut off = app(None, false);
    let mut default = app(Some(common::DEFAULT_BUDGET), false);
    let mut exact = app(Some(common::DEFAULT_BUDGET), true);
    let samples = interleave(
        &plan,
        vec![Part::new(|| off.update()), Part::new(|| default.update()), Part::new(|| exact.update())],
    );
    for a in [&off, &default, &exact] {
        assert_eq!(script_errors(a), 0, "the compute script ran cleanly");
    }
    let (off_ns, default_ns, exact_ns) = (median(&samples[0]), median(&samples[1]), median(&samples[2]));
    let default_ratio = median_by(&samples[1], &samples[0], |a, b| a / b);
    let exact_ratio = median_by(&samples[2], &samples[0], |a, b| a / b);
    println!();
    println!("compute-bound frame ({} rounds, one task, ~400k VM instructions per resume)", plan.rounds);
    println!("  budget off                      {:>10}", fmt_time(off_ns));
    println!(
        "  default budget (watchdog)       {:>10}  ratio {default_ratio:.3}  {}",
        fmt_time(default_ns),
        if default_ratio <= 1.10 { "within 10 %" } else { "OVER 10 %" }
    );
    println!("  exact_instruction_count         {:>10}  ratio {exact_ratio:.3}", fmt_time(exact_ns));
}
