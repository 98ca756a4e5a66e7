//! Promise benchmarks: `await` on a settled promise, a Lua-only resolve -> resume round trip, and
//! tasks awaiting a Rust async function settled all in one frame, each measured beside the raw
//! `mlua` floor (bare coroutines resumed with `Thread::resume` in a loop) in the same run.
//!
//! Run with `cargo bench --bench promises`. Criterion prints its own estimates first; the figures
//! in the summary table at the end come from this file's own measurements: several rounds in which
//! the crate's path and its floor are timed back to back (interleaved), so a noisy, shared machine
//! slows both alike. Each figure is the median over the rounds, and each ratio is the median of the
//! per-round ratios.
//!
//! A name filter runs only the matching sections, own measurements included:
//! `cargo bench --bench promises -- round_trip` (sections: `await_resolved`, `lua_round_trip`,
//! `rust_async_settle`).
//!
//! Without `--bench` (e.g. `cargo test --benches`) criterion runs every benchmark once and the own
//! measurements take fewer rounds, so the binary doubles as a quick smoke test.

mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::{
    Part, Plan, RawCoroutines, criterion_group_config, empty_app, fmt_time, interleave, median, median_by,
    median_by3, new_app_with, plugin, resumed, round_trip_source, runtime, rust_async_source, script_errors,
    spawn_script, spread, unbudgeted, update, update_counting, verdict, wait_every_frame_source,
    wait_for_futures,
};
use criterion::{Criterion, Throughput};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Tasks (and so awaits, round trips or Rust calls) per frame in every section.
const N: usize = 10_000;
/// Awaits per loop iteration in the amplified reference variant of section 1.
const AWAITS_PER_ITERATION: usize = 10;
/// Slack after the last future counted itself: it still has to send its completion on the
/// bridge's channel (a few instructions after the increment); the settle frame is checked anyway.
const SEND_GRACE: Duration = Duration::from_millis(2);

/// Futures of `rustOne` that have finished (each increments it as it completes).
static FUTURES_DONE: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// Apps
// ---------------------------------------------------------------------------------------------

/// An app running `source` (which makes `tasks` tasks that resume every frame), after warm-up.
fn looping_app(path: &str, source: &str, tasks: usize) -> App {
    looping_app_with(plugin(), path, source, tasks)
}

/// [`looping_app`] with another plugin configuration.
fn looping_app_with(plugin: LuaCoroutinesPlugin, path: &str, source: &str, tasks: usize) -> App {
    let mut app = new_app_with(plugin);
    update(&mut app, 3);
    spawn_script(&mut app, path, source);
    update(&mut app, 6);
    assert_eq!(runtime(&app).live_tasks(), tasks, "every task should be alive and waiting");
    assert_eq!(script_errors(&app), 0, "the script should not fail");
    assert_eq!(update_counting(&mut app), tasks as u64, "one resume per task per frame");
    app
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

struct AwaitResult {
    /// Frame of the tasks that `await(p)` then `task.wait()`.
    await_frame_ns: f64,
    /// Frame of the same tasks without the await.
    plain_frame_ns: f64,
    /// Frame with `AWAITS_PER_ITERATION` awaits per iteration (reference).
    multi_frame_ns: f64,
    /// Raw floor per resume.
    floor_ns: f64,
    /// Per await: (await frame - plain frame) / N, median of rounds.
    per_await_ns: f64,
    /// Per await from the amplified variant: (multi frame - plain frame) / (N * k).
    per_await_multi_ns: f64,
    ratio: f64,
    ratio_multi: f64,
    diff_spread: (f64, f64),
    /// Per await with `instruction_budget: None` (both apps), and its ratio to the floor.
    per_await_unbudgeted_ns: f64,
    ratio_unbudgeted: f64,
}

struct RoundTripResult {
    frame_ns: f64,
    empty_ns: f64,
    wait_frame_ns: f64,
    floor_ns: f64,
    setup_frame_ns: f64,
    raw_ns: f64,
    net_ns: f64,
    over_wait_ns: f64,
    ratio_raw: f64,
    ratio_net: f64,
    ratio_vs_wait: f64,
    frame_spread: (f64, f64),
    /// Per round trip (raw) with `instruction_budget: None`, and its ratio to the floor.
    unbudgeted_ns: f64,
    ratio_unbudgeted: f64,
}

struct SettleResult {
    frame_ns: f64,
    empty_ns: f64,
    wait_frame_ns: f64,
    floor_ns: f64,
    calls_frame_ns: f64,
    futures_wait_ns: f64,
    raw_ns: f64,
    net_ns: f64,
    over_wait_ns: f64,
    ratio_raw: f64,
    ratio_net: f64,
    ratio_vs_wait: f64,
    frame_spread: (f64, f64),
    resyncs: usize,
    /// Per resumed task (raw) with `instruction_budget: None`, and its ratio to the floor.
    unbudgeted_ns: f64,
    ratio_unbudgeted: f64,
}

#[derive(Default)]
struct Summary {
    rounds: usize,
    awaited: Option<AwaitResult>,
    round_trip: Option<RoundTripResult>,
    settle: Option<SettleResult>,
}

// ---------------------------------------------------------------------------------------------
// 1. `await` on an already-resolved promise
// ---------------------------------------------------------------------------------------------

/// `n` tasks looping `awaits` times `await(p)` (with `p = Promise.resolve(1)` made once), then
/// `task.wait()`.
fn await_loop_source(n: usize, awaits: usize) -> String {
    let body = "await(p) ".repeat(awaits);
    format!(
        "local p = Promise.resolve(1)
         for i = 1, {n} do task.spawn(function() while true do {body}task.wait() end end) end"
    )
}

fn bench_await_resolved(c: &mut Criterion, plan: &Plan, summary: &mut Summary) {
    let (await_path, await_src) = ("bench/await_resolved.lua", await_loop_source(N, 1));
    let (plain_path, plain_src) = ("bench/plain_wait.lua", wait_every_frame_source(N));
    let mut awaiting = looping_app(await_path, &await_src, N);
    let mut plain = looping_app(plain_path, &plain_src, N);
    let mut multi =
        looping_app("bench/await_resolved_x10.lua", &await_loop_source(N, AWAITS_PER_ITERATION), N);
    // References: the same two apps without the instruction budget.
    let mut awaiting_nb = looping_app_with(unbudgeted(), await_path, &await_src, N);
    let mut plain_nb = looping_app_with(unbudgeted(), plain_path, &plain_src, N);
    let raw = RawCoroutines::new(N);

    let mut group = c.benchmark_group(format!("await_resolved/{N}"));
    criterion_group_config(&mut group, plan);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("crate_await_then_wait_app_update", |b| b.iter(|| awaiting.update()));
    group.bench_function("crate_wait_only_app_update", |b| b.iter(|| plain.update()));
    group.bench_function("raw_mlua_resume_floor", |b| b.iter(|| raw.pass()));
    group.finish();

    let samples = interleave(
        plan,
        vec![
            Part::new(|| awaiting.update()),
            Part::new(|| plain.update()),
            Part::new(|| multi.update()),
            Part::new(|| raw.pass()),
            Part::new(|| awaiting_nb.update()),
            Part::new(|| plain_nb.update()),
        ],
    );
    let (aw, pl, mu, floor) = (&samples[0], &samples[1], &samples[2], &samples[3]);
    let (aw_nb, pl_nb) = (&samples[4], &samples[5]);
    for app in [&awaiting, &plain, &multi, &awaiting_nb, &plain_nb] {
        assert_eq!(runtime(app).live_tasks(), N);
        assert_eq!(script_errors(app), 0);
    }
    let k = AWAITS_PER_ITERATION as f64;
    let diffs: Vec<f64> = (0..aw.len()).map(|i| (aw[i] - pl[i]) / N as f64).collect();
    summary.awaited = Some(AwaitResult {
        await_frame_ns: median(aw),
        plain_frame_ns: median(pl),
        multi_frame_ns: median(mu),
        floor_ns: median(floor) / N as f64,
        per_await_ns: median(&diffs),
        per_await_multi_ns: median_by(mu, pl, |m, p| (m - p) / (N as f64 * k)),
        ratio: median_by3(aw, pl, floor, |a, p, f| (a - p) / f),
        ratio_multi: median_by3(mu, pl, floor, |m, p, f| (m - p) / (k * f)),
        diff_spread: spread(&diffs),
        per_await_unbudgeted_ns: median_by(aw_nb, pl_nb, |a, p| (a - p) / N as f64),
        ratio_unbudgeted: median_by3(aw_nb, pl_nb, floor, |a, p, f| (a - p) / f),
    });
}

// ---------------------------------------------------------------------------------------------
// 2. A Lua-only resolve -> resume round trip
// ---------------------------------------------------------------------------------------------

/// One setup frame (untimed), then the round-trip frame, timed; also returns the setup frame's
/// time.
fn round_trip_cycle(app: &mut App) -> (Duration, Duration) {
    let start = Instant::now();
    let setup_resumed = update_counting(app);
    let setup = start.elapsed();
    assert_eq!(setup_resumed, 1, "the setup frame resumes only the producer");
    let before = resumed(app);
    let start = Instant::now();
    app.update();
    let frame = start.elapsed();
    let round_resumed = resumed(app) - before;
    assert_eq!(round_resumed, N as u64 + 1, "the round-trip frame resumes the producer and every consumer");
    (frame, setup)
}

fn round_trip_app(plugin: LuaCoroutinesPlugin) -> App {
    let mut app = new_app_with(plugin);
    update(&mut app, 3);
    spawn_script(&mut app, "bench/round_trip.lua", &round_trip_source(N));
    // Run until the next frame is a setup frame (the last one resumed every consumer).
    let mut frames = 0;
    loop {
        frames += 1;
        assert!(frames < 20, "the round-trip frame never came");
        if update_counting(&mut app) == N as u64 + 1 && frames > 4 {
            break;
        }
    }
    assert_eq!(runtime(&app).live_tasks(), N + 1, "the consumers and the producer should be alive");
    assert_eq!(script_errors(&app), 0, "the script should not fail");
    for _ in 0..3 {
        round_trip_cycle(&mut app);
    }
    app
}

fn bench_lua_round_trip(c: &mut Criterion, plan: &Plan, summary: &mut Summary) {
    let mut app = round_trip_app(plugin());
    let mut app_nb = round_trip_app(unbudgeted());
    let mut empty = empty_app();
    let mut plain = looping_app("bench/plain_wait.lua", &wait_every_frame_source(N), N);
    let raw = RawCoroutines::new(N);

    let mut group = c.benchmark_group(format!("lua_round_trip/{N}"));
    criterion_group_config(&mut group, plan);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("crate_round_trip_frame", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round_trip_cycle(&mut app).0).sum())
    });
    group.bench_function("raw_mlua_resume_floor", |b| b.iter(|| raw.pass()));
    group.finish();

    let mut setups = Vec::new();
    let samples = interleave(
        plan,
        vec![
            Part::timed(|| {
                let (frame, setup) = round_trip_cycle(&mut app);
                setups.push(setup.as_nanos() as f64);
                frame
            }),
            Part::new(|| empty.update()),
            Part::new(|| plain.update()),
            Part::new(|| raw.pass()),
            Part::timed(|| round_trip_cycle(&mut app_nb).0),
        ],
    );
    assert_eq!(runtime(&app).live_tasks(), N + 1);
    assert_eq!(runtime(&app_nb).live_tasks(), N + 1);
    assert_eq!(script_errors(&app_nb), 0);
    assert_eq!(script_errors(&app), 0);
    assert_eq!(script_errors(&plain), 0);
    let (rt, em, wt, floor) = (&samples[0], &samples[1], &samples[2], &samples[3]);
    let n = N as f64;
    summary.round_trip = Some(RoundTripResult {
        frame_ns: median(rt),
        empty_ns: median(em),
        wait_frame_ns: median(wt),
        floor_ns: median(floor) / n,
        setup_frame_ns: median(&setups[setups.len().saturating_sub(plan.rounds)..]),
        raw_ns: median(rt) / n,
        net_ns: median_by(rt, em, |r, e| (r - e) / n),
        over_wait_ns: median_by(rt, wt, |r, w| (r - w) / n),
        ratio_raw: median_by(rt, floor, |r, f| r / f),
        ratio_net: median_by3(rt, em, floor, |r, e, f| (r - e) / f),
        ratio_vs_wait: median_by(rt, wt, |r, w| r / w),
        frame_spread: spread(rt),
        unbudgeted_ns: median(&samples[4]) / n,
        ratio_unbudgeted: median_by(&samples[4], floor, |r, f| r / f),
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Tasks awaiting a Rust async function, all settled in one frame
// ---------------------------------------------------------------------------------------------

/// The app of section 3: the async function and the script entity.
struct SettleApp {
    app: App,
    entity: Entity,
    /// Rounds whose settle frame did not see every completion (a future was still between its
    /// increment and its send), so the script was restarted and the round taken again.
    resyncs: usize,
}

impl SettleApp {
    fn new(plugin: LuaCoroutinesPlugin) -> Self {
        let mut app = new_app_with(plugin);
        app.add_lua_async_function("rustOne", || async {
            FUTURES_DONE.fetch_add(1, Ordering::Release);
            Ok::<_, String>(1)
        });
        update(&mut app, 3);
        let entity = Entity::PLACEHOLDER;
        let mut s = Self { app, entity, resyncs: 0 };
        s.start();
        for _ in 0..3 {
            s.cycle();
        }
        assert_eq!(runtime(&s.app).live_tasks(), N);
        assert_eq!(script_errors(&s.app), 0, "the script should not fail");
        s.resyncs = 0;
        s
    }

    /// (Re)starts the script; its first frame makes the `N` calls. Afterwards every task awaits.
    fn start(&mut self) {
        if self.entity != Entity::PLACEHOLDER {
            self.app.world_mut().despawn(self.entity);
            self.app.update();
            assert_eq!(runtime(&self.app).live_tasks(), 0, "despawning cancels every task");
        }
        self.entity = spawn_script(&mut self.app, "bench/rust_async.lua", &rust_async_source(N));
        let target = FUTURES_DONE.load(Ordering::Acquire) + N;
        self.app.update();
        assert_eq!(runtime(&self.app).live_tasks(), N, "every task should await its call");
        wait_for_futures(&FUTURES_DONE, target, SEND_GRACE);
    }

    /// With every task awaiting a finished future: times the frame that settles them all; then
    /// runs the frame in which the tasks call again (untimed) and waits for the new futures.
    /// Returns the settle frame, the calls frame and the wait for the futures.
    fn cycle(&mut self) -> (Duration, Duration, Duration) {
        loop {
            let before = resumed(&self.app);
            let start = Instant::now();
            self.app.update();
            let settle = start.elapsed();
            let settled = resumed(&self.app) - before;
            if settled != N as u64 {
                // Some completion was not on the channel yet: start over, and take the round again.
                self.resyncs += 1;
                self.start();
                continue;
            }
            let target = FUTURES_DONE.load(Ordering::Acquire) + N;
            let start = Instant::now();
            let calls_resumed = update_counting(&mut self.app);
            let calls = start.elapsed();
            assert_eq!(calls_resumed, N as u64, "every task should call again");
            let waited = wait_for_futures(&FUTURES_DONE, target, SEND_GRACE);
            return (settle, calls, waited);
        }
    }
}

fn bench_rust_async_settle(c: &mut Criterion, plan: &Plan, summary: &mut Summary) {
    let mut settle = SettleApp::new(plugin());
    let mut settle_nb = SettleApp::new(unbudgeted());
    let mut empty = empty_app();
    let mut plain = looping_app("bench/plain_wait.lua", &wait_every_frame_source(N), N);
    let raw = RawCoroutines::new(N);

    let mut group = c.benchmark_group(format!("rust_async_settle/{N}"));
    criterion_group_config(&mut group, plan);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("crate_settle_frame", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| settle.cycle().0).sum())
    });
    group.bench_function("raw_mlua_resume_floor", |b| b.iter(|| raw.pass()));
    group.finish();
    settle.resyncs = 0;

    let mut calls = Vec::new();
    let mut waits = Vec::new();
    let samples = interleave(
        plan,
        vec![
            Part::once(|| {
                let (frame, call, waited) = settle.cycle();
                calls.push(call.as_nanos() as f64);
                waits.push(waited.as_nanos() as f64);
                frame
            }),
            Part::new(|| empty.update()),
            Part::new(|| plain.update()),
            Part::new(|| raw.pass()),
            Part::once(|| settle_nb.cycle().0),
        ],
    );
    assert_eq!(runtime(&settle.app).live_tasks(), N);
    assert_eq!(runtime(&settle_nb.app).live_tasks(), N);
    assert_eq!(script_errors(&settle_nb.app), 0);
    assert_eq!(script_errors(&settle.app), 0);
    assert_eq!(script_errors(&plain), 0);
    let (st, em, wt, floor) = (&samples[0], &samples[1], &samples[2], &samples[3]);
    let n = N as f64;
    summary.settle = Some(SettleResult {
        frame_ns: median(st),
        empty_ns: median(em),
        wait_frame_ns: median(wt),
        floor_ns: median(floor) / n,
        calls_frame_ns: median(&calls),
        futures_wait_ns: median(&waits),
        raw_ns: median(st) / n,
        net_ns: median_by(st, em, |s, e| (s - e) / n),
        over_wait_ns: median_by(st, wt, |s, w| (s - w) / n),
        ratio_raw: median_by(st, floor, |s, f| s / f),
        ratio_net: median_by3(st, em, floor, |s, e, f| (s - e) / f),
        ratio_vs_wait: median_by(st, wt, |s, w| s / w),
        frame_spread: spread(st),
        resyncs: settle.resyncs,
        unbudgeted_ns: median(&samples[4]) / n,
        ratio_unbudgeted: median_by(&samples[4], floor, |s, f| s / f),
    });
}

// ---------------------------------------------------------------------------------------------
// The summary table
// ---------------------------------------------------------------------------------------------

/// One `label  value` line of the table.
fn row(o: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(o, "   {label:<60}{value:>14}");
}

impl Summary {
    fn render(&self) -> String {
        let mut o = String::new();
        let line = "=".repeat(100);
        let _ = writeln!(o, "\n{line}");
        let _ = writeln!(o, "bevy_lua_coroutines promise benchmarks: summary (own measurements), N = {N}");
        let _ = writeln!(
            o,
            "Each figure: median of {} interleaved rounds (crate path and floor timed back to back in each \
             round);\neach ratio: median of the per-round ratios. Floor: N bare coroutines resumed with mlua \
             Thread::resume in a loop.",
            self.rounds
        );
        let _ = writeln!(o, "{line}");

        if let Some(a) = &self.awaited {
            let _ = writeln!(
                o,
                "\n1. await on an already-resolved promise: N tasks loop `await(p) task.wait()`, p = \
                 Promise.resolve(1) made once"
            );
            row(&mut o, "crate frame, await(p) + task.wait() per task", fmt_time(a.await_frame_ns));
            row(&mut o, "crate frame, task.wait() only (same loop, no await)", fmt_time(a.plain_frame_ns));
            row(&mut o, "per await ((await frame - wait-only frame) / N)", fmt_time(a.per_await_ns));
            row(
                &mut o,
                "  min .. max over rounds",
                format!("{}..{}", fmt_time(a.diff_spread.0), fmt_time(a.diff_spread.1)),
            );
            row(&mut o, "raw mlua floor per resume (Thread::resume loop)", fmt_time(a.floor_ns));
            row(&mut o, "RATIO per await / bare resume", format!("{:.2}x", a.ratio));
            row(
                &mut o,
                &format!("(ref) frame with {AWAITS_PER_ITERATION} awaits per iteration"),
                fmt_time(a.multi_frame_ns),
            );
            row(
                &mut o,
                &format!("(ref) per await from it ((frame - wait-only) / {AWAITS_PER_ITERATION}N)"),
                fmt_time(a.per_await_multi_ns),
            );
            row(&mut o, "(ref) RATIO that per await / bare resume", format!("{:.2}x", a.ratio_multi));
            row(&mut o, "(ref) per await, instruction_budget: None", fmt_time(a.per_await_unbudgeted_ns));
            row(&mut o, "(ref) RATIO that / bare resume", format!("{:.2}x", a.ratio_unbudgeted));
            let _ = writeln!(o, "   (no target set)");
        }

        if let Some(r) = &self.round_trip {
            let _ = writeln!(
                o,
                "\n2. Lua-only resolve -> resume round trip: N consumer tasks await fresh Promise.new promises \
                 that one\n   producer task resolves in the same frame; each woken consumer at once awaits \
                 its next promise.\n   Timed: the round-trip frame only (the promises are made in the \
                 untimed frame before it)."
            );
            row(&mut o, "crate round-trip frame (producer resume + N round trips)", fmt_time(r.frame_ns));
            row(
                &mut o,
                "  min .. max over rounds",
                format!("{}..{}", fmt_time(r.frame_spread.0), fmt_time(r.frame_spread.1)),
            );
            row(&mut o, "empty frame (same plugin, no scripts): the other work", fmt_time(r.empty_ns));
            row(&mut o, "per round trip, raw (frame / N)", fmt_time(r.raw_ns));
            row(&mut o, "per round trip, net ((frame - empty) / N)", fmt_time(r.net_ns));
            row(&mut o, "raw mlua floor per resume (Thread::resume loop)", fmt_time(r.floor_ns));
            row(&mut o, "RATIO round trip raw / bare resume", format!("{:.2}x", r.ratio_raw));
            row(&mut o, "RATIO round trip net / bare resume", format!("{:.2}x", r.ratio_net));
            row(&mut o, "(ref) frame of N tasks that task.wait() every frame", fmt_time(r.wait_frame_ns));
            row(&mut o, "(ref) round trip minus a task.wait() resume, per task", fmt_time(r.over_wait_ns));
            row(&mut o, "(ref) round-trip frame / task.wait() frame", format!("{:.2}x", r.ratio_vs_wait));
            row(&mut o, "(ref) per round trip, raw, instruction_budget: None", fmt_time(r.unbudgeted_ns));
            row(&mut o, "(ref) RATIO that / bare resume", format!("{:.2}x", r.ratio_unbudgeted));
            row(&mut o, "(ref) untimed setup frame (N Promise.new)", fmt_time(r.setup_frame_ns));
            row(&mut o, "(ref)   per Promise.new", fmt_time(r.setup_frame_ns / N as f64));
            let _ = writeln!(
                o,
                "   target: round trip <= 3.0x a bare resume -> raw {:.2}x {}, net of empty frame {:.2}x {}",
                r.ratio_raw,
                verdict(r.ratio_raw <= 3.0),
                r.ratio_net,
                verdict(r.ratio_net <= 3.0)
            );
        }

        if let Some(s) = &self.settle {
            let _ = writeln!(
                o,
                "\n3. N tasks (one script) each awaiting a Rust async function (`rustOne`, a trivial \
                 `async {{ Ok(1) }}`),\n   every future finished before the frame; timed: the one \
                 app.update() that settles them all (1 per round)"
            );
            row(&mut o, "crate settle frame (N completions drained, N tasks resumed)", fmt_time(s.frame_ns));
            row(
                &mut o,
                "  min .. max over rounds",
                format!("{}..{}", fmt_time(s.frame_spread.0), fmt_time(s.frame_spread.1)),
            );
            row(&mut o, "empty frame (same plugin, no scripts)", fmt_time(s.empty_ns));
            row(&mut o, "per resumed task, raw (frame / N)", fmt_time(s.raw_ns));
            row(&mut o, "per resumed task, net ((frame - empty) / N)", fmt_time(s.net_ns));
            row(&mut o, "raw mlua floor per resume (Thread::resume loop)", fmt_time(s.floor_ns));
            row(&mut o, "RATIO per resumed task raw / bare resume", format!("{:.2}x", s.ratio_raw));
            row(&mut o, "RATIO per resumed task net / bare resume", format!("{:.2}x", s.ratio_net));
            row(&mut o, "(ref) frame of N tasks that task.wait() every frame", fmt_time(s.wait_frame_ns));
            row(&mut o, "(ref) settle minus a task.wait() resume, per task", fmt_time(s.over_wait_ns));
            row(&mut o, "(ref) settle frame / task.wait() frame", format!("{:.2}x", s.ratio_vs_wait));
            row(&mut o, "(ref) per resumed task, raw, instruction_budget: None", fmt_time(s.unbudgeted_ns));
            row(&mut o, "(ref) RATIO that / bare resume", format!("{:.2}x", s.ratio_unbudgeted));
            row(&mut o, "(ref) untimed frame making the N calls", fmt_time(s.calls_frame_ns));
            row(&mut o, "(ref)   per call (Promise + future spawned)", fmt_time(s.calls_frame_ns / N as f64));
            row(&mut o, "(ref) untimed wait for the N futures after that frame", fmt_time(s.futures_wait_ns));
            row(&mut o, "(ref) rounds retaken (a completion was not sent yet)", s.resyncs);
            let _ = writeln!(o, "   (no target set)");
        }
        let _ = writeln!(o, "{line}");
        o
    }
}

fn main() {
    let plan = Plan::from_args();
    let mut c = Criterion::default().without_plots().configure_from_args();
    let mut summary = Summary { rounds: plan.rounds, ..Default::default() };

    if plan.wants("await_resolved") {
        bench_await_resolved(&mut c, &plan, &mut summary);
    }
    if plan.wants("lua_round_trip") {
        bench_lua_round_trip(&mut c, &plan, &mut summary);
    }
    if plan.wants("rust_async_settle") {
        bench_rust_async_settle(&mut c, &plan, &mut summary);
    }

    c.final_summary();
    print!("{}", summary.render());
}
