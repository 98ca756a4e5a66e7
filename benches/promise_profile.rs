//! The Lua-side cost of promises and Lua channels, each path beside a bare resume, as a plain
//! program: wall-clock ratios from interleaved rounds, exact instruction counts under callgrind
//! (a shared machine blurs the clock; it cannot blur an instruction count), and the Lua heap
//! before and after 1,000,000 messages.
//!
//! ```text
//! cargo bench --bench promise_profile --no-run
//! target/release/deps/promise_profile-<hash>                      # every variant, interleaved
//! VARIANT=round_trip ROUNDS=3 valgrind --tool=callgrind \
//!   --toggle-collect='promise_profile::measured*' target/release/deps/promise_profile-<hash>
//! ```
//!
//! `VARIANT` (default `all`) picks one of: `raw` (N bare coroutines resumed with mlua's
//! `Thread::resume`, the floor), `wait` (N tasks that `task.wait()`), `await` (N tasks that
//! `await(p)` a resolved promise, then `task.wait()`: minus `wait`, the cost of an await),
//! `round_trip` (N promises resolved by one task, each waking the task that awaits it; the frame
//! that makes the promises is not measured), `new_then` (`Promise.new` whose executor resolves,
//! plus an `andThen` handler, N a frame in one task), `ping_pong` (two tasks over unbuffered
//! channels, 2N messages a frame), `buffered` (`send` then `receive` on a channel of capacity 1,
//! N a frame in one task), `stream` (a Rust stream function whose call fills its buffer with N
//! chunks of 64 bytes at once, read in one task with `for _ in s:iter()`, N a frame), `settle`
//! (N tasks each awaiting a Rust async function whose future finished: the frame that settles
//! them, after the frame that made the calls and the wait for the futures, neither measured),
//! `typed_in` (Rust fills a typed channel of `Hit { target, amount, time, kind }` with N values,
//! untimed, and one task drains them with `receive` in the measured frame), `typed_out` (one task
//! sends N fresh `Hit` tables through a typed channel each frame; Rust drains them, untimed), or
//! `memory` (the heap before and after 1,000,000 messages). Under
//! callgrind only `measured` runs are counted: divide the count by `ROUNDS` and by the
//! operations per round the program prints. Default plugin: instruction budget and memory limit on;
//! `BUDGET=none` leaves the budget out: a long resume (most of a measured frame is one) then never
//! runs under the budget's count hook, which switches on after 5 ms of wall clock, so that counts
//! do not depend on how loaded the machine is.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::{
    DRAIN_RECEIVE, Hit, RawCoroutines, SEND_BATCH, hit, median, plugin, resumed, round_trip_source, runtime,
    rust_async_source, script_errors, spawn_script, update, wait_every_frame_source, wait_for_futures,
};

/// Calls of the `settle` variant's async function, and its futures that finished.
static CALLS: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);

/// Waits until every future the `settle` variant started has finished and sent its result.
fn wait_for_calls() {
    wait_for_futures(&DONE, CALLS.load(Ordering::Relaxed), std::time::Duration::from_millis(5));
}

/// One round of a variant: what it runs per measured call, and how many operations that is.
struct Variant {
    name: &'static str,
    app: Option<App>,
    /// Frames run (untimed) before each measured frame (the round trip's setup frame).
    setup_frames: usize,
    /// Untimed work after the setup frames, before the measured frame: Rust filling or draining
    /// a typed channel, or waiting for the futures a settle frame settles.
    prepare: Option<Box<dyn FnMut()>>,
    ops: usize,
}

fn var(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn source(name: &str, n: usize) -> String {
    match name {
        "wait" => wait_every_frame_source(n),
        "await" => format!(
            "local p = Promise.resolve(1)
             for i = 1, {n} do task.spawn(function() while true do await(p) task.wait() end end) end"
        ),
        "round_trip" => round_trip_source(n),
        "new_then" => format!(
            "local sum = 0
             local function add(v) sum = sum + v end
             task.spawn(function()
               while true do
                 for i = 1, {n} do Promise.new(function(resolve) resolve(i) end):andThen(add) end
                 task.wait()
               end
             end)"
        ),
        "ping_pong" => format!(
            "local ping, pong = Channel.new(), Channel.new()
             task.spawn(function() while true do pong:send(ping:receive()) end end)
             task.spawn(function()
               while true do
                 task.wait()
                 for i = 1, {n} do
                   ping:send(i)
                   if pong:receive() ~= i then error('out of order') end
                 end
               end
             end)"
        ),
        "buffered" => format!(
            "local ch = Channel.new(1)
             task.spawn(function()
               while true do
                 for i = 1, {n} do
                   ch:send(i)
                   if ch:receive() ~= i then error('out of order') end
                 end
                 task.wait()
               end
             end)"
        ),
        "settle" => rust_async_source(n),
        "typed_in" => DRAIN_RECEIVE.replace("BATCH", &n.to_string()),
        "typed_out" => SEND_BATCH.replace("SENDERS", "1").replace("BATCH", &n.to_string()),
        "stream" => "while true do
               local n = 0
               for _ in chunks():iter() do n = n + 1 end
               task.wait()
             end"
        .into(),
        other => panic!("unknown variant {other}"),
    }
}

fn variant(name: &'static str, n: usize) -> Variant {
    if name == "raw" {
        return Variant { name, app: None, setup_frames: 0, prepare: None, ops: n };
    }
    let unbudgeted = std::env::var("BUDGET").is_ok_and(|b| b == "none");
    let mut app = common::new_app_with(if unbudgeted { common::unbudgeted() } else { plugin() });
    if name == "settle" {
        // Each call starts a future on the pool that finishes at once.
        app.add_lua_async_function("rustOne", || {
            CALLS.fetch_add(1, Ordering::Relaxed);
            async {
                DONE.fetch_add(1, Ordering::Release);
                Ok::<_, String>(1)
            }
        });
    }
    if name == "stream" {
        // Each call fills a stream with `n` chunks at once, then ends it: a frame reads them all.
        app.add_lua_stream_function("chunks", n, move |mut tx: StreamSender| {
            for i in 0..n {
                bevy::tasks::block_on(tx.send_bytes(vec![b'a' + (i % 26) as u8; 64]))
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        });
    }
    let mut prepare: Option<Box<dyn FnMut()>> = None;
    if name == "typed_in" {
        // Rust fills the channel with `n` values before each measured frame, which drains them.
        app.add_lua_channel::<Hit>("hits", n);
        let tx = app.world().resource::<LuaChannel<Hit>>().sender();
        prepare = Some(Box::new(move || {
            for i in 0..n {
                tx.try_send(hit(i)).expect("the channel should have room for the batch");
            }
        }));
    }
    if name == "typed_out" {
        // The script sends `n` values each frame; Rust drains the last frame's before the next.
        app.add_lua_channel::<Hit>("hits", n);
        let rx = app.world().resource::<LuaChannel<Hit>>().receiver();
        prepare = Some(Box::new(move || {
            let got = rx.try_iter().count();
            assert!(got == n || got == 0, "a frame should send the whole batch, not {got}");
        }));
    }
    if name == "settle" {
        prepare = Some(Box::new(wait_for_calls));
    }
    update(&mut app, 3);
    #[cfg(not(feature = "luau"))]
    if std::env::var("LINES").is_ok() {
        common::lines::install(runtime(&app).lua());
    }
    spawn_script(&mut app, &format!("bench/{name}.lua"), &source(name, n));
    update(&mut app, 6);
    let (setup_frames, ops) = match name {
        "round_trip" => {
            // Line up so that the next frame is a setup frame (the last one woke every consumer).
            let mut frames = 0;
            loop {
                frames += 1;
                assert!(frames < 20, "the round-trip frame never came");
                let before = resumed(&app);
                app.update();
                if resumed(&app) - before == n as u64 + 1 {
                    break;
                }
            }
            (1, n)
        }
        "ping_pong" => (0, 2 * n),
        "settle" => {
            // Line up so that the next frame is a calls frame (the last one settled every call).
            let mut frames = 0;
            loop {
                frames += 1;
                assert!(frames < 20, "the settle frame never came");
                let before = CALLS.load(Ordering::Relaxed);
                app.update();
                wait_for_calls();
                if CALLS.load(Ordering::Relaxed) == before {
                    break;
                }
            }
            (1, n)
        }
        _ => (0, n),
    };
    assert_eq!(script_errors(&app), 0, "{name}: the script should not fail");
    Variant { name, app: Some(app), setup_frames, prepare, ops }
}

/// The measured part (callgrind counts only this, with `--toggle-collect`).
#[inline(never)]
fn measured_frame(app: &mut App) {
    #[cfg(not(feature = "luau"))]
    common::lines::counting(true);
    app.update();
    #[cfg(not(feature = "luau"))]
    common::lines::counting(false);
}

#[inline(never)]
fn measured_raw(raw: &RawCoroutines) {
    raw.pass();
}

/// One round: the variant's setup frames untimed, then its measured frame; nanoseconds.
fn round(v: &mut Variant, raw: &RawCoroutines) -> f64 {
    match v.app.as_mut() {
        None => {
            let start = Instant::now();
            measured_raw(raw);
            start.elapsed().as_nanos() as f64
        }
        Some(app) => {
            for _ in 0..v.setup_frames {
                app.update();
            }
            if let Some(prepare) = v.prepare.as_mut() {
                prepare();
            }
            let start = Instant::now();
            measured_frame(app);
            start.elapsed().as_nanos() as f64
        }
    }
}

/// The Lua heap after two full collections, in KiB.
fn heap_kib(app: &App) -> f64 {
    let lua = runtime(app).lua();
    lua.gc_collect().expect("collect");
    lua.gc_collect().expect("collect");
    lua.used_memory() as f64 / 1024.0
}

fn memory() {
    const MESSAGES: usize = 1_000_000;
    let n = 10_000;
    for name in ["round_trip", "new_then", "ping_pong", "buffered"] {
        let mut v = variant(name, n);
        let before = heap_kib(v.app.as_ref().unwrap());
        let mut done = 0;
        let raw = RawCoroutines::new(1);
        while done < MESSAGES {
            round(&mut v, &raw);
            done += v.ops;
        }
        let app = v.app.as_ref().unwrap();
        assert_eq!(script_errors(app), 0, "{name}: the script should not fail");
        let after = heap_kib(app);
        println!("memory  {name:<12} {done} messages: Lua heap {before:.0} KiB -> {after:.0} KiB");
    }
}

fn main() {
    let n = var("N", 10_000);
    let rounds = var("ROUNDS", 15);
    let which = std::env::var("VARIANT").unwrap_or_else(|_| "all".into());
    if which == "memory" {
        memory();
        return;
    }
    let names: Vec<&'static str> = [
        "raw",
        "wait",
        "await",
        "round_trip",
        "new_then",
        "ping_pong",
        "buffered",
        "stream",
        "settle",
        "typed_in",
        "typed_out",
    ]
    .into_iter()
    .filter(|name| which == "all" || which == *name)
    .collect();
    assert!(!names.is_empty(), "unknown VARIANT {which}");
    let raw = RawCoroutines::new(n);
    let mut variants: Vec<Variant> = names.iter().map(|name| variant(name, n)).collect();
    for v in &variants {
        println!("{:<12} {} operations per measured frame", v.name, v.ops);
    }
    if which != "all" {
        for _ in 0..rounds {
            round(&mut variants[0], &raw);
        }
        #[cfg(not(feature = "luau"))]
        common::lines::report();
        return;
    }
    // Interleaved: in every round each variant's frame, then the floor, back to back.
    let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let wait_index = variants.iter().position(|v| v.name == "wait");
    let mut await_ratios = Vec::new();
    for _ in 0..rounds {
        let mut times = Vec::new();
        for (i, v) in variants.iter_mut().enumerate() {
            let t = round(v, &raw) / v.ops as f64;
            let floor = round_floor(&raw) / n as f64;
            per_op[i].push(t);
            ratios[i].push(t / floor);
            times.push((t, floor));
        }
        if let (Some(w), Some(a)) = (wait_index, variants.iter().position(|v| v.name == "await")) {
            await_ratios.push((times[a].0 - times[w].0) / times[a].1);
        }
    }
    println!(
        "\n{:<12} {:>12} {:>16}   (median of {rounds} rounds, N = {n})",
        "path", "per op", "x bare resume"
    );
    for (i, v) in variants.iter().enumerate() {
        let ratio = median(&ratios[i]);
        let target =
            target(v.name).map_or(String::new(), |t| format!("   target <= {t}x: {}", met(ratio <= t)));
        println!("{:<12} {:>10.0}ns {:>15.2}x{target}", v.name, median(&per_op[i]), ratio);
    }
    if !await_ratios.is_empty() {
        let ratio = median(&await_ratios);
        println!(
            "{:<12} {:>12} {:>15.2}x   target <= 1.5x: {} (await minus wait, per await)",
            "await only",
            "",
            ratio,
            met(ratio <= 1.5)
        );
    }
    for v in &variants {
        if let Some(app) = &v.app {
            assert_eq!(script_errors(app), 0, "{}: the script should not fail", v.name);
        }
    }
}

/// The issue's target for a path, as a ratio to a bare resume per operation.
fn target(name: &str) -> Option<f64> {
    match name {
        "round_trip" => Some(4.0),
        "new_then" => Some(5.0),
        "ping_pong" => Some(6.0),
        "buffered" => Some(1.0),
        _ => None,
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

fn round_floor(raw: &RawCoroutines) -> f64 {
    let start = Instant::now();
    measured_raw(raw);
    start.elapsed().as_nanos() as f64
}
