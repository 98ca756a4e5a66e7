//! Every row of the task and time API, stepped frame by frame with a fixed DT.

mod common;
use common::*;

#[test]
fn spawn_runs_now_until_first_yield_and_returns_the_thread() {
    let out = output(
        r#"
        print("before")
        local co = task.spawn(function(a, b) print("in", a, b); task.wait(); print("later") end, 1, 2)
        print("after", type(co), coroutine.status(co))
        "#,
        3,
    );
    assert_eq!(out, ["before", "in\t1\t2", "after\tthread\tsuspended", "later"]);
}

#[test]
fn spawn_resumes_an_existing_thread_with_arguments() {
    let out = output(
        r#"
        local co = coroutine.create(function(...) print("got", ...) end)
        task.spawn(co, "x", "y")
        print(coroutine.status(co))
        "#,
        2,
    );
    assert_eq!(out, ["got\tx\ty", "dead"]);
}

#[test]
fn seed_names_spawn_and_sleep_behave_like_task_spawn_and_wait() {
    let out = output(
        r#"
        spawn(function() print("spawned", time.frame()) end)
        local e = sleep(0.05)
        print("slept", e >= 0.05, time.frame())
        "#,
        6,
    );
    assert_eq!(out, ["spawned\t1", "slept\ttrue\t4"]);
}

#[test]
fn defer_runs_after_the_running_work_in_the_same_frame() {
    let out = output(
        r#"
        task.defer(function(v) print("deferred", v, time.frame()) end, 7)
        print("still running", time.frame())
        "#,
        2,
    );
    assert_eq!(out, ["still running\t1", "deferred\t7\t1"]);
}

#[test]
fn defer_chain_deeper_than_ten_raises_on_the_eleventh_call() {
    let out = output(
        r#"
        local depth = 0
        local function chain()
          depth = depth + 1
          local ok, err = pcall(task.defer, chain)
          if not ok then print("depth", depth, err) end
        end
        task.defer(chain)
        "#,
        2,
    );
    assert_eq!(out, ["depth\t10\tMaximum re-entrancy depth (10) exceeded calling task.defer"]);
}

#[test]
fn delay_resumes_after_game_time_with_its_arguments() {
    let out = output(
        r#"
        task.delay(0.05, function(a, b) print("delayed", a, b, time.frame(), time.elapsed() >= 0.05) end, "a", 2)
        "#,
        6,
    );
    assert_eq!(out, ["delayed\ta\t2\t4\ttrue"]);
}

#[test]
fn wait_returns_at_least_the_requested_game_seconds() {
    let out = output(
        r#"
        local start = time.elapsed()
        local e = task.wait(0.5)
        print(e >= 0.5, e == time.elapsed() - start, time.frame())
        "#,
        40,
    );
    // 30 frames of 16,666,667 ns is 0.50000001 s: the first frame at or past 0.5 s.
    assert_eq!(out, ["true\ttrue\t31"]);
}

#[test]
fn wait_with_nil_zero_negative_or_nan_yields_one_frame() {
    let out = output(
        r#"
        for _, s in ipairs({ "nil", 0, -1, 0/0 }) do
          local f = time.frame()
          local e = s == "nil" and task.wait() or task.wait(s)
          print(time.frame() - f, e > 0)
        end
        "#,
        8,
    );
    assert_eq!(out, ["1\ttrue", "1\ttrue", "1\ttrue", "1\ttrue"]);
}

#[test]
fn wait_frames_counts_frames_and_returns_game_seconds() {
    let out = output(
        r#"
        local f = time.frame()
        local e = task.waitFrames(3)
        print(time.frame() - f, math.abs(e - 3 * 0.016666667) < 1e-9)
        f = time.frame()
        task.waitFrames()
        print(time.frame() - f)
        "#,
        8,
    );
    assert_eq!(out, ["3\ttrue", "1"]);
}

#[test]
fn wait_until_returns_true_at_once_or_checks_once_per_frame() {
    let out = output(
        r#"
        local f = time.frame()
        print("immediate", task.waitUntil(function() return true end), time.frame() - f)
        local checks = 0
        local ok = task.waitUntil(function() checks = checks + 1; return time.frame() >= f + 3 end)
        print("later", ok, time.frame() - f, checks)
        "#,
        6,
    );
    assert_eq!(out, ["immediate\ttrue\t0", "later\ttrue\t3\t4"]);
}

#[test]
fn wait_until_returns_false_when_the_timeout_passes_first() {
    let out = output(
        r#"
        local f = time.frame()
        local ok = task.waitUntil(function() return false end, 0.05)
        print(ok, time.frame() - f)
        "#,
        8,
    );
    assert_eq!(out, ["false\t3"]);
}

#[test]
fn wait_until_with_a_negative_or_nan_timeout_returns_false_after_a_frame() {
    let out = output(
        r#"
        for _, timeout in ipairs({ -1, 0 / 0, 0 }) do
          local f = time.frame()
          local ok = task.waitUntil(function() return false end, timeout)
          print(ok, time.frame() - f)
        end
        "#,
        8,
    );
    assert_eq!(out, ["false\t1", "false\t1", "false\t1"], "NaN is no longer than a negative timeout");
}

#[test]
fn wait_from_a_coroutine_the_script_created_resumes_that_coroutine() {
    let out = output(
        r#"
        local co = coroutine.create(function()
          print("inner start", time.frame())
          local e = task.wait(0.05)
          print("inner resumed", time.frame(), e >= 0.05)
        end)
        print("resume ->", coroutine.resume(co))
        print("outer continues", coroutine.status(co))
        local gen = coroutine.wrap(function() task.wait(); print("wrapped resumed", time.frame()) end)
        print("wrap returned", gen())
        "#,
        6,
    );
    assert_eq!(
        out,
        [
            "inner start\t1",
            "resume ->\ttrue",
            "outer continues\tsuspended",
            "wrap returned",
            "wrapped resumed\t2",
            "inner resumed\t4\ttrue",
        ]
    );
}

#[test]
fn plain_coroutines_keep_their_standard_behaviour() {
    let out = output(
        r#"
        local co = coroutine.create(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
        print(coroutine.resume(co, 1))
        print(coroutine.resume(co, 5))
        print(coroutine.resume(co))
        local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
        print(gen(), gen(), gen())
        local bad = coroutine.wrap(function() error("inner") end)
        local ok, err = pcall(bad)
        print(ok, err:match("inner") ~= nil)
        "#,
        2,
    );
    assert_eq!(
        out,
        ["true\t2", "true\t10", "false\tcannot resume dead coroutine", "1\t2\t3", "false\ttrue",]
    );
}

#[test]
fn cancel_stops_a_task_closes_its_variables_and_marks_it_dead() {
    let out = output(
        &closable(
            r#"
        local co = task.spawn(function()
          local guard <close> = setmetatable({}, { __close = function() print("closed", time.frame()) end })
          task.wait(0.05)
          print("never")
        end)
        task.wait()
        task.cancel(co)
        print("after cancel", coroutine.status(co))
        task.wait(0.2)
        print("done")
        "#,
        ),
        20,
    );
    // LuaJIT has no `coroutine.close`: a cancelled thread never resumes, but still reads
    // `suspended`.
    let status = per_flavour("dead", "suspended", "dead");
    let after = format!("after cancel\t{status}");
    assert_eq!(out, closed_lines(["closed\t2", &after, "done"]));
}

#[test]
fn cancelling_the_running_thread_raises() {
    let out = output(
        r#"
        print(pcall(task.cancel, coroutine.running()))
        local d = task.delay(1, function() print("never") end)
        task.cancel(d)
        print(coroutine.status(d))
        "#,
        90,
    );
    // LuaJIT has no `coroutine.close`: the cancelled thread never runs, but still reads `suspended`.
    assert_eq!(out, ["false\tcannot cancel the running thread", per_flavour("dead", "suspended", "dead")]);
}

#[test]
fn wait_realtime_ignores_pause() {
    let mut app = create_app();
    app.world_mut().resource_mut::<bevy::prelude::Time<bevy::prelude::Virtual>>().pause();
    spawn_script(
        &mut app,
        "scripts/real.lua",
        r#"
        task.spawn(function() task.wait(0.05); print("game wait done") end)
        local f = time.frame()
        local e = task.waitRealtime(0.05)
        print("real", time.frame() - f, e >= 0.05, time.elapsed())
        "#,
    );
    run(&mut app, 10);
    assert_eq!(
        printed(&app),
        [format!("real\t3\ttrue\t{}", float(0.0))],
        "paused game time holds task.wait only"
    );
}

#[test]
fn time_functions_read_the_schedule_clock() {
    let out = output(
        r#"
        task.wait()
        task.wait()
        print(time.frame(), math.abs(time.delta() - 0.016666667) < 1e-12,
              math.abs(time.elapsed() - 2 * 0.016666667) < 1e-12,
              math.abs(time.realElapsed() - 2 * 0.016666667) < 1e-12)
        "#,
        4,
    );
    assert_eq!(out, ["3\ttrue\ttrue\ttrue"]);
}

#[test]
fn wrong_argument_types_raise_bad_argument() {
    let out = output(
        r#"
        local cases = {
          { "wait", function() task.wait({}) end },
          { "sleep", function() sleep("x") end },
          { "waitFrames", function() task.waitFrames({}) end },
          { "waitRealtime", function() task.waitRealtime() end },
          { "waitUntil", function() task.waitUntil(5) end },
          { "waitUntil timeout", function() task.waitUntil(function() end, {}) end },
          { "spawn", function() task.spawn(42) end },
          { "spawn alias", function() spawn(nil) end },
          { "defer", function() task.defer("f") end },
          { "delay", function() task.delay("1", print) end },
          { "delay f", function() task.delay(1, 5) end },
          { "cancel", function() task.cancel({}) end },
        }
        for _, c in ipairs(cases) do
          local ok, err = pcall(c[2])
          print(c[1], ok, err)
        end
        "#,
        2,
    );
    let expected = [
        "wait\tfalse\tscripts/test.lua:3: bad argument #1 to 'wait' (number expected, got table)",
        "sleep\tfalse\tscripts/test.lua:4: bad argument #1 to 'sleep' (number expected, got string)",
        "waitFrames\tfalse\tscripts/test.lua:5: bad argument #1 to 'waitFrames' (number expected, got table)",
        "waitRealtime\tfalse\tscripts/test.lua:6: bad argument #1 to 'waitRealtime' (number expected, got nil)",
        "waitUntil\tfalse\tscripts/test.lua:7: bad argument #1 to 'waitUntil' (function expected, got number)",
        "waitUntil timeout\tfalse\tscripts/test.lua:8: bad argument #2 to 'waitUntil' (number expected, got table)",
        "spawn\tfalse\tscripts/test.lua:9: bad argument #1 to 'spawn' (function or thread expected, got number)",
        "spawn alias\tfalse\tscripts/test.lua:10: bad argument #1 to 'spawn' (function or thread expected, got nil)",
        "defer\tfalse\tscripts/test.lua:11: bad argument #1 to 'defer' (function or thread expected, got string)",
        "delay\tfalse\tscripts/test.lua:12: bad argument #1 to 'delay' (number expected, got string)",
        "delay f\tfalse\tscripts/test.lua:13: bad argument #2 to 'delay' (function or thread expected, got number)",
        "cancel\tfalse\tscripts/test.lua:14: bad argument #1 to 'cancel' (thread expected, got table)",
    ];
    assert_eq!(out, expected);
}

#[test]
fn an_error_in_a_spawned_task_is_reported_and_the_spawner_goes_on() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/spawner.lua",
        r#"
        task.spawn(function() error("child failed") end)
        print("spawner goes on")
        "#,
    );
    run(&mut app, 2);
    assert_eq!(printed(&app), ["spawner goes on"]);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].message, "scripts/spawner.lua:2: child failed");
    if !LUAU {
        // Luau keeps no stack in a coroutine that died of an error.
        assert!(errs[0].traceback.contains("scripts/spawner.lua:2"), "traceback: {}", errs[0].traceback);
    }
}

#[test]
fn coroutine_resume_returns_exactly_what_the_coroutine_gave() {
    let out = output(
        r##"
        local done = coroutine.create(function() end)
        print(select("#", coroutine.resume(done)))
        local plain = coroutine.create(function() coroutine.yield() end)
        print(select("#", coroutine.resume(plain)))
        local two = coroutine.create(function() coroutine.yield(1, nil) end)
        print(select("#", coroutine.resume(two)))
        "##,
        2,
    );
    assert_eq!(out, ["1", "1", "3"]);
}

#[test]
fn resuming_a_waiting_task_by_hand_ends_its_wait() {
    let out = output(
        r#"
        local co = coroutine.create(function()
          local e = task.wait(0.05)
          print("resumed with", e)
        end)
        coroutine.resume(co)
        coroutine.resume(co, "by hand")
        task.wait(0.2)
        print("status", coroutine.status(co))
        "#,
        20,
    );
    assert_eq!(out, ["resumed with\tby hand", "status\tdead"], "the timer must not resume it again");
}

/// Resuming the running coroutine fails as Lua's own `coroutine.resume` does: `false` first, then
/// the message; `coroutine.wrap` raises it.
#[test]
fn resuming_the_running_coroutine_returns_false_then_the_message() {
    let out = output(
        r#"
        local co
        co = coroutine.create(function()
          local ok, err = coroutine.resume(co)
          print(type(ok), ok, err)
        end)
        coroutine.resume(co)
        local w
        w = coroutine.wrap(function() print("wrap", pcall(w)) end)
        w()
        "#,
        2,
    );
    assert_eq!(out.len(), 2, "{out:?}");
    // (LuaJIT words it "cannot resume running coroutine".)
    assert!(out[0].starts_with("boolean\tfalse\tcannot resume "), "{out:?}");
    assert!(out[1].starts_with("wrap\tfalse\t") && out[1].contains("cannot resume "), "{out:?}");
}
