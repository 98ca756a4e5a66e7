//! A small windowed top-down game whose enemies are entirely Lua: state machines with `task.wait`,
//! seek-and-arrive steering, a spawner director fed waves over a typed channel, a line-of-sight
//! query that scripts await from Rust (computed on Bevy's task pool), events both ways through
//! Bevy messages, an NPC streaming its lines from the language-model service into a text box, and
//! script errors shown on screen. Hot reload is on: edit `assets/scripts/arena/enemy.lua` while it
//! runs and the enemies change; a broken save shows its error and the last good version goes on.
//!
//! ```sh
//! cargo run --features window --example arena
//! ```
//!
//! Move with WASD or the arrow keys; Space sends a shockwave that scares nearby enemies. Walk up to
//! the sage (the yellow square) to hear it talk. With `--screenshot out.png --frames N` it runs N
//! frames, saves a screenshot of the window and exits (`.ci/screenshot` does this under Xvfb).
//! With `LLM_BASE_URL` set and the `openai` feature on, the sage talks through a real model.

use std::path::PathBuf;
use std::time::Duration;

use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use bevy::time::TimeUpdateStrategy;
use bevy_lua_coroutines::prelude::*;
use serde::{Deserialize, Serialize};

/// Half the arena's size, in pixels.
const HALF: Vec2 = Vec2::new(460.0, 300.0);
/// The player's speed, in pixels per second.
const PLAYER_SPEED: f32 = 260.0;

/// The walls: centre and half size. Line of sight is blocked by them.
const WALLS: [(Vec2, Vec2); 4] = [
    (Vec2::new(-180.0, 90.0), Vec2::new(20.0, 110.0)),
    (Vec2::new(170.0, -60.0), Vec2::new(120.0, 18.0)),
    (Vec2::new(-40.0, -170.0), Vec2::new(90.0, 16.0)),
    (Vec2::new(280.0, 160.0), Vec2::new(16.0, 80.0)),
];

/// Marks the player (moved by the keyboard, in Rust).
#[derive(Component)]
struct Player {
    health: i32,
    flash: f32,
}

/// An enemy. Scripts spawn it (`world.spawn{ Enemy = {} ... }`) and write its `state`; Rust only
/// draws it in the state's colour.
#[derive(Component, Reflect, Default)]
#[reflect(Component, Default)]
struct Enemy {
    state: String,
}

/// A wave the spawner director is sent over the typed channel `waves`.
#[derive(Serialize, Deserialize)]
struct Wave {
    number: u32,
    count: u32,
    speed: f32,
}

/// Written by enemy scripts (`Messages.write("EnemyAttack", ...)`): an enemy strikes at a point.
#[derive(Message, Deserialize)]
struct EnemyAttack {
    x: f32,
    y: f32,
    damage: i32,
}

/// Written by the NPC script as its line grows (`Messages.write("NpcSay", ...)`).
#[derive(Message, Deserialize)]
struct NpcSay {
    text: String,
}

/// Forwarded to every script that subscribed (`Messages.subscribe("Shockwave")`).
#[derive(Message, Serialize, Clone)]
struct Shockwave {
    x: f32,
    y: f32,
    radius: f32,
}

/// The enemies' materials, by state.
#[derive(Resource)]
struct Palette {
    states: Vec<(&'static str, Handle<ColorMaterial>)>,
    enemy: Handle<Mesh>,
}

/// The text boxes.
#[derive(Component)]
struct NpcText;
#[derive(Component)]
struct ErrorText;
#[derive(Component)]
struct HudText;

/// The last distinct script errors and how often each came, newest last.
#[derive(Resource, Default)]
struct ErrorLog(Vec<(String, u32)>);

/// `--screenshot PATH --frames N`.
#[derive(Resource, Default)]
struct Capture {
    path: Option<PathBuf>,
    frames: u32,
    frame: u32,
    taken_at: Option<u32>,
}

fn main() -> AppExit {
    let capture = parse_args();
    // A screenshot run steps game time by a fixed 1/60 s per frame, so frame N shows the same
    // moment of the game however slowly a software renderer draws it.
    let step = match capture.path {
        Some(_) => TimeUpdateStrategy::ManualDuration(Duration::from_nanos(16_666_667)),
        None => TimeUpdateStrategy::Automatic,
    };
    let mut app = App::new();
    app.add_plugins(DefaultPlugins.set(WindowPlugin {
        primary_window: Some(Window {
            title: "bevy_lua_coroutines arena".into(),
            resolution: (960, 640).into(),
            ..default()
        }),
        ..default()
    }))
    .add_plugins(LuaCoroutinesPlugin { hot_reload: true, ..default() })
    .register_type::<Enemy>()
    .add_lua_channel::<Wave>("waves", 4)
    .add_message::<EnemyAttack>()
    .add_script_message::<EnemyAttack>("EnemyAttack")
    .add_message::<NpcSay>()
    .add_script_message::<NpcSay>("NpcSay")
    .add_message::<Shockwave>()
    .forward_message_to_scripts::<Shockwave>("Shockwave")
    .add_lua_async_function("lineOfSight", |(ax, ay, bx, by): (f32, f32, f32, f32)| async move {
        // Runs on Bevy's task pool: a real game would ask its physics or navigation here.
        Ok::<_, String>(line_of_sight(Vec2::new(ax, ay), Vec2::new(bx, by)))
    })
    .insert_resource(step)
    .insert_resource(capture)
    .init_resource::<ErrorLog>()
    .add_systems(Startup, setup)
    .add_systems(Update, (move_player, shockwave, send_waves).before(LuaCoroutinesSystems::Sync))
    .add_systems(
        Update,
        (dress_enemies, take_hits, show_npc_line, show_errors, show_hud).after(LuaCoroutinesSystems::Step),
    )
    .add_systems(Last, screenshot);
    add_model(&mut app);
    app.run()
}

/// Reads `--screenshot PATH` and `--frames N`.
fn parse_args() -> Capture {
    let mut capture = Capture { frames: 180, ..default() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--screenshot" => capture.path = args.next().map(PathBuf::from),
            "--frames" => capture.frames = args.next().and_then(|n| n.parse().ok()).unwrap_or(180),
            other => eprintln!("arena: ignoring {other:?} (use --screenshot PATH --frames N)"),
        }
    }
    capture
}

/// The OpenAI-compatible service `LLM_BASE_URL` names (with the `openai` feature), or `LocalLlm`.
fn add_model(app: &mut App) {
    let config = LlmConfig { workers: 2, queue: 8, buffer: 8 };
    #[cfg(feature = "openai")]
    if let Ok(Some(openai)) = bevy_lua_coroutines::OpenAiConfig::from_env() {
        if let Ok(service) = bevy_lua_coroutines::OpenAiLlm::new(openai) {
            app.add_llm_service(service, config);
            return;
        }
    }
    app.add_llm_service(LocalLlm::new(Duration::from_millis(60)), config);
}

/// Whether the segment `a`-`b` crosses no wall (slab test against each box).
fn line_of_sight(a: Vec2, b: Vec2) -> bool {
    let d = b - a;
    WALLS.iter().all(|&(centre, half)| {
        let (min, max) = (centre - half, centre + half);
        let (mut t0, mut t1) = (0.0f32, 1.0f32);
        for (p, dp, lo, hi) in [(a.x, d.x, min.x, max.x), (a.y, d.y, min.y, max.y)] {
            if dp.abs() < 1e-6 {
                if p < lo || p > hi {
                    return true; // parallel and outside: this wall cannot block
                }
            } else {
                let (mut ta, mut tb) = ((lo - p) / dp, (hi - p) / dp);
                if ta > tb {
                    std::mem::swap(&mut ta, &mut tb);
                }
                t0 = t0.max(ta);
                t1 = t1.min(tb);
                if t0 > t1 {
                    return true;
                }
            }
        }
        false
    })
}

fn setup(
    mut commands: Commands,
    assets: Res<AssetServer>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<ColorMaterial>>,
) {
    commands.spawn(Camera2d);
    let mut colour = |c: Color| materials.add(c);
    // The floor and the walls.
    commands.spawn((
        Mesh2d(meshes.add(Rectangle::new(HALF.x * 2.0 + 20.0, HALF.y * 2.0 + 20.0))),
        MeshMaterial2d(colour(Color::srgb(0.10, 0.11, 0.14))),
        Transform::from_xyz(0.0, 0.0, -1.0),
    ));
    for (centre, half) in WALLS {
        commands.spawn((
            Mesh2d(meshes.add(Rectangle::new(half.x * 2.0, half.y * 2.0))),
            MeshMaterial2d(colour(Color::srgb(0.35, 0.37, 0.42))),
            Transform::from_translation(centre.extend(0.0)),
        ));
    }
    commands.spawn((
        Name::new("player"),
        Player { health: 100, flash: 0.0 },
        Mesh2d(meshes.add(Circle::new(16.0))),
        MeshMaterial2d(colour(Color::srgb(0.30, 0.65, 1.0))),
        Transform::from_xyz(-60.0, 40.0, 2.0),
    ));
    // The sage, and the director that spawns the waves (both scripts).
    commands.spawn((
        Name::new("sage"),
        Mesh2d(meshes.add(Rectangle::new(26.0, 26.0))),
        MeshMaterial2d(colour(Color::srgb(0.95, 0.80, 0.25))),
        Transform::from_xyz(-330.0, -200.0, 1.0),
        LuaScripts::new(assets.load("scripts/arena/sage.lua")),
    ));
    commands.spawn((Name::new("director"), LuaScripts::new(assets.load("scripts/arena/director.lua"))));
    let states = [
        ("", Color::srgb(0.6, 0.6, 0.6)),
        ("wander", Color::srgb(0.45, 0.80, 0.40)),
        ("chase", Color::srgb(1.0, 0.55, 0.15)),
        ("attack", Color::srgb(1.0, 0.15, 0.20)),
        ("flee", Color::srgb(0.70, 0.45, 1.0)),
    ];
    commands.insert_resource(Palette {
        states: states.into_iter().map(|(name, c)| (name, materials.add(c))).collect(),
        enemy: meshes.add(RegularPolygon::new(14.0, 3)),
    });

    // The text boxes: the NPC's line at the bottom, script errors at the top, the HUD top right.
    let panel =
        |commands: &mut Commands, node: Node, colour: Color, marker: Box<dyn FnOnce(&mut EntityCommands)>| {
            let mut text = commands.spawn((
                Text::new(""),
                TextFont { font_size: FontSize::Px(18.0), ..default() },
                TextColor(colour),
                node,
                BackgroundColor(Color::srgba(0.0, 0.0, 0.0, 0.55)),
            ));
            marker(&mut text);
        };
    let bottom = Node {
        position_type: PositionType::Absolute,
        left: Val::Px(12.0),
        right: Val::Px(12.0),
        bottom: Val::Px(12.0),
        padding: UiRect::all(Val::Px(8.0)),
        ..default()
    };
    panel(
        &mut commands,
        bottom,
        Color::srgb(1.0, 0.92, 0.6),
        Box::new(|e| {
            e.insert(NpcText);
        }),
    );
    let top = Node {
        position_type: PositionType::Absolute,
        left: Val::Px(12.0),
        top: Val::Px(12.0),
        max_width: Val::Px(620.0),
        display: Display::None, // shown on the first error
        padding: UiRect::all(Val::Px(6.0)),
        ..default()
    };
    panel(
        &mut commands,
        top,
        Color::srgb(1.0, 0.35, 0.35),
        Box::new(|e| {
            e.insert(ErrorText);
        }),
    );
    let right = Node {
        position_type: PositionType::Absolute,
        right: Val::Px(12.0),
        top: Val::Px(12.0),
        padding: UiRect::all(Val::Px(6.0)),
        ..default()
    };
    panel(
        &mut commands,
        right,
        Color::WHITE,
        Box::new(|e| {
            e.insert(HudText);
        }),
    );
}

fn move_player(
    keys: Res<ButtonInput<KeyCode>>,
    time: Res<Time>,
    mut player: Query<&mut Transform, With<Player>>,
) {
    let Ok(mut t) = player.single_mut() else { return };
    let mut dir = Vec2::ZERO;
    for (keys_for, step) in [
        ([KeyCode::KeyW, KeyCode::ArrowUp], Vec2::Y),
        ([KeyCode::KeyS, KeyCode::ArrowDown], -Vec2::Y),
        ([KeyCode::KeyA, KeyCode::ArrowLeft], -Vec2::X),
        ([KeyCode::KeyD, KeyCode::ArrowRight], Vec2::X),
    ] {
        if keys.any_pressed(keys_for) {
            dir += step;
        }
    }
    let next = t.translation.truncate() + dir.normalize_or_zero() * PLAYER_SPEED * time.delta_secs();
    let next = next.clamp(-HALF, HALF);
    if WALLS.iter().all(|&(c, h)| (next - c).abs().cmpgt(h + 14.0).any()) {
        t.translation = next.extend(t.translation.z);
    }
}

fn shockwave(
    keys: Res<ButtonInput<KeyCode>>,
    player: Query<&Transform, With<Player>>,
    mut out: MessageWriter<Shockwave>,
) {
    if keys.just_pressed(KeyCode::Space)
        && let Ok(t) = player.single()
    {
        out.write(Shockwave { x: t.translation.x, y: t.translation.y, radius: 220.0 });
    }
}

/// Sends the director a wave at the start and every 12 seconds, each larger.
fn send_waves(time: Res<Time>, waves: Res<LuaChannel<Wave>>, mut sent: Local<u32>) {
    let due = (time.elapsed_secs() / 12.0) as u32 + 1;
    if *sent < due.min(6) {
        let number = *sent + 1;
        if waves
            .sender()
            .try_send(Wave { number, count: 4 + number * 2, speed: 120.0 + 15.0 * number as f32 })
            .is_ok()
        {
            *sent = number;
        }
    }
}

/// An enemy's state and the material it is drawn with (none before its first frame).
type EnemyLook = (Entity, &'static Enemy, Option<&'static MeshMaterial2d<ColorMaterial>>);

/// Gives scripted enemies a mesh, and the material of their state.
fn dress_enemies(mut commands: Commands, palette: Res<Palette>, enemies: Query<EnemyLook, Changed<Enemy>>) {
    for (entity, enemy, material) in &enemies {
        let wanted =
            palette.states.iter().find(|(s, _)| *s == enemy.state).unwrap_or(&palette.states[0]).1.clone();
        if material.is_none() {
            commands.entity(entity).insert(Mesh2d(palette.enemy.clone()));
        }
        if material.map(|m| m.0 != wanted).unwrap_or(true) {
            commands.entity(entity).insert(MeshMaterial2d(wanted));
        }
    }
}

/// Enemy strikes that land near the player hurt it (and flash it red).
fn take_hits(
    mut attacks: MessageReader<EnemyAttack>,
    time: Res<Time>,
    mut player: Query<(&Transform, &mut Player, &MeshMaterial2d<ColorMaterial>)>,
    mut materials: ResMut<Assets<ColorMaterial>>,
) {
    let Ok((t, mut p, material)) = player.single_mut() else { return };
    for a in attacks.read() {
        if t.translation.truncate().distance(Vec2::new(a.x, a.y)) < 40.0 {
            p.health = (p.health - a.damage).max(0);
            p.flash = 0.2;
        }
    }
    p.flash = (p.flash - time.delta_secs()).max(0.0);
    let colour = if p.flash > 0.0 { Color::srgb(1.0, 0.2, 0.2) } else { Color::srgb(0.30, 0.65, 1.0) };
    if materials.get(&material.0).is_some_and(|m| m.color != colour)
        && let Some(mut m) = materials.get_mut(&material.0)
    {
        m.color = colour;
    }
}

fn show_npc_line(mut said: MessageReader<NpcSay>, mut text: Query<&mut Text, With<NpcText>>) {
    if let Some(line) = said.read().last()
        && let Ok(mut text) = text.single_mut()
    {
        text.0 = line.text.clone();
    }
}

/// The `ScriptError` overlay: the last three distinct errors on screen, each with how many times it
/// was reported (a broken enemy script fails once per enemy).
fn show_errors(
    mut errors: MessageReader<ScriptError>,
    mut log: ResMut<ErrorLog>,
    mut text: Query<&mut Text, With<ErrorText>>,
    mut panel: Query<&mut Node, With<ErrorText>>,
) {
    let mut changed = false;
    for e in errors.read() {
        match log.0.iter_mut().find(|(message, _)| *message == e.message) {
            Some((_, count)) => *count += 1,
            None => log.0.push((e.message.clone(), 1)),
        }
        changed = true;
    }
    if changed {
        if let Ok(mut node) = panel.single_mut() {
            node.display = Display::Flex;
        }
        let n = log.0.len();
        log.0.drain(..n.saturating_sub(3));
        let lines: Vec<String> = log
            .0
            .iter()
            .map(
                |(message, count)| if *count > 1 { format!("{message} (x{count})") } else { message.clone() },
            )
            .collect();
        if let Ok(mut text) = text.single_mut() {
            text.0 = format!("Script errors:\n{}", lines.join("\n"));
        }
    }
}

fn show_hud(
    player: Query<&Player>,
    enemies: Query<(), With<Enemy>>,
    runtime: Res<LuaRuntime>,
    mut text: Query<&mut Text, With<HudText>>,
) {
    let (Ok(p), Ok(mut text)) = (player.single(), text.single_mut()) else { return };
    text.0 = format!(
        "health {}  enemies {}  Lua tasks {}",
        p.health,
        enemies.iter().count(),
        runtime.live_tasks()
    );
}

/// With `--screenshot`: after `frames` frames, captures the window, then exits once it is saved.
fn screenshot(mut commands: Commands, mut capture: ResMut<Capture>, mut exit: MessageWriter<AppExit>) {
    let Some(path) = capture.path.clone() else { return };
    capture.frame += 1;
    if capture.frame == capture.frames {
        commands.spawn(Screenshot::primary_window()).observe(save_to_disk(path.clone()));
        capture.taken_at = Some(capture.frame);
    }
    if let Some(at) = capture.taken_at
        && capture.frame > at + 5
        && path.exists()
    {
        println!("arena: saved {}", path.display());
        exit.write(AppExit::Success);
    }
    if capture.frame > capture.frames + 600 {
        eprintln!("arena: the screenshot was not saved");
        exit.write(AppExit::error());
    }
}
