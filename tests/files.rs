//! The one rule for every file a script names (`require`, `world.spawn{ script = ... }`,
//! `readFileStream`, hot reload): relative to the assets folder, no `..`, not absolute, no
//! symbolic link out of the assets folder, regular files only; refused at the call with `bad
//! argument`, and errors name asset paths, never where the assets folder is on the host.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::*;

/// An assets folder with a script beside every kind of file the rule refuses: `linkdir` (a link
/// to a folder outside, holding `mod.lua` and `x.lua`), `passwd.lua` (a link to a file outside),
/// `fifo` and `fifo.lua` (named pipes), `inside.lua` (a link that stays inside: allowed), and
/// `folder.lua` (a folder).
struct Folder {
    assets: tempfile::TempDir,
    _outside: tempfile::TempDir,
}

impl Folder {
    fn new() -> Self {
        let assets = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let a = assets.path();
        std::fs::write(outside.path().join("mod.lua"), "return 'outside module'").unwrap();
        std::fs::write(outside.path().join("x.lua"), "print('outside script ran')").unwrap();
        std::fs::write(outside.path().join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), a.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("passwd"), a.join("passwd.lua")).unwrap();
        std::fs::write(a.join("real.lua"), "return 'inside module'").unwrap();
        std::fs::write(a.join("ok.lua"), "print('ok script ran')").unwrap();
        std::os::unix::fs::symlink(a.join("real.lua"), a.join("inside.lua")).unwrap();
        std::fs::create_dir(a.join("folder.lua")).unwrap();
        for fifo in ["fifo", "fifo.lua"] {
            let made = std::process::Command::new("mkfifo").arg(a.join(fifo)).status().unwrap();
            assert!(made.success(), "mkfifo");
        }
        Folder { assets, _outside: outside }
    }

    fn path(&self) -> &Path {
        self.assets.path()
    }

    fn app(&self, hot_reload: bool) -> App {
        create_app_in(
            self.path().to_str().unwrap(),
            LuaCoroutinesPlugin {
                print_to_stdout: false,
                hot_reload,
                hot_reload_debounce: Duration::from_millis(20),
                ..default()
            },
        )
    }
}

/// Updates (sleeping 2 ms between frames, for the I/O pool and the watcher) until `done`, for at
/// most 10 seconds of wall time.
fn wait(app: &mut App, done: impl Fn(&App) -> bool) {
    let start = Instant::now();
    while !done(app) && start.elapsed() < Duration::from_secs(10) {
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every error and line printed so far, none of which may name the host folders.
fn assert_no_host_paths(app: &App, folder: &Folder) {
    let host = folder.path().display().to_string();
    let outside = folder._outside.path().display().to_string();
    for line in printed(app).iter().chain(errors(app).iter().map(|e| &e.message)) {
        assert!(!line.contains(&host) && !line.contains(&outside), "a host path leaked: {line}");
    }
}

#[test]
fn require_follows_the_rule() {
    let folder = Folder::new();
    let mut app = folder.app(false);
    spawn_script(
        &mut app,
        "scripts/req.lua",
        r#"
        print(pcall(require, "linkdir.mod"))
        print(pcall(require, "passwd"))
        print(pcall(require, "fifo"))
        print(pcall(require, "folder"))
        print(require("inside"), require("real"))
        "#,
    );
    run(&mut app, 2);
    let out = printed(&app);
    assert_eq!(out.len(), 5, "{out:?} {:#?}", errors(&app));
    for (line, why) in [
        (&out[0], "path \"linkdir/mod.lua\" leaves the assets folder (through a symbolic link)"),
        (&out[1], "path \"passwd.lua\" leaves the assets folder (through a symbolic link)"),
        (&out[2], "path \"fifo.lua\" is not a regular file"),
        (&out[3], "path \"folder.lua\" is not a regular file"),
    ] {
        assert!(line.starts_with("false\t"), "{line}");
        assert!(line.contains(&format!("bad argument #1 to 'require' ({why})")), "{line}");
    }
    assert_eq!(out[4], "inside module\tinside module", "a link that stays inside is fine");
    assert!(!out[1].contains("root:x"), "no token of the outside file leaks: {}", out[1]);
    assert_no_host_paths(&app, &folder);
}

#[test]
fn spawn_refuses_script_paths_at_the_call() {
    let folder = Folder::new();
    let mut app = folder.app(false);
    spawn_script(
        &mut app,
        "scripts/spawner.lua",
        r#"
        for _, path in ipairs({ "../x.lua", "/etc/x.lua", "linkdir/x.lua", "passwd.lua", "fifo.lua",
                                "folder.lua", "missing.lua", "a/../../x.lua" }) do
          print(pcall(world.spawn, { script = path }))
        end
        print(pcall(world.spawn, { script = { "ok.lua", "../x.lua" } }))
        print(world.find("none"), pcall(world.spawn, { script = "ok.lua" }))
        "#,
    );
    // The eleventh line is the spawned script's own, once the asset server has read `ok.lua` on
    // its IO thread: a fixed number of frames is too few when the machine is loaded.
    run_until_printed(&mut app, 11);
    run(&mut app, 2);
    let out = printed(&app);
    assert_eq!(out.len(), 11, "{out:#?} {:#?}", errors(&app));
    for (line, why) in out.iter().zip([
        "path \"../x.lua\" leaves the assets folder ('..')",
        "path \"/etc/x.lua\" is absolute",
        "path \"linkdir/x.lua\" leaves the assets folder (through a symbolic link)",
        "path \"passwd.lua\" leaves the assets folder (through a symbolic link)",
        "path \"fifo.lua\" is not a regular file",
        "path \"folder.lua\" is not a regular file",
        "path \"missing.lua\": no such file in the assets folder",
        "path \"a/../../x.lua\" leaves the assets folder ('..')",
        "path \"../x.lua\" leaves the assets folder ('..')",
    ]) {
        assert!(line.starts_with("false\t"), "{line}");
        assert!(
            line.contains(&format!("bad argument #1 to 'spawn' (script {why}")),
            "expected '{why}': {line}"
        );
    }
    assert!(out[9].starts_with("nil\ttrue\tEntity("), "a good path spawns: {}", out[9]);
    assert_eq!(out[10], "ok script ran");
    assert!(!out.iter().any(|l| l.contains("outside script ran")));
    assert!(errors(&app).is_empty(), "{:#?}", errors(&app));
    assert_no_host_paths(&app, &folder);
}

#[test]
fn read_file_stream_refuses_pipes_before_opening_them() {
    let folder = Folder::new();
    let mut app = folder.app(false);
    spawn_script(
        &mut app,
        "scripts/reader.lua",
        r#"
        for i = 1, 12 do
          local ok, err = pcall(readFileStream, "fifo")
          if i == 1 then print(ok, err) end
        end
        print(pcall(readFileStream, "linkdir/x.lua"))
        print(readFileStream("ok.lua"):read())
        world.spawn({ script = "ok.lua" })
        "#,
    );
    // The I/O pool still serves: the file stream, then the spawned script's asset load.
    wait(&mut app, |app| printed(app).len() >= 4);
    let out = printed(&app);
    assert_eq!(out.len(), 4, "{out:#?} {:#?}", errors(&app));
    assert!(out[0].starts_with("false\t"), "{}", out[0]);
    assert!(
        out[0].contains("bad argument #1 to 'readFileStream' (path \"fifo\" is not a regular file)"),
        "{}",
        out[0]
    );
    assert!(out[1].contains("path \"linkdir/x.lua\" leaves the assets folder"), "{}", out[1]);
    assert_eq!(out[2], "print('ok script ran')");
    assert_eq!(out[3], "ok script ran");
    assert_no_host_paths(&app, &folder);
}

#[test]
fn a_script_that_fails_to_load_is_reported_by_its_asset_path() {
    let folder = Folder::new();
    let mut app = folder.app(false);
    let handle = app.world().resource::<AssetServer>().load("scripts/missing.lua");
    app.world_mut().spawn(LuaScripts::new(handle));
    wait(&mut app, |app| !errors(app).is_empty());
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].message.contains("scripts/missing.lua"), "{}", errs[0].message);
    assert_no_host_paths(&app, &folder);
}

#[test]
fn hot_reload_refuses_a_script_replaced_by_a_link_out_of_the_assets_folder() {
    let folder = Folder::new();
    std::fs::create_dir(folder.path().join("scripts")).unwrap();
    std::fs::write(folder.path().join("scripts/live.lua"), "print('v1')").unwrap();
    let mut app = folder.app(true);
    let handle = app.world().resource::<AssetServer>().load("scripts/live.lua");
    app.world_mut().spawn(LuaScripts::new(handle));
    wait(&mut app, |app| printed(app).len() == 1);
    assert_eq!(printed(&app), ["v1"]);
    // Replaced (by rename, as editors save) with a link to a script outside.
    let link = folder.path().join("scripts/live.lua.tmp");
    std::os::unix::fs::symlink(folder._outside.path().join("x.lua"), &link).unwrap();
    std::fs::rename(&link, folder.path().join("scripts/live.lua")).unwrap();
    wait(&mut app, |app| !errors(app).is_empty());
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        errs[0].message,
        "scripts/live.lua leaves the assets folder (through a symbolic link); the last good version keeps running"
    );
    assert_eq!(printed(&app), ["v1"], "the outside script never runs");
    assert_no_host_paths(&app, &folder);
}
