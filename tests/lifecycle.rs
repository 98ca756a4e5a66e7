//! Instance lifecycle: removing a script or despawning its entity cancels every task it owns
//! (to-be-closed variables close) and leaves nothing of it in the VM.

mod common;
use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::*;

const LONG_RUNNER: &str = r#"
    task.spawn(function()
      local guard <close> = setmetatable({}, { __close = function() print("child closed") end })
      task.wait(100)
    end)
    local guard <close> = setmetatable({}, { __close = function() print("main closed") end })
    while true do task.wait(0.05) print("tick") end
"#;

#[test]
fn despawning_the_entity_cancels_every_task_and_closes_its_variables() {
    let mut app = create_app();
    let e = spawn_script(&mut app, "scripts/runner.lua", &closable(LONG_RUNNER));
    run(&mut app, 4);
    assert_eq!(take_printed(&mut app), ["tick"]);
    assert_eq!(live_tasks(&app), 2);
    app.world_mut().despawn(e);
    run(&mut app, 20);
    let out = take_printed(&mut app);
    assert_eq!(out, closed_lines(["main closed", "child closed"]), "tasks close in the order they were made");
    assert_eq!(live_tasks(&app), 0);
}

#[test]
fn removing_the_component_cancels_the_instances() {
    let mut app = create_app();
    let e = spawn_script(&mut app, "scripts/runner.lua", &closable(LONG_RUNNER));
    run(&mut app, 2);
    app.world_mut().entity_mut(e).remove::<LuaScripts>();
    run(&mut app, 20);
    assert_eq!(printed(&app), closed_lines(["main closed", "child closed"]));
    assert_eq!(live_tasks(&app), 0);
    assert!(app.world().get_entity(e).is_ok(), "the entity itself stays");
}

#[test]
fn replacing_the_component_keeps_listed_instances_and_starts_new_ones() {
    let mut app = create_app();
    let counter = script(
        &mut app,
        "scripts/counter.lua",
        "state.n = 0 while true do state.n = state.n + 1 task.wait() end",
    );
    let greeter = script(&mut app, "scripts/greeter.lua", "print('hello', state.n) task.wait(100)");
    let e = app.world_mut().spawn(LuaScripts::new(counter.clone())).id();
    run(&mut app, 3);
    app.world_mut().entity_mut(e).insert(LuaScripts::new(counter).with(greeter));
    run(&mut app, 1);
    assert_eq!(printed(&app), ["hello\tnil"], "the new instance has its own state");
    assert_eq!(live_tasks(&app), 2, "the counter kept running and the greeter waits");
}

#[test]
fn several_scripts_on_one_entity_are_separate_instances() {
    let mut app = create_app();
    let a = script(
        &mut app,
        "scripts/a.lua",
        "x = 'a' state.who = 'a' task.wait() print('a sees', x, state.who)",
    );
    let b = script(
        &mut app,
        "scripts/b.lua",
        "x = 'b' state.who = 'b' task.wait() print('b sees', x, state.who)",
    );
    let e = app.world_mut().spawn(LuaScripts::new(a).with(b)).id();
    run(&mut app, 3);
    assert_eq!(printed(&app), ["a sees\ta\ta", "b sees\tb\tb"]);
    let bits = e.to_bits();
    let same_entity = spawn_script(&mut app, "scripts/c.lua", "print(entity.id, tostring(entity))");
    run(&mut app, 1);
    assert_eq!(printed(&app)[2], format!("{}\tEntity({same_entity})", same_entity.to_bits()));
    assert_ne!(bits, same_entity.to_bits());
}

#[test]
fn scripts_load_through_the_asset_server_and_errors_name_the_asset_path() {
    let mut app = create_app();
    app.finish();
    let handle = app.world().resource::<AssetServer>().load("scripts/tests/fails_on_line_3.lua");
    app.world_mut().spawn(LuaScripts::new(handle));
    let frames = run_until(&mut app, 500, |app| !errors(app).is_empty());
    assert_eq!(frames, 1, "the first sync waited for the file");
    let errs = errors(&app);
    assert_eq!(printed(&app), ["loaded from a file"]);
    assert_eq!(errs[0].script, "scripts/tests/fails_on_line_3.lua");
    let problem = per_flavour(
        "attempt to call a nil value (global 'missing')",
        "attempt to call global 'missing' (a nil value)",
        "attempt to call a nil value",
    );
    assert_eq!(errs[0].message, format!("scripts/tests/fails_on_line_3.lua:3: {problem}"));
    assert_eq!(errs[0].kind, ScriptErrorKind::Runtime);
}

#[test]
fn a_missing_script_file_is_reported_as_a_load_error() {
    let mut app = create_app();
    app.finish();
    let handle = app.world().resource::<AssetServer>().load("scripts/tests/no_such_script.lua");
    app.world_mut().spawn(LuaScripts::new(handle));
    let frames = run_until(&mut app, 500, |app| !errors(app).is_empty());
    assert_eq!(frames, 1, "the first sync waited for the load to fail");
    let errs = errors(&app);
    assert_eq!(errs[0].kind, ScriptErrorKind::Load);
    assert!(errs[0].message.contains("no_such_script.lua"), "{}", errs[0].message);
    assert_eq!(app.world().resource::<LuaRuntime>().pending_instances(), 0);
}

#[test]
fn a_script_spawned_by_a_script_is_pending_until_the_next_sync_starts_it() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/spawner.lua",
        "world.spawn{ script = 'scripts/tests/fails_on_line_3.lua' }",
    );
    app.update();
    let pending = |app: &App| app.world().resource::<LuaRuntime>().pending_instances();
    assert_eq!(live_tasks(&app), 0, "the spawner finished");
    assert_eq!(pending(&app), 1, "the spawned entity's script is still to start");
    assert!(printed(&app).is_empty());
    app.update();
    assert_eq!(pending(&app), 0);
    assert_eq!(printed(&app), ["loaded from a file"], "it started in the next frame's sync");
}

#[test]
fn ten_thousand_scripted_entities_leave_nothing_behind() {
    let mut app = create_app();
    let handle = script(
        &mut app,
        "scripts/sleeper.lua",
        r#"
        state.data = { 1, 2, 3, name = "sleeper" }
        task.spawn(function() task.wait(1000) end)
        task.delay(500, function() end)
        task.wait(1000)
        "#,
    );
    run(&mut app, 2);
    let baseline = collected_memory(&app);
    let entities: Vec<Entity> =
        (0..10_000).map(|_| app.world_mut().spawn(LuaScripts::new(handle.clone())).id()).collect();
    run(&mut app, 2);
    assert_eq!(live_tasks(&app), 30_000, "three tasks per entity");
    let loaded = collected_memory(&app);
    for e in entities {
        app.world_mut().despawn(e);
    }
    run(&mut app, 2);
    assert_eq!(live_tasks(&app), 0);
    let after = collected_memory(&app);
    assert!(loaded > baseline + 10_000 * 1024, "the instances used memory: {baseline} -> {loaded}");
    // Luau keeps some of what 10,000 instances grew (about 126 KB here); it does not grow with
    // more spawn-and-despawn cycles (133 KB after a second 10,000, 154 KB after 20,000 more).
    let slack = if LUAU { 192 } else { 64 } * 1024;
    assert!(
        after < baseline + slack,
        "Lua memory back near its baseline: {baseline} before, {loaded} loaded, {after} after"
    );
}

#[test]
fn a_script_spawned_in_the_frame_of_a_mass_despawn_starts() {
    let mut app = create_app();
    // A level change: thousands of scripted entities go and a new one comes in the same frame.
    // Its first task waits in the ready queue while the step's tables are rebuilt to shrink.
    come_and_go(&mut app, 5_000);
    spawn_script(&mut app, "scripts/next_level.lua", "print('hello')");
    run(&mut app, 2);
    assert_eq!(printed(&app), ["hello"]);
    assert_eq!(live_tasks(&app), 0);
}

/// A script that despawns its own entity from inside a coroutine: the code running finishes its
/// resume (the coroutine, and a task resuming it by hand, go on until they wait), and nothing of
/// the instance resumes after that.
#[test]
fn despawning_the_own_entity_from_a_coroutine_stops_the_instance_at_its_next_wait() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/self.lua",
        r#"
        task.spawn(function() task.wait(0.5) print('other task resumed') end)
        local co = coroutine.create(function()
          coroutine.yield()
          entity:despawn()
          print('co after despawn')
          coroutine.yield()
          print('co resumed again in the same resume')
          task.wait()
          print('co resumed after a wait')
        end)
        coroutine.resume(co)
        task.wait()
        coroutine.resume(co)
        print('outer after the despawn')
        coroutine.resume(co)
        task.wait()
        print('outer resumed after a wait')
        "#,
    );
    run(&mut app, 5);
    assert_eq!(
        printed(&app),
        ["co after despawn", "outer after the despawn", "co resumed again in the same resume"]
    );
    assert!(errors(&app).is_empty(), "{:#?}", errors(&app));
    assert_eq!(live_tasks(&app), 0);
}
