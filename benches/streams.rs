//! Stream benchmarks: the throughput of chunks through a Rust -> script stream with a trivial
//! consumer, beside a bare bounded crossbeam channel between two threads in the same run; and the
//! frame time of the `llm_npc` scenario while 100 conversations stream at once.
//!
//! Run with `cargo bench --bench streams`. Criterion prints its own estimates first; the summary
//! table at the end comes from this file's own measurements: rounds in which the stream and its
//! floor are timed back to back (interleaved), each figure the median over the rounds and the
//! ratio the median of the per-round ratios.
//!
//! A name filter runs only the matching sections: `cargo bench --bench streams -- throughput`
//! (sections: `throughput`, `conversations`).
//!
//! Without `--bench` (e.g. `cargo test --benches`) every benchmark runs once, as a smoke test.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::tasks::AsyncComputeTaskPool;
use bevy_lua_coroutines::prelude::*;
use common::{
    Part, Plan, criterion_group_config, fmt_time, interleave, median, median_by, new_app, script_errors,
    spawn_script,
};
use criterion::{Criterion, Throughput};

/// Chunks per run of the throughput section.
const CHUNKS: usize = 50_000;
/// Bytes per chunk.
const CHUNK_BYTES: usize = 64;
/// The stream's buffer (and the floor channel's capacity).
const BUFFER: usize = 1024;

/// Conversations streaming at once in the frame-time section.
const CONVERSATIONS: usize = 100;
/// Tokens per conversation.
const TOKENS: u32 = 40;
/// The local model's delay per token.
const TOKEN_DELAY: Duration = Duration::from_millis(5);
/// Entities a Rust system moves every frame beside the conversations.
const WALKERS: usize = 1_000;
/// The frame pacing of the scenario (a 60 Hz game).
const FRAME: Duration = Duration::from_nanos(16_666_667);

// ---------------------------------------------------------------------------------------------
// 1. Chunks through a Rust -> script stream
// ---------------------------------------------------------------------------------------------

/// An app where scripts report with `done(n)`: the returned counter sums the `n`s.
fn counting_app() -> (App, Arc<AtomicUsize>) {
    let mut app = new_app();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    app.add_lua_function("done", move |n: usize| {
        c.fetch_add(n, Ordering::SeqCst);
        Ok::<_, String>(())
    });
    (app, count)
}

/// An app whose script reads `CHUNKS` chunks from `chunks()` and counts them.
fn stream_app() -> (App, Arc<AtomicUsize>) {
    let (mut app, count) = counting_app();
    app.add_lua_stream_function("chunks", BUFFER, |mut tx: StreamSender| {
        AsyncComputeTaskPool::get()
            .spawn(async move {
                for i in 0..CHUNKS {
                    if tx.send_bytes(vec![b'a' + (i % 26) as u8; CHUNK_BYTES]).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
        Ok::<_, String>(())
    });
    (app, count)
}

/// Streams `CHUNKS` chunks to a new script; returns the time from its first frame to the frame it
/// has read them all (frames run back to back: no pacing).
fn stream_run() -> Duration {
    let (mut app, count) = stream_app();
    spawn_script(
        &mut app,
        "bench/stream.lua",
        "local n = 0 for _ in chunks():iter() do n = n + 1 end done(n)",
    );
    let start = Instant::now();
    for _ in 0..10_000_000 {
        app.update();
        if count.load(Ordering::SeqCst) > 0 || script_errors(&app) > 0 {
            break;
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(script_errors(&app), 0);
    assert_eq!(count.load(Ordering::SeqCst), CHUNKS);
    elapsed
}

/// The floor: `CHUNKS` chunks of the same size from a producer thread through a bare bounded
/// crossbeam channel of the same capacity.
fn crossbeam_run() -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(BUFFER);
    let start = Instant::now();
    let producer = std::thread::spawn(move || {
        for i in 0..CHUNKS {
            if tx.send(vec![b'a' + (i % 26) as u8; CHUNK_BYTES]).is_err() {
                return;
            }
        }
    });
    let mut n = 0;
    while rx.recv().is_ok() {
        n += 1;
    }
    let elapsed = start.elapsed();
    producer.join().expect("producer");
    assert_eq!(n, CHUNKS);
    elapsed
}

struct Throughput1 {
    stream_ns: f64,
    crossbeam_ns: f64,
    ratio: f64,
}

fn bench_throughput(c: &mut Criterion, plan: &Plan) -> Throughput1 {
    let mut group = c.benchmark_group("throughput");
    criterion_group_config(&mut group, plan);
    group.throughput(Throughput::Elements(CHUNKS as u64));
    group.bench_function("rust_to_script_stream", |b| b.iter(stream_run));
    group.bench_function("crossbeam_floor", |b| b.iter(crossbeam_run));
    group.finish();

    let samples = interleave(plan, vec![Part::once(stream_run), Part::once(crossbeam_run)]);
    let (s, cb) = (&samples[0], &samples[1]);
    Throughput1 {
        stream_ns: median(s) / CHUNKS as f64,
        crossbeam_ns: median(cb) / CHUNKS as f64,
        ratio: median_by(s, cb, |s, c| s / c),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Frame time while 100 conversations stream
// ---------------------------------------------------------------------------------------------

#[derive(Component)]
struct Walker(Vec2);

/// One scenario run: `CONVERSATIONS` scripts each stream a `TOKENS`-token answer from the local
/// model (`TOKEN_DELAY` per token, one worker per conversation) into a speech line, while a system
/// moves `WALKERS` entities; frames are paced at 60 Hz like a game's. Returns every frame's step
/// time (the `app.update()` alone, not the pacing).
fn conversations_run() -> Vec<Duration> {
    let (mut app, done) = scenario_app();
    for i in 0..CONVERSATIONS {
        let src = format!(
            "local line = '' \
             local text = await(llm.streamGenerate('npc {i} asks', function(t) line = line .. t end, \
             {{ maxTokens = {TOKENS} }})) \
             assert(text == line) done(1)"
        );
        spawn_script(&mut app, &format!("bench/npc{i}.lua"), &src);
    }
    let steps = paced(&mut app, |app| done.load(Ordering::SeqCst) >= CONVERSATIONS || script_errors(app) > 0);
    assert_eq!(script_errors(&app), 0);
    assert_eq!(done.load(Ordering::SeqCst), CONVERSATIONS);
    steps
}

/// The reference: the same app and walkers without conversations, for `frames` frames.
fn walkers_only_run(frames: usize) -> Vec<Duration> {
    let (mut app, _) = scenario_app();
    let mut n = 0;
    paced(&mut app, |_| {
        n += 1;
        n >= frames
    })
}

/// Runs paced frames until `stop`; returns each frame's step time.
fn paced(app: &mut App, mut stop: impl FnMut(&App) -> bool) -> Vec<Duration> {
    let mut steps = Vec::new();
    loop {
        let start = Instant::now();
        app.update();
        let step = start.elapsed();
        steps.push(step);
        if stop(app) || steps.len() > 10_000 {
            return steps;
        }
        std::thread::sleep(FRAME.saturating_sub(step));
    }
}

/// The scenario's app: the local model and the walkers.
fn scenario_app() -> (App, Arc<AtomicUsize>) {
    let (mut app, done) = counting_app();
    app.add_llm_service(
        LocalLlm::new(TOKEN_DELAY),
        LlmConfig { workers: CONVERSATIONS, queue: 0, buffer: 8 },
    )
    .add_systems(Update, |mut walkers: Query<&mut Walker>| {
        for mut w in &mut walkers {
            w.0 += Vec2::new(0.01, 0.02);
        }
    });
    for _ in 0..WALKERS {
        app.world_mut().spawn(Walker(Vec2::ZERO));
    }
    (app, done)
}

struct Conversations {
    runs: usize,
    reference_mean_ns: f64,
    frames: f64,
    mean_ns: f64,
    median_max_ns: f64,
    max_ns: f64,
}

fn bench_conversations(c: &mut Criterion, plan: &Plan) -> Conversations {
    let mut group = c.benchmark_group("conversations");
    criterion_group_config(&mut group, plan);
    group.bench_function("100_streams_paced_run", |b| b.iter(conversations_run));
    group.finish();

    // Each run is followed by the reference over as many frames (interleaved: load slows both).
    let runs = plan.rounds.min(7);
    let mean_after_first = |steps: &[Duration]| {
        steps[1..].iter().map(|d| d.as_nanos() as f64).sum::<f64>() / (steps.len() - 1).max(1) as f64
    };
    let (mut frames, mut means, mut maxes, mut reference) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let steps = conversations_run();
        // The first frame loads and starts every script: reported in `max`, not in the mean.
        frames.push(steps.len() as f64);
        means.push(mean_after_first(&steps));
        maxes.push(steps.iter().map(|d| d.as_nanos() as f64).fold(0.0, f64::max));
        reference.push(mean_after_first(&walkers_only_run(steps.len())));
    }
    Conversations {
        runs,
        reference_mean_ns: median(&reference),
        frames: median(&frames),
        mean_ns: median(&means),
        median_max_ns: median(&maxes),
        max_ns: maxes.iter().copied().fold(0.0, f64::max),
    }
}

fn main() {
    let plan = Plan::from_args();
    let mut c = Criterion::default().without_plots().configure_from_args();
    let mut o = String::new();
    let line = "-".repeat(96);
    let _ = writeln!(o, "\n{line}\nstreams summary ({} interleaved rounds)\n{line}", plan.rounds);
    if plan.wants("throughput") {
        let t = bench_throughput(&mut c, &plan);
        let _ = writeln!(
            o,
            "1. Rust -> script stream: {CHUNKS} chunks of {CHUNK_BYTES} bytes, buffer {BUFFER}, trivial consumer\n   \
             per chunk: {} ({:.2} M chunks/s) | bare crossbeam bounded({BUFFER}) between threads: {} ({:.2} M chunks/s) | \
             RATIO {:.1}x",
            fmt_time(t.stream_ns),
            1e3 / t.stream_ns,
            fmt_time(t.crossbeam_ns),
            1e3 / t.crossbeam_ns,
            t.ratio,
        );
    }
    if plan.wants("conversations") {
        let s = bench_conversations(&mut c, &plan);
        let _ = writeln!(
            o,
            "2. {CONVERSATIONS} conversations streaming at once ({TOKENS} tokens each, {} per token), {WALKERS} walkers, \
             60 Hz pacing, {} runs\n   frames per run: {:.0} | step time mean {} | max (first frame: loading) median {}, \
             worst {}\n   \
             (ref) the same app and walkers without conversations: step time mean {}",
            fmt_time(TOKEN_DELAY.as_nanos() as f64),
            s.runs,
            s.frames,
            fmt_time(s.mean_ns),
            fmt_time(s.median_max_ns),
            fmt_time(s.max_ns),
            fmt_time(s.reference_mean_ns),
        );
    }
    let _ = writeln!(o, "{line}");
    c.final_summary();
    print!("{o}");
}
