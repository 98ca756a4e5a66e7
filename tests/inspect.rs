//! Seeing what scripts do: the task list from Rust (`LuaRuntime::task_list`), `task.list()` and
//! `task.info(thread)` from Lua, tracking (resumes, time, frames since a task ran) and the
//! per-script cost.

mod common;
use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use bevy_lua_coroutines::{TaskInfo, TaskWait};
use common::*;

const WAITERS: &str = r#"
local ch = Channel.new()
local kept = Channel.new(2)
local p = Promise.new(function() end)
task.spawn(function() task.wait(2) end)
task.spawn(function() task.waitFrames(5) end)
task.spawn(function() task.waitRealtime(3) end)
task.spawn(function() p:await() end)
task.spawn(function() ch:receive() end)
task.spawn(function()
  kept:send(1); kept:send(2)
  kept:send(3)
end)
task.spawn(function() Channel.select({ { ch, "receive" }, { kept, "send", 4 } }) end)
task.spawn(function() task.waitUntil(function() return false end) end)
task.spawn(function() task.waitFrames(math.huge) end)
task.delay(4, function() end)
state.keep = { ch = ch, kept = kept, p = p }
local function idle()
  task.wait(10)
end
idle()
"#;

fn list(app: &App) -> Vec<TaskInfo> {
    app.world().resource::<LuaRuntime>().task_list()
}

fn find(tasks: &[TaskInfo], line: u32) -> &TaskInfo {
    let at = format!("scripts/waiters.lua:{line}");
    tasks
        .iter()
        .find(|t| t.location.as_deref() == Some(at.as_str()))
        .unwrap_or_else(|| panic!("no task at {at} in {tasks:#?}"))
}

#[test]
fn the_task_list_says_what_each_task_waits_on_and_where() {
    let mut app = create_app();
    let entity = spawn_script(&mut app, "scripts/waiters.lua", WAITERS);
    run(&mut app, 2);
    assert!(errors(&app).is_empty(), "{:#?}", errors(&app));
    let tasks = list(&app);
    let at: Vec<_> = tasks.iter().map(|t| (t.location.clone(), t.wait.clone())).collect();
    assert_eq!(tasks.len(), 11, "every live task is listed: {at:#?}");
    assert!(tasks.iter().all(|t| t.entity == entity && t.script == "scripts/waiters.lua"), "{tasks:#?}");

    assert!(matches!(find(&tasks, 5).wait, TaskWait::Time { due_in } if due_in > 1.9 && due_in <= 2.0));
    assert_eq!(find(&tasks, 6).wait, TaskWait::Frames { frames: Some(4) }, "five frames, one gone");
    assert!(matches!(find(&tasks, 7).wait, TaskWait::RealTime { due_in } if due_in > 2.9 && due_in <= 3.0));
    assert_eq!(find(&tasks, 8).wait, TaskWait::Promise { status: "Started".into() });
    let TaskWait::Receive { channel } = &find(&tasks, 9).wait else { panic!("{:#?}", find(&tasks, 9)) };
    assert!(channel.starts_with("Channel(unbuffered)#"), "{channel}");
    let TaskWait::Send { channel: buffered } = &find(&tasks, 12).wait else {
        panic!("{:#?}", find(&tasks, 12))
    };
    assert!(buffered.starts_with("Channel(2)#"), "{buffered}");
    let TaskWait::Select { channels } = &find(&tasks, 14).wait else { panic!("{:#?}", find(&tasks, 14)) };
    assert!(channels.contains(channel.as_str()) && channels.contains(buffered.as_str()), "{channels}");
    assert_eq!(find(&tasks, 15).wait, TaskWait::Predicate);
    let never = find(&tasks, 16);
    assert_eq!(never.wait, TaskWait::Frames { frames: None });
    assert!(never.forever, "waitFrames(math.huge) never wakes");
    let idle = find(&tasks, 20);
    assert!(matches!(idle.wait, TaskWait::Time { .. }));
    assert_eq!(idle.function.as_deref(), Some("idle"));
    let delayed = tasks.iter().find(|t| matches!(t.wait, TaskWait::Delay { .. })).expect("the delayed task");
    assert_eq!(delayed.location, None, "it has not run yet");
    assert!(tasks.iter().filter(|t| t.forever).count() == 1, "only the endless wait: {tasks:#?}");
    assert!(tasks.iter().all(|t| t.resumes.is_none()), "no tracking, no counts");
}

#[test]
fn a_wait_on_a_channel_no_one_else_holds_is_not_flagged_forever() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/lost.lua",
        r#"
        local held = Channel.new()
        state.held = held
        task.spawn(function() Channel.new():receive() end)
        task.spawn(function() held:receive() end)
        task.spawn(function() Channel.new():send(1) end)
        "#,
    );
    run(&mut app, 2);
    let tasks = list(&app);
    // A channel operation keeps its channel alive while it waits (a receive once did not, and a
    // subscription to Rust's messages that only its waiting receiver held was collected, so the
    // message never came: tests/rust_channels.rs): the inspector cannot tell a channel no one
    // else holds from one held elsewhere, and flags none.
    for (line, receive) in [(4, true), (5, true), (6, false)] {
        let at = format!("scripts/lost.lua:{line}");
        let t = tasks.iter().find(|t| t.location.as_deref() == Some(at.as_str())).expect("listed");
        let kind = if receive {
            matches!(t.wait, TaskWait::Receive { .. })
        } else {
            matches!(t.wait, TaskWait::Send { .. })
        };
        assert!(kind && !t.forever, "{t:#?}");
    }
}

#[test]
fn tracking_counts_resumes_times_them_and_costs_scripts() {
    let mut app = create_app();
    app.world().resource::<LuaRuntime>().set_tracking(true);
    spawn_script(
        &mut app,
        "scripts/busy.lua",
        "while true do local s = 0 for i = 1, 20000 do s = s + i end task.wait() end",
    );
    spawn_script(&mut app, "scripts/lazy.lua", "while true do task.wait(1) end");
    run(&mut app, 10);
    let runtime = app.world().resource::<LuaRuntime>();
    let tasks = runtime.task_list();
    let busy = tasks.iter().find(|t| t.script == "scripts/busy.lua").expect("busy");
    assert_eq!(busy.resumes, Some(10), "{busy:#?}");
    assert_eq!(busy.frames_since_ran, Some(0));
    assert!(
        busy.cpu_total.unwrap() > busy.cpu_last_frame.unwrap() && !busy.cpu_last_frame.unwrap().is_zero()
    );
    let lazy = tasks.iter().find(|t| t.script == "scripts/lazy.lua").expect("lazy");
    assert_eq!(lazy.resumes, Some(1));
    assert_eq!(lazy.frames_since_ran, Some(9));
    let costs = runtime.script_costs();
    assert_eq!(costs.len(), 2);
    assert_eq!(costs[0].script, "scripts/busy.lua", "the costliest first: {costs:#?}");
    assert_eq!((costs[0].resumes, costs[0].resumes_last_frame, costs[0].instances), (10, 1, 1));
    assert_eq!((costs[1].resumes, costs[1].resumes_last_frame), (1, 0));
}

#[test]
fn scripts_list_their_own_tasks_and_inspect_one() {
    let out = output(
        r#"
        local sleeper = task.spawn(function() task.wait(5) end)
        local ch = Channel.new()
        local reader = task.spawn(function() ch:receive() end)
        local tasks = task.list()
        print(#tasks)
        for _, t in ipairs(tasks) do print(t.waitsOn, t.where, t.func) end
        local info = task.info(sleeper)
        print(info.waitsOn, info.dueIn == 5, info.thread == sleeper, info.script, info.entity == entity)
        print(task.info(reader).channel:match("^Channel%(unbuffered%)#%d+$") ~= nil)
        print(task.info(coroutine.create(print)))
        print(pcall(task.info, 1))
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "3",
            "running\tnil\tnil",
            "time\tscripts/test.lua:2\tanonymous function",
            "receive\tscripts/test.lua:4\tanonymous function",
            "time\ttrue\ttrue\tscripts/test.lua\ttrue",
            "true",
            "nil",
            "false\tbad argument #1 to 'info' (thread expected, got number)",
        ]
    );
}

#[test]
fn a_script_sees_only_its_own_tasks() {
    let mut app = create_app();
    spawn_script(&mut app, "scripts/other.lua", "task.spawn(function() task.wait(9) end) task.wait(9)");
    spawn_script(&mut app, "scripts/test.lua", "task.wait() print(#task.list())");
    run(&mut app, 3);
    assert_eq!(printed(&app), ["1"]);
}

#[test]
fn the_diagnostics_plugin_measures_tasks_resumes_step_time_and_memory() {
    use bevy::diagnostic::DiagnosticsStore;
    let mut app = create_app();
    app.add_plugins(LuaDiagnosticsPlugin);
    spawn_script(
        &mut app,
        "scripts/test.lua",
        "for i = 1, 3 do task.spawn(function() while true do task.wait() end end) end task.wait(100)",
    );
    run(&mut app, 5);
    let store = app.world().resource::<DiagnosticsStore>();
    let value = |path| store.get_measurement(&path).map(|m| m.value).unwrap_or(-1.0);
    assert_eq!(value(LuaDiagnosticsPlugin::TASKS_ALIVE), 4.0);
    assert_eq!(value(LuaDiagnosticsPlugin::TASKS_RESUMED), 3.0, "the three looping tasks resume each frame");
    assert!(value(LuaDiagnosticsPlugin::STEP_TIME) > 0.0);
    assert!(value(LuaDiagnosticsPlugin::MEMORY) > 10.0, "the VM holds more than 10 KiB");
    assert!(app.world().resource::<LuaRuntime>().tracking());
}

#[test]
fn a_task_reading_a_stream_waits_on_the_stream() {
    let out = output(
        r#"
        local ch = Channel.new()
        local s = Stream.from(ch)
        local reader = task.spawn(function() s:read() end)
        local awaiting = task.spawn(function() await(Promise.new(function() end)) end)
        print(task.info(reader).waitsOn, task.info(reader).where)
        print(task.info(awaiting).waitsOn, task.info(awaiting).status)
        "#,
        2,
    );
    assert_eq!(out, ["stream\tscripts/test.lua:4", "promise\tStarted"]);
}
