//! Runs a Lua script headless: the way scripts are tested in CI and load-tested.
//!
//! ```text
//! cargo run --release --example run -- SCRIPT.lua [--frames N] [--dt SECONDS] [--fps N]
//!     [--entities N] [--watch] [--stdlib safe|all] [--memory-limit MB] [--stats]
//!     [--seed N] [--llm-delay SECONDS] [--inspect] [--inspect-every N] [--repl]
//! ```
//!
//! `--inspect` prints the task list (what every task waits on, where it last yielded, its
//! resumes and time) to stderr when the run ends, `--inspect-every N` every N frames too;
//! `--stats` adds the costliest scripts. `--repl` reads Lua lines from stdin and runs each in a
//! console instance of the running game (on an entity named `console`), printing its values or
//! its error; a line may `await`. The run goes on at least until stdin ends.
//!
//! Scripts get the whole API, `llm` (and `llmBridge`) included: the crate's offline `LocalLlm`,
//! answering one word per `--llm-delay` (default 0.02 s). `--seed N` seeds `Channel.select`'s
//! generator (default `0x5EED`) and `math.random` (Lua's own seed otherwise).
//!
//! With `--watch`, saving the script or a module it requires reloads it in the running game, and
//! the run goes on until `--frames` even when every task has finished (or a version failed to
//! load), paced at `--fps` (default: one frame per `--dt` of wall time).
//!
//! Script output goes to stdout, diagnostics to stderr. Exit codes: 0 every task finished with no
//! unhandled error; 1 a script error was reported (a spawned script that failed to load included);
//! 2 bad arguments or the script failed to load; 3 the frames ran out while tasks were still waiting
//! (1 wins over 3). When stdout's reader goes away (`run game.lua | head`), the run stops quietly:
//! 0, or 1 after a script error.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_lua_coroutines::prelude::*;
use bevy_lua_coroutines::{fmt_duration, format_task_list};

const USAGE: &str = "usage: run SCRIPT.lua [--frames N] [--dt SECONDS] [--fps N] [--entities N] \
[--watch] [--stdlib safe|all] [--memory-limit MB] [--stats] [--seed N] [--llm-delay SECONDS] \
[--inspect] [--inspect-every N] [--repl]";

/// The command line.
struct Options {
    script: PathBuf,
    frames: u64,
    dt: Duration,
    fps: Option<f64>,
    entities: usize,
    watch: bool,
    stdlib: StdlibAccess,
    memory_limit_mb: usize,
    stats: bool,
    /// `Channel.select`'s seed and `math.randomseed`'s, if given.
    seed: Option<u64>,
    /// `LocalLlm`'s wait before each token.
    llm_delay: Duration,
    /// Print the task list at the end.
    inspect: bool,
    /// Print the task list every N frames.
    inspect_every: Option<u64>,
    /// Run stdin's lines in a console instance.
    repl: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut script = None;
    let mut o = Options {
        script: PathBuf::new(),
        frames: 100_000,
        dt: Duration::from_nanos(16_666_667),
        fps: None,
        entities: 1,
        watch: false,
        stdlib: StdlibAccess::Safe,
        memory_limit_mb: 512,
        stats: false,
        seed: None,
        llm_delay: Duration::from_millis(20),
        inspect: false,
        inspect_every: None,
        repl: false,
    };
    fn value<T: std::str::FromStr>(name: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.parse().map_err(|_| format!("{name}: invalid value '{v}'"))
    }
    /// `seconds` as a `Duration`, or a usage error naming the option (too large for one, say).
    fn duration(name: &str, seconds: f64) -> Result<Duration, String> {
        Duration::try_from_secs_f64(seconds).map_err(|_| format!("{name}: invalid value '{seconds}'"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--frames" => o.frames = value("--frames", args.next())?,
            "--dt" => {
                let dt: f64 = value("--dt", args.next())?;
                o.dt = duration("--dt", dt)?;
            }
            "--fps" => {
                let fps: f64 = value("--fps", args.next())?;
                if !(fps.is_finite() && fps > 0.0) {
                    return Err(format!("--fps: invalid value '{fps}'"));
                }
                // The pause between frames must be a `Duration` too (`1e-300` frames a second is not).
                duration("--fps", 1.0 / fps)?;
                o.fps = Some(fps);
            }
            "--entities" => o.entities = value("--entities", args.next())?,
            "--memory-limit" => o.memory_limit_mb = value("--memory-limit", args.next())?,
            "--stdlib" => {
                o.stdlib = match args.next().as_deref() {
                    Some("safe") => StdlibAccess::Safe,
                    Some("all") => StdlibAccess::All,
                    other => return Err(format!("--stdlib: expected safe or all, got {other:?}")),
                }
            }
            "--stats" => o.stats = true,
            "--seed" => o.seed = Some(value("--seed", args.next())?),
            "--llm-delay" => {
                let delay: f64 = value("--llm-delay", args.next())?;
                o.llm_delay = Duration::try_from_secs_f64(delay)
                    .map_err(|_| format!("--llm-delay: invalid value '{delay}'"))?;
            }
            "--watch" => o.watch = true,
            "--inspect" => o.inspect = true,
            "--inspect-every" => {
                let n: u64 = value("--inspect-every", args.next())?;
                if n == 0 {
                    return Err("--inspect-every: invalid value '0'".into());
                }
                o.inspect_every = Some(n);
            }
            "--repl" => o.repl = true,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            path if script.is_none() => script = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    o.script = script.ok_or("no script given")?;
    if (o.watch || o.repl) && o.fps.is_none() {
        o.fps = Some(if o.dt.is_zero() { 60.0 } else { 1.0 / o.dt.as_secs_f64() });
    }
    Ok(o)
}

/// Script errors seen so far.
#[derive(Resource, Default)]
struct Seen {
    runtime: bool,
    load: bool,
}

/// The entities the runner made for the script it was given: a failure to load their script is a
/// failure to load that script (exit 2); any other script (`world.spawn{ script = ... }`) that
/// fails to load is a script error like the rest (exit 1), and the run goes on.
#[derive(Resource, Default)]
struct RunnerEntities(HashSet<Entity>);

fn report_errors(mut errors: MessageReader<ScriptError>, mut seen: ResMut<Seen>, ours: Res<RunnerEntities>) {
    for e in errors.read() {
        if e.traceback.is_empty() {
            eprintln!("error: {}", e.message);
        } else {
            eprintln!("error: {}\n{}", e.message, e.traceback);
        }
        match e.kind {
            ScriptErrorKind::Load if ours.0.contains(&e.entity) => seen.load = true,
            _ => seen.runtime = true,
        }
    }
}

/// Wall time of each step, for `--stats`.
#[derive(Resource, Default)]
struct StepTimes {
    started: Option<Instant>,
    samples: Vec<Duration>,
}

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("run: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let source = match std::fs::read_to_string(&o.script) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("run: cannot read {}: {e}", o.script.display());
            return ExitCode::from(2);
        }
    };
    let root = o.script.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let root = std::fs::canonicalize(if root.as_os_str().is_empty() { PathBuf::from(".") } else { root })
        .unwrap_or_default();
    let name = o.script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();

    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin { file_path: root.to_string_lossy().into_owned(), ..default() },
        LuaCoroutinesPlugin {
            stdlib: o.stdlib,
            memory_limit: Some(o.memory_limit_mb.saturating_mul(1024 * 1024)),
            print_to_stdout: true,
            hot_reload: o.watch,
            wait_for_script_loads: true,
            select_seed: o.seed.unwrap_or(LuaCoroutinesPlugin::default().select_seed),
            ..default()
        },
    ))
    .insert_resource(TimeUpdateStrategy::ManualDuration(o.dt))
    .init_resource::<Seen>()
    .init_resource::<RunnerEntities>()
    .init_resource::<StepTimes>()
    .add_systems(Last, report_errors)
    .add_systems(
        Update,
        (
            (|mut t: ResMut<StepTimes>| t.started = Some(Instant::now())).before(LuaCoroutinesSystems::Sync),
            (|mut t: ResMut<StepTimes>| {
                if let Some(start) = t.started.take() {
                    t.samples.push(start.elapsed());
                }
            })
            .after(LuaCoroutinesSystems::Step),
        ),
    );
    if o.fps.is_some() {
        // Real time follows the wall clock; game time still advances by exactly --dt per frame.
        app.insert_resource(TimeUpdateStrategy::Automatic);
        let dt = o.dt;
        app.init_resource::<GameClock>().add_systems(
            First,
            (move |time: ResMut<Time>, clock: ResMut<GameClock>| fixed_game_time(time, clock, dt))
                .after(bevy::time::TimeSystems),
        );
    }
    #[cfg(feature = "llm")]
    add_llm(&mut app, o.llm_delay);
    if o.repl {
        app.add_lua_channel::<Console>(CONSOLE_CHANNEL, 16);
    }
    app.finish();
    app.cleanup();
    if let Some(seed) = o.seed {
        let math = app.world().resource::<LuaRuntime>().lua().globals().get::<mlua::Table>("math");
        if let Err(e) = math.and_then(|m| m.get::<mlua::Function>("randomseed")?.call::<()>(seed as i64)) {
            eprintln!("run: could not seed math.random: {e}");
            return ExitCode::from(2);
        }
    }

    if o.inspect || o.inspect_every.is_some() || o.stats {
        app.world().resource::<LuaRuntime>().set_tracking(true);
    }
    let console_done = o.repl.then(|| start_console(&mut app));
    let handle = app.world_mut().resource_mut::<Assets<LuaScript>>().add(LuaScript::new(name, source));
    for i in 1..=o.entities {
        let entity = app
            .world_mut()
            .spawn((Transform::default(), Name::new(format!("entity-{i}")), LuaScripts::new(handle.clone())))
            .id();
        app.world_mut().resource_mut::<RunnerEntities>().0.insert(entity);
    }

    let pace = o.fps.map(|fps| Duration::from_secs_f64(1.0 / fps));
    let mut frames = 0;
    let mut console_ended = false;
    let mut next_frame = Instant::now();
    while frames < o.frames {
        app.update();
        frames += 1;
        let world = app.world();
        if world.resource::<Seen>().load && !o.watch {
            return ExitCode::from(2);
        }
        let runtime = world.resource::<LuaRuntime>();
        if o.inspect_every.is_some_and(|n| frames % n == 0) {
            eprint!("frame {frames}: {}", format_task_list(&runtime.task_list()));
        }
        if console_done.as_ref().is_some_and(|done| done.try_recv().is_ok()) {
            // stdin ended and the console ran its last line: the run goes on by the usual rules.
            console_ended = true;
        }
        if runtime.stdout_closed() {
            // Whoever read the output went away (`run game.lua | head`): stop quietly, as
            // command-line tools do.
            return if world.resource::<Seen>().runtime { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
        if runtime.live_tasks() == 0
            && runtime.pending_instances() == 0
            && !o.watch
            && (!o.repl || console_ended)
        {
            break;
        }
        if let Some(pace) = pace {
            next_frame += pace;
            std::thread::sleep(next_frame.saturating_duration_since(Instant::now()));
        }
    }
    // One more update flushes messages written by the last step.
    app.update();

    let world = app.world();
    let runtime = world.resource::<LuaRuntime>();
    if o.stats {
        print_stats(frames, runtime, &world.resource::<StepTimes>().samples);
    }
    if o.inspect {
        eprint!("{}", format_task_list(&runtime.task_list()));
    }
    if world.resource::<Seen>().runtime {
        ExitCode::from(1)
    } else if world.resource::<Seen>().load {
        ExitCode::from(2)
    } else if runtime.live_tasks() > 0 || runtime.pending_instances() > 0 {
        eprintln!("run: {frames} frames ran out with {} tasks still waiting", runtime.live_tasks());
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(feature = "llm")]
/// Gives scripts the language-model module, `llm` (and its seed name `llmBridge`): the crate's
/// offline `LocalLlm`, waiting `delay` before each token.
///
/// The hook for a real model: when `LLM_BASE_URL` is set (say `http://127.0.0.1:11434/v1` for a
/// local Ollama, with `LLM_MODEL` and `LLM_API_KEY`), the OpenAI-compatible client registers here
/// instead, once the crate ships it; until then the runner says so and uses `LocalLlm`.
fn add_llm(app: &mut App, delay: Duration) {
    if let Ok(url) = std::env::var("LLM_BASE_URL") {
        eprintln!(
            "run: LLM_BASE_URL is set ({url}), but no HTTP model client is built in yet: using LocalLlm"
        );
    }
    app.add_llm_service(LocalLlm::new(delay), LlmConfig::default());
}

/// Game time in `--fps` mode, advanced by exactly `--dt` per frame (the first frame has none).
#[derive(Resource, Default)]
struct GameClock {
    time: Time<()>,
    started: bool,
}

fn fixed_game_time(mut time: ResMut<Time>, mut clock: ResMut<GameClock>, dt: Duration) {
    if clock.started {
        clock.time.advance_by(dt);
    }
    clock.started = true;
    *time = clock.time;
}

fn print_stats(frames: u64, runtime: &LuaRuntime, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let mean = if sorted.is_empty() {
        Duration::ZERO
    } else {
        sorted.iter().sum::<Duration>() / sorted.len() as u32
    };
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let max = sorted.last().copied().unwrap_or_default();
    eprintln!("frames: {frames}");
    eprintln!("tasks resumed: {}", runtime.stats().resumed);
    eprintln!("step time per frame: mean {mean:?}, median {median:?}, max {max:?}");
    eprintln!("lua memory: {:.1} KiB", runtime.used_memory() as f64 / 1024.0);
    let costs = runtime.script_costs();
    if !costs.is_empty() {
        eprintln!("costliest scripts (time resuming their tasks: total, last frame):");
    }
    for c in costs.iter().take(5) {
        eprintln!(
            "  {}: {} total, {} last frame, {} resumes, {} instances",
            c.script,
            fmt_duration(c.total),
            fmt_duration(c.last_frame),
            c.resumes,
            c.instances
        );
    }
}

/// What the console channel carries: a line from stdin, or its end (and, back from the console,
/// that it ran the last line).
#[derive(serde::Serialize, serde::Deserialize)]
enum Console {
    Line(String),
    End,
}

const CONSOLE_CHANNEL: &str = "console";

/// The console instance: runs each line it receives (as an expression first, so `1 + 1` prints
/// `2`), in a task of its own, so a line may `await`; prints the values or the error.
const CONSOLE_SCRIPT: &str = r##"
local input = Channel.named("console")
local function show(ok, ...)
  if not ok then
    print("error: " .. tostring((...)))
  elseif select("#", ...) > 0 then
    local out = {}
    for i = 1, select("#", ...) do out[i] = tostring((select(i, ...))) end
    print(table.concat(out, "\t"))
  end
end
while true do
  local msg = input:receive()
  if msg == nil or msg == "End" then break end
  local line = msg.Line
  local f = load("return " .. line, "=console")
  local err
  if f == nil then f, err = load(line, "=console") end
  if f == nil then
    print("error: " .. tostring(err))
  else
    show(pcall(f))
  end
end
input:send("End")
"##;

/// Starts the console instance and the thread that feeds it stdin's lines; returns a receiver
/// that gets a value once the console ran the last line.
fn start_console(app: &mut App) -> crossbeam_channel::Receiver<Console> {
    let channel = app.world().resource::<LuaChannel<Console>>();
    let (to_console, from_console) = (channel.sender(), channel.receiver());
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if to_console.send(Console::Line(line)).is_err() {
                return;
            }
        }
        let _ = to_console.send(Console::End);
    });
    let handle =
        app.world_mut().resource_mut::<Assets<LuaScript>>().add(LuaScript::new("console", CONSOLE_SCRIPT));
    app.world_mut().spawn((Transform::default(), Name::new("console"), LuaScripts::new(handle)));
    from_console
}
