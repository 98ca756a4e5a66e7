//! Game time follows the schedule's `Time`: pausing `Time<Virtual>` holds time-based waits,
//! relative speed scales them, and in `FixedUpdate` scripts see `Time<Fixed>`.

mod common;
use bevy::prelude::*;
use common::*;

const WAITER: &str = r#"
    local e = task.wait(0.1)
    print("woke", time.frame(), e >= 0.1)
"#;

#[test]
fn pausing_virtual_time_holds_waits_and_unpausing_releases_them() {
    let mut app = create_app();
    spawn_script(&mut app, "scripts/wait.lua", WAITER);
    run(&mut app, 2);
    app.world_mut().resource_mut::<Time<Virtual>>().pause();
    run(&mut app, 30);
    assert!(printed(&app).is_empty(), "a wait finished while paused: {:?}", printed(&app));
    app.world_mut().resource_mut::<Time<Virtual>>().unpause();
    run(&mut app, 10);
    // 0.1 s is six frames of game time: frame 2 before the pause, frames 33..=37 after it.
    assert_eq!(printed(&app), ["woke\t37\ttrue"]);
}

#[test]
fn frame_waits_keep_counting_while_paused() {
    let mut app = create_app();
    app.world_mut().resource_mut::<Time<Virtual>>().pause();
    spawn_script(
        &mut app,
        "scripts/frames.lua",
        "local e = task.waitFrames(3) print('frames', time.frame(), e)",
    );
    run(&mut app, 5);
    assert_eq!(
        printed(&app),
        [format!("frames\t4\t{}", float(0.0))],
        "frames pass while paused, game seconds do not"
    );
}

#[test]
fn relative_speed_scales_waits() {
    let frames_to_wake = |speed: f64| {
        let mut app = create_app();
        app.world_mut().resource_mut::<Time<Virtual>>().set_relative_speed_f64(speed);
        spawn_script(&mut app, "scripts/wait.lua", WAITER);
        run_until(&mut app, 100, |app| !printed(app).is_empty())
    };
    let normal = frames_to_wake(1.0);
    let double = frames_to_wake(2.0);
    let half = frames_to_wake(0.5);
    // The script starts on frame 1 (zero delta); 0.1 s is six frames of 1/60 s after it.
    assert_eq!(normal, 7, "normal speed");
    assert_eq!(double, 4, "twice as fast: half the frames");
    // Half of 16,666,667 ns rounds down, so twelve scaled frames fall 4 ns short of 0.1 s.
    assert_eq!(half, 14, "half as fast: twice the frames, plus one for rounding");
}

#[test]
fn in_fixed_update_scripts_see_fixed_time() {
    let mut app = create_app_with(
        bevy_lua_coroutines::LuaCoroutinesPlugin { print_to_stdout: false, ..default() }
            .in_schedule(FixedUpdate),
    );
    app.insert_resource(Time::<Fixed>::from_hz(10.0));
    spawn_script(
        &mut app,
        "scripts/fixed.lua",
        r#"
        for i = 1, 3 do
          print(string.format("%.3f %.3f", time.elapsed(), time.delta()))
          task.wait()
        end
        "#,
    );
    run(&mut app, 30);
    assert_eq!(printed(&app), ["0.100 0.100", "0.200 0.100", "0.300 0.100"]);
}
