//! Channel benchmarks: a ping-pong between two tasks over unbuffered Lua channels, and the
//! throughput of a small struct through a typed channel (`add_lua_channel`) in each direction,
//! batched in one frame. Each is measured beside its floor in the same run: bare coroutines resumed
//! with mlua `Thread::resume` in a loop for the ping-pong; a bare crossbeam channel for the typed
//! channel (with serde conversion alone, mlua `to_value` / `from_value`, for reference).
//!
//! Run with `cargo bench --bench channels`. Criterion prints its own estimates first; the figures
//! in the summary table at the end come from this file's own measurements: several rounds in which
//! the crate's path and its floor are timed back to back (interleaved), so a noisy, shared machine
//! slows both alike. Each figure is the median over the rounds, and each ratio is the median of the
//! per-round ratios.
//!
//! A name filter runs only the matching sections, own measurements included:
//! `cargo bench --bench channels -- ping_pong` (sections: `ping_pong`, `rust_to_script`,
//! `script_to_rust`, `memory`).
//!
//! Without `--bench` (e.g. `cargo test --benches`) criterion runs every benchmark once and the own
//! measurements take fewer rounds, so the binary doubles as a quick smoke test.
//!
//! The instruction budget: every crate app here runs with the plugin's default budget (10,000,000
//! VM instructions per resume), as a game would. In the ping-pong each resume carries one message,
//! so it does little. In the typed-channel sections one resume moves the whole batch; the table
//! reports the VM instructions per message (counted with a count hook on every instruction, on a
//! separate app) and so how many messages one resume can move under the default budget. Every
//! section also times the same app with `instruction_budget: None` for reference, and the
//! typed-channel sections the same app with `memory_limit: None` (with a limit, mlua makes every
//! table and string it creates for Rust, such as `to_value`'s, under a protected call).

mod common;

use std::fmt::Write as _;
use std::hint::black_box;
#[cfg(not(feature = "luau"))]
use std::sync::Arc;
#[cfg(not(feature = "luau"))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_lua_coroutines::mlua::{Function, Lua, LuaSerdeExt, Value};
#[cfg(not(feature = "luau"))]
use bevy_lua_coroutines::mlua::{HookTriggers, VmState};
use bevy_lua_coroutines::prelude::*;
use common::{
    DEFAULT_BUDGET, DRAIN_RECEIVE, Hit, Part, Plan, RawCoroutines, SEND_BATCH, criterion_group_config,
    fmt_time, hit, interleave, median, median_by, median_by3, new_app_with, plugin, recorded_median, resumed,
    runtime, script_errors, spawn_script, spread, unbudgeted, update, update_counting, verdict,
    wait_every_frame_source,
};
use criterion::{Criterion, Throughput};
use crossbeam_channel::{Receiver, Sender};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Round trips per frame in the ping-pong (each is two messages and two task resumes).
const ROUND_TRIPS: usize = 10_000;
/// Bare coroutines in the resume floor (resumed one after another, as in `benches/scheduler.rs`),
/// and tasks in the `task.wait()` reference app.
const FLOOR_COROUTINES: usize = 10_000;
/// Values per frame through the typed channel (also its capacity, each direction).
const BATCH: usize = 100_000;
/// The ping-pong target: a message (one send + one receive) costs at most 3x two bare resumes.
const PING_PONG_TARGET: f64 = 6.0;
/// The typed-channel target, batched in one frame (each direction).
const TARGET_MESSAGES_PER_SEC: f64 = 2e6;
/// The typed channel's name.
const CHANNEL: &str = "hits";
/// Messages each path of the memory section carries between its two heap measurements.
const MEMORY_MESSAGES: usize = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Apps
// ---------------------------------------------------------------------------------------------

/// The reference plugin: [`plugin`] without the VM's memory limit. With a limit set, mlua runs
/// every allocation it makes for Rust (`to_value`'s tables and strings) as a protected call.
fn unlimited_memory() -> LuaCoroutinesPlugin {
    LuaCoroutinesPlugin { memory_limit: None, ..plugin() }
}

/// An app with the plugin and no scripts, after warm-up: the frame's fixed cost.
fn empty_app() -> App {
    let mut app = new_app_with(plugin());
    app.add_lua_channel::<Hit>(CHANNEL, BATCH);
    update(&mut app, 8);
    app
}

/// `n` tasks that each `task.wait()` every frame (the ordinary resume path, for reference).
fn plain_wait_app(n: usize) -> App {
    let mut app = new_app_with(plugin());
    update(&mut app, 3);
    spawn_script(&mut app, "bench/plain_wait.lua", &wait_every_frame_source(n));
    update(&mut app, 6);
    assert_eq!(runtime(&app).live_tasks(), n, "every task should be alive and waiting");
    assert_eq!(script_errors(&app), 0, "the script should not fail");
    assert_eq!(update_counting(&mut app), n as u64, "one resume per task per frame");
    app
}

/// Counts the Lua VM instructions that one `cycle` executes, on all threads (the step's own loop
/// included), with a count hook called on every instruction. `setup` gets an app from
/// `new_app_with(unbudgeted())` (so the plugin installs no hook of its own) with the hook already
/// in place, so every thread its scripts make carries it; `cycle` runs once untimed, then once
/// counted. `None` under Luau (no count hook).
#[cfg(not(feature = "luau"))]
fn vm_instructions<S>(setup: impl FnOnce(App) -> S, mut cycle: impl FnMut(&mut S)) -> Option<u64> {
    let app = new_app_with(unbudgeted());
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    runtime(&app)
        .lua()
        .set_global_hook(HookTriggers::new().every_nth_instruction(1), move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
            Ok(VmState::Continue)
        })
        .expect("count hook");
    let mut s = setup(app);
    cycle(&mut s);
    let before = count.load(Ordering::Relaxed);
    cycle(&mut s);
    Some(count.load(Ordering::Relaxed) - before)
}

#[cfg(feature = "luau")]
fn vm_instructions<S>(_setup: impl FnOnce(App) -> S, _cycle: impl FnMut(&mut S)) -> Option<u64> {
    None
}

// ---------------------------------------------------------------------------------------------
// Raw floors
// ---------------------------------------------------------------------------------------------

/// The Lua-side floor of the ping-pong: two coroutines resumed in turn by `coroutine.resume` from a
/// Lua loop (what any scheduler whose loop is Lua pays per switch, with nothing else).
struct LuaPingPong {
    _lua: Lua,
    run: Function,
}

impl LuaPingPong {
    fn new() -> Self {
        let lua = Lua::new();
        let run: Function = lua
            .load(
                "local resume, yield = coroutine.resume, coroutine.yield
                 local function body() while true do yield() end end
                 local a, b = coroutine.create(body), coroutine.create(body)
                 resume(a) resume(b)
                 return function(m)
                   for i = 1, m do
                     resume(a, i)
                     resume(b, i)
                   end
                 end",
            )
            .eval()
            .expect("ping-pong floor");
        Self { _lua: lua, run }
    }

    /// `m` round trips: `2m` Lua-side resumes.
    #[inline(never)]
    fn round_trips(&self, m: usize) {
        self.run.call::<()>(m).expect("lua ping-pong");
    }
}

/// The floor of the typed channel: `BATCH` values through a bare bounded crossbeam channel, all
/// sent, then all received (the shape of one batched frame).
struct CrossbeamFloor {
    tx: Sender<Hit>,
    rx: Receiver<Hit>,
}

impl CrossbeamFloor {
    fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(BATCH);
        Self { tx, rx }
    }

    #[inline(never)]
    fn batch(&self) {
        for i in 0..BATCH {
            self.tx.try_send(hit(i)).expect("room");
        }
        let (mut n, mut sum) = (0usize, 0u64);
        for h in self.rx.try_iter() {
            n += 1;
            sum += u64::from(h.target);
        }
        assert_eq!(n, BATCH);
        black_box(sum);
    }
}

/// Serde conversion alone, in a bare VM: `to_value` of the struct (Rust -> script) and
/// `from_value` of a table (script -> Rust), `BATCH` times; and the hand-rolled mlua paths (a Lua
/// loop calling a Rust function per value that converts and uses a crossbeam channel), with no
/// channel semantics, scheduler or hook: what the same transfer costs written directly on mlua.
struct SerdeFloor {
    lua: Lua,
    table: Value,
    /// Values for the hand-rolled Rust -> script drain, and the channel it reads.
    tx: Sender<Hit>,
    drain: Function,
    /// The hand-rolled script -> Rust loop, and the channel it fills.
    rx: Receiver<Hit>,
    send_all: Function,
}

impl SerdeFloor {
    fn new() -> Self {
        let lua = Lua::new();
        let table = lua
            .load("return { target = 7, amount = 3.5, time = 1.75, kind = 'fire' }")
            .eval::<Value>()
            .expect("table");
        let (tx, from_rust) = crossbeam_channel::bounded::<Hit>(BATCH);
        let recv = lua
            .create_function(move |lua, ()| match from_rust.try_recv() {
                Ok(h) => lua.to_value(&h),
                Err(_) => Ok(Value::Nil),
            })
            .expect("recv");
        let (to_rust, rx) = crossbeam_channel::bounded::<Hit>(BATCH);
        let send = lua
            .create_function(move |lua, v: Value| {
                let h: Hit = lua.from_value(v)?;
                Ok(to_rust.try_send(h).is_ok())
            })
            .expect("send");
        let make: Function = lua
            .load(
                "return function(recv, send, B)
                   local function drain()
                     local n, sum = 0, 0
                     while true do
                       local h = recv()
                       if h == nil then break end
                       sum = sum + h.target
                       n = n + 1
                     end
                     return n
                   end
                   local function send_all()
                     for i = 0, B - 1 do send({ target = i, amount = i * 0.5, time = i * 0.25, kind = 'fire' }) end
                   end
                   return drain, send_all
                 end",
            )
            .eval()
            .expect("hand-rolled loops");
        let (drain, send_all): (Function, Function) = make.call((recv, send, BATCH)).expect("loops");
        Self { lua, table, tx, drain, rx, send_all }
    }

    /// `BATCH` times `to_value` of a `Hit` (each makes a Lua table, garbage at once).
    #[inline(never)]
    fn serialize_batch(&self) {
        for i in 0..BATCH {
            black_box(self.lua.to_value(&hit(i)).expect("to_value"));
        }
    }

    /// `BATCH` times `from_value` of one table `{ target, amount }`.
    #[inline(never)]
    fn deserialize_batch(&self) {
        let mut sum = 0u64;
        for _ in 0..BATCH {
            let h: Hit = self.lua.from_value(self.table.clone()).expect("from_value");
            sum += u64::from(h.target);
        }
        black_box(sum);
    }

    /// `from_value` through `serde_path_to_error`, as the crate converts a value a script sends
    /// (it reports the field that did not fit).
    #[inline(never)]
    fn deserialize_batch_with_path(&self) {
        let mut sum = 0u64;
        for _ in 0..BATCH {
            let de = bevy_lua_coroutines::mlua::serde::Deserializer::new(self.table.clone());
            let h: Hit = serde_path_to_error::deserialize(de).expect("from_value");
            sum += u64::from(h.target);
        }
        black_box(sum);
    }

    /// Hand-rolled Rust -> script: fills the channel (untimed), then times a Lua loop that calls a
    /// Rust `recv()` (`try_recv` + `to_value`) until it is empty.
    #[inline(never)]
    fn hand_rolled_drain(&self) -> Duration {
        for i in 0..BATCH {
            self.tx.try_send(hit(i)).expect("room");
        }
        let start = Instant::now();
        let n: usize = self.drain.call(()).expect("drain");
        let t = start.elapsed();
        assert_eq!(n, BATCH);
        t
    }

    /// Hand-rolled script -> Rust: a Lua loop makes `BATCH` tables and calls a Rust `send(v)`
    /// (`from_value` + `try_send`) with each; then Rust drains the channel.
    #[inline(never)]
    fn hand_rolled_send(&self) {
        self.send_all.call::<()>(()).expect("send_all");
        let (mut n, mut sum) = (0usize, 0u64);
        for h in self.rx.try_iter() {
            n += 1;
            sum += u64::from(h.target);
        }
        assert_eq!(n, BATCH);
        black_box(sum);
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

struct PingPongResult {
    frame_ns: f64,
    empty_ns: f64,
    floor_ns: f64,
    /// Per message, raw (frame / 2M) and net of the empty frame.
    per_message_ns: f64,
    per_message_net_ns: f64,
    ratio_raw: f64,
    ratio_net: f64,
    frame_spread: (f64, f64),
    /// Two bare coroutines resumed in turn, per resume, and per message / that.
    pair_floor_ns: f64,
    ratio_pair: f64,
    /// Lua-side `coroutine.resume` in a Lua loop, per resume, and per message / that.
    lua_floor_ns: f64,
    ratio_lua: f64,
    /// An ordinary step resume (`task.wait()` every frame, N tasks), and per message minus it.
    wait_resume_ns: f64,
    over_wait_ns: f64,
    /// Per message with `instruction_budget: None`, and its ratio to the floor.
    unbudgeted_ns: f64,
    ratio_unbudgeted: f64,
    /// VM instructions per message (count hook, one frame).
    instructions_per_message: Option<f64>,
}

struct RustToScriptResult {
    frame_ns: f64,
    empty_ns: f64,
    frame_spread: (f64, f64),
    fill_ns: f64,
    per_message_ns: f64,
    per_message_net_ns: f64,
    crossbeam_ns: f64,
    ratio_crossbeam: f64,
    to_value_ns: f64,
    ratio_to_value: f64,
    hand_rolled_ns: f64,
    ratio_hand_rolled: f64,
    try_receive_ns: f64,
    unbudgeted_ns: f64,
    ratio_unbudgeted_hand_rolled: f64,
    unlimited_ns: f64,
    ratio_unlimited: f64,
    instructions_per_message: Option<f64>,
}

struct ScriptToRustResult {
    total_ns: f64,
    frame_ns: f64,
    drain_ns: f64,
    empty_ns: f64,
    total_spread: (f64, f64),
    per_message_ns: f64,
    per_message_net_ns: f64,
    crossbeam_ns: f64,
    ratio_crossbeam: f64,
    from_value_ns: f64,
    from_value_path_ns: f64,
    ratio_from_value: f64,
    hand_rolled_ns: f64,
    ratio_hand_rolled: f64,
    unbudgeted_ns: f64,
    ratio_unbudgeted_hand_rolled: f64,
    unlimited_ns: f64,
    ratio_unlimited: f64,
    instructions_per_message: Option<f64>,
}

#[derive(Default)]
struct Summary {
    rounds: usize,
    ping_pong: Option<PingPongResult>,
    rust_to_script: Option<RustToScriptResult>,
    script_to_rust: Option<ScriptToRustResult>,
    memory: Vec<MemoryRow>,
}

/// The Lua heap around `MEMORY_MESSAGES` messages through one path.
struct MemoryRow {
    path: &'static str,
    before: usize,
    after: usize,
}

// ---------------------------------------------------------------------------------------------
// 1. Ping-pong over unbuffered Lua channels
// ---------------------------------------------------------------------------------------------

/// An echo task that receives on `ping` and sends back on `pong`, and a driver that, once per
/// frame, makes `m` round trips (send on `ping`, receive on `pong`), then `task.wait()`s. Both
/// channels are unbuffered: each send hands its value to the waiting receiver and wakes it, each
/// receive parks, so every message is one park and one resume of its receiver, all in one step.
fn ping_pong_source(m: usize) -> String {
    format!(
        "local M = {m}
         local ping, pong = Channel.new(), Channel.new()
         task.spawn(function()
           while true do
             local v = ping:receive()
             pong:send(v)
           end
         end)
         task.spawn(function()
           while true do
             task.wait()
             for i = 1, M do
               ping:send(i)
               local v = pong:receive()
               if v ~= i then error('ping-pong out of order: sent ' .. i .. ', got ' .. tostring(v)) end
             end
           end
         end)"
    )
}

/// Resumes in one ping-pong frame: the driver's frame wait, then one per message.
const PING_PONG_RESUMES: u64 = 2 * ROUND_TRIPS as u64 + 1;

/// Sets up the ping-pong on `app` and checks one frame.
fn setup_ping_pong(app: &mut App) {
    update(app, 3);
    spawn_script(app, "bench/ping_pong.lua", &ping_pong_source(ROUND_TRIPS));
    update(app, 4);
    assert_eq!(runtime(app).live_tasks(), 2, "the echo and the driver should be alive");
    assert_eq!(script_errors(app), 0, "the script should not fail");
    assert_eq!(update_counting(app), PING_PONG_RESUMES, "2M + 1 resumes per frame");
}

/// The ping-pong app, and the frames it ran since it was checked (to check them all at the end).
struct PingPong {
    app: App,
    start: u64,
    frames: u64,
}

impl PingPong {
    fn new(plugin: LuaCoroutinesPlugin) -> Self {
        let mut app = new_app_with(plugin);
        setup_ping_pong(&mut app);
        let start = resumed(&app);
        Self { app, start, frames: 0 }
    }

    #[inline(never)]
    fn frame(&mut self) {
        self.app.update();
        self.frames += 1;
    }

    /// Every frame made exactly the round trips, and the script never failed.
    fn check(&self) {
        assert_eq!(resumed(&self.app) - self.start, self.frames * PING_PONG_RESUMES);
        assert_eq!(runtime(&self.app).live_tasks(), 2);
        assert_eq!(script_errors(&self.app), 0);
    }
}

fn bench_ping_pong(c: &mut Criterion, plan: &Plan, summary: &mut Summary) {
    let mut app = PingPong::new(plugin());
    let mut app_nb = PingPong::new(unbudgeted());
    let mut empty = empty_app();
    let mut plain = plain_wait_app(FLOOR_COROUTINES);
    let raw = RawCoroutines::new(FLOOR_COROUTINES);
    let pair = RawCoroutines::new(2);
    let lua_pp = LuaPingPong::new();
    let messages = 2 * ROUND_TRIPS;

    let mut group = c.benchmark_group(format!("ping_pong/{ROUND_TRIPS}"));
    criterion_group_config(&mut group, plan);
    group.throughput(Throughput::Elements(messages as u64));
    group.bench_function("crate_ping_pong_frame", |b| b.iter(|| app.frame()));
    group.throughput(Throughput::Elements(FLOOR_COROUTINES as u64));
    group.bench_function("raw_mlua_resume_floor", |b| b.iter(|| raw.pass()));
    group.finish();

    let samples = interleave(
        plan,
        vec![
            Part::new(|| app.frame()),
            Part::new(|| empty.update()),
            Part::new(|| raw.pass()),
            Part::new(|| pair.alternate(messages)),
            Part::new(|| lua_pp.round_trips(ROUND_TRIPS)),
            Part::new(|| plain.update()),
            Part::new(|| app_nb.frame()),
        ],
    );
    app.check();
    app_nb.check();
    assert_eq!(script_errors(&plain), 0);
    let instructions = vm_instructions(
        |mut a| {
            setup_ping_pong(&mut a);
            a
        },
        |a| {
            assert_eq!(update_counting(a), PING_PONG_RESUMES);
            assert_eq!(script_errors(a), 0);
        },
    );

    let (pp, em, floor, pr, lp, wt, nb) =
        (&samples[0], &samples[1], &samples[2], &samples[3], &samples[4], &samples[5], &samples[6]);
    let m = messages as f64;
    let n = FLOOR_COROUTINES as f64;
    summary.ping_pong = Some(PingPongResult {
        frame_ns: median(pp),
        empty_ns: median(em),
        floor_ns: median(floor) / n,
        per_message_ns: median(pp) / m,
        per_message_net_ns: median_by(pp, em, |p, e| (p - e) / m),
        ratio_raw: median_by(pp, floor, |p, f| (p / m) / (f / n)),
        ratio_net: median_by3(pp, em, floor, |p, e, f| ((p - e) / m) / (f / n)),
        frame_spread: spread(pp),
        pair_floor_ns: median(pr) / m,
        ratio_pair: median_by(pp, pr, |p, r| p / r),
        lua_floor_ns: median(lp) / m,
        ratio_lua: median_by(pp, lp, |p, l| p / l),
        wait_resume_ns: median(wt) / n,
        over_wait_ns: median_by(pp, wt, |p, w| p / m - w / n),
        unbudgeted_ns: median(nb) / m,
        ratio_unbudgeted: median_by(nb, floor, |p, f| (p / m) / (f / n)),
        instructions_per_message: instructions.map(|i| i as f64 / m),
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Rust -> script through a typed channel, batched in one frame
// ---------------------------------------------------------------------------------------------

/// The same drain with `tryReceive` until it comes back empty, then `task.wait()`.
const DRAIN_TRY_RECEIVE: &str = "
local ch = Channel.named('hits')
local expected = 0
while true do
  while true do
    local h, ok = ch:tryReceive()
    if not ok then break end
    if h.target ~= expected then error('out of order: ' .. tostring(h.target) .. ' ~= ' .. expected) end
    expected = (expected + 1) % BATCH
    local _ = h.amount
  end
  task.wait()
end";

/// An app whose script drains the typed channel each frame; Rust fills it before each frame.
struct DrainApp {
    app: App,
    tx: Sender<Hit>,
    /// The untimed fill of each cycle (nanoseconds).
    fills: Vec<f64>,
}

impl DrainApp {
    fn new(plugin: LuaCoroutinesPlugin, source: &str) -> Self {
        Self::setup(new_app_with(plugin), source)
    }

    fn setup(mut app: App, source: &str) -> Self {
        app.add_lua_channel::<Hit>(CHANNEL, BATCH);
        let tx = app.world().resource::<LuaChannel<Hit>>().sender();
        update(&mut app, 3);
        spawn_script(&mut app, "bench/drain.lua", &source.replace("BATCH", &BATCH.to_string()));
        update(&mut app, 3);
        assert_eq!(runtime(&app).live_tasks(), 1, "the draining task should be alive");
        let mut s = Self { app, tx, fills: Vec::new() };
        for _ in 0..2 {
            s.cycle();
        }
        assert_eq!(script_errors(&s.app), 0, "the script should not fail");
        s.fills.clear();
        s
    }

    /// Fills the channel with `BATCH` values (untimed), then times the frame that drains them.
    #[inline(never)]
    fn cycle(&mut self) -> Duration {
        let start = Instant::now();
        for i in 0..BATCH {
            self.tx.try_send(hit(i)).expect("the channel should have room for the batch");
        }
        self.fills.push(start.elapsed().as_nanos() as f64);
        let before = resumed(&self.app);
        let frame = self.drain_frame();
        assert_eq!(resumed(&self.app) - before, 1, "one resume drains the batch");
        assert!(self.tx.is_empty(), "the script should drain the whole batch in one frame");
        frame
    }

    #[inline(never)]
    fn drain_frame(&mut self) -> Duration {
        let start = Instant::now();
        self.app.update();
        start.elapsed()
    }

    fn check(&self) {
        assert_eq!(runtime(&self.app).live_tasks(), 1);
        assert_eq!(script_errors(&self.app), 0);
    }
}

fn bench_rust_to_script(c: &mut Criterion, plan: &Plan, summary: &mut Summary) {
    let mut app = DrainApp::new(plugin(), DRAIN_RECEIVE);
    let mut app_try = DrainApp::new(plugin(), DRAIN_TRY_RECEIVE);
    let mut app_nb = DrainApp::new(unbudgeted(), DRAIN_RECEIVE);
    let mut app_nl = DrainApp::new(unlimited_memory(), DRAIN_RECEIVE);
    let mut empty = empty_app();
    let crossbeam = CrossbeamFloor::new();
    let serde = SerdeFloor::new();

    let mut group = c.benchmark_group(format!("rust_to_script/{BATCH}"));
    criterion_group_config(&mut group, plan);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("crate_drain_frame", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| app.cycle()).sum())
    });
    group.bench_function("crossbeam_floor", |b| b.iter(|| crossbeam.batch()));
    group.bench_function("serde_to_value_reference", |b| b.iter(|| serde.serialize_batch()));
    group.finish();
    app.fills.clear();

    let samples = interleave(
        plan,
        vec![
            Part::timed(|| app.cycle()),
            Part::new(|| empty.update()),
            Part::new(|| crossbeam.batch()),
            Part::new(|| serde.serialize_batch()),
            Part::timed(|| serde.hand_rolled_drain()),
            Part::timed(|| app_try.cycle()),
            Part::timed(|| app_nb.cycle()),
            Part::timed(|| app_nl.cycle()),
        ],
    );
    for a in [&app, &app_try, &app_nb, &app_nl] {
        a.check();
    }
    let instructions = vm_instructions(
        |a| DrainApp::setup(a, DRAIN_RECEIVE),
        |s| {
            s.cycle();
            s.check();
        },
    );

    let (fr, em, cb, tv, hr, tr, nb, nl) = (
        &samples[0],
        &samples[1],
        &samples[2],
        &samples[3],
        &samples[4],
        &samples[5],
        &samples[6],
        &samples[7],
    );
    let b = BATCH as f64;
    summary.rust_to_script = Some(RustToScriptResult {
        frame_ns: median(fr),
        empty_ns: median(em),
        frame_spread: spread(fr),
        fill_ns: recorded_median(&app.fills),
        per_message_ns: median(fr) / b,
        per_message_net_ns: median_by(fr, em, |f, e| (f - e) / b),
        crossbeam_ns: median(cb) / b,
        ratio_crossbeam: median_by(fr, cb, |f, c| f / c),
        to_value_ns: median(tv) / b,
        ratio_to_value: median_by(fr, tv, |f, t| f / t),
        hand_rolled_ns: median(hr) / b,
        ratio_hand_rolled: median_by(fr, hr, |f, h| f / h),
        try_receive_ns: median(tr) / b,
        unbudgeted_ns: median(nb) / b,
        ratio_unbudgeted_hand_rolled: median_by(nb, hr, |f, h| f / h),
        unlimited_ns: median(nl) / b,
        ratio_unlimited: median_by(nl, fr, |n, f| n / f),
        instructions_per_message: instructions.map(|i| i as f64 / b),
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Script -> Rust through a typed channel, batched in one frame
// ---------------------------------------------------------------------------------------------

/// Sending tasks in the script -> Rust section. One resume runs at most the default instruction
/// budget (10,000,000 VM instructions), and a checked send of `Hit` costs about 110 of them, so
/// one resume sends at most about 90,000: the batch is split between two tasks, both resumed in
/// the frame.
const SENDERS: usize = 2;

/// An app whose script sends a batch each frame; Rust drains it after the frame.
struct SendApp {
    app: App,
    rx: Receiver<Hit>,
    /// The frame and the drain of each cycle (nanoseconds).
    frames: Vec<f64>,
    drains: Vec<f64>,
}

impl SendApp {
    fn new(plugin: LuaCoroutinesPlugin) -> Self {
        Self::setup(new_app_with(plugin))
    }

    fn setup(mut app: App) -> Self {
        app.add_lua_channel::<Hit>(CHANNEL, BATCH);
        let rx = app.world().resource::<LuaChannel<Hit>>().receiver();
        update(&mut app, 3);
        let source = SEND_BATCH.replace("SENDERS", &SENDERS.to_string()).replace("BATCH", &BATCH.to_string());
        spawn_script(&mut app, "bench/send.lua", &source);
        // The frame the script starts in sends the first batch: drain it, and check the values.
        let mut frames = 0;
        loop {
            frames += 1;
            assert!(frames < 10, "the script never sent its batch");
            app.update();
            let got: Vec<Hit> = rx.try_iter().collect();
            if !got.is_empty() {
                assert_eq!(got.len(), BATCH, "the whole batch should arrive in one frame");
                assert!(got.iter().enumerate().all(|(i, h)| *h == hit(i)), "values arrive as sent, in order");
                break;
            }
        }
        assert_eq!(runtime(&app).live_tasks(), SENDERS, "the sending tasks should be alive");
        let mut s = Self { app, rx, frames: Vec::new(), drains: Vec::new() };
        for _ in 0..2 {
            s.cycle();
        }
        assert_eq!(script_errors(&s.app), 0, "the script should not fail");
        s.frames.clear();
        s.drains.clear();
        s
    }

    /// Times the frame in which the script sends the batch, plus the Rust `try_iter` drain.
    #[inline(never)]
    fn cycle(&mut self) -> Duration {
        let before = resumed(&self.app);
        let start = Instant::now();
        self.app.update();
        let frame = start.elapsed();
        let (n, sum) = self.drain();
        let total = start.elapsed();
        assert_eq!(resumed(&self.app) - before, SENDERS as u64, "one resume per sender sends the batch");
        assert_eq!(n, BATCH, "the whole batch should arrive in one frame");
        black_box(sum);
        self.frames.push(frame.as_nanos() as f64);
        self.drains.push((total - frame).as_nanos() as f64);
        total
    }

    #[inline(never)]
    fn drain(&self) -> (usize, u64) {
        let (mut n, mut sum) = (0usize, 0u64);
        for h in self.rx.try_iter() {
            n += 1;
            sum += u64::from(h.target);
        }
        (n, sum)
    }

    fn check(&self) {
        assert_eq!(runtime(&self.app).live_tasks(), SENDERS);
        assert_eq!(script_errors(&self.app), 0);
    }
}

fn bench_script_to_rust(c: &mut Criterion, plan: &Plan, summary: &mut Summary) {
    let mut app = SendApp::new(plugin());
    let mut app_nb = SendApp::new(unbudgeted());
    let mut app_nl = SendApp::new(unlimited_memory());
    let mut empty = empty_app();
    let crossbeam = CrossbeamFloor::new();
    let serde = SerdeFloor::new();

    let mut group = c.benchmark_group(format!("script_to_rust/{BATCH}"));
    criterion_group_config(&mut group, plan);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("crate_send_frame_and_drain", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| app.cycle()).sum())
    });
    group.bench_function("crossbeam_floor", |b| b.iter(|| crossbeam.batch()));
    group.bench_function("serde_from_value_reference", |b| b.iter(|| serde.deserialize_batch()));
    group.finish();
    app.frames.clear();
    app.drains.clear();

    let samples = interleave(
        plan,
        vec![
            Part::timed(|| app.cycle()),
            Part::new(|| empty.update()),
            Part::new(|| crossbeam.batch()),
            Part::new(|| serde.deserialize_batch()),
            Part::new(|| serde.deserialize_batch_with_path()),
            Part::new(|| serde.hand_rolled_send()),
            Part::timed(|| app_nb.cycle()),
            Part::timed(|| app_nl.cycle()),
        ],
    );
    for a in [&app, &app_nb, &app_nl] {
        a.check();
    }
    let instructions = vm_instructions(SendApp::setup, |s| {
        s.cycle();
        s.check();
    });

    let (tt, em, cb, fv, fp, hr, nb, nl) = (
        &samples[0],
        &samples[1],
        &samples[2],
        &samples[3],
        &samples[4],
        &samples[5],
        &samples[6],
        &samples[7],
    );
    let b = BATCH as f64;
    summary.script_to_rust = Some(ScriptToRustResult {
        total_ns: median(tt),
        frame_ns: recorded_median(&app.frames),
        drain_ns: recorded_median(&app.drains),
        empty_ns: median(em),
        total_spread: spread(tt),
        per_message_ns: median(tt) / b,
        per_message_net_ns: median_by(tt, em, |t, e| (t - e) / b),
        crossbeam_ns: median(cb) / b,
        ratio_crossbeam: median_by(tt, cb, |t, c| t / c),
        from_value_ns: median(fv) / b,
        from_value_path_ns: median(fp) / b,
        ratio_from_value: median_by(tt, fv, |t, f| t / f),
        hand_rolled_ns: median(hr) / b,
        ratio_hand_rolled: median_by(tt, hr, |t, h| t / h),
        unbudgeted_ns: median(nb) / b,
        ratio_unbudgeted_hand_rolled: median_by(nb, hr, |t, h| t / h),
        unlimited_ns: median(nl) / b,
        ratio_unlimited: median_by(nl, tt, |n, t| n / t),
        instructions_per_message: instructions.map(|i| i as f64 / b),
    });
}

// ---------------------------------------------------------------------------------------------
// 4. Memory: the Lua heap before and after a million messages
// ---------------------------------------------------------------------------------------------

/// The Lua heap after two full collections (bytes): what is still reachable.
fn lua_heap(app: &App) -> usize {
    let lua = runtime(app).lua();
    lua.gc_collect().expect("collect");
    lua.gc_collect().expect("collect");
    lua.used_memory()
}

/// Each channel-heavy path (default plugin: budget and memory limit on) carries `MEMORY_MESSAGES`
/// messages after warm-up; the heap is measured before and after. Whatever a message leaves behind
/// that is not collected shows as growth.
fn bench_memory(summary: &mut Summary) {
    let mut drain = DrainApp::new(plugin(), DRAIN_RECEIVE);
    let before = lua_heap(&drain.app);
    for _ in 0..MEMORY_MESSAGES / BATCH {
        drain.cycle();
    }
    drain.check();
    let after = lua_heap(&drain.app);
    summary.memory.push(MemoryRow {
        path: "typed channel, Rust -> script (batches of 100,000)",
        before,
        after,
    });

    let mut send = SendApp::new(plugin());
    let before = lua_heap(&send.app);
    for _ in 0..MEMORY_MESSAGES / BATCH {
        send.cycle();
    }
    send.check();
    let after = lua_heap(&send.app);
    summary.memory.push(MemoryRow {
        path: "typed channel, script -> Rust (batches of 100,000)",
        before,
        after,
    });

    let mut ping = PingPong::new(plugin());
    update(&mut ping.app, 2);
    ping.start = resumed(&ping.app);
    let before = lua_heap(&ping.app);
    for _ in 0..MEMORY_MESSAGES / (2 * ROUND_TRIPS) {
        ping.frame();
    }
    ping.check();
    let after = lua_heap(&ping.app);
    summary.memory.push(MemoryRow { path: "unbuffered Lua channel ping-pong", before, after });
}

// ---------------------------------------------------------------------------------------------
// The summary table
// ---------------------------------------------------------------------------------------------

/// Messages per second at `ns` per message.
fn fmt_rate(ns: f64) -> String {
    let rate = 1e9 / ns;
    if rate >= 1e6 { format!("{:.2} M/s", rate / 1e6) } else { format!("{:.0} k/s", rate / 1e3) }
}

/// One `label  value` line of the table.
fn row(o: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(o, "   {label:<62}{value:>14}");
}

/// The instructions-per-message lines (count hook; `n/a` under Luau).
fn instruction_rows(o: &mut String, per_message: Option<f64>, per_resume: bool) {
    match per_message {
        Some(i) => {
            row(o, "(ref) Lua VM instructions per message (count hook, 1 frame)", format!("{i:.1}"));
            if per_resume {
                let fits = DEFAULT_BUDGET as f64 / i;
                row(
                    o,
                    "(ref)   messages one resume moves within the default budget",
                    format!("~{:.0}k", fits / 1e3),
                );
                row(
                    o,
                    &format!("(ref)   this batch's share of the budget ({BATCH} in one resume)"),
                    format!("{:.0}%", 100.0 * i * BATCH as f64 / DEFAULT_BUDGET as f64),
                );
            }
        }
        None => row(o, "(ref) Lua VM instructions per message", "n/a (Luau)"),
    }
}

impl Summary {
    fn render(&self) -> String {
        let mut o = String::new();
        let line = "=".repeat(100);
        let _ = writeln!(o, "\n{line}");
        let _ = writeln!(o, "bevy_lua_coroutines channel benchmarks: summary (own measurements)");
        let _ = writeln!(
            o,
            "Each figure: median of {} interleaved rounds (crate path and floor timed back to back in each \
             round);\neach ratio: median of the per-round ratios. Crate apps run with the default \
             instruction budget\n({DEFAULT_BUDGET} per resume) unless marked `instruction_budget: None`.",
            self.rounds
        );
        let _ = writeln!(o, "{line}");

        if let Some(p) = &self.ping_pong {
            let _ = writeln!(
                o,
                "\n1. Ping-pong over two unbuffered Lua channels (Channel.new()): an echo task and a driver \
                 making\n   M = {ROUND_TRIPS} round trips per frame, all inside one app.update(). A message = \
                 one send + one receive\n   (2M = {} messages per frame; each parks its receiver and resumes \
                 it once: 2M + 1 resumes per frame).\n   Floor: {FLOOR_COROUTINES} bare coroutines resumed \
                 with mlua Thread::resume in a loop (benches/scheduler.rs).",
                2 * ROUND_TRIPS
            );
            row(&mut o, "crate ping-pong frame (M round trips)", fmt_time(p.frame_ns));
            row(
                &mut o,
                "  min .. max over rounds",
                format!("{}..{}", fmt_time(p.frame_spread.0), fmt_time(p.frame_spread.1)),
            );
            row(&mut o, "empty frame (same plugin, no scripts)", fmt_time(p.empty_ns));
            row(&mut o, "per message, raw (frame / 2M)", fmt_time(p.per_message_ns));
            row(&mut o, "per message, net ((frame - empty) / 2M)", fmt_time(p.per_message_net_ns));
            row(&mut o, "per round trip, raw (frame / M)", fmt_time(2.0 * p.per_message_ns));
            row(&mut o, "raw mlua floor per resume (Thread::resume loop)", fmt_time(p.floor_ns));
            row(&mut o, "RATIO per message raw / bare resume", format!("{:.2}x", p.ratio_raw));
            row(&mut o, "RATIO per message net / bare resume", format!("{:.2}x", p.ratio_net));
            row(&mut o, "(ref) two bare coroutines resumed in turn, per resume", fmt_time(p.pair_floor_ns));
            row(&mut o, "(ref) RATIO per message / that", format!("{:.2}x", p.ratio_pair));
            row(
                &mut o,
                "(ref) Lua-side coroutine.resume in a Lua loop, per resume",
                fmt_time(p.lua_floor_ns),
            );
            row(&mut o, "(ref) RATIO per message / that", format!("{:.2}x", p.ratio_lua));
            row(
                &mut o,
                &format!("(ref) step resume of a task.wait() task ({FLOOR_COROUTINES} tasks)"),
                fmt_time(p.wait_resume_ns),
            );
            row(
                &mut o,
                "(ref) per message minus that resume: the channel's own work",
                fmt_time(p.over_wait_ns),
            );
            row(&mut o, "(ref) per message, instruction_budget: None", fmt_time(p.unbudgeted_ns));
            row(&mut o, "(ref) RATIO that / bare resume", format!("{:.2}x", p.ratio_unbudgeted));
            instruction_rows(&mut o, p.instructions_per_message, false);
            let _ = writeln!(
                o,
                "   target: a message costs at most 3x two bare resumes, i.e. per message / bare resume <= \
                 {PING_PONG_TARGET:.1}\n     -> raw {:.2}x {}, net of empty frame {:.2}x {}",
                p.ratio_raw,
                verdict(p.ratio_raw <= PING_PONG_TARGET),
                p.ratio_net,
                verdict(p.ratio_net <= PING_PONG_TARGET)
            );
            let _ = writeln!(
                o,
                "   (stricter reading, a round trip = two resumes at most 3x: per message / bare resume <= 3.0\n     \
                 -> raw {:.2}x {})",
                p.ratio_raw,
                verdict(p.ratio_raw <= 3.0)
            );
        }

        if let Some(r) = &self.rust_to_script {
            let _ = writeln!(
                o,
                "\n2. Rust -> script: a typed channel of `Hit {{ target: u32, amount: f32, time: f64, kind: String }}` (capacity {BATCH}), \
                 filled from\n   Rust with {BATCH} values (untimed), then timed: the app.update() in which one \
                 task drains it with\n   `ch:receive()` in a loop (one resume; fields read, order checked). \
                 Floor: {BATCH} values sent and\n   received through a bare crossbeam channel."
            );
            row(&mut o, "crate drain frame", fmt_time(r.frame_ns));
            row(
                &mut o,
                "  min .. max over rounds",
                format!("{}..{}", fmt_time(r.frame_spread.0), fmt_time(r.frame_spread.1)),
            );
            row(&mut o, "empty frame (same plugin, no scripts)", fmt_time(r.empty_ns));
            row(&mut o, "per message, raw (frame / batch)", fmt_time(r.per_message_ns));
            row(&mut o, "per message, net ((frame - empty) / batch)", fmt_time(r.per_message_net_ns));
            row(&mut o, "THROUGHPUT, raw", fmt_rate(r.per_message_ns));
            row(&mut o, "crossbeam floor per message (send + recv)", fmt_time(r.crossbeam_ns));
            row(&mut o, "RATIO crate / crossbeam floor", format!("{:.1}x", r.ratio_crossbeam));
            row(&mut o, "(ref) serde alone: mlua to_value of a Hit, per message", fmt_time(r.to_value_ns));
            row(&mut o, "(ref) RATIO crate / serde alone", format!("{:.2}x", r.ratio_to_value));
            row(
                &mut o,
                "(ref) hand-rolled mlua (Lua loop, Rust try_recv + to_value)",
                fmt_time(r.hand_rolled_ns),
            );
            row(&mut o, "(ref) RATIO crate / hand-rolled", format!("{:.2}x", r.ratio_hand_rolled));
            row(
                &mut o,
                "(ref) untimed Rust fill (try_send), per message",
                fmt_time(r.fill_ns / BATCH as f64),
            );
            row(
                &mut o,
                "(ref) THROUGHPUT counting the fill too",
                fmt_rate(r.per_message_ns + r.fill_ns / BATCH as f64),
            );
            row(&mut o, "(ref) per message, tryReceive loop + task.wait()", fmt_time(r.try_receive_ns));
            row(&mut o, "(ref) per message, instruction_budget: None", fmt_time(r.unbudgeted_ns));
            row(&mut o, "(ref) RATIO that / hand-rolled", format!("{:.2}x", r.ratio_unbudgeted_hand_rolled));
            row(&mut o, "(ref) per message, memory_limit: None", fmt_time(r.unlimited_ns));
            row(&mut o, "(ref) RATIO that / crate (defaults)", format!("{:.2}x", r.ratio_unlimited));
            instruction_rows(&mut o, r.instructions_per_message, true);
            let _ = writeln!(
                o,
                "   target: >= {:.0} messages/s batched in one frame -> {} raw ({}), {} net",
                TARGET_MESSAGES_PER_SEC,
                verdict(1e9 / r.per_message_ns >= TARGET_MESSAGES_PER_SEC),
                fmt_rate(r.per_message_ns),
                verdict(1e9 / r.per_message_net_ns >= TARGET_MESSAGES_PER_SEC)
            );
        }

        if let Some(s) = &self.script_to_rust {
            let _ = writeln!(
                o,
                "\n3. Script -> Rust: {SENDERS} tasks send {BATCH} fresh tables `{{ target = i, amount = i * 0.5, time = i * 0.25, kind = 'fire' }}` \
                 through the typed\n   channel (capacity {BATCH}) in one frame; timed: that app.update() plus \
                 the Rust `try_iter` drain.\n   Floor: {BATCH} values sent and received through a bare \
                 crossbeam channel."
            );
            row(&mut o, "crate send frame + drain", fmt_time(s.total_ns));
            row(
                &mut o,
                "  min .. max over rounds",
                format!("{}..{}", fmt_time(s.total_spread.0), fmt_time(s.total_spread.1)),
            );
            row(&mut o, "  of which the frame", fmt_time(s.frame_ns));
            row(&mut o, "  of which the Rust drain", fmt_time(s.drain_ns));
            row(&mut o, "empty frame (same plugin, no scripts)", fmt_time(s.empty_ns));
            row(&mut o, "per message, raw ((frame + drain) / batch)", fmt_time(s.per_message_ns));
            row(&mut o, "per message, net of the empty frame", fmt_time(s.per_message_net_ns));
            row(&mut o, "THROUGHPUT, raw", fmt_rate(s.per_message_ns));
            row(&mut o, "crossbeam floor per message (send + recv)", fmt_time(s.crossbeam_ns));
            row(&mut o, "RATIO crate / crossbeam floor", format!("{:.1}x", s.ratio_crossbeam));
            row(
                &mut o,
                "(ref) serde alone: mlua from_value of a table, per message",
                fmt_time(s.from_value_ns),
            );
            row(&mut o, "(ref) RATIO crate / serde alone", format!("{:.2}x", s.ratio_from_value));
            row(
                &mut o,
                "(ref) from_value via serde_path_to_error (as the crate does)",
                fmt_time(s.from_value_path_ns),
            );
            row(
                &mut o,
                "(ref) hand-rolled mlua (Lua loop + table, Rust from_value)",
                fmt_time(s.hand_rolled_ns),
            );
            row(&mut o, "(ref) RATIO crate / hand-rolled", format!("{:.2}x", s.ratio_hand_rolled));
            row(&mut o, "(ref) per message, instruction_budget: None", fmt_time(s.unbudgeted_ns));
            row(&mut o, "(ref) RATIO that / hand-rolled", format!("{:.2}x", s.ratio_unbudgeted_hand_rolled));
            row(&mut o, "(ref) per message, memory_limit: None", fmt_time(s.unlimited_ns));
            row(&mut o, "(ref) RATIO that / crate (defaults)", format!("{:.2}x", s.ratio_unlimited));
            instruction_rows(&mut o, s.instructions_per_message, true);
            let _ = writeln!(
                o,
                "   target: >= {:.0} messages/s batched in one frame -> {} raw ({}), {} net",
                TARGET_MESSAGES_PER_SEC,
                verdict(1e9 / s.per_message_ns >= TARGET_MESSAGES_PER_SEC),
                fmt_rate(s.per_message_ns),
                verdict(1e9 / s.per_message_net_ns >= TARGET_MESSAGES_PER_SEC)
            );
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                o,
                "\n4. Lua heap (after a full collection) before and after {MEMORY_MESSAGES} messages, \
                 default plugin"
            );
            for m in &self.memory {
                row(&mut o, m.path, format!("{} KiB -> {} KiB", m.before / 1024, m.after / 1024));
            }
        }
        let _ = writeln!(o, "{line}");
        o
    }
}

fn main() {
    let plan = Plan::from_args();
    let mut c = Criterion::default().without_plots().configure_from_args();
    let mut summary = Summary { rounds: plan.rounds, ..Default::default() };

    if plan.wants("ping_pong") {
        bench_ping_pong(&mut c, &plan, &mut summary);
    }
    if plan.wants("rust_to_script") {
        bench_rust_to_script(&mut c, &plan, &mut summary);
    }
    if plan.wants("script_to_rust") {
        bench_script_to_rust(&mut c, &plan, &mut summary);
    }
    if plan.wants("memory") {
        bench_memory(&mut summary);
    }

    c.final_summary();
    print!("{}", summary.render());
}
