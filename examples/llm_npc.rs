//! NPCs talking to a language model while the world keeps moving: an innkeeper awaits whole
//! answers, a bard streams tokens into its speech line (and cuts a second song short), and a
//! scholar asks three questions at once with `Promise.all`. Meanwhile a Rust system moves a crowd
//! of entities every frame.
//!
//! ```sh
//! cargo run --example llm_npc
//! ```
//!
//! The model is the crate's `LocalLlm` (offline and deterministic, 15 ms per token) on an
//! executor of 4 workers: the frame never waits for it. To talk to a real model instead, build with
//! the `openai` feature and point `LLM_BASE_URL` at any OpenAI-compatible server (`LLM_MODEL`
//! names the model, `LLM_API_KEY` is sent if set):
//!
//! ```sh
//! LLM_BASE_URL=http://127.0.0.1:11434/v1 LLM_MODEL=llama3.2 cargo run --features openai --example llm_npc
//! ``` The example prints a transcript, then the
//! frames elapsed and the longest frame, and exits once every NPC has finished. Scripts:
//! `assets/scripts/llm/`.

use std::time::{Duration, Instant};

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;

/// The crowd that keeps moving while NPCs wait for the model.
const WALKERS: usize = 200;

/// A walker: moves by `velocity` every frame.
#[derive(Component)]
struct Walker {
    position: Vec2,
    velocity: Vec2,
}

/// Frame timing and how often the crowd moved.
#[derive(Resource, Default)]
struct Stats {
    frames: u32,
    frame_start: Option<Instant>,
    longest: Duration,
    moved_frames: u32,
}

fn main() -> AppExit {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / 60.0))),
        AssetPlugin::default(),
        LuaCoroutinesPlugin::default(),
    ))
    .init_resource::<Stats>()
    .add_systems(Startup, setup)
    .add_systems(First, start_frame)
    .add_systems(Update, walk)
    .add_systems(Last, finish);
    add_model(&mut app, LlmConfig { workers: 4, queue: 16, buffer: 8 });
    app.run()
}

/// The OpenAI-compatible service `LLM_BASE_URL` names (with the `openai` feature), or `LocalLlm`.
fn add_model(app: &mut App, config: LlmConfig) {
    #[cfg(feature = "openai")]
    match bevy_lua_coroutines::OpenAiConfig::from_env() {
        Ok(Some(openai)) => {
            println!("llm_npc: talking to {} at {}", openai.model, openai.base_url);
            match bevy_lua_coroutines::OpenAiLlm::new(openai) {
                Ok(service) => {
                    app.add_llm_service(service, config);
                    return;
                }
                Err(e) => eprintln!("llm_npc: {e}; using the local model"),
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("llm_npc: {e}; using the local model"),
    }
    #[cfg(not(feature = "openai"))]
    if std::env::var_os("LLM_BASE_URL").is_some() {
        eprintln!("llm_npc: LLM_BASE_URL is set, but the `openai` feature is off; using the local model");
    }
    app.add_llm_service(LocalLlm::new(Duration::from_millis(15)), config);
}

fn setup(mut commands: Commands, assets: Res<AssetServer>) {
    println!("llm_npc: three NPCs talk to the local model while {WALKERS} walkers move every frame");
    for npc in ["innkeeper", "bard", "scholar"] {
        commands.spawn((Name::new(npc), LuaScripts::new(assets.load(format!("scripts/llm/{npc}.lua")))));
    }
    for i in 0..WALKERS {
        let angle = i as f32 * 0.1;
        commands.spawn(Walker { position: Vec2::ZERO, velocity: Vec2::from_angle(angle) });
    }
}

fn start_frame(mut stats: ResMut<Stats>) {
    stats.frame_start = Some(Instant::now());
}

fn walk(mut walkers: Query<&mut Walker>, mut stats: ResMut<Stats>) {
    let mut moved = 0;
    for mut w in &mut walkers {
        let step = w.velocity / 60.0;
        w.position += step;
        moved += 1;
    }
    if moved == WALKERS {
        stats.moved_frames += 1;
    }
}

/// Records the frame's time; exits once every NPC has finished (or failed), after 30 s at most.
fn finish(
    runtime: Res<LuaRuntime>,
    mut stats: ResMut<Stats>,
    walkers: Query<&Walker>,
    mut errors: MessageReader<ScriptError>,
    mut exit: MessageWriter<AppExit>,
) {
    stats.frames += 1;
    if let Some(start) = stats.frame_start {
        stats.longest = stats.longest.max(start.elapsed());
    }
    for e in errors.read() {
        eprintln!("script error: {}\n{}", e.message, e.traceback);
        exit.write(AppExit::error());
    }
    let done = stats.frames > 5 && runtime.live_tasks() == 0 && runtime.pending_instances() == 0;
    if done || stats.frames > 1800 {
        let farthest = walkers.iter().map(|w| w.position.length()).fold(0.0, f32::max);
        println!(
            "{} frames elapsed, longest frame {:.2} ms; the walkers moved on {} of them (farthest {:.1} units)",
            stats.frames,
            stats.longest.as_secs_f64() * 1e3,
            stats.moved_frames,
            farthest,
        );
        if done {
            exit.write(AppExit::Success);
        } else {
            eprintln!("the NPCs did not finish in 1800 frames");
            exit.write(AppExit::error());
        }
    }
}
