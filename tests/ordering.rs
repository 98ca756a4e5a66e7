//! Deterministic order: timers due in one frame resume by deadline, then by the order
//! they were made; work woken during a step runs in that step; runs replay exactly.

mod common;
use common::*;

#[test]
fn timers_due_in_the_same_frame_resume_by_deadline_then_schedule_order() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/order.lua",
        r#"
        -- All of these fall due on frame 4 (3 frames of 16.67 ms = 50 ms).
        task.delay(0.045, function() print("c 45ms") end)
        task.delay(0.040, function() print("a 40ms first") end)
        task.delay(0.040, function() print("b 40ms second") end)
        task.spawn(function() task.wait(0.035); print("0 35ms wait") end)
        task.delay(0.050, function() print("d 50ms") end)
        "#,
    );
    run(&mut app, 6);
    assert_eq!(printed(&app), ["0 35ms wait", "a 40ms first", "b 40ms second", "c 45ms", "d 50ms"]);
}

#[test]
fn frame_waits_resume_in_the_order_they_were_made_before_timers() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/frames.lua",
        r#"
        task.spawn(function() task.waitFrames(2); print("frames 2 (made first)") end)
        task.delay(0.02, function() print("timer 20ms") end)
        task.spawn(function() task.wait(); task.wait(); print("wait twice (made later)") end)
        "#,
    );
    run(&mut app, 4);
    assert_eq!(printed(&app), ["frames 2 (made first)", "wait twice (made later)", "timer 20ms"]);
}

#[test]
fn scripts_on_different_entities_start_in_spawn_order_each_frame() {
    let mut app = create_app();
    for name in ["a", "b", "c"] {
        spawn_script(
            &mut app,
            &format!("scripts/{name}.lua"),
            &format!(r#"for i = 1, 3 do print("{name}", i) task.wait() end"#),
        );
    }
    run(&mut app, 4);
    let out = printed(&app);
    assert_eq!(
        out,
        ["a\t1", "b\t1", "c\t1", "a\t2", "b\t2", "c\t2", "a\t3", "b\t3", "c\t3"],
        "round-robin in the order the tasks were made"
    );
}

#[test]
fn the_same_inputs_print_the_same_output_run_after_run() {
    let src = r#"
        local seedless = {}
        for i = 1, 20 do
          task.delay((i * 7 % 5) * 0.01, function() print("delay", i, time.frame()) end)
          task.spawn(function() task.waitFrames(i % 4 + 1); print("frames", i, time.frame()) end)
          task.defer(function() print("defer", i) end)
        end
        "#;
    let once = || {
        let mut app = create_app();
        spawn_script(&mut app, "scripts/replay.lua", src);
        spawn_script(&mut app, "scripts/replay2.lua", src);
        run(&mut app, 10);
        printed(&app)
    };
    let first = once();
    assert_eq!(first.len(), 120, "every callback printed: {first:?}");
    for _ in 0..3 {
        assert_eq!(once(), first, "a second run printed something else");
    }
}
