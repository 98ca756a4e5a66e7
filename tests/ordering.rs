//! Deterministic order: timers due in one frame resume by deadline, then by the order
//! they were made; work woken during a step runs in that step; runs replay exactly.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bevy::asset::io::{AssetReader, AssetReaderError, AssetSourceBuilder, PathStream, Reader, VecReader};
use bevy::platform::collections::HashMap;
use bevy::prelude::*;

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

/// Scripts served from memory by an asset source whose reads finish after a delay that differs
/// per file and per `run`, so loads complete out of order and over many frames.
#[derive(Clone)]
struct SlowScripts {
    files: Arc<HashMap<PathBuf, String>>,
    run: u64,
}

impl AssetReader for SlowScripts {
    async fn read<'a>(&'a self, path: &'a Path) -> Result<impl Reader + 'a, AssetReaderError> {
        let text = self.files.get(path).ok_or_else(|| AssetReaderError::NotFound(path.into()))?;
        let n: u64 = text.bytes().map(u64::from).sum();
        let millis = (n * 7 + self.run * 17) % 23 * 2;
        async_io::Timer::after(Duration::from_millis(millis)).await;
        Ok(VecReader::new(text.clone().into_bytes()))
    }

    async fn read_meta<'a>(&'a self, path: &'a Path) -> Result<impl Reader + 'a, AssetReaderError> {
        Err::<VecReader, _>(AssetReaderError::NotFound(path.into()))
    }

    async fn read_directory<'a>(&'a self, path: &'a Path) -> Result<Box<PathStream>, AssetReaderError> {
        Err(AssetReaderError::NotFound(path.into()))
    }

    async fn is_directory<'a>(&'a self, _: &'a Path) -> Result<bool, AssetReaderError> {
        Ok(false)
    }
}

#[test]
fn spawned_scripts_start_on_the_next_frame_however_long_their_files_take_to_load() {
    let files: HashMap<_, _> = (1..=40)
        .map(|i| (PathBuf::from(format!("c{i}.lua")), format!("print('c{i}', time.frame())")))
        .collect();
    let files = Arc::new(files);
    let parent = r#"
        print("parent", time.frame())
        for i = 1, 40 do world.spawn{ script = "slow://c" .. i .. ".lua" } end
        task.wait()
        print("parent again", time.frame())
        "#;
    let once = |run: u64| {
        let mut app = App::new();
        let source = SlowScripts { files: files.clone(), run };
        app.register_asset_source("slow", AssetSourceBuilder::new(move || Box::new(source.clone())));
        let mut app = set_up(app, "assets", test_plugin());
        spawn_script(&mut app, "scripts/parent.lua", parent);
        run_until_printed(&mut app, 42);
        assert!(errors(&app).is_empty(), "{:?}", errors(&app));
        printed(&app)
    };
    let first = once(0);
    let frame = first[0].strip_prefix("parent\t").expect("the parent printed first").parse::<u64>().unwrap();
    // The parent's frame wait falls due first; the children start in the order they were spawned.
    let mut expected = vec![format!("parent\t{frame}"), format!("parent again\t{}", frame + 1)];
    expected.extend((1..=40).map(|i| format!("c{i}\t{}", frame + 1)));
    assert_eq!(first, expected, "every child started in the sync of the frame after the spawn");
    for run in 1..4 {
        assert_eq!(
            once(run),
            first,
            "run {run}, whose files took other times to load, printed something else"
        );
    }
}
