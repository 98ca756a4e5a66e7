//! Hot reload and `require`: reloads applied to script assets, modules and their graph, and the
//! file watcher on real files in a temporary folder.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::*;

/// An app whose assets folder is `dir`, with the watcher on (debounce `debounce_ms`).
fn app_in(dir: &Path, hot_reload: bool) -> App {
    create_app_in(
        dir.to_str().expect("temp paths are UTF-8"),
        LuaCoroutinesPlugin {
            print_to_stdout: false,
            hot_reload,
            hot_reload_debounce: Duration::from_millis(20),
            ..default()
        },
    )
}

/// Spawns an entity running the script file `path` (relative to the assets folder).
fn spawn_file(app: &mut App, path: &str) -> Entity {
    let handle = app.world().resource::<AssetServer>().load(path.to_string());
    app.world_mut().spawn(LuaScripts::new(handle)).id()
}

fn write(dir: &Path, path: &str, text: impl AsRef<[u8]>) {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, text).unwrap();
}

/// Updates (sleeping 2 ms between frames, for the watcher's thread) until `done`, for at most
/// 10 seconds of wall time.
fn wait_for(app: &mut App, what: &str, mut done: impl FnMut(&App) -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        app.update();
        if done(app) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("timed out waiting for {what}; printed {:?}, errors {:#?}", printed(app), errors(app));
}

/// Updates for `ms` milliseconds of wall time (lets a watcher deliver anything still pending).
fn settle(app: &mut App, ms: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

const V1: &str = r#"
state.runs = (state.runs or 0) + 1
print("v1 run " .. state.runs)
while true do
  task.wait(0.1)
  print("v1 tick")
end
"#;

const V2: &str = r#"
state.runs = (state.runs or 0) + 1
print("v2 run " .. state.runs)
function onReload() print("v2 onReload, runs " .. state.runs) end
"#;

#[test]
fn a_changed_script_restarts_its_instances_keeping_state() {
    let mut app = create_app();
    let handle = script(&mut app, "scripts/reload.lua", V1);
    for _ in 0..2 {
        app.world_mut().spawn(LuaScripts::new(handle.clone()));
    }
    run(&mut app, 10);
    let before = take_printed(&mut app);
    assert_eq!(count(&before, "v1 run 1"), 2, "both instances ran v1 once: {before:?}");
    assert!(count(&before, "v1 tick") >= 2, "v1's loop ran: {before:?}");

    replace_source(&mut app, &handle, V2);
    run(&mut app, 30);
    let after = take_printed(&mut app);
    assert_eq!(
        after,
        ["v2 run 2", "v2 onReload, runs 2", "v2 run 2", "v2 onReload, runs 2"],
        "each instance ran the new chunk with its kept state, then onReload; the old loop stopped"
    );
    assert!(errors(&app).is_empty(), "no errors: {:#?}", errors(&app));
    assert_eq!(live_tasks(&app), 0, "the old tasks were cancelled and the new ones finished");
}

// To-be-closed variables are Lua 5.4's.
#[cfg(feature = "lua54")]
#[test]
fn a_reload_closes_the_old_tasks_before_the_new_code_runs() {
    let mut app = create_app();
    let handle = script(
        &mut app,
        "scripts/closing.lua",
        r#"
local guard <close> = setmetatable({}, { __close = function() print("closed") end })
task.wait(100)
"#,
    );
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 3);
    replace_source(&mut app, &handle, r#"print("new")"#);
    run(&mut app, 3);
    assert_eq!(printed(&app), ["closed", "new"], "the old task was closed before the new code ran");
}

/// Also when an old `__close` loops until its budget is spent: the closes left are not carried
/// past the new chunk (one carried once ran after it, over the state it had set).
#[cfg(feature = "lua54")]
#[test]
fn a_reload_closes_the_old_tasks_before_the_new_code_runs_when_one_spends_its_budget() {
    let mut app = create_app_with(LuaCoroutinesPlugin {
        instruction_budget: Some(1_000_000),
        print_to_stdout: false,
        ..default()
    });
    let handle = script(
        &mut app,
        "scripts/closing.lua",
        r#"
task.spawn(function()
  local g <close> = setmetatable({}, { __close = function() while true do end end })
  task.wait(100)
end)
task.spawn(function()
  local g <close> = setmetatable({}, { __close = function()
    print("old closed, state.v = " .. tostring(state.v))
    state.v = "old"
  end })
  task.wait(100)
end)
task.wait(100)
"#,
    );
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 3);
    replace_source(
        &mut app,
        &handle,
        r#"state.v = "new" print("new") task.wait() print("new sees state.v = " .. tostring(state.v))"#,
    );
    run(&mut app, 3);
    assert_eq!(
        printed(&app),
        ["old closed, state.v = nil", "new", "new sees state.v = new"],
        "{:#?}",
        errors(&app)
    );
}

#[test]
fn a_syntax_error_keeps_the_old_code_running_and_is_reported_once() {
    let mut app = create_app();
    let handle = script(&mut app, "scripts/broken.lua", V1);
    for _ in 0..3 {
        app.world_mut().spawn(LuaScripts::new(handle.clone()));
    }
    run(&mut app, 10);
    take_printed(&mut app);

    replace_source(&mut app, &handle, "print('oops'\nlocal = 1\n");
    run(&mut app, 20);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "one report for one bad change, not one per instance: {errs:#?}");
    assert_eq!(errs[0].kind, ScriptErrorKind::Load);
    assert!(errs[0].message.starts_with("scripts/broken.lua:"), "names file:line: {}", errs[0].message);
    assert_eq!(errs[0].script, "scripts/broken.lua");
    let during = take_printed(&mut app);
    assert!(count(&during, "v1 tick") >= 3, "v1 keeps running: {during:?}");

    replace_source(&mut app, &handle, V2);
    run(&mut app, 5);
    let after = take_printed(&mut app);
    assert_eq!(count(&after, "v2 run 2"), 3, "the fix applies to every instance: {after:?}");
    assert_eq!(errors(&app).len(), 1, "nothing more reported");
}

#[test]
fn a_script_that_failed_to_compile_starts_once_fixed() {
    let mut app = create_app();
    let handle = script(&mut app, "scripts/late.lua", "print(");
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 3);
    assert_eq!(errors(&app).len(), 1, "the first version does not load");
    replace_source(&mut app, &handle, r#"print("fixed")"#);
    run(&mut app, 3);
    assert_eq!(printed(&app), ["fixed"], "the fixed version runs");
}

#[test]
fn new_instances_get_the_last_good_version() {
    let mut app = create_app();
    let handle = script(&mut app, "scripts/good.lua", r#"print("good")"#);
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 2);
    replace_source(&mut app, &handle, "print(");
    run(&mut app, 2);
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 2);
    assert_eq!(printed(&app), ["good", "good"], "an instance spawned after a bad change runs the good code");
}

// ---- require ----

#[test]
fn require_runs_a_module_once_and_shares_its_value() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "scripts/ai/util.lua",
        "print('util loaded', ...)\nreturn { double = function(x) return 2 * x end }",
    );
    write(dir.path(), "helpers.lua", "return 'from the root'");
    let mut app = app_in(dir.path(), false);
    for _ in 0..2 {
        spawn_script(
            &mut app,
            "scripts/user.lua",
            r#"
local util = require("ai.util")
print(util.double(21), require("ai.util") == util, require "helpers")
"#,
        );
    }
    run(&mut app, 3);
    assert_eq!(
        printed(&app),
        ["util loaded\tai.util\tscripts/ai/util.lua", "42\ttrue\tfrom the root", "42\ttrue\tfrom the root"],
        "the module ran once; both instances got its value"
    );
    assert!(errors(&app).is_empty(), "{:#?}", errors(&app));
}

#[test]
fn require_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/a.lua", "local b = require('b') return b");
    write(dir.path(), "scripts/b.lua", "local a = require('a') return a");
    write(dir.path(), "scripts/waits.lua", "task.wait(1) return 1");
    write(dir.path(), "scripts/raises.lua", "local x = nil\nreturn x.field");
    write(dir.path(), "scripts/bad.lua", "return {");
    let mut app = app_in(dir.path(), false);
    spawn_script(
        &mut app,
        "scripts/user.lua",
        r#"
for _, arg in ipairs({ "missing.mod", "a", "waits", "raises", "bad", "../x", {} }) do
  print((select(2, pcall(require, arg))))
end
print((select(2, pcall(function() require(nil) end))))
"#,
    );
    run(&mut app, 3);
    let out = printed(&app);
    assert_eq!(out.len(), 8, "{out:?}");
    assert_eq!(
        out[0],
        "module 'missing.mod' not found:\n\tno file 'scripts/missing/mod.lua'\n\tno file 'missing/mod.lua'",
        "not found lists what was tried"
    );
    assert_eq!(
        out[1], "scripts/b.lua:1: require cycle: scripts/a.lua -> scripts/b.lua -> scripts/a.lua",
        "a cycle is named, at the require that closes it"
    );
    assert!(out[2].contains("attempt to yield across"), "a module cannot yield: {}", out[2]);
    assert!(
        out[3].starts_with("scripts/raises.lua:2: attempt to index"),
        "the module's own line: {}",
        out[3]
    );
    assert!(out[4].starts_with("error loading module 'bad': scripts/bad.lua:1:"), "syntax error: {}", out[4]);
    assert_eq!(out[5], "bad argument #1 to 'require' (invalid module name '../x')");
    assert_eq!(out[6], "bad argument #1 to 'require' (string expected, got table)");
    assert_eq!(
        out[7], "scripts/user.lua:5: bad argument #1 to 'require' (string expected, got nil)",
        "the error names the line of the call"
    );
}

#[test]
fn a_changed_module_reloads_its_dependents_through_other_modules() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/base.lua", "return { word = 'one' }");
    write(
        dir.path(),
        "scripts/middle.lua",
        "local base = require('base') return { say = function() return base.word end }",
    );
    write(dir.path(), "scripts/unrelated.lua", "return {}");
    let mut app = app_in(dir.path(), true);
    spawn_script(&mut app, "scripts/direct.lua", "print('direct', require('base').word)");
    spawn_script(&mut app, "scripts/through.lua", "print('through', require('middle').say())");
    spawn_script(&mut app, "scripts/other.lua", "require('unrelated') print('other')");
    run(&mut app, 3);
    assert_eq!(take_printed(&mut app), ["direct\tone", "through\tone", "other"]);

    write(dir.path(), "scripts/base.lua", "return { word = 'two' }");
    wait_for(&mut app, "the dependents to reload", |app| printed(app).len() >= 2);
    settle(&mut app, 100);
    assert_eq!(
        take_printed(&mut app),
        ["direct\ttwo", "through\ttwo"],
        "both dependents reloaded, in instance order; the unrelated script did not"
    );

    write(dir.path(), "scripts/base.lua", "return { word = ");
    wait_for(&mut app, "the error report", |app| !errors(app).is_empty());
    settle(&mut app, 100);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "reported once: {errs:#?}");
    assert!(errs[0].message.starts_with("scripts/base.lua:1:"), "{}", errs[0].message);
    assert!(take_printed(&mut app).is_empty(), "nothing reloaded on a broken module");
}

// ---- the watcher, on real files ----

const TICK: &str =
    "state.n = (state.n or 0) + 1 print('start ' .. state.n) while true do task.wait(0.05) print('tick') end";

const COUNTER: &str = r#"
state.n = (state.n or 0) + 1
print("VERSION " .. state.n)
"#;

#[test]
fn editing_a_file_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/live.lua", COUNTER.replace("VERSION", "first"));
    let mut app = app_in(dir.path(), true);
    spawn_file(&mut app, "scripts/live.lua");
    wait_for(&mut app, "the script to load", |app| printed(app) == ["first 1"]);

    write(dir.path(), "scripts/live.lua", COUNTER.replace("VERSION", "second"));
    wait_for(&mut app, "the reload", |app| printed(app).len() == 2);
    assert_eq!(printed(&app), ["first 1", "second 2"], "the new code ran with the kept state");

    // A syntax error keeps the old code and is reported; the fix then applies.
    write(dir.path(), "scripts/live.lua", "print('broken'\n");
    wait_for(&mut app, "the error report", |app| !errors(app).is_empty());
    settle(&mut app, 100);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "once: {errs:#?}");
    assert!(errs[0].message.starts_with("scripts/live.lua:"), "{}", errs[0].message);
    write(dir.path(), "scripts/live.lua", COUNTER.replace("VERSION", "third"));
    wait_for(&mut app, "the fix", |app| printed(app).len() == 3);
    assert_eq!(printed(&app)[2], "third 3");
}

#[test]
fn a_save_by_rename_and_a_burst_of_saves_reload_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/saved.lua", COUNTER.replace("VERSION", "v0"));
    let mut app = app_in(dir.path(), true);
    spawn_file(&mut app, "scripts/saved.lua");
    wait_for(&mut app, "the script to load", |app| printed(app).len() == 1);

    // The way vim, VS Code and JetBrains save: a temporary file renamed over the script.
    write(dir.path(), "scripts/saved.lua.tmp~", COUNTER.replace("VERSION", "renamed"));
    std::fs::rename(dir.path().join("scripts/saved.lua.tmp~"), dir.path().join("scripts/saved.lua")).unwrap();
    wait_for(&mut app, "the rename to reload", |app| printed(app).len() >= 2);
    settle(&mut app, 150);
    assert_eq!(printed(&app), ["v0 1", "renamed 2"], "one reload for a rename-over save");

    for i in 1..=5 {
        write(dir.path(), "scripts/saved.lua", COUNTER.replace("VERSION", &format!("burst{i}")));
    }
    wait_for(&mut app, "the burst to reload", |app| printed(app).len() >= 3);
    settle(&mut app, 150);
    assert_eq!(printed(&app)[2..], ["burst5 3"], "one reload for the burst, with the last content");
}

#[test]
fn a_deleted_script_stops_and_restoring_it_starts_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let ticking = r#"
state.starts = (state.starts or 0) + 1
print("start " .. state.starts)
while true do task.wait(0.05) print("tick") end
"#;
    write(dir.path(), "scripts/gone.lua", ticking);
    let mut app = app_in(dir.path(), true);
    spawn_file(&mut app, "scripts/gone.lua");
    wait_for(&mut app, "ticks", |app| printed(app).iter().any(|l| l == "tick"));

    std::fs::remove_file(dir.path().join("scripts/gone.lua")).unwrap();
    wait_for(&mut app, "the deletion report", |app| !errors(app).is_empty());
    let errs = errors(&app);
    assert_eq!(errs[0].message, "scripts/gone.lua was deleted: its 1 instances stopped until it is restored");
    take_printed(&mut app);
    settle(&mut app, 100);
    assert!(take_printed(&mut app).is_empty(), "a deleted script's instances stopped");
    assert_eq!(live_tasks(&app), 0, "its tasks are gone");

    write(dir.path(), "scripts/gone.lua", ticking);
    wait_for(&mut app, "the restart", |app| printed(app).iter().any(|l| l == "start 2"));
    assert_eq!(errors(&app).len(), 1, "restoring reports nothing more");
}

#[test]
fn fixing_a_module_that_failed_to_load_reruns_the_scripts_that_required_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/shaky.lua", "return {");
    let mut app = app_in(dir.path(), true);
    spawn_script(&mut app, "scripts/user.lua", "print('got', require('shaky').value)");
    run(&mut app, 3);
    assert_eq!(errors(&app).len(), 1, "the broken module fails the script");
    assert!(printed(&app).is_empty());

    write(dir.path(), "scripts/shaky.lua", "return { value = 7 }");
    wait_for(&mut app, "the script to run again", |app| !printed(app).is_empty());
    assert_eq!(printed(&app), ["got\t7"], "the fixed module was loaded by the rerun script");
}

// ---- edge cases of reloading ----

#[test]
fn a_broken_module_saved_again_unchanged_is_not_reported_again() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/m.lua", b"return { v = 1 }");
    let mut app = app_in(dir.path(), true);
    spawn_script(&mut app, "scripts/user.lua", "print(require('m').v)");
    run(&mut app, 3);
    write(dir.path(), "scripts/m.lua", b"return { v = ");
    wait_for(&mut app, "report", |app| !errors(app).is_empty());
    settle(&mut app, 100);
    assert_eq!(errors(&app).len(), 1);
    // Same content, written again (an editor's second save, `touch`, a git checkout).
    write(dir.path(), "scripts/m.lua", b"return { v = ");
    settle(&mut app, 300);
    assert_eq!(
        errors(&app).len(),
        1,
        "no change, yet reported again: {:#?}",
        errors(&app).iter().map(|e| &e.message).collect::<Vec<_>>()
    );
}

#[test]
fn an_optional_require_the_running_version_had_does_not_block_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let v = |w: &str| {
        format!("local ok, dev = pcall(function() return require('devtools') end)\nprint('{w}', ok)\n")
    };
    write(dir.path(), "scripts/a.lua", v("v1").as_bytes());
    let mut app = app_in(dir.path(), true);
    spawn_file(&mut app, "scripts/a.lua");
    wait_for(&mut app, "v1", |app| !printed(app).is_empty());
    assert_eq!(printed(&app), ["v1\tfalse"], "the first version runs fine without the optional module");
    write(dir.path(), "scripts/a.lua", v("v2").as_bytes());
    wait_for(&mut app, "the reload", |app| printed(app).len() >= 2 || !errors(app).is_empty());
    settle(&mut app, 100);
    assert_eq!(
        printed(&app),
        ["v1\tfalse", "v2\tfalse"],
        "reload refused: {:#?}",
        errors(&app).iter().map(|e| &e.message).collect::<Vec<_>>()
    );
}

#[test]
fn an_instance_spawned_while_its_script_is_deleted_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "scripts/g.lua",
        b"state.n = (state.n or 0) + 1 print('start ' .. state.n) function onReload() print('onReload') end",
    );
    let mut app = app_in(dir.path(), true);
    spawn_file(&mut app, "scripts/g.lua");
    wait_for(&mut app, "start", |app| !printed(app).is_empty());
    std::fs::remove_file(dir.path().join("scripts/g.lua")).unwrap();
    wait_for(&mut app, "delete report", |app| !errors(app).is_empty());
    spawn_file(&mut app, "scripts/g.lua");
    settle(&mut app, 100);
    assert_eq!(printed(&app), ["start 1"], "a new instance of a deleted script started anyway");
}

#[test]
fn the_first_version_that_loads_does_not_call_on_reload() {
    let mut app = create_app();
    let handle = script(&mut app, "scripts/late.lua", "print(");
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 3);
    app.world_mut().resource_mut::<Assets<LuaScript>>().get_mut(&handle).unwrap().source =
        "print('first run', state.n) function onReload() print('onReload on a first run') end".into();
    run(&mut app, 3);
    assert_eq!(printed(&app), ["first run\tnil"]);
}

#[test]
fn a_refusal_for_a_missing_module_names_the_line_of_the_require() {
    let mut app = create_app();
    let handle = script(&mut app, "scripts/x.lua", "print('ok')");
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 3);
    app.world_mut().resource_mut::<Assets<LuaScript>>().get_mut(&handle).unwrap().source =
        "print('ok')\n\nlocal m = require('nope')\n".into();
    run(&mut app, 3);
    let m = errors(&app)[0].message.clone();
    assert!(m.starts_with("scripts/x.lua:3:"), "{m}");
}

#[test]
fn restoring_a_deleted_module_unchanged_reloads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/m.lua", b"return { v = 1 }");
    let mut app = app_in(dir.path(), true);
    spawn_script(&mut app, "scripts/user.lua", "print('user', require('m').v)");
    run(&mut app, 3);
    std::fs::remove_file(dir.path().join("scripts/m.lua")).unwrap();
    settle(&mut app, 200);
    let after_delete = errors(&app).len();
    write(dir.path(), "scripts/m.lua", b"return { v = 1 }");
    settle(&mut app, 200);
    assert_eq!(
        (after_delete, printed(&app)),
        (0, vec!["user\t1".to_string()]),
        "restoring identical content reloaded the dependents"
    );
}

#[test]
fn a_bad_save_after_an_undo_is_reported_again() {
    let mut app = create_app();
    let handle = script(&mut app, "scripts/x.lua", "print('v1')");
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 3);
    let set = |app: &mut App, s: &str| {
        app.world_mut().resource_mut::<Assets<LuaScript>>().get_mut(&handle).unwrap().source = s.into()
    };
    set(&mut app, "print('v2'");
    run(&mut app, 3);
    set(&mut app, "print('v1')");
    run(&mut app, 3);
    set(&mut app, "print('v2'");
    run(&mut app, 3);
    assert_eq!(errors(&app).len(), 2, "the second broken save was not reported");
}

#[test]
fn a_save_while_the_script_loads_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/a.lua", b"print('old')");
    let mut app = create_app_in(
        dir.path().to_str().unwrap(),
        LuaCoroutinesPlugin {
            print_to_stdout: false,
            hot_reload: true,
            hot_reload_debounce: Duration::from_millis(20),
            ..default()
        }
        .in_schedule(First),
    );
    let handle = app.world().resource::<AssetServer>().load::<LuaScript>("scripts/a.lua");
    std::thread::sleep(Duration::from_millis(100)); // the IO task has read "old"
    write(dir.path(), "scripts/a.lua", b"print('new')");
    std::thread::sleep(Duration::from_millis(150)); // the watcher has the change
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    wait_for(&mut app, "the new version", |app| printed(app).last().is_some_and(|l| l == "new"));
    assert_eq!(
        printed(&app).last().map(String::as_str),
        Some("new"),
        "the save was lost: {:?}",
        printed(&app)
    );
}

#[test]
fn creating_the_module_a_refused_version_needed_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/main.lua", b"print('v1')");
    let mut app = app_in(dir.path(), true);
    spawn_file(&mut app, "scripts/main.lua");
    wait_for(&mut app, "v1", |app| !printed(app).is_empty());
    // The usual order: add the require, save, then create the module.
    write(dir.path(), "scripts/main.lua", b"print('v2', require('newmod').x)");
    wait_for(&mut app, "the refusal", |app| !errors(app).is_empty());
    write(dir.path(), "scripts/newmod.lua", b"return { x = 1 }");
    wait_for(&mut app, "the refused version to apply", |app| printed(app).len() == 2);
    // Saving main.lua again, unchanged, does not help either.
    write(dir.path(), "scripts/main.lua", b"print('v2', require('newmod').x)");
    settle(&mut app, 300);
    assert_eq!(
        printed(&app),
        ["v1", "v2\t1"],
        "errors: {:#?}",
        errors(&app).iter().map(|e| &e.message).collect::<Vec<_>>()
    );
}

#[test]
fn creating_a_missing_module_reruns_the_scripts_that_asked_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app_in(dir.path(), true);
    spawn_script(&mut app, "scripts/user.lua", "print('got', require('later').v)");
    run(&mut app, 3);
    assert_eq!(errors(&app).len(), 1);
    write(dir.path(), "scripts/later.lua", b"return { v = 1 }");
    wait_for(&mut app, "the rerun", |app| !printed(app).is_empty());
    assert_eq!(printed(&app), ["got\t1"]);
}

#[test]
fn a_save_that_is_not_utf8_is_reported_and_the_old_code_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/a.lua", TICK);
    let mut app = app_in(dir.path(), true);
    spawn_file(&mut app, "scripts/a.lua");
    wait_for(&mut app, "ticks", |app| printed(app).iter().any(|l| l == "tick"));
    write(dir.path(), "scripts/a.lua", b"print('caf\xe9')");
    wait_for(&mut app, "the report", |app| !errors(app).is_empty());
    assert_eq!(
        errors(&app)[0].message,
        "scripts/a.lua is not valid UTF-8; the last good version keeps running"
    );
    take_printed(&mut app);
    settle(&mut app, 100);
    assert!(printed(&app).iter().any(|l| l == "tick"), "the old code still ticks");
}

#[test]
fn a_reload_cancels_the_rust_work_the_old_code_awaited() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let mut app = create_app();
    let flag = dropped.clone();
    app.add_lua_async_function("forever", move |(): ()| {
        let guard = Dropped(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<(), String>>().await
        }
    });
    let handle = script(&mut app, "scripts/awaits.lua", "print('waiting') await(forever())");
    app.world_mut().spawn(LuaScripts::new(handle.clone()));
    run(&mut app, 3);
    assert!(!dropped.load(Ordering::SeqCst), "the future is alive while awaited");
    replace_source(&mut app, &handle, "print('new')");
    run(&mut app, 3);
    assert_eq!(printed(&app), ["waiting", "new"]);
    // A cancelled task's future is dropped by the task pool, on one of its threads: on a busy
    // machine that can take longer than the frames above.
    let flag = dropped.clone();
    wait_for(&mut app, "the reload to drop the old code's future", move |_| flag.load(Ordering::SeqCst));
}

/// A reload that claims its instance's leftover closes (the step's budget spent on another
/// instance's looping closes) does not cost the other work of the same batch its own closes: a
/// script deleted beside the reload still has its tasks closed in that sync (a reload once moved
/// the entries under the batch's mark, and the deleted script's closes waited behind the
/// leftovers, a frame each).
#[cfg(feature = "lua54")]
#[test]
fn a_reload_beside_a_deletion_still_closes_the_deleted_script_s_tasks_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "scripts/shared.lua", "return {}");
    write(d, "scripts/m.lua", "return { v = 1 }");
    write(
        d,
        "scripts/looper.lua",
        "local shared = require('shared') shared.pcs = {}
         for i = 1, 100 do shared.pcs[i] = Promise.new(function()
           local g <close> = setmetatable({}, { __close = function() while true do end end })
           task.wait(100)
         end) end
         print('looper up') task.wait(100)",
    );
    write(
        d,
        "scripts/victim.lua",
        "local m = require('m') require('shared').pa = Promise.new(function()
           local g <close> = setmetatable({}, { __close = function() print('victim old closed') end })
           task.wait(100)
         end)
         print('victim up') task.wait(100)",
    );
    write(
        d,
        "scripts/a_gone.lua",
        "local g <close> = setmetatable({}, { __close = function() print('gone closed') end })
         print('gone up') task.wait(100)",
    );
    let mut app = create_app_in(
        d.to_str().unwrap(),
        LuaCoroutinesPlugin {
            print_to_stdout: false,
            hot_reload: true,
            hot_reload_debounce: Duration::from_millis(40),
            instruction_budget: Some(1_000_000),
            ..default()
        },
    );
    for path in ["scripts/looper.lua", "scripts/victim.lua", "scripts/a_gone.lua"] {
        spawn_file(&mut app, path);
    }
    wait_for(&mut app, "the scripts", |app| printed(app).len() == 3);
    write(
        d,
        "scripts/canceller.lua",
        "local s = require('shared') for _, p in ipairs(s.pcs) do p:cancel() end s.pa:cancel()",
    );
    spawn_file(&mut app, "scripts/canceller.lua");
    wait_for(&mut app, "the canceller", |app| live_tasks(app) < 103);
    // The deletion and the module's change reach the same batch (almost always: the debouncer
    // hands both over within a frame), where the deletion comes first, by path.
    std::fs::remove_file(d.join("scripts/a_gone.lua")).unwrap();
    write(d, "scripts/m.lua", "return { v = 2 }");
    wait_for(&mut app, "the reload", |app| printed(app).iter().any(|l| l == "victim old closed"));
    let lines = printed(&app);
    assert!(lines.contains(&"gone closed".to_string()), "in the same frame: {lines:?}");
}
