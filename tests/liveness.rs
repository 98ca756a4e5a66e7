//! Liveness: no script can keep a frame from ending. A task that runs out of its instruction
//! budget is dead for good (no `pcall`, finalizer, `__tostring` or `__close` keeps it running),
//! work that wakes other work is bounded per step, and the optional per-frame time budget carries
//! the rest to the next frame.
//!
//! A frame that never ends would hang the test, so each app runs on its own thread and the test
//! fails after a generous timeout instead.

mod common;
use std::sync::mpsc;
use std::time::Duration;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::*;

/// Runs `f` on its own thread; fails the test if it does not finish within a minute (a frame that
/// never ends). The thread is left behind on failure: there is no way to stop it.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: a frame never ended"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the app panicked"),
    }
}

fn budget_app(instructions: u64) -> App {
    create_app_with(LuaCoroutinesPlugin {
        instruction_budget: Some(instructions),
        print_to_stdout: false,
        hot_reload: false,
        ..default()
    })
}

/// Runs `hostile` beside a steady script for `frames` frames with a small budget; returns what was
/// printed and the errors.
fn beside_steady(hostile: &'static str, frames: usize) -> (Vec<String>, Vec<ScriptError>, usize) {
    within(hostile, move || {
        let mut app = budget_app(100_000);
        spawn_script(&mut app, "scripts/hostile.lua", hostile);
        spawn_script(&mut app, "scripts/steady.lua", "for i = 1, 3 do task.wait() end print('steady done')");
        run(&mut app, frames);
        (printed(&app), errors(&app), live_tasks(&app))
    })
}

fn assert_stopped_by_budget(errs: &[ScriptError], out: &[String]) {
    assert!(
        errs.iter().any(|e| e.kind == ScriptErrorKind::Budget && e.script == "scripts/hostile.lua"),
        "the hostile script is stopped by its budget: {errs:#?}"
    );
    assert!(errs.iter().all(|e| e.script == "scripts/hostile.lua"), "{errs:#?}");
    assert!(out.contains(&"steady done".to_string()), "the other script goes on: {out:?}");
}

#[test]
fn a_finalizer_is_refused_at_setmetatable() {
    // Lua runs `__gc` with hooks off, so a finalizer would run outside any budget (the sandbox
    // refuses it; see tests/sandbox.rs for `newproxy`).
    let (out, errs, _) = beside_steady(
        r#"
        print(pcall(setmetatable, {}, { __gc = function() while true do end end }))
        local mt = {}
        setmetatable({}, mt)
        mt.__gc = function() while true do end end -- too late: the table is not marked
        collectgarbage()
        collectgarbage()
        print("collected")
        "#,
        5,
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert!(
        out[0].starts_with("false\t")
            && out[0].contains("bad argument #2 to 'setmetatable' (finalizers (__gc)"),
        "{out:?}"
    );
    assert_eq!(out[1..], ["collected", "steady done"]);
}

#[test]
fn an_error_object_whose_tostring_loops() {
    let (out, errs, live) =
        beside_steady("error(setmetatable({}, { __tostring = function() while true do end end }))", 5);
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
fn an_error_object_whose_tostring_loops_in_a_spawned_task() {
    let (out, errs, live) = beside_steady(
        "task.spawn(function() error(setmetatable({}, { __tostring = function() while true do end end })) end)\n\
         print('spawner goes on')",
        5,
    );
    assert!(out.contains(&"spawner goes on".to_string()) || !errs.is_empty(), "{out:?} {errs:#?}");
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
fn an_unhandled_rejection_whose_value_loops_in_tostring() {
    let (out, errs, _) = beside_steady(
        "Promise.reject(setmetatable({}, { __tostring = function() while true do end end }))",
        5,
    );
    assert_stopped_by_budget(&errs, &out);
}

#[test]
#[cfg_attr(not(feature = "lua54"), ignore = "to-be-closed variables are Lua 5.4 syntax")]
fn a_looping_close_in_the_task_that_despawned_its_entity() {
    let (out, errs, live) = beside_steady(
        "local x <close> = setmetatable({}, { __close = function() while true do end end })\n\
         entity:despawn()\n\
         task.wait()",
        5,
    );
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
#[cfg_attr(not(feature = "lua54"), ignore = "to-be-closed variables are Lua 5.4 syntax")]
fn a_looping_close_in_a_task_stopped_by_the_budget() {
    let (out, errs, live) = beside_steady(
        "local x <close> = setmetatable({}, { __close = function() while true do end end })\n\
         while true do end",
        5,
    );
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

/// Run with a small budget in both modes (the watchdog's and the exact count): what was printed
/// and the errors, or a failure if a frame never ended.
fn in_both_modes(what: &str, src: &str, frames: usize) -> Vec<(Vec<String>, Vec<ScriptError>)> {
    [false, true]
        .into_iter()
        .map(|exact| {
            let src = src.to_string();
            within(&format!("{what} (exact count: {exact})"), move || {
                let mut app = create_app_with(LuaCoroutinesPlugin {
                    instruction_budget: Some(100_000),
                    exact_instruction_count: exact,
                    print_to_stdout: false,
                    hot_reload: false,
                    ..default()
                });
                spawn_script(&mut app, "scripts/hostile.lua", &src);
                spawn_script(
                    &mut app,
                    "scripts/steady.lua",
                    "for i = 1, 3 do task.wait() end print('steady done')",
                );
                run(&mut app, frames);
                (printed(&app), errors(&app))
            })
        })
        .collect()
}

/// The budget, spent inside a `pcall` (by pattern matching), stops a coroutine the task made
/// whose next instruction is a call to `coroutine.yield`: the coroutine must not be left
/// suspended with the raise still pending, for a later resume, once the budget has been reset,
/// would raise it where the `xpcall` handler runs with hooks off, and a handler that loops froze
/// the game. (The raise now also fires on calls, and takes itself off once the budget is reset.)
#[test]
#[cfg_attr(not(feature = "lua54"), ignore = "the raise from a hook of the crate's own is Lua 5.4's")]
fn a_coroutine_stopped_at_a_yield_is_not_left_to_raise_later() {
    const SRC: &str = r#"
        local X = coroutine.create(function()
          xpcall(function()
            coroutine.yield(pcall(string.find, string.rep("a", 100000), ".-.-.-.-b"))
            print("X went on past its yield")
          end, function(e) while true do end end)
        end)
        task.spawn(function()
          task.wait() task.wait()
          print("resuming X", coroutine.status(X))
          print(coroutine.resume(X))
          print("resumer goes on")
        end)
        coroutine.resume(X)
        print("never")
    "#;
    for (out, errs) in in_both_modes("a coroutine stopped at a yield", SRC, 6) {
        assert_stopped_by_budget(&errs, &out);
        assert!(!out.iter().any(|l| l == "never" || l.starts_with("X went on")), "{out:?}");
        assert!(out.contains(&"resumer goes on".to_string()), "{out:?}");
    }
}

/// A thread the budget stopped so that it died is not closed later: `coroutine.close` on it says
/// so, and names no other script's line (the message was once the last budget stop's, whichever
/// instance's that was).
#[test]
#[cfg_attr(not(feature = "lua54"), ignore = "the raise from a hook of the crate's own is Lua 5.4's")]
fn closing_a_coroutine_the_budget_stopped_names_no_other_script() {
    let (out, _) = within("a stale close message", || {
        let mut app = budget_app(100_000);
        spawn_script(
            &mut app,
            "scripts/a.lua",
            "local X = coroutine.create(function() table.sort({3, 2, 1}, function() while true do end end) end)\n\
             task.spawn(function() for i = 1, 8 do task.wait() end print('A closes X', coroutine.close(X)) end)\n\
             coroutine.resume(X)",
        );
        spawn_script(
            &mut app,
            "scripts/b.lua",
            "for i = 1, 3 do task.wait() end\n\
             local Y = coroutine.create(function() table.sort({3, 2, 1}, function() while true do end end) end)\n\
             coroutine.resume(Y)",
        );
        run(&mut app, 12);
        (printed(&app), errors(&app))
    });
    assert_eq!(out, ["A closes X\tfalse\tscript exceeded its instruction budget"]);
}

/// A task stopped by its budget while the VM's heap is full (the step's bookkeeping for it then
/// fails, and an error escapes the step): it is reported, and the budget reset, before any other
/// task runs, so another script's task is not stopped in its place (it once was, as a `Budget`
/// error naming the first script's line or `?`), with or without a `__close` to run.
#[test]
#[cfg_attr(
    not(feature = "lua54"),
    ignore = "to-be-closed variables and integer operators are Lua 5.4 syntax"
)]
fn a_budget_spent_with_the_heap_full_stops_no_other_script() {
    const FULL: &str = r#"
        local co = coroutine.create(function()
          local x <close> = setmetatable({}, { __close = function() print('close ran') end })
          coroutine.yield()
          while true do end
        end)
        coroutine.resume(co)
        local keep, k = {}, 0
        keep = table.pack(string.byte(string.rep("\0", 20000), 1, -1))
        pcall(function()
          local n = 1 << 20
          while n >= 2 do
            local ok, s = pcall(string.rep, "x", n)
            if ok then k = k + 1; keep[k] = s else n = n // 2 end
          end
        end)
        coroutine.resume(co)
        print("never")
    "#;
    for exact in [false, true] {
        for src in [
            FULL.to_string(),
            FULL.replace(
                "local x <close> = setmetatable({}, { __close = function() print('close ran') end })",
                "",
            ),
        ] {
            let (out, errs) = within("a budget spent with the heap full", move || {
                let mut app = create_app_with(LuaCoroutinesPlugin {
                    instruction_budget: Some(1_000_000),
                    exact_instruction_count: exact,
                    memory_limit: Some(64 << 20),
                    print_to_stdout: false,
                    hot_reload: false,
                    ..default()
                });
                spawn_script(&mut app, "scripts/hostile.lua", &src);
                spawn_script(
                    &mut app,
                    "scripts/steady.lua",
                    "for i = 1, 3 do task.wait() end print('steady done')",
                );
                run(&mut app, 5);
                (printed(&app), errors(&app))
            });
            // (Whether the steady script can print depends on what the heap still holds: the VM's
            // memory is shared, and `memory_per_instance` is the quota that keeps one script from
            // taking it all. Here only whom the budget stops is checked.)
            let case = format!("exact {exact}");
            assert!(!out.contains(&"never".to_string()), "{case}: {out:?}");
            assert_eq!(errs.len(), 1, "{case}: {errs:#?}");
            assert_eq!(
                (errs[0].script.as_str(), errs[0].kind),
                ("scripts/hostile.lua", ScriptErrorKind::Budget),
                "{case}: {errs:#?}"
            );
        }
    }
}

/// The same where the task cannot yield when its budget runs out (in a sort comparator): the
/// error leaves the task with hooks off for good, so its `__close` is never run (it froze the
/// game when the step closed the task).
#[test]
#[cfg_attr(not(feature = "lua54"), ignore = "to-be-closed variables are Lua 5.4 syntax")]
fn a_looping_close_in_a_task_stopped_where_it_cannot_yield() {
    let (out, errs, live) = beside_steady(
        "local x <close> = setmetatable({}, { __close = function() while true do end end })\n\
         table.sort({3, 2, 1, 5, 4}, function() while true do end end)",
        5,
    );
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
fn a_runaway_after_frame_waits_is_stopped() {
    // After `task.wait()` the task is resumed by the step's raw frame loop (src/fastpath.rs), not
    // by `coroutine.resume`: the budget must see that resume too.
    let (out, errs, _) =
        beside_steady("for i = 1, 3 do task.wait() end print('spinning') while true do end", 10);
    assert!(out.contains(&"spinning".to_string()), "{out:?}");
    assert_stopped_by_budget(&errs, &out);
}

#[test]
fn a_runaway_after_a_timed_wait_is_stopped() {
    let (out, errs, _) = beside_steady("task.wait(0.01) local x = 0 while true do x = x + 1 end", 10);
    assert_stopped_by_budget(&errs, &out);
}

#[test]
fn pcall_in_a_script_made_coroutine_cannot_catch_the_budget_for_ever() {
    let (out, errs, live) = beside_steady(
        "coroutine.wrap(function() while true do pcall(function() while true do end end) end end)()",
        5,
    );
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
fn nested_coroutines_made_again_and_again_cannot_outlive_the_budget() {
    let (out, errs, live) = beside_steady(
        "while true do pcall(coroutine.wrap(function()\n\
           while true do pcall(coroutine.wrap(function() while true do end end)) end\n\
         end)) end",
        5,
    );
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
fn a_budget_spent_where_the_task_cannot_yield_is_not_catchable_afterwards() {
    let (out, errs, live) =
        beside_steady("while true do pcall(string.gsub, 'a', 'a', function() while true do end end) end", 5);
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
fn a_budget_spent_in_a_sort_comparator_is_not_catchable_afterwards() {
    let (out, errs, live) =
        beside_steady("while true do pcall(table.sort, {3, 2, 1}, function() while true do end end) end", 5);
    assert_stopped_by_budget(&errs, &out);
    assert_eq!(live, 0);
}

#[test]
fn channel_ping_pong_lets_the_frame_end() {
    let out = within("ping-pong", || {
        let mut app = capped_app();
        spawn_script(
            &mut app,
            "scripts/pingpong.lua",
            r#"
            local a, b = Channel.new(), Channel.new()
            local n = 0
            task.spawn(function() while true do a:send(1); b:receive() end end)
            task.spawn(function() while true do a:receive(); n = n + 1; b:send(1) end end)
            local last = time.frame()
            for i = 1, 3 do
              task.wait()
              print(time.frame() > last, n > 0)
              last = time.frame()
            end
            "#,
        );
        run(&mut app, 5);
        (printed(&app), errors(&app))
    });
    assert_eq!(out.0, ["true\ttrue"; 3], "{:#?}", out.1);
    assert!(out.1.is_empty(), "{:#?}", out.1);
}

/// An app whose tasks resume at most 500 times per step (the default, 10,000, makes a flood take
/// seconds per frame in a debug build under Luau, whose interrupt calls Rust at every call).
fn capped_app() -> App {
    create_app_with(LuaCoroutinesPlugin {
        max_resumes_per_task: 500,
        print_to_stdout: false,
        hot_reload: false,
        ..default()
    })
}

/// Runs `hostile` beside a script that prints once a frame for three frames (default budget).
fn frames_go_on(hostile: &'static str) -> (Vec<String>, Vec<ScriptError>) {
    within(hostile, move || {
        let mut app = capped_app();
        spawn_script(&mut app, "scripts/hostile.lua", hostile);
        spawn_script(&mut app, "scripts/steady.lua", "for i = 1, 3 do task.wait() print('frame', i) end");
        run(&mut app, 5);
        (printed(&app), errors(&app))
    })
}

#[test]
fn a_retry_that_never_succeeds_lets_the_frame_end() {
    // Each attempt fails at once, so the retries run in one resume: the budget ends them.
    let (out, errs) = frames_go_on("Promise.retry(function() error('x') end, 1e9):catch(function() end)");
    assert_eq!(out, ["frame\t1", "frame\t2", "frame\t3"], "{errs:#?}");
    assert!(errs.iter().all(|e| e.script == "scripts/hostile.lua"), "{errs:#?}");
}

#[test]
fn await_and_defer_loops_let_the_frame_end() {
    let (out, errs) = frames_go_on(
        r#"
        task.spawn(function() while true do await(Promise.resolve(1)) end end)
        "#,
    );
    assert_eq!(out, ["frame\t1", "frame\t2", "frame\t3"], "{errs:#?}");
    assert_eq!(errs.len(), 1, "one report for the runaway: {errs:#?}");
    assert_eq!(errs[0].kind, ScriptErrorKind::Budget);
    assert!(errs[0].message.starts_with("scripts/hostile.lua:2: "), "{errs:#?}");
    let (out, errs) = frames_go_on(
        r#"
        local ch = Channel.new()
        task.spawn(function() while true do ch:send(1) end end)
        task.spawn(function() while true do await(Promise.new(function(resolve) resolve(ch:receive()) end)) end end)
        local co
        co = task.spawn(function() while true do task.defer(co) coroutine.yield() end end)
        "#,
    );
    assert_eq!(out, ["frame\t1", "frame\t2", "frame\t3"], "{errs:#?}");
    assert!(errs.iter().all(|e| e.script == "scripts/hostile.lua"), "{errs:#?}");
}

#[test]
fn the_resume_cap_carries_work_to_the_next_frame_deterministically() {
    let run_once = || {
        within("resume cap", || {
            let mut app = create_app_with(LuaCoroutinesPlugin {
                max_resumes_per_task: 10,
                print_to_stdout: false,
                hot_reload: false,
                ..default()
            });
            spawn_script(
                &mut app,
                "scripts/cap.lua",
                r#"
                local a, b = Channel.new(), Channel.new()
                task.spawn(function() for i = 1, 25 do a:send(i); b:receive() end end)
                task.spawn(function()
                  for i = 1, 25 do print(time.frame(), a:receive()); b:send(1) end
                end)
                "#,
            );
            run(&mut app, 6);
            printed(&app)
        })
    };
    let first = run_once();
    assert_eq!(first.len(), 25, "{first:?}");
    let frames: Vec<&str> = first.iter().map(|l| l.split('\t').next().unwrap()).collect();
    assert!(frames.first() != frames.last(), "the exchange spans several frames: {first:?}");
    assert_eq!(first, run_once(), "replays are identical");
}

/// An app whose step has no time to spare: one resume per step.
fn no_time_to_spare() -> App {
    create_app_with(LuaCoroutinesPlugin {
        step_time_budget: Some(Duration::ZERO),
        print_to_stdout: false,
        hot_reload: false,
        ..default()
    })
}

#[test]
fn the_step_time_budget_carries_the_rest_to_the_next_frame() {
    let out = within("time budget", || {
        let mut app = no_time_to_spare();
        for i in 0..3 {
            spawn_script(&mut app, &format!("scripts/t{i}.lua"), "task.wait() print(time.frame())");
        }
        run(&mut app, 8);
        printed(&app)
    });
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out[0] != out[2], "with no time to spare, one resume per step: {out:?}");
}

#[test]
fn frame_waits_a_time_budget_left_over_go_first_next_frame() {
    // One resume per step: the waits left over run before the ones queued since, so every task
    // gets its turn in order and none is starved.
    let out = within("time budget order", || {
        let mut app = no_time_to_spare();
        spawn_script(
            &mut app,
            "scripts/turns.lua",
            "for i = 1, 3 do task.spawn(function() task.wait() while true do print(i) task.wait() end end) end",
        );
        run(&mut app, 14);
        printed(&app)
    });
    let turns: Vec<&str> = out.iter().map(String::as_str).take(9).collect();
    assert_eq!(turns, ["1", "2", "3", "1", "2", "3", "1", "2", "3"], "{out:?}");
}

// Bookkeeping: a task finished, closed or refused by hand leaves nothing counted or kept.

#[test]
fn a_waiting_task_finished_by_hand_is_no_longer_live() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/by_hand.lua",
        r#"
        for i = 1, 1000 do
          local co = task.spawn(function() task.wait(0.5) end)
          coroutine.resume(co)
          assert(coroutine.status(co) == "dead")
        end
        local co = task.spawn(function() task.wait(0.5) coroutine.yield() print("never") end)
        coroutine.resume(co) -- it yields without asking to wait: nothing will wake it
        print("done")
        "#,
    );
    run(&mut app, 2);
    assert_eq!(printed(&app), ["done"]);
    assert_eq!(live_tasks(&app), 0, "no task is left counted as live");
    let before = collected_memory(&app);
    spawn_script(
        &mut app,
        "scripts/by_hand_more.lua",
        r#"
        for i = 1, 20000 do
          local co = task.spawn(function() task.wait(0.5) end)
          coroutine.resume(co)
        end
        "#,
    );
    run(&mut app, 40);
    assert_eq!(live_tasks(&app), 0);
    let after = collected_memory(&app);
    assert!(after < before + 256 * 1024, "no bookkeeping kept: {before} -> {after} bytes");
    assert!(errors(&app).is_empty(), "{:#?}", errors(&app));
}

#[test]
#[cfg_attr(feature = "luajit", ignore = "LuaJIT has no coroutine.close")]
fn closing_a_waiting_task_cancels_it() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/close.lua",
        r#"
        local co = task.spawn(function() task.wait(0.1) print("never") end)
        local d = task.delay(0.1, function() print("never either") end)
        local p = task.spawn(function() await(Promise.new(function() end)) end)
        print(coroutine.close(co), coroutine.close(d), coroutine.close(p))
        print(coroutine.status(co), coroutine.status(d))
        task.wait(0.5)
        print("after")
        "#,
    );
    run(&mut app, 40);
    assert_eq!(printed(&app), ["true\ttrue\ttrue", "dead\tdead", "after"]);
    assert!(errors(&app).is_empty(), "no later 'cannot resume dead coroutine': {:#?}", errors(&app));
    assert_eq!(live_tasks(&app), 0);
}

#[test]
fn a_dead_thread_is_refused_at_the_call() {
    let out = output(
        r#"
        local dead = coroutine.create(function() end)
        coroutine.resume(dead)
        print(pcall(function() local r = task.defer(dead) return r end))
        print(pcall(function() local r = task.spawn(dead) return r end))
        print(pcall(function() local r = task.delay(0, dead) return r end))
        print(pcall(function() local r = spawn(dead) return r end))
        "#,
        3,
    );
    let expected: Vec<String> = [(4, 1, "defer"), (5, 1, "spawn"), (6, 2, "delay"), (7, 1, "spawn")]
        .iter()
        .map(|(line, arg, f)| {
            format!(
                "false\tscripts/test.lua:{line}: bad argument #{arg} to '{f}' (cannot resume dead coroutine)"
            )
        })
        .collect();
    assert_eq!(out, expected);
}

// Memory: what a failed task held is released at once; quotas per instance name the instance
// over its share and let the others go on.

#[test]
fn memory_a_failed_task_held_is_released_before_others_need_it() {
    let (out, errs) = within("memory release", || {
        let mut app = create_app_with(LuaCoroutinesPlugin {
            memory_limit: Some(24 * 1024 * 1024),
            print_to_stdout: false,
            hot_reload: false,
            ..default()
        });
        spawn_script(
            &mut app,
            "scripts/hog.lua",
            r#"
            task.spawn(function()
              local t = {}
              for i = 1, 1e9 do t[i] = { i } end
            end)
            task.wait()
            print("hog goes on")
            "#,
        );
        spawn_script(
            &mut app,
            "scripts/victim.lua",
            "task.wait() local s = string.rep('v', 8 * 1024 * 1024) print('victim', #s)",
        );
        run(&mut app, 4);
        (printed(&app), errors(&app))
    });
    assert_eq!(out, ["hog goes on", "victim\t8388608"], "{errs:#?}");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].message.contains("not enough memory"), "{errs:#?}");
}

#[test]
fn an_instance_past_its_task_quota_fails_alone() {
    let mut app = create_app_with(LuaCoroutinesPlugin {
        max_tasks_per_instance: Some(100),
        print_to_stdout: false,
        hot_reload: false,
        ..default()
    });
    spawn_script(
        &mut app,
        "scripts/sleepers.lua",
        "for i = 1, 1e6 do task.spawn(function() task.wait(1000) end) end",
    );
    spawn_script(
        &mut app,
        "scripts/polite.lua",
        "for i = 1, 50 do task.delay(0, function() end) end task.wait() print('polite goes on')",
    );
    run(&mut app, 4);
    assert_eq!(printed(&app), ["polite goes on"]);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].script, "scripts/sleepers.lua");
    assert!(
        errs[0]
            .message
            .contains("too many live tasks: this instance has 100 (max_tasks_per_instance is 100)"),
        "{errs:#?}"
    );
    assert_eq!(live_tasks(&app), 99, "the sleepers it made keep sleeping (its top-level task was the 100th)");
}

#[test]
fn an_instance_past_its_memory_quota_is_cancelled_and_named() {
    let mut app = create_app_with(LuaCoroutinesPlugin {
        memory_per_instance: Some(8 * 1024 * 1024),
        print_to_stdout: false,
        hot_reload: false,
        ..default()
    });
    spawn_script(
        &mut app,
        "scripts/hoarder.lua",
        r#"
        keep = {}
        for f = 1, 100 do
          keep[f] = string.rep("k", 1024 * 1024 - f)
          task.wait()
        end
        print("hoarder finished")
        "#,
    );
    spawn_script(
        &mut app,
        "scripts/churner.lua",
        r#"
        for f = 1, 40 do
          local g = {}
          for i = 1, 2000 do g[i] = string.rep("g", 1000 + i) end
          task.wait()
        end
        print("churner finished")
        "#,
    );
    spawn_script(&mut app, "scripts/polite.lua", "for f = 1, 40 do task.wait() end print('polite finished')");
    run(&mut app, 45);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].kind, ScriptErrorKind::Quota);
    assert_eq!(errs[0].script, "scripts/hoarder.lua");
    assert!(errs[0].message.starts_with("memory quota exceeded: this instance holds about "), "{errs:#?}");
    assert_eq!(printed(&app), ["churner finished", "polite finished"]);
    assert_eq!(live_tasks(&app), 0);
}

#[test]
fn pattern_matching_counts_against_the_budget() {
    let (out, errs, live) = beside_steady(
        r#"
        local ok, err = pcall(string.find, string.rep("a", 100000), ".-.-.-.-b")
        print("caught?", ok)
        while true do pcall(string.match, string.rep("a", 5000), "(.-)(.-)(.-)b") end
        "#,
        5,
    );
    assert_stopped_by_budget(&errs, &out);
    assert!(!out.iter().any(|l| l.starts_with("caught?")), "nothing runs after the budget is spent: {out:?}");
    assert_eq!(errs[0].message, "scripts/hostile.lua:2: script exceeded its instruction budget");
    assert_eq!(live, 0);
}

#[test]
fn pattern_functions_keep_lua_semantics() {
    let out = output(
        r##"
        print(string.find("hello world", "o w"), string.find("hello", "l+"), ("x"):find("", 10))
        print(string.find("a.b", ".", 1, true), string.find("abc", "b", -1), string.find("abc", "()b()"))
        print(string.match("key = value", "(%w+)%s*=%s*(%w+)"), string.match("  trim  ", "^%s*(.-)%s*$"))
        print(string.match("THE (quick) fox", "%((%a+)%)"), string.match("f(a(b)c)d", "%b()"))
        print(string.match("hello", "()ll()"), string.match("THE (quick) fox", "%f[%a]%a+", 5))
        local words = {}
        for w in string.gmatch("one two  three", "%a+") do words[#words + 1] = w end
        for k, v in string.gmatch("a=1, b=2", "(%w+)=(%w+)") do words[#words + 1] = k .. v end
        print(table.concat(words, ","))
        print(string.gsub("hello world", "o", "0"), string.gsub("abc", "%w", "%0%0"), string.gsub("abc", "", "-"))
        print(string.gsub("hello world", "(%w+)", "<%1>"), string.gsub("abc", "b", "%%"), string.gsub("abc", "^a", "x"))
        print(string.gsub("$name is $age", "%$(%w+)", { name = "Ann", age = 7 }))
        print(string.gsub("one two", "(%w+)", function(w) return w:upper() end), string.gsub("a b", "%w", false and 1 or function() end))
        print(string.gsub("abc", "%w", "x", 2), ("x y"):gsub("%s", "_"), string.gsub("hello", "l", { l = 1 }))
        print(pcall(string.find, "a", "[a"), pcall(string.gsub, "a", "a", "%2"))
        print(pcall(string.rep), select("#", string.find("abc", "z")), string.match("2024-01-02", "(%d+)-(%d+)"))
        print(pcall(string.gsub, "abc", "b", {b = {}}), string.find(12345, 3), pcall(string.match, "x", "(()"))
        "##,
        1,
    );
    // Lua keeps only the first value of a call that is not the last argument.
    assert_eq!(
        out,
        [
            "5\t3\tnil",
            "2\tnil\t2\t2\t2\t3",
            "key\ttrim",
            "quick\t(a(b)c)",
            "3\tquick",
            "one,two,three,a1,b2",
            "hell0 w0rld\taabbcc\t-a-b-c-\t4",
            "<hello> <world>\ta%c\txbc\t1",
            "Ann is 7\t2",
            "ONE TWO\ta b\t2",
            "xxc\tx_y\the11o\t2",
            "false\tfalse\tinvalid capture index %2",
            "false\t1\t2024\t01",
            "false\t3\tfalse\tunfinished capture",
        ]
    );
}

/// Thirty tasks of one instance woken in one step by one promise, with `max_resumes_per_task: 2`:
/// the instance's tasks together resume at most 20 times in a step, so ten are carried to the
/// next frame, still in the order they were woken; with the inspector's tracking on (the step's
/// Lua loop, not its raw one) the same.
#[test]
fn an_instance_s_tasks_share_the_step_s_resume_cap() {
    for tracking in [false, true] {
        let out = within("instance cap", move || {
            let mut app = create_app_with(LuaCoroutinesPlugin {
                max_resumes_per_task: 2,
                print_to_stdout: false,
                hot_reload: false,
                ..default()
            });
            app.world().resource::<LuaRuntime>().set_tracking(tracking);
            spawn_script(
                &mut app,
                "scripts/crowd.lua",
                r#"
                local resolve
                local p = Promise.new(function(r) resolve = r end)
                for i = 1, 30 do task.spawn(function() await(p); print(time.frame(), i) end) end
                task.spawn(function() task.wait(); resolve() end)
                "#,
            );
            run(&mut app, 5);
            (printed(&app), errors(&app))
        });
        let (lines, errs) = out;
        assert!(errs.is_empty(), "{errs:#?}");
        let frames: Vec<&str> = lines.iter().map(|l| l.split('\t').next().unwrap()).collect();
        let order: Vec<usize> =
            lines.iter().map(|l| l.split('\t').nth(1).unwrap().parse().unwrap()).collect();
        assert_eq!(order, (1..=30).collect::<Vec<_>>(), "tracking {tracking}: {lines:?}");
        let first = frames[0];
        assert_eq!(frames.iter().filter(|f| **f == first).count(), 20, "tracking {tracking}: {lines:?}");
        assert!(
            frames[20..].iter().all(|f| *f != first && *f == frames[20]),
            "tracking {tracking}: {lines:?}"
        );
    }
}

/// A task fills the step's lists with stale entries at little cost (`task.defer` of one coroutine
/// queues an entry each time; a coroutine resumed by hand that waits a frame queues a frame wait
/// each time), then asks `task.info` about a sleeping task again and again: each lookup scans the
/// lists. The scans are script work, so the instruction budget stops the task (exact counting, so
/// the stop does not depend on the clock).
#[test]
fn inspecting_tasks_over_long_step_lists_is_charged_to_the_budget() {
    for fill in [
        "local co = coroutine.create(function() end) for i = 1, 100000 do task.defer(co) end",
        "local co = coroutine.create(function() while true do task.wait() end end)
         for i = 1, 100000 do coroutine.resume(co) end",
    ] {
        let (lines, errs) = within("inspector scans", move || {
            let mut app = create_app_with(LuaCoroutinesPlugin {
                print_to_stdout: false,
                hot_reload: false,
                instruction_budget: Some(10_000_000),
                exact_instruction_count: true,
                ..default()
            });
            spawn_script(
                &mut app,
                "scripts/scan.lua",
                &format!(
                    "local sleeper = task.spawn(function() task.wait(1000) end)
                     task.wait()
                     {fill}
                     for i = 1, 2000 do task.info(sleeper) end
                     print('done')"
                ),
            );
            run(&mut app, 3);
            (printed(&app), errors(&app))
        });
        assert!(lines.is_empty(), "{fill}: {lines:?}");
        assert!(
            errs.len() == 1
                && errs[0].kind == ScriptErrorKind::Budget
                && errs[0].script == "scripts/scan.lua",
            "{fill}: {errs:#?}"
        );
    }
}

/// Rust settles its results outside any task, and a promise's fields are plain: a script can put a
/// table whose metamethod loops where the settlement reads (`_consumers`). That code runs under a
/// budget of its own, charged to the promise's instance, so the frame ends; and another
/// instance's result in the same batch still arrives. (A reaction of its own in `_r1` once ran
/// there too; a settlement now passes over it.)
#[test]
fn script_code_a_rust_settlement_runs_is_under_the_budget() {
    for (forged, runs) in [
        ("p._r1 = function() while true do end end", false),
        ("p._consumers = { setmetatable({}, { __index = function() while true do end end }) }", true),
    ] {
        let (lines, errs) = within(forged, move || {
            let mut app = budget_app(100_000);
            app.add_lua_async_function("later", || async move { Ok::<_, String>(7) });
            spawn_script(
                &mut app,
                "scripts/hostile.lua",
                &format!(
                    "local p = later() {forged} for i = 1, 3 do task.wait() end print('hostile goes on')"
                ),
            );
            spawn_script(&mut app, "scripts/victim.lua", "print('victim got', await(later()))");
            let mut frames = 0;
            while printed(&app).len() < 2 && frames < 2000 {
                app.update();
                frames += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (printed(&app), errors(&app))
        });
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(sorted, ["hostile goes on", "victim got\t7"], "{forged}: {errs:#?}");
        assert_eq!(errs.iter().any(|e| e.kind == ScriptErrorKind::Budget), runs, "{forged}: {errs:#?}");
        assert!(errs.iter().all(|e| e.script == "scripts/hostile.lua"), "{forged}: {errs:#?}");
    }
}

/// `string.gsub` with a replacement that copies the match many times (`%0` 32,768 times over a
/// 64 KiB match would be 2 GiB): every byte a replacement writes is charged, so the budget stops
/// it long before.
#[test]
fn a_gsub_whose_replacement_multiplies_the_match_is_stopped_by_the_budget() {
    let (out, errs, _) =
        beside_steady("print(pcall(string.gsub, string.rep('a', 65536), '^.*', string.rep('%0', 32768)))", 5);
    assert!(out.iter().all(|l| !l.starts_with("true")), "{out:?}");
    assert_stopped_by_budget(&errs, &out);
}

/// A message handler runs where the error was raised; the error the budget raises from its hook
/// where the code cannot yield (under Lua 5.4, in a handler called by `xpcall` itself) came with
/// hooks off, so a handler that loops ran for ever. Once the budget is spent, the handler is not
/// called: the frame ends and the budget error is reported. Handlers still run otherwise.
#[test]
fn an_xpcall_handler_that_loops_cannot_outlive_the_budget() {
    let (out, errs, _) = beside_steady(
        "print(xpcall(error, function(e) return 'handled ' .. tostring(e) end, 'oops'))
         print(xpcall(error, function() while true do end end))",
        5,
    );
    assert_eq!(out.first().map(String::as_str), Some("false\thandled oops"), "{out:?}");
    assert_stopped_by_budget(&errs, &out);
}

/// A coroutine a script made, stopped by the budget where it cannot yield (a sort comparator) or
/// where it is not the task (it raises then), with a `__close` that loops pending: the raise
/// runs no `__close` inside the budget's hook, and the dead coroutine is not closed later, when
/// hooks are off on it for good, by another task of the instance that holds it. (Either froze
/// the game: the raise cut the stack inside the hook, and a later close ran the `__close` with
/// no budget.) Under the default watchdog and the exact count alike.
#[test]
#[cfg_attr(not(feature = "lua54"), ignore = "to-be-closed variables are Lua 5.4 syntax")]
fn a_looping_close_in_a_script_made_coroutine_the_budget_stopped_never_runs_unbudgeted() {
    const HOSTILE: &str = "\
        local which = ...\n\
        local function looping() return setmetatable({}, { __close = function() while true do end end }) end\n\
        local stopped = {}\n\
        task.spawn(function()\n\
          task.wait() task.wait()\n\
          print(coroutine.status(stopped[which]), coroutine.close(stopped[which]))\n\
          print('closer goes on')\n\
        end)\n\
        stopped[1] = coroutine.create(function() local x <close> = looping() while true do end end)\n\
        stopped[2] = coroutine.create(function()\n\
          local x <close> = looping()\n\
          table.sort({3, 2, 1, 5, 4}, function() while true do end end)\n\
        end)\n\
        print(coroutine.resume(stopped[which]))\n\
        print('never')";
    for exact in [false, true] {
        for which in [1, 2] {
            let (out, errs) = within("a looping close", move || {
                let mut app = create_app_with(LuaCoroutinesPlugin {
                    instruction_budget: Some(100_000),
                    exact_instruction_count: exact,
                    print_to_stdout: false,
                    hot_reload: false,
                    ..default()
                });
                let src = HOSTILE.replace("local which = ...", &format!("local which = {which}"));
                spawn_script(&mut app, "scripts/hostile.lua", &src);
                run(&mut app, 6);
                (printed(&app), errors(&app))
            });
            let case = format!("exact {exact}, coroutine {which}");
            assert_eq!(errs.len(), 1, "{case}: {errs:#?}");
            assert_eq!(errs[0].kind, ScriptErrorKind::Budget, "{case}: {errs:#?}");
            assert!(!out.contains(&"never".to_string()), "{case}: the task is dead for good: {out:?}");
            assert_eq!(out.last().map(String::as_str), Some("closer goes on"), "{case}: {out:?}");
            assert!(out[0].starts_with("dead\tfalse\t"), "{case}: {out:?}");
            assert!(out[0].ends_with("script exceeded its instruction budget"), "{case}: {out:?}");
        }
    }
}
