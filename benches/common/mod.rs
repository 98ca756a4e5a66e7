//! Harness code shared by the benchmark files (`benches/scheduler.rs`, `benches/promises.rs`,
//! `benches/channels.rs`, `benches/reload.rs`, `benches/streams.rs`, `benches/world.rs`,
//! `benches/world_profile.rs`): the measurement plan, app construction, the raw mlua
//! `Thread::resume` floor, interleaved timing, medians and ratios, and the summary table's
//! formatting helpers.
//!
//! Each bench compiles this module on its own (`mod common;`) and uses only part of it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
#[cfg(not(feature = "luau"))]
use bevy_lua_coroutines::mlua::HookTriggers;
use bevy_lua_coroutines::mlua::{Function, Lua, Table, Thread, VmState};
use bevy_lua_coroutines::prelude::*;
use criterion::SamplingMode;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The fixed step every app uses (1/60 s as whole nanoseconds), as in the integration tests.
pub const DT: Duration = Duration::from_nanos(16_666_667);

/// The world benchmarks' one-script variant (`benches/world.rs`, `benches/world_profile.rs`): one
/// script gets and sets the `Transform` of every entity named `mover`, once per frame.
pub const ONE_SCRIPT: &str = r#"
        local movers = world.findAll("mover")
        while true do
            for i = 1, #movers do
                local e = movers[i]
                local t = e:get("Transform")
                e:set("Transform", { translation = { x = t.translation.x + 1 } })
            end
            task.wait()
        end
"#;

/// `n` tasks that each `task.wait()` every frame: the ordinary resume path.
pub fn wait_every_frame_source(n: usize) -> String {
    format!("for i = 1, {n} do task.spawn(function() while true do task.wait() end end) end")
}

/// `n` tasks (of one script) that each call `rustOne()` (a Rust async function the bench
/// registers), await its promise, then wait a frame.
pub fn rust_async_source(n: usize) -> String {
    format!("for i = 1, {n} do task.spawn(function() while true do await(rustOne()) task.wait() end end) end")
}

/// How long [`wait_for_futures`] waits before it gives up.
const FUTURES_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits (sleeping, outside any timed region) until `done`, the count of futures that finished
/// (each counts itself as it completes), reaches `target`, then `grace` more: a future still sends
/// its result after counting itself. Returns the wait before the grace.
pub fn wait_for_futures(done: &AtomicUsize, target: usize, grace: Duration) -> Duration {
    let start = Instant::now();
    while done.load(Ordering::Acquire) < target {
        assert!(
            start.elapsed() < FUTURES_TIMEOUT,
            "only {} of {target} futures finished within {FUTURES_TIMEOUT:?}",
            done.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let waited = start.elapsed();
    std::thread::sleep(grace);
    waited
}

/// The Lua-only resolve -> resume round trip: `n` consumer tasks, each awaiting its own promise of
/// the current generation and, once woken, at once awaiting its promise of the next one; a producer
/// task that alternates two frames: a *setup* frame in which it makes the next generation (`n`
/// `Promise.new`s, their resolvers kept), and a *round-trip* frame in which it resolves the current
/// generation. So the round-trip frame holds the producer's one resume and `n` round trips
/// (resolve, wake, the consumer's resume, and its park on the next promise), and nothing else per
/// task.
pub fn round_trip_source(n: usize) -> String {
    format!(
        "local N = {n}
         local promises, resolvers = {{}}, {{}}
         local function make(g)
           local ps, rs = {{}}, {{}}
           for i = 1, N do
             ps[i] = Promise.new(function(resolve) rs[i] = resolve end)
           end
           promises[g], resolvers[g] = ps, rs
         end
         make(1)
         for i = 1, N do
           task.spawn(function()
             local g = 1
             while true do
               await(promises[g][i])
               g = g + 1
             end
           end)
         end
         task.spawn(function()
           local g = 1
           while true do
             task.wait()          -- setup frame: the next generation
             make(g + 1)
             task.wait()          -- round-trip frame: settle this one
             local rs = resolvers[g]
             promises[g], resolvers[g] = nil, nil
             for i = 1, N do rs[i](g) end
             g = g + 1
           end
         end)"
    )
}

/// The plugin's default instruction budget per resume; the raw "with hook" floor mirrors its hook.
pub const DEFAULT_BUDGET: u64 = 10_000_000;

/// How the own (summary) measurements are taken.
#[derive(Clone)]
pub struct Plan {
    /// The name filter given on the command line (`cargo bench --bench <bench> -- <section>`):
    /// sections whose name does not contain it are skipped, own measurements included.
    pub filter: Option<String>,
    /// Interleaved rounds per comparison.
    pub rounds: usize,
    /// Target wall time of one timed batch.
    pub batch: Duration,
    /// Criterion's warm-up and measurement times.
    pub warm_up: Duration,
    pub measure: Duration,
}

impl Plan {
    pub fn from_args() -> Self {
        // Criterion's options that take a value (so that value is not mistaken for the filter).
        const VALUED: [&str; 16] = [
            "--save-baseline",
            "-s",
            "--baseline",
            "-b",
            "--baseline-lenient",
            "--load-baseline",
            "--color",
            "-c",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
        ];
        let args: Vec<String> = std::env::args().skip(1).collect();
        let filter = args
            .iter()
            .enumerate()
            .find(|(i, a)| !a.starts_with('-') && (*i == 0 || !VALUED.contains(&args[i - 1].as_str())))
            .map(|(_, a)| a.clone());
        // `cargo bench` passes `--bench`; without it criterion runs each benchmark once (test mode).
        if args.iter().any(|a| a == "--bench") {
            Plan {
                filter,
                rounds: 21,
                batch: Duration::from_millis(20),
                warm_up: Duration::from_millis(500),
                measure: Duration::from_secs(2),
            }
        } else {
            Plan {
                filter,
                rounds: 3,
                batch: Duration::from_millis(2),
                warm_up: Duration::from_millis(10),
                measure: Duration::from_millis(10),
            }
        }
    }

    /// Whether the section `name` runs.
    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f) || f.contains(name))
    }
}

// ---------------------------------------------------------------------------------------------
// Apps
// ---------------------------------------------------------------------------------------------

/// Script errors seen so far (every benchmark checks its scripts ran cleanly).
#[derive(Resource, Default)]
pub struct ErrorCount(pub usize);

fn count_errors(mut errors: MessageReader<ScriptError>, mut count: ResMut<ErrorCount>) {
    for e in errors.read() {
        eprintln!("script error: {}: {}", e.script, e.message);
        count.0 += 1;
    }
}

/// The benchmarked plugin: defaults (the instruction budget and memory limit on), no stdout
/// printing, no per-instance task quota.
pub fn plugin() -> LuaCoroutinesPlugin {
    // One instance holds up to 100,000 tasks here (the scheduler bench spawns them all from one
    // script); the per-instance task quota (10,000 by default) is a guard against runaway mods,
    // not part of what is measured.
    LuaCoroutinesPlugin { print_to_stdout: false, max_tasks_per_instance: None, ..default() }
}

/// The reference plugin: [`plugin`] without the instruction budget (so without the VM's count
/// hook, which puts every Lua instruction on the VM's slow path).
pub fn unbudgeted() -> LuaCoroutinesPlugin {
    LuaCoroutinesPlugin { instruction_budget: None, ..plugin() }
}

/// The benchmarked app: `MinimalPlugins`, assets, the plugin (defaults, no stdout printing), a
/// fixed step.
pub fn new_app() -> App {
    new_app_with(plugin())
}

/// [`new_app`] with another plugin configuration.
pub fn new_app_with(plugin: LuaCoroutinesPlugin) -> App {
    new_app_in("assets", plugin)
}

/// [`new_app_with`] whose assets folder is `folder`.
pub fn new_app_in(folder: &str, plugin: LuaCoroutinesPlugin) -> App {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, AssetPlugin { file_path: folder.into(), ..default() }))
        .add_plugins(plugin)
        .insert_resource(TimeUpdateStrategy::ManualDuration(DT))
        .init_resource::<ErrorCount>()
        .add_systems(Last, count_errors);
    app
}

/// Adds a script asset; the returned strong handle keeps it loaded.
pub fn add_script(app: &mut App, path: &str, source: &str) -> Handle<LuaScript> {
    app.world_mut().resource_mut::<Assets<LuaScript>>().add(LuaScript::new(path, source))
}

/// Spawns an entity running `source`.
pub fn spawn_script(app: &mut App, path: &str, source: &str) -> Entity {
    let handle = add_script(app, path, source);
    app.world_mut().spawn(LuaScripts::new(handle)).id()
}

pub fn runtime(app: &App) -> &LuaRuntime {
    app.world().resource::<LuaRuntime>()
}

pub fn script_errors(app: &App) -> usize {
    app.world().resource::<ErrorCount>().0
}

/// Tasks the step has resumed so far (every resume counts, those woken by a channel included).
pub fn resumed(app: &App) -> u64 {
    runtime(app).stats().resumed
}

pub fn update(app: &mut App, frames: usize) {
    for _ in 0..frames {
        app.update();
    }
}

/// Runs one frame; returns how many tasks the step resumed in it.
pub fn update_counting(app: &mut App) -> u64 {
    let before = resumed(app);
    app.update();
    resumed(app) - before
}

/// An app with the plugin and no scripts, after warm-up: the frame's fixed cost.
pub fn empty_app() -> App {
    let mut app = new_app();
    update(&mut app, 8);
    app
}

// ---------------------------------------------------------------------------------------------
// The raw mlua floor
// ---------------------------------------------------------------------------------------------

/// The raw floor of a resume: `n` bare coroutines resumed one after another from Rust, taken from
/// a Rust `Vec` ([`RawCoroutines::pass`]) or, as the scheduler target defines its floor, from a Lua
/// table ([`RawCoroutines::pass_table`]).
pub struct RawCoroutines {
    _lua: Lua,
    threads: Vec<Thread>,
    /// The same threads at `1..=n`.
    table: Table,
}

impl RawCoroutines {
    pub fn new(n: usize) -> Self {
        Self::with_hook(n, false)
    }

    /// `with_hook` installs the same kind of count hook the plugin installs for its instruction
    /// budget (every `budget / 16` instructions), to show what the hook alone costs.
    pub fn with_hook(n: usize, with_hook: bool) -> Self {
        let lua = Lua::new();
        if with_hook {
            #[cfg(not(feature = "luau"))]
            lua.set_global_hook(
                HookTriggers::new().every_nth_instruction((DEFAULT_BUDGET / 16) as u32),
                |_, _| Ok(VmState::Continue),
            )
            .expect("hook");
            // Luau has no count hook; the plugin uses an interrupt there.
            #[cfg(feature = "luau")]
            lua.set_interrupt(|_| Ok(VmState::Continue));
        }
        let body: Function = lua
            .load("return function() while true do coroutine.yield() end end")
            .eval()
            .expect("coroutine body");
        let threads: Vec<Thread> = (0..n).map(|_| lua.create_thread(body.clone()).expect("thread")).collect();
        let table = lua.create_table().expect("table");
        for (i, t) in threads.iter().enumerate() {
            table.raw_set(i + 1, t).expect("store");
        }
        let raw = Self { _lua: lua, threads, table };
        raw.pass();
        raw
    }

    /// Resumes every coroutine once.
    #[inline(never)]
    pub fn pass(&self) {
        for t in &self.threads {
            t.resume::<()>(()).expect("resume");
        }
    }

    /// Resumes every coroutine once, each read from a Lua table first: mlua's `Thread::resume`
    /// loop over threads kept in a Lua table, the floor the scheduler target measures its headline
    /// against (the crate too finds each task's thread in a Lua table).
    #[inline(never)]
    pub fn pass_table(&self) {
        for i in 1..=self.threads.len() {
            let t: Thread = self.table.raw_get(i).expect("thread");
            t.resume::<()>(()).expect("resume");
        }
    }

    /// Resumes the coroutines in turn, `resumes` resumes in all (with two coroutines: the
    /// ping-pong's pattern, both always hot in cache).
    #[inline(never)]
    pub fn alternate(&self, resumes: usize) {
        let n = self.threads.len();
        for i in 0..resumes {
            self.threads[i % n].resume::<()>(()).expect("resume");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Interleaved timing
// ---------------------------------------------------------------------------------------------

/// One timed operation in an interleaved comparison.
pub struct Part<'a> {
    /// Runs the operation once and returns the time of its timed region (the whole call, or only
    /// the frame of interest when the call has untimed set-up).
    run: Box<dyn FnMut() -> Duration + 'a>,
    /// Whether the batch is timed as a whole with one clock (`run`'s return value unused), rather
    /// than as the sum of the timed regions of its calls.
    whole_batch: bool,
    /// Calls per batch (chosen so a batch's timed regions take about `Plan::batch`).
    batch: usize,
    /// Whether `batch` stays as given (operations too slow to repeat in a batch).
    fixed: bool,
    /// Nanoseconds per call, one entry per round.
    samples: Vec<f64>,
}

impl<'a> Part<'a> {
    /// An operation timed as a whole.
    pub fn new(mut run: impl FnMut() + 'a) -> Self {
        Self::timed(move || {
            let start = Instant::now();
            run();
            start.elapsed()
        })
    }

    /// An operation that times its own region of interest.
    pub fn timed(run: impl FnMut() -> Duration + 'a) -> Self {
        Self { run: Box::new(run), whole_batch: false, batch: 1, fixed: false, samples: Vec::new() }
    }

    /// An operation that times its own region, run once per round.
    pub fn once(run: impl FnMut() -> Duration + 'a) -> Self {
        Self { fixed: true, ..Self::timed(run) }
    }

    /// An operation timed as a whole, a batch of calls under one clock (no clock read per call).
    pub fn batched(mut run: impl FnMut() + 'a) -> Self {
        Self {
            whole_batch: true,
            ..Self::timed(move || {
                run();
                Duration::ZERO
            })
        }
    }

    fn calibrate(&mut self, target: Duration) {
        if self.fixed {
            return;
        }
        (self.run)();
        let one = if self.whole_batch {
            let start = Instant::now();
            (self.run)();
            start.elapsed()
        } else {
            (self.run)()
        }
        .max(Duration::from_nanos(1));
        self.batch = (target.as_secs_f64() / one.as_secs_f64()).clamp(1.0, 1e6) as usize;
    }

    fn sample(&mut self) {
        let total = if self.whole_batch {
            let start = Instant::now();
            for _ in 0..self.batch {
                (self.run)();
            }
            start.elapsed()
        } else {
            let mut total = Duration::ZERO;
            for _ in 0..self.batch {
                total += (self.run)();
            }
            total
        };
        self.samples.push(total.as_nanos() as f64 / self.batch as f64);
    }
}

/// Times every part once per round, back to back, for `plan.rounds` rounds; returns the samples
/// (nanoseconds per call) of each part.
pub fn interleave(plan: &Plan, mut parts: Vec<Part<'_>>) -> Vec<Vec<f64>> {
    for p in &mut parts {
        p.calibrate(plan.batch);
    }
    for _ in 0..plan.rounds {
        for p in &mut parts {
            p.sample();
        }
    }
    parts.into_iter().map(|p| p.samples).collect()
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The median of the per-round values of `f(a, b)`.
pub fn median_by(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> f64 {
    median(&a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect::<Vec<_>>())
}

/// The median of the per-round values of `f(a, b, c)`.
pub fn median_by3(a: &[f64], b: &[f64], c: &[f64], f: impl Fn(f64, f64, f64) -> f64) -> f64 {
    median(&(0..a.len().min(b.len()).min(c.len())).map(|i| f(a[i], b[i], c[i])).collect::<Vec<_>>())
}

/// The spread of a sample, as (min, max).
pub fn spread(xs: &[f64]) -> (f64, f64) {
    xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// The median of the values recorded beside a timed part, skipping the two calibration calls.
pub fn recorded_median(xs: &[f64]) -> f64 {
    median(&xs[xs.len().min(2)..])
}

pub fn criterion_group_config<M: criterion::measurement::Measurement>(
    group: &mut criterion::BenchmarkGroup<'_, M>,
    plan: &Plan,
) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(plan.warm_up)
        .measurement_time(plan.measure);
}

// ---------------------------------------------------------------------------------------------
// The summary table
// ---------------------------------------------------------------------------------------------

/// A duration in nanoseconds, signed, in ns, µs or ms.
pub fn fmt_time(ns: f64) -> String {
    let sign = if ns < 0.0 { "-" } else { "" };
    let ns = ns.abs();
    if ns >= 1e6 {
        format!("{sign}{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{sign}{:.2} µs", ns / 1e3)
    } else {
        format!("{sign}{ns:.0} ns")
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

// ---------------------------------------------------------------------------------------------
// Typed channels (`benches/channels.rs`, `benches/promise_profile.rs`)
// ---------------------------------------------------------------------------------------------

/// The struct sent through the typed channel benchmarks: three numbers and a short string.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct Hit {
    pub target: u32,
    pub amount: f32,
    pub time: f64,
    pub kind: String,
}

/// The `i`-th value of a batch (`amount` and `time` are exact for every `i < 2^24`).
pub fn hit(i: usize) -> Hit {
    Hit { target: i as u32, amount: i as f32 * 0.5, time: i as f64 * 0.25, kind: String::from("fire") }
}

/// One task that receives from the typed channel `hits` with `receive` until it is empty, then
/// parks in `receive` until the next step's poll finds values again: one resume per frame drains
/// the batch. Each value's fields are read, and its order checked (`target` counts up modulo
/// `BATCH`).
pub const DRAIN_RECEIVE: &str = "
local ch = Channel.named('hits')
local expected = 0
while true do
  local h = ch:receive()
  if h.target ~= expected then error('out of order: ' .. tostring(h.target) .. ' ~= ' .. expected) end
  expected = (expected + 1) % BATCH
  local _ = h.amount
end";

/// `SENDERS` tasks that each `task.wait()`, then send their share of `BATCH` fresh tables through
/// the typed channel `hits` (in order: the first task's share first), every frame.
pub const SEND_BATCH: &str = "
local ch = Channel.named('hits')
local share = math.floor(BATCH / SENDERS)
for part = 0, SENDERS - 1 do
  task.spawn(function()
    while true do
      task.wait() -- first: the spawning resume would run every task's first share itself
      for i = part * share, part * share + share - 1 do
        ch:send({ target = i, amount = i * 0.5, time = i * 0.25, kind = 'fire' })
      end
    end
  end)
end";

// ---------------------------------------------------------------------------------------------
// Lua VM instructions per source line
// ---------------------------------------------------------------------------------------------

/// `LINES=1` of the profile programs: Lua VM instructions per source line while counting is on,
/// from a count hook at every instruction that every thread made after it inherits (Lua 5.4 and
/// LuaJIT copy a thread's hook to the threads it makes). Run with `BUDGET=none` (the budget sets hooks of its
/// own), one variant and a small `N`, and divide by the operations counted.
#[cfg(not(feature = "luau"))]
pub mod lines {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bevy_lua_coroutines::mlua::{HookTriggers, Lua, VmState};

    static ON: AtomicBool = AtomicBool::new(false);
    static COUNTS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

    /// Installs the hook (before the scripts start, so that their threads inherit it).
    pub fn install(lua: &Lua) {
        let triggers = HookTriggers::new().every_nth_instruction(1);
        lua.set_global_hook(triggers, |_, debug| {
            if ON.load(Ordering::Relaxed) {
                let source = debug.source();
                let at = format!(
                    "{}:{}",
                    source.short_src.as_deref().unwrap_or("?"),
                    debug.current_line().map_or(-1, |l| l as i64)
                );
                *COUNTS.lock().unwrap().get_or_insert_with(HashMap::new).entry(at).or_default() += 1;
            }
            Ok(VmState::Continue)
        })
        .expect("set the counting hook");
    }

    /// Counts from now on (`true`) or no longer.
    pub fn counting(on: bool) {
        ON.store(on, Ordering::Relaxed);
    }

    /// Prints the counts, most first, and their total.
    pub fn report() {
        let Some(counts) = COUNTS.lock().unwrap().take() else { return };
        let mut rows: Vec<_> = counts.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: u64 = rows.iter().map(|r| r.1).sum();
        println!("VM instructions in the measured frames: {total}");
        for (at, n) in rows {
            println!("{n:>10}  {at}");
        }
    }
}
